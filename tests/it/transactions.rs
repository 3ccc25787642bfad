//! ML statements the way drivers run them inside transaction blocks: any number of base +
//! residual statements (row-local and not, prepared once or each time) in one BEGIN … COMMIT, in
//! both protocols, with tokio-postgres and psycopg (autocommit off, as it and SQLAlchemy run
//! by default).

use crate::harness::{postgres, run_psycopg_script, Proxy};

/// Not row-local (ORDER BY above the ML value's filter): the residual holds a sort.
const SORTED: &str = "SELECT g FROM generate_series(1, 40) g \
     WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::float8 > $1 ORDER BY g";
/// Row-local: the residual runs per chunk of base rows.
const ROW_LOCAL: &str = "SELECT g FROM generate_series(1, 40) g \
     WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::float8 > $1";

/// The mock's `score` of one field is the field's value: the rows above `threshold`.
fn expected(threshold: f64) -> Vec<i32> {
    (1..=40).filter(|g| f64::from(*g) > threshold).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_residual_statements_in_one_transaction_with_tokio_postgres() {
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 7).await;
    let mut client = proxy.connect().await;
    let tx = client.transaction().await.expect("BEGIN");
    let sorted = tx.prepare(SORTED).await.expect("prepare sorted");
    for round in 0..10 {
        let threshold = f64::from(round * 3);
        for (what, rows) in [
            ("prepared once", tx.query(&sorted, &[&threshold]).await),
            ("prepared each time", tx.query(SORTED, &[&threshold]).await),
            ("row-local", tx.query(ROW_LOCAL, &[&threshold]).await),
        ] {
            let rows = rows.unwrap_or_else(|e| panic!("{what}, round {round}: {e:?}"));
            let mut got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            got.sort_unstable();
            assert_eq!(got, expected(threshold), "{what}, round {round}");
        }
    }
    // Portals interleaved: two suspended residual portals of one transaction read in turns.
    let a = tx.bind(&sorted, &[&0.0f64]).await.expect("bind a");
    let b = tx.bind(&sorted, &[&20.0f64]).await.expect("bind b");
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for _ in 0..4 {
        let rows = tx.query_portal(&a, 5).await.expect("portal a");
        from_a.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        let rows = tx.query_portal(&b, 3).await.expect("portal b");
        from_b.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(from_a, (1..=20).collect::<Vec<_>>());
    assert_eq!(from_b, (21..=32).collect::<Vec<_>>());
    tx.commit().await.expect("COMMIT");
    // The session is clean afterwards: the same statements in autocommit.
    let rows = client.query(SORTED, &[&35.0f64]).await.expect("after");
    assert_eq!(rows.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_residual_statements_in_one_simple_protocol_transaction() {
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 7).await;
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    for round in 0..10 {
        let threshold = round * 3;
        for sql in [SORTED, ROW_LOCAL] {
            let sql = sql.replace("$1", &threshold.to_string());
            let messages = client.simple_query(&sql).await.expect(&sql);
            let mut got: Vec<i32> = crate::harness::text_rows(&messages)
                .iter()
                .map(|r| r[0].as_deref().unwrap_or("?").parse().expect("int"))
                .collect();
            got.sort_unstable();
            assert_eq!(got, expected(f64::from(threshold)), "{sql}");
        }
    }
    client.batch_execute("COMMIT").await.expect("COMMIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_with_autocommit_off_runs_residual_statements_repeatedly() {
    let _ = postgres();
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 7).await;
    let seen = run_psycopg_script(&proxy, "psycopg_tx.py").await;
    let rounds = seen["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 10, "{seen}");
    for round in rounds {
        let threshold = round["threshold"].as_f64().expect("threshold");
        let want = serde_json::json!(expected(threshold));
        for key in ["prepared", "unprepared", "row_local"] {
            assert_eq!(round[key], want, "{key} at {threshold}: {seen}");
        }
    }
    assert_eq!(seen["status_after_commit"].as_str(), Some("IDLE"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_deallocating_and_rolling_back_frees_what_pgenrich_keeps() {
    let _ = postgres();
    // Thirty rounds of four 100 kB statements would hold 12 MB if pgenrich kept what psycopg
    // deallocated; the budget holds ten.
    let proxy = Proxy::start_with(|c| c.max_prepared_bytes = 1 << 20).await;
    let seen = run_psycopg_script(&proxy, "psycopg_deallocate.py").await;
    // The pipelined rounds send DEALLOCATE as Parse, Bind and Execute.
    for key in ["rounds", "pipelined"] {
        let rounds = seen[key].as_array().expect(key);
        assert_eq!(rounds.len(), 30, "{key}: {seen}");
        for round in rounds {
            assert_eq!(
                round,
                &serde_json::json!([[0, true], [1, true], [2, true], [3, true]]),
                "{key}: {seen}"
            );
        }
    }
    assert_eq!(seen["impl"].as_str(), Some("python"), "{seen}");
}
