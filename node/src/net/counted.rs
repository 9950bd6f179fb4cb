//! A relayed connection's raw bytes, counted as they pass (`/metrics`
//! `kiln_relayed_bytes_total`): what this node sent and received through
//! relays, encryption and framing included, which is what the relay's
//! operator pays for.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

use crate::metrics::{Metrics, METRICS};

/// Wraps a connection and adds every byte it carries to the relayed count.
pub(super) struct Counted<T> {
    inner: T,
}

impl<T> Counted<T> {
    pub(super) fn new(inner: T) -> Counted<T> {
        Counted { inner }
    }
}

fn count(result: &Poll<io::Result<usize>>) {
    if let Poll::Ready(Ok(n)) = result {
        Metrics::add(&METRICS.relayed_bytes, *n as u64);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        count(&result);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        count(&result);
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
