//! Yielding to the machine's owner (`--idle-only`): a running build is
//! paused, its whole process tree stopped where it is, while the owner's
//! programs use the machine, and resumed once they no longer do.
//!
//! - **When.** Every [`YIELD_CHECK_MS`] the worker reads the owner's CPU
//!   use over the last complete window of [`OWNER_WINDOW_MS`], which
//!   leaves out Kiln's builds (they run niced, and the kernel counts niced
//!   time apart). Over [`IDLE_LOAD_PER_CPU_MAX`] per CPU pauses; a window
//!   under it resumes. So a pause comes within two windows (10 s) of the
//!   owner's work starting, and a resume within two windows of it ending.
//! - **The coordinator is told.** While a build is paused, the worker's
//!   advert says so (`waiting_because`: "paused 1 build for the owner:
//!   …"), so no new work is offered to it, and the advert still lists the
//!   build, so its lease holds however long the pause.
//! - **The bound.** A build paused for longer than the contributor's
//!   `--max-pause` (default [`PAUSE_MAX_DEFAULT`], 15 minutes) is given
//!   up: killed, and reported `Aborted`, which the coordinator counts as a
//!   lost attempt, not a failed one, and offers to another worker at once.
//! - **The clock.** Paused time does not count against the recipe's time
//!   limit, and the build's log names each pause and how long it lasted.
//!
//! Not for: how a build is paused (the sandbox's `Steer`, the freezer
//! cgroup in `limits`).
//!
//! [`OWNER_WINDOW_MS`]: super::OWNER_WINDOW_MS
//! [`IDLE_LOAD_PER_CPU_MAX`]: super::IDLE_LOAD_PER_CPU_MAX
//! [`PAUSE_MAX_DEFAULT`]: super::PAUSE_MAX_DEFAULT

use std::future::Future;
use std::time::Duration;

use kiln_protocol::Hash;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use super::policy::{busy_because, CpuTicks};
use super::sandbox::Steer;
use super::Worker;
use crate::clock::now_ms;

/// How often a worker with a running build looks at the owner's CPU use.
pub const YIELD_CHECK_MS: u64 = 1_000;

/// Pauses or resumes, unless the build was given up meanwhile (a stop
/// from the coordinator): a give-up is final.
fn steer_unless_given_up(steer: &watch::Sender<Steer>, to: Steer) {
    steer.send_if_modified(|now| {
        if matches!(now, Steer::GiveUp(_)) {
            return false;
        }
        *now = to;
        true
    });
}

impl Worker {
    /// Runs `build` (a sandbox run steered by `steer`) to its end, pausing
    /// and resuming it for the owner when this worker is idle-only.
    pub(super) async fn yielding<F: Future>(
        &self,
        build_key: Hash,
        build: F,
        steer: &watch::Sender<Steer>,
    ) -> F::Output {
        let mut build = std::pin::pin!(build);
        if !self.policy.idle_only {
            return build.await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(YIELD_CHECK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused_since: Option<Instant> = None;
        let mut given_up = false;
        let output = loop {
            tokio::select! {
                output = &mut build => break output,
                _ = tick.tick() => {}
            }
            if given_up {
                continue;
            }
            match (self.owner_busy(), paused_since) {
                (Some(reason), None) => {
                    info!(job = %build_key, reason, "pausing the build: the owner is using the machine");
                    paused_since = Some(Instant::now());
                    self.set_paused(build_key, Some(reason.clone()));
                    steer_unless_given_up(steer, Steer::Pause(reason));
                }
                (Some(_), Some(since)) if since.elapsed() >= self.policy.pause_max => {
                    let reason = format!(
                        "the worker's owner needed the machine: the build was paused for longer than {} (the worker's --max-pause), so it goes to another worker",
                        kiln_protocol::system::format_duration_secs(self.policy.pause_max.as_secs())
                    );
                    info!(job = %build_key, "giving the build up: paused for too long");
                    given_up = true;
                    steer.send_replace(Steer::GiveUp(reason));
                }
                (None, Some(since)) => {
                    info!(job = %build_key, paused_s = since.elapsed().as_secs(), "resuming the build: the owner's work ended");
                    paused_since = None;
                    self.set_paused(build_key, None);
                    steer_unless_given_up(steer, Steer::Run);
                }
                _ => {}
            }
        };
        self.set_paused(build_key, None);
        output
    }

    /// Why the owner is using the machine now, measured over the last
    /// complete window; `None` before the first.
    pub(super) fn owner_busy(&self) -> Option<String> {
        let ticks = CpuTicks::now()?;
        let used = self.owner_load.lock().ok()?.read(now_ms(), ticks)?;
        busy_because(used, ticks.cpus)
    }

    fn set_paused(&self, build_key: Hash, reason: Option<String>) {
        if let Ok(mut paused) = self.paused.lock() {
            match reason {
                Some(reason) => paused.insert(build_key, reason),
                None => paused.remove(&build_key),
            };
        }
    }

    /// What the advert says while builds are paused for the owner.
    pub(super) fn paused_because(&self) -> Option<String> {
        let paused = self.paused.lock().ok()?;
        let reason = paused.values().next()?;
        let builds = match paused.len() {
            1 => "1 build".to_string(),
            n => format!("{n} builds"),
        };
        Some(format!("paused {builds} for the owner: {reason}"))
    }
}
