//! `SET pgenrich.<name>` session settings, read by pgenrich at the start of each ML statement
//! sent as a simple Query: progress NOTICEs and a lower row cap for the session.

use std::time::Duration;

use tokio_postgres::AsyncMessage;

use crate::harness::*;

/// Connects and collects the session's notices.
async fn connect_with_notices(
    conninfo: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(format!("{}: {}", notice.severity(), notice.message()));
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notices_come_while_a_long_statement_runs() {
    let proxy = Proxy::start().await;
    proxy.mock.set_latency(Duration::from_millis(100));
    let (client, mut notices) = connect_with_notices(&proxy.conninfo(USER, PASSWORD)).await;
    // 12 one-row calls of 100 ms, 2 at a time (the statement's chunk, default limits): ~0.6 s.
    let statement = "SELECT aws_sagemaker.invoke_endpoint('progress', 1, g) \
                     FROM generate_series(1, 12) g";
    client.simple_query(statement).await.expect("runs");
    assert!(notices.try_recv().is_err(), "no progress unless asked");

    client
        .batch_execute("SET pgenrich.progress = on; SET pgenrich.progress_interval = 0.1")
        .await
        .expect("PostgreSQL keeps custom settings");
    let rows = client.simple_query(statement).await.expect("runs");
    assert_eq!(text_rows(&rows).len(), 12);
    let mut seen = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        seen.push(notice);
    }
    assert!(!seen.is_empty(), "progress notices");
    assert!(
        seen.iter()
            .all(|n| n.starts_with("NOTICE: pgenrich: ") && n.contains("rows sent to inference")),
        "{seen:?}"
    );
    // A backfill (INSERT … SELECT) reports its progress too.
    client
        .batch_execute("CREATE TEMP TABLE progress_sink (answer text)")
        .await
        .expect("temp table");
    client
        .simple_query(
            "INSERT INTO progress_sink \
             SELECT aws_sagemaker.invoke_endpoint('progress', 1, g) FROM generate_series(1, 12) g",
        )
        .await
        .expect("backfill");
    let notice = notices.try_recv().expect("progress of the backfill");
    assert!(notice.contains("rows sent to inference"), "{notice}");
    while notices.try_recv().is_ok() {}

    // RESET turns it off again; a nonsense value is a WARNING and changes nothing.
    client
        .batch_execute("RESET pgenrich.progress")
        .await
        .expect("reset");
    client.simple_query(statement).await.expect("runs");
    assert!(notices.try_recv().is_err(), "off after RESET");
    client
        .batch_execute("SET pgenrich.progress = sometimes")
        .await
        .expect("set");
    client.simple_query(statement).await.expect("runs");
    let warning = notices.try_recv().expect("a warning");
    assert!(
        warning.starts_with("WARNING: pgenrich.progress = \"sometimes\""),
        "{warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_may_lower_the_row_cap_but_not_raise_it() {
    let proxy = Proxy::start_with(|c| c.inference.max_inference_rows = Some(100)).await;
    let client = proxy.connect().await;
    let rows = |n: u32| {
        format!(
            "SELECT aws_sagemaker.invoke_endpoint('cap', NULL, g) FROM generate_series(1, {n}) g"
        )
    };
    client
        .simple_query(&rows(50))
        .await
        .expect("within both caps");
    client
        .batch_execute("SET pgenrich.max_inference_rows = 20")
        .await
        .expect("set");
    let error = client
        .simple_query(&rows(50))
        .await
        .expect_err("lowered cap");
    assert_eq!(sqlstate(&error), "54000");
    let message =
        |e: &tokio_postgres::Error| e.as_db_error().expect("ErrorResponse").message().to_owned();
    assert!(
        message(&error).contains("max_inference_rows = 20"),
        "{}",
        message(&error)
    );
    // Inside a transaction, SET LOCAL ends with it, as PostgreSQL keeps it.
    client
        .batch_execute("RESET pgenrich.max_inference_rows")
        .await
        .expect("reset");
    client
        .batch_execute("BEGIN; SET LOCAL pgenrich.max_inference_rows = 1000")
        .await
        .expect("set local");
    let error = client
        .simple_query(&rows(150))
        .await
        .expect_err("not raised");
    assert_eq!(sqlstate(&error), "54000");
    assert!(
        message(&error).contains("max_inference_rows = 100"),
        "{}",
        message(&error)
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");
    client
        .simple_query(&rows(100))
        .await
        .expect("the configured cap again");
}
