//! Build keys and attestations.
//!
//! A build key names one build: a recipe, every option resolved with its
//! defaults, and the requirements it was asked for. Who asked and their
//! email addresses are not part of it, so identical requests merge.
//! An attestation is a worker's signed statement of what it built.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::sign::{PublicKey, Signable};
use crate::system::Requirements;
use crate::wire;

const BUILD_KEY_DOMAIN: &str = "kiln 2026 build-key v1";

/// Derives the build key. Stable across runs, machines and versions of
/// Kiln: the committed test vectors below must never change.
pub fn build_key(recipe_id: &Hash, options: &BTreeMap<String, String>, requirements: &Requirements) -> Hash {
    Hash::derive(BUILD_KEY_DOMAIN, &wire::canonical(&(recipe_id, options, requirements)))
}

/// What a worker vouches for when it finishes a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub build_key: Hash,
    pub recipe_id: Hash,
    pub artifact: Hash,
    pub artifact_bytes: u64,
    pub log: Hash,
    pub worker: PublicKey,
    pub system_digest: Hash,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

impl Signable for Attestation {
    const DOMAIN: &'static str = "kiln 2026 attestation v1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{SecretKey, Signed};

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn requirements(items: &[&str]) -> Requirements {
        let mut r = Requirements::new();
        for item in items {
            r.set_from_str(item).unwrap();
        }
        r
    }

    /// Committed vectors: if one of these changes, peers running different
    /// versions would stop merging identical requests. Don't update them;
    /// version the derivation instead.
    #[test]
    fn build_key_vectors() {
        let recipe = Hash::of(b"recipe");
        assert_eq!(
            build_key(&recipe, &BTreeMap::new(), &Requirements::new()).to_string(),
            "c981147e3a4b5dce74055ba6a2fa20591b899f349c21ab53e1a9f5b207663db4"
        );
        assert_eq!(
            build_key(
                &recipe,
                &options(&[("opt", "O2"), ("greeting", "plain")]),
                &requirements(&["os=linux", "arch=x86_64"])
            )
            .to_string(),
            "e6fd613ac9716357be8fd5bf1a08fe6e357796a32b8d573bdf74bc08213e878c"
        );
    }

    #[test]
    fn build_key_depends_on_every_input_but_not_on_order() {
        let recipe = Hash::of(b"recipe");
        let base = build_key(
            &recipe,
            &options(&[("a", "1"), ("b", "2")]),
            &requirements(&["os=linux"]),
        );
        assert_eq!(
            base,
            build_key(
                &recipe,
                &options(&[("b", "2"), ("a", "1")]),
                &requirements(&["os=linux"])
            )
        );
        assert_ne!(
            base,
            build_key(
                &Hash::of(b"other"),
                &options(&[("a", "1"), ("b", "2")]),
                &requirements(&["os=linux"])
            )
        );
        assert_ne!(
            base,
            build_key(
                &recipe,
                &options(&[("a", "1"), ("b", "3")]),
                &requirements(&["os=linux"])
            )
        );
        assert_ne!(
            base,
            build_key(
                &recipe,
                &options(&[("a", "1"), ("b", "2")]),
                &requirements(&["os=macos"])
            )
        );
    }

    #[test]
    fn attestation_signs_and_verifies() {
        let key = SecretKey::from_bytes(&[5; 32]);
        let attestation = Attestation {
            build_key: Hash::of(b"k"),
            recipe_id: Hash::of(b"r"),
            artifact: Hash::of(b"a"),
            artifact_bytes: 1,
            log: Hash::of(b"l"),
            worker: key.public(),
            system_digest: Hash::of(b"s"),
            started_at_ms: 1,
            finished_at_ms: 2,
        };
        let signed = Signed::sign(&key, &attestation);
        assert_eq!(signed.verify().unwrap(), attestation);
    }
}
