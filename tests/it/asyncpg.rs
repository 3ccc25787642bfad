//! asyncpg through pgenrich gives what it gives on the reference database, where the ML
//! functions are native: values decoded from binary results (records included), column types,
//! cursors read in pieces, a pipelined executemany.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_matches_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 5).await;
    let client = proxy.connect().await;
    for db in [&client, &native] {
        db.batch_execute(
            "DROP TABLE IF EXISTS drv_a; \
             CREATE TABLE drv_a (id int PRIMARY KEY, body text); \
             INSERT INTO drv_a SELECT g, CASE WHEN g % 3 = 0 THEN 'bad' WHEN g % 3 = 1 \
                 THEN 'good' ELSE 'fine' END || ' review ' || g FROM generate_series(1, 30) g",
        )
        .await
        .expect("table");
    }
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DATABASE} sslmode=disable",
        proxy.addr.port()
    );
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
