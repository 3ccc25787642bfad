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

impl Weight for super::ModelInput {
    fn weight(&self) -> usize {
        192 + [&self.model_id, &self.content_type, &self.accept, &self.body]
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum::<usize>()
    }
}

/// What a pending input's owner reports when it is done: Ok, or the error its call failed with
/// (which chunks waiting for the input then fail with too).
type Outcome<E> = Option<Result<(), E>>;

enum Entry<O, E> {
    /// Being computed by the chunk holding the sender of this channel.
    Pending(watch::Receiver<Outcome<E>>),
    Done(Option<O>),
}

struct Inner<I, O, E> {
    entries: foldhash::HashMap<I, Entry<O, E>>,
    bytes: usize,
    /// The same bytes, charged to the process's budget for memos.
    charge: Option<Charge>,
}

/// `E`: the error of a failed call, given to every chunk that waited for one of its inputs.
pub struct Memo<I, O, E> {
    inner: Mutex<Inner<I, O, E>>,
    budget: usize,
}

impl<I: Hash + Eq + Clone + Weight, O: Clone, E: Clone> Memo<I, O, E> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<I, O, E>> {
        // A panic while holding this lock leaves only a partly filled memo: still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Results for `inputs` in order: remembered ones, ones another chunk is computing (awaited),
    /// and the rest through `call` (which receives them in order and returns one result each).
    /// A chunk whose awaited input's call failed fails with that call's error; `abandoned`
    /// builds the error when the chunk computing an awaited input went away without an answer.
    pub async fn resolve(
        &self,
        inputs: Vec<I>,
        call: impl AsyncFnOnce(&[I]) -> Result<Vec<Option<O>>, E>,
        abandoned: impl Fn() -> E,
    ) -> Result<Vec<Option<O>>, E> {
        let (done, own) = watch::channel(None);
        let mut results: Vec<Option<Option<O>>> = vec![None; inputs.len()];
        let mut waits = Vec::new();
        let mut misses = Vec::new();
        let mut miss_rows = Vec::new();
        {
            let mut inner = self.lock();
            let rows = inputs.len();
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
            crate::metrics::memo_hits((rows - misses.len()) as u64);
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
                    drop(inner);
                    let _ = done.send(Some(Err(error.clone())));
                    return Err(error);
                }
            }
        }
        let _ = done.send(Some(Ok(())));
        for (row, mut receiver, input) in waits {
            match receiver.wait_for(Option::is_some).await {
                Err(_) => return Err(abandoned()),
                Ok(outcome) => {
                    if let Some(Err(error)) = &*outcome {
                        return Err(error.clone());
                    }
                }
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
        let memo: Arc<Memo<SentimentInput, usize, ()>> = Arc::new(Memo::new(1 << 20));
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
    async fn a_chunk_waiting_for_a_failed_call_fails_with_its_error() {
        // The soak found a statement failing with 22023 "a concurrent call for the same input
        // failed" where the call had been throttled (53000): waiters now get the call's error.
        let memo: Arc<Memo<SentimentInput, usize, &str>> = Arc::new(Memo::new(1 << 20));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let owner = {
            let memo = Arc::clone(&memo);
            tokio::spawn(async move {
                memo.resolve(
                    vec![input("shared")],
                    async |_: &[SentimentInput]| {
                        let _ = released.await;
                        Err::<Vec<Option<usize>>, &str>("throttled")
                    },
                    || "abandoned",
                )
                .await
            })
        };
        while memo.lock().entries.is_empty() {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let memo = Arc::clone(&memo);
            tokio::spawn(async move {
                memo.resolve(
                    vec![input("own"), input("shared")],
                    async |m: &[SentimentInput]| Ok::<_, &str>(vec![Some(1); m.len()]),
                    || "abandoned",
                )
                .await
            })
        };
        // The waiter has sent its own input (and so is waiting for the shared one).
        while !matches!(memo.lock().entries.get(&input("own")), Some(Entry::Done(_))) {
            tokio::task::yield_now().await;
        }
        let _ = release.send(());
        assert_eq!(owner.await.expect("join"), Err("throttled"));
        assert_eq!(waiter.await.expect("join"), Err("throttled"));
    }

    #[tokio::test]
    async fn waiters_fail_when_the_owner_fails_and_budget_bounds_memory() {
        let memo: Memo<SentimentInput, usize, &str> = Memo::new(1 << 20);
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

        let tiny: Memo<SentimentInput, usize, ()> = Memo::new(10);
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
        let shared: Memo<SentimentInput, usize, ()> = Memo::charged(1 << 20, Some(memos.charge()));
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
