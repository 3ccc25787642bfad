//! A local server speaking the real AWS wire protocols of the three services pgenrich calls:
//! SageMaker Runtime `InvokeEndpoint` (restJson1: `POST /endpoints/{name}/invocations`),
//! Comprehend `DetectSentiment` / `BatchDetectSentiment` (awsJson1_1: `POST /` with
//! `X-Amz-Target: Comprehend_20171127.<Operation>`) and Bedrock Runtime `InvokeModel`
//! (restJson1: `POST /model/{modelId}/invoke`, the id percent-encoded). The official AWS SDK
//! clients reach it through the standard endpoint overrides (`AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`,
//! `AWS_ENDPOINT_URL_COMPREHEND`, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, or `endpoint_url` in code).
//!
//! Models are deterministic ([`models`], [`bedrock`]). Bedrock model ids containing `embed` are
//! a Titan-style embedding model (`{"inputText", "dimensions"}` in, `{"embedding",
//! "inputTextTokenCount"}` out), ids starting with `echo` return their input, and any other id
//! answers a JSON description of the request. Faults are injected by input or by knob:
//! - endpoint names starting with `model-error` answer `ModelError` (424), `access-denied`
//!   `AccessDeniedException` (400) naming a role and the endpoint by ARN, `short` answer one
//!   record too few, `echo` return each input record unchanged, `bad-csv` return an unterminated
//!   quoted field;
//! - Bedrock model ids starting with `model-error` answer `ModelErrorException` (424), `missing`
//!   `ResourceNotFoundException` (404), `access-denied` `AccessDeniedException` (403),
//!   `validation` `ValidationException` (400), `timeout` `ModelTimeoutException` (408),
//!   `not-ready` `ModelNotReadyException` (429);
//! - texts containing `ITEM_ERROR` get a per-item `ErrorList` entry; languages outside
//!   Comprehend's list get `UnsupportedLanguageException`; oversize texts or batches get the
//!   service's size errors;
//! - [`MockAws::throttle_next`] and [`MockAws::fail_next`] make the next calls answer
//!   `ThrottlingException` (HTTP 400; 429 from Bedrock) / HTTP 500; [`MockAws::set_latency`]
//!   delays every answer;
//! - [`MockAws::set_faults`] keeps faults on for a whole run ([`faults`]): a seeded fraction of
//!   calls throttled, a fraction answered HTTP 500 / 503, and a random extra delay.
//!
//! Counters of calls, batch sizes, injected faults and peak concurrency are read with
//! [`MockAws::stats`].

pub mod bedrock;
mod comprehend;
pub mod faults;
pub mod models;
mod sagemaker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use faults::{Fault, Faults};

/// Languages Comprehend's sentiment detection accepts.
pub const LANGUAGES: &[&str] = &[
    "en", "es", "fr", "de", "it", "pt", "ar", "hi", "ja", "ko", "zh", "zh-TW",
];

/// What the mock has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub sagemaker_calls: u64,
    pub comprehend_calls: u64,
    /// InvokeModel calls that reached a model: its output or a fault id's error, not input it
    /// refused.
    pub bedrock_calls: u64,
    /// Records per InvokeEndpoint call / documents per Comprehend call, in arrival order.
    pub sagemaker_batch_sizes: Vec<usize>,
    pub comprehend_batch_sizes: Vec<usize>,
    /// The decoded model id of each counted InvokeModel call, in arrival order.
    pub bedrock_models: Vec<String>,
    /// Highest number of requests in flight at once.
    pub peak_concurrency: usize,
    /// Requests rejected for a missing SigV4 signature.
    pub unsigned: u64,
    /// Calls answered `ThrottlingException` by a knob ([`MockAws::throttle_next`] or the
    /// throttle rate).
    pub throttled: u64,
    /// Calls answered HTTP 500 or 503 by a knob ([`MockAws::fail_next`] or the error rate).
    pub failed: u64,
}

#[derive(Default)]
struct State {
    latency_ms: AtomicU64,
    throttle_next: AtomicU64,
    fail_next: AtomicU64,
    faults: Mutex<Faults>,
    /// Requests that drew from `faults`, i.e. the next request's arrival number.
    draws: AtomicU64,
    in_flight: AtomicUsize,
    request_ids: AtomicU64,
    stats: Mutex<Stats>,
}

/// A running mock; it stops when dropped.
pub struct MockAws {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockAws {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<MockAws> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockAws> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(MockAws { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL to give the SDK clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` requests answer `ThrottlingException`.
    pub fn throttle_next(&self, n: u64) {
        self.state.throttle_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests answer HTTP 500.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Keeps `faults` on for every request from now on (replacing earlier ones); the sequence of
    /// draws restarts, so a run with the same seed and arrival order gets the same faults.
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        if let Ok(mut current) = self.state.faults.lock() {
            *current = faults;
        }
        self.state.draws.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Requests received and not yet answered (latency included).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> Stats {
        self.state
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn reset_stats(&self) {
        if let Ok(mut stats) = self.state.stats.lock() {
            *stats = Stats::default();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, request_id: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let mut builder = Response::builder()
        .status(status)
        .header("x-amzn-RequestId", request_id);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// An error in the form the protocol uses: restJson1 names it in a header, awsJson1_1 in
/// `__type`; both SDKs read either.
fn error(status: StatusCode, request_id: &str, code: &str, message: &str, extra: Value) -> Reply {
    let mut body = json!({ "__type": code, "message": message, "Message": message });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    reply(
        status,
        request_id,
        &[
            ("x-amzn-ErrorType", code),
            ("content-type", "application/json"),
        ],
        Bytes::from(body.to_string()),
    )
}

struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&state);
    if let Ok(mut stats) = state.stats.lock() {
        stats.peak_concurrency = stats.peak_concurrency.max(now);
    }
    let request_id = format!(
        "mock-{:08}",
        state.request_ids.fetch_add(1, Ordering::SeqCst) + 1
    );
    let path = req.uri().path().to_owned();
    let target = header(&req, "x-amz-target");
    let signed = header(&req, "authorization").starts_with("AWS4-HMAC-SHA256 Credential=");
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let draw = state
        .faults
        .lock()
        .map(|faults| faults.draw(state.draws.fetch_add(1, Ordering::SeqCst)))
        .unwrap_or(faults::Draw {
            jitter: Duration::ZERO,
            fault: Fault::None,
        });
    let latency = Duration::from_millis(state.latency_ms.load(Ordering::SeqCst)) + draw.jitter;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !signed {
        if let Ok(mut stats) = state.stats.lock() {
            stats.unsigned += 1;
        }
        return Ok(error(
            StatusCode::FORBIDDEN,
            &request_id,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
            Value::Null,
        ));
    }
    let Some(route) = route(&path, &target) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &request_id,
            "UnknownOperationException",
            "unknown operation",
            Value::Null,
        ));
    };
    // The one-shot knobs first, so that tests using them see exactly what they asked for.
    let fault = if take_one(&state.throttle_next) {
        Fault::Throttle
    } else if take_one(&state.fail_next) {
        Fault::Internal
    } else {
        draw.fault
    };
    if let Some(reply) = injected(&state, &request_id, &route, fault) {
        return Ok(reply);
    }
    Ok(match route {
        Route::SageMaker(endpoint) => {
            sagemaker::invoke_endpoint(&state, &request_id, endpoint, &accept, &body)
        }
        Route::Comprehend => comprehend::comprehend(&state, &request_id, &target, &body),
        Route::Bedrock(label) => {
            bedrock::invoke_model(&state, &request_id, label, &content_type, &accept, &body)
        }
    })
}

/// The operation a request asks for, with its path label (Bedrock's still percent-encoded).
enum Route<'a> {
    SageMaker(&'a str),
    Comprehend,
    Bedrock(&'a str),
}

/// The operation a request's path and `X-Amz-Target` name, if the mock serves it. A Bedrock
/// label holds no raw `/`: the SDK percent-encodes one inside a model id (an ARN's), so a raw one
/// means another path, such as `/model/{id}/invoke-with-response-stream/...`.
fn route<'a>(path: &'a str, target: &str) -> Option<Route<'a>> {
    let label = |prefix: &str, suffix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
    };
    if let Some(endpoint) = label("/endpoints/", "/invocations") {
        Some(Route::SageMaker(endpoint))
    } else if let Some(model) = label("/model/", "/invoke").filter(|m| !m.contains('/')) {
        Some(Route::Bedrock(model))
    } else if target.starts_with("Comprehend_20171127.") {
        Some(Route::Comprehend)
    } else {
        None
    }
}

/// The answer of an injected fault, in the service's own terms: SageMaker and Comprehend throttle
/// with the AWS-wide `ThrottlingException` (HTTP 400); a 500 is SageMaker's `InternalFailure` or
/// Comprehend's `InternalServerException`; a 503 is `ServiceUnavailable`. Bedrock has its own
/// ([`bedrock::injected`]). The SDKs' standard retry mode retries all three kinds.
fn injected(state: &State, request_id: &str, route: &Route, fault: Fault) -> Option<Reply> {
    let is_comprehend = matches!(route, Route::Comprehend);
    let (status, code, message) = match fault {
        Fault::None => return None,
        _ if matches!(route, Route::Bedrock(_)) => bedrock::injected(fault)?,
        Fault::Throttle => (
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        ),
        Fault::Internal if is_comprehend => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "injected failure",
        ),
        Fault::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "injected failure",
        ),
        Fault::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "injected unavailability",
        ),
    };
    if let Ok(mut stats) = state.stats.lock() {
        match fault {
            Fault::Throttle => stats.throttled += 1,
            _ => stats.failed += 1,
        }
    }
    Some(error(status, request_id, code, message, Value::Null))
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One signed POST over a fresh connection; the status and the lower-cased response head.
    fn post(addr: SocketAddr, path: &str, target: &str, body: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: mock\r\nauthorization: AWS4-HMAC-SHA256 Credential=test\r\n\
             x-amz-target: {target}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        (status, answer.to_lowercase())
    }

    async fn call(mock: &MockAws, comprehend: bool) -> (u16, String) {
        let addr = mock.addr();
        tokio::task::spawn_blocking(move || {
            if comprehend {
                post(
                    addr,
                    "/",
                    "Comprehend_20171127.BatchDetectSentiment",
                    r#"{"TextList":["good"],"LanguageCode":"en"}"#,
                )
            } else {
                post(addr, "/endpoints/score/invocations", "", "1,2\n")
            }
        })
        .await
        .expect("request task")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn continuous_faults_answer_the_services_errors() {
        let mock = MockAws::start().await.expect("mock starts");
        for comprehend in [false, true] {
            assert_eq!(call(&mock, comprehend).await.0, 200);
        }

        mock.set_faults(Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        })
        .expect("valid faults");
        for comprehend in [false, true] {
            let (status, head) = call(&mock, comprehend).await;
            assert_eq!(status, 400);
            assert!(
                head.contains("x-amzn-errortype: throttlingexception"),
                "{head}"
            );
        }

        mock.set_faults(Faults {
            error_rate: 1.0,
            ..Faults::default()
        })
        .expect("valid faults");
        let mut statuses = std::collections::BTreeSet::new();
        for i in 0..40 {
            let comprehend = i % 2 == 1;
            let (status, head) = call(&mock, comprehend).await;
            let code = match status {
                500 if comprehend => "internalserverexception",
                500 => "internalfailure",
                503 => "serviceunavailable",
                other => panic!("status {other}: {head}"),
            };
            assert!(
                head.contains(&format!("x-amzn-errortype: {code}")),
                "{head}"
            );
            statuses.insert(status);
        }
        assert_eq!(statuses.into_iter().collect::<Vec<_>>(), [500, 503]);

        // The one-shot knob wins over the rate; switching the faults off restores answers.
        mock.set_faults(Faults::default()).expect("valid faults");
        mock.throttle_next(1);
        assert_eq!(call(&mock, false).await.0, 400);
        assert_eq!(call(&mock, false).await.0, 200);
        let stats = mock.stats();
        assert_eq!((stats.throttled, stats.failed), (3, 40));
        assert!(mock
            .set_faults(Faults {
                throttle_rate: 2.0,
                ..Faults::default()
            })
            .is_err());
    }
}
