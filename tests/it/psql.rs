//! psql through pgenrich: multi-statement commands and `\copy` in both directions.

use std::process::Output;

use crate::harness::{postgres, psql_path, Proxy, DATABASE, PASSWORD, USER};

async fn psql(proxy: &Proxy, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(psql_path())
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args([
            "-U",
            USER,
            "-d",
            DATABASE,
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-t",
        ])
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .await
        .expect("psql runs (install it with `apt-get install -y postgresql-client`)");
    out
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_and_copy_round_trip() {
    let proxy = Proxy::start().await;
    let out = psql(
        &proxy,
        &["-c", "CREATE TABLE IF NOT EXISTS psql_copy (id int, note text); TRUNCATE psql_copy; SELECT 'ready'"],
    )
    .await;
    assert_eq!(stdout(&out).trim(), "CREATE TABLE\nTRUNCATE TABLE\nready");

    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("in.csv");
    let mut csv = String::new();
    for i in 1..=5000 {
        csv.push_str(&format!("{i},\"note, with comma \"\"{i}\"\"\"\n"));
    }
    std::fs::write(&input, &csv).expect("write csv");
    let out = psql(
        &proxy,
        &[
            "-c",
            &format!(
                "\\copy psql_copy FROM '{}' WITH (FORMAT csv)",
                input.display()
            ),
        ],
    )
    .await;
    assert!(stdout(&out).contains("COPY 5000"), "{}", stdout(&out));

    // The rows are really in PostgreSQL.
    let direct = postgres().psql_super(&format!(
        "\\c {DATABASE}\nSELECT count(*), sum(id) FROM psql_copy"
    ));
    assert_eq!(direct.trim(), "5000|12502500");

    let output = dir.path().join("out.csv");
    let out = psql(
        &proxy,
        &[
            "-c",
            &format!(
                "\\copy (SELECT id, note FROM psql_copy ORDER BY id) TO '{}' WITH (FORMAT csv)",
                output.display()
            ),
        ],
    )
    .await;
    stdout(&out);
    assert_eq!(std::fs::read_to_string(&output).expect("read"), csv);

    // A failing COPY reports PostgreSQL's error and the session stays usable.
    std::fs::write(&input, "not-a-number,x\n").expect("write");
    let out = psql(
        &proxy,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            &format!(
                "\\copy psql_copy FROM '{}' WITH (FORMAT csv)",
                input.display()
            ),
            "-c",
            "SELECT count(*) FROM psql_copy",
        ],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid input syntax"),
        "{out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_ml_statements_and_reports_refused_forms() {
    let proxy = Proxy::start().await;
    let out = psql(
        &proxy,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "SELECT aws_comprehend.detect_sentiment('great', 'en')",
            "-c",
            "SELECT 1 WHERE (aws_comprehend.detect_sentiment('great', 'en')).sentiment = 'POSITIVE'",
            "-c",
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, aws_sagemaker.invoke_endpoint('m', NULL, 1))",
            "-c",
            "SELECT * FROM aws_comprehend.detect_sentiment('I love it, great', 'en')",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not supported"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["(POSITIVE,0.6666667)", "1", "POSITIVE|0.75"],
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_progress_notices_of_a_long_ml_statement() {
    let proxy = Proxy::start().await;
    proxy
        .mock
        .set_latency(std::time::Duration::from_millis(100));
    let out = psql(
        &proxy,
        &[
            "-c",
            "SET pgenrich.progress = on",
            "-c",
            "SET pgenrich.progress_interval = 0.1",
            "-c",
            "SELECT count(aws_sagemaker.invoke_endpoint('psql-progress', 1, g)) \
             FROM generate_series(1, 12) g",
        ],
    )
    .await;
    assert_eq!(stdout(&out).lines().last(), Some("12"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NOTICE:  pgenrich: ") && stderr.contains("rows sent to inference"),
        "psql prints the progress notices: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_fetch_count_reads_ml_results_through_a_cursor() {
    // With FETCH_COUNT, psql (before 17) runs a SELECT as DECLARE _psql_cursor … then
    // FETCH FORWARD n until the end, in a transaction of its own: the same output as without.
    let proxy = Proxy::start().await;
    let sql = "SELECT g, aws_comprehend.detect_sentiment(CASE WHEN g % 2 = 0 THEN 'great' \
               ELSE 'awful' END, 'en') AS s, aws_sagemaker.invoke_endpoint('score', NULL, g) \
               FROM generate_series(1, 20) g ORDER BY g";
    let whole = stdout(&psql(&proxy, &["-c", sql]).await);
    let fetched = stdout(&psql(&proxy, &["-v", "FETCH_COUNT=3", "-c", sql]).await);
    assert_eq!(whole.lines().count(), 20, "{whole}");
    assert!(whole.contains("(POSITIVE,"), "{whole}");
    assert_eq!(fetched, whole);
}
