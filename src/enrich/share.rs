//! One statement's claim on the executor: its fair share of the process's call slots and its cap
//! on rows sent to inference (`max_inference_rows`).
//!
//! Fair share: while N statements have calls waiting or running, each may have at most
//! ⌈`max_concurrent_calls` / N⌉ calls in flight. A statement that arrives while a large one holds
//! every slot gets slots as the large one's calls finish (the large one does not start new
//! ones beyond its share), instead of queueing behind all of its batches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::error::InferenceError;

/// The statements with calls waiting or running, process-wide.
#[derive(Debug, Default)]
pub struct Fairness {
    active: AtomicUsize,
    /// Notified whenever a call ends or a statement stops competing: shares may have grown.
    released: Notify,
}

/// One statement's claim (held by its memo, shared by its chunks).
#[derive(Debug, Default)]
pub struct Claim {
    /// Most rows the statement may send to inference; None: no cap.
    cap: Option<u64>,
    sent: AtomicU64,
    /// Calls started.
    calls: AtomicU64,
    /// The statement's role's rate limit.
    rate: Option<Arc<super::rate::RoleLimit>>,
    /// Calls of the statement waiting for a slot or running.
    pending: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Claim {
    pub fn new(cap: Option<u64>) -> Arc<Claim> {
        Self::limited(cap, None)
    }

    /// A claim whose calls also wait for their role's rate (`[[rate_limits]]`).
    pub fn limited(cap: Option<u64>, rate: Option<Arc<super::rate::RoleLimit>>) -> Arc<Claim> {
        Arc::new(Claim {
            cap,
            rate,
            ..Claim::default()
        })
    }

    pub fn rate_limit(&self) -> Option<&super::rate::RoleLimit> {
        self.rate.as_deref()
    }

    /// Counts `rows` about to be sent; past the cap, the `54000` error instead (nothing counted
    /// then, and nothing sent).
    pub fn charge_rows(&self, rows: u64) -> Result<(), InferenceError> {
        let Some(cap) = self.cap else {
            self.sent.fetch_add(rows, Ordering::Relaxed);
            return Ok(());
        };
        let mut sent = self.sent.load(Ordering::Relaxed);
        loop {
            if sent + rows > cap {
                return Err(InferenceError::RowCap { cap });
            }
            match self.sent.compare_exchange_weak(
                sent,
                sent + rows,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => sent = now,
            }
        }
    }

    /// Rows counted so far.
    pub fn rows_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Calls started so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A call's place within its statement's share, held until the call ends.
pub struct Slot {
    claim: Arc<Claim>,
    fairness: Arc<Fairness>,
    running: bool,
}

impl Fairness {
    /// Waits until `claim` is within its share of `total` slots, then counts the call in.
    pub async fn slot(self: &Arc<Self>, claim: &Arc<Claim>, total: usize) -> Slot {
        // From here the statement competes (also if this future is dropped while waiting: the
        // slot's drop undoes it).
        if claim.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.active.fetch_add(1, Ordering::AcqRel);
        }
        let mut slot = Slot {
            claim: Arc::clone(claim),
            fairness: Arc::clone(self),
            running: false,
        };
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let active = self.active.load(Ordering::Acquire).max(1);
            let share = total.max(1).div_ceil(active);
            let running = claim.in_flight.load(Ordering::Acquire);
            if running < share
                && claim
                    .in_flight
                    .compare_exchange(running, running + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.running = true;
                claim.calls.fetch_add(1, Ordering::Relaxed);
                return slot;
            }
            released.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.running {
            self.claim.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if self.claim.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.fairness.active.fetch_sub(1, Ordering::AcqRel);
        }
        self.fairness.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_cap_refuses_what_would_cross_it_and_counts_nothing_then() {
        let claim = Claim::new(Some(10));
        assert!(claim.charge_rows(6).is_ok());
        assert_eq!(
            claim.charge_rows(5),
            Err(InferenceError::RowCap { cap: 10 })
        );
        assert_eq!(claim.rows_sent(), 6);
        assert!(claim.charge_rows(4).is_ok());
        assert!(Claim::new(None).charge_rows(u64::MAX / 2).is_ok());
    }

    #[tokio::test]
    async fn a_second_statement_gets_half_the_slots() {
        let fairness = Arc::new(Fairness::default());
        let (big, small) = (Claim::new(None), Claim::new(None));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(fairness.slot(&big, 4).await);
        }
        // The small statement competes now: the big one, at 4, is over its share of 2.
        let waiting = tokio::spawn({
            let (fairness, small) = (Arc::clone(&fairness), Arc::clone(&small));
            async move { fairness.slot(&small, 4).await }
        });
        while fairness.active.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let big_next = tokio::spawn({
            let (fairness, big) = (Arc::clone(&fairness), Arc::clone(&big));
            async move { fairness.slot(&big, 4).await }
        });
        held.truncate(2);
        let small_slot = waiting.await.expect("small gets a slot");
        tokio::task::yield_now().await;
        assert!(
            !big_next.is_finished(),
            "the big statement stays at its share"
        );
        held.clear();
        drop(small_slot);
        let _ = big_next.await.expect("and gets slots back when alone");
        assert_eq!(fairness.active.load(Ordering::Acquire), 0);
    }
}
