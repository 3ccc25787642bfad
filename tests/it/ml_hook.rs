//! Statements calling ML functions are recognised in both protocols. Forms pgenrich refuses
//! (ML calls in outer-join conditions next to other ML calls, nested in each other, correlated, in DDL, …) are answered
//! with 0A000 exactly where
//! PostgreSQL would report an error: the session stays usable, transaction blocks become
//! aborted, and pipelined work in the same implicit transaction is rolled back.

use crate::harness::{
    cstr, error_code, kinds, message, parse_bind_execute, sqlstate, Proxy, RawClient,
};

const REFUSED: [&str; 4] = [
    "SELECT aws_sagemaker.invoke_endpoint('m', NULL, y) FROM (VALUES (1)) v(x) \
     LEFT JOIN (VALUES (1)) w(y) ON aws_sagemaker.invoke_endpoint('m', NULL, x)::int > y",
    "SELECT aws_sagemaker.invoke_endpoint('m', NULL, aws_sagemaker.invoke_endpoint('m', NULL, 1))",
    "SELECT x FROM (VALUES (1)) v(x) \
     WHERE EXISTS (SELECT 1 WHERE aws_sagemaker.invoke_endpoint('m', NULL, v.x) = '1')",
    "CREATE TABLE ml_refused AS SELECT aws_comprehend.detect_sentiment('x', 'en') WITH NO DATA",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_forms_get_0a000_with_a_hint_and_the_session_goes_on() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    for sql in REFUSED {
        let simple = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&simple), "0A000", "simple: {sql}: {simple}");
        let extended = client.prepare(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&extended), "0A000", "extended: {sql}: {extended}");
        let db_error = extended.as_db_error().expect("db error");
        assert!(db_error.hint().is_some(), "{sql}");
        let row = client
            .query_one("SELECT 7", &[])
            .await
            .expect("next statement works");
        assert_eq!(row.get::<_, i32>(0), 7);
    }
    // Views over ML calls: refused with the reason and a hint to materialise into a table.
    for sql in [
        "CREATE VIEW ml_view AS SELECT aws_comprehend.detect_sentiment('a', 'en')",
        "CREATE MATERIALIZED VIEW ml_mview AS \
         SELECT aws_bedrock.invoke_model('m', 'a', 'b', 'c') AS answer",
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        let db = error.as_db_error().expect("db error");
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().contains("view over ML calls"),
            "{}",
            db.message()
        );
        assert!(
            db.hint().is_some_and(|h| h.contains("into a table")),
            "{sql}"
        );
    }
    // Look-alikes that are not calls pass through to PostgreSQL.
    let row = client
        .query_one(
            "SELECT 'aws_comprehend.detect_sentiment(x)' /* aws_sagemaker.f(1) */",
            &[],
        )
        .await
        .expect("literal relayed");
    assert_eq!(
        row.get::<_, String>(0),
        "aws_comprehend.detect_sentiment(x)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_inside_a_transaction_aborts_it_like_a_native_error() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS ml_tx_refused (id int); TRUNCATE ml_tx_refused")
        .await
        .expect("setup");
    for extended in [false, true] {
        client
            .batch_execute("BEGIN; INSERT INTO ml_tx_refused VALUES (1)")
            .await
            .expect("begin");
        let error = if extended {
            client.prepare(REFUSED[0]).await.expect_err("refused")
        } else {
            client.simple_query(REFUSED[0]).await.expect_err("refused")
        };
        assert_eq!(sqlstate(&error), "0A000");
        let aborted = client.simple_query("SELECT 1").await.expect_err("aborted");
        assert_eq!(sqlstate(&aborted), "25P02", "{aborted}");
        // In an aborted transaction PostgreSQL answers 25P02 even for the ML statement.
        let again = client
            .simple_query(REFUSED[0])
            .await
            .expect_err("still aborted");
        assert_eq!(sqlstate(&again), "25P02", "{again}");
        client.batch_execute("ROLLBACK").await.expect("rollback");
        let count: i64 = client
            .query_one("SELECT count(*) FROM ml_tx_refused", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(count, 0, "the insert was rolled back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_mixing_ml_and_plain_statements() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.send(
        b'Q',
        &cstr("CREATE TABLE IF NOT EXISTS ml_pipe (id int); TRUNCATE ml_pipe"),
    )
    .await;
    raw.recv_until_ready().await;

    // INSERT, a refused ML statement, a SELECT, all before one Sync: PostgreSQL would run the
    // INSERT, fail at the Parse, skip the rest and roll the implicit transaction back.
    let mut pipeline = parse_bind_execute("INSERT INTO ml_pipe VALUES (1)");
    pipeline.extend(parse_bind_execute(REFUSED[0]));
    pipeline.extend(parse_bind_execute("SELECT 1"));
    pipeline.extend(message(b'S', &[]));
    raw.stream_write(&pipeline).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12CEZ", "{reply:?}");
    assert_eq!(error_code(&reply[3].1), "0A000");
    assert_eq!(reply[4].1, b"I");
    raw.send(b'Q', &cstr("SELECT count(*) FROM ml_pipe")).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(
        &reply[1].1[6..],
        b"0",
        "the pipelined INSERT was rolled back: {reply:?}"
    );

    // INSERT, an ML statement, a plain SELECT on the unnamed statement and portal: all run, in
    // order, and the plain statement is not mistaken for the ML one it replaced.
    let mut pipeline = parse_bind_execute("INSERT INTO ml_pipe VALUES (2)");
    pipeline.extend(parse_bind_execute(
        "SELECT aws_comprehend.detect_sentiment('great', 'en')",
    ));
    pipeline.extend(parse_bind_execute("SELECT 41 + 1"));
    pipeline.extend(message(b'S', &[]));
    raw.stream_write(&pipeline).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12C12DC12DCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[5].1).ends_with("(POSITIVE,0.6666667)"));
    assert!(
        String::from_utf8_lossy(&reply[9].1).ends_with("42"),
        "{:?}",
        reply[9]
    );

    // Several statements in one Query message with ML calls run in order in one transaction.
    raw.send(
        b'Q',
        &cstr("INSERT INTO ml_pipe VALUES (3); SELECT aws_sagemaker.invoke_endpoint('m', 1, 2); SELECT count(*) FROM ml_pipe"),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "CTDCTDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[2].1).ends_with('2'));
    assert_eq!(
        &reply[5].1[6..],
        b"2",
        "the INSERT is visible to the later statement"
    );
    assert_eq!(reply[7].1, b"I");
    // A failing model rolls back the statements before it, as a native error would.
    raw.send(
        b'Q',
        &cstr("INSERT INTO ml_pipe VALUES (4); SELECT aws_sagemaker.invoke_endpoint('model-error', 1, 2); SELECT 1"),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "CTEZ", "{reply:?}");
    assert_eq!(error_code(&reply[2].1), "38000");
    assert_eq!(reply[3].1, b"I");
    raw.send(b'Q', &cstr("SELECT count(*) FROM ml_pipe")).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(
        &reply[1].1[6..],
        b"2",
        "the INSERT before the failure was rolled back"
    );
    // Inside a transaction block the block is used (and aborted by the failure).
    raw.send(b'Q', &cstr("BEGIN")).await;
    raw.recv_until_ready().await;
    raw.send(
        b'Q',
        &cstr(
            "INSERT INTO ml_pipe VALUES (5); SELECT aws_comprehend.detect_sentiment('good', 'en')",
        ),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "CTDCZ", "{reply:?}");
    assert_eq!(reply[4].1, b"T");
    raw.send(b'Q', &cstr("ROLLBACK")).await;
    raw.recv_until_ready().await;
    // Transaction control next to ML calls is refused whole; nothing runs.
    raw.send(
        b'Q',
        &cstr("BEGIN; SELECT aws_comprehend.detect_sentiment('good', 'en'); COMMIT"),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "EZ");
    assert_eq!(error_code(&reply[0].1), "0A000");
    assert_eq!(reply[1].1, b"I");
}
