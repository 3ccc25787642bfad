//! node-postgres (with pg-cursor) and postgres.js through pgenrich give what they give on the
//! reference database, where the ML functions are native (tests/clients/node/ml.mjs).

use crate::harness::*;

/// Runs the Node.js client script with `conninfo`: the JSON object it prints. Fails with an
/// install hint when Node.js or the script's packages are missing.
async fn run_node_client(conninfo: &str) -> serde_json::Value {
    let dir = format!("{}/tests/clients/node", env!("CARGO_MANIFEST_DIR"));
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node,
        "Node.js is needed for this test: apt-get install -y nodejs npm (scripts/test.sh installs it)"
    );
    assert!(
        std::path::Path::new(&format!("{dir}/node_modules/pg")).exists(),
        "the Node.js clients are needed for this test: npm ci --prefix tests/clients/node \
         (scripts/test.sh runs it)"
    );
    let out = tokio::process::Command::new("node")
        .args([&format!("{dir}/ml.mjs"), conninfo])
        .current_dir(&dir)
        .output()
        .await
        .expect("run node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ml.mjs failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_and_postgres_js_match_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 5).await;
    let client = proxy.connect().await;
    reviews_table(&client, "drv_n", 30).await;
    reviews_table(&native, "drv_n", 30).await;
    let conninfo = proxy.driver_conninfo();
    let ours = run_node_client(&conninfo).await;
    let theirs = run_node_client(&postgres().direct_conninfo_to(reference_database())).await;
    assert_eq!(ours, theirs);
    assert_eq!(ours["pg_streaming"].as_array().map(Vec::len), Some(10));
    assert_eq!(ours["pg_cursor_pieces"], serde_json::json!([7, 7, 7, 7, 2]));
    assert_eq!(ours["pg_inserted"][0], 4);
    assert_eq!(ours["pg_aborted"], "25P02");
    assert_eq!(ours["js_rows"].as_array().map(Vec::len), Some(7));
    assert_eq!(ours["js_cursor_batches"], serde_json::json!([8, 8, 8, 6]));
}
