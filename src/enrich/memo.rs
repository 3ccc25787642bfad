//! Per-statement de-duplication: identical inputs are sent to a model once per statement, even
//! when the chunks holding them are in inference at the same time.
//!
//! The first chunk to meet an input *owns* it (marks it pending, calls the service, stores the
//! result); later chunks wait for the owner instead of calling again. The memo remembers inputs up
//! to a byte budget of its own and within the process's budget for memos (see
//! [`super::budget`]), so memory stays bounded on huge results and many sessions; past either,
//! repeats are still de-duplicated within each chunk by the executor.

use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::watch;

use super::budget::Charge;
use super::{InvokeInput, SentimentInput};

/// Approximate bytes an input keeps alive in the memo.
pub trait Weight {
    fn weight(&self) -> usize;
}

// The bases count the entry's slot in the map, its result and allocator overhead.
impl Weight for SentimentInput {
    fn weight(&self) -> usize {
        160 + self.text.as_ref().map_or(0, String::len)
            + self.language.as_ref().map_or(0, String::len)
    }
}

impl Weight for InvokeInput {
    fn weight(&self) -> usize {
        192 + self.endpoint.as_ref().map_or(0, String::len)
            + self
                .fields
                .iter()
                .map(|f| 48 + f.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

enum Entry<O> {
    /// Being computed by the chunk holding the sender of this channel.
    Pending(watch::Receiver<bool>),
    Done(Option<O>),
}

struct Inner<I, O> {
    entries: foldhash::HashMap<I, Entry<O>>,
    bytes: usize,
    /// The same bytes, charged to the process's budget for memos.
    charge: Option<Charge>,
}

pub struct Memo<I, O> {
    inner: Mutex<Inner<I, O>>,
    budget: usize,
}

impl<I: Hash + Eq + Clone + Weight, O: Clone> Memo<I, O> {
    pub fn new(budget: usize) -> Self {
        Self::charged(budget, None)
    }

    /// A memo whose entries are also charged to `charge`'s budget.
    pub fn charged(budget: usize, charge: Option<Charge>) -> Self {
        Memo {
            inner: Mutex::new(Inner {
                entries: foldhash::HashMap::default(),
                bytes: 0,
                charge,
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<I, O>> {
        // A panic while holding this lock leaves only a partly filled memo: still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Results for `inputs` in order: remembered ones, ones another chunk is computing (awaited),
    /// and the rest through `call` (which receives them in order and returns one result each).
    /// `abandoned` builds the error when the chunk computing an awaited input failed.
    pub async fn resolve<E>(
        &self,
        inputs: Vec<I>,
        call: impl AsyncFnOnce(&[I]) -> Result<Vec<Option<O>>, E>,
        abandoned: impl Fn() -> E,
    ) -> Result<Vec<Option<O>>, E> {
        let (done, own) = watch::channel(false);
        let mut results: Vec<Option<Option<O>>> = vec![None; inputs.len()];
        let mut waits = Vec::new();
        let mut misses = Vec::new();
        let mut miss_rows = Vec::new();
        {
            let mut inner = self.lock();
            for (row, input) in inputs.into_iter().enumerate() {
                match inner.entries.get(&input) {
                    Some(Entry::Done(value)) => results[row] = Some(value.clone()),
                    Some(Entry::Pending(other)) if !other.same_channel(&own) => {
                        waits.push((row, other.clone(), input))
                    }
                    Some(Entry::Pending(_)) => {
                        misses.push(input);
                        miss_rows.push(row);
                    }
                    None => {
                        let weight = input.weight();
                        let room = inner.bytes + weight <= self.budget
                            && inner.charge.as_mut().is_none_or(|c| c.try_add(weight));
                        if room {
                            inner.bytes += weight;
                            inner
                                .entries
                                .insert(input.clone(), Entry::Pending(own.clone()));
                        }
                        misses.push(input);
                        miss_rows.push(row);
                    }
                }
            }
        }
        if !misses.is_empty() {
            match call(&misses).await {
                Ok(fresh) => {
                    let mut inner = self.lock();
                    for (input, value) in misses.iter().zip(&fresh) {
                        if let Some(entry @ Entry::Pending(_)) = inner.entries.get_mut(input) {
                            *entry = Entry::Done(value.clone());
                        }
                    }
                    drop(inner);
                    for (row, value) in miss_rows.into_iter().zip(fresh) {
                        results[row] = Some(value);
                    }
                }
                Err(error) => {
                    let mut inner = self.lock();
                    inner.entries.retain(|_, entry| match entry {
                        Entry::Pending(receiver) => !receiver.same_channel(&own),
                        Entry::Done(_) => true,
                    });
                    return Err(error);
                }
            }
        }
        let _ = done.send(true);
        for (row, mut receiver, input) in waits {
            if receiver.wait_for(|finished| *finished).await.is_err() {
                return Err(abandoned());
            }
            match self.lock().entries.get(&input) {
                Some(Entry::Done(value)) => results[row] = Some(value.clone()),
                _ => return Err(abandoned()),
            }
        }
        Ok(results.into_iter().map(Option::flatten).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn input(text: &str) -> SentimentInput {
        SentimentInput {
            text: Some(text.into()),
            language: Some("en".into()),
            max_rows_per_batch: None,
        }
    }

    #[tokio::test]
    async fn concurrent_chunks_send_each_input_once() {
        let memo: Arc<Memo<SentimentInput, usize>> = Arc::new(Memo::new(1 << 20));
        let calls = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for chunk in 0..4 {
            let (memo, calls, sent) = (memo.clone(), calls.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let inputs: Vec<_> = (0..10)
                    .map(|i| input(&format!("t{}", (i + chunk) % 12)))
                    .collect();
                memo.resolve(
                    inputs,
                    async |misses: &[SentimentInput]| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        sent.lock()
                            .expect("lock")
                            .extend(misses.iter().map(|m| m.text.clone()));
                        Ok::<_, ()>(
                            misses
                                .iter()
                                .map(|m| m.text.as_ref().map(String::len))
                                .collect(),
                        )
                    },
                    || (),
                )
                .await
            }));
        }
        for task in tasks {
            let out = task.await.expect("join").expect("resolve");
            assert_eq!(out.len(), 10);
            assert!(out.iter().all(|v| v.is_some()));
        }
        let mut sent = sent.lock().expect("lock").clone();
        let total = sent.len();
        sent.sort();
        sent.dedup();
        assert_eq!(total, sent.len(), "no input sent twice");
        assert_eq!(sent.len(), 12);
    }

    #[tokio::test]
    async fn waiters_fail_when_the_owner_fails_and_budget_bounds_memory() {
        let memo: Memo<SentimentInput, usize> = Memo::new(1 << 20);
        let failed = memo
            .resolve(
                vec![input("x")],
                async |_: &[SentimentInput]| Err::<Vec<Option<usize>>, &str>("boom"),
                || "abandoned",
            )
            .await;
        assert_eq!(failed, Err("boom"));
        // The failed input is not remembered: it is computed again.
        let again = memo
            .resolve(
                vec![input("x")],
                async |m: &[SentimentInput]| Ok::<_, &str>(vec![Some(m.len())]),
                || "abandoned",
            )
            .await;
        assert_eq!(again, Ok(vec![Some(1)]));

        let tiny: Memo<SentimentInput, usize> = Memo::new(10);
        let out = tiny
            .resolve(
                vec![input("a"), input("a")],
                async |m: &[SentimentInput]| Ok::<_, ()>(vec![Some(7); m.len()]),
                || (),
            )
            .await;
        assert_eq!(out, Ok(vec![Some(7), Some(7)]));
        assert_eq!(
            tiny.lock().entries.len(),
            0,
            "over budget: nothing remembered"
        );

        // Within its own budget but over the process's share for memos: nothing remembered,
        // and what it did remember is given back with it.
        let process = crate::enrich::budget::MemoryBudget::new(8 * 400);
        let memos = process.memos();
        let shared: Memo<SentimentInput, usize> = Memo::charged(1 << 20, Some(memos.charge()));
        let out = shared
            .resolve(
                vec![input("a"), input("b"), input("c")],
                async |m: &[SentimentInput]| Ok::<_, ()>(vec![Some(1); m.len()]),
                || (),
            )
            .await;
        assert_eq!(out, Ok(vec![Some(1); 3]));
        assert_eq!(shared.lock().entries.len(), 2, "400 bytes hold two inputs");
        assert!(memos.in_use() > 0 && memos.in_use() <= 400);
        drop(shared);
        assert_eq!(memos.in_use(), 0);
    }
}
