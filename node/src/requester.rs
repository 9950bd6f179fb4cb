//! The requester (`kiln request`): prepares a job from a recipe (packing
//! its source, resolving options and requirements) and looks for an
//! existing build in the DHT. Submitting and following a build go through
//! [`crate::coord_client`].
//!
//! Not for: the network protocol itself, or deciding anything about the
//! farm (the coordinator does).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kiln_protocol::messages::{check_email, JobRequest, EMAILS_MAX};
use kiln_protocol::{build_key, wire, Attestation, Hash, PublisherSignature, Recipe, Requirements, Signed};
use kiln_store::Store;

use crate::archive;
use crate::coord_client::CoordError;
use crate::net::NetClient;

/// How long the DHT lookup of an existing build may take.
const RECORD_LOOKUP_MS_MAX: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read recipe {path}: {reason}")]
    Recipe { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("store: {0}")]
    Store(#[from] kiln_store::StoreError),
}

/// What a requester asks for.
pub struct RequestSpec<'a> {
    pub emails: &'a [String],
    /// `-o NAME=VALUE`.
    pub options: &'a [(String, String)],
    /// `--target KEY=VALUE` (over the requester's own os and arch).
    pub targets: &'a [String],
}

/// Reads a recipe file into `store`: its `source.path` packed as an archive,
/// and the recipe's canonical bytes under its id, ready to be served.
pub fn load_recipe_into(store: &Store, path: &Path) -> Result<(Recipe, Option<PublisherSignature>), RequestError> {
    let fail = |reason: String| RequestError::Recipe {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("{e}; check the path")))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let (recipe, publisher) = Recipe::from_toml_with_paths(&text, &mut |source| {
        let tmp = tempfile::NamedTempFile::new_in(store.dir()).map_err(|e| e.to_string())?;
        archive::pack_dir(&base.join(source), std::io::BufWriter::new(tmp.as_file())).map_err(|e| e.to_string())?;
        store
            .put_file(tmp.path(), None)
            .map(|(hash, _)| hash)
            .map_err(|e| e.to_string())
    })
    .map_err(|e| fail(e.to_string()))?;
    store.put_bytes(&recipe.canonical_bytes(), Some(recipe.id()))?;
    Ok((recipe, publisher))
}

/// Reads a recipe file and hashes its `source.path` as an archive, storing
/// nothing: enough to know the build key, and so whether the build exists,
/// before anything is written or announced. [`load_recipe_into`] gives the
/// same recipe (the same id) when the files did not change meanwhile.
pub fn read_recipe(path: &Path) -> Result<(Recipe, Option<PublisherSignature>), RequestError> {
    let fail = |reason: String| RequestError::Recipe {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("{e}; check the path")))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    Recipe::from_toml_with_paths(&text, &mut |source| {
        let mut hasher = kiln_protocol::hash::Hasher::new();
        archive::pack_dir(&base.join(source), &mut hasher).map_err(|e| e.to_string())?;
        Ok(Hash::from(hasher.finalize()))
    })
    .map_err(|e| fail(e.to_string()))
}

/// The job for `recipe` as `spec` asks: options resolved (an unknown or
/// disallowed value is an error listing what is allowed), requirements of
/// this machine's os and arch, then the recipe's, then `--target`.
pub fn prepare_job(
    recipe: &Recipe,
    publisher: Option<PublisherSignature>,
    spec: &RequestSpec<'_>,
    now_ms: u64,
) -> Result<JobRequest, RequestError> {
    if spec.emails.is_empty() {
        return Err(RequestError::Invalid(
            "a request needs at least one --email ADDR to tell when the build is ready".into(),
        ));
    }
    if spec.emails.len() > EMAILS_MAX {
        return Err(RequestError::Invalid(format!(
            "at most {EMAILS_MAX} --email addresses per request"
        )));
    }
    let mut emails: Vec<String> = Vec::new();
    for email in spec.emails {
        check_email(email).map_err(RequestError::Invalid)?;
        if !emails.contains(email) {
            emails.push(email.clone());
        }
    }
    let options: BTreeMap<String, String> = recipe
        .resolve_options(spec.options)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let mut requirements = Requirements::new();
    let own = [
        format!("os={}", std::env::consts::OS),
        format!("arch={}", std::env::consts::ARCH),
    ];
    for text in &own {
        requirements
            .set_from_str(text)
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
    }
    requirements = requirements
        .overlaid(&recipe.requirements)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    for target in spec.targets {
        requirements.set_from_str(target).map_err(|e| {
            RequestError::Invalid(format!(
                "--target {target:?}: {e} (write it like arch=aarch64 or gcc>=12)"
            ))
        })?;
    }
    let recipe_id = recipe.id();
    Ok(JobRequest {
        build_key: build_key(&recipe_id, &options, &requirements),
        recipe_id,
        recipe_name: recipe.name.clone(),
        recipe_version: recipe.version.clone(),
        publisher,
        options,
        requirements,
        emails,
        requested_at_ms: now_ms,
    })
}

/// Attestations for `build_key` found in the DHT (signatures checked).
pub async fn lookup_built(net: &NetClient, build_key: Hash) -> Vec<Signed<Attestation>> {
    let lookup = tokio::time::timeout(Duration::from_millis(RECORD_LOOKUP_MS_MAX), net.get_record(build_key));
    let Ok(Ok(Some(bytes))) = lookup.await else {
        return Vec::new();
    };
    let Ok(list) = wire::decode::<Vec<Signed<Attestation>>, 65_536>(&bytes) else {
        return Vec::new();
    };
    list.into_iter()
        .filter(|s| s.verify().is_ok_and(|a| a.build_key == build_key))
        .collect()
}

pub use kiln_protocol::build::agreeing;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_protocol::SecretKey;

    fn signed(by: u8, worker: u8, build_key: Hash, artifact: &[u8]) -> Signed<Attestation> {
        let attestation = Attestation {
            build_key,
            recipe_id: Hash::of(b"recipe"),
            artifact: Hash::of(artifact),
            artifact_bytes: 1,
            log: Hash::of(b"log"),
            worker: SecretKey::from_bytes(&[worker; 32]).public(),
            system_digest: Hash::of(b"system"),
            started_at_ms: 0,
            finished_at_ms: 1,
        };
        Signed::sign(&SecretKey::from_bytes(&[by; 32]), &attestation)
    }

    #[test]
    fn a_record_counts_only_as_far_as_distinct_honest_signatures_agree() {
        let key = Hash::of(b"key");
        // One builder is enough for --verify 1, not for --verify 2.
        let one = vec![signed(1, 1, key, b"A")];
        assert_eq!(agreeing(&one, key, 1).map(|a| a.len()), Some(1));
        assert_eq!(agreeing(&one, key, 2), None);
        // A forger repeating itself, or signing in another worker's name,
        // or for another build, adds nothing.
        let forged = vec![
            signed(9, 9, key, b"trojan"),
            signed(9, 9, key, b"trojan"),
            signed(9, 1, key, b"trojan"),
            signed(9, 9, Hash::of(b"other"), b"trojan"),
        ];
        assert_eq!(agreeing(&forged, key, 2), None);
        // Two builders with distinct keys agreeing: accepted, the most
        // vouched-for artifact first.
        let mut honest = forged.clone();
        honest.extend([signed(1, 1, key, b"A"), signed(2, 2, key, b"A")]);
        let agreed = agreeing(&honest, key, 2).unwrap();
        assert_eq!(agreed.len(), 2);
        assert!(agreed.iter().all(|a| a.verify().unwrap().artifact == Hash::of(b"A")));
        assert_eq!(
            agreeing(&honest, key, 1).unwrap()[0].verify().unwrap().artifact,
            Hash::of(b"A")
        );
    }
}
