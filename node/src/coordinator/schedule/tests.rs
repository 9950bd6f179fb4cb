//! The schedule's decisions, tested without a network or a clock.

use super::*;
use kiln_protocol::{Requirements, SecretKey, SystemInfo};

fn worker(n: u8) -> PublicKey {
    SecretKey::from_bytes(&[n; 32]).public()
}

fn advert(arch: &str, max_jobs: u32, running: Vec<Hash>) -> WorkerAdvert {
    WorkerAdvert {
        system: SystemInfo {
            os: "linux".into(),
            arch: arch.into(),
            ..SystemInfo::default()
        },
        max_jobs,
        running_jobs: running.len() as u32,
        waiting_because: None,
        sequence: 0,
        running,
    }
}

fn job(name: &str, arch: &str, email: &str) -> JobRequest {
    let mut requirements = Requirements::new();
    requirements.set_from_str(&format!("arch={arch}")).unwrap();
    JobRequest {
        build_key: Hash::of(format!("{name}/{arch}").as_bytes()),
        recipe_id: Hash::of(name.as_bytes()),
        recipe_name: name.into(),
        recipe_version: "1".into(),
        publisher: None,
        options: BTreeMap::new(),
        requirements,
        emails: vec![email.into()],
        requested_at_ms: 0,
    }
}

fn assigned_to(decisions: &[Decision]) -> Vec<(Hash, PublicKey)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { build_key, worker, .. } => Some((*build_key, *worker)),
            Decision::Waits { .. } => None,
        })
        .collect()
}

#[test]
fn jobs_go_to_matching_workers_least_loaded_first() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 2, vec![]), 0);
    s.advert(worker(2), advert("x86_64", 2, vec![]), 0);
    s.advert(worker(3), advert("aarch64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    let b = job("b", "x86_64", "b@example.org");
    let c = job("c", "aarch64", "c@example.org");
    for j in [&a, &b, &c] {
        assert_eq!(s.submit(j.clone(), 1, None), Ok(Submitted::New));
    }
    let plan = assigned_to(&s.plan(1));
    assert_eq!(plan.len(), 3);
    assert_eq!(plan[0].0, a.build_key);
    assert_ne!(plan[0].1, plan[1].1, "the load is spread over both x86_64 workers");
    assert_eq!(plan[2], (c.build_key, worker(3)));
    assert!(s.plan(2).is_empty());
}

#[test]
fn identical_requests_merge_their_addresses() {
    let mut s = Schedule::new();
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    let mut again = a.clone();
    again.emails = vec!["b@example.org".into(), "a@example.org".into()];
    assert_eq!(
        s.submit(again, 1, None),
        Ok(Submitted::Merged {
            new_emails: vec!["b@example.org".into()]
        })
    );
    assert_eq!(s.job(&a.build_key).unwrap().request.emails.len(), 2);
    assert_eq!(s.open_jobs(), 1);
}

#[test]
fn a_job_no_worker_matches_waits_and_says_why() {
    let mut s = Schedule::new();
    let c = job("c", "aarch64", "c@example.org");
    s.submit(c.clone(), 1, None).unwrap();
    s.plan(0);
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    assert!(assigned_to(&s.plan(1)).is_empty());
    let JobPhase::Queued {
        waiting_because: Some(why),
    } = s.job(&c.build_key).unwrap().phase()
    else {
        panic!("not waiting")
    };
    assert!(why.contains("arch=x86_64 (wanted arch=aarch64)"), "{why}");
    // A matching worker joins: dispatched at once.
    s.advert(worker(2), advert("aarch64", 1, vec![]), 2);
    assert_eq!(assigned_to(&s.plan(3)), vec![(c.build_key, worker(2))]);
}

#[test]
fn a_failing_build_is_retried_on_other_workers_then_given_up() {
    let mut s = Schedule::new();
    for n in 1..=4 {
        s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
    }
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    let mut tried = BTreeSet::new();
    for attempt in 1..=FAILED_ATTEMPTS_MAX {
        let plan = s.plan(u64::from(attempt));
        let [Decision::Assign { worker, attempt: n, .. }] = plan.as_slice() else {
            panic!("attempt {attempt}: {plan:?}")
        };
        assert_eq!(*n, attempt);
        assert!(tried.insert(*worker), "retried on a worker that failed it");
        s.failed(&a.build_key, *worker, "exit status 1", None);
    }
    assert!(matches!(s.job(&a.build_key).unwrap().state, JobState::GaveUp { .. }));
    assert_eq!(s.ended(), vec![a.build_key]);
}

#[test]
fn a_failure_with_no_other_matching_worker_is_final() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    s.plan(1);
    s.failed(&a.build_key, worker(1), "exit status 1", None);
    assert!(s.plan(2).is_empty());
    let JobPhase::Failed { reason, .. } = s.job(&a.build_key).unwrap().phase() else {
        panic!("not failed")
    };
    assert!(reason.contains("no other worker matches"), "{reason}");
}

#[test]
fn a_refusing_worker_is_skipped_for_a_while() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    let first = assigned_to(&s.plan(1))[0].1;
    s.refused(&a.build_key, first, "busy", 2);
    let second = assigned_to(&s.plan(3))[0].1;
    assert_ne!(first, second);
    s.refused(&a.build_key, second, "busy", 4);
    assert!(s.plan(5).is_empty(), "both refused just now");
    let later = 5 + REFUSAL_SKIP_MS;
    s.advert(worker(1), advert("x86_64", 1, vec![]), later);
    s.advert(worker(2), advert("x86_64", 1, vec![]), later);
    assert_eq!(s.plan(later).len(), 1);
}

#[test]
fn a_silent_worker_loses_its_lease_and_a_worker_that_dropped_the_job_too() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    s.plan(0);
    // Heartbeats listing the job keep the lease.
    s.advert(worker(1), advert("x86_64", 1, vec![a.build_key]), LEASE_MS);
    assert!(s.tick(LEASE_MS + 1).is_empty());
    // Silence past the lease: back in the queue.
    assert_eq!(s.tick(2 * LEASE_MS + 1), vec![a.build_key]);
    assert_eq!(s.job(&a.build_key).unwrap().lost_attempts, 1);
    // A worker that restarted and no longer lists the job loses it too.
    s.advert(worker(2), advert("x86_64", 1, vec![]), 2 * LEASE_MS + 2);
    let plan = assigned_to(&s.plan(2 * LEASE_MS + 3));
    assert_eq!(plan, vec![(a.build_key, worker(2))]);
    let late = 2 * LEASE_MS + 3 + ADVERT_GRACE_MS + 1;
    assert_eq!(
        s.advert(worker(2), advert("x86_64", 1, vec![]), late),
        vec![a.build_key]
    );
}

#[test]
fn an_idle_worker_heard_rarely_gets_work_and_keeps_its_lease_until_it_falls_silent() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    // Idle workers refresh rarely: one last heard 20 s ago still gets work,
    let t = 20_000;
    assert!(t > LEASE_MS && t <= WORKER_ALIVE_MS);
    assert_eq!(assigned_to(&s.plan(t)), vec![(a.build_key, worker(1))]);
    // and the lease counts from the assignment, not from that old advert.
    assert!(s.tick(t + LEASE_MS).is_empty());
    // Silent past the lease from the assignment: back in the queue.
    assert_eq!(s.tick(t + LEASE_MS + 1), vec![a.build_key]);
    // A worker unheard for longer than WORKER_ALIVE_MS is offered nothing.
    let late = WORKER_ALIVE_MS + 1;
    assert!(assigned_to(&s.plan(late)).is_empty());
}

#[test]
fn a_job_queued_while_every_worker_is_busy_says_why_and_the_change_is_told() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    let b = job("b", "aarch64", "b@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    assert_eq!(assigned_to(&s.plan(1)), vec![(a.build_key, worker(1))]);
    // No worker is free now; the new job still gets its reason, once.
    s.submit(b.clone(), 1, None).unwrap();
    let plan = s.plan(2);
    assert_eq!(plan, vec![Decision::Waits { build_key: b.build_key }]);
    let why = s.job(&b.build_key).unwrap().waiting_because.clone().unwrap();
    assert!(why.starts_with("no worker matches its requirements"), "{why}");
    assert!(s.plan(3).is_empty(), "an unchanged reason is not told again");
}

#[test]
fn kept_jobs_come_back_with_their_assignment_and_history() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    let first = assigned_to(&s.plan(0))[0].1;
    s.failed(&a.build_key, first, "exit status 1", None);
    let second = assigned_to(&s.plan(1))[0].1;
    let bytes = wire::encode(s.job(&a.build_key).unwrap()).unwrap();

    let mut restarted = Schedule::new();
    let kept: Job = wire::decode::<_, 65536>(&bytes).unwrap();
    restarted.restore(kept, 100);
    let job = restarted.job(&a.build_key).unwrap();
    assert_eq!(job.failed_on, BTreeSet::from([first]));
    assert!(matches!(job.state, JobState::Assigned { worker, since_ms: 100, .. } if worker == second));
    restarted.advert(second, advert("x86_64", 1, vec![a.build_key]), 200);
    assert!(restarted.tick(300).is_empty());
}

/// Regression: a job restored from disk as assigned to a worker whose
/// first advert came after the restore was never checked against that
/// worker's adverts, and stayed "building" forever on a worker that was
/// not building it.
#[test]
fn a_restored_assignment_the_worker_does_not_run_goes_back_to_the_queue() {
    let mut before = Schedule::new();
    before.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    before.submit(a.clone(), 1, None).unwrap();
    assert_eq!(assigned_to(&before.plan(1)), vec![(a.build_key, worker(1))]);
    let kept = before.remove(&a.build_key).unwrap();

    // A restart: the job comes back from disk before the worker is heard.
    let mut after = Schedule::new();
    after.restore(kept, 10_000);
    assert!(
        after.advert(worker(1), advert("x86_64", 1, vec![]), 11_000).is_empty(),
        "within the grace"
    );
    let lost = after.advert(worker(1), advert("x86_64", 1, vec![]), 10_000 + ADVERT_GRACE_MS + 1);
    assert_eq!(lost, vec![a.build_key], "back in the queue");
    assert_eq!(after.job(&a.build_key).unwrap().state, JobState::Queued);
}

#[test]
fn a_restored_assignment_the_worker_runs_is_kept_and_an_unknown_worker_loses_it() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    s.plan(1);
    let kept = s.remove(&a.build_key).unwrap();
    let mut running = Schedule::new();
    running.restore(kept.clone(), 10_000);
    let still = running.advert(worker(1), advert("x86_64", 1, vec![a.build_key]), 20_000);
    assert!(still.is_empty());
    assert!(
        running.tick(20_000 + LEASE_MS / 2).is_empty(),
        "its worker is alive and runs it"
    );
    assert!(matches!(
        running.job(&a.build_key).unwrap().state,
        JobState::Assigned { .. }
    ));
    // A worker never heard of at all: the lease runs out.
    let mut silent = Schedule::new();
    silent.restore(kept, 10_000);
    assert!(silent.tick(10_000 + LEASE_MS).is_empty());
    assert_eq!(silent.tick(10_000 + LEASE_MS + 1), vec![a.build_key]);
}

#[test]
fn a_restored_job_held_for_its_check_is_assigned_once_checked_or_after_the_bound() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 4, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    let b = job("b", "x86_64", "b@example.org");
    for j in [&a, &b] {
        let mut kept = Schedule::new();
        kept.submit(j.clone(), 1, None).unwrap();
        let bytes = wire::encode(kept.job(&j.build_key).unwrap()).unwrap();
        s.restore(wire::decode::<_, 65536>(&bytes).unwrap(), 0);
        s.hold_for_check(j.build_key, RESTORED_CHECK_MS_MAX);
    }
    assert!(s.plan(1).is_empty(), "held while the DHT is asked");
    let waiting = s.job(&a.build_key).unwrap().waiting_because.clone().unwrap();
    assert!(waiting.contains("checking whether it was built"), "{waiting}");
    s.checked(&a.build_key);
    assert_eq!(assigned_to(&s.plan(2)), vec![(a.build_key, worker(1))]);
    s.advert(
        worker(1),
        advert("x86_64", 4, vec![a.build_key]),
        RESTORED_CHECK_MS_MAX - 1,
    );
    assert!(s.plan(RESTORED_CHECK_MS_MAX - 1).is_empty(), "b is still held");
    assert_eq!(
        assigned_to(&s.plan(RESTORED_CHECK_MS_MAX)),
        vec![(b.build_key, worker(1))],
        "no answer: assigned after the bound"
    );
}

fn signed_build(n: u8, build_key: Hash, artifact: &[u8]) -> Signed<Attestation> {
    let key = SecretKey::from_bytes(&[n; 32]);
    let attestation = Attestation {
        build_key,
        recipe_id: Hash::of(b"recipe"),
        artifact: Hash::of(artifact),
        artifact_bytes: artifact.len() as u64,
        log: Hash::of(b"log"),
        worker: key.public(),
        system_digest: Hash::of(b"system"),
        started_at_ms: 0,
        finished_at_ms: 1,
    };
    Signed::sign(&key, &attestation)
}

/// Plans once and returns the one worker the job went to.
fn lease_of(s: &mut Schedule, build_key: Hash, now: u64) -> PublicKey {
    let leased = assigned_to(&s.plan(now));
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(leased[0].0, build_key);
    leased[0].1
}

fn number_of(worker_key: PublicKey) -> u8 {
    (1..=9).find(|n| worker(*n) == worker_key).unwrap()
}

#[test]
fn a_job_that_needs_two_builders_is_built_by_two_distinct_workers_and_settles_on_their_agreement() {
    let mut s = Schedule::new();
    for n in 1..=3 {
        s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
    }
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 2, None).unwrap();
    let first = lease_of(&mut s, a.build_key, 0);
    // A build from a worker the job is not leased to is not taken.
    let stranger = (1..=3).map(worker).find(|w| *w != first).unwrap();
    assert_eq!(
        s.built(
            &a.build_key,
            signed_build(number_of(stranger), a.build_key, b"forged"),
            false
        ),
        Built::Ignored
    );
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(first), a.build_key, b"A"), false),
        Built::NeedMore
    );
    let waiting = s.job(&a.build_key).unwrap().view().phase;
    assert!(matches!(waiting, JobPhase::Queued { .. }), "{waiting:?}");
    let second = lease_of(&mut s, a.build_key, 1);
    assert_ne!(second, first, "the second builder is another worker");
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(second), a.build_key, b"A"), false),
        Built::Accepted
    );
    assert_eq!(s.ended(), vec![a.build_key]);
    let check = s.job(&a.build_key).unwrap().check().unwrap();
    assert_eq!((check.agreed.len(), check.disagreed.len(), check.needed), (2, 0, 2));
    assert_eq!(check.verify(&a.build_key), Ok(Hash::of(b"A")));
}

#[test]
fn a_liar_is_outvoted_by_two_honest_builders_and_named_as_disagreeing() {
    let mut s = Schedule::new();
    for n in 1..=3 {
        s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
    }
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 2, None).unwrap();
    let liar = lease_of(&mut s, a.build_key, 0);
    assert_eq!(
        s.built(
            &a.build_key,
            signed_build(number_of(liar), a.build_key, b"trojan"),
            false
        ),
        Built::NeedMore
    );
    let honest = lease_of(&mut s, a.build_key, 1);
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(honest), a.build_key, b"A"), false),
        Built::NeedMore,
        "one against one settles nothing"
    );
    let third = lease_of(&mut s, a.build_key, 2);
    assert!(third != liar && third != honest);
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(third), a.build_key, b"A"), false),
        Built::Accepted
    );
    let check = s.job(&a.build_key).unwrap().check().unwrap();
    assert_eq!(check.verify(&a.build_key), Ok(Hash::of(b"A")));
    assert_eq!(check.disagreed.len(), 1);
    assert_eq!(check.disagreed[0].signer(), liar);
    let JobState::Replicating { attestation } = &s.job(&a.build_key).unwrap().state else {
        panic!("not replicating");
    };
    assert_eq!(attestation.verify().unwrap().artifact, Hash::of(b"A"));
}

#[test]
fn builds_that_disagree_with_no_other_worker_left_are_not_reproducible() {
    let mut s = Schedule::new();
    for n in 1..=2 {
        s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
    }
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 2, None).unwrap();
    let first = lease_of(&mut s, a.build_key, 0);
    s.built(
        &a.build_key,
        signed_build(number_of(first), a.build_key, b"at 10:00"),
        false,
    );
    let second = lease_of(&mut s, a.build_key, 1);
    assert_eq!(
        s.built(
            &a.build_key,
            signed_build(number_of(second), a.build_key, b"at 10:01"),
            false
        ),
        Built::NeedMore
    );
    assert!(assigned_to(&s.plan(2)).is_empty());
    assert_eq!(s.ended(), vec![a.build_key]);
    match s.job(&a.build_key).unwrap().phase() {
        JobPhase::NotReproducible { needed, attestations } => assert_eq!((needed, attestations.len()), (2, 2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_build_with_no_second_worker_waits_and_a_merged_request_raises_the_builders_needed() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    let mut again = a.clone();
    again.emails = vec!["b@example.org".into()];
    s.submit(again, 3, None).unwrap();
    assert_eq!(s.job(&a.build_key).unwrap().verify, 3, "the larger count wins");
    let first = lease_of(&mut s, a.build_key, 0);
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(first), a.build_key, b"A"), false),
        Built::NeedMore
    );
    assert!(assigned_to(&s.plan(1)).is_empty());
    let JobPhase::Queued {
        waiting_because: Some(why),
    } = s.job(&a.build_key).unwrap().phase()
    else {
        panic!("not queued");
    };
    assert!(why.contains("1 of 3 builders needed"), "{why}");
    assert!(s.ended().is_empty(), "agreement so far is no reason to give up");
}

#[test]
fn a_job_kept_on_disk_by_the_previous_version_is_read() {
    let a = job("a", "x86_64", "a@example.org");
    let old = JobV1 {
        request: a.clone(),
        state: JobState::Queued,
        failed_attempts: 1,
        lost_attempts: 0,
        failed_on: BTreeSet::from([worker(1)]),
        last_failure: Some(("step 1 failed".into(), None)),
        sequence: 4,
    };
    let bytes = wire::encode(&old).unwrap();
    let read = Job::decode::<65_536>(&bytes).unwrap();
    assert_eq!((read.request, read.failed_attempts, read.verify), (a.clone(), 1, 1));
    let mut s = Schedule::new();
    s.submit(a.clone(), 2, None).unwrap();
    let now = wire::encode(s.job(&a.build_key).unwrap()).unwrap();
    assert_eq!(Job::decode::<65_536>(&now).unwrap().verify, 2);
}

#[test]
fn an_auto_job_is_accepted_alone_only_when_the_coordinator_says_so_and_its_check_goes_to_the_longest_streak() {
    use kiln_protocol::build::VERIFY_AUTO;
    let mut s = Schedule::new();
    for n in 1..=3 {
        s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
    }
    // Trusted alone: the coordinator decided (`alone`), on the first build.
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), VERIFY_AUTO, None).unwrap();
    let first = lease_of(&mut s, a.build_key, 0);
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(first), a.build_key, b"A"), true),
        Built::Accepted
    );
    assert!(s.job(&a.build_key).unwrap().trusted_alone());
    assert!(s.job(&a.build_key).unwrap().check().is_none());

    // Not trusted (or a standby, which never decides): built twice, the
    // check by the worker with the longest streak, not the least loaded.
    s.note_streak(worker(3), 7, 0);
    s.note_streak(worker(2), 2, 0);
    let b = job("b", "x86_64", "b@example.org");
    s.submit(b.clone(), VERIFY_AUTO, None).unwrap();
    let b_first = lease_of(&mut s, b.build_key, 1);
    assert_eq!(
        s.built(&b.build_key, signed_build(number_of(b_first), b.build_key, b"B"), false),
        Built::NeedMore
    );
    let checker = lease_of(&mut s, b.build_key, 2);
    let longest = if b_first == worker(3) { worker(2) } else { worker(3) };
    assert_eq!(checker, longest);
    assert_eq!(
        s.built(&b.build_key, signed_build(number_of(checker), b.build_key, b"B"), true),
        Built::Accepted,
        "`alone` counts only for the first build"
    );
    let job_b = s.job(&b.build_key).unwrap();
    assert!(!job_b.trusted_alone());
    assert_eq!(job_b.check().unwrap().agreed.len(), 2);

    // A job with a count asked is never accepted alone.
    let c = job("c", "x86_64", "c@example.org");
    s.submit(c.clone(), 2, None).unwrap();
    let c_first = lease_of(&mut s, c.build_key, 3);
    assert_eq!(
        s.built(&c.build_key, signed_build(number_of(c_first), c.build_key, b"C"), true),
        Built::NeedMore
    );
}

#[test]
fn merged_requests_keep_the_policy_that_checks_more() {
    use kiln_protocol::build::{stricter, VERIFY_AUTO};
    assert_eq!(stricter(1, VERIFY_AUTO), VERIFY_AUTO);
    assert_eq!(stricter(VERIFY_AUTO, 1), VERIFY_AUTO);
    assert_eq!(stricter(VERIFY_AUTO, 2), 2);
    assert_eq!(stricter(3, VERIFY_AUTO), 3);
    assert_eq!(stricter(1, 1), 1);
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    s.submit(a.clone(), VERIFY_AUTO, None).unwrap();
    assert_eq!(s.job(&a.build_key).unwrap().verify, VERIFY_AUTO);
    s.submit(a.clone(), 1, None).unwrap();
    assert_eq!(
        s.job(&a.build_key).unwrap().verify,
        VERIFY_AUTO,
        "a weaker policy does not lower it"
    );
    // Accepted alone, then a request for two: built again by another.
    let first = lease_of(&mut s, a.build_key, 0);
    s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
    assert_eq!(
        s.built(&a.build_key, signed_build(number_of(first), a.build_key, b"A"), true),
        Built::Accepted
    );
    s.submit(a.clone(), 2, None).unwrap();
    assert!(matches!(s.job(&a.build_key).unwrap().state, JobState::Queued));
    assert_eq!(lease_of(&mut s, a.build_key, 1), worker(2));
}

#[test]
fn a_worker_caught_disagreeing_more_than_agreeing_builds_first_only_when_no_other_is_free() {
    // Of two idle workers the one whose key sorts first takes a first
    // build; caught twice with a streak of 1 since, it does not while the
    // other is free.
    let (first, other) = if worker(1) < worker(2) {
        (worker(1), worker(2))
    } else {
        (worker(2), worker(1))
    };
    let farm = |suspect: (u32, u32)| {
        let mut s = Schedule::new();
        for n in 1..=2 {
            s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
        }
        s.note_streak(first, suspect.0, suspect.1);
        s
    };
    let mut s = farm((1, 2));
    let a = job("a", "x86_64", "a@example.org");
    s.submit(a.clone(), 1, None).unwrap();
    assert_eq!(lease_of(&mut s, a.build_key, 0), other);
    let b = job("b", "x86_64", "b@example.org");
    s.submit(b.clone(), 1, None).unwrap();
    assert_eq!(lease_of(&mut s, b.build_key, 1), first, "the only free worker");
    // A streak caught up with its disagreements ends the suspicion.
    let mut t = farm((2, 2));
    t.submit(a.clone(), 1, None).unwrap();
    assert_eq!(lease_of(&mut t, a.build_key, 0), first);
}

fn asker(n: u8) -> Option<(PublicKey, Priority)> {
    Some((SecretKey::from_bytes(&[100 + n; 32]).public(), Priority::Normal))
}

#[test]
fn a_requester_with_one_job_is_served_next_after_one_with_fifty() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    for n in 0..50 {
        let j = job(&format!("a{n}"), "x86_64", "a@example.org");
        s.submit(j, 1, asker(1)).unwrap();
    }
    let first = assigned_to(&s.plan(1));
    assert_eq!(first.len(), 1);
    let b = job("b", "x86_64", "b@example.org");
    s.submit(b.clone(), 1, asker(2)).unwrap();
    // The worker finishes the first build and is free again.
    s.remove(&first[0].0);
    let next = assigned_to(&s.plan(2));
    assert_eq!(
        next,
        vec![(b.build_key, worker(1))],
        "B's turn comes before A's second job"
    );
    let views = s.requester_views(3, 10);
    assert_eq!(views[0].queued, 49);
    assert_eq!(views.iter().map(|v| v.running).sum::<u32>(), 1);
}

#[test]
fn priority_orders_a_requesters_own_jobs_only() {
    let mut s = Schedule::new();
    let (a, b) = (asker(1).unwrap().0, asker(2).unwrap().0);
    s.submit(job("a0", "x86_64", "a@example.org"), 1, Some((a, Priority::Normal)))
        .unwrap();
    s.submit(job("b0", "x86_64", "b@example.org"), 1, Some((b, Priority::Low)))
        .unwrap();
    let urgent = job("a1", "x86_64", "a@example.org");
    s.submit(urgent.clone(), 1, Some((a, Priority::High))).unwrap();
    s.advert(worker(1), advert("x86_64", 3, vec![]), 0);
    let plan: Vec<Hash> = assigned_to(&s.plan(1)).into_iter().map(|(k, _)| k).collect();
    let order_of = |name: &str| {
        plan.iter()
            .position(|k| *k == Hash::of(format!("{name}/x86_64").as_bytes()))
    };
    assert!(
        order_of("a1") < order_of("a0"),
        "A's high-priority job goes before its normal one"
    );
    assert!(
        order_of("b0") < order_of("a0"),
        "B's low-priority job still takes B's turn before A's second"
    );
}

#[test]
fn a_cancel_takes_one_requester_and_its_addresses_off_and_drops_the_job_with_the_last() {
    let mut s = Schedule::new();
    let (a, b) = (asker(1), asker(2));
    let j = job("x", "x86_64", "a@example.org");
    s.submit(j.clone(), 1, a).unwrap();
    let mut again = j.clone();
    again.emails = vec!["b@example.org".into()];
    s.submit(again, 1, b).unwrap();
    assert_eq!(s.open_jobs_of(&a.unwrap().0), 1);
    let stranger = SecretKey::from_bytes(&[9; 32]).public();
    assert_eq!(s.cancel(&j.build_key, &stranger), Err(CancelError::NotARequester(2)));
    assert_eq!(s.cancel(&j.build_key, &a.unwrap().0), Ok(Cancelled::StillWanted(1)));
    let kept = s.job(&j.build_key).unwrap();
    assert_eq!(kept.request.emails, vec!["b@example.org".to_string()]);
    assert_eq!(kept.requesters[0].emails, vec![0]);
    assert_eq!(s.open_jobs_of(&a.unwrap().0), 0);
    assert!(matches!(
        s.cancel(&j.build_key, &b.unwrap().0),
        Ok(Cancelled::Dropped(_))
    ));
    assert!(s.job(&j.build_key).is_none());
    assert_eq!(s.queued_jobs(), 0);
    assert_eq!(s.cancel(&j.build_key, &b.unwrap().0), Err(CancelError::NoSuchJob));
}

#[test]
fn a_job_kept_before_requesters_existed_is_read_back() {
    let j = job("old", "x86_64", "a@example.org");
    let old = JobV2 {
        request: j.clone(),
        state: JobState::Queued,
        failed_attempts: 0,
        lost_attempts: 0,
        failed_on: BTreeSet::new(),
        last_failure: None,
        sequence: 3,
        verify: 2,
        built: Vec::new(),
    };
    let bytes = wire::encode(&old).unwrap();
    let read = Job::decode::<1_000_000>(&bytes).unwrap();
    assert_eq!((read.request, read.verify, read.requesters.len()), (j, 2, 0));
}

#[test]
fn inputs_are_counted_once_per_recipe_for_the_requester_that_owns_the_jobs() {
    let mut s = Schedule::new();
    let (a, b) = (asker(1), asker(2));
    let key_a = a.unwrap().0;
    // Two jobs of one recipe (different targets) count its inputs once.
    let x86 = job("big", "x86_64", "a@example.org");
    let arm = job("big", "aarch64", "a@example.org");
    assert_eq!(s.inputs_held_with(&key_a, &x86.recipe_id, 1_000), 1_000);
    s.note_input_bytes(x86.recipe_id, 1_000);
    s.submit(x86.clone(), 1, a).unwrap();
    assert_eq!(s.inputs_held_with(&key_a, &arm.recipe_id, 1_000), 1_000);
    s.submit(arm.clone(), 1, a).unwrap();
    let other = job("other", "x86_64", "a@example.org");
    assert_eq!(s.inputs_held_with(&key_a, &other.recipe_id, 500), 1_500);
    // Another requester joining holds nothing more for A, and owns nothing.
    s.submit(x86.clone(), 1, b).unwrap();
    assert_eq!(s.inputs_held_with(&b.unwrap().0, &other.recipe_id, 0), 0);
    // Once A cancels, B owns the x86 job and holds its inputs.
    s.cancel(&x86.build_key, &key_a).unwrap();
    assert_eq!(s.inputs_held_with(&b.unwrap().0, &other.recipe_id, 0), 1_000);
    s.cancel(&arm.build_key, &key_a).unwrap();
    assert_eq!(s.inputs_held_with(&key_a, &other.recipe_id, 0), 0);
}

#[test]
fn a_requester_joining_a_job_that_had_none_owns_it_and_it_is_leased_once() {
    let mut s = Schedule::new();
    s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
    s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
    let j = job("legacy", "x86_64", "a@example.org");
    s.submit(j.clone(), 1, None).unwrap();
    s.submit(j.clone(), 1, asker(1)).unwrap();
    assert_eq!(s.job(&j.build_key).unwrap().owner(), Some(asker(1).unwrap().0));
    assert_eq!(s.queued_jobs(), 1);
    assert_eq!(assigned_to(&s.plan(1)).len(), 1);
    assert_eq!(s.queued_jobs(), 0);
    assert!(
        assigned_to(&s.plan(2)).is_empty(),
        "leased once, not again to the other worker"
    );
}
