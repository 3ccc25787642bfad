//! asyncpg through pgenrich gives what it gives on the reference database, where the ML
//! functions are native: values decoded from binary results (records included), column types,
//! cursors read in pieces, a pipelined executemany.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_matches_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 5).await;
    let client = proxy.connect().await;
    reviews_table(&client, "drv_a", 30).await;
    reviews_table(&native, "drv_a", 30).await;
    let conninfo = proxy.driver_conninfo();
    let ours = run_python_client(&conninfo, "asyncpg_ml.py", "asyncpg", "asyncpg").await;
    let theirs = run_python_client(
        &postgres().direct_conninfo_to(reference_database()),
        "asyncpg_ml.py",
        "asyncpg",
        "asyncpg",
    )
    .await;
    assert_eq!(ours, theirs);
    assert_eq!(ours["streaming"].as_array().map(Vec::len), Some(12));
    assert!(
        ours["streaming"][0][1][0].is_string(),
        "{}",
        ours["streaming"]
    );
    assert_eq!(ours["cursor"][1].as_array().map(Vec::len), Some(22));
    assert_eq!(ours["iterated"].as_array().map(Vec::len), Some(30));
    assert_eq!(ours["inserted"].as_array().map(Vec::len), Some(4));
    assert!(!ours["residual"].as_array().is_none_or(Vec::is_empty));
}
