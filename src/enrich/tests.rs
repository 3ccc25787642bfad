//! The executor against scripted backends: batching, de-duplication, order, limits, errors.

use super::*;
use crate::backends::{BoxFuture, EndpointBackend, ModelBackend, SentimentBackend, SentimentLabel};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scripted double: records every batch; endpoint "short" drops a record, "throttle"
/// answers Throttled, "slow…" takes 50 ms.
#[derive(Default)]
struct Scripted {
    sentiment_batches: Mutex<Vec<Vec<String>>>,
    endpoint_batches: Mutex<Vec<String>>,
    model_bodies: Mutex<Vec<String>>,
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
            if endpoint.starts_with("slow") {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
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

impl ModelBackend for Scripted {
    fn invoke<'a>(
        &'a self,
        model_id: &'a str,
        content_type: &'a str,
        accept: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>> {
        Box::pin(async move {
            self.model_bodies.lock().expect("lock").push(body.clone());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if model_id == "throttle" {
                return Err(InferenceError::Throttled { request_id: None });
            }
            Ok((format!("{model_id}|{content_type}|{accept}|{body}"), None))
        })
    }
}

fn executor(config: ExecutorConfig) -> (Arc<Executor>, Arc<Scripted>) {
    let scripted = Arc::new(Scripted::default());
    let backends = Backends {
        sentiment: scripted.clone(),
        endpoints: scripted.clone(),
        models: scripted.clone(),
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
async fn models_get_one_call_per_distinct_input_concurrently_in_order() {
    let (executor, scripted) = executor(ExecutorConfig {
        max_concurrent_calls_per_endpoint: 3,
        ..ExecutorConfig::default()
    });
    let input = |model: Option<&str>, body: Option<String>| ModelInput {
        model_id: model.map(Into::into),
        content_type: Some("application/json".into()),
        accept: Some("*/*".into()),
        body,
    };
    let mut inputs: Vec<ModelInput> = (0..12)
        .map(|i| input(Some("m"), Some(format!("{{\"n\":{}}}", i % 6))))
        .collect();
    inputs.push(input(Some("m"), None));
    let mut stats = CallStats::default();
    let out = executor
        .invoke_model(&inputs, &executor.claim(), &mut stats)
        .await
        .expect("invoke");
    for (i, value) in out.iter().take(12).enumerate() {
        let want = format!("m|application/json|*/*|{{\"n\":{}}}", i % 6);
        assert_eq!(value.as_deref(), Some(want.as_str()));
    }
    assert_eq!(out[12], None, "NULL model_input: NULL, no call");
    assert_eq!(scripted.model_bodies.lock().expect("lock").len(), 6);
    assert_eq!((stats.calls, stats.duplicates_saved), (6, 6));
    assert_eq!(
        scripted.peak.load(Ordering::SeqCst),
        3,
        "the per-model limit"
    );

    // A NULL model id fails before any call; a failing call fails the chunk with its error.
    let before = scripted.model_bodies.lock().expect("lock").len();
    let error = executor
        .invoke_model(
            &[input(None, Some("{}".into()))],
            &executor.claim(),
            &mut stats,
        )
        .await
        .expect_err("NULL model");
    assert_eq!(error.error.sqlstate().code(), "22023");
    assert_eq!(scripted.model_bodies.lock().expect("lock").len(), before);
    let error = executor
        .invoke_model(
            &[input(Some("throttle"), Some("{}".into()))],
            &executor.claim(),
            &mut stats,
        )
        .await
        .expect_err("throttled");
    assert_eq!(
        (error.target.as_str(), error.error.sqlstate().code()),
        ("throttle", "53000")
    );
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
        .invoke_endpoint(&inputs, &executor.claim(), &mut stats)
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
            &executor.claim(),
            &mut stats,
        )
        .await
        .expect_err("short response");
    assert_eq!(short.target, "short");
    assert!(
        matches!(short.error, InferenceError::Malformed { ref message, .. } if message.contains("1 records returned for 2 inputs"))
    );
    let throttled = executor
        .invoke_endpoint(
            &[invoke("throttle", None, &[Some("1")])],
            &executor.claim(),
            &mut stats,
        )
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
            &executor.claim(),
            &mut stats,
        )
        .await
        .expect_err("NULL endpoint");
    assert_eq!(null.error.sqlstate().code(), "22023");
    let zero = executor
        .invoke_endpoint(
            &[invoke("m", Some(0), &[Some("1")])],
            &executor.claim(),
            &mut stats,
        )
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
        .invoke_endpoint(&inputs, &executor.claim(), &mut stats)
        .await
        .expect("invoke");
    assert_eq!(stats.calls, 20);
    assert!(scripted.peak.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn distinct_endpoint_names_do_not_grow_the_limits_for_ever() {
    let (executor, _) = executor(ExecutorConfig::default());
    let mut stats = CallStats::default();
    for i in 0..3 * PRUNE_TARGETS_AT {
        let inputs = [invoke(&format!("e{i}"), None, &[Some("1")])];
        executor
            .invoke_endpoint(&inputs, &executor.claim(), &mut stats)
            .await
            .expect("invoke");
    }
    let kept = executor.per_target.lock().expect("lock").len();
    assert!(kept <= PRUNE_TARGETS_AT, "{kept} limits kept");
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
        .detect_sentiment(&inputs, &executor.claim(), &mut stats)
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
        .detect_sentiment(&inputs[63..], &executor.claim(), &mut stats)
        .await
        .expect_err("too large");
    assert_eq!(error.error.sqlstate().code(), "22001");
}

fn executor_default() -> (Arc<Executor>, Arc<Scripted>) {
    executor(ExecutorConfig::default())
}

#[tokio::test(start_paused = true)]
async fn concurrent_statements_share_the_call_slots() {
    use std::time::Duration;
    let (executor, _) = executor(ExecutorConfig {
        max_concurrent_calls: 4,
        max_concurrent_calls_per_endpoint: 4,
        ..ExecutorConfig::default()
    });
    let one_row_calls = |prefix: &str, n: usize| -> Vec<InvokeInput> {
        (0..n)
            .map(|i| invoke("slow", Some(1), &[Some(&format!("{prefix}{i}"))]))
            .collect()
    };
    let started = tokio::time::Instant::now();
    let big = {
        let (executor, inputs) = (Arc::clone(&executor), one_row_calls("b", 40));
        tokio::spawn(async move {
            let mut stats = CallStats::default();
            let claim = executor.claim();
            executor
                .invoke_endpoint(&inputs, &claim, &mut stats)
                .await
                .expect("big");
            started.elapsed()
        })
    };
    // The big statement now holds all 4 slots; 36 of its calls wait.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let small_started = tokio::time::Instant::now();
    let mut stats = CallStats::default();
    executor
        .invoke_endpoint(&one_row_calls("s", 4), &executor.claim(), &mut stats)
        .await
        .expect("small");
    let small_took = small_started.elapsed();
    let big_took = big.await.expect("join");
    // With half the slots from the first release on (50 ms): two waves of 50 ms. Behind the big
    // statement's queue it would end with it, after 10 waves.
    assert!(
        small_took <= Duration::from_millis(150),
        "small statement took {small_took:?}"
    );
    assert!(big_took >= Duration::from_millis(500), "{big_took:?}");
}
