//! Delivering the outbox: only the acting coordinator sends; each pass
//! reads the outbox off the runtime, sends what is due, retries failures
//! with backoff, forgets old deliveries and counts what is left.

use std::path::Path;
use std::sync::atomic::Ordering;

use kiln_protocol::messages::{encode_gossip, topics, Gossip, GossipV1};
use kiln_protocol::{wire, Hash};
use kiln_store::RecordTable;
use lettre::message::header::ContentType;
use lettre::{AsyncTransport, Message};
use tracing::{info, warn};

use crate::clock::now_ms;

use super::compose::plain_body;
use super::*;

impl Mailer {
    /// Delivers what is due (when this node coordinates), forgets old
    /// deliveries and counts what is left.
    pub(super) async fn deliver_due(&self) {
        // A scan of the whole outbox, every tick: off the runtime.
        let store = self.store.clone();
        let Ok(Ok(records)) = tokio::task::spawn_blocking(move || store.records(RecordTable::Outbox)).await else {
            return;
        };
        let acting = self.acting.load(Ordering::SeqCst);
        let now = now_ms();
        let (mut pending, mut delivered) = (0, 0);
        for (key, bytes) in records {
            let Ok(entry) = wire::decode::<OutboxEntry, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes) else {
                let _ = self.store.remove_record(RecordTable::Outbox, &key);
                continue;
            };
            let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                continue;
            };
            match entry.delivered_ms {
                Some(at) if now.saturating_sub(at) > DELIVERED_KEEP_MS => {
                    let _ = self.store.remove_record(RecordTable::Outbox, &key);
                }
                Some(_) => delivered += 1,
                None if acting && entry.next_attempt_ms <= now => {
                    if self.deliver(Hash::from_bytes(key), entry).await {
                        delivered += 1;
                    } else {
                        pending += 1;
                    }
                }
                None => pending += 1,
            }
        }
        if let Ok(mut view) = self.view.lock() {
            view.pending = pending;
            view.delivered = delivered;
            if pending == 0 {
                view.last_error = None;
            }
        }
    }

    /// One delivery attempt; whether the message went out.
    pub(super) async fn deliver(&self, key: Hash, mut entry: OutboxEntry) -> bool {
        let sent = match self.message(&entry) {
            Ok(message) => self.send(&key, message).await,
            Err(reason) => {
                warn!(to = entry.to, reason, "mail cannot be composed; dropped");
                Ok(())
            }
        };
        match sent {
            Ok(()) => {
                self.mark_delivered(key, Some(entry));
                let message = Gossip::V1(GossipV1::Delivered { outbox_key: key });
                if let Ok(bytes) = encode_gossip(&self.key, &message) {
                    let _ = self.net.publish(topics::RESULTS, bytes).await;
                }
                true
            }
            Err(reason) => {
                entry.attempts += 1;
                let delay = RETRY_MS_FIRST
                    .saturating_mul(1 << entry.attempts.min(16))
                    .min(RETRY_MS_MAX);
                entry.next_attempt_ms = now_ms() + delay;
                warn!(
                    to = entry.to,
                    attempts = entry.attempts,
                    retry_in_ms = delay,
                    reason,
                    "mail not delivered; will retry"
                );
                self.put(&key, &entry);
                if let Ok(mut view) = self.view.lock() {
                    let mut shown = reason;
                    if shown.len() > ERROR_SHOWN_BYTES_MAX {
                        let mut end = ERROR_SHOWN_BYTES_MAX;
                        while !shown.is_char_boundary(end) {
                            end -= 1;
                        }
                        shown.truncate(end);
                    }
                    view.last_error = Some(shown);
                }
                false
            }
        }
    }

    pub(super) fn message(&self, entry: &OutboxEntry) -> Result<Message, String> {
        let to: lettre::message::Mailbox = entry.to.parse().map_err(|e| format!("address {:?}: {e}", entry.to))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(entry.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(plain_body(&entry.body))
            .map_err(|e| e.to_string())
    }

    pub(super) async fn send(&self, key: &Hash, message: Message) -> Result<(), String> {
        match &self.transport {
            Transport::Folder(dir) => {
                let path = dir.join(format!("{key}.eml"));
                write_atomically(&path, &message.formatted()).map_err(|e| e.to_string())?;
                info!(path = %path.display(), "mail written to the outbox folder");
                Ok(())
            }
            Transport::Smtp { transport, shown_url } => {
                transport.send(message).await.map(|_| ()).map_err(|e| {
                    let reason = e.to_string();
                    format!("{shown_url}: {reason}")
                })?;
                info!(smtp = shown_url, "mail delivered");
                Ok(())
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("eml.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
