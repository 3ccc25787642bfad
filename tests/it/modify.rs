//! UPDATE and DELETE with ML calls (issue 18): the same effect, tag and RETURNING rows as the
//! native functions in the reference database, atomically, and the target rows locked before
//! inference so that a concurrent writer waits instead of slipping between scoring and update.

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::*;

const ROWS: &str = "\
    SELECT g, CASE WHEN g % 3 = 0 THEN 'bad' WHEN g % 3 = 1 THEN 'good' ELSE 'fine' END \
           || ' review ' || g, NULL, NULL \
    FROM generate_series(1, 11) g";

/// A fresh table `name` (each test has its own: they run concurrently).
async fn fresh(client: &Client, name: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id int PRIMARY KEY, body text, label varchar, score real); \
             INSERT INTO {name} {ROWS}"
        ))
        .await
        .expect("table");
}

/// The tag and the (sorted) rows of a statement, or its SQLSTATE.
async fn outcome(
    client: &Client,
    sql: &str,
) -> Result<(Option<u64>, Vec<Vec<Option<String>>>), String> {
    match client.simple_query(sql).await {
        Ok(messages) => {
            let tag = command_count(&messages);
            let mut rows = text_rows(&messages);
            rows.sort();
            Ok((tag, rows))
        }
        Err(error) => Err(sqlstate(&error)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_match_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    // Small chunks: the statements run chunk by chunk.
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 4).await;
    let client = proxy.connect().await;
    fresh(&client, "m_reviews").await;
    fresh(&native, "m_reviews").await;
    for sql in [
        "UPDATE m_reviews SET label = (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
         WHERE id > 2",
        "UPDATE m_reviews r SET score = aws_sagemaker.invoke_endpoint('score', NULL, r.id)::real, \
                                label = lower(label) \
         WHERE (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'NEGATIVE' \
         RETURNING r.id, r.label, r.score",
        "UPDATE m_reviews SET body = body || '!' FROM generate_series(1, 4) g(k) \
         WHERE m_reviews.id = g.k \
           AND aws_sagemaker.invoke_endpoint('score', NULL, g.k)::int >= 0",
        "UPDATE ONLY m_reviews SET score = DEFAULT, \
                label = aws_sagemaker.invoke_endpoint('score', NULL, id) \
         WHERE id BETWEEN 5 AND 7",
        "DELETE FROM m_reviews \
         WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' \
         RETURNING id, body",
        "DELETE FROM m_reviews m USING generate_series(1, 6) g(k) \
         WHERE m.id = g.k AND aws_sagemaker.invoke_endpoint('score', NULL, m.body) IS NOT NULL",
    ] {
        let ours = outcome(&client, sql).await;
        let theirs = outcome(&native, sql).await;
        assert_eq!(ours, theirs, "{sql}");
        assert!(
            ours.as_ref().is_ok_and(|(n, _)| n.is_some_and(|n| n > 0)),
            "{sql}: {ours:?}"
        );
        assert_eq!(
            table_rows(&client, "m_reviews").await,
            table_rows(&native, "m_reviews").await,
            "after {sql}"
        );
    }

    // Prepared, with a parameter; then an inference failure writes nothing.
    let n = client
        .execute(
            "UPDATE m_reviews SET label = (aws_comprehend.detect_sentiment(body || $1, 'en')).sentiment \
             WHERE id > 6",
            &[&"?"],
        )
        .await
        .expect("prepared UPDATE");
    assert!(n > 0);
    let before = table_rows(&client, "m_reviews").await;
    let error = client
        .simple_query(
            "UPDATE m_reviews SET body = aws_sagemaker.invoke_endpoint('model-error', NULL, id)",
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000", "{error}");
    assert_eq!(table_rows(&client, "m_reviews").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_waits_for_the_rows_being_scored() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let direct = connect(&postgres().direct_conninfo()).await;
    fresh(&direct, "m_race").await;
    for block in [false, true] {
        direct
            .batch_execute("UPDATE m_race SET body = 'good review', label = NULL WHERE id = 1")
            .await
            .expect("reset");
        // Each call takes a while: the concurrent UPDATE arrives while the row is being scored.
        proxy.mock.set_latency(Duration::from_millis(400));
        if block {
            client.batch_execute("BEGIN").await.expect("begin");
        }
        let scoring = client.simple_query(
            "UPDATE m_race SET label = (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
             WHERE id = 1",
        );
        let writer = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            direct
                .execute("UPDATE m_race SET body = 'bad review' WHERE id = 1", &[])
                .await
        };
        let commit = async {
            let out = scoring.await;
            if block {
                client.batch_execute("COMMIT").await.expect("commit");
            }
            out
        };
        let (scored, written) = tokio::join!(commit, writer);
        scored.expect("scoring UPDATE");
        assert_eq!(
            written.expect("concurrent UPDATE"),
            1,
            "the writer's update is not lost"
        );
        // The label is the sentiment of the body it was scored on; the writer's body came after.
        let row = direct
            .query_one("SELECT body, label FROM m_race WHERE id = 1", &[])
            .await
            .expect("row");
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
            ("bad review".to_owned(), Some("POSITIVE".to_owned())),
            "in a block: {block}"
        );
        proxy.mock.set_latency(Duration::ZERO);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_in_a_read_only_transaction_fails_before_scoring() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    fresh(&client, "m_read_only").await;
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .expect("begin");
    let error = client
        .simple_query(
            "DELETE FROM m_read_only WHERE aws_sagemaker.invoke_endpoint('score', NULL, id) = '1'",
        )
        .await
        .expect_err("read-only");
    assert_read_only(&error, "DELETE");
    assert_eq!(proxy.mock.stats().sagemaker_calls, 0);
    client.batch_execute("ROLLBACK").await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_with_autocommit_off_writes_ml_results() {
    let _ = postgres();
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 4).await;
    let seen = run_psycopg_script(&proxy, "psycopg_dml.py").await;
    assert_eq!(seen["inserted"], 6, "{seen}");
    assert_eq!(seen["updated"], serde_json::json!([4, 5, 6]), "{seen}");
    assert_eq!(seen["deleted"], 6, "{seen}");
    let labels: Vec<&str> = seen["after_rollback"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[1].as_str().expect("label"))
        .collect();
    assert_eq!(
        labels,
        ["POSITIVE", "POSITIVE", "POSITIVE", "positive", "positive", "positive"],
        "{seen}"
    );
    assert_eq!(seen["created"], 2, "{seen}");
    assert_eq!(seen["error"], "38000", "{seen}");
    assert_eq!(seen["status_after_error"], "INERROR", "{seen}");
    assert_eq!(seen["ctas_rolled_back"], true, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_write_and_explain_analyze_writes_as_natively() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    fresh(&client, "m_explain").await;
    let before = table_rows(&client, "m_explain").await;
    for (sql, node) in [
        (
            "EXPLAIN UPDATE m_explain SET label = (aws_comprehend.detect_sentiment(body, 'en')).sentiment",
            "Update on m_explain",
        ),
        (
            "EXPLAIN ANALYZE DELETE FROM m_explain \
             WHERE aws_sagemaker.invoke_endpoint('score', NULL, id)::int > 2",
            "Delete on m_explain",
        ),
        (
            "EXPLAIN ANALYZE INSERT INTO m_explain (id, label) \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) FROM generate_series(100, 103) g",
            "Insert on m_explain",
        ),
    ] {
        let plan: Vec<String> = text_rows(&client.simple_query(sql).await.expect(sql))
            .into_iter()
            .filter_map(|mut r| r.pop().flatten())
            .collect();
        assert!(plan.iter().any(|line| line.contains(node)), "{sql}: {plan:#?}");
    }
    // EXPLAIN ANALYZE executes the statement and keeps its writes, as natively; EXPLAIN alone
    // does not. The mock's score of an id is the id: rows 1 and 2 stay, 100–103 came.
    let after = table_rows(&client, "m_explain").await;
    let ids: Vec<&str> = after.iter().filter_map(|r| r[0].as_deref()).collect();
    assert_eq!(ids, ["1", "2", "100", "101", "102", "103"], "{after:?}");
    assert!(before.iter().all(|r| r[2].is_none()), "{before:?}");
    assert!(
        after[..2].iter().all(|r| r[2].is_none()),
        "EXPLAIN did not update: {after:?}"
    );
}
