//! Session lifecycle: cancel requests, disconnects on either side, limits, timeouts and the
//! graceful drain on shutdown.

use std::time::{Duration, Instant};

use crate::harness::{connect, error_code, postgres, sqlstate, Proxy, RawClient};

/// Polls `check` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_backend() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let bystander = proxy.connect().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled query returns")
        .expect("join");
    let error = result.expect_err("query was cancelled");
    assert_eq!(sqlstate(&error), "57014", "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Only that backend was cancelled.
    let row = bystander
        .query_one("SELECT 1", &[])
        .await
        .expect("bystander unaffected");
    assert_eq!(row.get::<_, i32>(0), 1);
}

async fn backends_named(app: &str) -> i64 {
    let direct = connect(&postgres().direct_conninfo()).await;
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_result_frees_the_upstream_backend() {
    let proxy = Proxy::start().await;
    let app = "pgenrich-disconnect-test";
    let mut raw = RawClient::startup_as(proxy.addr, app).await;
    raw.send(
        b'Q',
        &crate::harness::cstr("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)"),
    )
    .await;
    // Read a little of the result, then vanish.
    for _ in 0..10 {
        assert_ne!(raw.recv().await.expect("rows").0, b'E');
    }
    assert_eq!(backends_named(app).await, 1);
    drop(raw);
    assert!(
        eventually(Duration::from_secs(10), async || backends_named(app).await
            == 0)
        .await,
        "upstream backend still present after the client left"
    );
    // Same for a client that vanishes while the upstream is busy and silent.
    let app = "pgenrich-disconnect-sleep";
    let mut raw = RawClient::startup_as(proxy.addr, app).await;
    raw.send(b'Q', &crate::harness::cstr("SELECT pg_sleep(60)"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    assert!(
        eventually(Duration::from_secs(10), async || backends_named(app).await
            == 0)
        .await,
        "sleeping upstream backend still present after the client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_termination_reaches_the_client_and_others_continue() {
    let proxy = Proxy::start().await;
    let victim = proxy.connect().await;
    let other = proxy.connect().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let direct = connect(&postgres().direct_conninfo()).await;
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let error = victim
        .simple_query("SELECT 1")
        .await
        .expect_err("terminated");
    // PostgreSQL's own FATAL 57P01 is relayed, or the closed connection is reported.
    assert!(
        error.code().map(|c| c.code()) == Some("57P01") || error.is_closed(),
        "{error}"
    );
    other
        .simple_query("SELECT 1")
        .await
        .expect("other session unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_53300() {
    let proxy = Proxy::start_with(|c| c.max_client_connections = 2).await;
    let _a = proxy.connect().await;
    let _b = proxy.connect().await;
    let error = tokio_postgres::connect(
        &proxy.conninfo(crate::harness::USER, crate::harness::PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("third connection refused");
    assert_eq!(sqlstate(&error), "53300", "{error}");
    drop(_a);
    assert!(
        eventually(Duration::from_secs(5), async || {
            tokio_postgres::connect(
                &proxy.conninfo(crate::harness::USER, crate::harness::PASSWORD),
                tokio_postgres::NoTls,
            )
            .await
            .is_ok()
        })
        .await,
        "a slot frees up when a session ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_idle_timeouts_close_sessions_with_fatal() {
    let proxy = Proxy::start_with(|c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.idle_timeout = Some(Duration::from_millis(700));
    })
    .await;
    // A client that connects and says nothing.
    let mut silent = RawClient::connect(proxy.addr).await;
    let (kind, body) = silent.recv().await.expect("FATAL before closing");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "57014"));
    assert!(silent.recv().await.is_none(), "closed after the FATAL");

    // An authenticated session left idle.
    let mut idle = RawClient::startup(proxy.addr).await;
    let (kind, body) = idle.recv().await.expect("FATAL before closing");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "57P05"));
    assert!(idle.recv().await.is_none());

    // A session inside a transaction block is not idle-closed.
    let mut busy = RawClient::startup(proxy.addr).await;
    busy.send(b'Q', &crate::harness::cstr("BEGIN")).await;
    busy.recv_until_ready().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    busy.send(b'Q', &crate::harness::cstr("COMMIT")).await;
    let reply = busy.recv_until_ready().await;
    assert_eq!(crate::harness::kinds(&reply), "CZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_busy_sessions_and_closes_idle_ones() {
    let proxy = Proxy::start_with(|c| c.drain_timeout = Duration::from_secs(20)).await;
    let mut idle = RawClient::startup(proxy.addr).await;
    let mut busy = RawClient::startup(proxy.addr).await;
    busy.send(b'Q', &crate::harness::cstr("SELECT pg_sleep(1.5), 'done'"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.shutdown.cancel();

    let (kind, body) = idle.recv().await.expect("idle session told");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "57P01"));
    assert!(idle.recv().await.is_none());
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "listener closed"
    );

    // The busy session gets its full result, then the FATAL.
    let reply = busy.recv_until_ready().await;
    assert_eq!(crate::harness::kinds(&reply), "TDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[1].1).contains("done"));
    let (kind, body) = busy
        .recv()
        .await
        .expect("busy session told after finishing");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "57P01"));
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("server stops once drained")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_terminates_long_sessions() {
    let proxy = Proxy::start_with(|c| c.drain_timeout = Duration::from_millis(500)).await;
    let mut busy = RawClient::startup(proxy.addr).await;
    busy.send(b'Q', &crate::harness::cstr("BEGIN")).await;
    busy.recv_until_ready().await;
    let started = Instant::now();
    proxy.shutdown.cancel();
    let (kind, body) = busy.recv().await.expect("terminated");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "57P01"));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited for the drain timeout"
    );
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("server stops")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_08006() {
    // A port bound but not listening: connections to it are refused, and no other test can
    // take it meanwhile (a port merely found free could be).
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = held.local_addr().expect("addr").port();
    let proxy = Proxy::start_with(|c| c.upstream = format!("127.0.0.1:{port}")).await;
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.send_startup(&[("user", "alice")]).await;
    let (kind, body) = raw.recv().await.expect("error");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "08006"));
    assert!(!String::from_utf8_lossy(&body).contains("secret"));
}

/// Keepalive timers (in 1/100 s) of the established loopback connections whose local or remote
/// port is `port`, from the kernel's table (`/proc/net/tcp`: `tr` 2 is the keepalive timer).
fn keepalive_timers(port: u16, local: bool) -> Vec<Option<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local_address, remote_address, state, timer) =
                (fields[1], fields[2], fields[3], fields[5]);
            let address = if local { local_address } else { remote_address };
            (state == "01" && port_of(address) == Some(port)).then(|| {
                let (kind, when) = timer.split_once(':')?;
                (kind == "02").then(|| u64::from_str_radix(when, 16).ok())?
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_legs_have_tcp_keepalive_with_the_configured_idle_time() {
    let proxy = Proxy::start_with(|config| {
        config.keepalive = Some(pgenrich::config::Keepalive {
            idle: Duration::from_secs(45),
            interval: Duration::from_secs(5),
            count: 3,
        })
    })
    .await;
    let client = proxy.connect().await;
    client.simple_query("SELECT 1").await.expect("query");
    // tokio-postgres's own keepalive (2 hours) is on the test's sockets; pgenrich's fire within
    // 45 s of idleness.
    let ours = |timers: Vec<Option<u64>>| {
        timers
            .into_iter()
            .flatten()
            .filter(|&when| when <= 45 * 100)
            .count()
    };
    // The timer shows once the last bytes sent are acknowledged (delayed ACKs take a moment).
    let client_leg = eventually(Duration::from_secs(5), async || {
        ours(keepalive_timers(proxy.addr.port(), true)) >= 1
    })
    .await;
    assert!(
        client_leg,
        "no keepalive timer on pgenrich's client sockets"
    );
    let upstream_leg = eventually(Duration::from_secs(5), async || {
        ours(keepalive_timers(postgres().port, false)) >= 1
    })
    .await;
    assert!(
        upstream_leg,
        "no keepalive timer on pgenrich's upstream sockets"
    );

    // Turned off: no timer on the client leg of a new proxy.
    let off = Proxy::start_with(|config| config.keepalive = None).await;
    let client = off.connect().await;
    client.simple_query("SELECT 1").await.expect("query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        keepalive_timers(off.addr.port(), true)
            .into_iter()
            .flatten()
            .count(),
        0
    );
}
