//! What a worker gave (`kiln contributions`): a record of each build it
//! ran, totals over all time and the last [`WINDOW_DAYS`] days, and the
//! statement a worker signs of them.
//!
//! A statement alone is the worker's word. Its proof ([`Proof`]) carries
//! every attestation the worker signed when it finished a build: the same
//! signed attestations the coordinator settled and requesters received.
//! Anyone can check that the builds done and their attested build time are
//! exactly what those attestations add up to, each signed by the
//! statement's own key, and can hold any of them against the network's
//! records (a build key the network never settled is a claim that fails
//! there). The times inside an attestation are still the worker's own
//! (from the build's start to its end, pauses for the owner included).
//! CPU time, failed builds and bytes served stay the worker's signed claim.

use serde::{Deserialize, Serialize};

use crate::build::Attestation;
use crate::hash::Hash;
use crate::sign::{PublicKey, Signable, Signed};
use crate::wire;

/// The recent period every total is also given for.
pub const WINDOW_DAYS: u64 = 30;
/// The period in milliseconds.
pub const WINDOW_MS: u64 = WINDOW_DAYS * 24 * 3600 * 1000;
/// Most attestations one proof carries (the newest, if a worker made more).
pub const PROOF_ATTESTATIONS_MAX: usize = 100_000;
/// Largest encoded proof read.
pub const PROOF_BYTES_MAX: usize = 64 << 20;
/// Longest failure reason a record keeps.
pub const RECORD_REASON_BYTES_MAX: usize = 512;

/// One build this worker ran, kept when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub build_key: Hash,
    /// "name version", for people.
    pub recipe: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// Time it spent paused for the machine's owner.
    pub paused_ms: u64,
    /// CPU time its processes used, where a cgroup counted it.
    pub cpu_ms: Option<u64>,
    pub ended: BuildEnd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildEnd {
    /// Built; the attestation this worker signed.
    Built { attestation: Signed<Attestation> },
    /// The recipe failed here (or met one of this worker's limits).
    Failed { reason: String },
    /// Given up through no fault of the recipe (inputs out of reach, or
    /// paused for the owner past `--max-pause`).
    Abandoned { reason: String },
}

impl BuildRecord {
    /// Time the build ran, pauses left out.
    pub fn build_ms(&self) -> u64 {
        self.finished_at_ms
            .saturating_sub(self.started_at_ms)
            .saturating_sub(self.paused_ms)
    }
}

/// Totals over some period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub builds_done: u64,
    pub builds_failed: u64,
    pub builds_abandoned: u64,
    /// Time builds ran (done, failed and abandoned), pauses left out.
    pub build_ms: u64,
    /// CPU time of the builds whose CPU time was counted.
    pub cpu_ms: u64,
    /// How many builds that is.
    pub cpu_counted_builds: u64,
    /// Blob bytes this node served to other peers.
    pub served_bytes: u64,
    /// What the attestations of the done builds say of their time, each
    /// from its signed start to its signed end: what a proof checks.
    pub attested_ms: u64,
}

impl Totals {
    pub fn add(&mut self, record: &BuildRecord) {
        match &record.ended {
            BuildEnd::Built { attestation } => {
                self.builds_done += 1;
                if let Ok(a) = attestation.verify() {
                    self.attested_ms = self.attested_ms.saturating_add(attested_ms(&a));
                }
            }
            BuildEnd::Failed { .. } => self.builds_failed += 1,
            BuildEnd::Abandoned { .. } => self.builds_abandoned += 1,
        }
        self.build_ms = self.build_ms.saturating_add(record.build_ms());
        if let Some(cpu) = record.cpu_ms {
            self.cpu_ms = self.cpu_ms.saturating_add(cpu);
            self.cpu_counted_builds += 1;
        }
    }
}

fn attested_ms(a: &Attestation) -> u64 {
    a.finished_at_ms.saturating_sub(a.started_at_ms)
}

/// What a worker says it gave, signed with its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub worker: PublicKey,
    pub made_at_ms: u64,
    pub all_time: Totals,
    /// Since `window_from_ms`: the last [`WINDOW_DAYS`] days.
    pub recent: Totals,
    pub window_from_ms: u64,
    /// [`attestations_digest`] of the attestations of every done build.
    pub attestations: Hash,
}

impl Signable for Statement {
    const DOMAIN: &'static str = "kiln 2026 contribution statement v1";
}

/// The digest a statement names: BLAKE3 over each attestation's canonical
/// bytes, in order.
pub fn attestations_digest(attestations: &[Signed<Attestation>]) -> Hash {
    let mut bytes = Vec::new();
    for a in attestations {
        bytes.extend_from_slice(Hash::of(&wire::canonical(a)).as_bytes());
    }
    Hash::derive("kiln 2026 contribution attestations v1", &bytes)
}

/// A signed statement and the attestations behind it: a file anyone can
/// check (`kiln contributions --verify FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub statement: Signed<Statement>,
    pub attestations: Vec<Signed<Attestation>>,
}

/// What a proof showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub statement: Statement,
    /// Done builds, and their attested time, recomputed from attestations.
    pub builds_done: u64,
    pub attested_ms: u64,
    pub recent_builds_done: u64,
    pub recent_attested_ms: u64,
}

impl Proof {
    /// Checks the statement's signature, that every attestation is signed
    /// by the statement's worker, and that the done builds and their
    /// attested time, over all time and the window, are what the
    /// attestations add up to.
    pub fn check(&self) -> Result<Checked, String> {
        let statement = self
            .statement
            .verify()
            .map_err(|e| format!("the statement's signature does not verify: {e}"))?;
        if self.statement.signer() != statement.worker {
            return Err("the statement is signed by another key than the worker it names".into());
        }
        if self.attestations.len() > PROOF_ATTESTATIONS_MAX {
            return Err(format!(
                "the proof carries more than {PROOF_ATTESTATIONS_MAX} attestations"
            ));
        }
        if attestations_digest(&self.attestations) != statement.attestations {
            return Err("the attestations are not the ones the statement names".into());
        }
        let (mut done, mut ms, mut recent_done, mut recent_ms) = (0u64, 0u64, 0u64, 0u64);
        let mut seen = std::collections::HashSet::new();
        for (i, signed) in self.attestations.iter().enumerate() {
            if !seen.insert(Hash::of(&wire::canonical(signed))) {
                return Err(format!("attestation {} is there twice", i + 1));
            }
            let a = signed
                .verify()
                .map_err(|e| format!("attestation {} does not verify: {e}", i + 1))?;
            if a.worker != statement.worker || signed.signer() != statement.worker {
                return Err(format!(
                    "attestation {} (build {}) is not the worker's own",
                    i + 1,
                    a.build_key
                ));
            }
            done += 1;
            ms = ms.saturating_add(attested_ms(&a));
            if a.finished_at_ms >= statement.window_from_ms {
                recent_done += 1;
                recent_ms = recent_ms.saturating_add(attested_ms(&a));
            }
        }
        let claims = [
            ("done builds", statement.all_time.builds_done, done),
            ("attested build time", statement.all_time.attested_ms, ms),
            ("done builds in the window", statement.recent.builds_done, recent_done),
            (
                "attested build time in the window",
                statement.recent.attested_ms,
                recent_ms,
            ),
        ];
        for (what, claimed, found) in claims {
            if claimed != found {
                return Err(format!(
                    "the statement claims {claimed} for its {what}, and its attestations add up to {found}"
                ));
            }
        }
        Ok(Checked {
            statement,
            builds_done: done,
            attested_ms: ms,
            recent_builds_done: recent_done,
            recent_attested_ms: recent_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SecretKey;

    fn attestation(key: &SecretKey, n: u8, started: u64, finished: u64) -> Signed<Attestation> {
        Signed::sign(
            key,
            &Attestation {
                build_key: Hash::of(&[n]),
                recipe_id: Hash::of(b"recipe"),
                artifact: Hash::of(&[n, 1]),
                artifact_bytes: 10,
                log: Hash::of(&[n, 2]),
                worker: key.public(),
                system_digest: Hash::of(b"system"),
                started_at_ms: started,
                finished_at_ms: finished,
            },
        )
    }

    fn proof(key: &SecretKey, attestations: Vec<Signed<Attestation>>, window_from_ms: u64) -> Proof {
        let mut all_time = Totals::default();
        let mut recent = Totals::default();
        for signed in &attestations {
            let record = BuildRecord {
                build_key: Hash::of(b"k"),
                recipe: "r 1".into(),
                started_at_ms: 0,
                finished_at_ms: 0,
                paused_ms: 0,
                cpu_ms: None,
                ended: BuildEnd::Built {
                    attestation: signed.clone(),
                },
            };
            all_time.add(&record);
            if signed.verify().unwrap().finished_at_ms >= window_from_ms {
                recent.add(&record);
            }
        }
        let statement = Statement {
            worker: key.public(),
            made_at_ms: 10_000,
            all_time,
            recent,
            window_from_ms,
            attestations: attestations_digest(&attestations),
        };
        Proof {
            statement: Signed::sign(key, &statement),
            attestations,
        }
    }

    #[test]
    fn a_proof_checks_when_its_attestations_add_up_and_fails_when_anything_is_changed() {
        let key = SecretKey::from_bytes(&[5; 32]);
        let other = SecretKey::from_bytes(&[6; 32]);
        let good = proof(
            &key,
            vec![attestation(&key, 1, 1_000, 4_000), attestation(&key, 2, 5_000, 6_000)],
            4_500,
        );
        let checked = good.check().unwrap();
        assert_eq!((checked.builds_done, checked.attested_ms), (2, 4_000));
        assert_eq!((checked.recent_builds_done, checked.recent_attested_ms), (1, 1_000));

        // The same attestation counted twice.
        let twice = proof(
            &key,
            vec![attestation(&key, 1, 1_000, 4_000), attestation(&key, 1, 1_000, 4_000)],
            0,
        );
        assert!(twice.check().unwrap_err().contains("there twice"));

        // A build left out of the attestations.
        let mut short = good.clone();
        short.attestations.pop();
        assert!(short.check().unwrap_err().contains("not the ones the statement names"));

        // Another worker's build claimed as its own.
        let stolen = proof(
            &key,
            vec![attestation(&key, 1, 1_000, 4_000), attestation(&other, 3, 0, 100_000)],
            0,
        );
        assert!(stolen.check().unwrap_err().contains("not the worker's own"));

        // Inflated totals, signed by the worker itself.
        let mut inflated = good.statement.verify().unwrap();
        inflated.all_time.attested_ms *= 10;
        let lying = Proof {
            statement: Signed::sign(&key, &inflated),
            attestations: good.attestations.clone(),
        };
        assert!(lying.check().unwrap_err().contains("attested build time"));

        // A statement signed by someone else.
        let forged = Proof {
            statement: Signed::sign(&other, &good.statement.verify().unwrap()),
            attestations: good.attestations.clone(),
        };
        assert!(forged.check().unwrap_err().contains("another key"));
    }

    #[test]
    fn totals_leave_pauses_out_and_count_cpu_only_where_measured() {
        let key = SecretKey::from_bytes(&[5; 32]);
        let mut totals = Totals::default();
        let base = BuildRecord {
            build_key: Hash::of(b"k"),
            recipe: "r 1".into(),
            started_at_ms: 1_000,
            finished_at_ms: 11_000,
            paused_ms: 4_000,
            cpu_ms: Some(3_000),
            ended: BuildEnd::Built {
                attestation: attestation(&key, 1, 1_000, 11_000),
            },
        };
        totals.add(&base);
        totals.add(&BuildRecord {
            cpu_ms: None,
            paused_ms: 0,
            ended: BuildEnd::Failed {
                reason: "step 1".into(),
            },
            ..base.clone()
        });
        assert_eq!(totals.builds_done, 1);
        assert_eq!(totals.builds_failed, 1);
        assert_eq!(totals.build_ms, 6_000 + 10_000);
        assert_eq!((totals.cpu_ms, totals.cpu_counted_builds), (3_000, 1));
        assert_eq!(totals.attested_ms, 10_000);
    }
}
