//! psycopg 3 (PyPI `psycopg[binary]`) through pgenrich, with server-side prepared statements:
//! a third driver's extended-protocol traffic around ML statements.

use mock_aws::models;

use crate::harness::{postgres, run_psycopg_script, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_ml_statements() {
    let _ = postgres();
    let proxy = Proxy::start().await;
    let seen = run_psycopg_script(&proxy, "psycopg_ml.py").await;

    let expect = |text: &str| {
        let s = models::sentiment(text);
        serde_json::json!([s.label, s.confidence() as f64])
    };
    // psycopg reads real as a Python float: compare with the f32 value widened.
    assert_eq!(seen["fields"][0][0], expect("I love it, great product")[0]);
    assert_eq!(
        seen["fields"][0][1].as_f64().map(|v| v as f32),
        Some(models::sentiment("terrible").confidence())
    );
    assert_eq!(
        seen["columns"],
        serde_json::json!(["sentiment", "confidence"])
    );
    assert_eq!(seen["again"][0][0], expect("bad")[0]);
    assert_eq!(
        seen["again"][0][1].as_f64().map(|v| v as f32),
        Some(models::sentiment("a table").confidence())
    );
    let invoke: Vec<(i64, String)> = (1..=5)
        .map(|g| (g, models::score(&[g.to_string(), "0.5".into()])))
        .collect();
    for (row, (g, score)) in seen["invoke"].as_array().expect("rows").iter().zip(&invoke) {
        assert_eq!(row[0].as_i64(), Some(*g));
        assert_eq!(row[1].as_str(), Some(score.as_str()));
    }
    assert_eq!(seen["binary"][0].as_str(), Some("7"));
    assert_eq!(
        seen["binary"][1].as_f64().map(|v| v as f32),
        Some(models::sentiment("good").confidence())
    );
    assert_eq!(seen["refused"].as_str(), Some("0A000"));
    assert_eq!(seen["after"].as_i64(), Some(42));
    assert_eq!(seen["model_error"].as_str(), Some("38000"));
    assert_eq!(seen["aborted"].as_str(), Some("25P02"));
}
