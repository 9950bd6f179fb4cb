//! The verification policy (`coordinator::verification`), simulated with no
//! network (issue 16, point 4): jobs on workers of which some lie, under
//! `--verify 1`, `--verify 2` and `--verify auto`.
//!
//! Model:
//! - jobs run one after another; each job's first builder is a worker drawn
//!   at random; further builders for the same job are other workers: drawn
//!   at random for `--verify N`, and for `auto` the one with the longest
//!   streak (ties drawn at random), as the policy says;
//! - an honest worker returns the job's true hash; a liar returns a wrong
//!   one. Liars that lie on every job **collude**: they return the same
//!   wrong hash for a job (the worst case for `--verify 2`: two colluders
//!   agree). Liars that lie on 1 job in 20 do not: each lie is a hash of
//!   its own;
//! - under `auto`, a worker caught disagreeing has its unchecked results
//!   built again by the longest-streak worker; a wrong one found so is
//!   counted as corrected, and the check as an extra build.
//!
//! Prints, per policy: builds per job beyond the first (all jobs, and the
//! second half, once streaks have formed), the share of accepted results
//! that are wrong (when accepted, and after corrections), and the builds
//! that ended not reproducible.
//!
//!     cargo run --release -p kiln-node --example sim_verify -- 10000 100 10 5 [SEED]
//!
//! Not a test: a benchmark (BENCHMARKS.md, "Verification policy").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use kiln_node::coordinator::verification::{judge, Streaks, Verdict, Verify};
use kiln_protocol::Hash;

/// xorshift64*: deterministic, so a run reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Honest,
    /// Lies on every job, agreeing with the other colluders.
    Colluder,
    /// Lies on 1 job in 20, alone.
    Sometimes,
}

struct World {
    kinds: Vec<Kind>,
    rng: Rng,
}

impl World {
    fn truth(job: usize) -> Hash {
        Hash::of(&(job as u64).to_le_bytes())
    }

    fn build(&mut self, worker: usize, job: usize) -> Hash {
        match self.kinds[worker] {
            Kind::Honest => World::truth(job),
            Kind::Colluder => Hash::derive("colluders", &(job as u64).to_le_bytes()),
            Kind::Sometimes if self.rng.below(20) == 0 => Hash::derive(
                "alone",
                &[(job as u64).to_le_bytes(), (worker as u64).to_le_bytes()].concat(),
            ),
            Kind::Sometimes => World::truth(job),
        }
    }
}

#[derive(Default)]
struct Tally {
    builds: u64,
    builds_second_half: u64,
    accepted: u64,
    wrong_when_accepted: u64,
    corrected: u64,
    not_reproducible: u64,
}

fn run(verify: Verify, jobs: usize, kinds: &[Kind], seed: u64) -> Tally {
    let mut world = World {
        kinds: kinds.to_vec(),
        rng: Rng(seed),
    };
    let workers = kinds.len();
    let mut streaks: Streaks<usize, usize> = Streaks::default();
    let mut accepted: Vec<Option<Hash>> = vec![None; jobs];
    let mut tally = Tally::default();
    for job in 0..jobs {
        let first = first_builder(&mut world.rng, &streaks, verify, workers);
        let needed = streaks.needed(verify, &first, world.rng.unit());
        let mut results = vec![(first, world.build(first, job))];
        let verdict = loop {
            match judge(&results, needed) {
                Verdict::NeedMore => {
                    let next = pick(&mut world.rng, &streaks, verify, workers, &results);
                    let hash = world.build(next, job);
                    results.push((next, hash));
                }
                other => break other,
            }
        };
        let built = results.len() as u64;
        tally.builds += built;
        if job >= jobs / 2 {
            tally.builds_second_half += built;
        }
        match verdict {
            Verdict::Accepted {
                artifact,
                agreed,
                disagreed,
            } => {
                tally.accepted += 1;
                if artifact != World::truth(job) {
                    tally.wrong_when_accepted += 1;
                }
                accepted[job] = Some(artifact);
                if verify != Verify::Auto {
                    continue;
                }
                if agreed.len() == 1 && disagreed.is_empty() {
                    streaks.unchecked(&agreed[0], job);
                } else {
                    for w in &agreed {
                        streaks.agreed(w);
                    }
                }
                for w in &disagreed {
                    for old in streaks.reset(w) {
                        // Built again by the longest-streak other worker.
                        let checker = pick(&mut world.rng, &streaks, verify, workers, &[(*w, Hash::of(b""))]);
                        tally.builds += 1;
                        if job >= jobs / 2 {
                            tally.builds_second_half += 1;
                        }
                        let hash = world.build(checker, old);
                        if Some(hash) != accepted[old] && hash == World::truth(old) {
                            accepted[old] = Some(hash);
                            tally.corrected += 1;
                        }
                    }
                }
            }
            Verdict::NotReproducible => tally.not_reproducible += 1,
            Verdict::NeedMore => unreachable!(),
        }
    }
    tally
}

/// A job's first builder: at random; for `auto`, at random among the
/// workers not suspect (see `Streaks::suspect`), if any.
fn first_builder(rng: &mut Rng, streaks: &Streaks<usize, usize>, verify: Verify, workers: usize) -> usize {
    if verify != Verify::Auto {
        return rng.below(workers);
    }
    let trusted: Vec<usize> = (0..workers).filter(|w| !streaks.suspect(w)).collect();
    if trusted.is_empty() {
        return rng.below(workers);
    }
    trusted[rng.below(trusted.len())]
}

/// Another builder for a job: at random for `--verify N`; for `auto`, the
/// longest streak among those who have not built it (ties at random).
fn pick(
    rng: &mut Rng,
    streaks: &Streaks<usize, usize>,
    verify: Verify,
    workers: usize,
    built: &[(usize, Hash)],
) -> usize {
    let free = |w: &usize| !built.iter().any(|(b, _)| b == w);
    loop {
        let candidate = rng.below(workers);
        if verify != Verify::Auto {
            if free(&candidate) {
                return candidate;
            }
            continue;
        }
        let best = (0..workers).filter(free).map(|w| streaks.streak(&w)).max().unwrap_or(0);
        let top: Vec<usize> = (0..workers).filter(|w| free(w) && streaks.streak(w) == best).collect();
        return top[rng.below(top.len())];
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let jobs = *args.first().unwrap_or(&10_000) as usize;
    let workers = *args.get(1).unwrap_or(&100) as usize;
    let colluders = *args.get(2).unwrap_or(&10) as usize;
    let sometimes = *args.get(3).unwrap_or(&5) as usize;
    let seed = *args.get(4).unwrap_or(&0x5eed);
    let mut kinds = vec![Kind::Honest; workers];
    kinds[..colluders].fill(Kind::Colluder);
    kinds[colluders..colluders + sometimes].fill(Kind::Sometimes);
    // Spread the liars among the workers' numbers (the draw is uniform anyway).
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i + 1));
    }
    println!(
        "{jobs} jobs, {workers} workers: {colluders} lie on every job (colluding), {sometimes} lie on 1 job in 20, {} honest; seed {seed}",
        workers - colluders - sometimes
    );
    println!("| policy | extra builds per job | extra, second half | wrong when accepted | wrong after corrections | not reproducible |");
    println!("|---|---|---|---|---|---|");
    for (name, verify) in [
        ("--verify 1", Verify::Builders(1)),
        ("--verify 2", Verify::Builders(2)),
        ("--verify auto", Verify::Auto),
    ] {
        let t = run(verify, jobs, &kinds, seed);
        let half = (jobs - jobs / 2) as f64;
        let accepted = t.accepted.max(1) as f64;
        println!(
            "| {name} | {:.1} % | {:.1} % | {:.2} % | {:.2} % | {} |",
            (t.builds as f64 / jobs as f64 - 1.0) * 100.0,
            (t.builds_second_half as f64 / half - 1.0) * 100.0,
            t.wrong_when_accepted as f64 / accepted * 100.0,
            t.wrong_when_accepted.saturating_sub(t.corrected) as f64 / accepted * 100.0,
            t.not_reproducible
        );
    }
}
