//! The process-wide budget of bytes that ML statements hold (`max_ml_memory`): base rows
//! waiting for inference or for their residual, over all sessions, so that many sessions cannot
//! add up to more memory than configured.
//!
//! A statement holds a [`Charge`] that grows as it keeps rows and shrinks to nothing when dropped.
//! A streaming statement that finds the budget used up stops reading (its chunks in inference
//! free their share as they are delivered, and other statements' do); a statement that must hold
//! all its rows fails instead, so no statement ever waits for memory while holding some.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
    /// The share of statements' de-duplication memos ([`super::memo`]): an eighth of the whole,
    /// apart from it, so that memos (an optimisation) never crowd out rows.
    memos: Option<Arc<MemoryBudget>>,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            memos: Some(Arc::new(MemoryBudget {
                limit: limit / 8,
                used: AtomicUsize::new(0),
                freed: Notify::new(),
                memos: None,
            })),
        })
    }

    /// A budget without a share for memos (for what is not base rows: prepared statements).
    pub fn plain(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            memos: None,
        })
    }

    /// The budget of de-duplication memos (itself, for a memos' budget).
    pub fn memos(self: &Arc<Self>) -> &Arc<MemoryBudget> {
        self.memos.as_ref().unwrap_or(self)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now, all statements together.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty charge against this budget.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Waits until some of the budget is free.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            if self.in_use() < self.limit {
                return;
            }
            freed.await;
        }
    }
}

/// Bytes one statement (or one chunk of it) holds; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// Adds `n` bytes if the budget has room for them; false, with nothing added, if not.
    pub fn try_add(&mut self, n: usize) -> bool {
        let budget = &self.budget;
        let added = budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= budget.limit)
            })
            .is_ok();
        if added {
            self.bytes += n;
        }
        added
    }

    /// Adds `n` bytes whether or not the budget has room (bytes already in memory).
    pub fn force_add(&mut self, n: usize) {
        self.budget.used.fetch_add(n, Ordering::Relaxed);
        self.bytes += n;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves everything charged here into a new charge, leaving this one empty.
    pub fn take(&mut self) -> Charge {
        Charge {
            budget: Arc::clone(&self.budget),
            bytes: std::mem::take(&mut self.bytes),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
            self.budget.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_limit_and_are_given_back() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.charge();
        assert!(a.try_add(60));
        let mut b = budget.charge();
        assert!(!b.try_add(50), "60 + 50 is over 100");
        assert_eq!((b.bytes(), budget.in_use()), (0, 60));
        assert!(b.try_add(40));
        b.force_add(10);
        assert_eq!(budget.in_use(), 110);
        let moved = a.take();
        assert_eq!((a.bytes(), moved.bytes()), (0, 60));
        drop(moved);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn room_waits_for_a_charge_to_go() {
        let budget = MemoryBudget::new(10);
        let mut full = budget.charge();
        assert!(full.try_add(10));
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(full);
        waiting.await.expect("room");
        assert_eq!(budget.in_use(), 0);
    }
}
