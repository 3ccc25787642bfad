//! Bounded memory for ML statements: whatever the client's row limit, and however slowly the
//! client reads, pgenrich stops reading the database rather than holding a result. Seen from
//! PostgreSQL: its backend waits to write (`ClientWrite`) while the client is not reading, then
//! the whole result arrives. (Peak RSS figures are in `benches/e2e_memory.sh`.)

use std::time::{Duration, Instant};

use crate::harness::{cstr, message, parse_bind_execute_rows, postgres, Proxy, RawClient};

/// About 60 MB of rows: more than pgenrich and the sockets between may hold.
const ROWS: usize = 3000;

fn statements() -> Vec<(&'static str, Vec<u8>)> {
    let streaming = format!(
        "SELECT repeat('x', 20000) AS pad, aws_comprehend.detect_sentiment('hi', 'en') \
         FROM generate_series(1, {ROWS})"
    );
    let row_local = format!(
        "SELECT repeat('x', 20000) FROM generate_series(1, {ROWS}) g \
         WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 0"
    );
    let sorted = format!("{row_local} ORDER BY g");
    let mut extended = parse_bind_execute_rows(&streaming, i32::MAX);
    extended.extend(message(b'S', &[]));
    vec![
        ("extended, no row limit", extended),
        ("simple, streaming", message(b'Q', &cstr(&streaming))),
        (
            "simple, row-local residual",
            message(b'Q', &cstr(&row_local)),
        ),
        ("simple, sorted residual", message(b'Q', &cstr(&sorted))),
    ]
}

/// The backend's wait event, read as the superuser (other roles see only their own).
async fn wait_event(app: &str) -> String {
    let sql = format!(
        "SELECT coalesce(wait_event, '-') FROM pg_stat_activity WHERE application_name = '{app}'"
    );
    tokio::task::spawn_blocking(move || postgres().psql_super(&sql))
        .await
        .expect("psql task")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_the_database_not_pgenrich() {
    let proxy = Proxy::start().await;
    for (what, bytes) in statements() {
        let app = format!("pgenrich-memory-{}", what.replace([' ', ','], "-"));
        let mut raw = RawClient::startup_as(proxy.addr, &app).await;
        raw.stream_write(&bytes).await;
        // The backend blocks writing to pgenrich while the client reads nothing.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let wait = wait_event(&app).await;
            if wait == "ClientWrite" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the database was never held back (last wait event: {wait:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then the client reads, and nothing is missing.
        let reply = raw.recv_until_ready().await;
        let rows = reply.iter().filter(|(kind, _)| *kind == b'D').count();
        assert_eq!(rows, ROWS, "{what}");
        let tag = reply.iter().find(|(kind, _)| *kind == b'C');
        assert_eq!(
            tag.map(|(_, body)| String::from_utf8_lossy(body).into_owned()),
            Some(format!("SELECT {ROWS}\0")),
            "{what}: the tag counts the whole result"
        );
        assert_eq!(
            reply.last().map(|(_, body)| body.as_slice()),
            Some(&b"I"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_row_limit_is_met_across_chunks() {
    // Fetched chunk by chunk whatever the client's limit, delivered to the limit exactly.
    let proxy = Proxy::start_with(|c| {
        c.inference.chunk_rows = 7;
        c.inference.chunk_bytes = 64 << 10;
    })
    .await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let sql = "SELECT g, repeat('y', 10000), aws_comprehend.detect_sentiment('hi', 'en') \
               FROM generate_series(1, 50) g";
    let mut bytes = parse_bind_execute_rows(sql, 23);
    bytes.extend(crate::harness::execute("", 30));
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    let kinds = crate::harness::kinds(&reply);
    let expected = format!("12{}s{}CZ", "D".repeat(23), "D".repeat(27));
    assert_eq!(kinds, expected);
    // As natively, the tag counts the rows of the Execute it ends.
    assert_eq!(reply[reply.len() - 2].1, b"SELECT 27\0");
    let first: Vec<String> = reply
        .iter()
        .filter(|(kind, _)| *kind == b'D')
        .map(|(_, body)| {
            let len = u32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
            String::from_utf8_lossy(&body[6..6 + len]).into_owned()
        })
        .collect();
    let want: Vec<String> = (1..=50).map(|g| g.to_string()).collect();
    assert_eq!(first, want, "rows in order, none lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_budget_bounds_every_statement_together() {
    let proxy = Proxy::start_with(|c| {
        c.max_buffered_bytes = 1 << 20;
        c.max_ml_memory = 1 << 20;
    })
    .await;
    // A streaming statement far larger than the whole budget completes: it reads on as its
    // chunks are delivered.
    let a = proxy.connect().await;
    let sql = format!(
        "SELECT repeat('x', 20000), aws_comprehend.detect_sentiment('hi', 'en') \
         FROM generate_series(1, {ROWS})"
    );
    let rows = crate::harness::text_rows(&a.simple_query(&sql).await.expect("streaming"));
    assert_eq!(rows.len(), ROWS);

    // While it holds the budget (its chunks wait for a slow model), a statement that must hold
    // its base rows fails with 53200 instead of adding to it; afterwards it runs.
    proxy.mock.set_latency(Duration::from_secs(3));
    let streaming = tokio::spawn(async move { a.simple_query(&sql).await.map(|m| m.len()) });
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.mock.in_flight() == 0 {
        assert!(Instant::now() < deadline, "no ML call arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = proxy.connect().await;
    let sorted = "SELECT g FROM generate_series(1, 300) g, repeat('x', 1000) pad \
                  WHERE aws_sagemaker.invoke_endpoint('score', NULL, g, pad)::int > 0 ORDER BY g";
    let error = b.simple_query(sorted).await.expect_err("over the budget");
    let message = error.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(crate::harness::sqlstate(&error), "53200", "{error:?}");
    assert!(
        message.is_some_and(|m| m.contains("max_ml_memory")),
        "{error:?}"
    );
    streaming
        .await
        .expect("task")
        .expect("the streaming statement completes");
    proxy.mock.set_latency(Duration::ZERO);
    let rows = crate::harness::text_rows(&b.simple_query(sorted).await.expect("afterwards"));
    assert_eq!(rows.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_an_ml_cursor_is_held_back_by_a_client_that_does_not_read() {
    let proxy = Proxy::start().await;
    let app = "pgenrich-memory-cursor";
    let mut raw = RawClient::startup_as(proxy.addr, app).await;
    for sql in [
        "BEGIN".to_owned(),
        format!(
            "DECLARE c CURSOR FOR SELECT repeat('x', 20000) AS pad, \
             aws_comprehend.detect_sentiment('hi', 'en') FROM generate_series(1, {ROWS})"
        ),
    ] {
        raw.stream_write(&message(b'Q', &cstr(&sql))).await;
        let reply = raw.recv_until_ready().await;
        assert!(
            reply.iter().all(|(kind, _)| *kind != b'E'),
            "{sql}: {reply:?}"
        );
    }
    raw.stream_write(&message(b'Q', &cstr("FETCH ALL FROM c")))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let wait = wait_event(app).await;
        if wait == "ClientWrite" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database was never held back (last wait event: {wait:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = raw.recv_until_ready().await;
    assert_eq!(reply.iter().filter(|(kind, _)| *kind == b'D').count(), ROWS);
    let tag = reply.iter().find(|(kind, _)| *kind == b'C');
    assert_eq!(
        tag.map(|(_, body)| String::from_utf8_lossy(body).into_owned()),
        Some(format!("FETCH {ROWS}\0"))
    );
    assert_eq!(
        reply.last().map(|(_, body)| body.as_slice()),
        Some(&b"T"[..])
    );
}
