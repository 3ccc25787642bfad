//! Decoding of AWS responses, through the real SDK clients and pgenrich's executor: the fuzzer's
//! bytes are the HTTP response (status, error type and request id headers, body) that an
//! in-memory HTTP client returns to every call of a statement's batches. Comprehend answers
//! (DetectSentiment, BatchDetectSentiment JSON, or errors) are mapped to one sentiment per
//! document; SageMaker InvokeEndpoint bodies are split into one CSV record per row. Checked: one
//! result per input row, in order; NULL exactly where the input is NULL or empty; every endpoint
//! result one of the body's records; Bedrock InvokeModel bodies are passed through as text and
//! read as embeddings; every failure a client error with a SQLSTATE.
//!
//! Input layout (so that seeds can be written by hand): byte 0 flags (bit 0: SageMaker, bit 1:
//! send a request id, bit 2: first row NULL, bit 3: second row empty, bit 4: Bedrock), byte 1
//! the HTTP status (index into `STATUSES`), byte 2 the `x-amzn-ErrorType` header (index into
//! `ERROR_TYPES`, 0: none), byte 3 rows (1 + n % 12), byte 4 distinct inputs among them
//! (1 + n % rows), byte 5 `max_rows_per_batch` (0: NULL), then the body.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use aws_sdk_comprehend::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use libfuzzer_sys::fuzz_target;
use pgenrich::backends::bedrock::BedrockBackend;
use pgenrich::backends::comprehend::ComprehendBackend;
use pgenrich::backends::sagemaker::SageMakerBackend;
use pgenrich::backends::Backends;
use pgenrich::enrich::models::embedding;
use pgenrich::enrich::{
    csv, CallStats, Executor, ExecutorConfig, InvokeInput, ModelInput, SentimentInput,
};

const STATUSES: &[u16] = &[200, 400, 403, 404, 413, 424, 429, 500, 503, 204, 301, 599];
const ERROR_TYPES: &[&str] = &[
    "",
    "ThrottlingException",
    "AccessDeniedException",
    "UnsupportedLanguageException",
    "TextSizeLimitExceededException",
    "InvalidRequestException",
    "ModelError",
    "ValidationError",
    "InternalServerException",
    "com.amazonaws.comprehend#BatchSizeLimitExceededException:http://internal",
];

/// The response every call gets: status, error type, request id, body.
#[derive(Clone, Default)]
struct Response {
    status: u16,
    error_type: &'static str,
    request_id: bool,
    body: Vec<u8>,
}

static RESPONSE: Mutex<Option<Response>> = Mutex::new(None);

#[derive(Debug)]
struct Replay;

impl HttpConnector for Replay {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let response = RESPONSE
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default();
        let status = StatusCode::try_from(response.status).expect("a status from STATUSES");
        let mut http = HttpResponse::new(status, SdkBody::from(response.body));
        if response.request_id {
            http.headers_mut()
                .insert("x-amzn-RequestId", "2f7e4c1a-0000-4000-8000-fuzz");
        }
        if !response.error_type.is_empty() {
            http.headers_mut()
                .insert("x-amzn-ErrorType", response.error_type);
        }
        HttpConnectorFuture::ready(Ok(http))
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    executor: Arc<Executor>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let http: SharedHttpClient = http_client_fn(|_, _| SharedHttpConnector::new(Replay));
        let credentials = Credentials::new("AKIDFUZZ", "secret", None, None, "fuzz");
        let comprehend = aws_sdk_comprehend::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials.clone())
            .http_client(http.clone())
            .retry_config(aws_sdk_comprehend::config::retry::RetryConfig::disabled())
            .build();
        let sagemaker = aws_sdk_sagemakerruntime::Config::builder()
            .behavior_version(aws_sdk_sagemakerruntime::config::BehaviorVersion::latest())
            .region(aws_sdk_sagemakerruntime::config::Region::new("us-east-1"))
            .credentials_provider(credentials.clone())
            .http_client(http.clone())
            .retry_config(aws_sdk_sagemakerruntime::config::retry::RetryConfig::disabled())
            .build();
        let bedrock = aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
            .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .http_client(http)
            .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
            .build();
        let backends = Backends {
            sentiment: Arc::new(ComprehendBackend::new(
                aws_sdk_comprehend::Client::from_conf(comprehend),
            )),
            endpoints: Arc::new(SageMakerBackend::new(
                aws_sdk_sagemakerruntime::Client::from_conf(sagemaker),
            )),
            models: Arc::new(BedrockBackend::new(
                aws_sdk_bedrockruntime::Client::from_conf(bedrock),
            )),
        };
        let executor =
            runtime.block_on(async { Executor::new(backends, ExecutorConfig::default()) });
        Harness { runtime, executor }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<6>() else {
        return;
    };
    let [flags, status, error_type, rows, distinct, batch] = *head;
    let response = Response {
        status: STATUSES[status as usize % STATUSES.len()],
        error_type: ERROR_TYPES[error_type as usize % ERROR_TYPES.len()],
        request_id: flags & 2 != 0,
        body: body.to_vec(),
    };
    if let Ok(mut slot) = RESPONSE.lock() {
        *slot = Some(response);
    }
    let rows = 1 + rows as usize % 12;
    let distinct = 1 + distinct as usize % rows;
    let batch = (batch != 0).then_some(i64::from(batch));
    let h = harness();
    let mut stats = CallStats::default();
    if flags & 16 != 0 {
        let inputs: Vec<ModelInput> = (0..rows)
            .map(|i| ModelInput {
                model_id: Some("amazon.titan-embed-text-v2:0".into()),
                content_type: Some("application/json".into()),
                accept: Some("application/json".into()),
                body: (i != 0 || flags & 4 == 0)
                    .then(|| format!("{{\"inputText\":\"{}\"}}", i % distinct)),
            })
            .collect();
        match h.runtime.block_on(
            h.executor
                .invoke_model(&inputs, &h.executor.claim(), &mut stats),
        ) {
            Ok(results) => {
                assert_eq!(results.len(), inputs.len());
                for (input, result) in inputs.iter().zip(&results) {
                    assert_eq!(
                        result.is_some(),
                        input.body.is_some(),
                        "NULL exactly for NULL"
                    );
                    if let Some(result) = result {
                        // Only a UTF-8 body is accepted (there was a call: no input was NULL).
                        let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
                        assert_eq!(result, text, "the body passes through");
                        if let Err(error) = embedding(result, "embedding") {
                            assert!(!error.to_string().is_empty());
                        }
                    }
                }
            }
            Err(error) => {
                let message = error
                    .error
                    .to_client("aws_bedrock.invoke_model", &error.target);
                assert!(!message.encode().is_empty());
            }
        }
    } else if flags & 1 == 0 {
        let inputs: Vec<SentimentInput> = (0..rows)
            .map(|i| SentimentInput {
                text: match i {
                    0 if flags & 4 != 0 => None,
                    1 if flags & 8 != 0 => Some(String::new()),
                    _ => Some(format!("document {}", i % distinct)),
                },
                language: Some("en".into()),
                max_rows_per_batch: batch,
            })
            .collect();
        match h.runtime.block_on(h.executor.detect_sentiment(
            &inputs,
            &h.executor.claim(),
            &mut stats,
        )) {
            Ok(results) => {
                assert_eq!(results.len(), inputs.len());
                for (input, result) in inputs.iter().zip(&results) {
                    let scored = input.text.as_deref().is_some_and(|t| !t.is_empty());
                    assert_eq!(
                        result.is_some(),
                        scored,
                        "NULL exactly for NULL or empty text"
                    );
                }
            }
            Err(error) => {
                let message = error
                    .error
                    .to_client("aws_comprehend.detect_sentiment", &error.target);
                assert!(!message.encode().is_empty());
            }
        }
    } else {
        let inputs: Vec<InvokeInput> = (0..rows)
            .map(|i| InvokeInput {
                endpoint: Some("score".into()),
                max_rows_per_batch: batch,
                fields: vec![
                    (i != 0 || flags & 4 == 0).then(|| format!("{}", i % distinct)),
                    Some("a,\"b\"".into()),
                ],
            })
            .collect();
        match h.runtime.block_on(h.executor.invoke_endpoint(
            &inputs,
            &h.executor.claim(),
            &mut stats,
        )) {
            Ok(results) => {
                assert_eq!(results.len(), inputs.len());
                let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
                let records = csv::split_records(text).expect("an accepted body splits");
                for result in &results {
                    let result = result.as_deref().expect("every row has a record");
                    assert!(
                        records.contains(&result),
                        "{result:?} is not a record of the body"
                    );
                }
            }
            Err(error) => {
                let message = error
                    .error
                    .to_client("aws_sagemaker.invoke_endpoint", &error.target);
                assert!(!message.encode().is_empty());
            }
        }
    }
});
