//! Stopping a node: the signal that starts it (SIGTERM, SIGINT), and the
//! [`Shutdown`] every role that keeps durable state watches, so it finishes
//! its current step (an outbox write, a settlement) and returns instead of
//! being cut off mid-write.

use tokio::sync::watch;
use tracing::warn;

/// Handed to each role; [`Shutdown::wait`] resolves once the node stops.
#[derive(Clone)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

/// Stops every [`Shutdown`] made from it (also when dropped).
pub struct ShutdownSender(watch::Sender<bool>);

/// A sender and the first of its receivers.
pub fn channel() -> (ShutdownSender, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownSender(tx), Shutdown(Some(rx)))
}

impl ShutdownSender {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A shutdown that never comes, for a role run on its own.
    pub fn never() -> Shutdown {
        Shutdown(None)
    }

    /// Resolves once the node stops (at once if it already has).
    pub async fn wait(&mut self) {
        match &mut self.0 {
            // An error means the sender is gone: that stops the role too.
            Some(rx) => {
                let _ = rx.wait_for(|stopped| *stopped).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Resolves on SIGINT or SIGTERM: how `kiln node` and `kiln-bootstrap` stop.
/// The handlers are installed when this is called (inside the runtime), not
/// when the future is first polled: a signal sent right after the node
/// prints its address is already caught.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                warn!("cannot install signal handlers; stop this node with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
