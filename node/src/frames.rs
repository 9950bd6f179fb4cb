//! Length-prefixed frames on libp2p streams, read with time limits and
//! size limits (see `kiln_protocol::messages::decode_frame`).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kiln_protocol::messages::{decode_frame_max, encode_frame_max, FRAME_BYTES_MAX};
use libp2p::Stream;

/// How long the rest of a frame may take once its first byte arrived.
const FRAME_MS_MAX: u64 = 15_000;

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
