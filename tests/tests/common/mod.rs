//! Shared by the mail tests and the soak: a real SMTP server (aiosmtpd,
//! `tests/smtp/server.py`) storing what it accepts in a Maildir, and the
//! messages parsed as a reader sees them.

// Each test file uses part of this.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::{Proc, START};

#[derive(Debug)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// The SMTP envelope recipient (aiosmtpd's `X-RcptTo`).
    pub envelope_to: Option<String>,
}

pub fn parse(bytes: &[u8]) -> Mail {
    let mail = mailparse::parse_mail(bytes).unwrap();
    let header = |name: &str| mail.headers.iter().find(|h| h.get_key_ref().eq_ignore_ascii_case(name));
    Mail {
        to: header("To").map(|h| h.get_value()).unwrap_or_default(),
        subject: header("Subject").map(|h| h.get_value()).unwrap_or_default(),
        body: mail.get_body().unwrap(),
        envelope_to: header("X-RcptTo").map(|h| h.get_value()),
    }
}

/// Every message in `dir` (files ending in `ext`, or all files).
pub fn mails_in(dir: &Path, ext: Option<&str>) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| ext.is_none_or(|ext| p.extension().is_some_and(|e| e == ext)))
        .map(|p| parse(&std::fs::read(p).unwrap()))
        .collect()
}

/// The `.eml` files a coordinator without `--smtp` wrote.
pub fn outbox(data_dir: &Path) -> Vec<Mail> {
    mails_in(&data_dir.join("outbox"), Some("eml"))
}

/// Whether a `kiln status --json` shows every message out and `delivered`
/// of them delivered.
pub fn mail_settled(s: &serde_json::Value, delivered: u64) -> bool {
    s["mail"]["pending"] == 0 && s["mail"]["delivered"] == delivered
}

/// How many messages each address got.
pub fn recipients(mails: &[Mail]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for mail in mails {
        *count.entry(mail.to.clone()).or_default() += 1;
    }
    count
}

/// A real SMTP server process storing what it accepts in a Maildir.
pub struct Smtp {
    pub port: u16,
    pub maildir: PathBuf,
    login: Option<String>,
    proc: Option<Proc>,
}

impl Smtp {
    pub fn new(maildir: PathBuf, login: Option<&str>) -> Smtp {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Smtp {
            port,
            maildir,
            login: login.map(str::to_string),
            proc: None,
        }
    }

    pub fn start(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp/server.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.maildir)
            .args(&self.login);
        let mut proc = Proc::spawn("smtp server (python3 with aiosmtpd: pip install aiosmtpd)", command);
        proc.wait_line(START, |l| l == "ready");
        self.proc = Some(proc);
    }

    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        mails_in(&self.maildir.join("new"), None)
    }
}
