//! What sessions keep between messages is bounded: ML prepared statements, portals and cursors
//! are charged against `max_prepared_bytes` per session and `max_prepared_memory` for all of
//! them; past either, the Parse, Bind or DECLARE fails with 53200 where PostgreSQL would report
//! an error, the session goes on, and what is closed (or the session's end) gives the charge
//! back. A client preparing without end otherwise grew pgenrich's memory without bound (2,000
//! statements of 100 kB took 380 MB).

use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// An ML statement of about `pad` bytes, told apart by `n`.
fn statement(pad: usize, n: usize) -> String {
    format!(
        "SELECT '{}' AS pad, {n} AS n, (aws_comprehend.detect_sentiment('good', 'en')).sentiment",
        "x".repeat(pad)
    )
}

fn refusal(error: &tokio_postgres::Error, key: &str) {
    assert_eq!(sqlstate(error), "53200", "{error}");
    let message = error.as_db_error().expect("an ErrorResponse").message();
    assert!(message.contains(key), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_past_the_session_budget_fail_and_the_session_goes_on() {
    // Statements of 100 kB are charged about 200 kB each: five fit in 1 MiB, not six.
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let client = proxy.connect().await;
    let mut kept = Vec::new();
    for n in 0..5 {
        kept.push(
            client
                .prepare(&statement(100_000, n))
                .await
                .expect("within the budget"),
        );
    }
    let error = client
        .prepare(&statement(100_000, 5))
        .await
        .expect_err("over the session's budget");
    refusal(&error, "max_prepared_bytes");

    // The session goes on: its statements run, and plain ones too.
    let rows = client.query(&kept[4], &[]).await.expect("a kept statement");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>("n"), 4);
    assert!(rows[0].get::<_, Option<String>>("sentiment").is_some());
    let one = client.simple_query("SELECT 1").await.expect("plain");
    assert_eq!(text_rows(&one), [[Some("1".to_owned())]]);
    // An ML statement that keeps nothing runs too.
    let ml = client
        .simple_query(&statement(100_000, 9))
        .await
        .expect("a Query keeps nothing");
    assert_eq!(text_rows(&ml).len(), 1);

    // Closing statements gives their charge back (tokio-postgres closes on drop).
    kept.drain(..2);
    client.simple_query("SELECT 1").await.expect("closes sent");
    for n in 5..7 {
        kept.push(
            client
                .prepare(&statement(100_000, n))
                .await
                .expect("room again after closing two"),
        );
    }
    // Unnamed statements replace each other: one at a time is charged, whatever their number.
    let mut raw = RawClient::startup(proxy.addr).await;
    for n in 0..12 {
        let mut messages = parse_bind_execute(&statement(200_000, n));
        messages.extend(message(b'S', &[]));
        raw.stream.write_all(&messages).await.expect("send");
        let answers = raw.recv_until_ready().await;
        assert!(
            answers.iter().all(|(kind, _)| *kind != b'E'),
            "unnamed statement {n}: {:?}",
            String::from_utf8_lossy(&answers.last().expect("answers").1)
        );
        assert!(answers.iter().any(|(kind, _)| *kind == b'D'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_budget_bounds_all_sessions_and_a_session_end_gives_it_back() {
    let proxy = Proxy::start_with(|c| {
        c.max_prepared_bytes = 1 << 20;
        c.max_prepared_memory = 3 << 19; // 1.5 MiB
    })
    .await;
    let first = proxy.connect().await;
    let mut kept = Vec::new();
    for n in 0..5 {
        kept.push(first.prepare(&statement(100_000, n)).await.expect("fits"));
    }
    let second = proxy.connect().await;
    for n in 0..2 {
        kept.push(second.prepare(&statement(100_000, n)).await.expect("fits"));
    }
    let error = second
        .prepare(&statement(100_000, 2))
        .await
        .expect_err("over the process's budget");
    refusal(&error, "max_prepared_memory");
    drop(kept);
    drop(first);
    // The first session's end gives its charge back.
    let mut room = false;
    for _ in 0..50 {
        if second.prepare(&statement(100_000, 3)).await.is_ok() {
            room = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(room, "the first session's statements were never given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_past_the_budget_fail_their_bind_and_abort_the_transaction() {
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let mut client = proxy.connect().await;
    let statement = client
        .prepare("SELECT (aws_comprehend.detect_sentiment($1::text, 'en')).sentiment")
        .await
        .expect("prepare");
    let long = "good ".repeat(60_000); // 300 kB: three portals fit in 1 MiB, not four
    let transaction = client.transaction().await.expect("begin");
    let mut portals = Vec::new();
    for _ in 0..3 {
        portals.push(
            transaction
                .bind(&statement, &[&long])
                .await
                .expect("within the budget"),
        );
    }
    let Err(error) = transaction.bind(&statement, &[&long]).await else {
        panic!("a fourth portal of 300 kB was bound within 1 MiB");
    };
    refusal(&error, "max_prepared_bytes");
    let aborted = transaction
        .simple_query("SELECT 1")
        .await
        .expect_err("the transaction is aborted, as by any error");
    assert_eq!(sqlstate(&aborted), "25P02", "{aborted}");
    transaction.rollback().await.expect("rollback");
    portals.clear();

    // The rollback ended the portals and gave their charge back.
    let transaction = client.transaction().await.expect("begin");
    for _ in 0..3 {
        portals.push(transaction.bind(&statement, &[&long]).await.expect("bind"));
    }
    let portal = transaction.bind(&statement, &[&"good"]).await;
    let portal = portal.expect("bind");
    let rows = transaction.query_portal(&portal, 0).await.expect("rows");
    assert_eq!(rows.len(), 1);
    transaction.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_charged_until_closed() {
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let mut client = proxy.connect().await;
    let transaction = client.transaction().await.expect("begin");
    for n in 0..5 {
        transaction
            .simple_query(&format!(
                "DECLARE c{n} CURSOR FOR {}",
                statement(100_000, n)
            ))
            .await
            .expect("within the budget");
    }
    let error = transaction
        .simple_query(&format!("DECLARE c5 CURSOR FOR {}", statement(100_000, 5)))
        .await
        .expect_err("over the session's budget");
    refusal(&error, "max_prepared_bytes");
    transaction.rollback().await.expect("rollback");

    // The rollback ended them all; a closed cursor gives its charge back at once.
    let transaction = client.transaction().await.expect("begin");
    for n in 0..8 {
        let declare = format!("DECLARE c CURSOR FOR {}", statement(100_000, n));
        transaction.simple_query(&declare).await.expect("declare");
        let fetched = transaction
            .simple_query("FETCH ALL FROM c")
            .await
            .expect("fetch");
        assert_eq!(text_rows(&fetched).len(), 1);
        transaction.simple_query("CLOSE c").await.expect("close");
    }
    transaction.commit().await.expect("commit");
}

/// A Parse of an ML statement named `name`, then Sync.
fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    let mut parse = cstr(name);
    parse.extend(cstr(sql));
    parse.extend(0u16.to_be_bytes());
    [message(b'P', &parse), message(b'S', &[])].concat()
}

async fn answers(raw: &mut RawClient, bytes: &[u8]) -> Vec<(u8, String)> {
    raw.stream.write_all(bytes).await.expect("send");
    raw.recv_until_ready()
        .await
        .into_iter()
        .map(|(kind, body)| (kind, String::from_utf8_lossy(&body).into_owned()))
        .collect()
}

fn kinds(answers: &[(u8, String)]) -> String {
    answers.iter().map(|(kind, _)| *kind as char).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_end_ml_statements_as_they_end_others() {
    // psycopg 3 with a libpq before 17 deallocates with `DEALLOCATE name`, and after a ROLLBACK
    // with `DEALLOCATE ALL`; the statement upstream is pgenrich's, under another name.
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let ml = statement(100, 0);
    for (name, deallocate) in [
        ("s1", "DEALLOCATE s1"),
        ("s2", "/* psycopg */ deallocate prepare s2;"),
        ("S3", "DEALLOCATE \"S3\""),
    ] {
        assert_eq!(
            kinds(&answers(&mut raw, &parse_named(name, &ml)).await),
            "1Z"
        );
        let done = answers(&mut raw, &message(b'Q', &cstr(deallocate))).await;
        assert_eq!(kinds(&done), "CZ", "{deallocate}: {done:?}");
        assert!(done[0].1.starts_with("DEALLOCATE"), "{done:?}");
        // Gone, as natively: its name is free again, and a second DEALLOCATE fails.
        let again = answers(&mut raw, &message(b'Q', &cstr(deallocate))).await;
        assert_eq!(kinds(&again), "EZ", "{again:?}");
        assert!(again[0].1.contains("26000"), "{again:?}");
    }
    // A plain statement's DEALLOCATE passes through as it is.
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("p", "SELECT 1")).await),
        "1Z"
    );
    let plain = answers(&mut raw, &message(b'Q', &cstr("DEALLOCATE p"))).await;
    assert_eq!(kinds(&plain), "CZ", "{plain:?}");

    // DEALLOCATE ALL and DISCARD ALL give every charge back: five statements of 200 kB fill
    // the budget each time.
    for end_all in ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"] {
        for n in 0..5 {
            let parsed = answers(
                &mut raw,
                &parse_named(&format!("b{n}"), &statement(100_000, n)),
            )
            .await;
            assert_eq!(
                kinds(&parsed),
                "1Z",
                "before {end_all}, statement {n}: {parsed:?}"
            );
        }
        let refused = answers(&mut raw, &parse_named("b5", &statement(100_000, 5))).await;
        assert!(refused[0].1.contains("53200"), "{refused:?}");
        let done = answers(&mut raw, &message(b'Q', &cstr(end_all))).await;
        assert_eq!(kinds(&done), "CZ", "{end_all}: {done:?}");
    }
}

/// Bind statement `name` (no parameters, text results) to the unnamed portal, Execute, Sync.
fn bind_execute(name: &str) -> Vec<u8> {
    let mut bind = cstr("");
    bind.extend(cstr(name));
    bind.extend([0u8; 6]);
    [message(b'B', &bind), execute("", 0), message(b'S', &[])].concat()
}

/// The SQLSTATE of the first ErrorResponse among `answers`.
fn first_error(answers: &[(u8, String)]) -> String {
    answers
        .iter()
        .find(|(kind, _)| *kind == b'E')
        .map(|(_, body)| error_code(body.as_bytes()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_postgres_refuses_forget_no_ml_statement() {
    // PostgreSQL refuses DEALLOCATE in an aborted transaction and DISCARD ALL in a transaction
    // block; the statements stay, so pgenrich must keep them too (it forgot them before: the
    // next Bind went upstream under the client's name and failed with 26000).
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let ml = statement(10, 7);
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s1", &ml)).await),
        "1Z"
    );
    let q = |sql: &str| message(b'Q', &cstr(sql));
    assert_eq!(kinds(&answers(&mut raw, &q("BEGIN")).await), "CZ");
    assert_eq!(kinds(&answers(&mut raw, &q("SELECT 1/0")).await), "EZ");
    for refused in ["DEALLOCATE s1", "DEALLOCATE ALL", "DISCARD ALL"] {
        let answer = answers(&mut raw, &q(refused)).await;
        assert_eq!(kinds(&answer), "EZ", "{refused}: {answer:?}");
        assert_eq!(first_error(&answer), "25P02", "{refused}: {answer:?}");
    }
    assert_eq!(kinds(&answers(&mut raw, &q("ROLLBACK")).await), "CZ");
    assert_eq!(kinds(&answers(&mut raw, &q("BEGIN")).await), "CZ");
    let discard = answers(&mut raw, &q("DISCARD ALL")).await;
    assert_eq!(first_error(&discard), "25001", "{discard:?}");
    assert_eq!(kinds(&answers(&mut raw, &q("ROLLBACK")).await), "CZ");

    // The statement is still pgenrich's: it runs with its ML result, and DEALLOCATE ends it.
    let ran = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(kinds(&ran), "2DCZ", "{ran:?}");
    assert!(ran[1].1.contains("POSITIVE"), "{ran:?}");
    assert_eq!(kinds(&answers(&mut raw, &q("DEALLOCATE s1")).await), "CZ");
    let gone = answers(&mut raw, &q("DEALLOCATE s1")).await;
    assert_eq!(first_error(&gone), "26000", "{gone:?}");
    // Accepted, DISCARD ALL forgets them all.
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s2", &ml)).await),
        "1Z"
    );
    assert_eq!(kinds(&answers(&mut raw, &q("DISCARD ALL")).await), "CZ");
    let discarded = answers(&mut raw, &bind_execute("s2")).await;
    assert_eq!(first_error(&discarded), "26000", "{discarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_explain_of_an_ml_statement_ends_as_prepared_statements_do() {
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let explain = "EXPLAIN SELECT (aws_comprehend.detect_sentiment('good', 'en')).sentiment";
    let q = |sql: &str| message(b'Q', &cstr(sql));
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("e1", explain)).await),
        "1Z"
    );
    let planned = answers(&mut raw, &bind_execute("e1")).await;
    assert!(kinds(&planned).starts_with("2D"), "{planned:?}");
    // DEALLOCATE gave 26000: nothing of it was prepared upstream.
    let done = answers(&mut raw, &q("DEALLOCATE e1")).await;
    assert_eq!(kinds(&done), "CZ", "{done:?}");
    let again = answers(&mut raw, &q("DEALLOCATE e1")).await;
    assert_eq!(first_error(&again), "26000", "{again:?}");
    // A Parse of it in an aborted transaction fails as PostgreSQL's would, and prepares nothing.
    assert_eq!(kinds(&answers(&mut raw, &q("BEGIN")).await), "CZ");
    assert_eq!(kinds(&answers(&mut raw, &q("SELECT 1/0")).await), "EZ");
    let refused = answers(&mut raw, &parse_named("e2", explain)).await;
    assert_eq!(first_error(&refused), "25P02", "{refused:?}");
    assert_eq!(kinds(&answers(&mut raw, &q("ROLLBACK")).await), "CZ");
    let never = answers(&mut raw, &q("DEALLOCATE e2")).await;
    assert_eq!(first_error(&never), "26000", "{never:?}");
    // DEALLOCATE ALL ends it too, and its name is free again.
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("e3", explain)).await),
        "1Z"
    );
    assert_eq!(kinds(&answers(&mut raw, &q("DEALLOCATE ALL")).await), "CZ");
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("e3", explain)).await),
        "1Z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_postgres_skips_after_an_error_keeps_the_ml_statement_and_cursor() {
    // After an error PostgreSQL skips the rest of the pipeline, a Close too: the statement and
    // the cursor stay, so pgenrich must keep them (it forgot them when it forwarded the Close;
    // the next Bind went upstream under the client's name and failed with 26000).
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let ml = statement(10, 7);
    let q = |sql: &str| message(b'Q', &cstr(sql));
    let close = |kind: u8, name: &str| message(b'C', &[&[kind][..], &cstr(name)].concat());
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s1", &ml)).await),
        "1Z"
    );
    let declare = format!("DECLARE c CURSOR WITH HOLD FOR {ml}");
    assert_eq!(kinds(&answers(&mut raw, &q(&declare)).await), "CZ");
    let failing = [
        parse_bind_execute("SELECT 1/0"),
        close(b'S', "s1"),
        close(b'P', "c"),
        message(b'S', &[]),
    ]
    .concat();
    let failed = answers(&mut raw, &failing).await;
    assert_eq!(kinds(&failed), "1EZ", "{failed:?}"); // the Bind plans, and fails
    assert_eq!(first_error(&failed), "22012", "{failed:?}");
    let ran = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(kinds(&ran), "2DCZ", "{ran:?}");
    assert!(ran[1].1.contains("POSITIVE"), "{ran:?}");
    let fetched = answers(&mut raw, &q("FETCH 1 FROM c")).await;
    assert_eq!(kinds(&fetched), "TDCZ", "{fetched:?}");
    assert!(fetched[1].1.contains("POSITIVE"), "{fetched:?}");
    // The same when pgenrich has seen the error before the Close (a Flush brought it).
    let flushed = [parse_bind_execute("SELECT 1/0"), message(b'H', &[])].concat();
    raw.stream.write_all(&flushed).await.expect("send");
    let seen: Vec<u8> = [raw.recv().await, raw.recv().await]
        .into_iter()
        .map(|m| m.expect("an answer").0)
        .collect();
    assert_eq!(seen, b"1E");
    let close_both = [close(b'S', "s1"), close(b'P', "c"), message(b'S', &[])].concat();
    assert_eq!(kinds(&answers(&mut raw, &close_both).await), "Z");
    let ran = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(kinds(&ran), "2DCZ", "{ran:?}");
    // Still there (else 34000), and read to its end.
    let fetched = answers(&mut raw, &q("FETCH 1 FROM c")).await;
    assert_eq!(kinds(&fetched), "TCZ", "{fetched:?}");

    // While it exists, a second statement of its name is refused as PostgreSQL refuses it
    // (upstream the name was free: pgenrich's statement has a name of its own).
    for sql in ["SELECT 1", ml.as_str()] {
        let twice = answers(&mut raw, &parse_named("s1", sql)).await;
        assert_eq!(first_error(&twice), "42P05", "{sql}: {twice:?}");
    }
    // Answered, the Closes end them, and the name is free.
    assert_eq!(kinds(&answers(&mut raw, &close_both).await), "33Z");
    let gone = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(first_error(&gone), "26000", "{gone:?}");
    let gone = answers(&mut raw, &q("FETCH 1 FROM c")).await;
    assert_eq!(first_error(&gone), "34000", "{gone:?}");
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s1", "SELECT 1")).await),
        "1Z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_deallocate_or_close_forgets_once_its_execute_completes() {
    // psycopg in pipeline mode (with a libpq before 17) and libpq's PQexecParams send DEALLOCATE
    // as Parse, Bind, Execute. PostgreSQL carries it out at the Execute, and not at all when an
    // error skips the Execute. pgenrich forgot a statement never (its name stayed taken: 42P05,
    // and its charge stayed), and a cursor at the Parse already (then FETCH failed with 34000).
    let proxy = Proxy::start().await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let ml = statement(10, 7);
    let q = |sql: &str| message(b'Q', &cstr(sql));
    let prepare = |name: &str, sql: &str| {
        let mut parse = cstr(name);
        parse.extend(cstr(sql));
        parse.extend(0u16.to_be_bytes());
        message(b'P', &parse)
    };
    let run = |statement: &str| {
        let mut bind = cstr("");
        bind.extend(cstr(statement));
        bind.extend([0u8; 6]);
        [message(b'B', &bind), execute("", 0)].concat()
    };
    let sync = message(b'S', &[]);
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s1", &ml)).await),
        "1Z"
    );
    let declare = format!("DECLARE c CURSOR WITH HOLD FOR {ml}");
    assert_eq!(kinds(&answers(&mut raw, &q(&declare)).await), "CZ");

    // Prepared, and skipped after an error: the statement and the cursor stay.
    for (name, command) in [("d1", "DEALLOCATE s1"), ("d2", "CLOSE c")] {
        let failing = prepare("x", "SELEC broken");
        let skipped = [prepare(name, command), failing, run(name), sync.clone()].concat();
        let answered = answers(&mut raw, &skipped).await;
        assert_eq!(kinds(&answered), "1EZ", "{command}: {answered:?}");
        let ran = answers(&mut raw, &bind_execute("s1")).await;
        assert_eq!(kinds(&ran), "2DCZ", "after {command}: {ran:?}");
        // (Its one row is read by the first FETCH.)
        let fetched = answers(&mut raw, &q("FETCH 1 FROM c")).await;
        assert_eq!(first_error(&fetched), "", "after {command}: {fetched:?}");
        assert!(kinds(&fetched).starts_with('T'), "{fetched:?}");
    }

    // Carried out (as psycopg sends them, unnamed): gone, with PostgreSQL's errors naming the
    // client's names, and the statement's name is free again.
    for command in ["DEALLOCATE s1", "CLOSE c"] {
        let done = answers(
            &mut raw,
            &[prepare("", command), run(""), sync.clone()].concat(),
        )
        .await;
        assert_eq!(kinds(&done), "12CZ", "{command}: {done:?}");
    }
    let gone = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(first_error(&gone), "26000", "{gone:?}");
    assert!(gone[0].1.contains("\"s1\""), "{gone:?}");
    let gone = answers(&mut raw, &q("FETCH 1 FROM c")).await;
    assert_eq!(first_error(&gone), "34000", "{gone:?}");
    assert!(gone[0].1.contains("\"c\""), "{gone:?}");
    assert_eq!(
        kinds(&answers(&mut raw, &parse_named("s1", &ml)).await),
        "1Z"
    );

    // DEALLOCATE ALL prepared under a name: nothing is forgotten until a later pipeline runs it.
    let all = answers(
        &mut raw,
        &[prepare("all", "DEALLOCATE ALL"), sync.clone()].concat(),
    )
    .await;
    assert_eq!(kinds(&all), "1Z", "{all:?}");
    let ran = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(kinds(&ran), "2DCZ", "{ran:?}");
    let done = answers(&mut raw, &[run("all"), sync.clone()].concat()).await;
    assert_eq!(kinds(&done), "2CZ", "{done:?}");
    let gone = answers(&mut raw, &bind_execute("s1")).await;
    assert_eq!(first_error(&gone), "26000", "{gone:?}");
    assert!(gone[0].1.contains("\"s1\""), "{gone:?}");
}
