//! Length-prefixed frames on libp2p streams, read with time limits and
//! size limits (see `kiln_protocol::messages::decode_frame`), and opening a
//! stream with a time limit: the one way every role opens its streams.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kiln_protocol::messages::{decode_frame_max, encode_frame_max, FRAME_BYTES_MAX};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::OpenStreamError;

use super::NetClient;

/// How long the rest of a frame may take once its first byte arrived.
const FRAME_MS_MAX: u64 = 15_000;

/// Opens a `protocol` stream to `peer`, dialling it if needed, within
/// `timeout_ms`. The error says in words what happened: the peer could not
/// be reached, does not speak the protocol, or did not answer in time.
pub(crate) async fn open_stream(
    net: &NetClient,
    peer: PeerId,
    protocol: StreamProtocol,
    timeout_ms: u64,
) -> std::io::Result<Stream> {
    let mut control = net.stream_control();
    let open = control.open_stream(peer, protocol.clone());
    match tokio::time::timeout(Duration::from_millis(timeout_ms), open).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("does not speak {protocol} (another kind of peer, or another version of Kiln)"),
        )),
        Ok(Err(OpenStreamError::Io(e))) => Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("could not be reached ({})", e.to_string().trim_end_matches('.')),
        )),
        Ok(Err(e)) => Err(std::io::Error::other(format!("could not open a stream ({e})"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("did not answer within {} s", timeout_ms.div_ceil(1000)),
        )),
    }
}

/// Reads one frame, waiting at most `timeout_ms`. `Ok(None)`: clean end.
pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(
    stream: &mut Stream,
    timeout_ms: u64,
) -> std::io::Result<Option<T>> {
    read_frame_max::<T, FRAME_BYTES_MAX>(stream, timeout_ms).await
}

/// [`read_frame`] for frames of at most `LIMIT` bytes.
pub(crate) async fn read_frame_max<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    stream: &mut Stream,
    timeout_ms: u64,
) -> std::io::Result<Option<T>> {
    let mut header = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(timeout_ms), stream.read(&mut header[..1])).await;
    match read {
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer went quiet")),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    let rest = async {
        stream.read_exact(&mut header[1..]).await?;
        let len = u32::from_le_bytes(header) as usize;
        if len > LIMIT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        let mut frame = header.to_vec();
        frame.resize(4 + len, 0);
        stream.read_exact(&mut frame[4..]).await?;
        match decode_frame_max::<T, LIMIT>(&frame) {
            Ok(Some((value, _))) => Ok(Some(value)),
            Ok(None) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "short frame")),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
        }
    };
    tokio::time::timeout(Duration::from_millis(FRAME_MS_MAX), rest)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "frame arrived too slowly"))?
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame<T: serde::Serialize>(stream: &mut Stream, value: &T) -> std::io::Result<()> {
    write_frame_max::<T, FRAME_BYTES_MAX>(stream, value).await
}

/// [`write_frame`] for frames of at most `LIMIT` bytes.
pub(crate) async fn write_frame_max<T: serde::Serialize, const LIMIT: usize>(
    stream: &mut Stream,
    value: &T,
) -> std::io::Result<()> {
    let frame = encode_frame_max::<T, LIMIT>(value).map_err(std::io::Error::other)?;
    stream.write_all(&frame).await?;
    stream.flush().await
}
