//! Bounds on the dashboard's HTTP connections: at most a fixed number open
//! at once (more wait in the kernel's accept queue), each closed once it
//! has sent and received nothing for a while, and a request's headers read
//! within a time limit (so a client dripping a byte now and then cannot
//! hold a slot either). Without them, a client that opens connections and
//! never finishes a request holds memory and file descriptors for as long
//! as it likes. (`axum::serve` gives hyper no timer, so hyper's own header
//! timeout never fires there: [`serve`] drives hyper itself.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A TCP listener for `axum::serve` that holds at most `slots` connections
/// open and closes each one after `idle` without traffic.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, slots: usize, idle: Duration) -> LimitedListener {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(slots)),
            idle,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedConnection, SocketAddr) {
        // The semaphore is never closed, so this waits for a free slot.
        let slot = self.slots.clone().acquire_owned().await.ok();
        // axum's accept logs and retries accept errors.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let connection = LimitedConnection {
            stream,
            _slot: slot,
            idle: self.idle,
            deadline: Box::pin(tokio::time::sleep(self.idle)),
        };
        (connection, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Serves `router` on `listener`'s connections, each given `headers` to
/// send a request's headers, until the task is aborted.
pub async fn serve(mut listener: LimitedListener, router: axum::Router, headers: Duration) {
    use axum::serve::Listener as _;
    loop {
        let (connection, _) = listener.accept().await;
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(headers);
            let served = http
                .serve_connection(hyper_util::rt::TokioIo::new(connection), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "dashboard connection ended");
            }
        });
    }
}

/// An accepted connection: frees its slot when dropped, and fails its
/// pending read or write once it has been idle too long.
pub struct LimitedConnection {
    stream: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl LimitedConnection {
    /// Passes `polled` through, restarting the idle clock when it is
    /// ready, and failing with `TimedOut` when it is not and the clock ran
    /// out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                let next = Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "dashboard connection idle too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.watch(cx, polled)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TEST_TIME_MAX: Duration = Duration::from_secs(10);

    async fn serve_for_test(slots: usize, idle: Duration, headers: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limited = LimitedListener::new(listener, slots, idle);
        let addr = axum::serve::Listener::local_addr(&limited).unwrap();
        let router = axum::Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(serve(limited, router, headers));
        addr
    }

    /// Reads until the peer closes: the connection's end.
    async fn closed(mut stream: TcpStream) -> tokio::time::Instant {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(TEST_TIME_MAX, stream.read_to_end(&mut sink))
            .await
            .unwrap();
        tokio::time::Instant::now()
    }

    async fn get_root(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        tokio::time::timeout(TEST_TIME_MAX, stream.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        reply
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_once_idle() {
        let addr = serve_for_test(4, Duration::from_millis(300), TEST_TIME_MAX).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        let ended = closed(silent).await;
        assert!(
            ended - opened >= Duration::from_millis(300),
            "not before the idle limit"
        );
        assert!(get_root(addr).await.ends_with("ok"), "the server goes on serving");
    }

    #[tokio::test]
    async fn a_client_dripping_its_headers_is_cut_off() {
        let headers = Duration::from_millis(400);
        let addr = serve_for_test(4, Duration::from_secs(2), headers).await;
        let mut dripping = TcpStream::connect(addr).await.unwrap();
        let start = tokio::time::Instant::now();
        // A byte every 100 ms never lets the idle limit (2 s) fire: only
        // the header limit ends this, or nothing does for 20 s.
        let mut cut_off = None;
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ".iter().cycle().take(200) {
            if dripping.write_all(&[*byte]).await.is_err() {
                cut_off = Some(start.elapsed());
                break;
            }
            let mut peek = [0u8; 1];
            // Anything but silence (a close, an error, an answer) means
            // the server gave up on the request.
            if tokio::time::timeout(Duration::from_millis(100), dripping.read(&mut peek))
                .await
                .is_ok()
            {
                cut_off = Some(start.elapsed());
                break;
            }
        }
        let cut_off = cut_off.expect("the server never closed the dripping connection");
        assert!(cut_off >= headers, "closed after {cut_off:?}, before the header limit");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_slot() {
        let idle = Duration::from_millis(500);
        let addr = serve_for_test(2, idle, TEST_TIME_MAX).await;
        let start = tokio::time::Instant::now();
        let first = TcpStream::connect(addr).await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();
        // Both slots are taken by silent connections, which the server
        // closes no sooner than `idle` after accepting them: only then is
        // the request answered.
        let (_, _, (reply, answered)) = tokio::join!(closed(first), closed(second), async {
            let reply = get_root(addr).await;
            (reply, start.elapsed())
        });
        assert!(reply.ends_with("ok"), "{reply}");
        assert!(
            answered >= idle,
            "answered after {answered:?}, while both slots were held"
        );
    }
}
