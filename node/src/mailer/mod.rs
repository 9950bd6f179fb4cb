//! The mailer role: tells every requester how their build ended, exactly
//! once per address, through a durable outbox.
//!
//! Every node that keeps the queue also keeps the outbox (the `Outbox`
//! record table): when a job ends, one entry per address is written, with
//! the message already composed. Only the acting coordinator delivers:
//! over SMTP (lettre) when `--smtp` is given, otherwise as an `.eml` file in
//! `DATA_DIR/outbox/`. A failed delivery is retried with backoff, across
//! restarts. After each delivery the coordinator gossips `Delivered`, and
//! every standby marks the entry sent, so a coordinator that takes over
//! sends what the old one had not, and nothing twice. (A coordinator that
//! dies between the SMTP server's acceptance and its gossip leaves the one
//! window where a message can be sent twice.)
//!
//! - `deliver`: one pass over the outbox, and one delivery attempt (SMTP or
//!   an `.eml` file);
//! - `compose`: the subject and body of each message, as plain text.
//!
//! Not for: deciding when a job has ended (the coordinator tells it).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_protocol::coord::{MailMessage, MailView};
use kiln_protocol::messages::{JobRequest, Settlement};
use kiln_protocol::{wire, Hash, SecretKey};
use kiln_store::{RecordTable, Store};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::blobs::NoProgress;
use crate::clock::now_ms;
use crate::net::NetClient;

mod compose;
mod deliver;

use compose::{compose_done, compose_failed, compose_not_reproducible};

/// Inputs waiting for the mailer.
const INPUTS_MAX: usize = 1024;
/// How often due deliveries are looked for.
const TICK_MS: u64 = 1_000;
/// Retry delays double from the first to the last.
const RETRY_MS_FIRST: u64 = 1_000;
const RETRY_MS_MAX: u64 = 60_000;
/// How long one SMTP delivery may take.
const SMTP_MS_MAX: u64 = 30_000;
/// Lines of a failed build's log quoted in its mail, and the most log
/// bytes read for them (kept far below an outbox record's limit, so a log
/// of very long lines still leaves a message that can be stored).
const LOG_LINES_QUOTED: usize = 40;
const LOG_BYTES_READ_MAX: u64 = 16 * 1024;
/// How long the log of a failed build is looked for before the mail goes
/// without it.
const LOG_FETCH_MS_MAX: u64 = 10_000;
/// How long a delivered message's record is kept (it stops a late
/// `Delivered` or settlement from sending it again).
pub(crate) const DELIVERED_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
/// The longest delivery error shown by `kiln status`.
const ERROR_SHOWN_BYTES_MAX: usize = 300;

/// How mail leaves this node.
#[derive(Clone, Debug, Default)]
pub struct MailOptions {
    /// `--smtp URL`; none: `.eml` files in the outbox folder.
    pub smtp_url: Option<String>,
    /// A password that is not in the URL (`KILN_SMTP_PASSWORD` or
    /// `--smtp-password-file`).
    pub smtp_password: Option<String>,
    /// `--mail-from`.
    pub from: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("--smtp {url}: {reason}; use smtp://HOST:PORT (plain), smtp://HOST?tls=required (STARTTLS) or smtps://HOST (TLS), with USER:PASSWORD@ before HOST if the server wants a login")]
    Url { url: String, reason: String },
    #[error("--mail-from {0:?} is not an address such as \"Kiln <kiln@example.org>\"")]
    From(String),
    #[error("cannot create the outbox folder {path}: {reason}")]
    Outbox { path: String, reason: String },
}

/// `url` with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// One message waiting or sent, kept under its outbox key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OutboxEntry {
    build_key: Hash,
    to: String,
    subject: String,
    body: String,
    attempts: u32,
    next_attempt_ms: u64,
    delivered_ms: Option<u64>,
}

enum Input {
    /// Messages of the coordinator's outbox, fetched by this standby.
    Adopt {
        messages: Vec<MailMessage>,
    },
    Ended {
        job: Box<JobRequest>,
        settlement: Box<Settlement>,
    },
    Delivered {
        outbox_key: Hash,
    },
}

/// A handle for feeding the mailer.
#[derive(Clone)]
pub struct MailHandle {
    inputs: mpsc::Sender<Input>,
    view: Arc<Mutex<MailView>>,
}

impl MailHandle {
    /// A job ended: write its messages to the outbox.
    pub fn ended(&self, job: &JobRequest, settlement: &Settlement) {
        let input = Input::Ended {
            job: Box::new(job.clone()),
            settlement: Box::new(settlement.clone()),
        };
        if self.inputs.try_send(input).is_err() {
            warn!(job = %job.build_key, "mailer input queue full; this job's mail is not queued");
        }
    }

    /// Messages from the coordinator's outbox (a standby's catch-up):
    /// each one this node lacks is kept, as sent or still to send. Waits
    /// for room in the mailer's queue; false if the mailer has stopped.
    pub async fn adopt(&self, messages: Vec<MailMessage>) -> bool {
        self.inputs.send(Input::Adopt { messages }).await.is_ok()
    }

    /// The coordinator delivered this message (heard over gossip).
    pub fn delivered(&self, outbox_key: Hash) {
        let _ = self.inputs.try_send(Input::Delivered { outbox_key });
    }

    /// How the outbox stands, for `kiln status`.
    pub fn view(&self) -> MailView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

enum Transport {
    Folder(PathBuf),
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        shown_url: String,
    },
}

/// The mailer task's state.
struct Mailer {
    net: NetClient,
    store: Store,
    key: SecretKey,
    from: lettre::message::Mailbox,
    transport: Transport,
    acting: Arc<AtomicBool>,
    view: Arc<Mutex<MailView>>,
}

/// Checks the options and starts the mailer. `acting` says whether this
/// node coordinates now (only then does it deliver). The mailer stops once
/// every [`MailHandle`] is gone and it has written what they sent it to
/// the outbox: a node stops its coordinator first, so no settlement's mail
/// is lost on a clean stop.
pub fn spawn(
    net: NetClient,
    store: Store,
    key: SecretKey,
    options: &MailOptions,
    acting: Arc<AtomicBool>,
) -> Result<(MailHandle, tokio::task::JoinHandle<()>), MailError> {
    let from_text = options.from.clone().unwrap_or_else(|| "Kiln <kiln@localhost>".into());
    let from: lettre::message::Mailbox = from_text.parse().map_err(|_| MailError::From(from_text.clone()))?;
    let transport = match &options.smtp_url {
        None => {
            let dir = store.dir().join("outbox");
            std::fs::create_dir_all(&dir).map_err(|e| MailError::Outbox {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            Transport::Folder(dir)
        }
        Some(url) => smtp_transport(url, options.smtp_password.as_deref())?,
    };
    let (tx, rx) = mpsc::channel(INPUTS_MAX);
    let route = match &transport {
        Transport::Folder(dir) => format!(
            "written as .eml files to {} (no --smtp given: nobody is mailed)",
            dir.display()
        ),
        Transport::Smtp { shown_url, .. } => format!("sent through the SMTP server {}", smtp_place(shown_url)),
    };
    let view = Arc::new(Mutex::new(MailView {
        route,
        ..MailView::default()
    }));
    let mailer = Mailer {
        net,
        store,
        key,
        from,
        transport,
        acting,
        view: view.clone(),
    };
    match &mailer.transport {
        Transport::Folder(dir) => info!(outbox = %dir.display(), "no --smtp: mail is written to the outbox folder"),
        Transport::Smtp { shown_url, .. } => info!(smtp = shown_url, "mail goes out over SMTP"),
    }
    let task = tokio::spawn(mailer.run(rx));
    Ok((MailHandle { inputs: tx, view }, task))
}

/// `HOST[:PORT]` of an SMTP URL: where mail goes, with no user, password
/// or query in it.
fn smtp_place(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['?', '/']).next().unwrap_or(rest)
}

fn smtp_transport(url: &str, password: Option<&str>) -> Result<Transport, MailError> {
    let shown_url = redact(url);
    let fail = |reason: String| MailError::Url {
        url: shown_url.clone(),
        reason,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| fail(e.to_string()))?;
    if let Some(password) = password {
        let user = url
            .split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .map(|(userinfo, _)| userinfo.split(':').next().unwrap_or("").to_string())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| fail("a password was given but the URL names no user (smtp://USER@HOST)".into()))?;
        builder = builder.credentials(Credentials::new(user, password.to_string()));
    }
    let transport = builder.timeout(Some(Duration::from_millis(SMTP_MS_MAX))).build();
    Ok(Transport::Smtp {
        transport: Box::new(transport),
        shown_url,
    })
}

/// Outbox messages in one catch-up page: at most this many, and half a
/// coordinator frame.
pub(crate) const MAIL_PAGE_MESSAGES_MAX: usize = 256;
const MAIL_PAGE_BYTES_MAX: usize = kiln_protocol::coord::COORD_FRAME_BYTES_MAX / 2;

/// A page of this node's outbox after `after`, in outbox-key order, for a
/// standby catching up; the key to ask after next, if more follow. Reads
/// one page of the table (blocking: call it off the runtime). A page has
/// at least one message if any follows, however large.
pub fn outbox_page(store: &Store, after: Option<Hash>) -> Result<(Vec<MailMessage>, Option<Hash>), String> {
    let after_bytes = after.map(|a| *a.as_bytes());
    let records = store
        .records_after(
            RecordTable::Outbox,
            after_bytes.as_ref().map(|a| a.as_slice()),
            MAIL_PAGE_MESSAGES_MAX,
        )
        .map_err(|e| e.to_string())?;
    let full = records.len() == MAIL_PAGE_MESSAGES_MAX;
    let mut messages = Vec::new();
    let (mut bytes, mut last) = (0, None);
    for (key, value) in records {
        let Ok(key) = <[u8; 32]>::try_from(key.as_slice()).map(Hash::from_bytes) else {
            continue;
        };
        let Ok(entry) = wire::decode::<OutboxEntry, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&value) else {
            last = Some(key);
            continue;
        };
        let size = entry.subject.len() + entry.body.len() + entry.to.len() + 128;
        if !messages.is_empty() && bytes + size > MAIL_PAGE_BYTES_MAX {
            return Ok((messages, last));
        }
        last = Some(key);
        // A tombstone (a receipt heard before its settlement) has no message.
        if entry.to.is_empty() {
            continue;
        }
        bytes += size;
        messages.push(MailMessage {
            key,
            build_key: entry.build_key,
            to: entry.to,
            subject: entry.subject,
            body: entry.body,
            delivered: entry.delivered_ms.is_some(),
        });
    }
    Ok((messages, if full { last } else { None }))
}

/// Longest subject and body of a message a standby adopts (what this
/// node composes stays far below both).
const ADOPTED_SUBJECT_BYTES_MAX: usize = 1024;
const ADOPTED_BODY_BYTES_MAX: usize = 64 * 1024;

/// Whether an adopted message looks like one a coordinator composes: a
/// real address, a Kiln subject, bounded text. Another node's outbox is
/// taken only from the coordinator this node follows (with
/// `--trust-coordinator`, only a trusted one), but not on trust alone.
pub fn check_adopted(message: &MailMessage) -> Result<(), String> {
    kiln_protocol::messages::check_email(&message.to)?;
    message
        .to
        .parse::<lettre::Address>()
        .map_err(|e| format!("{:?} is not an email address: {e}", message.to))?;
    if !message.subject.starts_with("kiln: ") || message.subject.len() > ADOPTED_SUBJECT_BYTES_MAX {
        return Err("not a subject Kiln writes".into());
    }
    if message.body.len() > ADOPTED_BODY_BYTES_MAX {
        return Err(format!("a body over {ADOPTED_BODY_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// The key of the message to `to` about `settlement`. A build key is built
/// once, so one success mail per address and build key whichever
/// attestation or coordinator settled it; a failure is keyed by the whole
/// settlement, so a later request that fails again is told again.
fn outbox_key(settlement: &Settlement, to: &str) -> Hash {
    let mut bytes = match settlement {
        Settlement::Done { attestation, .. } => match attestation.verify() {
            Ok(a) => [b"done".as_slice(), a.build_key.as_bytes()].concat(),
            Err(_) => wire::canonical(settlement),
        },
        // Apart from `Done`: a request that asked for more builders is
        // told of their check even if an earlier build was mailed.
        Settlement::Checked { attestation, .. } => match attestation.verify() {
            Ok(a) => [b"checked".as_slice(), a.build_key.as_bytes()].concat(),
            Err(_) => wire::canonical(settlement),
        },
        // A trusted build is mailed as a done one (one mail per address
        // and build key); a later check of it is mailed apart.
        Settlement::Trusted { attestation, .. } => match attestation.verify() {
            Ok(a) => [b"done".as_slice(), a.build_key.as_bytes()].concat(),
            Err(_) => wire::canonical(settlement),
        },
        Settlement::Failed { .. } | Settlement::NotReproducible { .. } => wire::canonical(settlement),
    };
    bytes.extend_from_slice(to.as_bytes());
    Hash::derive("kiln 2026 outbox v1", &bytes)
}

impl Mailer {
    /// Runs until every handle is gone and each input they sent is handled.
    async fn run(self, mut inputs: mpsc::Receiver<Input>) {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Ended { job, settlement }) => {
                        self.enqueue(&job, &settlement).await;
                        self.deliver_due().await;
                    }
                    Some(Input::Delivered { outbox_key }) => {
                        info!(outbox_key = %outbox_key, "mail delivered by the coordinator");
                        self.mark_delivered(outbox_key, None);
                    }
                    Some(Input::Adopt { messages }) => self.adopt(messages),
                    None => break,
                },
                _ = tick.tick() => self.deliver_due().await,
            }
        }
    }

    /// Keeps each adopted message this node lacks; marks sent the ones the
    /// coordinator sent.
    fn adopt(&self, messages: Vec<MailMessage>) {
        let (mut kept, mut marked) = (0, 0);
        for message in messages {
            if let Err(why) = check_adopted(&message) {
                warn!(why, "an outbox message from the coordinator was not adopted");
                continue;
            }
            match self.entry(&message.key) {
                None => {
                    let entry = OutboxEntry {
                        build_key: message.build_key,
                        to: message.to,
                        subject: message.subject,
                        body: message.body,
                        attempts: 0,
                        next_attempt_ms: 0,
                        delivered_ms: message.delivered.then(now_ms),
                    };
                    kept += u32::from(self.put(&message.key, &entry));
                }
                Some(entry) if message.delivered && entry.delivered_ms.is_none() => {
                    self.mark_delivered(message.key, Some(entry));
                    marked += 1;
                }
                Some(_) => {}
            }
        }
        if kept + marked > 0 {
            info!(kept, marked_sent = marked, "outbox caught up with the coordinator's");
        }
    }

    pub(super) fn entry(&self, key: &Hash) -> Option<OutboxEntry> {
        let bytes = self.store.get_record(RecordTable::Outbox, key.as_bytes()).ok()??;
        wire::decode::<_, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes).ok()
    }

    pub(super) fn put(&self, key: &Hash, entry: &OutboxEntry) -> bool {
        let written = wire::encode(entry).map_err(|e| e.to_string()).and_then(|bytes| {
            self.store
                .put_record(RecordTable::Outbox, key.as_bytes(), &bytes)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = &written {
            warn!(to = entry.to, error = e, "outbox not written");
        }
        written.is_ok()
    }

    /// Writes one message per address, unless already there.
    pub(super) async fn enqueue(&self, job: &JobRequest, settlement: &Settlement) {
        let (subject, body) = match settlement {
            Settlement::Done { .. } | Settlement::Checked { .. } | Settlement::Trusted { .. } => {
                compose_done(job, settlement)
            }
            Settlement::NotReproducible { .. } => compose_not_reproducible(job, settlement),
            Settlement::Failed { log, .. } => {
                let tail = match log {
                    Some(log) => self.log_tail(*log).await,
                    None => None,
                };
                compose_failed(job, settlement, tail.as_deref())
            }
        };
        let mut emails = job.emails.clone();
        emails.sort();
        emails.dedup();
        let mut queued = 0;
        for to in emails {
            let key = outbox_key(settlement, &to);
            if self.entry(&key).is_some() {
                continue;
            }
            queued += 1;
            let entry = OutboxEntry {
                build_key: job.build_key,
                to,
                subject: subject.clone(),
                body: body.clone(),
                attempts: 0,
                next_attempt_ms: 0,
                delivered_ms: None,
            };
            self.put(&key, &entry);
        }
        info!(job = %job.build_key, messages = queued, "mail queued");
    }

    /// The last lines of a build log, fetched if this node lacks it.
    pub(super) async fn log_tail(&self, log: Hash) -> Option<String> {
        let fetch = crate::blobs::fetch(&self.net, &self.store, log, Arc::new(NoProgress));
        let size = tokio::time::timeout(Duration::from_millis(LOG_FETCH_MS_MAX), fetch)
            .await
            .ok()?
            .ok()?;
        let start = size.saturating_sub(LOG_BYTES_READ_MAX);
        let bytes = self.store.read_range(&log, start, size - start).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(LOG_LINES_QUOTED)..].join("\n"))
    }

    pub(super) fn mark_delivered(&self, key: Hash, entry: Option<OutboxEntry>) {
        let now = now_ms();
        let entry = match entry.or_else(|| self.entry(&key)) {
            Some(mut entry) => {
                entry.delivered_ms = Some(now);
                entry
            }
            // Heard of before its job's settlement: a tombstone, so the
            // message is not written as pending later.
            None => OutboxEntry {
                build_key: Hash::from_bytes([0; 32]),
                to: String::new(),
                subject: String::new(),
                body: String::new(),
                attempts: 0,
                next_attempt_ms: 0,
                delivered_ms: Some(now),
            },
        };
        self.put(&key, &entry);
    }
}

#[cfg(test)]
mod tests {
    use super::compose::plain_body;
    use super::*;
    use lettre::message::header::ContentTransferEncoding;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("smtp://kiln:s3cret@mail.example.org:587?tls=required"),
            "smtp://kiln:***@mail.example.org:587?tls=required"
        );
        assert_eq!(redact("smtp://mail.example.org"), "smtp://mail.example.org");
        let error = smtp_transport("smtp://kiln:s3cret@", None).err().map(|e| e.to_string());
        assert!(error.is_none_or(|e| !e.contains("s3cret")));
        assert_eq!(
            smtp_place(&redact("smtp://kiln:s3cret@mail.example.org:587?tls=required")),
            "mail.example.org:587"
        );
        assert_eq!(smtp_place("smtps://mail.example.org"), "mail.example.org");
    }

    #[test]
    fn bodies_stay_readable_text() {
        let hash = "ab".repeat(32);
        let plain = plain_body(&format!("Fetch it:   kiln fetch {hash} -o hello-c-1.0.0.tar\n"));
        assert_eq!(plain.encoding(), ContentTransferEncoding::SevenBit);
        let accented = plain_body("caf\u{e9} failed\n");
        assert_ne!(accented.encoding(), ContentTransferEncoding::SevenBit);
    }
}
