//! pgjdbc through pgenrich gives what it gives on the reference database, where the ML functions
//! are native (tests/clients/java/MlClient.java).

use crate::harness::*;

/// PostgreSQL's JDBC driver as Debian packages it.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Runs the Java client with `conninfo`: what it printed. Fails with an install hint when a JDK
/// or the driver is missing.
async fn run_java_client(conninfo: &str) -> String {
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        java && std::path::Path::new(JDBC_JAR).exists(),
        "a JDK and pgjdbc are needed for this test: apt-get install -y default-jdk-headless \
         libpostgresql-jdbc-java (scripts/test.sh installs them)"
    );
    let source = format!(
        "{}/tests/clients/java/MlClient.java",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = tokio::process::Command::new("java")
        .args(["-cp", JDBC_JAR, &source, conninfo])
        .output()
        .await
        .expect("run java");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "MlClient.java failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_matches_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 5).await;
    let client = proxy.connect().await;
    reviews_table(&client, "drv_j", 30).await;
    reviews_table(&native, "drv_j", 30).await;
    let conninfo = proxy.driver_conninfo();
    let ours = run_java_client(&conninfo).await;
    let theirs = run_java_client(&postgres().direct_conninfo_to(reference_database())).await;
    assert_eq!(ours, theirs);
    let count = |what: &str| {
        ours.lines()
            .filter(|l| l.split('|').next() == Some(what))
            .count()
    };
    assert_eq!(count("prepared"), 5, "{ours}");
    assert_eq!(count("fetched"), 30, "{ours}");
    assert!(count("residual") > 0, "{ours}");
    assert!(ours.contains("batch|4\n"), "{ours}");
    assert_eq!(count("inserted"), 4, "{ours}");
    assert!(
        ours.contains("model_error|failed\naborted|25P02\n"),
        "{ours}"
    );
}
