//! What sidecars share through Redis (a real `redis-server`): results cached by one are used by
//! another (`inference_cache_redis`), calls in flight per endpoint stay within
//! `fleet_max_calls_per_endpoint` over all of them, and without Redis statements go on.

use std::time::{Duration, Instant};

use ::redis::AsyncCommands;
use pgenrich::config::Config;
use pgenrich::enrich::fleet::FleetConfig;

use crate::harness::*;

fn fleet(prefix: &str, cache: bool, max_calls: Option<usize>) -> FleetConfig {
    FleetConfig {
        url: redis().url(),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_millis(500),
        cache,
        cache_ttl: Duration::from_secs(600),
        max_calls_per_target: max_calls,
    }
}

fn with_fleet(config: &mut Config, fleet: FleetConfig) {
    config.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.inference.fleet = Some(fleet);
}

/// The sum of a metric's series holding `labels`, scraped from `proxy` (the registry is the
/// process's: compare scrapes around a test's own traffic).
async fn metric(proxy: &Proxy, name: &str, labels: &[&str]) -> f64 {
    let samples = crate::metrics::scrape(proxy.admin.expect("admin listener")).await;
    crate::metrics::sum(&samples, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_one_sidecar_computed_is_used_by_another() {
    let prefix = Redis::prefix("share");
    // No in-process cache: what B finds comes from Redis.
    let a = Proxy::start_with(|c| with_fleet(c, fleet(&prefix, true, None))).await;
    let b = Proxy::start_with(|c| with_fleet(c, fleet(&prefix, true, None))).await;
    let statement = "SELECT g, aws_sagemaker.invoke_endpoint('shared', NULL, g), \
                            aws_comprehend.detect_sentiment('text ' || g, 'en') \
                     FROM generate_series(1, 30) g ORDER BY g";
    let first = text_rows(
        &a.connect()
            .await
            .simple_query(statement)
            .await
            .expect("on A"),
    );
    let calls = a.mock.stats();
    assert!(calls.sagemaker_calls >= 1 && calls.comprehend_calls >= 1);

    // The results are written in the background: wait until B would find all 60.
    let mut redis = redis().connect().await;
    let pattern = format!("{prefix}r:*");
    for _ in 0..100 {
        let keys: Vec<Vec<u8>> = redis.keys(&pattern).await.expect("keys");
        if keys.len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys: Vec<Vec<u8>> = redis.keys(&pattern).await.expect("keys");
    assert_eq!(keys.len(), 60, "one entry per distinct input");
    let ttl: i64 = redis.pttl(&keys[0]).await.expect("pttl");
    assert!(
        ttl > 500_000 && ttl <= 600_000,
        "kept for inference_cache_ttl: {ttl} ms"
    );

    let hits_before = metric(
        &b,
        "pgenrich_cache_lookups_total",
        &["tier=\"redis\"", "result=\"hit\""],
    )
    .await;
    let again = text_rows(
        &b.connect()
            .await
            .simple_query(statement)
            .await
            .expect("on B"),
    );
    assert_eq!(again, first, "the same results");
    let stats = b.mock.stats();
    assert_eq!(
        (stats.sagemaker_calls, stats.comprehend_calls),
        (0, 0),
        "B calls nothing"
    );
    let hits = ["tier=\"redis\"", "result=\"hit\""];
    assert!(metric(&b, "pgenrich_cache_lookups_total", &hits).await - hits_before >= 60.0);

    // Only what is new is sent, and a value Redis holds that pgenrich did not write is a miss.
    let _: () = redis
        .set(&keys[0], b"garbage".as_slice())
        .await
        .expect("set");
    let rows = b
        .connect()
        .await
        .simple_query(
            "SELECT g, aws_sagemaker.invoke_endpoint('shared', NULL, g), \
                    aws_comprehend.detect_sentiment('text ' || g, 'en') \
             FROM generate_series(1, 35) g ORDER BY g",
        )
        .await
        .expect("more rows on B");
    assert_eq!(text_rows(&rows)[..30], first[..], "the same 30 first rows");
    let stats = b.mock.stats();
    assert_eq!(
        stats.sagemaker_batch_sizes.iter().sum::<usize>()
            + stats.comprehend_batch_sizes.iter().sum::<usize>(),
        11,
        "rows 31 to 35 of both functions, and the garbled entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_per_endpoint_stay_within_the_fleet_limit() {
    let prefix = Redis::prefix("limit");
    let limited = |c: &mut Config| {
        with_fleet(c, fleet(&prefix, false, Some(2)));
        c.inference.max_concurrent_calls = 8;
        c.inference.max_concurrent_calls_per_endpoint = 8;
    };
    let a = Proxy::start_with(limited).await;
    let b = Proxy::start_sharing(&a.mock.url(), limited).await;
    a.mock.set_latency(Duration::from_millis(100));
    // 12 one-row calls from each sidecar: each alone would run 8 at once.
    let statement = "SELECT aws_sagemaker.invoke_endpoint('fleet', 1, g) \
                     FROM generate_series(1, 12) g";
    let (ca, cb) = (a.connect().await, b.connect().await);
    let waits_before = metric(&a, "pgenrich_fleet_slot_waits_total", &[]).await;
    let started = Instant::now();
    let (ra, rb) = tokio::join!(ca.simple_query(statement), cb.simple_query(statement));
    assert_eq!(text_rows(&ra.expect("on A")).len(), 12);
    assert_eq!(text_rows(&rb.expect("on B")).len(), 12);
    let stats = a.mock.stats();
    assert_eq!(stats.sagemaker_calls, 24);
    assert_eq!(
        stats.peak_concurrency, 2,
        "never more than the fleet's 2 calls at once (and the 2 were used)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "24 calls of 100 ms, 2 at a time: {:?}",
        started.elapsed()
    );
    assert!(metric(&a, "pgenrich_fleet_slot_waits_total", &[]).await > waits_before);
    // Every slot is given back.
    let mut redis = redis().connect().await;
    let key = format!("{prefix}slots:fleet");
    let mut held = -1;
    for _ in 0..50 {
        held = redis.zcard(&key).await.expect("zcard");
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 0, "slots released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_sidecar_that_died_come_free_when_their_leases_end() {
    let prefix = Redis::prefix("lease");
    let proxy = Proxy::start_with(|c| with_fleet(c, fleet(&prefix, false, Some(1)))).await;
    let client = proxy.connect().await;
    let mut redis = redis().connect().await;
    let key = format!("{prefix}slots:lease");
    let now_ms = |time: (u64, u64)| time.0 * 1000 + time.1 / 1000;
    // A lease that ended already (its sidecar died): no wait at all.
    let time: (u64, u64) = ::redis::cmd("TIME")
        .query_async(&mut redis)
        .await
        .expect("time");
    let _: () = redis
        .zadd(&key, "dead:1", now_ms(time) - 1)
        .await
        .expect("zadd");
    let started = Instant::now();
    client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('lease', NULL, 1)")
        .await
        .expect("runs");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A lease that ends in 1.5 s holds the only slot until then.
    let time: (u64, u64) = ::redis::cmd("TIME")
        .query_async(&mut redis)
        .await
        .expect("time");
    let _: () = redis
        .zadd(&key, "dying:1", now_ms(time) + 1500)
        .await
        .expect("zadd");
    let started = Instant::now();
    client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('lease', NULL, 2)")
        .await
        .expect("runs after the lease ends");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert_eq!(proxy.mock.stats().sagemaker_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_statements_go_on_under_the_sidecars_own_limits() {
    // Nothing listens there.
    let closed = FleetConfig {
        url: format!("redis://127.0.0.1:{}/0", free_port()),
        timeout: Duration::from_millis(100),
        ..fleet("unused:", true, Some(1))
    };
    let proxy = Proxy::start_with(|c| with_fleet(c, closed)).await;
    let errors_before = metric(&proxy, "pgenrich_redis_errors_total", &[]).await;
    proxy.mock.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    let client = proxy.connect().await;
    let statement = "SELECT aws_sagemaker.invoke_endpoint('alone', 1, g) \
                     FROM generate_series(1, 6) g";
    for _ in 0..2 {
        let rows = client.simple_query(statement).await.expect("runs");
        assert_eq!(text_rows(&rows).len(), 6);
    }
    let stats = proxy.mock.stats();
    assert_eq!(stats.sagemaker_calls, 12, "no cache without Redis");
    assert!(stats.peak_concurrency > 1, "the fleet limit is not applied");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no long waits for Redis: {:?}",
        started.elapsed()
    );
    assert!(metric(&proxy, "pgenrich_redis_errors_total", &[]).await > errors_before);
}
