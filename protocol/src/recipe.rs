//! Recipes: what to build and how. Written as TOML by people, carried as
//! canonical bytes between peers; the recipe id is the BLAKE3 hash of those
//! bytes, so it depends on what a recipe says, not on how its TOML is laid
//! out. A publisher signature (over the recipe id) travels beside the bytes.
//!
//! ```toml
//! name = "hello-c"
//! version = "1.0.0"
//! verify = 2                   # builders that must agree, unless a request
//!                              # says (or "auto"); absent: 1
//!
//! [source]
//! blob = "<64 hex>"            # or: git = "https://...", rev = "<commit>"
//!                              # or: path = "src" (published by the requester)
//!
//! [requirements]
//! os = "linux"                 # exact value
//! features = ["sse2"]          # the worker's set must contain these
//! cc = ">=10"                  # version bounds, comma separated
//! memory = ">=512MiB"          # byte sizes
//!
//! [options.opt]
//! values = ["O0", "O2"]
//! default = "O2"
//! help = "optimisation level"
//!
//! [build]
//! steps = ["cc -${opt} -o hello hello.c"]
//! outputs = ["hello"]
//! network = false              # needs the network while building
//! timeout = "10m"
//! memory = "1GiB"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::sign::{verify_raw, PublicKey, SecretKey, SignError, Signature};
use crate::system::{parse_bytes, parse_constraint_text, Constraint, RequirementError, Requirements};
use crate::wire::{self, WireError};

/// Largest recipe, as TOML or as canonical bytes.
pub const RECIPE_BYTES_MAX: usize = 64 * 1024;
/// Most options, steps and outputs one recipe may declare.
pub const RECIPE_ITEMS_MAX: usize = 256;
/// Longest build a recipe may ask for.
pub const BUILD_TIMEOUT_SECS_MAX: u64 = 7 * 24 * 3600;
/// Build time limit when a recipe names none.
pub const BUILD_TIMEOUT_SECS_DEFAULT: u64 = 3600;

/// The URL forms a git source may use (never `ext::` or other transports
/// that run commands).
pub const GIT_URL_SCHEMES: &[&str] = &["https://", "http://", "git://", "ssh://", "file://"];

const RECIPE_ID_SIGNING_DOMAIN: &str = "kiln 2026 recipe signature v1";

/// Where a recipe's source comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Everything the build needs is in its steps.
    None,
    /// A blob (a file, or a directory packed as a deterministic archive).
    Blob(Hash),
    /// A git repository at an exact commit.
    Git { url: String, rev: String },
}

/// One option a recipe declares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionSpec {
    pub values: Vec<String>,
    pub default: String,
    pub help: String,
}

/// A validated recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    pub description: String,
    pub source: Source,
    pub requirements: Requirements,
    pub options: BTreeMap<String, OptionSpec>,
    pub steps: Vec<String>,
    /// Paths, relative to the build directory, packed into the artifact.
    pub outputs: BTreeSet<String>,
    pub network: bool,
    pub timeout_secs: u64,
    /// 0: the worker's own limit.
    pub memory_bytes: u64,
    /// Builders with distinct keys that must agree, for a request that
    /// does not say (`verify = 2`, or `"auto"`: [`crate::build::VERIFY_AUTO`]);
    /// `None`: one. In the canonical bytes only when set
    /// (`CanonicalRecipe::V2`), so a recipe without it keeps its id.
    #[serde(skip)]
    pub verify: Option<u32>,
}

/// A publisher's signature over a recipe id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherSignature {
    pub publisher: PublicKey,
    pub signature: Signature,
}

impl PublisherSignature {
    pub fn sign(key: &SecretKey, recipe_id: &Hash) -> PublisherSignature {
        PublisherSignature {
            publisher: key.public(),
            signature: key.sign_raw(RECIPE_ID_SIGNING_DOMAIN, recipe_id.as_bytes()),
        }
    }

    pub fn verify(&self, recipe_id: &Hash) -> Result<(), SignError> {
        verify_raw(
            &self.publisher,
            RECIPE_ID_SIGNING_DOMAIN,
            recipe_id.as_bytes(),
            &self.signature,
        )
    }
}

/// Why a recipe was refused. Each names the field and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe is {0} bytes; at most {RECIPE_BYTES_MAX} bytes are allowed")]
    TooLarge(usize),
    #[error("recipe TOML: {0}")]
    Toml(String),
    #[error("recipe field `{field}`: {problem}")]
    Field { field: String, problem: String },
    #[error("recipe requirements: {0}")]
    Requirement(#[from] RequirementError),
    #[error("recipe signature: {0}")]
    Signature(#[from] SignError),
    #[error("recipe bytes: {0}")]
    Wire(#[from] WireError),
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> RecipeError {
    RecipeError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Why chosen option values were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("recipe {recipe} has no option {name:?}; its options are: {known}")]
    Unknown {
        recipe: String,
        name: String,
        known: String,
    },
    #[error("option {name}={value:?} is not allowed; allowed values: {allowed} (default {default})")]
    NotAllowed {
        name: String,
        value: String,
        allowed: String,
        default: String,
    },
    #[error("option {name:?} was given twice")]
    Twice { name: String },
    #[error("{0:?} is not NAME=VALUE (for example -o opt=O2)")]
    Syntax(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    source: Option<RawSource>,
    #[serde(default)]
    requirements: BTreeMap<String, toml::Value>,
    #[serde(default)]
    options: BTreeMap<String, RawOption>,
    build: RawBuild,
    verify: Option<toml::Value>,
    signature: Option<RawSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Option<String>,
    blob: Option<String>,
    git: Option<String>,
    rev: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOption {
    values: Vec<String>,
    default: String,
    #[serde(default)]
    help: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    steps: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    network: bool,
    timeout: Option<toml::Value>,
    memory: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    publisher: String,
    signature: String,
}

impl Recipe {
    /// Parses and validates a TOML recipe, with its signature if it has one.
    /// A `source.path` is refused: use [`Recipe::from_toml_with_paths`].
    pub fn from_toml(text: &str) -> Result<(Recipe, Option<PublisherSignature>), RecipeError> {
        Recipe::from_toml_with_paths(text, &mut |_| {
            Err("a recipe with `source.path` must be loaded from its file (kiln request --recipe PATH), which publishes that path".into())
        })
    }

    /// Like [`Recipe::from_toml`], turning a `source.path` into a blob hash
    /// with `publish` (which packs and stores that path and returns its hash).
    pub fn from_toml_with_paths(
        text: &str,
        publish: &mut dyn FnMut(&str) -> Result<Hash, String>,
    ) -> Result<(Recipe, Option<PublisherSignature>), RecipeError> {
        if text.len() > RECIPE_BYTES_MAX {
            return Err(RecipeError::TooLarge(text.len()));
        }
        let raw: RawRecipe =
            toml::from_str(text).map_err(|e| RecipeError::Toml(e.to_string().trim_end().to_string()))?;
        let signature = match &raw.signature {
            None => None,
            Some(s) => Some(PublisherSignature {
                publisher: s
                    .publisher
                    .parse()
                    .map_err(|e: SignError| field_error("signature.publisher", e.to_string()))?,
                signature: s
                    .signature
                    .parse()
                    .map_err(|e: SignError| field_error("signature.signature", e.to_string()))?,
            }),
        };
        let recipe = Recipe::from_raw(raw, publish)?;
        if let Some(sig) = &signature {
            sig.verify(&recipe.id())
                .map_err(|_| field_error("signature", "does not match this recipe: it was changed after signing, or signed by another key; sign it again with `kiln recipe sign`"))?;
        }
        Ok((recipe, signature))
    }

    fn from_raw(raw: RawRecipe, publish: &mut dyn FnMut(&str) -> Result<Hash, String>) -> Result<Recipe, RecipeError> {
        check_name("name", &raw.name)?;
        check_name("version", &raw.version)?;
        let source = match raw.source {
            None => Source::None,
            Some(RawSource {
                path: Some(path),
                blob: None,
                git: None,
                rev: None,
            }) => Source::Blob(publish(&path).map_err(|e| field_error("source.path", e))?),
            Some(s) => parse_source(s)?,
        };
        let mut requirements = Requirements::new();
        for (key, value) in &raw.requirements {
            requirements.set(key, toml_constraint(key, value)?)?;
        }
        let options = parse_options(raw.options)?;
        let verify = match &raw.verify {
            None => None,
            Some(toml::Value::String(s)) if s == "auto" => Some(crate::build::VERIFY_AUTO),
            Some(toml::Value::Integer(n)) if (1..=i64::from(crate::build::VERIFY_MAX)).contains(n) => {
                // One builder is what a recipe without it gets: the same id.
                (*n > 1).then_some(*n as u32)
            }
            Some(_) => {
                return Err(field_error(
                    "verify",
                    format!(
                        "expected a count of builders from 1 to {} or \"auto\"",
                        crate::build::VERIFY_MAX
                    ),
                ))
            }
        };
        let build = raw.build;
        if build.steps.is_empty() || build.steps.len() > RECIPE_ITEMS_MAX {
            return Err(field_error(
                "build.steps",
                format!("expected 1 to {RECIPE_ITEMS_MAX} shell command lines"),
            ));
        }
        for (i, step) in build.steps.iter().enumerate() {
            check_placeholders(&format!("build.steps[{i}]"), step, &options)?;
        }
        let outputs = parse_outputs(build.outputs)?;
        let timeout_secs = match &build.timeout {
            None => BUILD_TIMEOUT_SECS_DEFAULT,
            Some(v) => parse_duration(v).filter(|s| (1..=BUILD_TIMEOUT_SECS_MAX).contains(s)).ok_or_else(|| {
                field_error("build.timeout", "expected a duration between 1s and 7d, such as \"90s\", \"10m\", \"2h\" or a number of seconds")
            })?,
        };
        let memory_bytes = match &build.memory {
            None => 0,
            Some(m) => parse_bytes(m)
                .filter(|b| *b > 0)
                .ok_or_else(|| field_error("build.memory", "expected a size such as \"512MiB\" or \"4GiB\""))?,
        };
        Ok(Recipe {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            source,
            requirements,
            options,
            steps: build.steps,
            outputs,
            network: build.network,
            timeout_secs,
            memory_bytes,
            verify,
        })
    }

    /// The canonical bytes: what peers exchange and what the id hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match self.verify {
            None => wire::canonical(&CanonicalRecipe::V1(self.clone())),
            Some(verify) => wire::canonical(&CanonicalRecipe::V2(self.clone(), verify)),
        }
    }

    /// Reads canonical bytes back, refusing anything over the size limit or
    /// anything that would not pass validation from TOML.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Recipe, RecipeError> {
        let recipe = match wire::decode::<CanonicalRecipe, RECIPE_BYTES_MAX>(bytes)? {
            CanonicalRecipe::V1(recipe) => recipe,
            CanonicalRecipe::V2(mut recipe, verify) => {
                let valid = verify == crate::build::VERIFY_AUTO || (2..=crate::build::VERIFY_MAX).contains(&verify);
                if !valid {
                    return Err(field_error("verify", "out of range in the canonical bytes"));
                }
                recipe.verify = Some(verify);
                recipe
            }
        };
        recipe.validate()?;
        Ok(recipe)
    }

    /// The recipe id: `b3sum` of the canonical bytes.
    pub fn id(&self) -> Hash {
        Hash::of(&self.canonical_bytes())
    }

    fn validate(&self) -> Result<(), RecipeError> {
        check_name("name", &self.name)?;
        check_name("version", &self.version)?;
        if self.steps.is_empty()
            || self.steps.len() > RECIPE_ITEMS_MAX
            || self.options.len() > RECIPE_ITEMS_MAX
            || self.outputs.len() > RECIPE_ITEMS_MAX
        {
            return Err(field_error("build", "too many or too few items"));
        }
        for (name, spec) in &self.options {
            check_option(name, spec)?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            check_placeholders(&format!("build.steps[{i}]"), step, &self.options)?;
        }
        for output in &self.outputs {
            check_output(output)?;
        }
        if let Source::Git { url, rev } = &self.source {
            check_git(url, rev)?;
        }
        if !(1..=BUILD_TIMEOUT_SECS_MAX).contains(&self.timeout_secs) {
            return Err(field_error("build.timeout", "out of range"));
        }
        for (key, constraint) in self.requirements.iter() {
            Requirements::new().set(key, constraint.clone())?;
        }
        Ok(())
    }

    /// Fills in defaults and checks each chosen value against the allowed
    /// set. `chosen` holds `(name, value)` pairs as the user gave them.
    pub fn resolve_options(&self, chosen: &[(String, String)]) -> Result<BTreeMap<String, String>, OptionError> {
        let mut resolved: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in chosen {
            let Some(spec) = self.options.get(name) else {
                let known: Vec<&str> = self.options.keys().map(String::as_str).collect();
                return Err(OptionError::Unknown {
                    recipe: self.name.clone(),
                    name: name.clone(),
                    known: if known.is_empty() {
                        "(none)".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            if !spec.values.contains(value) {
                return Err(OptionError::NotAllowed {
                    name: name.clone(),
                    value: value.clone(),
                    allowed: spec.values.join(", "),
                    default: spec.default.clone(),
                });
            }
            if resolved.insert(name.clone(), value.clone()).is_some() {
                return Err(OptionError::Twice { name: name.clone() });
            }
        }
        for (name, spec) in &self.options {
            resolved.entry(name.clone()).or_insert_with(|| spec.default.clone());
        }
        Ok(resolved)
    }

    /// The build steps with `${option}` replaced by resolved values.
    pub fn render_steps(&self, resolved: &BTreeMap<String, String>) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| {
                let mut out = step.clone();
                for (name, value) in resolved {
                    out = out.replace(&format!("${{{name}}}"), value);
                }
                out
            })
            .collect()
    }
}

/// Splits `-o NAME=VALUE` text.
pub fn parse_option_assignment(text: &str) -> Result<(String, String), OptionError> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_string(), value.trim().to_string())),
        _ => Err(OptionError::Syntax(text.chars().take(200).collect())),
    }
}

#[derive(Serialize, Deserialize)]
enum CanonicalRecipe {
    V1(Recipe),
    /// With a default `verify` (which `Recipe` itself skips).
    V2(Recipe, u32),
}

fn check_name(field: &str, value: &str) -> Result<(), RecipeError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("{value:?} must be 1 to 128 characters of letters, digits, '.', '_', '-', '+'"),
        ))
    }
}

fn parse_source(raw: RawSource) -> Result<Source, RecipeError> {
    if raw.path.is_some() {
        return Err(field_error(
            "source",
            "give `path` alone, without `blob`, `git` or `rev`",
        ));
    }
    match (raw.blob, raw.git, raw.rev) {
        (Some(blob), None, None) => {
            let hash = blob
                .parse::<Hash>()
                .map_err(|e| field_error("source.blob", e.to_string()))?;
            Ok(Source::Blob(hash))
        }
        (None, Some(url), Some(rev)) => {
            check_git(&url, &rev)?;
            Ok(Source::Git { url, rev })
        }
        (None, Some(_), None) => Err(field_error(
            "source.rev",
            "a git source needs `rev`, the full commit id to build",
        )),
        _ => Err(field_error(
            "source",
            "expected either `blob = HASH` or `git = URL` with `rev = COMMIT`",
        )),
    }
}

fn check_git(url: &str, rev: &str) -> Result<(), RecipeError> {
    let allowed_scheme = GIT_URL_SCHEMES.iter().any(|scheme| url.starts_with(scheme));
    if url.len() > 1024 || url.chars().any(char::is_whitespace) || !allowed_scheme {
        return Err(field_error(
            "source.git",
            format!("{url:?} is not a repository URL: use https://, http://, git://, ssh:// or file://"),
        ));
    }
    let full_commit =
        (rev.len() == 40 || rev.len() == 64) && rev.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !full_commit {
        return Err(field_error("source.rev", format!("{rev:?} is not a full commit id (40 or 64 lowercase hex characters); a branch or tag can move, a commit cannot")));
    }
    Ok(())
}

fn toml_constraint(key: &str, value: &toml::Value) -> Result<Constraint, RecipeError> {
    let bad = || {
        field_error(
            format!("requirements.{key}"),
            "expected a value (\"linux\"), bounds (\">=12, <15\"), a number, or a list of names ([\"avx2\"])",
        )
    };
    match value {
        toml::Value::String(s) => parse_constraint_text(s).ok_or_else(bad),
        toml::Value::Integer(n) if *n >= 0 => Ok(Constraint::Exact(n.to_string())),
        toml::Value::Array(items) => {
            let mut set = BTreeSet::new();
            for item in items {
                set.insert(item.as_str().ok_or_else(bad)?.to_string());
            }
            Ok(Constraint::Contains(set))
        }
        _ => Err(bad()),
    }
}

fn parse_options(raw: BTreeMap<String, RawOption>) -> Result<BTreeMap<String, OptionSpec>, RecipeError> {
    if raw.len() > RECIPE_ITEMS_MAX {
        return Err(field_error("options", format!("at most {RECIPE_ITEMS_MAX} options")));
    }
    let mut options = BTreeMap::new();
    for (name, raw) in raw {
        let spec = OptionSpec {
            values: raw.values,
            default: raw.default,
            help: raw.help,
        };
        check_option(&name, &spec)?;
        options.insert(name, spec);
    }
    Ok(options)
}

fn check_option(name: &str, spec: &OptionSpec) -> Result<(), RecipeError> {
    let field = format!("options.{name}");
    let is_ident = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !is_ident {
        return Err(field_error(field, "option names are 1 to 64 letters, digits or '_'"));
    }
    if spec.values.is_empty() || spec.values.len() > RECIPE_ITEMS_MAX {
        return Err(field_error(
            format!("{field}.values"),
            format!("expected 1 to {RECIPE_ITEMS_MAX} allowed values"),
        ));
    }
    // Values end up inside shell command lines: keep them to characters
    // that need no quoting.
    for value in &spec.values {
        let safe = !value.is_empty()
            && value.len() <= 128
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'=' | b',' | b':' | b'/')
            });
        if !safe {
            return Err(field_error(
                format!("{field}.values"),
                format!("{value:?} must be 1 to 128 characters of letters, digits and _ - . + = , : /"),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = spec.values.iter().find(|v| !seen.insert(v.as_str())) {
        return Err(field_error(
            format!("{field}.values"),
            format!("{dup:?} is listed twice"),
        ));
    }
    if !spec.values.contains(&spec.default) {
        return Err(field_error(
            format!("{field}.default"),
            format!(
                "{:?} is not one of the allowed values ({})",
                spec.default,
                spec.values.join(", ")
            ),
        ));
    }
    Ok(())
}

fn check_placeholders(field: &str, step: &str, options: &BTreeMap<String, OptionSpec>) -> Result<(), RecipeError> {
    if step.trim().is_empty() || step.len() > 16 * 1024 {
        return Err(field_error(
            field,
            "a step is a non-empty shell command line of at most 16 KiB",
        ));
    }
    let mut rest = step;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(field_error(field, "has `${` without a closing `}`"));
        };
        let name = &after[..end];
        if !options.contains_key(name) {
            let known: Vec<&str> = options.keys().map(String::as_str).collect();
            return Err(field_error(
                field,
                format!(
                    "uses ${{{name}}}, but the recipe declares no option {name:?} (declared: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn parse_outputs(raw: Vec<String>) -> Result<BTreeSet<String>, RecipeError> {
    if raw.is_empty() || raw.len() > RECIPE_ITEMS_MAX {
        return Err(field_error(
            "build.outputs",
            format!("expected 1 to {RECIPE_ITEMS_MAX} paths to pack into the artifact"),
        ));
    }
    let mut outputs = BTreeSet::new();
    for output in raw {
        let output = output.trim_end_matches('/').to_string();
        check_output(&output)?;
        outputs.insert(output);
    }
    Ok(outputs)
}

fn check_output(output: &str) -> Result<(), RecipeError> {
    let inside = !output.is_empty()
        && !output.starts_with('/')
        && output.len() <= 1024
        && output
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if inside {
        Ok(())
    } else {
        Err(field_error(
            "build.outputs",
            format!("{output:?} must be a relative path inside the build directory, without '..'"),
        ))
    }
}

fn parse_duration(value: &toml::Value) -> Option<u64> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => parse_duration_text(s),
        _ => None,
    }
}

/// Seconds in a duration written as a number and a unit: "90s", "15m",
/// "2h", "1d".
pub fn parse_duration_text(text: &str) -> Option<u64> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    let unit = match s[split..].trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const HELLO: &str = r#"
name = "hello-c"
version = "1.0.0"

[source]
blob = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

[requirements]
os = "linux"
cc = ">=4"
features = ["sse2"]
memory = ">=64MiB"

[options.opt]
values = ["O0", "O2"]
default = "O2"
help = "optimisation level"

[options.greeting]
values = ["plain", "loud"]
default = "plain"

[build]
steps = ["cc -${opt} -DGREETING_${greeting} -o hello hello.c"]
outputs = ["hello"]
timeout = "10m"
"#;

    // The same recipe, keys in another order, other whitespace and comments.
    const HELLO_REORDERED: &str = r#"
version = "1.0.0"   # same
name = "hello-c"
[build]
outputs = [ "hello" ]
timeout = 600
steps = [ "cc -${opt} -DGREETING_${greeting} -o hello hello.c" ]
[options.greeting]
default = "plain"
values = ["plain", "loud"]
[options.opt]
help = "optimisation level"
default = "O2"
values = ["O0", "O2"]
[requirements]
memory = ">=64MiB"
features = ["sse2"]
cc = ">=4"
os = "linux"
[source]
blob = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
"#;

    fn hello() -> Recipe {
        Recipe::from_toml(HELLO).unwrap().0
    }

    #[test]
    fn id_ignores_toml_layout() {
        let (a, _) = Recipe::from_toml(HELLO).unwrap();
        let (b, _) = Recipe::from_toml(HELLO_REORDERED).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert_eq!(Hash::of(&a.canonical_bytes()), a.id());
    }

    #[test]
    fn canonical_bytes_round_trip() {
        let recipe = hello();
        let back = Recipe::from_canonical_bytes(&recipe.canonical_bytes()).unwrap();
        assert_eq!(back, recipe);
    }

    #[test]
    fn a_verify_default_travels_in_the_bytes_and_one_builder_keeps_the_id() {
        let plain = hello();
        let with = |line: &str| {
            let text = HELLO.replacen("version = \"1.0.0\"\n", &format!("version = \"1.0.0\"\n{line}\n"), 1);
            Recipe::from_toml(&text).map(|(r, _)| r)
        };
        assert_eq!(
            with("verify = 1").unwrap().id(),
            plain.id(),
            "1 is the default: same recipe"
        );
        let two = with("verify = 2").unwrap();
        assert_eq!(two.verify, Some(2));
        assert_ne!(two.id(), plain.id());
        let back = Recipe::from_canonical_bytes(&two.canonical_bytes()).unwrap();
        assert_eq!(back, two);
        let auto = with("verify = \"auto\"").unwrap();
        assert_eq!(auto.verify, Some(crate::build::VERIFY_AUTO));
        assert_eq!(Recipe::from_canonical_bytes(&auto.canonical_bytes()).unwrap(), auto);
        for bad in ["verify = 6", "verify = 0", "verify = \"twice\""] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("verify"), "{bad}: {err}");
        }
    }

    #[test]
    fn options_resolve_with_defaults_and_refuse_unknown_values() {
        let recipe = hello();
        let resolved = recipe.resolve_options(&[("opt".into(), "O0".into())]).unwrap();
        assert_eq!(resolved.get("opt").map(String::as_str), Some("O0"));
        assert_eq!(resolved.get("greeting").map(String::as_str), Some("plain"));
        assert_eq!(
            recipe.render_steps(&resolved),
            vec!["cc -O0 -DGREETING_plain -o hello hello.c".to_string()]
        );

        let err = recipe
            .resolve_options(&[("opt".into(), "O9".into())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "option opt=\"O9\" is not allowed; allowed values: O0, O2 (default O2)"
        );
        let err = recipe
            .resolve_options(&[("jit".into(), "yes".into())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "recipe hello-c has no option \"jit\"; its options are: greeting, opt"
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("name = \"x\"\nversion = \"1\"\n", "build"),
            (&HELLO.replace("name = \"hello-c\"", "name = \"hello c\""), "`name`"),
            (&HELLO.replace("steps =", "stpes ="), "stpes"),
            (
                &HELLO.replace("default = \"O2\"", "default = \"O3\""),
                "options.opt.default",
            ),
            (&HELLO.replace("${opt}", "${optimise}"), "build.steps[0]"),
            (
                &HELLO.replace("outputs = [\"hello\"]", "outputs = [\"../etc/passwd\"]"),
                "build.outputs",
            ),
            (&HELLO.replace("af1349b9", "zz1349b9"), "source.blob"),
            (
                &HELLO.replace("timeout = \"10m\"", "timeout = \"forever\""),
                "build.timeout",
            ),
            (&HELLO.replace("memory = \">=64MiB\"", "memory = \">=lots\""), "memory"),
            (
                &HELLO.replace(
                    "[source]\nblob",
                    "[source]\ngit = \"https://example.org/x.git\"\nrev = \"main\"\n#",
                ),
                "source.rev",
            ),
        ];
        for (text, field) in cases {
            let err = Recipe::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(field), "expected {field} in: {err}");
        }
    }

    #[test]
    fn git_sources_must_use_a_plain_transport() {
        let git = |url: &str| {
            HELLO.replace(
                "[source]\nblob",
                &format!("[source]\ngit = \"{url}\"\nrev = \"{}\"\n#", "a".repeat(40)),
            )
        };
        let err = Recipe::from_toml(&git("ext::sh -c touch% /tmp/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.git") && err.contains("https://"), "{err}");
        assert!(Recipe::from_toml(&git("--upload-pack=evil")).is_err());
        assert!(Recipe::from_toml(&git("https://example.org/repo.git")).is_ok());
        assert!(Recipe::from_toml(&git("file:///srv/repo")).is_ok());
    }

    #[test]
    fn signatures_verify_and_detect_changes() {
        let key = SecretKey::from_bytes(&[9; 32]);
        let recipe = hello();
        let sig = PublisherSignature::sign(&key, &recipe.id());
        let signed_toml = format!(
            "{HELLO}\n[signature]\npublisher = \"{}\"\nsignature = \"{}\"\n",
            sig.publisher, sig.signature
        );
        let (_, parsed) = Recipe::from_toml(&signed_toml).unwrap();
        assert_eq!(parsed, Some(sig));

        let tampered = signed_toml.replace("O0", "O1");
        let err = Recipe::from_toml(&tampered).unwrap_err().to_string();
        assert!(err.contains("kiln recipe sign"), "{err}");
    }

    #[test]
    fn source_paths_are_published_through_the_caller() {
        let text = HELLO.replace(
            "blob = \"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"",
            "path = \"src\"",
        );
        let err = Recipe::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("source.path"), "{err}");
        let mut seen = Vec::new();
        let (recipe, _) = Recipe::from_toml_with_paths(&text, &mut |p| {
            seen.push(p.to_string());
            Ok(Hash::of(b"packed"))
        })
        .unwrap();
        assert_eq!(seen, vec!["src".to_string()]);
        assert_eq!(recipe.source, Source::Blob(Hash::of(b"packed")));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let huge = "#".repeat(RECIPE_BYTES_MAX + 1);
        assert!(matches!(Recipe::from_toml(&huge), Err(RecipeError::TooLarge(_))));
        assert!(Recipe::from_canonical_bytes(&vec![0u8; RECIPE_BYTES_MAX + 1]).is_err());
    }
}
