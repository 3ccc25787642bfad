//! ML calls outside the select list (WHERE, GROUP BY, ORDER BY, inside expressions, …) through
//! pgenrich's base + residual plan, compared with the reference database where the functions
//! are native SQL; plus transactions, read-only sessions and failures of that path.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{connect, postgres, reference_database, sqlstate, Proxy, DATABASE};

/// The same small table in the plain and the reference database (tests run concurrently, and
/// concurrent CREATE TABLE IF NOT EXISTS can collide, hence the lock).
const SETUP: &str = "
    BEGIN;
    SELECT pg_advisory_xact_lock(4711);
    CREATE TABLE IF NOT EXISTS finish_reviews (id int PRIMARY KEY, category text, stars int, body text);
    INSERT INTO finish_reviews VALUES
      (1, 'books', 5, 'I love it, great read'),
      (2, 'books', 1, 'terrible, awful, broken spine'),
      (3, 'games', 4, 'good fun but bad ending'),
      (4, 'games', 2, 'bad'),
      (5, 'games', NULL, NULL),
      (6, 'toys', 3, ''),
      (7, 'toys', 5, 'great great great, the \"best\", love it'),
      (8, 'toys', 4, 'arrived on Tuesday')
    ON CONFLICT DO NOTHING;
    COMMIT;";

pub(crate) async fn setup() -> (Proxy, Client, Client) {
    let pg = postgres();
    let reference = connect(&pg.direct_conninfo_to(reference_database())).await;
    reference
        .batch_execute(SETUP)
        .await
        .expect("reference setup");
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    client.batch_execute(SETUP).await.expect("setup");
    (proxy, client, reference)
}

use crate::harness::text_result as result;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_calls_anywhere_in_a_select_match_native_evaluation() {
    let (_proxy, client, reference) = setup().await;
    let queries = [
        "SELECT id, category FROM finish_reviews \
         WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' ORDER BY id",
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label, count(*), \
         max(stars) FROM finish_reviews GROUP BY label ORDER BY label NULLS FIRST",
        "SELECT category, count(*) FILTER (WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE') \
         FROM finish_reviews GROUP BY category HAVING avg(stars) > 2 ORDER BY 1",
        "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, stars, id)::numeric * 2 AS doubled \
         FROM finish_reviews ORDER BY aws_sagemaker.invoke_endpoint('score', NULL, stars, id)::numeric DESC, id LIMIT 3 OFFSET 1",
        "SELECT r.id, s.sentiment, s.confidence FROM finish_reviews r, \
         aws_comprehend.detect_sentiment(r.body, 'en') s WHERE s.confidence > 0.6 AND r.id > 1 ORDER BY s.confidence DESC, r.id",
        "SELECT DISTINCT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM finish_reviews ORDER BY 1",
        "SELECT id, rank() OVER (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment ORDER BY id) \
         FROM finish_reviews ORDER BY id",
        "SELECT id, CASE WHEN (aws_comprehend.detect_sentiment(body, 'en')).confidence > 0.7 THEN 'sure' ELSE 'unsure' END, \
         upper((aws_comprehend.detect_sentiment(body, 'en')).sentiment), aws_comprehend.detect_sentiment(body, 'en') \
         FROM finish_reviews ORDER BY id",
        "SELECT a.id, b.id FROM finish_reviews a JOIN finish_reviews b ON a.id < b.id \
         AND (aws_comprehend.detect_sentiment(a.body, 'en')).sentiment = (aws_comprehend.detect_sentiment(b.body, 'en')).sentiment \
         ORDER BY 1, 2",
        "SELECT count(*) FROM finish_reviews WHERE aws_sagemaker.invoke_endpoint('score', NULL, stars)::int > 3 \
         OR id IN (SELECT 1)",
        "SELECT * FROM finish_reviews WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE' ORDER BY id",
        "SELECT r.*, (aws_comprehend.detect_sentiment(r.body, 'en')).confidence, r.* FROM finish_reviews r \
         WHERE aws_sagemaker.invoke_endpoint('score', NULL, r.id)::int > 2 ORDER BY r.id DESC",
    ];
    for sql in queries {
        let got = result(&client, sql).await;
        let expected = result(&reference, sql).await;
        assert_eq!(got, expected, "{sql}");
        assert!(
            !expected.1.is_empty(),
            "{sql} returned no rows on the reference"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_phases_share_a_transaction_and_read_only_sessions_work() {
    let (_proxy, client, _reference) = setup().await;
    let sql = "SELECT count(*) FROM finish_reviews \
               WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE'";
    // In autocommit, pgenrich's own transaction is invisible: the session is idle afterwards.
    let (_, rows) = result(&client, sql).await;
    assert_eq!(rows, [[Some("2".to_owned())]]);
    // Inside the client's READ ONLY transaction, rows it inserted earlier are seen (one
    // transaction for both phases), and nothing is written.
    client
        .batch_execute("BEGIN; CREATE TEMP TABLE IF NOT EXISTS finish_tmp (x int); COMMIT")
        .await
        .expect("temp");
    client
        .batch_execute(
            "BEGIN; INSERT INTO finish_reviews VALUES (100, 'x', 5, 'love love') ON CONFLICT DO NOTHING",
        )
        .await
        .expect("begin");
    let (_, rows) = result(&client, sql).await;
    assert_eq!(rows, [[Some("3".to_owned())]]);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    client
        .batch_execute("BEGIN TRANSACTION READ ONLY")
        .await
        .expect("begin read only");
    let (_, rows) = result(&client, sql).await;
    assert_eq!(rows, [[Some("2".to_owned())]]);
    client.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_postgres_semantics() {
    let (proxy, client, _reference) = setup().await;
    // An upstream error in the base statement is PostgreSQL's own.
    let error = client
        .simple_query(
            "SELECT nope FROM finish_reviews WHERE aws_sagemaker.invoke_endpoint('score', NULL, id) > '1'",
        )
        .await
        .expect_err("no such column");
    assert_eq!(sqlstate(&error), "42703");
    // A failing model inside a transaction block aborts it, as a native error would.
    client.batch_execute("BEGIN").await.expect("begin");
    let error = client
        .simple_query(
            "SELECT id FROM finish_reviews WHERE aws_sagemaker.invoke_endpoint('model-error', NULL, id) > '1'",
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    let error = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&error), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    // Still refused: a form that cannot be planned, with a hint; the session stays usable.
    let error = client
        .simple_query(
            "SELECT id FROM finish_reviews r WHERE EXISTS (SELECT 1 WHERE aws_sagemaker.invoke_endpoint('score', NULL, r.id) > '1')",
        )
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&error), "0A000");
    let (_, rows) = result(&client, "SELECT 41 + 1").await;
    assert_eq!(rows, [[Some("42".to_owned())]]);
    // A cast PostgreSQL rejects in the residual is PostgreSQL's error.
    let error = client
        .simple_query(
            "SELECT id FROM finish_reviews WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment::int > 1",
        )
        .await
        .expect_err("invalid cast");
    assert_eq!(sqlstate(&error), "22P02");
    assert_eq!(DATABASE, "pgenrich_test");
    drop(proxy);
}

/// Rows of an extended-protocol query, every value as text.
async fn prepared_rows(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let statement = client
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let names: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.type_()))
        .collect();
    let rows = client
        .query(&statement, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    let ty = row.columns()[i].type_().clone();
                    match ty {
                        tokio_postgres::types::Type::INT4 => {
                            row.get::<_, Option<i32>>(i).map(|v| v.to_string())
                        }
                        tokio_postgres::types::Type::INT8 => {
                            row.get::<_, Option<i64>>(i).map(|v| v.to_string())
                        }
                        tokio_postgres::types::Type::FLOAT4 => {
                            row.get::<_, Option<f32>>(i).map(|v| v.to_string())
                        }
                        tokio_postgres::types::Type::FLOAT8 => {
                            row.get::<_, Option<f64>>(i).map(|v| v.to_string())
                        }
                        _ => row.get::<_, Option<String>>(i),
                    }
                })
                .collect()
        })
        .collect();
    (names, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_parameters_match_native_evaluation() {
    let (_proxy, client, reference) = setup().await;
    let label = "POSITIVE".to_owned();
    let threshold = 0.6f32;
    let min_id = 1i32;
    let cases: Vec<(&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>)> = vec![
        (
            "SELECT id, category FROM finish_reviews \
             WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = $1 AND id > $2 ORDER BY id",
            vec![&label, &min_id],
        ),
        (
            "SELECT r.id, s.confidence FROM finish_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
             WHERE s.confidence > $1 ORDER BY s.confidence DESC, r.id",
            vec![&threshold],
        ),
        (
            "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label, count(*)::int4 AS n \
             FROM finish_reviews WHERE id >= $1 GROUP BY label ORDER BY label NULLS FIRST",
            vec![&min_id],
        ),
        (
            "SELECT * FROM finish_reviews \
             WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment <> $1 ORDER BY id",
            vec![&label],
        ),
        (
            "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, stars, $1::int4)::float8 AS score \
             FROM finish_reviews ORDER BY score DESC NULLS LAST, id LIMIT 4",
            vec![&min_id],
        ),
    ];
    for (sql, params) in &cases {
        // Twice: the second execution reuses the prepared statements.
        for _ in 0..2 {
            let got = prepared_rows(&client, sql, params).await;
            let expected = prepared_rows(&reference, sql, params).await;
            assert_eq!(got, expected, "{sql}");
            assert!(!expected.1.is_empty(), "{sql}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_with_row_limits_resume_where_they_stopped() {
    let (_proxy, mut client, _reference) = setup().await;
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction
        .prepare(
            "SELECT id FROM finish_reviews \
             WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment IS NOT NULL ORDER BY id",
        )
        .await
        .expect("prepare");
    let portal = transaction.bind(&statement, &[]).await.expect("bind");
    let mut ids = Vec::new();
    loop {
        let rows = transaction.query_portal(&portal, 2).await.expect("fetch");
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 2);
        ids.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    transaction.commit().await.expect("commit");
    assert_eq!(ids, [1, 2, 3, 4, 7, 8]);
    // A failing model fails the Execute; the session goes on after Sync.
    let error = client
        .query(
            "SELECT id FROM finish_reviews WHERE aws_sagemaker.invoke_endpoint('model-error', NULL, id) > $1",
            &[&"1"],
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    let row = client
        .query_one("SELECT 1 + $1::int4", &[&1i32])
        .await
        .expect("usable");
    assert_eq!(row.get::<_, i32>(0), 2);
}

/// The `QUERY PLAN` lines of an EXPLAIN through pgenrich.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_local_statements_run_per_chunk_and_score_each_input_once() {
    let pg = postgres();
    let reference = connect(&pg.direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|config| config.inference.chunk_rows = 4).await;
    let client = proxy.connect().await;
    // 30 rows in chunks of 4, three distinct model inputs.
    let sql = "SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g % 3)::int * 10 AS tens \
               FROM generate_series(1, 30) g \
               WHERE aws_sagemaker.invoke_endpoint('score', NULL, g % 3)::int > 0";
    proxy.mock.reset_stats();
    let got = result(&client, sql).await;
    let expected = result(&reference, sql).await;
    assert_eq!(got, expected);
    assert_eq!(got.1.len(), 20);
    assert_eq!(
        proxy.mock.stats().sagemaker_calls,
        1,
        "one call for the 3 distinct inputs"
    );
    // An error in a later chunk ends the statement with PostgreSQL's error, and the session
    // (and its next ML statement) go on.
    let error = client
        .simple_query(
            "SELECT 10 / (g - 9) FROM generate_series(1, 30) g \
             WHERE aws_sagemaker.invoke_endpoint('score', NULL, g) <> ''",
        )
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&error), "22012");
    let again = result(&client, sql).await;
    assert_eq!(again, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_row_local_statements_fail_and_cancel_as_natively() {
    let pg = postgres();
    let reference = connect(&pg.direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|config| config.inference.chunk_rows = 4).await;
    let client = proxy.connect().await;
    // Rows past 30 go to a failing model: chunks before them are scored (and their residual
    // runs) while later ones are fetched; the failure still ends the statement with 38000.
    let failing = "SELECT g FROM generate_series(1, 40) g WHERE aws_sagemaker.invoke_endpoint(\
                   CASE WHEN g > 30 THEN 'model-error' ELSE 'score' END, NULL, g)::int > 0";
    client.batch_execute("BEGIN").await.expect("begin");
    let error = client.simple_query(failing).await.expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    let error = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(
        sqlstate(&error),
        "25P02",
        "the block is aborted as natively"
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");
    // The same through the extended protocol, read to the end (no row limit).
    let error = client
        .query(failing, &[])
        .await
        .expect_err("model error, extended");
    assert_eq!(sqlstate(&error), "38000");
    // The session goes on, in both protocols, with every row in the base rows' order.
    let working = "SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g)::int AS s \
                   FROM generate_series(1, 40) g \
                   WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int % 3 <> 0";
    let expected = result(&reference, working).await;
    assert_eq!(expected.1.len(), 27);
    assert_eq!(result(&client, working).await, expected);
    let rows: Vec<(i32, i32)> = client
        .query(working, &[])
        .await
        .expect("extended")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let want: Vec<(i32, i32)> = expected
        .1
        .iter()
        .map(|row| {
            let int = |v: &Option<String>| v.as_deref().expect("value").parse().expect("int");
            (int(&row[0]), int(&row[1]))
        })
        .collect();
    assert_eq!(rows, want);

    // A cancel request stops a pipelined statement with 57014, and the session goes on.
    proxy
        .mock
        .set_latency(std::time::Duration::from_millis(300));
    let token = client.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let error = client
        .simple_query(
            "SELECT g FROM generate_series(1, 200) g \
             WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 0",
        )
        .await
        .expect_err("cancelled");
    cancel.await.expect("join").expect("cancel sent");
    assert_eq!(sqlstate(&error), "57014");
    proxy.mock.set_latency(std::time::Duration::ZERO);
    assert_eq!(result(&client, working).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_row_local_statements_stream_per_chunk_with_row_limits() {
    let pg = postgres();
    let reference = connect(&pg.direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|config| config.inference.chunk_rows = 4).await;
    let mut client = proxy.connect().await;
    let sql = "SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g % 3, $1::int4)::int AS s \
               FROM generate_series(1, 30) g \
               WHERE aws_sagemaker.invoke_endpoint('score', NULL, g % 3, $1::int4)::int > $2";
    let (one, threshold) = (1i32, 1i32);
    proxy.mock.reset_stats();
    let got = prepared_rows(&client, sql, &[&one, &threshold]).await;
    let expected = prepared_rows(&reference, sql, &[&one, &threshold]).await;
    assert_eq!(got, expected);
    assert_eq!(got.1.len(), 20);
    assert_eq!(
        proxy.mock.stats().sagemaker_calls,
        1,
        "3 distinct inputs, one call"
    );
    // 30 distinct inputs arrive in 8 chunks of at most 4 rows: one call per chunk shows the base
    // is not read whole first.
    proxy.mock.reset_stats();
    let distinct = "SELECT g FROM generate_series(1, 30) g \
                    WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > $1";
    let got = prepared_rows(&client, distinct, &[&threshold]).await;
    assert_eq!(got.1.len(), 29);
    assert_eq!(proxy.mock.stats().sagemaker_calls, 8);

    // Fetched 3 rows at a time: the portal resumes across chunk boundaries.
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction.prepare(sql).await.expect("prepare");
    let portal = transaction
        .bind(&statement, &[&one, &threshold])
        .await
        .expect("bind");
    let mut fetched = Vec::new();
    loop {
        let rows = transaction.query_portal(&portal, 3).await.expect("fetch");
        assert!(rows.len() <= 3);
        if rows.is_empty() {
            break;
        }
        fetched.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    transaction.commit().await.expect("commit");
    let all: Vec<i32> = expected
        .1
        .iter()
        .map(|r| r[0].as_deref().expect("g").parse().expect("int"))
        .collect();
    assert_eq!(fetched, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_statements_run_among_others_in_one_query_message() {
    let (_proxy, client, reference) = setup().await;
    let ml = "SELECT id FROM finish_reviews \
              WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE' ORDER BY id";
    let (_, expected) = result(&reference, ml).await;
    assert!(!expected.is_empty());
    let messages = client
        .simple_query(&format!("SELECT 'before' AS x; {ml}; SELECT 'after' AS x"))
        .await
        .expect("all three run");
    let values: Vec<Option<String>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect();
    let mut wanted = vec![Some("before".to_owned())];
    wanted.extend(expected.into_iter().map(|row| row[0].clone()));
    wanted.push(Some("after".to_owned()));
    assert_eq!(values, wanted);
    // A failing model in the middle stops the message and rolls it back, as a native error would.
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS finish_multi (x int); TRUNCATE finish_multi")
        .await
        .expect("table");
    let error = client
        .simple_query(
            "INSERT INTO finish_multi VALUES (1); \
             SELECT id FROM finish_reviews WHERE aws_sagemaker.invoke_endpoint('model-error', NULL, id) > '1'; \
             INSERT INTO finish_multi VALUES (2)",
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    let (_, rows) = result(&client, "SELECT count(*) FROM finish_multi").await;
    assert_eq!(rows, [[Some("0".to_owned())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_cannot_stream_stop_at_max_buffered_bytes() {
    let proxy = Proxy::start_with(|c| c.max_buffered_bytes = 1 << 20).await;
    let client = proxy.connect().await;
    // About 2.5 MB of base rows, sorted: they must all be held before the residual runs.
    let sql = "SELECT g FROM generate_series(1, 200000) g \
               ORDER BY aws_sagemaker.invoke_endpoint('score', NULL, g)::int DESC LIMIT 3";
    for prepared in [false, true] {
        let error = if prepared {
            client
                .query(sql, &[])
                .await
                .map(|_| ())
                .expect_err("over the limit")
        } else {
            client
                .simple_query(sql)
                .await
                .map(|_| ())
                .expect_err("over the limit")
        };
        assert_eq!(sqlstate(&error), "54000", "{error}");
        let db = error.as_db_error().expect("a database error");
        assert!(
            db.message().contains("max_buffered_bytes (1048576 bytes)"),
            "{db:?}"
        );
        assert!(db.hint().is_some_and(|h| h.contains("stream")), "{db:?}");
    }
    assert_eq!(proxy.mock.stats().sagemaker_calls, 0, "nothing was scored");
    // Inside a transaction block the error aborts it, as a native one would.
    client.batch_execute("BEGIN").await.expect("begin");
    let error = client.simple_query(sql).await.expect_err("over the limit");
    assert_eq!(sqlstate(&error), "54000");
    let error = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&error), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    // Under the limit, and streaming statements of any size (here all 200000 base rows are
    // scored, chunk by chunk), are unaffected.
    let (_, rows) = result(
        &client,
        "SELECT g FROM generate_series(1, 1000) g \
         ORDER BY aws_sagemaker.invoke_endpoint('score', NULL, g)::int DESC, g LIMIT 1",
    )
    .await;
    assert_eq!(rows.len(), 1);
    let (_, rows) = result(
        &client,
        "SELECT g FROM generate_series(1, 200000) g \
         WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 199800",
    )
    .await;
    assert_eq!(rows.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outer_join_ml_conditions_keep_unmatched_rows_as_natively() {
    let (_proxy, client, reference) = setup().await;
    // Pairs of reviews whose labels agree: some rows match, others are NULL-extended, on either
    // side. (A FULL JOIN needs a plain equality in its condition: PostgreSQL hashes or merges on
    // it, and the ML part is a key probe.)
    for join in ["LEFT", "RIGHT", "FULL"] {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE a.id IS NOT NULL AND b.id IS NOT NULL), \
                    count(*) FILTER (WHERE b.id IS NULL), count(*) FILTER (WHERE a.id IS NULL) \
               FROM finish_reviews a {join} JOIN finish_reviews b \
                 ON (a.stars > 2) = (b.stars > 2) AND a.id < b.id \
                AND (aws_comprehend.detect_sentiment(a.body, 'en')).sentiment \
                  = (aws_comprehend.detect_sentiment(b.body, 'en')).sentiment"
        );
        let got = result(&client, &sql).await;
        let expected = result(&reference, &sql).await;
        assert_eq!(got, expected, "{sql}");
        let counts: Vec<i64> = expected.1[0]
            .iter()
            .map(|v| v.as_deref().unwrap_or("0").parse().expect("a count"))
            .collect();
        assert!(counts[0] > 0, "{join}: some pairs match: {counts:?}");
        if join != "RIGHT" {
            assert!(
                counts[1] > 0,
                "{join}: some left rows are NULL-extended: {counts:?}"
            );
        }
        if join != "LEFT" {
            assert!(
                counts[2] > 0,
                "{join}: some right rows are NULL-extended: {counts:?}"
            );
        }
    }
}
