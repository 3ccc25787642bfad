//! `EXPLAIN [ANALYZE]` of ML statements in both query protocols: pgenrich's plan as QUERY PLAN
//! rows, PostgreSQL's own EXPLAIN of each phase, and what ANALYZE adds.

use tokio_postgres::Client;

use crate::harness::text_result as result;
use crate::harness::{
    cstr, error_code, kinds, message, parse_bind_execute, parse_bind_execute_rows, sqlstate,
    RawClient,
};
use crate::residual::setup;

async fn plan_lines(client: &Client, sql: &str) -> Vec<String> {
    let (names, rows) = result(client, sql).await;
    assert_eq!(names, ["QUERY PLAN"], "{sql}");
    rows.into_iter()
        .map(|row| row[0].clone().expect("a line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_both_phases_and_analyze_adds_what_happened() {
    let (proxy, client, _reference) = setup().await;
    let sql = "SELECT category, count(*) FROM finish_reviews \
               WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' \
               AND stars > 1 GROUP BY category";
    let before = proxy.mock.stats().comprehend_calls;
    let lines = plan_lines(&client, &format!("EXPLAIN {sql}")).await;
    let text = lines.join("\n");
    for expected in [
        "pgenrich: enrich, then finish in PostgreSQL",
        "Phase 1, block 0: base relation",
        "Base statement: SELECT body AS \"pgenrich:arg0\"",
        "Seq Scan on finish_reviews",
        "Filter: (stars > 1)",
        "ML call 1: aws_comprehend.detect_sentiment (language 'en', BatchDetectSentiment of up to 25 documents); max_rows_per_batch: NULL (default: 25 rows per call)",
        "Phase 2: residual statement",
        "ProjectSet",
        "HashAggregate",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("actual time"), "{text}");
    // Plain EXPLAIN runs nothing.
    assert_eq!(proxy.mock.stats().comprehend_calls, before);

    let lines = plan_lines(&client, &format!("EXPLAIN ANALYZE {sql}")).await;
    let text = lines.join("\n");
    assert!(text.contains("actual time="), "{text}");
    let summary = lines.last().expect("a summary");
    assert!(
        summary.starts_with("pgenrich execution: 6 base rows, 6 ML inputs, 1 service calls, 0 duplicate inputs saved"),
        "{summary}"
    );
    assert!(proxy.mock.stats().comprehend_calls > before);

    // The streaming form, and the session afterwards.
    let lines = plan_lines(
        &client,
        "EXPLAIN SELECT id, aws_sagemaker.invoke_endpoint('score', 10, stars) FROM finish_reviews",
    )
    .await;
    let text = lines.join("\n");
    assert!(text.starts_with("pgenrich: streaming enrichment"), "{text}");
    assert!(
        text.contains("ML call 1: aws_sagemaker.invoke_endpoint (endpoint 'score', text/csv); max_rows_per_batch: 10"),
        "{text}"
    );
    let (_, rows) = result(&client, "SELECT 1").await;
    assert_eq!(rows, [[Some("1".to_owned())]]);

    // The extended protocol gives the same plan, in the client's transaction block too.
    let simple = plan_lines(&client, &format!("EXPLAIN {sql}")).await;
    let statement = client
        .prepare(&format!("EXPLAIN {sql}"))
        .await
        .expect("prepare EXPLAIN");
    assert_eq!(statement.params().len(), 0);
    assert_eq!(statement.columns()[0].name(), "QUERY PLAN");
    for in_block in [false, true] {
        if in_block {
            client.batch_execute("BEGIN").await.expect("begin");
        }
        let rows = client.query(&statement, &[]).await.expect("EXPLAIN");
        let lines: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(lines, simple, "in a block: {in_block}");
        if in_block {
            client.batch_execute("COMMIT").await.expect("commit");
        }
    }
    let rows = client
        .query(&format!("EXPLAIN ANALYZE {sql}"), &[])
        .await
        .expect("EXPLAIN ANALYZE");
    let summary: String = rows.last().expect("lines").get(0);
    assert!(
        summary.starts_with("pgenrich execution: 6 base rows"),
        "{summary}"
    );
    // With $n parameters it is refused with a hint rather than misread.
    let error = client
        .prepare(&format!("EXPLAIN {sql} HAVING count(*) > $1"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&error), "0A000");
    let (_, rows) = result(&client, "SELECT 1").await;
    assert_eq!(rows, [[Some("1".to_owned())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_in_the_extended_protocol_keeps_pipelines_intact() {
    let (proxy, client, _reference) = setup().await;
    client
        .batch_execute("GRANT SELECT, INSERT, DELETE ON finish_reviews TO trust_user")
        .await
        .expect("grant");
    let explain = "EXPLAIN SELECT id FROM finish_reviews \
                   WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE'";
    let mut raw = RawClient::startup(proxy.addr).await;
    // A row limit: PortalSuspended, then the next Execute goes on where it stopped.
    let mut bytes = parse_bind_execute_rows(explain, 2);
    bytes.extend(crate::harness::execute("", 0));
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    let shape = kinds(&reply);
    assert!(
        shape.starts_with("12DDsD") && shape.ends_with("DCZ"),
        "{shape}"
    );
    assert_eq!(reply.last().map(|(_, b)| b[0]), Some(b'I'));

    // After a portal of the client's in the same pipeline it is refused, and the rest of the
    // pipeline is skipped as after any error.
    let mut bytes = parse_bind_execute("SELECT 1");
    bytes.extend(parse_bind_execute(explain));
    bytes.extend(parse_bind_execute_rows(
        "INSERT INTO finish_reviews VALUES (500, 'x', 1, 'x')",
        0,
    ));
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12DC12EZ", "{reply:?}");
    assert_eq!(error_code(&reply[6].1), "0A000");
    raw.send(
        b'Q',
        &cstr("SELECT count(*) FROM finish_reviews WHERE id = 500"),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(
        reply[1].1[6..],
        *b"0",
        "the INSERT after the error was skipped"
    );
    assert_eq!(reply.last().map(|(_, b)| b[0]), Some(b'I'));
}
