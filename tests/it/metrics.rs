//! The admin listener: Prometheus metrics scraped during real pass-through and ML traffic, and
//! the health endpoints.
//!
//! Every in-process server of this test binary records into the one process-wide registry, so
//! the checks compare scrapes before and after this test's own traffic, on series only this test
//! touches where it can (its own endpoint names).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// `GET path` on the admin listener: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin listener accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: pgenrich\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("admin answers within 10 s")
    .expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The samples of a Prometheus text scrape: `name{labels}` (labels as printed) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples whose series starts with `name` and holds every label in `labels`.
pub fn sum(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let metric = series.split('{').next().unwrap_or_default();
            metric == name && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_during_pass_through_and_ml_traffic() {
    let proxy =
        Proxy::start_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let admin = proxy.admin.expect("admin listener");
    assert_eq!(get(admin, "/livez").await.0, 200);
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(admin, "/nothing").await.0, 404);

    let before = scrape(admin).await;
    let client = proxy.connect().await;
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.expect("simple");
    }
    for _ in 0..3 {
        client
            .query("SELECT $1::int", &[&7i32])
            .await
            .expect("extended");
    }
    // ML traffic on endpoint names of this test's own, one call retried by the SDK.
    proxy.mock.throttle_next(1);
    let rows = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('metrics-test', NULL, g) \
             FROM generate_series(1, 40) g",
        )
        .await
        .expect("ML statement");
    assert_eq!(text_rows(&rows).len(), 40);
    // A model error past the retries: counted by SQLSTATE.
    let error = client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('model-error-metrics', NULL, 1)")
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    // A refused ML statement.
    let error = client
        .simple_query(
            "SELECT 1 FROM generate_series(1, 3) \
             LIMIT aws_sagemaker.invoke_endpoint('metrics-test', NULL, 1)::int",
        )
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&error), "0A000");

    let during = scrape(admin).await;
    let delta =
        |name: &str, labels: &[&str]| sum(&during, name, labels) - sum(&before, name, labels);
    assert!(
        sum(
            &during,
            "pgenrich_client_connections",
            &["state=\"relaying\""]
        ) >= 1.0,
        "an open session is counted as relaying"
    );
    assert!(delta("pgenrich_sessions_opened_total", &[]) >= 1.0);
    assert!(
        delta("pgenrich_queries_relayed_total", &["protocol=\"simple\""]) >= 5.0,
        "simple queries"
    );
    assert!(
        delta("pgenrich_queries_relayed_total", &["protocol=\"extended\""]) >= 3.0,
        "extended queries"
    );
    assert!(
        delta(
            "pgenrich_relayed_bytes_total",
            &["direction=\"to_upstream\""]
        ) > 0.0
    );
    assert!(delta("pgenrich_relayed_bytes_total", &["direction=\"to_client\""]) > 0.0);
    assert!(delta("pgenrich_ml_statements_total", &["mode=\"streaming\""]) >= 2.0);
    assert!(
        delta(
            "pgenrich_ml_statements_total",
            &["mode=\"refused\"", "sqlstate=\"0A000\""]
        ) >= 1.0
    );
    assert!(
        delta(
            "pgenrich_ml_statement_duration_seconds_count",
            &["mode=\"streaming\""]
        ) >= 2.0,
        "statement duration histogram"
    );
    assert!(
        during
            .keys()
            .any(|k| k.starts_with("pgenrich_ml_statement_duration_seconds_bucket{")),
        "a histogram with buckets, not a summary"
    );
    let endpoint = ["function=\"invoke_endpoint\"", "target=\"metrics-test\""];
    assert_eq!(
        delta("pgenrich_inference_calls_total", &endpoint),
        1.0,
        "40 rows in one call"
    );
    assert_eq!(delta("pgenrich_inference_rows_total", &endpoint), 40.0);
    assert!(
        delta(
            "pgenrich_inference_retries_total",
            &["service=\"sagemaker\""]
        ) >= 1.0
    );
    assert_eq!(
        delta(
            "pgenrich_inference_errors_total",
            &["target=\"model-error-metrics\"", "sqlstate=\"38000\""]
        ),
        1.0
    );
    assert!(
        delta(
            "pgenrich_inference_call_duration_seconds_count",
            &["function=\"invoke_endpoint\""]
        ) >= 2.0
    );
    assert!(during
        .keys()
        .any(|k| k.starts_with("pgenrich_ml_bytes_held{")));
    // The pass-through loops (when this pass relays on them) publish their rounds once a
    // second.
    if direct_relay() {
        let mut loops = HashMap::new();
        for _ in 0..50 {
            loops = scrape(admin).await;
            if sum(&loops, "pgenrich_relay_loop_rounds_total", &[])
                > sum(&before, "pgenrich_relay_loop_rounds_total", &[])
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            sum(&loops, "pgenrich_relay_loop_rounds_total", &[])
                > sum(&before, "pgenrich_relay_loop_rounds_total", &[]),
            "the relayed queries were loop rounds, published within 5 s: {:?}",
            loops
                .keys()
                .filter(|k| k.contains("loop"))
                .collect::<Vec<_>>()
        );
        let busy: Vec<f64> = loops
            .iter()
            .filter(|(k, _)| k.starts_with("pgenrich_relay_loop_busy_ratio{"))
            .map(|(_, v)| *v)
            .collect();
        assert!(
            !busy.is_empty() && busy.iter().all(|b| (0.0..=1.0).contains(b)),
            "a busy ratio per loop, between 0 and 1: {busy:?}"
        );
        assert!(loops
            .keys()
            .any(|k| k.starts_with("pgenrich_relay_loop_slow_rounds_total{")));
    }

    drop(client);
    // The session's end is counted once it has closed.
    let mut closed = 0.0;
    for _ in 0..50 {
        let after = scrape(admin).await;
        closed = sum(&after, "pgenrich_sessions_closed_total", &[])
            - sum(&before, "pgenrich_sessions_closed_total", &[]);
        if closed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed >= 1.0, "closed sessions are counted");
    proxy.shutdown.cancel();
    proxy.task.await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_upstream_and_the_drain() {
    // An upstream that refuses connections: live, not ready.
    let closed = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.upstream = closed.clone();
    })
    .await;
    let admin = proxy.admin.expect("admin listener");
    assert_eq!(get(admin, "/livez").await.0, 200);
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&closed), "names the upstream: {body}");
    proxy.shutdown.cancel();
    proxy.task.await.expect("server stops");

    // Draining: not ready while a session finishes its transaction; live all along.
    let proxy = Proxy::start_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.drain_timeout = Duration::from_secs(30);
    })
    .await;
    let admin = proxy.admin.expect("admin listener");
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.expect("begin");
    proxy.shutdown.cancel();
    let mut answer = (0, String::new());
    for _ in 0..50 {
        answer = get(admin, "/readyz").await;
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert!(answer.1.contains("draining"), "{}", answer.1);
    assert_eq!(get(admin, "/livez").await.0, 200);
    client.batch_execute("COMMIT").await.expect("commit");
    drop(client);
    tokio::time::timeout(Duration::from_secs(20), proxy.task)
        .await
        .expect("the drain ends with the transaction")
        .expect("server stops");
}

/// Runs the container image's HEALTHCHECK script with `PGENRICH_ADMIN_LISTEN` set to `admin`.
async fn healthcheck(admin: &str) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/config/healthcheck.sh");
    tokio::process::Command::new("bash")
        .arg(script)
        .env("PGENRICH_ADMIN_LISTEN", admin)
        .status()
        .await
        .expect("bash runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_asks_livez() {
    let proxy =
        Proxy::start_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let admin = proxy.admin.expect("admin listener");
    assert!(healthcheck(&format!("0.0.0.0:{}", admin.port())).await);
    assert!(
        !healthcheck(&format!("0.0.0.0:{}", free_port())).await,
        "nothing listening: unhealthy"
    );
    assert!(healthcheck("").await, "admin listener off: healthy");
    proxy.shutdown.cancel();
    proxy.task.await.expect("server stops");
}
