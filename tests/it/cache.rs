//! The result cache across statements (`inference_cache_bytes`): a repeated statement is
//! answered without calling the services again, with the same results.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_statement_is_answered_from_the_cache() {
    let proxy = Proxy::start_with(|c| c.inference.cache_bytes = 16 << 20).await;
    let client = proxy.connect().await;
    let statement = "SELECT g, aws_sagemaker.invoke_endpoint('cached', NULL, g), \
                            aws_comprehend.detect_sentiment('text ' || g, 'en') \
                     FROM generate_series(1, 30) g ORDER BY g";
    let first = text_rows(&client.simple_query(statement).await.expect("first run"));
    let calls = proxy.mock.stats();
    assert!(calls.sagemaker_calls >= 1 && calls.comprehend_calls >= 1);

    proxy.mock.reset_stats();
    let again = text_rows(&client.simple_query(statement).await.expect("second run"));
    assert_eq!(again, first, "the same results");
    let stats = proxy.mock.stats();
    assert_eq!(
        (stats.sagemaker_calls, stats.comprehend_calls),
        (0, 0),
        "no call for cached inputs"
    );

    // Only what is new is sent; through the extended protocol too, from another session.
    let other = proxy.connect().await;
    let rows = other
        .query(
            "SELECT aws_sagemaker.invoke_endpoint('cached', NULL, g) \
             FROM generate_series(1, $1::int) g",
            &[&40i32],
        )
        .await
        .expect("extended");
    assert_eq!(rows.len(), 40);
    assert_eq!(
        proxy
            .mock
            .stats()
            .sagemaker_batch_sizes
            .iter()
            .sum::<usize>(),
        10,
        "rows 31 to 40 only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cache_every_statement_calls() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let statement = "SELECT aws_sagemaker.invoke_endpoint('uncached', NULL, 1)";
    client.simple_query(statement).await.expect("first");
    client.simple_query(statement).await.expect("second");
    assert_eq!(proxy.mock.stats().sagemaker_calls, 2);
}
