//! What a worker is (`SystemInfo`) and what a build needs (`Requirements`),
//! matched by the seed's subset rule: a worker can take a build when every
//! requirement holds on its system.
//!
//! Requirements are typed by the key they name: `os`, `arch`, `endian`,
//! `libc` compare as text; `pointer_width` and `cpus` as integers; `memory`
//! as a byte size (`4GiB`); `libc_version` and every tool (`gcc`, `python3`)
//! as dotted versions; `features` as a set. Any other key is looked up first
//! among the worker's tools, then among its labels.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Most requirements one build may carry.
pub const REQUIREMENTS_MAX: usize = 64;
/// Longest key or value in a requirement or system description.
pub const SYSTEM_TEXT_BYTES_MAX: usize = 256;

/// Description of a worker, probed at start and overridable in config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub os: String,
    pub arch: String,
    pub endian: String,
    pub pointer_width: u32,
    pub libc: String,
    pub libc_version: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub features: BTreeSet<String>,
    /// Tool name → version (`gcc` → `12.2.0`).
    pub tools: BTreeMap<String, String>,
    /// Free-form labels the contributor adds (`gpu` → `none`).
    pub labels: BTreeMap<String, String>,
}

impl SystemInfo {
    /// Digest of the canonical encoding, recorded in attestations.
    pub fn digest(&self) -> Hash {
        Hash::derive("kiln 2026 system-info v1", &crate::wire::canonical(self))
    }

    /// One line for tables: `linux/x86_64 glibc 2.36, 2 cpus, 24.0 GiB`.
    pub fn summary(&self) -> String {
        format!(
            "{}/{} {} {}, {} cpus, {}",
            self.os,
            self.arch,
            self.libc,
            self.libc_version,
            self.cpus,
            format_bytes(self.memory_bytes)
        )
    }

    fn value_of(&self, key: &str) -> Option<Value<'_>> {
        Some(match key {
            "os" => Value::Text(&self.os),
            "arch" => Value::Text(&self.arch),
            "endian" => Value::Text(&self.endian),
            "libc" => Value::Text(&self.libc),
            "pointer_width" => Value::Int(u64::from(self.pointer_width)),
            "cpus" => Value::Int(u64::from(self.cpus)),
            "memory" => Value::Int(self.memory_bytes),
            "libc_version" => Value::Version(&self.libc_version),
            "features" => Value::Set(&self.features),
            _ => {
                if let Some(v) = self.tools.get(key) {
                    Value::Version(v)
                } else {
                    Value::Text(self.labels.get(key)?)
                }
            }
        })
    }
}

enum Value<'a> {
    Text(&'a str),
    Int(u64),
    Version(&'a str),
    Set(&'a BTreeSet<String>),
}

/// A comparison operator in a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
}

impl Op {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Gt => ord == Ordering::Greater,
            Op::Le => ord != Ordering::Greater,
            Op::Lt => ord == Ordering::Less,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }
}

/// One thing a build needs of one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Constraint {
    /// `os = "linux"`.
    Exact(String),
    /// `features = ["avx2"]`: the worker's set must contain all of these.
    Contains(BTreeSet<String>),
    /// `gcc = ">=12, <15"`: every bound must hold.
    Bounds(Vec<(Op, String)>),
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Exact(v) => write!(f, "={v}"),
            Constraint::Contains(set) => {
                let items: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, " contains {}", items.join(","))
            }
            Constraint::Bounds(bounds) => {
                let parts: Vec<String> = bounds.iter().map(|(op, v)| format!("{}{v}", op.as_str())).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// A range of versions (`--accept-versions ">=1.2, <2"`); a bare `1.4`
/// means exactly that version. Compared as [`compare_versions`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange(Vec<(Op, String)>);

impl VersionRange {
    pub fn parse(text: &str) -> Result<VersionRange, String> {
        let bad = || format!("{text:?} is not a version range: write it like \">=1.2, <2\" or \"1.4\"");
        match parse_constraint_text(text) {
            Some(Constraint::Exact(v)) if v.len() <= SYSTEM_TEXT_BYTES_MAX => Ok(VersionRange(vec![(Op::Eq, v)])),
            Some(Constraint::Bounds(bounds))
                if bounds.len() <= 8 && bounds.iter().all(|(_, v)| v.len() <= SYSTEM_TEXT_BYTES_MAX) =>
            {
                Ok(VersionRange(bounds))
            }
            _ => Err(bad()),
        }
    }

    pub fn contains(&self, version: &str) -> bool {
        self.0
            .iter()
            .all(|(op, bound)| op.holds(compare_versions(version, bound)))
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(op, v)| format!("{}{v}", op.as_str())).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Why a requirement could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("requirement {0:?} is not KEY=VALUE or KEY>=VERSION (operators: = != >= > <= <); for example os=linux, gcc>=12, memory>=4GiB")]
    Syntax(String),
    #[error("requirement key {0:?} is not valid: use letters, digits, '_', '-', '.' (at most 256 bytes)")]
    Key(String),
    #[error("requirement {key}: {value:?} is not a {what}")]
    Value {
        key: String,
        value: String,
        what: &'static str,
    },
    #[error("too many requirements ({0}); at most {REQUIREMENTS_MAX} are allowed")]
    TooMany(usize),
}

/// What a build needs of a worker: key → constraint, kept sorted so that the
/// same requirements always encode to the same bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements(BTreeMap<String, Constraint>);

impl Requirements {
    pub fn new() -> Requirements {
        Requirements::default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Constraint)> {
        self.0.iter().map(|(k, c)| (k.as_str(), c))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Constraint> {
        self.0.get(key)
    }

    /// Adds or replaces the constraint on `key`, checking that values are of
    /// the key's type.
    pub fn set(&mut self, key: &str, constraint: Constraint) -> Result<(), RequirementError> {
        check_text(key).map_err(|()| RequirementError::Key(key.to_string()))?;
        validate(key, &constraint)?;
        if !self.0.contains_key(key) && self.0.len() >= REQUIREMENTS_MAX {
            return Err(RequirementError::TooMany(self.0.len() + 1));
        }
        self.0.insert(key.to_string(), constraint);
        Ok(())
    }

    /// Parses `os=linux`, `gcc>=12`, `python3<4`, `memory>=4GiB`,
    /// `features+=avx2,sse4.2` and adds it, replacing what `key` had.
    pub fn set_from_str(&mut self, text: &str) -> Result<(), RequirementError> {
        let (key, constraint) = parse_requirement(text)?;
        self.set(&key, constraint)
    }

    /// This requirement set with `other`'s constraints laid over it (a
    /// request's `--target` over a recipe's requirements).
    pub fn overlaid(&self, other: &Requirements) -> Result<Requirements, RequirementError> {
        let mut out = self.clone();
        for (key, constraint) in other.iter() {
            out.set(key, constraint.clone())?;
        }
        Ok(out)
    }

    /// The subset rule: `Ok(())` when every requirement holds on `system`,
    /// otherwise every reason it does not, in words.
    pub fn check(&self, system: &SystemInfo) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = self
            .0
            .iter()
            .filter_map(|(key, constraint)| check_one(key, constraint, system).err())
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, c)| format!("{k}{c}")).collect();
        if parts.is_empty() {
            write!(f, "(any system)")
        } else {
            write!(f, "{}", parts.join(" "))
        }
    }
}

fn check_text(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.len() <= SYSTEM_TEXT_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

fn validate(key: &str, constraint: &Constraint) -> Result<(), RequirementError> {
    let bad = |value: &str, what| RequirementError::Value {
        key: key.to_string(),
        value: value.to_string(),
        what,
    };
    match constraint {
        Constraint::Exact(v) if v.is_empty() || v.len() > SYSTEM_TEXT_BYTES_MAX => {
            Err(bad(v, "non-empty value of at most 256 bytes"))
        }
        Constraint::Exact(v) => match key {
            "pointer_width" | "cpus" => parse_int(v).map(|_| ()).ok_or_else(|| bad(v, "whole number")),
            "memory" => parse_bytes(v)
                .map(|_| ())
                .ok_or_else(|| bad(v, "size such as 4GiB or 512MiB")),
            _ => Ok(()),
        },
        Constraint::Contains(set) => {
            if set.is_empty() || set.iter().any(|v| check_text(v).is_err()) {
                let joined: Vec<&str> = set.iter().map(String::as_str).collect();
                Err(bad(&joined.join(","), "non-empty list of names"))
            } else {
                Ok(())
            }
        }
        Constraint::Bounds(bounds) => {
            if bounds.is_empty() {
                return Err(bad("", "list of bounds such as >=12"));
            }
            for (_, v) in bounds {
                let ok = match key {
                    "pointer_width" | "cpus" => parse_int(v).is_some(),
                    "memory" => parse_bytes(v).is_some(),
                    _ => !v.is_empty() && v.len() <= SYSTEM_TEXT_BYTES_MAX,
                };
                if !ok {
                    return Err(bad(
                        v,
                        if key == "memory" {
                            "size such as 4GiB"
                        } else {
                            "valid bound"
                        },
                    ));
                }
            }
            Ok(())
        }
    }
}

fn parse_requirement(text: &str) -> Result<(String, Constraint), RequirementError> {
    let syntax = || RequirementError::Syntax(text.chars().take(300).collect());
    if let Some((key, values)) = text.split_once("+=") {
        let set: BTreeSet<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        return Ok((key.trim().to_string(), Constraint::Contains(set)));
    }
    let pos = text.find(['=', '!', '>', '<']).ok_or_else(syntax)?;
    let key = text[..pos].trim().to_string();
    let rest = &text[pos..];
    let constraint = parse_constraint_text(rest).ok_or_else(syntax)?;
    Ok((key, constraint))
}

/// Parses the right-hand side of a requirement: `linux` (exact), `>=12`,
/// `>=3.9, <4` (bounds). A leading `=` is allowed and means exact.
pub fn parse_constraint_text(text: &str) -> Option<Constraint> {
    let text = text.trim();
    let starts_with_op = text.starts_with(['>', '<', '!']) || text.starts_with("==");
    if !starts_with_op {
        let value = text.strip_prefix('=').unwrap_or(text).trim();
        return if value.is_empty() {
            None
        } else {
            Some(Constraint::Exact(value.to_string()))
        };
    }
    let mut bounds = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (op, value) = [
            ("==", Op::Eq),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
        ]
        .iter()
        .find_map(|(sym, op)| part.strip_prefix(sym).map(|v| (*op, v.trim())))?;
        if value.is_empty() {
            return None;
        }
        bounds.push((op, value.to_string()));
    }
    Some(Constraint::Bounds(bounds))
}

fn check_one(key: &str, constraint: &Constraint, system: &SystemInfo) -> Result<(), String> {
    let Some(value) = system.value_of(key) else {
        return Err(format!(
            "no {key} (the worker does not report it; wanted {key}{constraint})"
        ));
    };
    match (constraint, value) {
        (Constraint::Contains(want), Value::Set(have)) => {
            let missing: Vec<&str> = want.difference(have).map(String::as_str).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{key} lacks {}", missing.join(", ")))
            }
        }
        (Constraint::Contains(_), _) => Err(format!("{key} is not a set of names (wanted {key}{constraint})")),
        (Constraint::Exact(want), value) => {
            if compare(&value, want) == Some(Ordering::Equal) {
                Ok(())
            } else {
                Err(format!("{key}={} (wanted {key}={want})", show(&value)))
            }
        }
        (Constraint::Bounds(bounds), value) => {
            for (op, want) in bounds {
                match compare(&value, want) {
                    Some(ord) if op.holds(ord) => {}
                    _ => {
                        return Err(format!("{key} is {} (wanted {key}{}{want})", show(&value), op.as_str()));
                    }
                }
            }
            Ok(())
        }
    }
}

fn show(value: &Value<'_>) -> String {
    match value {
        Value::Text(s) | Value::Version(s) => (*s).to_string(),
        Value::Int(n) => n.to_string(),
        Value::Set(set) => set.iter().map(String::as_str).collect::<Vec<_>>().join(","),
    }
}

/// Orders the worker's value against a wanted value, by the key's type.
fn compare(have: &Value<'_>, want: &str) -> Option<Ordering> {
    match have {
        Value::Text(s) => Some((*s).cmp(want)),
        Value::Int(n) => Some(n.cmp(&parse_bytes(want)?)),
        Value::Version(v) => Some(compare_versions(v, want)),
        Value::Set(_) => None,
    }
}

/// Compares dotted versions component by component, numerically where both
/// components are numbers: `12.2.0` > `12`, `3.11` > `3.9`, `1.10` > `1.9`.
/// Missing trailing components count as zero, so `12` == `12.0`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |s: &str| -> Vec<String> {
        s.split(['.', '-', '+', '_'])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (pa, pb) = (split(a), split(b));
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).map(String::as_str).unwrap_or("0");
        let y = pb.get(i).map(String::as_str).unwrap_or("0");
        let ord = match (leading_number(x), leading_number(y)) {
            (Some((nx, rx)), Some((ny, ry))) => nx.cmp(&ny).then_with(|| rx.cmp(ry)),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn leading_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

fn parse_int(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// Parses a byte size: `4096`, `4KiB`, `512MiB`, `4GiB`, `1TiB`, `4GB`, `4G`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    if number.contains('.') {
        let value: f64 = number.parse().ok()?;
        let bytes = value * multiplier as f64;
        return (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64);
    }
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// `1536` → `1.5 KiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `900` → `15 min`, `5400` → `1 h 30 min`, `45` → `45 s`: whole units,
/// for messages.
pub fn format_duration_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_whole_units() {
        assert_eq!(format_duration_secs(900), "15 min");
        assert_eq!(format_duration_secs(5400), "1 h 30 min");
        assert_eq!(format_duration_secs(45), "45 s");
        assert_eq!(format_duration_secs(0), "0 s");
        assert_eq!(format_duration_secs(3661), "1 h 1 min 1 s");
    }

    #[test]
    fn version_ranges_accept_what_they_say() {
        let range = VersionRange::parse(">=1.2, <2").unwrap();
        assert!(
            range.contains("1.2") && range.contains("1.10.3") && !range.contains("1.1.9") && !range.contains("2.0")
        );
        let exact = VersionRange::parse("1.4").unwrap();
        assert!(exact.contains("1.4.0") && !exact.contains("1.5"));
        assert!(VersionRange::parse(">=").unwrap_err().contains("not a version range"));
        assert_eq!(range.to_string(), ">=1.2, <2");
    }

    fn worker() -> SystemInfo {
        SystemInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            endian: "little".into(),
            pointer_width: 64,
            libc: "glibc".into(),
            libc_version: "2.36".into(),
            cpus: 2,
            memory_bytes: 24 << 30,
            features: ["avx2", "sse4.2"].iter().map(|s| s.to_string()).collect(),
            tools: [("gcc", "12.2.0"), ("python3", "3.11.7"), ("make", "4.3")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: [("site", "basement")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn reqs(items: &[&str]) -> Requirements {
        let mut r = Requirements::new();
        for item in items {
            r.set_from_str(item).unwrap();
        }
        r
    }

    #[test]
    fn subset_rule_accepts_a_matching_worker() {
        let r = reqs(&[
            "os=linux",
            "features+=avx2",
            "gcc>=12",
            "python3<4",
            "memory>=4GiB",
            "cpus>=2",
            "site=basement",
            "libc_version>=2.31",
        ]);
        assert_eq!(r.check(&worker()), Ok(()));
        assert_eq!(Requirements::new().check(&worker()), Ok(()));
    }

    #[test]
    fn every_failing_reason_is_reported_in_words() {
        let r = reqs(&[
            "arch=ppc64",
            "features+=avx512f,avx2",
            "gcc>=13",
            "memory>=64GiB",
            "cuda>=12",
        ]);
        let reasons = r.check(&worker()).unwrap_err();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        let all = reasons.join("\n");
        assert!(all.contains("arch=x86_64 (wanted arch=ppc64)"), "{all}");
        assert!(all.contains("features lacks avx512f"), "{all}");
        assert!(all.contains("gcc is 12.2.0 (wanted gcc>=13)"), "{all}");
        assert!(all.contains("memory is"), "{all}");
        assert!(all.contains("no cuda"), "{all}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("12", "12.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("3.11.7", "4"), Ordering::Less);
        assert_eq!(compare_versions("2.36", "2.4"), Ordering::Greater);
        assert!(reqs(&["python3>=3.9, <4"]).check(&worker()).is_ok());
        assert!(reqs(&["python3>=3.12"]).check(&worker()).is_err());
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("4GiB"), Some(4 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5KiB"), Some(1536));
        assert_eq!(parse_bytes("4GB"), Some(4_000_000_000));
        assert_eq!(parse_bytes("99999999999999999999"), None);
        assert_eq!(parse_bytes("4 parsecs"), None);
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn bad_requirements_are_refused_with_reasons() {
        let mut r = Requirements::new();
        let err = r.set_from_str("linux").unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
        assert!(r
            .set_from_str("memory>=lots")
            .unwrap_err()
            .to_string()
            .contains("size such as"));
        assert!(r.set_from_str("bad key=1").is_err());
        assert!(r.set_from_str("cpus=two").is_err());
    }

    #[test]
    fn overlay_replaces_keys() {
        let base = reqs(&["os=linux", "arch=x86_64"]);
        let target = reqs(&["arch=aarch64"]);
        let merged = base.overlaid(&target).unwrap();
        assert_eq!(merged.get("arch"), Some(&Constraint::Exact("aarch64".into())));
        assert_eq!(merged.get("os"), Some(&Constraint::Exact("linux".into())));
        assert_eq!(merged.to_string(), "arch=aarch64 os=linux");
    }

    #[test]
    fn too_many_requirements_is_an_error() {
        let mut r = Requirements::new();
        for i in 0..REQUIREMENTS_MAX {
            r.set_from_str(&format!("label{i}=x")).unwrap();
        }
        assert!(matches!(
            r.set_from_str("one_more=x"),
            Err(RequirementError::TooMany(_))
        ));
    }
}
