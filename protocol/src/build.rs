//! Build keys and attestations.
//!
//! A build key names one build: a recipe, every option resolved with its
//! defaults, and the requirements it was asked for. Who asked and their
//! email addresses are not part of it, so identical requests merge.
//! An attestation is a worker's signed statement of what it built.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::sign::{PublicKey, Signable, Signed};
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

/// Most builders a request may ask to agree (`kiln request --verify N`).
pub const VERIFY_MAX: u32 = 5;
/// `--verify auto`, where a count of builders goes on the wire: a worker
/// with a long enough streak of results that others agreed with builds
/// alone (spot-checked now and then); every other job is built twice.
pub const VERIFY_AUTO: u32 = 0;
/// Builders an `auto` job needs when its first builder has no streak.
pub const VERIFY_AUTO_CHECKED: u32 = 2;

/// Of two requests' policies for one build, the one that checks more:
/// any count of 2 or more (always checked) over `auto` (checked unless
/// the builder has a streak), `auto` over 1 (never checked).
pub fn stricter(a: u32, b: u32) -> u32 {
    match (a, b) {
        (a, b) if a >= 2 || b >= 2 => a.max(b),
        (VERIFY_AUTO, _) | (_, VERIFY_AUTO) => VERIFY_AUTO,
        _ => 1,
    }
}

/// The builders that must agree under `verify` (`auto` counts as checked:
/// a build accepted alone is decided apart, by its builder's streak).
pub fn builders_needed(verify: u32) -> u32 {
    if verify == VERIFY_AUTO {
        VERIFY_AUTO_CHECKED
    } else {
        verify.clamp(1, VERIFY_MAX)
    }
}

/// `--verify` in words: `auto` or the count.
pub fn verify_name(verify: u32) -> String {
    if verify == VERIFY_AUTO {
        "auto".into()
    } else {
        verify.to_string()
    }
}

/// What a requester is told of a build accepted on one builder's word
/// because of its streak.
pub fn trusted_summary(streak: u32) -> String {
    format!("built by 1 worker with a streak of {streak} agreed results, not re-checked")
}
/// Most builds one check holds: the builders needed and two more asked
/// when results disagree.
pub const CHECK_BUILDS_MAX: usize = VERIFY_MAX as usize + 2;

/// How a result was checked: `needed` builders with distinct keys had to
/// report the same artifact; `agreed` did (the settled attestation among
/// them), `disagreed` built something else. Every attestation is kept, so
/// a requester can see who vouched for what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub needed: u32,
    pub agreed: Vec<Signed<Attestation>>,
    pub disagreed: Vec<Signed<Attestation>>,
}

impl Check {
    /// The check's attestations verified: every signature valid, every one
    /// for `build_key`, at most [`CHECK_BUILDS_MAX`], each builder once,
    /// the agreeing ones all of one artifact and at least `needed` of them,
    /// and no disagreeing one of that artifact. Returns the artifact.
    pub fn verify(&self, build_key: &Hash) -> Result<Hash, String> {
        if self.agreed.len() + self.disagreed.len() > CHECK_BUILDS_MAX {
            return Err(format!("more than {CHECK_BUILDS_MAX} builds in one check"));
        }
        let agreed = verify_all(&self.agreed, build_key)?;
        let disagreed = verify_all(&self.disagreed, build_key)?;
        let Some(artifact) = agreed.first().map(|a| a.artifact) else {
            return Err("no builder agreed".into());
        };
        if agreed.iter().any(|a| a.artifact != artifact) {
            return Err("the agreeing builders report different artifacts".into());
        }
        if disagreed.iter().any(|a| a.artifact == artifact) {
            return Err("a disagreeing builder reports the agreed artifact".into());
        }
        if (agreed.len() as u64) < u64::from(self.needed.max(1)) {
            return Err(format!("{} builders agreed, {} needed", agreed.len(), self.needed));
        }
        let mut workers: Vec<PublicKey> = agreed.iter().chain(&disagreed).map(|a| a.worker).collect();
        workers.sort();
        let before = workers.len();
        workers.dedup();
        if workers.len() != before {
            return Err("one builder is counted twice".into());
        }
        Ok(artifact)
    }

    /// `2 of 2 builders agreed`, or `2 of 3 builders agreed (1 disagreed)`.
    pub fn summary(&self) -> String {
        let built = self.agreed.len() + self.disagreed.len();
        let mut line = format!("{} of {built} builders agreed", self.agreed.len());
        if !self.disagreed.is_empty() {
            line += &format!(" ({} disagreed)", self.disagreed.len());
        }
        line
    }
}

/// Each attestation's signature checked, and its build key.
pub fn verify_all(attestations: &[Signed<Attestation>], build_key: &Hash) -> Result<Vec<Attestation>, String> {
    attestations
        .iter()
        .map(|signed| {
            let a = signed
                .verify()
                .map_err(|e| format!("an attestation does not verify: {e}"))?;
            if a.build_key != *build_key {
                return Err("an attestation is for another build".into());
            }
            if a.worker != signed.signer() {
                return Err("an attestation is signed by a key other than its worker's".into());
            }
            Ok(a)
        })
        .collect()
}

/// The attestations that vouch for one artifact of `build_key` by at least
/// `verify` builders with distinct keys, the most vouched-for artifact
/// first; `None` if no artifact has that many. An attestation counts only
/// if its signature holds, it names `build_key`, and it is signed by the
/// worker it names: a record anyone can write in the DHT is believed only
/// as far as it meets the requester's policy.
pub fn agreeing(
    attestations: &[Signed<Attestation>],
    build_key: Hash,
    verify: u32,
) -> Option<Vec<Signed<Attestation>>> {
    let mut by_artifact: Vec<(Hash, Vec<Signed<Attestation>>)> = Vec::new();
    for signed in attestations {
        let Ok(a) = signed.verify() else {
            continue;
        };
        if a.build_key != build_key || a.worker != signed.signer() {
            continue;
        }
        let at = match by_artifact.iter().position(|(artifact, _)| *artifact == a.artifact) {
            Some(at) => at,
            None => {
                by_artifact.push((a.artifact, Vec::new()));
                by_artifact.len() - 1
            }
        };
        let group = &mut by_artifact[at].1;
        if group.iter().all(|s| s.signer() != signed.signer()) {
            group.push(signed.clone());
        }
    }
    by_artifact.sort_by_key(|(_, group)| std::cmp::Reverse(group.len()));
    by_artifact
        .into_iter()
        .map(|(_, group)| group)
        .find(|group| group.len() >= verify.max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SecretKey;

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

    fn built(n: u8, artifact: &[u8]) -> Signed<Attestation> {
        let key = SecretKey::from_bytes(&[n; 32]);
        let attestation = Attestation {
            build_key: Hash::of(b"key"),
            recipe_id: Hash::of(b"recipe"),
            artifact: Hash::of(artifact),
            artifact_bytes: 1,
            log: Hash::of(b"log"),
            worker: key.public(),
            system_digest: Hash::of(b"system"),
            started_at_ms: 0,
            finished_at_ms: 1,
        };
        Signed::sign(&key, &attestation)
    }

    #[test]
    fn a_check_holds_only_with_enough_distinct_agreeing_builders() {
        let key = Hash::of(b"key");
        let check = |needed, agreed: Vec<Signed<Attestation>>, disagreed| Check {
            needed,
            agreed,
            disagreed,
        };
        let good = check(2, vec![built(1, b"A"), built(2, b"A")], vec![built(3, b"B")]);
        assert_eq!(good.verify(&key), Ok(Hash::of(b"A")));
        assert_eq!(good.summary(), "2 of 3 builders agreed (1 disagreed)");
        assert!(check(2, vec![built(1, b"A")], vec![]).verify(&key).is_err(), "too few");
        assert!(
            check(2, vec![built(1, b"A"), built(1, b"A")], vec![])
                .verify(&key)
                .is_err(),
            "one builder twice"
        );
        assert!(
            check(2, vec![built(1, b"A"), built(2, b"B")], vec![])
                .verify(&key)
                .is_err(),
            "not one artifact"
        );
        assert!(
            check(1, vec![built(1, b"A")], vec![built(2, b"A")])
                .verify(&key)
                .is_err(),
            "a disagreement that agrees"
        );
        assert!(
            check(1, vec![built(1, b"A")], vec![])
                .verify(&Hash::of(b"other"))
                .is_err(),
            "another build"
        );
    }
}
