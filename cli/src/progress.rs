//! A progress bar for downloads, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_node::blobs::Progress;
use kiln_protocol::Hash;

pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(hash: &Hash) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(format!("fetching {}", hash.short()));
        Bar(Some(bar))
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, total_bytes: u64, done_bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total_bytes);
            bar.set_position(done_bytes);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}

/// How a followed build stands, for `kiln request --wait`. On a terminal, a
/// spinner with the elapsed time and the latest state or log line, with
/// each change of state printed above it; elsewhere, one line per change.
pub struct Phases {
    bar: Option<ProgressBar>,
    last: String,
}

impl Phases {
    pub fn new() -> Phases {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Phases {
            bar,
            last: String::new(),
        }
    }

    /// Shows one state line (`queued`, `building on ...`, `log: ...`).
    pub fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        match &self.bar {
            // Log lines only update the spinner; states stay on screen.
            Some(bar) if line.starts_with("log: ") => bar.set_message(line.clone()),
            Some(bar) => {
                bar.println(format!("kiln: {line}"));
                bar.set_message(line.clone());
            }
            None => say!("{line}"),
        }
        self.last = line;
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
