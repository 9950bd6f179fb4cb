//! What one requester may ask of the acting coordinator: open jobs per
//! requester key, and submissions per key per minute. Checked before a
//! job's inputs are fetched, so a refused request costs nothing but its
//! answer, which names the bound, the current figure and when to try
//! again.
//!
//! Who is a requester: the key a `SubmitV3` is signed with (kept in the
//! requester's data dir), or, for an unsigned `SubmitV1`/`SubmitV2`, the
//! key of the peer that sent it.
//!
//! Not for: gossiped jobs (only members of the coordination set announce
//! jobs, see `heard.rs`), or deciding who builds next (`schedule/fair.rs`).

use std::collections::{HashMap, VecDeque};

use kiln_protocol::PublicKey;

/// Open jobs one requester key may have by default.
pub const REQUESTER_JOBS_DEFAULT: u32 = 500;
/// Submissions one requester key may make in a minute by default.
pub const REQUESTER_RATE_DEFAULT: u32 = 120;
/// Bytes of inputs the open jobs one requester owns may take by default.
pub const REQUESTER_INPUT_BYTES_DEFAULT: u64 = 8 << 30;
/// The window the rate is counted over.
pub const RATE_WINDOW_MS: u64 = 60_000;
/// Requesters whose recent submissions are remembered (the one heard from
/// least recently is forgotten first).
pub const RATE_KEYS_MAX: usize = 10_000;

/// Submissions per requester over the last minute.
#[derive(Default)]
pub struct SubmitRate {
    recent: HashMap<PublicKey, VecDeque<u64>>,
}

impl SubmitRate {
    /// Counts a submission by `key` at `now_ms` if it stays within `max`
    /// a minute; else says when the next one would be taken.
    pub fn take(&mut self, key: PublicKey, max: u32, now_ms: u64) -> Result<(), RateRefusal> {
        if !self.recent.contains_key(&key) && self.recent.len() >= RATE_KEYS_MAX {
            self.forget_stale(now_ms);
            if self.recent.len() >= RATE_KEYS_MAX {
                let stalest = self
                    .recent
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied().unwrap_or(0))
                    .map(|(key, _)| *key);
                if let Some(stalest) = stalest {
                    self.recent.remove(&stalest);
                }
            }
        }
        let times = self.recent.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= RATE_WINDOW_MS)
        {
            times.pop_front();
        }
        if times.len() >= max as usize {
            let oldest = times.front().copied().unwrap_or(now_ms);
            return Err(RateRefusal {
                submitted: times.len() as u32,
                retry_in_ms: (oldest + RATE_WINDOW_MS).saturating_sub(now_ms).max(1),
            });
        }
        times.push_back(now_ms);
        Ok(())
    }

    fn forget_stale(&mut self, now_ms: u64) {
        self.recent
            .retain(|_, times| times.back().is_some_and(|t| now_ms.saturating_sub(*t) < RATE_WINDOW_MS));
    }
}

/// A submission over the rate.
#[derive(Debug, PartialEq, Eq)]
pub struct RateRefusal {
    pub submitted: u32,
    pub retry_in_ms: u64,
}

/// The refusal a requester over its open-job bound reads.
pub fn too_many_open(open: u32, max: u32) -> String {
    format!(
        "you have {open} open jobs at this coordinator, the most one requester may have (its --max-requester-jobs is {max}); try again once some of them end (`kiln status` shows them), or cancel some with `kiln cancel BUILD_KEY`"
    )
}

/// The refusal a requester over its inputs bound reads.
pub fn too_much_input(held: u64, max: u64) -> String {
    use kiln_protocol::system::format_bytes;
    format!(
        "the inputs of your open jobs at this coordinator would take {}, more than one requester's may (its --max-requester-inputs is {}); try again once some of them end, or cancel some with `kiln cancel BUILD_KEY`",
        format_bytes(held),
        format_bytes(max)
    )
}

/// The refusal a requester over its rate reads.
pub fn too_fast(refusal: &RateRefusal, max: u32) -> String {
    format!(
        "you submitted {} jobs in the last minute, the most one requester may submit (this coordinator's --max-requester-rate is {max} a minute); try again in {} s",
        refusal.submitted,
        refusal.retry_in_ms.div_ceil(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requester_over_its_rate_is_told_when_to_try_again_and_others_are_not_held_up() {
        let mut rate = SubmitRate::default();
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        for n in 0..3 {
            assert_eq!(rate.take(a, 3, 1_000 + n), Ok(()));
        }
        let refused = rate.take(a, 3, 2_000).unwrap_err();
        assert_eq!(refused.submitted, 3);
        assert_eq!(refused.retry_in_ms, 59_000);
        assert!(too_fast(&refused, 3).contains("try again in 59 s"));
        assert_eq!(rate.take(b, 3, 2_000), Ok(()));
        // A minute after the first, one more is taken.
        assert_eq!(rate.take(a, 3, 61_000), Ok(()));
    }

    #[test]
    fn remembered_requesters_are_bounded() {
        let mut rate = SubmitRate::default();
        for n in 0..(RATE_KEYS_MAX as u64 + 10) {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            let _ = rate.take(PublicKey(bytes), 5, n);
        }
        assert!(rate.recent.len() <= RATE_KEYS_MAX);
    }
}
