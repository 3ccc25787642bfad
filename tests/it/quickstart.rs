//! The quickstart on embedded models: demo data loaded through pgenrich, the example queries of
//! `demo/queries.sql` run with the backends of `config/quickstart.toml`, and every ML value checked
//! against the model evaluated directly on the same inputs.

use std::path::Path;

use pgenrich::backends::{local, onnx::OnnxModel};
use pgenrich::config::{Cli, Config};

use crate::harness::{connect, postgres, psql_path, text_result, Proxy, DATABASE, PASSWORD, USER};

const DEMO_DATABASE: &str = "pgenrich_demo";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The example queries, in file order.
fn queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("demo/queries.sql")).expect("demo/queries.sql");
    text.split(';')
        .map(|q| {
            q.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|q| !q.trim().is_empty())
        .collect()
}

/// Rows of a simple-protocol query as text (what psql prints), by column name.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<(String, Option<String>)>> {
    let (names, rows) = text_result(client, sql).await;
    rows.into_iter()
        .map(|row| names.iter().cloned().zip(row).collect())
        .collect()
}

fn column<'a>(row: &'a [(String, Option<String>)], name: &str) -> &'a str {
    row.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
        .as_deref()
        .unwrap_or_else(|| panic!("{name} is NULL in {row:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_queries_give_the_models_answers() {
    let pg = postgres();
    pg.psql_super(&format!("DROP DATABASE IF EXISTS {DEMO_DATABASE}"));
    pg.psql_super(&format!("CREATE DATABASE {DEMO_DATABASE} OWNER {USER}"));
    let quickstart = Config::load(Cli {
        config: Some(repo("config/quickstart.toml")),
        upstream: Some(pg.upstream()),
        ..Cli::default()
    })
    .expect("config/quickstart.toml is valid");
    let proxy = Proxy::start_with(|config| {
        config.inference.comprehend_backend = quickstart.inference.comprehend_backend;
        config.inference.endpoints = quickstart.inference.endpoints.clone();
    })
    .await;
    let conninfo = proxy.conninfo(USER, PASSWORD).replace(
        &format!("dbname={DATABASE}"),
        &format!("dbname={DEMO_DATABASE}"),
    );
    let client = connect(&conninfo).await;
    // The demo script, 150 kB of SQL in one Query message, relays untouched.
    client
        .batch_execute(&std::fs::read_to_string(repo("demo/demo.sql")).expect("demo.sql"))
        .await
        .expect("demo data loads through pgenrich");

    let queries = queries();
    assert_eq!(queries.len(), 3, "{queries:?}");
    let fraud = OnnxModel::load(&repo("models/fraud.onnx"), None).expect("fraud model");
    let recommend = OnnxModel::load(&repo("models/recommend.onnx"), None).expect("model");
    let score = |model: &OnnxModel, csv: &str| -> f64 {
        model
            .score_csv(&format!("{csv}\n"))
            .expect("scores")
            .trim_end()
            .parse()
            .expect("a number")
    };

    // Fraud: the model evaluated directly on every large transaction picks the same rows, in the
    // same order, with the same rounded probabilities.
    let all = rows(
        &client,
        "SELECT id, concat_ws(',', amount, hour, distance_km, foreign_country, card_present) AS csv \
         FROM transactions WHERE amount > 500",
    )
    .await;
    let mut expected: Vec<(f64, i64)> = all
        .iter()
        .map(|row| {
            let p = score(&fraud, column(row, "csv"));
            (p, column(row, "id").parse().expect("id"))
        })
        .filter(|(p, _)| *p > 0.5)
        .map(|(p, id)| ((p * 1000.0).round() / 1000.0, id))
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    expected.truncate(10);
    let got = rows(&client, &queries[0]).await;
    assert!(!got.is_empty(), "the demo data has flagged transactions");
    let got: Vec<(f64, i64)> = got
        .iter()
        .map(|row| {
            (
                column(row, "fraud_probability").parse().expect("numeric"),
                column(row, "id").parse().expect("id"),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Ad targeting: VADER's labels for every review, counted per customer.
    let reviews = rows(&client, "SELECT customer_id, body FROM reviews").await;
    let mut positive: std::collections::BTreeMap<i64, usize> = Default::default();
    for row in &reviews {
        if local::analyze(column(row, "body")).label.as_str() == "POSITIVE" {
            *positive
                .entry(column(row, "customer_id").parse().expect("id"))
                .or_default() += 1;
        }
    }
    let mut expected: Vec<(usize, i64)> = positive.into_iter().map(|(c, n)| (n, c)).collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    expected.truncate(10);
    let got: Vec<(usize, i64)> = rows(&client, &queries[1])
        .await
        .iter()
        .map(|row| {
            (
                column(row, "positive_reviews").parse().expect("count"),
                column(row, "customer_id").parse().expect("id"),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Recommendations: every product scored for customer 7, best five.
    let products = rows(
        &client,
        "SELECT p.id, concat_ws(',', c.age, c.avg_basket, c.sporty, p.category_id, p.price) AS csv \
         FROM customers c, products p WHERE c.id = 7",
    )
    .await;
    let mut expected: Vec<(f64, i64)> = products
        .iter()
        .map(|row| {
            let rating = (score(&recommend, column(row, "csv")) * 100.0).round() / 100.0;
            (rating, column(row, "id").parse().expect("id"))
        })
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    expected.truncate(5);
    let got: Vec<(f64, i64)> = rows(&client, &queries[2])
        .await
        .iter()
        .map(|row| {
            (
                column(row, "expected_rating").parse().expect("numeric"),
                column(row, "id").parse().expect("id"),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // And psql, as the quickstart script runs it, prints all three results.
    let out = tokio::process::Command::new(psql_path())
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args([
            "-U",
            USER,
            "-d",
            DEMO_DATABASE,
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-f", repo("demo/queries.sql").to_str().expect("utf8")])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .await
        .expect("psql runs (install it with `apt-get install -y postgresql-client`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(" rows)").count(), 3, "{stdout}");
    for header in ["fraud_probability", "positive_reviews", "expected_rating"] {
        assert!(stdout.contains(header), "{stdout}");
    }
}
