//! Both phases of a base + residual statement see one snapshot in autocommit, in the simple and
//! the extended protocol: a commit landing while the ML call is in flight is invisible to the
//! residual, as it would be to a native statement. And pgenrich's snapshot transaction never
//! shows: afterwards the session is idle and writable, also after suspended and failed portals.

use std::time::Duration;

use crate::harness::{
    cstr, kinds, message, parse_bind_execute_rows, postgres, text_result, Proxy, RawClient,
};

/// The outer query reads `<t>_log` in the residual; the ML block reads `<t>_rows` in the base.
fn query(t: &str) -> String {
    format!(
        "SELECT sub.s, (SELECT count(*) FROM {t}_log) AS logged \
         FROM (SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s \
               FROM {t}_rows) sub ORDER BY 1"
    )
}

/// Tables `<t>_rows` and `<t>_log` of one test (tests run concurrently).
async fn setup(t: &str) -> (Proxy, tokio_postgres::Client) {
    let direct = crate::harness::connect(&postgres().direct_conninfo()).await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}_rows, {t}_log;
             CREATE TABLE {t}_rows (id int, body text);
             CREATE TABLE {t}_log (id int);
             INSERT INTO {t}_rows VALUES (1, 'love it'), (2, 'awful'), (3, 'fine');
             INSERT INTO {t}_log VALUES (1), (2), (3);
             GRANT SELECT, INSERT, DELETE ON {t}_rows, {t}_log TO trust_user;"
        ))
        .await
        .expect("setup");
    (Proxy::start().await, direct)
}

/// Runs `run` while the mock holds ML calls for a second, and commits a row into `snap_log` as
/// soon as the first call arrives (the base rows are read by then, the residual not yet).
async fn with_commit_during_inference<F, T>(
    proxy: &Proxy,
    direct: &tokio_postgres::Client,
    t: &str,
    run: F,
) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    proxy.mock.reset_stats();
    proxy.mock.set_latency(Duration::from_millis(1500));
    let task = tokio::spawn(run);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.mock.in_flight() == 0 {
        assert!(std::time::Instant::now() < deadline, "no ML call arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    direct
        .batch_execute(&format!("INSERT INTO {t}_log VALUES (100)"))
        .await
        .expect("concurrent commit");
    let out = task.await.expect("statement task");
    proxy.mock.set_latency(Duration::ZERO);
    direct
        .batch_execute(&format!("DELETE FROM {t}_log WHERE id = 100"))
        .await
        .expect("undo");
    out
}

/// Every row counts the 3 rows of `snap_log` that existed when the statement began.
fn assert_one_snapshot(rows: &[Vec<Option<String>>], what: &str) {
    assert_eq!(rows.len(), 3, "{what}: {rows:?}");
    for row in rows {
        assert_eq!(row[1].as_deref(), Some("3"), "{what}: {rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_phases_see_one_snapshot_in_both_protocols() {
    let t = "snap_one";
    let (proxy, direct) = setup(t).await;
    let sql = query(t);

    // Simple protocol.
    let client = proxy.connect().await;
    let (rows, client) = with_commit_during_inference(&proxy, &direct, t, async move {
        let rows = text_result(&client, &query(t)).await.1;
        (rows, client)
    })
    .await;
    assert_one_snapshot(&rows, "simple protocol");
    let simple = rows;

    // Extended protocol: a prepared statement executed in autocommit.
    let statement = client.prepare(&sql).await.expect("prepare");
    let (rows, client) = with_commit_during_inference(&proxy, &direct, t, async move {
        let rows = client.query(&statement, &[]).await.expect("execute");
        (rows, client)
    })
    .await;
    let rows: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|r| {
            vec![
                r.get::<_, Option<String>>(0),
                Some(r.get::<_, i64>(1).to_string()),
            ]
        })
        .collect();
    assert_one_snapshot(&rows, "prepared statement");
    assert_eq!(rows, simple, "both protocols give the same answer");

    // pgenrich's transaction is over: the session writes, at the default isolation level.
    let isolation = text_result(&client, "SHOW transaction_isolation").await.1;
    assert_eq!(isolation, [[Some("read committed".to_owned())]]);
    client
        .batch_execute(&format!(
            "INSERT INTO {t}_log VALUES (200); DELETE FROM {t}_log WHERE id = 200"
        ))
        .await
        .expect("the session is writable after a prepared ML statement");
}

/// Parse + Bind of the ML statement, Execute with a row limit, then Sync if `sync`.
fn pipeline(sql: &str, max_rows: i32, sync: bool) -> Vec<u8> {
    let mut out = parse_bind_execute_rows(sql, max_rows);
    if sync {
        out.extend(message(b'S', &[]));
    }
    out
}

fn status(reply: &[(u8, Vec<u8>)]) -> u8 {
    let (kind, body) = reply.last().expect("a reply");
    assert_eq!(*kind, b'Z', "{}", kinds(reply));
    body[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_transaction_never_shows() {
    let t = "snap_raw";
    let (proxy, _direct) = setup(t).await;
    let sql = query(t);
    let mut raw = RawClient::startup(proxy.addr).await;

    // A suspended portal: its transaction stays open until the client's Sync, which reports
    // the session idle, as natively.
    raw.stream_write(&pipeline(&sql, 1, true)).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(
        kinds(&reply),
        "12DsZ",
        "{:?}",
        String::from_utf8_lossy(&reply[1].1)
    );
    assert_eq!(status(&reply), b'I');

    // Two portals in one snapshot transaction: finishing the second does not end the first.
    let mut parse = cstr("snap_stmt");
    parse.extend(cstr(&sql));
    parse.extend(0u16.to_be_bytes());
    let bind = |portal: &str| {
        let mut body = cstr(portal);
        body.extend(cstr("snap_stmt"));
        body.extend([0u8; 6]);
        message(b'B', &body)
    };
    let execute = |portal: &str, rows: i32| {
        let mut body = cstr(portal);
        body.extend(rows.to_be_bytes());
        message(b'E', &body)
    };
    let bytes = [
        message(b'P', &parse),
        bind("snap_a"),
        execute("snap_a", 1),
        bind("snap_b"),
        execute("snap_b", 0),
        execute("snap_a", 0),
        message(b'S', &[]),
    ]
    .concat();
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12Ds2DDDCDDCZ", "{reply:?}");
    assert_eq!(status(&reply), b'I');

    // A portal run to the end, followed in the same pipeline by a write: the write runs outside
    // pgenrich's READ ONLY transaction.
    let mut bytes = pipeline(&sql, 0, false);
    bytes.extend(crate::harness::parse_bind_execute(&format!(
        "INSERT INTO {t}_log VALUES (300)"
    )));
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12DDDC12CZ", "{reply:?}");
    assert_eq!(status(&reply), b'I');

    // A write earlier in the same pipeline: the ML statement joins that implicit transaction
    // (pgenrich cannot end it without ending the client's), and answers correctly.
    let mut bytes =
        crate::harness::parse_bind_execute(&format!("DELETE FROM {t}_log WHERE id = 300"));
    bytes.extend(pipeline(&sql, 0, true));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12C12DDDCZ", "{reply:?}");
    assert_eq!(status(&reply), b'I');

    // An ML failure inside pgenrich's transaction: the error, then an idle session.
    proxy.mock.fail_next(100);
    raw.stream_write(&pipeline(&sql, 0, true)).await;
    let reply = raw.recv_until_ready().await;
    proxy.mock.fail_next(0);
    assert_eq!(kinds(&reply), "12EZ", "{reply:?}");
    assert_eq!(status(&reply), b'I');

    // And the session goes on: a plain query, outside any transaction block.
    raw.send(b'Q', &cstr(&format!("SELECT count(*) FROM {t}_log")))
        .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "TDCZ");
    assert_eq!(reply[1].1[6..], *b"3");
    assert_eq!(status(&reply), b'I');
}
