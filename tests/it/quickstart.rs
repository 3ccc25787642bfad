//! The quickstart on embedded models: demo data loaded through pgenrich, the example queries of
//! `demo/queries.sql` run with the backends of `config/quickstart.toml`, and every ML value checked
//! against the model evaluated directly on the same inputs.

use std::path::Path;

use pgenrich::backends::{local, onnx::OnnxModel};
use pgenrich::config::{Cli, Config};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{connect, postgres, psql_path, Proxy, DATABASE, PASSWORD, USER};

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
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| {
                        (
                            row.columns()[i].name().to_owned(),
                            row.get(i).map(str::to_owned),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
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

    // Fraud: each probability is the model's answer for that transaction's features.
    let got = rows(&client, &queries[0]).await;
    assert_eq!(got.len(), 10);
    let mut flagged = Vec::new();
    for row in &got {
        let id = column(row, "id");
        let features = rows(
            &client,
            &format!(
                "SELECT concat_ws(',', amount, hour, distance_km, foreign_country, card_present) \
                 AS csv FROM transactions WHERE id = {id}"
            ),
        )
        .await;
        let expected = fraud
            .score_csv(&format!("{}\n", column(&features[0], "csv")))
            .expect("scores");
        let probability = column(row, "fraud_probability");
        assert_eq!(probability, expected.trim_end(), "transaction {id}");
        let p: f32 = probability.parse().expect("a number");
        assert!((0.0..=1.0).contains(&p), "{p}");
        if p > 0.5 {
            flagged.push(id.to_owned());
        }
    }
    // The two fraudulent transactions among the first ten large ones stand out.
    assert_eq!(flagged, ["183", "449"], "{got:?}");

    // Sentiment: VADER's label and confidence for each review's full text.
    let got = rows(&client, &queries[1]).await;
    assert_eq!(got.len(), 10);
    let mut labels = Vec::new();
    for row in &got {
        let id = column(row, "id");
        let body = rows(
            &client,
            &format!("SELECT body FROM reviews WHERE id = {id}"),
        )
        .await;
        let expected = local::analyze(column(&body[0], "body"));
        assert_eq!(
            column(row, "sentiment"),
            expected.label.as_str(),
            "review {id}"
        );
        let confidence: f32 = column(row, "confidence").parse().expect("real");
        assert_eq!(confidence, expected.confidence, "review {id}");
        labels.push(column(row, "sentiment").to_owned());
    }
    for label in ["POSITIVE", "NEGATIVE", "NEUTRAL"] {
        assert!(
            labels.iter().any(|l| l == label),
            "no {label} in {labels:?}"
        );
    }

    // Recommendations: the expected rating of each product for customer 7.
    let got = rows(&client, &queries[2]).await;
    assert_eq!(got.len(), 10);
    for row in &got {
        let id = column(row, "id");
        let features = rows(
            &client,
            &format!(
                "SELECT concat_ws(',', c.age, c.avg_basket, c.sporty, p.category_id, p.price) \
                 AS csv FROM customers c, products p WHERE c.id = 7 AND p.id = {id}"
            ),
        )
        .await;
        let expected = recommend
            .score_csv(&format!("{}\n", column(&features[0], "csv")))
            .expect("scores");
        assert_eq!(column(row, "score"), expected.trim_end(), "product {id}");
    }

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
    assert_eq!(stdout.matches("(10 rows)").count(), 3, "{stdout}");
    for header in ["fraud_probability", "sentiment", "confidence", "score"] {
        assert!(stdout.contains(header), "{stdout}");
    }
}
