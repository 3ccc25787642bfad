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
pub mod csv;
pub mod memo;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use crate::backends::{comprehend, sagemaker, Backends, Sentiment};
use crate::error::InferenceError;

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
}

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
            backends,
            config,
        })
    }

    async fn permits(
        &self,
        target: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), InferenceError> {
        let per_target = {
            let mut map = self
                .per_target
                .lock()
                .map_err(|_| InferenceError::InvalidArgument("executor state poisoned".into()))?;
            Arc::clone(map.entry(target.to_owned()).or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.max_concurrent_calls_per_endpoint.max(1),
                ))
            }))
        };
        let closed = |_| InferenceError::InvalidArgument("executor shut down".into());
        let target_permit = per_target.acquire_owned().await.map_err(closed)?;
        let global_permit = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .map_err(closed)?;
        Ok((target_permit, global_permit))
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

    /// Sentiment for each input, in order (NULL for NULL or empty text or NULL language).
    pub async fn detect_sentiment(
        &self,
        inputs: &[SentimentInput],
        stats: &mut CallStats,
    ) -> Result<Vec<Option<Sentiment>>, CallError> {
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
        stats.calls += batches.len() as u64;
        let calls: FuturesUnordered<_> = batches
            .into_iter()
            .enumerate()
            .map(|(index, (group, language, texts))| async move {
                let fail = |error| CallError {
                    target: language.to_owned(),
                    error,
                };
                let _permits = self.permits(language).await.map_err(fail)?;
                let (backend, owned) = (Arc::clone(backend), language.to_owned());
                let (rows, bytes) = (texts.len(), texts.iter().map(String::len).sum());
                let started = std::time::Instant::now();
                let sentiments = self
                    .call(async move { backend.detect(&owned, texts).await })
                    .await;
                crate::metrics::inference_call(crate::metrics::InferenceCall {
                    function: "detect_sentiment",
                    target: language,
                    rows,
                    bytes_sent: bytes,
                    bytes_received: 0,
                    elapsed: started.elapsed(),
                    error: sentiments.as_ref().err().map(|e| e.sqlstate().code()),
                });
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

    /// The endpoint's output record for each input, in order.
    pub async fn invoke_endpoint(
        &self,
        inputs: &[InvokeInput],
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        let backend = &self.backends.endpoints;
        let mut groups: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
        for (row, input) in inputs.iter().enumerate() {
            let Some(endpoint) = &input.endpoint else {
                return Err(CallError {
                    target: "NULL".into(),
                    error: InferenceError::InvalidArgument("endpoint name must not be NULL".into()),
                });
            };
            let rows = self
                .batch_rows(input.max_rows_per_batch, usize::MAX)
                .map_err(|error| CallError {
                    target: endpoint.clone(),
                    error,
                })?;
            groups
                .entry((endpoint.as_str(), rows))
                .or_default()
                .push(row);
        }
        stats.rows += inputs.len() as u64;
        // Plan every group's batches: unique records, CSV bodies within the payload limit.
        struct Batch<'a> {
            group: usize,
            endpoint: &'a str,
            body: String,
            records: usize,
        }
        let mut batches = Vec::new();
        let mut plans = Vec::new();
        for (group, ((endpoint, rows), members)) in groups.iter().enumerate() {
            let (unique, positions) = dedup(members, |&row| &inputs[row].fields);
            stats.duplicates_saved += (members.len() - unique.len()) as u64;
            let mut body = String::new();
            let mut records = 0;
            for &row in &unique {
                let mut record = String::new();
                csv::write_record(&mut record, inputs[row].fields.iter().map(|f| f.as_deref()));
                if record.len() > sagemaker::MAX_PAYLOAD_BYTES {
                    return Err(CallError {
                        target: endpoint.to_string(),
                        error: InferenceError::PayloadTooLarge {
                            bytes: record.len(),
                            limit: sagemaker::MAX_PAYLOAD_BYTES,
                        },
                    });
                }
                if records == *rows || body.len() + record.len() > sagemaker::MAX_PAYLOAD_BYTES {
                    batches.push(Batch {
                        group,
                        endpoint,
                        body: std::mem::take(&mut body),
                        records,
                    });
                    records = 0;
                }
                body.push_str(&record);
                records += 1;
            }
            if records > 0 {
                batches.push(Batch {
                    group,
                    endpoint,
                    body,
                    records,
                });
            }
            plans.push((members, positions));
        }
        stats.calls += batches.len() as u64;
        let calls: FuturesUnordered<_> = batches
            .into_iter()
            .enumerate()
            .map(|(index, batch)| async move {
                let fail = |error| CallError {
                    target: batch.endpoint.to_owned(),
                    error,
                };
                let _permits = self.permits(batch.endpoint).await.map_err(fail)?;
                let (backend, endpoint) = (Arc::clone(backend), batch.endpoint.to_owned());
                let (sent, expected) = (batch.body.len(), batch.records);
                let started = std::time::Instant::now();
                let answer = self
                    .call(async move { backend.invoke(&endpoint, batch.body).await })
                    .await;
                let received = answer.as_ref().map_or(0, |(body, _)| body.len());
                let records = answer.and_then(|(body, request_id)| {
                    let malformed = |message: String| InferenceError::Malformed {
                        message,
                        request_id: request_id.clone(),
                    };
                    let records = csv::split_records(&body).map_err(|why| malformed(why.into()))?;
                    if records.len() != expected {
                        return Err(malformed(format!(
                            "{} records returned for {expected} inputs",
                            records.len()
                        )));
                    }
                    Ok(records.into_iter().map(str::to_owned).collect::<Vec<_>>())
                });
                crate::metrics::inference_call(crate::metrics::InferenceCall {
                    function: "invoke_endpoint",
                    target: batch.endpoint,
                    rows: expected,
                    bytes_sent: sent,
                    bytes_received: received,
                    elapsed: started.elapsed(),
                    error: records.as_ref().err().map(|e| e.sqlstate().code()),
                });
                let records = records.map_err(fail)?;
                Ok((index, batch.group, records))
            })
            .collect();
        gather(calls, plans, inputs.len()).await
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
mod tests {
    use super::*;
    use crate::backends::{BoxFuture, EndpointBackend, SentimentBackend, SentimentLabel};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scripted double: records every batch; endpoint "short" drops a record, "throttle"
    /// answers Throttled.
    #[derive(Default)]
    struct Scripted {
        sentiment_batches: Mutex<Vec<Vec<String>>>,
        endpoint_batches: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
    }

    impl SentimentBackend for Scripted {
        fn max_batch(&self) -> usize {
            25
        }
        fn detect<'a>(
            &'a self,
            _: &'a str,
            texts: Vec<String>,
        ) -> BoxFuture<'a, Result<Vec<Sentiment>, InferenceError>> {
            Box::pin(async move {
                self.sentiment_batches
                    .lock()
                    .expect("lock")
                    .push(texts.clone());
                Ok(texts
                    .iter()
                    .map(|t| Sentiment {
                        label: if t.contains("good") {
                            SentimentLabel::Positive
                        } else {
                            SentimentLabel::Neutral
                        },
                        confidence: t.len() as f32,
                    })
                    .collect())
            })
        }
    }

    impl EndpointBackend for Scripted {
        fn invoke<'a>(
            &'a self,
            endpoint: &'a str,
            body: String,
        ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>> {
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.endpoint_batches
                    .lock()
                    .expect("lock")
                    .push(body.clone());
                if endpoint == "throttle" {
                    return Err(InferenceError::Throttled {
                        request_id: Some("req-1".into()),
                    });
                }
                let mut lines: Vec<String> = csv::split_records(&body)
                    .expect("csv")
                    .iter()
                    .map(|r| format!("out:{r}"))
                    .collect();
                if endpoint == "short" {
                    lines.pop();
                }
                Ok((lines.join("\n") + "\n", Some("req-2".into())))
            })
        }
    }

    fn executor(config: ExecutorConfig) -> (Arc<Executor>, Arc<Scripted>) {
        let scripted = Arc::new(Scripted::default());
        let backends = Backends {
            sentiment: scripted.clone(),
            endpoints: scripted.clone(),
        };
        (Executor::new(backends, config), scripted)
    }

    fn invoke(endpoint: &str, batch: Option<i64>, fields: &[Option<&str>]) -> InvokeInput {
        InvokeInput {
            endpoint: Some(endpoint.into()),
            max_rows_per_batch: batch,
            fields: fields.iter().map(|f| f.map(str::to_owned)).collect(),
        }
    }

    #[tokio::test]
    async fn invoke_batches_dedups_and_keeps_order() {
        let (executor, scripted) = executor(ExecutorConfig::default());
        let inputs: Vec<InvokeInput> = (0..10)
            .map(|i| {
                invoke(
                    "m",
                    Some(3),
                    &[Some(&(i % 4).to_string()), None, Some("a,b")],
                )
            })
            .collect();
        let mut stats = CallStats::default();
        let out = executor
            .invoke_endpoint(&inputs, &mut stats)
            .await
            .expect("invoke");
        for (i, value) in out.iter().enumerate() {
            assert_eq!(
                value.as_deref(),
                Some(format!("out:{},,\"a,b\"", i % 4).as_str())
            );
        }
        // Four distinct records in batches of at most three.
        let batches = scripted.endpoint_batches.lock().expect("lock").clone();
        let mut sizes: Vec<usize> = batches
            .iter()
            .map(|b| csv::split_records(b).expect("csv").len())
            .collect();
        sizes.sort();
        assert_eq!(sizes, vec![1, 3]);
        assert_eq!(
            stats,
            CallStats {
                rows: 10,
                calls: 2,
                duplicates_saved: 6
            }
        );
    }

    #[tokio::test]
    async fn wrong_record_counts_and_service_errors_name_the_endpoint() {
        let (executor, _) = executor(ExecutorConfig::default());
        let mut stats = CallStats::default();
        let short = executor
            .invoke_endpoint(
                &[
                    invoke("short", None, &[Some("1")]),
                    invoke("short", None, &[Some("2")]),
                ],
                &mut stats,
            )
            .await
            .expect_err("short response");
        assert_eq!(short.target, "short");
        assert!(
            matches!(short.error, InferenceError::Malformed { ref message, .. } if message.contains("1 records returned for 2 inputs"))
        );
        let throttled = executor
            .invoke_endpoint(&[invoke("throttle", None, &[Some("1")])], &mut stats)
            .await
            .expect_err("throttled");
        let message = throttled
            .error
            .to_client("aws_sagemaker.invoke_endpoint", &throttled.target);
        assert_eq!(message.code.code(), "53000");
        assert!(message.message.contains("\"throttle\""));
        assert_eq!(message.detail.as_deref(), Some("AWS request id: req-1"));
        let null = executor
            .invoke_endpoint(
                &[InvokeInput {
                    endpoint: None,
                    max_rows_per_batch: None,
                    fields: vec![],
                }],
                &mut stats,
            )
            .await
            .expect_err("NULL endpoint");
        assert_eq!(null.error.sqlstate().code(), "22023");
        let zero = executor
            .invoke_endpoint(&[invoke("m", Some(0), &[Some("1")])], &mut stats)
            .await
            .expect_err("zero batch");
        assert_eq!(zero.error.sqlstate().code(), "22023");
    }

    #[tokio::test]
    async fn concurrency_is_capped_per_endpoint() {
        let (executor, scripted) = executor(ExecutorConfig {
            max_concurrent_calls_per_endpoint: 2,
            ..ExecutorConfig::default()
        });
        let inputs: Vec<InvokeInput> = (0..20)
            .map(|i| invoke("m", Some(1), &[Some(&i.to_string())]))
            .collect();
        let mut stats = CallStats::default();
        executor
            .invoke_endpoint(&inputs, &mut stats)
            .await
            .expect("invoke");
        assert_eq!(stats.calls, 20);
        assert!(scripted.peak.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn sentiment_skips_nulls_and_empty_text_and_caps_batches_at_25() {
        let (executor, scripted) = executor(ExecutorConfig {
            comprehend_truncate: true,
            ..ExecutorConfig::default()
        });
        let mut inputs: Vec<SentimentInput> = (0..60)
            .map(|i| SentimentInput {
                text: Some(format!("good {}", i % 30)),
                language: Some("en".into()),
                max_rows_per_batch: Some(100),
            })
            .collect();
        inputs.push(SentimentInput {
            text: None,
            language: Some("en".into()),
            max_rows_per_batch: None,
        });
        inputs.push(SentimentInput {
            text: Some(String::new()),
            language: Some("en".into()),
            max_rows_per_batch: None,
        });
        inputs.push(SentimentInput {
            text: Some("x".into()),
            language: None,
            max_rows_per_batch: None,
        });
        inputs.push(SentimentInput {
            text: Some("é".repeat(3000)),
            language: Some("en".into()),
            max_rows_per_batch: None,
        });
        let mut stats = CallStats::default();
        let out = executor
            .detect_sentiment(&inputs, &mut stats)
            .await
            .expect("detect");
        for (i, value) in out.iter().take(60).enumerate() {
            let value = value.expect("result");
            assert_eq!(value.label, SentimentLabel::Positive);
            assert_eq!(value.confidence, format!("good {}", i % 30).len() as f32);
        }
        assert_eq!(&out[60..63], &[None, None, None]);
        assert_eq!(
            out[63].map(|s| s.confidence),
            Some(5000.0),
            "truncated at a char boundary"
        );
        let batches = scripted.sentiment_batches.lock().expect("lock").clone();
        assert!(batches.iter().all(|b| b.len() <= 25));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 31);
        assert_eq!(stats.duplicates_saved, 30);

        let (strict, _) = executor_default();
        let error = strict
            .detect_sentiment(&inputs[63..], &mut stats)
            .await
            .expect_err("too large");
        assert_eq!(error.error.sqlstate().code(), "22001");
    }

    fn executor_default() -> (Arc<Executor>, Arc<Scripted>) {
        executor(ExecutorConfig::default())
    }
}
