//! Message sequences drivers send that have no Sync where one might expect it, or that name
//! portals a Sync destroyed: every one gets PostgreSQL's answer, never silence, and a client
//! that hangs up while pgenrich holds its input is noticed.

use std::time::Duration;

use crate::harness::{
    cstr, error_code, execute, kinds, message, parse_bind_execute, postgres, session_gone_within,
    Proxy, RawClient,
};

const ML: &str = "SELECT aws_comprehend.detect_sentiment('good', 'en')";

/// Parse (named `s`) and Bind (portal `p`) of an ML statement.
fn parse_bind(statement: &str, portal: &str, sql: &str) -> Vec<u8> {
    let mut parse = cstr(statement);
    parse.extend(cstr(sql));
    parse.extend(0u16.to_be_bytes());
    let mut bind = cstr(portal);
    bind.extend(cstr(statement));
    bind.extend([0u8; 6]);
    [message(b'P', &parse), message(b'B', &bind)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_query_after_an_unsynced_pipeline_is_answered() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    // Parse/Bind/Execute/Flush of a plain statement, then an ML Query without a Sync between:
    // the Query ends the extended run, as PostgreSQL does.
    let mut bytes = parse_bind_execute("SELECT 41 + 1");
    bytes.extend(message(b'H', &[]));
    bytes.extend(message(b'Q', &cstr(ML)));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12DCTDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[5].1).contains("POSITIVE"));
    assert_eq!(reply[7].1, b"I");
    // The same with the ML statement in the extended protocol first, then a streaming and a
    // base + residual Query.
    let mut bytes = parse_bind_execute(ML);
    bytes.extend(message(b'H', &[]));
    bytes.extend(message(
        b'Q',
        &cstr(
            "SELECT g FROM generate_series(1, 3) g \
             WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 1 ORDER BY g",
        ),
    ));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12DCTDDCZ", "{reply:?}");
    // The session goes on normally.
    raw.send(b'Q', &cstr(ML)).await;
    assert_eq!(kinds(&raw.recv_until_ready().await), "TDCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_query_in_a_failed_pipeline_is_skipped_to_sync_as_natively() {
    let proxy = Proxy::start().await;
    for target in ["direct", "pgenrich"] {
        let mut raw = match target {
            "direct" => {
                RawClient::startup(
                    format!("127.0.0.1:{}", postgres().port)
                        .parse()
                        .expect("address"),
                )
                .await
            }
            _ => RawClient::startup(proxy.addr).await,
        };
        let mut bytes = parse_bind_execute("SELECT no_such_column");
        bytes.extend(message(b'H', &[]));
        raw.stream_write(&bytes).await;
        let (kind, body) = raw.recv().await.expect("error");
        assert_eq!(
            (kind, error_code(&body).as_str()),
            (b'E', "42703"),
            "{target}"
        );
        // PostgreSQL ignores everything up to Sync, a Query too.
        let mut bytes = message(b'Q', &cstr(ML));
        bytes.extend(message(b'S', &[]));
        raw.stream_write(&bytes).await;
        let reply = raw.recv_until_ready().await;
        assert_eq!(kinds(&reply), "Z", "{target}: {reply:?}");
        raw.send(b'Q', &cstr(ML)).await;
        let reply = raw.recv_until_ready().await;
        // Directly the function does not exist; through pgenrich it answers.
        let want = if target == "direct" { "EZ" } else { "TDCZ" };
        assert_eq!(kinds(&reply), want, "{target}: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_destroyed_by_sync_gives_34000_for_describe_and_execute() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    for sql in [
        ML,
        // base + residual
        "SELECT g FROM generate_series(1, 3) g \
         WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 1",
        "EXPLAIN SELECT aws_comprehend.detect_sentiment('good', 'en')",
    ] {
        // Bound, then destroyed by the Sync ending its implicit transaction; Describe and
        // Execute of it in the same batch and in a later one.
        let mut bytes = parse_bind("s", "p", sql);
        bytes.extend(message(b'S', &[]));
        let mut describe = vec![b'P'];
        describe.extend(cstr("p"));
        bytes.extend(message(b'D', &describe));
        bytes.extend(message(b'S', &[]));
        bytes.extend(execute("p", 0));
        bytes.extend(message(b'S', &[]));
        raw.stream_write(&bytes).await;
        let first = raw.recv_until_ready().await;
        assert_eq!(kinds(&first), "12Z", "{sql}: {first:?}");
        for what in ["Describe", "Execute"] {
            let reply = raw.recv_until_ready().await;
            assert_eq!(kinds(&reply), "EZ", "{what} of {sql}: {reply:?}");
            assert_eq!(error_code(&reply[0].1), "34000", "{what} of {sql}");
            assert!(
                String::from_utf8_lossy(&reply[0].1).contains("portal \"p\" does not exist"),
                "{what} of {sql}: {reply:?}"
            );
        }
        // The statement outlives the transaction: bound again it runs.
        let mut bind = cstr("p");
        bind.extend(cstr("s"));
        bind.extend([0u8; 6]);
        let mut bytes = message(b'B', &bind);
        bytes.extend(execute("p", 0));
        bytes.extend(message(b'S', &[]));
        raw.stream_write(&bytes).await;
        let reply = raw.recv_until_ready().await;
        assert_eq!(kinds(&reply).chars().next(), Some('2'), "{sql}: {reply:?}");
        assert!(kinds(&reply).ends_with("CZ"), "{sql}: {reply:?}");
        let mut close = vec![b'S'];
        close.extend(cstr("s"));
        let mut bytes = message(b'C', &close);
        bytes.extend(message(b'S', &[]));
        raw.stream_write(&bytes).await;
        assert_eq!(kinds(&raw.recv_until_ready().await), "3Z");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_its_ml_message_waits_is_noticed() {
    let proxy = Proxy::start().await;
    let app = "pgenrich-held-hangup";
    let mut raw = RawClient::startup_as(proxy.addr, app).await;
    // A slow plain statement, then an ML Query that waits for its answer; then the client goes.
    let mut bytes = parse_bind_execute("SELECT pg_sleep(60)");
    bytes.extend(message(b'H', &[]));
    bytes.extend(message(b'Q', &cstr(ML)));
    raw.stream_write(&bytes).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    assert!(
        session_gone_within(app, Duration::from_secs(10)).await,
        "the upstream session (in pg_sleep) outlived its client by 10 s"
    );
}

/// Sends a Parse that fails and a Flush, which brings its error at once: the open pipeline has
/// failed, and PostgreSQL skips everything up to Sync.
async fn fail_pipeline(raw: &mut RawClient) {
    let mut parse = cstr("");
    parse.extend(cstr("SELEC broken"));
    parse.extend(0u16.to_be_bytes());
    raw.stream_write(&[message(b'P', &parse), message(b'H', &[])].concat())
        .await;
    let (kind, body) = raw.recv().await.expect("the Parse's error");
    assert_eq!((kind, error_code(&body).as_str()), (b'E', "42601"));
}

/// After an error in a pipeline PostgreSQL discards everything up to Sync, a Query too: the
/// session must not wait for an answer to it (the next ML statement used to hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_discarded_after_a_pipeline_error_is_owed_nothing() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    fail_pipeline(&mut raw).await;
    // A plain and an ML Query, both discarded by PostgreSQL (no answer), then Sync.
    raw.send(b'Q', &cstr("SELECT 1")).await;
    raw.send(b'Q', &cstr(ML)).await;
    raw.send(b'S', &[]).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), raw.recv_until_ready())
        .await
        .expect("the Sync is answered");
    assert_eq!(kinds(&reply), "Z");
    // The session goes on: an ML statement gets its rows.
    raw.send(b'Q', &cstr(ML)).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), raw.recv_until_ready())
        .await
        .expect("the ML Query is answered");
    assert_eq!(kinds(&reply), "TDCZ");
}

/// After an error PostgreSQL discards the rest of the pipeline unread; pgenrich discards the ML
/// Parse and Query messages in it too, without planning them. It planned them before, and kept
/// a prepared DECLARE of an ML cursor though PostgreSQL never ran it, charged against the
/// session's `max_prepared_bytes` until the session ended: three of them left no room for a
/// real statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_messages_after_a_pipeline_error_are_discarded_unplanned() {
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let mut raw = RawClient::startup(proxy.addr).await;
    fail_pipeline(&mut raw).await;
    // Each statement is charged about 300 kB (twice its text).
    let pad = "x".repeat(150_000);
    let ml = |n: usize| {
        format!(
            "SELECT '{pad}' AS pad, {n} AS n, \
             (aws_comprehend.detect_sentiment('good', 'en')).sentiment"
        )
    };
    let mut pipeline = Vec::new();
    for n in 0..3 {
        let declare = format!("DECLARE c{n} CURSOR WITH HOLD FOR {}", ml(n));
        pipeline.extend(parse_bind(&format!("d{n}"), "", &declare));
        pipeline.extend(execute("", 0));
    }
    for n in 0..2_000 {
        pipeline.extend(parse_bind(&format!("s{n}"), "", ML));
    }
    pipeline.extend(message(b'Q', &cstr(ML)));
    pipeline.extend(message(b'S', &[]));
    raw.stream_write(&pipeline).await;
    let reply = tokio::time::timeout(Duration::from_secs(30), raw.recv_until_ready())
        .await
        .expect("the Sync is answered");
    assert_eq!(kinds(&reply), "Z");
    // None of it exists: a statement of that size fits the budget, and the names are free.
    let mut parse = cstr("real");
    parse.extend(cstr(&ml(7)));
    parse.extend(0u16.to_be_bytes());
    raw.stream_write(&[message(b'P', &parse), message(b'S', &[])].concat())
        .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "1Z", "{:?}", error_code(&reply[0].1));
    raw.send(b'Q', &cstr("FETCH 1 FROM c0")).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "EZ");
    assert_eq!(error_code(&reply[0].1), "34000");
    let mut bind = cstr("");
    bind.extend(cstr("s0"));
    bind.extend([0u8; 6]);
    raw.stream_write(&[message(b'B', &bind), execute("", 0), message(b'S', &[])].concat())
        .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "EZ");
    assert_eq!(error_code(&reply[0].1), "26000");
    // The session goes on.
    raw.send(b'Q', &cstr(ML)).await;
    assert_eq!(kinds(&raw.recv_until_ready().await), "TDCZ");
}
