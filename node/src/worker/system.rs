//! Probing what this machine is: the `SystemInfo` a worker advertises and
//! `kiln system` prints. Everything here reads local files or runs local
//! tools with a time limit; nothing comes from the network.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_protocol::SystemInfo;

/// Tools whose versions are probed, and the argument that prints it.
const TOOLS: &[(&str, &str)] = &[
    ("cc", "--version"),
    ("gcc", "--version"),
    ("clang", "--version"),
    ("make", "--version"),
    ("cmake", "--version"),
    ("python3", "--version"),
    ("git", "--version"),
    ("rustc", "--version"),
    ("cargo", "--version"),
    ("go", "version"),
    ("java", "-version"),
    ("pypy", "--version"),
];
/// How long one tool may take to say its version.
const TOOL_PROBE_MS_MAX: u64 = 3_000;
/// Most bytes of a tool's answer that are read.
const TOOL_OUTPUT_BYTES_MAX: usize = 4096;

/// Probes this machine. `labels` are the contributor's own additions.
pub fn probe(labels: BTreeMap<String, String>) -> SystemInfo {
    let (libc, libc_version) = probe_libc();
    SystemInfo {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        endian: if cfg!(target_endian = "little") {
            "little"
        } else {
            "big"
        }
        .to_string(),
        pointer_width: usize::BITS,
        libc,
        libc_version,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: probe_memory().unwrap_or(0),
        features: probe_cpu_features(),
        tools: TOOLS
            .iter()
            .filter_map(|(tool, arg)| Some((tool.to_string(), tool_version(tool, arg)?)))
            .collect(),
        labels,
    }
}

fn probe_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn probe_cpu_features() -> BTreeSet<String> {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return BTreeSet::new();
    };
    // x86 calls them "flags", arm "Features".
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, list)| list.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn probe_libc() -> (String, String) {
    let Some(text) = run_for_output("ldd", "--version") else {
        return ("unknown".into(), "0".into());
    };
    let first = text.lines().next().unwrap_or("");
    let family = if text.to_ascii_lowercase().contains("musl") {
        "musl"
    } else if first.contains("GLIBC") || first.contains("GNU libc") {
        "glibc"
    } else {
        "unknown"
    };
    (family.to_string(), first_version(&text).unwrap_or_else(|| "0".into()))
}

fn tool_version(tool: &str, arg: &str) -> Option<String> {
    first_version(&run_for_output(tool, arg)?)
}

/// Runs `program arg` with a time limit and returns what it printed (both
/// streams: some tools print their version on stderr).
fn run_for_output(program: &str, arg: &str) -> Option<String> {
    let mut child = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_millis(TOOL_PROBE_MS_MAX);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let output = child.wait_with_output().ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.truncate(TOOL_OUTPUT_BYTES_MAX.min(text.len()));
    Some(text)
}

/// The first dotted version number in `text` (`12.2.0` from
/// `cc (Debian 12.2.0-14) 12.2.0`), skipping words like `x86_64`.
pub fn first_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | '"' | '-' | '+'))
        .map(|word| word.trim_start_matches(|c: char| c.is_ascii_alphabetic()))
        .find(|word| {
            let mut parts = word.split('.');
            let dotted = word.contains('.');
            dotted && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_tool_banners() {
        assert_eq!(
            first_version("cc (Debian 12.2.0-14+deb12u1) 12.2.0").as_deref(),
            Some("12.2.0")
        );
        assert_eq!(first_version("Python 3.11.7").as_deref(), Some("3.11.7"));
        assert_eq!(
            first_version("ldd (Debian GLIBC 2.36-9+deb12u14) 2.36").as_deref(),
            Some("2.36")
        );
        assert_eq!(
            first_version("go version go1.22.1 linux/amd64").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            first_version("openjdk version \"17.0.15\" 2025-04-15").as_deref(),
            Some("17.0.15")
        );
        assert_eq!(first_version("no numbers here"), None);
    }

    #[test]
    fn this_machine_is_probed() {
        let info = probe(BTreeMap::from([("site".to_string(), "ci".to_string())]));
        assert_eq!(info.os, std::env::consts::OS);
        assert!(info.cpus >= 1);
        assert!(info.memory_bytes > 0);
        assert!(
            info.tools.contains_key("cc"),
            "the build machine has a C compiler: {:?}",
            info.tools
        );
        assert_eq!(info.labels.get("site").map(String::as_str), Some("ci"));
    }
}
