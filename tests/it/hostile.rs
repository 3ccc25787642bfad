//! Hostile statement texts: each gets an answer (PostgreSQL's, or pgenrich's with the SQLSTATE
//! PostgreSQL would use), the session stays usable, and other sessions never notice.

use crate::harness::{sqlstate, text_rows, Proxy};

/// A session that keeps working while others send hostile texts.
async fn assert_usable(client: &tokio_postgres::Client) {
    let row = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("the session answers");
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_ml_statements_get_54001_and_the_session_goes_on() {
    // The 600 kB statements below are over the default max_ml_statement_bytes: raised, so
    // that they reach the depth guard.
    let proxy = Proxy::start_with(|c| c.max_ml_statement_bytes = 64 << 20).await;
    let bystander = proxy.connect().await;
    let client = proxy.connect().await;
    let chain = vec!["1"; 300_000].join("+");

    // Simple protocol: an ML call and 300,000 terms (the sidecar used to abort on this).
    let sql = format!("SELECT aws_comprehend.detect_sentiment('a', 'en'), {chain}");
    let error = client.simple_query(&sql).await.expect_err("too deep");
    assert_eq!(sqlstate(&error), "54001", "{error}");
    let message = error.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("stack depth limit exceeded")),
        "{message:?}"
    );
    assert_usable(&client).await;

    // Extended protocol: the Parse is refused the same way.
    let error = client.prepare(&sql).await.expect_err("too deep");
    assert_eq!(sqlstate(&error), "54001", "{error}");
    assert_usable(&client).await;

    // Inside a transaction block the refusal aborts it, as a native error does.
    client.simple_query("BEGIN").await.expect("begin");
    let error = client.simple_query(&sql).await.expect_err("too deep");
    assert_eq!(sqlstate(&error), "54001");
    let error = client
        .simple_query("SELECT 1")
        .await
        .expect_err("aborted block");
    assert_eq!(sqlstate(&error), "25P02");
    client.simple_query("ROLLBACK").await.expect("rollback");
    assert_usable(&client).await;

    // The same text with the ML schema only in a comment is PostgreSQL's to judge: it is
    // relayed without a parse, and PostgreSQL reports its own stack depth error.
    let sql = format!("SELECT {chain} -- aws_comprehend.detect_sentiment(x, 'en')");
    let error = client
        .simple_query(&sql)
        .await
        .expect_err("too deep for PG");
    assert_eq!(sqlstate(&error), "54001", "{error}");
    assert_usable(&client).await;
    assert_usable(&bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_statement_with_200000_semicolons_is_answered() {
    let proxy = Proxy::start().await;
    let bystander = proxy.connect().await;
    let client = proxy.connect().await;
    let sql = format!(
        "SELECT aws_comprehend.detect_sentiment('I love it', 'en') AS s{}",
        ";".repeat(200_000)
    );
    let started = std::time::Instant::now();
    let messages = client.simple_query(&sql).await.expect("answered");
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("(POSITIVE,"), "{rows:?}");
    assert_usable(&bystander).await;
    // Not a timing assertion, a record: the figure is in the test log.
    eprintln!("200,000 semicolons: answered in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_of_the_ml_schemas_that_are_not_calls_are_relayed() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    for (sql, expected) in [
        (
            "SELECT 'aws_comprehend.detect_sentiment(x)' AS t",
            "aws_comprehend.detect_sentiment(x)",
        ),
        ("SELECT 1 AS t -- aws_sagemaker.invoke_endpoint(", "1"),
        (
            "SELECT $$aws_sagemaker.invoke_endpoint(1)$$ AS t",
            "aws_sagemaker.invoke_endpoint(1)",
        ),
    ] {
        let messages = client.simple_query(sql).await.expect(sql);
        let value = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some(expected), "{sql}");
        // Prepared the same way.
        let row = client.query_one(sql, &[]).await.expect(sql);
        assert!(row.len() == 1, "{sql}");
    }
    // A Parse without ML calls replaces an ML statement of the same name (the unnamed one).
    let ml = client
        .query_one(
            "SELECT aws_comprehend.detect_sentiment('good', 'en')::text",
            &[],
        )
        .await
        .expect("ML");
    assert!(ml.get::<_, String>(0).starts_with("(POSITIVE,"));
    let plain = client
        .query_one("SELECT 'aws_comprehend'::text", &[])
        .await
        .expect("plain");
    assert_eq!(plain.get::<_, String>(0), "aws_comprehend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_statements_over_the_byte_limit_are_refused_without_being_parsed() {
    // Parsing costs a planner thread a few hundred bytes per byte of such text: 20,000 ML
    // statements in a 1 MB Query took 280 MB, which the thread's allocator then kept.
    let proxy = Proxy::start().await;
    let bystander = proxy.connect().await;
    let client = proxy.connect().await;
    let many = "SELECT aws_comprehend.detect_sentiment('a', 'en');".repeat(20_000);
    let dense = format!(
        "SELECT aws_comprehend.detect_sentiment('a', 'en') WHERE 1 IN ({})",
        vec!["1"; 200_000].join(",")
    );
    for sql in [&many, &dense] {
        let error = client.simple_query(sql).await.expect_err("over the limit");
        assert_eq!(sqlstate(&error), "54000", "{error}");
        let message = error.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("max_ml_statement_bytes")),
            "{message:?}"
        );
        assert_usable(&client).await;
    }
    let error = client.prepare(&dense).await.expect_err("over the limit");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    assert_usable(&client).await;
    // Text that only mentions an ML schema (a literal, a comment) is relayed whatever its
    // length: PostgreSQL runs it.
    let literal = format!(
        "SELECT length('aws_comprehend.detect_sentiment(x) {}') -- aws_sagemaker.x(",
        "y".repeat(1_000_000)
    );
    let row = client.query_one(&literal, &[]).await.expect("relayed");
    assert_eq!(row.get::<_, i32>(0), 1_000_035);
    let plain = client.simple_query(&literal).await.expect("relayed");
    assert_eq!(text_rows(&plain), [[Some("1000035".to_owned())]]);
    assert_usable(&bystander).await;
}
