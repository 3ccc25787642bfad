//! Cost and fairness limits: `max_inference_rows` per statement (each FETCH of a cursor is one),
//! and fair shares of `max_concurrent_calls` between concurrent statements.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_past_the_row_cap_fail_with_54000_before_sending_more() {
    let proxy = Proxy::start_with(|c| c.inference.max_inference_rows = Some(50)).await;
    let client = proxy.connect().await;
    let ok = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('cap', NULL, g) FROM generate_series(1, 50) g",
        )
        .await
        .expect("within the cap");
    assert_eq!(text_rows(&ok).len(), 50);

    // The count is known before the calls (one chunk): nothing is sent.
    proxy.mock.reset_stats();
    let error = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('cap', NULL, g) FROM generate_series(1, 51) g",
        )
        .await
        .expect_err("over the cap");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    let message = error
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_owned();
    assert!(message.contains("max_inference_rows = 50"), "{message}");
    assert_eq!(
        proxy.mock.stats().sagemaker_calls,
        0,
        "refused before any call"
    );

    // Across chunks: the chunks before the cap are sent, none past it.
    let proxy = Proxy::start_with(|c| {
        c.inference.max_inference_rows = Some(250);
        c.inference.chunk_rows = 100;
    })
    .await;
    let client = proxy.connect().await;
    let error = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('cap', NULL, g) FROM generate_series(1, 1000) g",
        )
        .await
        .expect_err("over the cap");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    let sent: usize = proxy.mock.stats().sagemaker_batch_sizes.iter().sum();
    assert!(sent <= 250, "{sent} rows sent past a cap of 250");
    // Duplicates are sent once and count once; the two-phase mode is capped the same way.
    client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('cap', NULL, g % 10) FROM generate_series(1, 1000) g")
        .await
        .expect("10 distinct rows");
    let error = client
        .simple_query(
            "SELECT count(*) FROM generate_series(1, 1000) g \
             WHERE aws_sagemaker.invoke_endpoint('cap', NULL, g)::float8 > 0",
        )
        .await
        .expect_err("residual over the cap");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    client
        .simple_query("SELECT 1")
        .await
        .expect("session usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_statement_is_not_starved_by_a_large_one() {
    let proxy = Proxy::start_with(|c| {
        c.inference.max_concurrent_calls = 4;
        c.inference.max_concurrent_calls_per_endpoint = 4;
    })
    .await;
    proxy.mock.set_latency(Duration::from_millis(50));
    // 120 one-row calls: 1.5 s with 4 at a time.
    let started = std::time::Instant::now();
    let big = {
        let client = proxy.connect().await;
        tokio::spawn(async move {
            let rows = client
                .simple_query(
                    "SELECT aws_sagemaker.invoke_endpoint('fair', 1, g) FROM generate_series(1, 120) g",
                )
                .await
                .map(|rows| text_rows(&rows).len());
            (rows, started.elapsed())
        })
    };
    let small_client = proxy.connect().await;
    // The large statement holds every slot and has the rest of its calls queued.
    while proxy.mock.stats().sagemaker_calls < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let small_started = std::time::Instant::now();
    let small = small_client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('fair', 1, g) FROM generate_series(1, 4) g",
        )
        .await
        .expect("small statement");
    let small_took = small_started.elapsed();
    assert_eq!(text_rows(&small).len(), 4);
    let (rows, big_took) = big.await.expect("join");
    assert_eq!(rows.expect("large statement"), 120);
    // Queued behind the large statement's calls, the small one would take nearly as long; with
    // its share (2 of 4 slots) it takes two or three call latencies.
    assert!(
        small_took * 3 < big_took,
        "small statement {small_took:?}, large one {big_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_role_waits_and_others_do_not() {
    use pgenrich::enrich::rate::RateRule;
    let proxy = Proxy::start_with(|c| {
        c.inference.rate_limits = vec![RateRule {
            roles: vec![USER.into()],
            rows_per_second: None,
            calls_per_second: Some(10.0),
        }]
    })
    .await;
    // 25 one-row calls: 10 at once (a second's worth), then one every 100 ms.
    let statement =
        "SELECT aws_sagemaker.invoke_endpoint('rated', 1, g) FROM generate_series(1, 25) g";
    let limited = proxy.connect().await;
    let started = std::time::Instant::now();
    let rows = limited.simple_query(statement).await.expect("limited role");
    let limited_took = started.elapsed();
    assert_eq!(text_rows(&rows).len(), 25);
    assert!(
        limited_took >= Duration::from_millis(1400),
        "{limited_took:?} for 25 calls at 10 a second"
    );
    let free = connect(&proxy.conninfo("trust_user", "")).await;
    let started = std::time::Instant::now();
    free.simple_query(statement).await.expect("another role");
    let free_took = started.elapsed();
    assert!(
        free_took * 2 < limited_took,
        "another role is not limited: {free_took:?} vs {limited_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fetch_of_a_streaming_cursor_is_capped_as_a_statement() {
    let proxy = Proxy::start_with(|c| c.inference.max_inference_rows = Some(50)).await;
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(
            "DECLARE c CURSOR FOR \
             SELECT g, aws_sagemaker.invoke_endpoint('cap', NULL, g) FROM generate_series(1, 200) g",
        )
        .await
        .expect("declare");
    // Two FETCHes within the cap each: 80 rows scored in all.
    for _ in 0..2 {
        let rows = client.simple_query("FETCH 40 FROM c").await.expect("fetch");
        assert_eq!(text_rows(&rows).len(), 40);
    }
    // One FETCH past it fails as a statement past it does.
    let error = client
        .simple_query("FETCH 60 FROM c")
        .await
        .expect_err("over the cap");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    client.batch_execute("ROLLBACK").await.expect("rollback");
}
