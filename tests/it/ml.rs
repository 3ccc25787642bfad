//! ML statements evaluated through pgenrich: Aurora's function surface, streamed in chunks,
//! batched through the real AWS SDK clients against the project's mock AWS server, and checked
//! row by row against the mock's models.

use mock_aws::models;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{connect, cstr, error_code, kinds, postgres, sqlstate, Proxy, RawClient};

/// Review texts covering NULL, empty, Unicode, quotes, commas and newlines.
const REVIEWS: &[Option<&str>] = &[
    Some("I love it, great product"),
    Some("terrible, awful, broken on arrival"),
    Some("good but bad"),
    Some("a table"),
    None,
    Some(""),
    Some("Ünïcödé is great 👍"),
    Some("say \"great\"\nthen\r\nleave, good"),
];

/// Creates `name(id int, body text)` holding [`REVIEWS`] (ids from 1) through a direct connection.
async fn reviews_table(name: &str) {
    let direct = connect(&postgres().direct_conninfo()).await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, body text)"
        ))
        .await
        .expect("create");
    for (i, body) in REVIEWS.iter().enumerate() {
        direct
            .execute(
                &format!("INSERT INTO {name} VALUES ($1, $2)"),
                &[&(i as i32 + 1), body],
            )
            .await
            .expect("insert");
    }
}

/// PostgreSQL's own text for a float4.
async fn real_text(value: f32) -> String {
    let direct = connect(&postgres().direct_conninfo()).await;
    direct
        .query_one("SELECT $1::float4::text", &[&value])
        .await
        .expect("format")
        .get(0)
}

use crate::harness::text_rows as rows;

fn columns(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_sentiment_forms_match_the_model_row_by_row() {
    reviews_table("ml_reviews_forms").await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 3).await;
    let client = proxy.connect().await;

    let mut expected_record = Vec::new();
    let mut expected_fields = Vec::new();
    for body in REVIEWS {
        match body {
            Some(text) if !text.is_empty() => {
                let s = models::sentiment(text);
                let confidence = real_text(s.confidence()).await;
                expected_record.push(Some(format!("({},{confidence})", s.label)));
                expected_fields.push((Some(s.label.to_owned()), Some(confidence)));
            }
            _ => {
                // A record of two NULLs, as a native function with OUT parameters.
                expected_record.push(Some("(,)".to_owned()));
                expected_fields.push((None, None));
            }
        }
    }

    let out = client
        .simple_query("SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM ml_reviews_forms ORDER BY id")
        .await
        .expect("bare call");
    assert_eq!(columns(&out), ["id", "detect_sentiment"]);
    let got = rows(&out);
    assert_eq!(got.len(), REVIEWS.len());
    for (i, row) in got.iter().enumerate() {
        assert_eq!(
            row[0].as_deref(),
            Some((i + 1).to_string().as_str()),
            "order"
        );
        assert_eq!(row[1], expected_record[i], "row {}", i + 1);
    }

    let out = client
        .simple_query(
            "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, \
             (aws_comprehend.detect_sentiment(body, 'en', 2)).confidence, id \
             FROM ml_reviews_forms ORDER BY id DESC",
        )
        .await
        .expect("field selections");
    assert_eq!(columns(&out), ["s", "confidence", "id"]);
    for (row, (label, confidence)) in rows(&out).iter().zip(expected_fields.iter().rev()) {
        assert_eq!((&row[0], &row[1]), (label, confidence));
    }

    for sql in [
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).* FROM ml_reviews_forms ORDER BY id",
        "SELECT s.* FROM ml_reviews_forms r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
        "SELECT s.sentiment, s.confidence FROM ml_reviews_forms r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ] {
        let out = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(columns(&out), ["sentiment", "confidence"], "{sql}");
        let got: Vec<(Option<String>, Option<String>)> =
            rows(&out).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        assert_eq!(got, expected_fields, "{sql}");
    }

    let out = client
        .simple_query("SELECT * FROM ml_reviews_forms r, aws_comprehend.detect_sentiment(r.body, 'en') AS s(label, score) ORDER BY r.id LIMIT 2")
        .await
        .expect("star over lateral form");
    assert_eq!(columns(&out), ["id", "body", "label", "score"]);
    assert_eq!(rows(&out)[0][2], expected_fields[0].0);

    let out = client
        .simple_query("SELECT * FROM aws_comprehend.detect_sentiment('I love it', 'en')")
        .await
        .expect("table function alone");
    assert_eq!(
        rows(&out),
        vec![vec![
            Some("POSITIVE".to_owned()),
            Some("0.6666667".to_owned())
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_description_types_are_those_of_native_functions() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.send(
        b'Q',
        &cstr(
            "SELECT 1 AS n, aws_comprehend.detect_sentiment('good', 'en') AS r, \
               (aws_comprehend.detect_sentiment('good', 'en')).confidence, \
               aws_sagemaker.invoke_endpoint('m', NULL, 1, 2)",
        ),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "TDCZ", "{reply:?}");
    let description = &reply[0].1;
    let mut types = Vec::new();
    let mut names = Vec::new();
    let mut rest = &description[2..];
    for _ in 0..u16::from_be_bytes([description[0], description[1]]) {
        let nul = rest.iter().position(|&b| b == 0).expect("name");
        names.push(String::from_utf8_lossy(&rest[..nul]).into_owned());
        let attrs = &rest[nul + 1..nul + 19];
        types.push(u32::from_be_bytes([attrs[6], attrs[7], attrs[8], attrs[9]]));
        rest = &rest[nul + 19..];
    }
    assert_eq!(names, ["n", "r", "confidence", "invoke_endpoint"]);
    assert_eq!(
        types,
        [23, 2249, 700, 1043],
        "int4, record, float4, varchar"
    );
    assert_eq!(&reply[2].1[..], b"SELECT 1\0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_endpoint_sends_csv_in_batches_and_respects_limit() {
    let direct = connect(&postgres().direct_conninfo()).await;
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS ml_tx; CREATE TABLE ml_tx AS \
             SELECT g AS id, (g * 1.5)::numeric AS amount, \
                    CASE WHEN g % 7 = 0 THEN NULL ELSE 'note, ' || g || ' \"q\"' END AS note, \
                    g % 2 = 0 AS flag, timestamp '2024-01-01' + g * interval '1 hour' AS ts \
             FROM generate_series(1, 250) g",
        )
        .await
        .expect("table");
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 64).await;
    let client = proxy.connect().await;
    let out = client
        .simple_query(
            "SELECT id, aws_sagemaker.invoke_endpoint('fraud', 20, amount, note, flag, ts) AS score \
             FROM ml_tx ORDER BY id",
        )
        .await
        .expect("invoke");
    let expected = client_side_expected(&direct).await;
    let got = rows(&out);
    assert_eq!(got.len(), 250);
    for (row, (id, score)) in got.iter().zip(&expected) {
        assert_eq!(row[0].as_deref(), Some(id.as_str()));
        assert_eq!(row[1].as_deref(), Some(score.as_str()), "row {id}");
    }
    let stats = proxy.mock.stats();
    assert!(
        stats.sagemaker_batch_sizes.iter().all(|&n| n <= 20),
        "{:?}",
        stats.sagemaker_batch_sizes
    );
    assert_eq!(stats.sagemaker_batch_sizes.iter().sum::<usize>(), 250);
    assert_eq!(stats.unsigned, 0, "every request was SigV4-signed");

    // LIMIT bounds what is sent for inference.
    proxy.mock.reset_stats();
    let out = client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('fraud', NULL, id) FROM ml_tx ORDER BY id LIMIT 25")
        .await
        .expect("limit");
    assert_eq!(rows(&out).len(), 25);
    assert_eq!(records_sent(&proxy), 25);

    // Identical inputs are sent once; VARIADIC ARRAY[...] spreads into fields.
    proxy.mock.reset_stats();
    let out = client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('fraud', NULL, VARIADIC ARRAY[id % 3, 10]) FROM ml_tx")
        .await
        .expect("dedup");
    assert_eq!(rows(&out).len(), 250);
    assert_eq!(records_sent(&proxy), 3);
    let values: std::collections::BTreeSet<String> = rows(&out)
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    assert_eq!(values.into_iter().collect::<Vec<_>>(), ["10", "11", "12"]);
}

/// Records the mock's endpoints received since its statistics were last reset.
fn records_sent(proxy: &Proxy) -> usize {
    proxy.mock.stats().sagemaker_batch_sizes.iter().sum()
}

/// The expected score of each ml_tx row, from the mock's model over PostgreSQL's text forms.
async fn client_side_expected(direct: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = direct
        .simple_query("SELECT id, amount, note, flag, ts FROM ml_tx ORDER BY id")
        .await
        .expect("read back");
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                let fields: Vec<String> =
                    (1..5).map(|i| r.get(i).unwrap_or("").to_owned()).collect();
                Some((r.get(0).unwrap_or("").to_owned(), models::score(&fields)))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentiment_batches_hold_at_most_25_distinct_documents() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let out = client
        .simple_query(
            "SELECT aws_comprehend.detect_sentiment('review ' || (g % 60) || ' is good', 'en') \
             FROM generate_series(1, 300) g",
        )
        .await
        .expect("detect");
    assert_eq!(rows(&out).len(), 300);
    let stats = proxy.mock.stats();
    assert!(
        stats.comprehend_batch_sizes.iter().all(|&n| n <= 25),
        "{:?}",
        stats.comprehend_batch_sizes
    );
    assert_eq!(
        stats.comprehend_batch_sizes.iter().sum::<usize>(),
        60,
        "each distinct text once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_failures_map_to_sqlstates_and_keep_transaction_semantics() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let cases: [(&str, &str, &str); 5] = [
        (
            "SELECT aws_sagemaker.invoke_endpoint('model-error-1', NULL, 1)",
            "38000",
            "model-error-1",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint('short-1', NULL, g) FROM generate_series(1, 3) g",
            "38000",
            "short-1",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment('hello', 'xx')",
            "22023",
            "xx",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment(t, 'en') FROM (VALUES ('fine'), ('has ITEM_ERROR')) v(t)",
            "38000",
            "en",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint('m', 0, 1)",
            "22023",
            "m",
        ),
    ];
    for (sql, code, target) in cases {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&error), code, "{sql}: {error}");
        let db = error.as_db_error().expect("db error");
        assert!(db.message().contains(target), "{sql}: {}", db.message());
        client
            .simple_query("SELECT 1")
            .await
            .expect("session usable");
    }
    // The AWS request id travels in DETAIL.
    let error = client
        .simple_query(cases[0].0)
        .await
        .expect_err("model error");
    let detail = error
        .as_db_error()
        .and_then(|e| e.detail())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.starts_with("AWS request id: mock-"), "{detail}");

    // Throttling past the retry budget.
    proxy.mock.throttle_next(10);
    let error = client
        .simple_query("SELECT aws_comprehend.detect_sentiment('good', 'en')")
        .await
        .expect_err("throttled");
    assert_eq!(sqlstate(&error), "53000", "{error}");
    proxy.mock.throttle_next(0);
    // A transient 500 is retried by the SDK and succeeds.
    proxy.mock.fail_next(1);
    let out = client
        .simple_query("SELECT aws_comprehend.detect_sentiment('good', 'en')")
        .await
        .expect("retried");
    assert_eq!(rows(&out)[0][0].as_deref(), Some("(POSITIVE,0.6666667)"));

    // Inside a transaction block the failure aborts the transaction like a native error.
    client.batch_execute("BEGIN").await.expect("begin");
    let error = client.simple_query(cases[0].0).await.expect_err("fails");
    assert_eq!(sqlstate(&error), "38000");
    let aborted = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&aborted), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    client.simple_query("SELECT 1").await.expect("usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_and_pipelined_queries_around_ml_statements() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    // The database's own error for an ML statement passes through (undefined column).
    raw.send(
        b'Q',
        &cstr("SELECT aws_comprehend.detect_sentiment(nope, 'en') FROM (VALUES (1)) v(x)"),
    )
    .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "EZ");
    assert_eq!(error_code(&reply[0].1), "42703");
    // Queries sent back to back around an ML statement are answered in order.
    let mut batch = crate::harness::message(b'Q', &cstr("SELECT 'before'"));
    batch.extend(crate::harness::message(
        b'Q',
        &cstr("SELECT aws_comprehend.detect_sentiment('good', 'en')"),
    ));
    batch.extend(crate::harness::message(b'Q', &cstr("SELECT 'after'")));
    raw.stream_write(&batch).await;
    let first = raw.recv_until_ready().await;
    let second = raw.recv_until_ready().await;
    let third = raw.recv_until_ready().await;
    assert!(String::from_utf8_lossy(&first[1].1).contains("before"));
    assert_eq!(kinds(&second), "TDCZ");
    assert!(String::from_utf8_lossy(&second[1].1).contains("(POSITIVE,0.6666667)"));
    assert!(String::from_utf8_lossy(&third[1].1).contains("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_inference_in_progress() {
    let proxy = Proxy::start().await;
    // Uncancelled, this takes 3 rounds of 10 s; the margin keeps the check honest on a busy machine.
    proxy.mock.set_latency(std::time::Duration::from_secs(10));
    let client = proxy.connect().await;
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let query = tokio::spawn(async move {
        let result = client
            .simple_query(
                "SELECT aws_sagemaker.invoke_endpoint('slow', 1, g) FROM generate_series(1, 20) g",
            )
            .await;
        (result, client)
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let (result, client) = tokio::time::timeout(std::time::Duration::from_secs(20), query)
        .await
        .expect("returns")
        .expect("join");
    let error = result.expect_err("cancelled");
    assert_eq!(sqlstate(&error), "57014", "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    proxy.mock.set_latency(std::time::Duration::ZERO);
    // A cancel sent while the session is idle does not cancel the next statement.
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel while idle");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let out = client
        .simple_query("SELECT aws_comprehend.detect_sentiment('good', 'en')")
        .await
        .expect("usable");
    assert_eq!(rows(&out).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_after_a_cancelled_one_is_not_cancelled() {
    // pgenrich ends its own work on a cancel request and forwards the request to PostgreSQL. If
    // it answered the client first, the forwarded cancel could land on the client's next
    // statement (here a 300 ms sleep, long enough for any late cancel to hit it).
    let proxy = Proxy::start().await;
    proxy.mock.set_latency(std::time::Duration::from_secs(10));
    let client = proxy.connect().await;
    for round in 0..4 {
        let token = client.cancel_token();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        });
        let error = client
            .simple_query("SELECT aws_comprehend.detect_sentiment('slow ' || g, 'en') FROM generate_series(1, 3) g")
            .await
            .expect_err("cancelled");
        assert_eq!(sqlstate(&error), "57014", "round {round}: {error}");
        cancel.await.expect("join").expect("cancel sent");
        let out = client
            .simple_query("SELECT pg_sleep(0.3), 'next'")
            .await
            .unwrap_or_else(|e| panic!("round {round}: the next statement failed: {e}"));
        assert_eq!(rows(&out).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_prepared_statements_with_parameters_and_binary_results() {
    reviews_table("ml_reviews_extended").await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 2).await;
    let client = proxy.connect().await;
    let statement = client
        .prepare(
            "SELECT id, (aws_comprehend.detect_sentiment(body, $1)).sentiment, \
             (aws_comprehend.detect_sentiment(body, $1)).confidence AS c \
             FROM ml_reviews_forms_ext WHERE id <= $2 ORDER BY id",
        )
        .await
        .err();
    // The table does not exist: PostgreSQL's own error answers the Parse.
    assert_eq!(statement.map(|e| sqlstate(&e)).as_deref(), Some("42P01"));

    let statement = client
        .prepare(
            "SELECT id, (aws_comprehend.detect_sentiment(body, $1)).sentiment, \
             (aws_comprehend.detect_sentiment(body, $1)).confidence AS c \
             FROM ml_reviews_extended WHERE id <= $2 ORDER BY id",
        )
        .await
        .expect("prepare");
    // Describe answers with the enriched description before anything runs.
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "sentiment", "c"]);
    assert_eq!(
        statement.columns()[1].type_(),
        &tokio_postgres::types::Type::VARCHAR
    );
    assert_eq!(
        statement.columns()[2].type_(),
        &tokio_postgres::types::Type::FLOAT4
    );
    assert_eq!(statement.params().len(), 2);
    // Executed twice with different parameters; results arrive in binary format.
    for limit in [3i32, 8] {
        let rows = client
            .query(&statement, &[&"en", &limit])
            .await
            .expect("execute");
        assert_eq!(rows.len(), limit as usize);
        for row in &rows {
            let id: i32 = row.get(0);
            let body = REVIEWS[id as usize - 1];
            match body {
                Some(text) if !text.is_empty() => {
                    let s = models::sentiment(text);
                    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(s.label));
                    assert_eq!(row.get::<_, Option<f32>>(2), Some(s.confidence()));
                }
                _ => {
                    assert_eq!(row.get::<_, Option<String>>(1), None);
                    assert_eq!(row.get::<_, Option<f32>>(2), None);
                }
            }
        }
    }
    // invoke_endpoint with a parameter among the model inputs.
    let row = client
        .query_one(
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, $1::int, 2.5) AS score",
            &[&4i32],
        )
        .await
        .expect("invoke");
    assert_eq!(row.get::<_, String>("score"), "6.5");

    // A portal read a few rows at a time (Execute with a row limit) inside a transaction.
    let mut tx_client = proxy.connect().await;
    let tx = tx_client.transaction().await.expect("begin");
    let statement = tx
        .prepare("SELECT g, aws_sagemaker.invoke_endpoint('m', 3, g) FROM generate_series(1, 10) g")
        .await
        .expect("prepare");
    let portal = tx.bind(&statement, &[]).await.expect("bind");
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 4).await.expect("portal");
        if rows.is_empty() {
            break;
        }
        for row in rows {
            seen.push((row.get::<_, i32>(0), row.get::<_, String>(1)));
        }
    }
    tx.commit().await.expect("commit");
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter().all(|(g, score)| *score == g.to_string()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_concurrently_up_to_the_per_endpoint_limit() {
    let proxy = Proxy::start_with(|c| {
        c.inference.max_concurrent_calls_per_endpoint = 3;
        c.inference.chunk_rows = 40;
    })
    .await;
    proxy.mock.set_latency(std::time::Duration::from_millis(30));
    let client = proxy.connect().await;
    let out = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('m', 5, g) FROM generate_series(1, 200) g",
        )
        .await
        .expect("invoke");
    assert_eq!(rows(&out).len(), 200);
    let stats = proxy.mock.stats();
    assert_eq!(stats.sagemaker_calls, 40);
    assert_eq!(
        stats.peak_concurrency, 3,
        "calls overlap, never beyond the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_stops_inference_and_the_upstream_query() {
    let proxy = Proxy::start_with(|c| {
        c.inference.max_concurrent_calls_per_endpoint = 1;
        c.inference.chunk_rows = 10;
    })
    .await;
    proxy.mock.set_latency(std::time::Duration::from_secs(2));
    let app = "pgenrich-ml-disconnect";
    let mut raw = RawClient::startup_as(proxy.addr, app).await;
    // 100 rows in batches of 5, one call at a time, 2 s each: 40 s if nothing stopped it.
    raw.send(
        b'Q',
        &cstr("SELECT aws_sagemaker.invoke_endpoint('m', 5, g) FROM generate_series(1, 100) g"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(raw);
    let gone = crate::harness::session_gone_within(app, std::time::Duration::from_secs(5)).await;
    assert!(gone, "the upstream session outlived its client");
    // No further batches were sent after the client left.
    let calls = proxy.mock.stats().sagemaker_calls;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        proxy.mock.stats().sagemaker_calls,
        calls,
        "inference went on without a client"
    );
    assert!(calls <= 2, "{calls} calls started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_terminates_and_half_closes_still_gets_its_answer() {
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::start().await;
    proxy
        .mock
        .set_latency(std::time::Duration::from_millis(300));
    let mut raw = RawClient::startup(proxy.addr).await;
    let mut bytes = crate::harness::message(
        b'Q',
        &cstr("SELECT aws_comprehend.detect_sentiment('good', 'en')"),
    );
    bytes.extend(crate::harness::message(b'X', &[]));
    raw.stream_write(&bytes).await;
    raw.stream.shutdown().await.expect("half-close");
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "TDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[1].1).ends_with("(POSITIVE,0.6666667)"));
    assert!(raw.recv().await.is_none(), "closed after the Terminate");
}
