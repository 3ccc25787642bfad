//! The inference executor: the one path every ML call takes.
//!
//! For each batch of rows it groups inputs by what the service call depends on (language or
//! endpoint, and batch size), sends identical inputs once, splits them into batches within the
//! service limits, runs the batches concurrently under a global and a per-endpoint limit, and
//! returns results in input order. NULL or empty documents give NULL without a call.
//!
//! Service calls run on the ML runtime ([`ExecutorConfig::runtime`]), apart from the relay.
//!
//! Cancel safety: dropping a returned future aborts its in-flight service calls (the SDK aborts
//! the requests) and releases their concurrency permits; nothing is left running.

pub mod budget;
pub mod cache;
pub mod csv;
mod endpoints;
pub mod fleet;
pub mod memo;
pub mod models;
pub mod rate;
pub mod share;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use crate::backends::{comprehend, Backends, Sentiment};
use crate::error::InferenceError;
pub use models::ModelInput;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Rows per InvokeEndpoint call when `max_rows_per_batch` is NULL.
    pub default_batch_rows: usize,
    /// Service calls in flight at once, over all sessions.
    pub max_concurrent_calls: usize,
    /// Service calls in flight at once per endpoint (or per Comprehend language).
    pub max_concurrent_calls_per_endpoint: usize,
    /// Cut Comprehend documents longer than 5,000 bytes at a character boundary instead of failing.
    pub comprehend_truncate: bool,
    /// Remove ARNs and account ids from the service texts clients see (`redact_aws_errors`).
    pub redact_errors: bool,
    /// Most rows one statement may send to inference (`max_inference_rows`); None: no cap.
    pub max_inference_rows: Option<u64>,
    /// Per-role rate limits (`[[rate_limits]]`).
    pub rate_limits: Vec<rate::RateRule>,
    /// The result cache across statements: its byte budget (0: off) and entries' lifetime.
    pub cache_bytes: usize,
    pub cache_ttl: std::time::Duration,
    /// The Redis a fleet of sidecars shares (`redis_url`): results, calls in flight; None: off.
    pub fleet: Option<fleet::FleetConfig>,
    /// The runtime that runs service calls and chunk enrichment, apart from the one relaying
    /// sessions (`None`: the caller's runtime).
    pub runtime: Option<Handle>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            default_batch_rows: 500,
            max_concurrent_calls: 16,
            max_concurrent_calls_per_endpoint: 8,
            comprehend_truncate: false,
            redact_errors: true,
            max_inference_rows: None,
            rate_limits: Vec::new(),
            cache_bytes: 0,
            cache_ttl: std::time::Duration::from_secs(3600),
            fleet: None,
            runtime: None,
        }
    }
}

/// A failure with the endpoint or language it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub target: String,
    pub error: InferenceError,
}

/// What one statement's calls cost, for EXPLAIN ANALYZE and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    pub rows: u64,
    pub calls: u64,
    pub duplicates_saved: u64,
}

pub struct Executor {
    backends: Backends,
    config: ExecutorConfig,
    global: Arc<Semaphore>,
    per_target: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Chunks of ML statements in inference, all sessions together (see
    /// [`Executor::chunk_slot`]).
    chunks: Arc<Semaphore>,
    /// Statements competing for call slots (their fair shares).
    fairness: Arc<share::Fairness>,
    /// Results across statements (`inference_cache_bytes`); None: off.
    cache: Option<cache::ResultCache>,
    /// The Redis shared with other sidecars (`redis_url`); None: off.
    fleet: Option<Arc<fleet::Fleet>>,
    /// Per-role rate limits and their buckets.
    rates: rate::RateLimits,
}

/// What a call holds while it runs (see [`Executor::permits`]); dropping it frees them all.
struct Permits(
    #[allow(dead_code)] share::Slot,
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] Option<fleet::FleetSlot>,
);

/// Per-endpoint limits kept before idle ones are dropped (see [`Executor::permits`]).
const PRUNE_TARGETS_AT: usize = 1024;

/// Chunks in inference process-wide per allowed concurrent call: a chunk of the default 1000
/// rows makes two calls of the default 500, so this keeps every call permit busy with as many
/// chunks again parsed and waiting (4 measured no faster, and ~15 MB more with 100 sessions).
const CHUNKS_PER_CALL: usize = 2;

/// One row's input to `detect_sentiment`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentimentInput {
    pub text: Option<String>,
    pub language: Option<String>,
    pub max_rows_per_batch: Option<i64>,
}

/// One row's input to `invoke_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InvokeInput {
    pub endpoint: Option<String>,
    pub max_rows_per_batch: Option<i64>,
    pub fields: Vec<Option<String>>,
}

impl Executor {
    pub fn new(backends: Backends, config: ExecutorConfig) -> Arc<Executor> {
        Arc::new(Executor {
            global: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
            per_target: Mutex::new(HashMap::new()),
            chunks: Arc::new(Semaphore::new(
                config.max_concurrent_calls.max(1) * CHUNKS_PER_CALL,
            )),
            fairness: Arc::default(),
            // Checked with the configuration; an invalid rule here limits nothing.
            rates: rate::RateLimits::new(config.rate_limits.clone()).unwrap_or_default(),
            cache: (config.cache_bytes > 0)
                .then(|| cache::ResultCache::new(config.cache_bytes, config.cache_ttl)),
            // The URL is checked with the configuration.
            fleet: config.fleet.clone().and_then(|c| {
                fleet::Fleet::new(c)
                    .inspect_err(|e| tracing::error!("redis_url: {e}; Redis not used"))
                    .ok()
            }),
            backends,
            config,
        })
    }

    /// A new statement's claim: its share of call slots and its row cap (no role's limits).
    pub fn claim(&self) -> Arc<share::Claim> {
        self.claim_for("", None)
    }

    /// The claim of a statement of `role`: its rate limits, and the row cap `cap` where that is
    /// lower than the configured one.
    pub fn claim_for(&self, role: &str, cap: Option<u64>) -> Arc<share::Claim> {
        let configured = self.config.max_inference_rows;
        share::Claim::limited(
            match (configured, cap) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            self.rates.for_role(role),
        )
    }

    /// A call's permits: its statement's share, its endpoint's (or language's) limit, the
    /// process's, and the fleet's (`fleet_max_calls_per_endpoint`).
    async fn permits(
        &self,
        target: &str,
        rows: usize,
        claim: &Arc<share::Claim>,
    ) -> Result<Permits, InferenceError> {
        // The role's rate first: a statement slowed by it holds no slot meanwhile.
        if let Some(limit) = claim.rate_limit() {
            limit.admit(rows).await;
        }
        let slot = self
            .fairness
            .slot(claim, self.config.max_concurrent_calls)
            .await;
        let per_target = {
            let mut map = self
                .per_target
                .lock()
                .map_err(|_| InferenceError::InvalidArgument("executor state poisoned".into()))?;
            // Endpoint names come from SQL: the limits of names no call holds or waits for are
            // dropped now and then, so that a stream of distinct names cannot grow the map.
            if map.len() >= PRUNE_TARGETS_AT && !map.contains_key(target) {
                map.retain(|_, limit| Arc::strong_count(limit) > 1);
            }
            Arc::clone(map.entry(target.to_owned()).or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.max_concurrent_calls_per_endpoint.max(1),
                ))
            }))
        };
        let closed = |_| InferenceError::InvalidArgument("executor shut down".into());
        let target_permit = per_target.acquire_owned().await.map_err(closed)?;
        // A call waiting for the fleet holds its endpoint's permit, not the process's: calls to
        // other endpoints go on meanwhile.
        let fleet = match &self.fleet {
            Some(fleet) if fleet.limits_calls() => fleet.slot(target).await,
            _ => None,
        };
        let global_permit = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .map_err(closed)?;
        Ok(Permits(slot, target_permit, global_permit, fleet))
    }

    /// A slot for one chunk of an ML statement in inference, to hold until its task ends. A chunk
    /// in inference costs several times its rows' bytes (parsed fields, inputs, memo entries,
    /// results), and only `max_concurrent_calls` calls run at once: with many sessions, each
    /// with `chunks_in_flight` chunks, most would wait for a call permit holding all that. A
    /// statement waits here instead, before it reads more rows.
    pub async fn chunk_slot(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.chunks).acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed; were it, waiting forever would be the wrong answer.
            Err(_) => unreachable!("the chunk semaphore is never closed"),
        }
    }

    /// Runs `work` on the ML runtime; dropping the handle aborts it.
    pub fn spawn<F>(&self, work: F) -> AbortOnDropHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDropHandle::new(match &self.config.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        })
    }

    /// Runs a service call on the ML runtime; a call that ends without an answer (it panicked,
    /// or the runtime shut down) is a transport failure.
    async fn call<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, InferenceError>> + Send + 'static,
    ) -> Result<T, InferenceError> {
        self.spawn(call).await.map_err(lost)?
    }

    /// Records a finished call in the metrics; a failure is logged with the service's full text
    /// and request id, and comes back in the form the client sees (redacted unless
    /// `redact_errors` is off).
    fn finished<T>(
        &self,
        mut call: crate::metrics::InferenceCall<'_>,
        result: Result<T, InferenceError>,
    ) -> Result<T, InferenceError> {
        let error = match result {
            Ok(value) => {
                crate::metrics::inference_call(call);
                return Ok(value);
            }
            Err(error) => error,
        };
        call.error = Some(error.sqlstate().code());
        tracing::warn!(
            function = call.function,
            target = call.target,
            request_id = error.request_id().unwrap_or("-"),
            sqlstate = error.sqlstate().code(),
            %error,
            "inference call failed"
        );
        crate::metrics::inference_call(call);
        Err(if self.config.redact_errors {
            error.redacted()
        } else {
            error
        })
    }

    /// Most documents per sentiment call of the configured backend.
    pub fn sentiment_batch_limit(&self) -> usize {
        self.backends.sentiment.max_batch()
    }

    /// Rows per endpoint call when `max_rows_per_batch` is NULL.
    pub fn default_batch_rows(&self) -> usize {
        self.config.default_batch_rows
    }

    fn batch_rows(&self, requested: Option<i64>, cap: usize) -> Result<usize, InferenceError> {
        match requested {
            None => Ok(self.config.default_batch_rows.clamp(1, cap)),
            Some(n) if n >= 1 => Ok((n as usize).min(cap)),
            Some(n) => Err(InferenceError::InvalidArgument(format!(
                "max_rows_per_batch must be positive, got {n}"
            ))),
        }
    }

    pub(super) async fn detect_sentiment_calls(
        &self,
        inputs: &[SentimentInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<Sentiment>>, CallError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let backend = &self.backends.sentiment;
        let mut groups: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
        for (row, input) in inputs.iter().enumerate() {
            let (Some(text), Some(language)) = (&input.text, &input.language) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let rows = self
                .batch_rows(input.max_rows_per_batch, backend.max_batch())
                .map_err(|error| CallError {
                    target: language.clone(),
                    error,
                })?;
            groups
                .entry((language.as_str(), rows))
                .or_default()
                .push(row);
        }
        stats.rows += inputs.len() as u64;
        // Plan: per group, the distinct documents in batches.
        let mut batches = Vec::new();
        let mut plans = Vec::new();
        for (group, ((language, rows), members)) in groups.iter().enumerate() {
            let (unique, positions) = dedup(members, |&row| {
                inputs[row].text.as_deref().unwrap_or_default()
            });
            stats.duplicates_saved += (members.len() - unique.len()) as u64;
            let texts = unique
                .iter()
                .map(|&row| self.fit_document(inputs[row].text.as_deref().unwrap_or_default()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| CallError {
                    target: language.to_string(),
                    error,
                })?;
            for chunk in texts.chunks(*rows) {
                batches.push((group, *language, chunk.to_vec()));
            }
            plans.push((members, positions));
        }
        let rows: usize = batches.iter().map(|(_, _, texts)| texts.len()).sum();
        if let Some((_, language, _)) = batches.first() {
            claim.charge_rows(rows as u64).map_err(|error| CallError {
                target: language.to_string(),
                error,
            })?;
        }
        stats.calls += batches.len() as u64;
        let calls: FuturesUnordered<_> = batches
            .into_iter()
            .enumerate()
            .map(|(index, (group, language, texts))| async move {
                let fail = |error| CallError {
                    target: language.to_owned(),
                    error,
                };
                let _permits = self
                    .permits(language, texts.len(), claim)
                    .await
                    .map_err(fail)?;
                let (backend, owned) = (Arc::clone(backend), language.to_owned());
                let (rows, bytes) = (texts.len(), texts.iter().map(String::len).sum());
                let started = std::time::Instant::now();
                let sentiments = self
                    .call(async move { backend.detect(&owned, texts).await })
                    .await;
                let sentiments = self.finished(
                    crate::metrics::InferenceCall {
                        function: "detect_sentiment",
                        target: language,
                        rows,
                        bytes_sent: bytes,
                        bytes_received: 0,
                        elapsed: started.elapsed(),
                        error: None,
                    },
                    sentiments,
                );
                let sentiments = sentiments.map_err(fail)?;
                Ok::<_, CallError>((index, group, sentiments))
            })
            .collect();
        gather(calls, plans, inputs.len()).await
    }

    fn fit_document(&self, text: &str) -> Result<String, InferenceError> {
        if text.len() <= comprehend::MAX_DOCUMENT_BYTES {
            return Ok(text.to_owned());
        }
        if !self.config.comprehend_truncate {
            return Err(InferenceError::DocumentTooLarge {
                limit: comprehend::MAX_DOCUMENT_BYTES,
            });
        }
        let mut end = comprehend::MAX_DOCUMENT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok(text[..end].to_owned())
    }
}

/// A service call that ended without an answer: it panicked, or the ML runtime shut down.
fn lost(error: tokio::task::JoinError) -> InferenceError {
    InferenceError::Transport {
        message: if error.is_panic() {
            "the call failed unexpectedly".into()
        } else {
            "the call was stopped: pgenrich is shutting down".into()
        },
    }
}

/// Awaits every batch call (`(batch index, group, outputs)`, finishing in any order), then puts
/// each group's outputs, in batch order, back at its members' rows. `plans` holds per group its
/// member rows and, for each member, the index of its distinct input.
async fn gather<T: Clone, F>(
    mut calls: FuturesUnordered<F>,
    plans: Vec<(&Vec<usize>, Vec<usize>)>,
    rows: usize,
) -> Result<Vec<Option<T>>, CallError>
where
    F: std::future::Future<Output = Result<(usize, usize, Vec<T>), CallError>>,
{
    let mut done = Vec::new();
    while let Some(result) = calls.next().await {
        done.push(result?);
    }
    drop(calls);
    done.sort_by_key(|(index, _, _)| *index);
    let mut per_group: Vec<Vec<T>> = (0..plans.len()).map(|_| Vec::new()).collect();
    for (_, group, outputs) in done {
        per_group[group].extend(outputs);
    }
    let mut results = vec![None; rows];
    for ((members, positions), outputs) in plans.into_iter().zip(per_group) {
        for (member, position) in members.iter().zip(positions) {
            results[*member] = outputs.get(position).cloned();
        }
    }
    Ok(results)
}

/// The first row of each distinct key, and for every member the index of its key among them.
fn dedup<'a, K: Hash + Eq + 'a>(
    members: &[usize],
    key: impl Fn(&usize) -> K,
) -> (Vec<usize>, Vec<usize>) {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut unique = Vec::new();
    let mut positions = Vec::with_capacity(members.len());
    for member in members {
        let next = unique.len();
        let position = *seen.entry(key(member)).or_insert(next);
        if position == next {
            unique.push(*member);
        }
        positions.push(position);
    }
    (unique, positions)
}

#[cfg(test)]
mod tests;
