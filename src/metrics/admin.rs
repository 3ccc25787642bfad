//! The admin listener (`admin_listen`): `GET /metrics` (Prometheus text), `GET /livez` and
//! `GET /readyz`, over HTTP/1.1 on a port of its own, never the client port.
//!
//! Live means the process answers. Ready means it accepts sessions (not draining) and the
//! upstream database accepts TCP connections (checked at most once a second; authentication is
//! the database's business, per session).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

/// How long a readiness answer about the upstream is reused.
const PROBE_TTL: Duration = Duration::from_secs(1);
/// Longest a request may take to arrive (a slow client cannot hold a connection open).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks whether the upstream accepts connections: `Ok(())` or why not.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Sets gauges that are read rather than tracked, before each scrape.
pub type Sampler = Box<dyn Fn() + Send + Sync>;

/// What the admin endpoints answer from.
pub struct Admin {
    metrics: PrometheusHandle,
    sample: Sampler,
    /// Cancelled when the server stops accepting sessions.
    draining: CancellationToken,
    probe: Probe,
    last_probe: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Admin {
    pub fn new(
        metrics: PrometheusHandle,
        sample: Sampler,
        draining: CancellationToken,
        probe: Probe,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            metrics,
            sample,
            draining,
            probe,
            last_probe: Mutex::new(None),
        })
    }

    async fn ready(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("draining: not accepting sessions".into());
        }
        let cached = self
            .last_probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PROBE_TTL)
            .map(|(_, result)| result.clone());
        if let Some(result) = cached {
            return result;
        }
        let result = (self.probe)().await;
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                (self.sample)();
                let mut response = text(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /livez or /readyz\n".into(),
            ),
        }
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(admin = %addr, "admin listener: /metrics /livez /readyz");
    }
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.answer(request).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                result = connection => if let Err(error) = result {
                    debug!(%error, "admin connection failed");
                },
            }
        });
    }
    connections.close();
    connections.wait().await;
}
