//! Cursors over ML statements (issue 18): DECLARE, FETCH in every direction, MOVE and CLOSE
//! through pgenrich give what the native functions give in the reference database — the same
//! rows, columns, tags and errors (SQLSTATE and message), for cursors scored per FETCH and for
//! those scored whole at DECLARE — in both protocols and through psycopg's
//! named cursors (and SQLAlchemy's stream_results on them).

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

/// What a statement gave: column names, rows (in order) and the tag's count, or its SQLSTATE
/// and message.
type Answer = Result<(Vec<String>, Vec<Vec<Option<String>>>, Option<u64>), (String, String)>;

async fn answer(client: &Client, sql: &str) -> Answer {
    match client.simple_query(sql).await {
        Ok(messages) => {
            let columns = messages
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::RowDescription(columns) => {
                        Some(columns.iter().map(|c| c.name().to_owned()).collect())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            Ok((columns, text_rows(&messages), command_count(&messages)))
        }
        Err(error) => Err((
            sqlstate(&error),
            error
                .as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_default(),
        )),
    }
}

/// Runs `script` on both connections, statement by statement, and asserts equal answers;
/// returns pgenrich's.
async fn same_as_native(ours: &Client, native: &Client, script: &[&str]) -> Vec<Answer> {
    let mut answers = Vec::new();
    for sql in script {
        let got = answer(ours, sql).await;
        let expected = answer(native, sql).await;
        assert_eq!(got, expected, "{sql}");
        answers.push(got);
    }
    answers
}

/// A cursor whose ML calls do not stream (a cast, a WHERE, an ORDER BY on them).
const RESIDUAL: &str = "DECLARE r SCROLL CURSOR FOR SELECT id, \
     aws_sagemaker.invoke_endpoint('score', NULL, id)::int AS score FROM cur_a \
     WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment <> 'NEGATIVE' \
     ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment, score DESC";

const SENTIMENT: &str = "SELECT id, aws_comprehend.detect_sentiment(body, 'en') AS s, \
     (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM cur_a ORDER BY id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_match_native_in_every_direction() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    // Small chunks: a FETCH's rows are scored chunk by chunk.
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 3).await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_a", 20).await;
    reviews_table(&native, "cur_a", 20).await;
    let scores = "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id) AS score \
                  FROM cur_a ORDER BY id";
    let declare_c = format!("DECLARE c CURSOR FOR {SENTIMENT}");
    let declare_s = format!("DECLARE s SCROLL CURSOR FOR {scores}");
    let declare_h = "DECLARE h CURSOR WITH HOLD FOR SELECT id, \
                     (aws_comprehend.detect_sentiment(body, 'en')).confidence \
                     FROM cur_a WHERE id < 8 ORDER BY id";
    let declare_n = format!("DECLARE n NO SCROLL CURSOR FOR {SENTIMENT}");
    let answers = same_as_native(
        &client,
        &native,
        &[
            "BEGIN",
            &declare_c,
            "FETCH 3 FROM c",
            "FETCH NEXT c",
            "MOVE 2 IN c",
            // Comments before the command: a `--` one ends at a carriage return too.
            "-- a comment\rFETCH 1 FROM c",
            "/* a /* nested */ comment */ MOVE 1 IN c",
            "FETCH FORWARD 4 FROM c",
            "FETCH ALL c",
            "FETCH c",
            "CLOSE c",
            "FETCH c",
            "ROLLBACK",
            // Scrolling, in every direction.
            "BEGIN",
            &declare_s,
            "FETCH LAST FROM s",
            "FETCH PRIOR FROM s",
            "FETCH ABSOLUTE 2 FROM s",
            "FETCH RELATIVE 3 FROM s",
            "FETCH BACKWARD 2 FROM s",
            "MOVE ABSOLUTE 0 IN s",
            "FETCH 2 FROM s",
            // The same cursor again, while it is open.
            &declare_s,
            "ROLLBACK",
            // WITH HOLD, outside a block: it outlives its transaction.
            declare_h,
            "FETCH 2 FROM h",
            "BEGIN",
            "FETCH 1 FROM h",
            "COMMIT",
            "FETCH ALL FROM h",
            "CLOSE h",
            "FETCH h",
            // Without HOLD: only in a block, forward only with NO SCROLL, gone at commit.
            &declare_c,
            "BEGIN",
            &declare_n,
            "FETCH 2 FROM n",
            "FETCH BACKWARD 1 FROM n",
            "ROLLBACK",
            "BEGIN",
            &declare_n,
            "FETCH 1 FROM n",
            "COMMIT",
            "FETCH 1 FROM n",
            // Statements that do not stream are scored whole at DECLARE, then read as they are.
            "BEGIN",
            RESIDUAL,
            "FETCH 3 FROM r",
            "FETCH PRIOR FROM r",
            "MOVE LAST IN r",
            "FETCH BACKWARD 2 FROM r",
            "FETCH ABSOLUTE 1 FROM r",
            "CLOSE r",
            "FETCH r",
            "ROLLBACK",
            RESIDUAL,
            "DECLARE rh CURSOR WITH HOLD FOR SELECT count(*) AS n, \
             (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label \
             FROM cur_a GROUP BY 2 ORDER BY 2",
            "FETCH 2 FROM rh",
            "FETCH 2 FROM rh",
            "CLOSE rh",
            // A savepoint rolled back takes the cursor declared after it; DISCARD ALL takes a
            // held one.
            "BEGIN",
            "SAVEPOINT a",
            &declare_c,
            "FETCH 1 FROM c",
            "ROLLBACK TO SAVEPOINT a",
            "FETCH 1 FROM c",
            "ROLLBACK",
            declare_h,
            "DISCARD ALL",
            "FETCH 1 FROM h",
            // The name is the client's own cursor again: its rows are relayed as they are.
            "BEGIN",
            "DECLARE n CURSOR FOR SELECT id, body FROM cur_a ORDER BY id",
            "FETCH 2 FROM n",
            "CLOSE ALL",
            "FETCH 2 FROM n",
            "ROLLBACK",
        ],
    )
    .await;
    // The answers hold rows, ML values and errors: nothing here passed by being empty.
    let fetched: usize = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|(_, rows, _)| rows.len())
        .sum();
    assert!(fetched > 40, "{fetched} rows fetched");
    let errors: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .map(|(code, _)| code.as_str())
        .collect();
    assert_eq!(
        errors,
        [
            "34000", "42P03", "34000", "25P01", "55000", "34000", "34000", "25P01", "34000",
            "34000", "34000"
        ]
    );
    let (columns, rows, _) = answers[2].as_ref().expect("FETCH 3");
    assert_eq!(columns, &["id", "s", "sentiment"]);
    assert!(rows[0][1].as_deref().is_some_and(|r| r.starts_with('(')));
    // pgenrich's cursors are gone with the transactions and CLOSEs: none is left open.
    assert_eq!(
        answer(&client, "SELECT count(*) FROM pg_cursors").await,
        Ok((vec!["count".into()], vec![vec![Some("0".into())]], Some(1)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_declare_and_fetch_match_native() {
    let mut native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 4).await;
    let mut client = proxy.connect().await;
    reviews_table(&client, "cur_p", 30).await;
    reviews_table(&native, "cur_p", 30).await;
    // Scored per FETCH, and (the cast) scored whole at DECLARE.
    for declare in [
        "DECLARE p CURSOR FOR SELECT id, \
         (aws_comprehend.detect_sentiment(body || $1, 'en')).sentiment AS label, \
         aws_sagemaker.invoke_endpoint('score', NULL, id) AS score \
         FROM cur_p WHERE id > $2 ORDER BY id",
        "DECLARE p CURSOR FOR SELECT id, \
         (aws_comprehend.detect_sentiment(body || $1, 'en')).sentiment AS label, \
         aws_sagemaker.invoke_endpoint('score', NULL, id)::int::text AS score \
         FROM cur_p WHERE id > $2 ORDER BY id",
    ] {
        let ours = fetch_prepared(&mut client, declare).await;
        assert_eq!(
            ours,
            fetch_prepared(&mut native, declare).await,
            "{declare}"
        );
        assert_eq!(ours[0].1.len(), 7);
        assert_eq!(ours[1].1.len(), 18);
        assert!(ours[0].1.iter().all(|(_, l, s)| l.is_some() && s.is_some()));
    }
}

type Fetched = Vec<(
    Vec<(String, String)>,
    Vec<(i32, Option<String>, Option<String>)>,
)>;

/// DECLAREs `declare` (parameters `$1` text, `$2` int) in a transaction and fetches through
/// prepared FETCH statements (binary results), then from a cursor that does not exist: the
/// columns and rows of each.
async fn fetch_prepared(client: &mut Client, declare: &str) -> Fetched {
    let tx = client.transaction().await.expect("begin");
    tx.execute(declare, &[&"!", &5i32]).await.expect("declare");
    let mut fetched = Vec::new();
    for sql in ["FETCH 7 FROM p", "FETCH 100 FROM p"] {
        let statement = tx.prepare(sql).await.expect("prepare");
        let columns: Vec<(String, String)> = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().name().to_owned()))
            .collect();
        let rows: Vec<(i32, Option<String>, Option<String>)> = tx
            .query(&statement, &[])
            .await
            .expect("fetch")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        fetched.push((columns, rows));
    }
    let error = tx
        .query("FETCH 1 FROM q", &[])
        .await
        .expect_err("no such cursor");
    fetched.push((vec![(sqlstate(&error), String::new())], Vec::new()));
    tx.rollback().await.expect("rollback");
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_named_cursors_match_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 16).await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_py", 250).await;
    reviews_table(&native, "cur_py", 250).await;
    let ours = run_psycopg_script(&proxy, "psycopg_cursors.py").await;
    let theirs = run_psycopg_script_on(
        &postgres().direct_conninfo_to(reference_database()),
        "psycopg_cursors.py",
    )
    .await;
    assert_eq!(ours, theirs);
    assert_eq!(ours["streamed"].as_array().map(Vec::len), Some(250));
    assert_eq!(ours["binary"].as_array().map(Vec::len), Some(10));
    assert_eq!(ours["held"].as_array().map(Vec::len), Some(5));
    assert_eq!(ours["ranked"][2].as_array().map(Vec::len), Some(26));
    assert_eq!(ours["sqlalchemy"].as_array().map(Vec::len), Some(70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_refusals_are_clear_and_leave_the_session_usable() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_r", 5).await;
    client.batch_execute("BEGIN").await.expect("begin");
    for (sql, hint) in [
        (
            "DECLARE b BINARY CURSOR FOR SELECT aws_comprehend.detect_sentiment(body, 'en') \
             FROM cur_r",
            "without BINARY",
        ),
        (
            "DECLARE o CURSOR FOR SELECT aws_comprehend.detect_sentiment(\
             aws_sagemaker.invoke_endpoint('score', NULL, body), 'en') FROM cur_r",
            "CREATE TEMP TABLE",
        ),
    ] {
        let error = client.simple_query(sql).await.expect_err("refused");
        assert_eq!(sqlstate(&error), "0A000", "{sql}");
        let db = error.as_db_error().expect("a database error");
        assert!(db.hint().is_some_and(|h| h.contains(hint)), "{db:?}");
        // As a native error would, the refusal aborted the transaction block.
        let aborted = client.simple_query("SELECT 1").await.expect_err("aborted");
        assert_eq!(sqlstate(&aborted), "25P02");
        client
            .batch_execute("ROLLBACK; BEGIN")
            .await
            .expect("again");
    }
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        text_result(&client, "SELECT count(*) FROM cur_r").await.1,
        vec![vec![Some("5".to_owned())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_cancelled_fetch_aborts_the_block_as_natively_and_the_session_goes_on() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_f", 20).await;
    // An inference failure at FETCH (the DECLARE scores nothing).
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(
            "DECLARE f CURSOR FOR SELECT id, \
             aws_sagemaker.invoke_endpoint('model-error', NULL, id) FROM cur_f ORDER BY id",
        )
        .await
        .expect("declared");
    let error = client
        .simple_query("FETCH 2 FROM f")
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000", "{error}");
    let aborted = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&aborted), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let gone = client
        .simple_query("FETCH 1 FROM f")
        .await
        .expect_err("gone");
    assert_eq!(sqlstate(&gone), "34000");
    assert_eq!(
        gone.as_db_error().map(|e| e.message()),
        Some("cursor \"f\" does not exist")
    );

    // A cancel request stops a FETCH waiting for slow inference.
    proxy.mock.set_latency(std::time::Duration::from_secs(10));
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(
            "DECLARE s CURSOR FOR SELECT id, \
             aws_sagemaker.invoke_endpoint('slow', NULL, id) FROM cur_f ORDER BY id",
        )
        .await
        .expect("declared");
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let fetch = tokio::spawn(async move {
        let result = client.simple_query("FETCH ALL FROM s").await;
        (result, client)
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let (result, client) = tokio::time::timeout(std::time::Duration::from_secs(20), fetch)
        .await
        .expect("returns")
        .expect("join");
    assert_eq!(sqlstate(&result.expect_err("cancelled")), "57014");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    proxy.mock.set_latency(std::time::Duration::ZERO);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        text_result(&client, "SELECT count(*) FROM pg_cursors")
            .await
            .1,
        vec![vec![Some("0".to_owned())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_declares_and_fetches_without_sync_and_skips_after_an_error() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_pl", 6).await;
    client
        .batch_execute("GRANT SELECT ON cur_pl TO PUBLIC")
        .await
        .expect("grant");
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.send(b'Q', &cstr("BEGIN")).await;
    assert_eq!(kinds(&raw.recv_until_ready().await), "CZ");
    // DECLARE (scored per FETCH, and scored whole) and FETCH in one pipeline, one Sync.
    let mut bytes = Vec::new();
    for sql in [
        "DECLARE c CURSOR FOR SELECT id, aws_comprehend.detect_sentiment(body, 'en') \
         FROM cur_pl ORDER BY id",
        "DECLARE w CURSOR FOR SELECT id FROM cur_pl \
         WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' ORDER BY id",
        "FETCH 4 FROM c",
        "FETCH ALL FROM w",
    ] {
        bytes.extend(parse_bind_execute(sql));
    }
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "12C12C12DDDDC12DDCZ", "{reply:?}");
    let text = |i: usize| String::from_utf8_lossy(&reply[i].1).into_owned();
    assert!((8..12).any(|i| text(i).contains("(POSITIVE,")), "{reply:?}");
    assert!(text(12).starts_with("FETCH 4"), "{}", text(12));
    assert!(text(17).starts_with("FETCH 2"), "{}", text(17));
    // After an error the pipeline is skipped to Sync: neither cursor is declared or read.
    let mut bytes = parse_bind_execute("SELECT 1/0");
    bytes.extend(parse_bind_execute(
        "DECLARE d CURSOR FOR SELECT aws_comprehend.detect_sentiment(body, 'en') FROM cur_pl",
    ));
    bytes.extend(parse_bind_execute("FETCH 1 FROM c"));
    bytes.extend(message(b'S', &[]));
    raw.stream_write(&bytes).await;
    let reply = raw.recv_until_ready().await;
    // (PostgreSQL folds 1/0 when it plans the statement, at Bind.)
    assert_eq!(kinds(&reply), "1EZ", "{reply:?}");
    assert_eq!(error_code(&reply[1].1), "22012");
    raw.send(b'Q', &cstr("ROLLBACK")).await;
    assert_eq!(kinds(&raw.recv_until_ready().await), "CZ");
    raw.send(b'Q', &cstr("FETCH 1 FROM d")).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "EZ", "{reply:?}");
    assert_eq!(error_code(&reply[0].1), "34000");
    raw.send(b'Q', &cstr("SELECT count(*) FROM pg_cursors"))
        .await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(kinds(&reply), "TDCZ", "{reply:?}");
    assert_eq!(
        reply[1].1,
        [0, 1, 0, 0, 0, 1, b'0'],
        "no cursor is left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_declares_outside_a_block_match_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    reviews_table(&client, "cur_o", 8).await;
    reviews_table(&native, "cur_o", 8).await;
    let query = "SELECT id FROM cur_o \
                 WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' \
                 ORDER BY id";
    let mut answers = Vec::new();
    for client in [&client, &native] {
        // Without HOLD: refused, before anything is scored; with HOLD: it outlives the
        // implicit transaction.
        let refused = client
            .execute(&format!("DECLARE o CURSOR FOR {query}"), &[])
            .await
            .expect_err("outside a block");
        let held = client
            .execute(&format!("DECLARE o CURSOR WITH HOLD FOR {query}"), &[])
            .await
            .expect("WITH HOLD");
        let rows = text_result(client, "FETCH ALL FROM o").await;
        client.batch_execute("CLOSE o").await.expect("close");
        answers.push((
            sqlstate(&refused),
            refused.as_db_error().map(|e| e.message().to_owned()),
            held,
            rows,
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, "25P01");
    assert_eq!(answers[0].3 .1.len(), 3, "{:?}", answers[0]);
}
