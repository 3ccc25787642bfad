//! The run's tables — their contents defined once here, in SQL for `--setup` and in Rust for the
//! checks — and the final comparison of the key ledger with `soak_rows`.
//!
//! - `soak_kv(id, v)`: 1,000 rows `v = 'v' || id`, read by plain sessions.
//! - `soak_ml(id, a, txt)`: `--ml-rows` rows, `a` = [`ml_a`], `txt` = [`ml_txt`].
//! - `soak_rows(key, session, payload)`: written by plain sessions, one row per key with
//!   `payload` = [`payload`]. The key column is deliberately not UNIQUE: a row delivered twice must
//!   show up as two rows (counted as duplicated), not be masked as a 23505 error.

use std::collections::HashMap;
use std::pin::pin;

use futures_util::TryStreamExt;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::stats::{KeyState, Stats};

pub const KV_ROWS: i64 = 1000;

/// Texts for `detect_sentiment`: positive, negative, mixed and neutral ones for the mock's model.
const TEXTS: &[&str] = &[
    "good product",
    "bad service",
    "great but broken",
    "a table",
    "love it, excellent",
    "awful and terrible",
    "nice",
    "plain text",
];

pub fn ml_a(id: i64) -> i64 {
    (id * 37) % 1000
}

pub fn ml_txt(id: i64) -> String {
    format!("{} {}", TEXTS[(id % TEXTS.len() as i64) as usize], id % 97)
}

pub fn payload(key: i64) -> String {
    format!("row-{key}")
}

pub fn kv_value(id: i64) -> String {
    format!("v{id}")
}

fn setup_sql(ml_rows: i32) -> String {
    let texts = TEXTS
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DROP TABLE IF EXISTS soak_kv, soak_ml, soak_rows;
         CREATE TABLE soak_kv (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO soak_kv SELECT g, 'v' || g FROM generate_series(1, {KV_ROWS}) g;
         CREATE TABLE soak_ml (id int PRIMARY KEY, a int NOT NULL, txt text NOT NULL);
         INSERT INTO soak_ml
           SELECT g, (g * 37) % 1000, (ARRAY[{texts}])[g % {n} + 1] || ' ' || (g % 97)
             FROM generate_series(1, {ml_rows}) g;
         CREATE TABLE soak_rows (key bigint NOT NULL, session int NOT NULL, payload text NOT NULL);
         CREATE INDEX soak_rows_key ON soak_rows (key);",
        n = TEXTS.len()
    )
}

/// Creates the tables and checks a sample of `soak_ml` against the Rust definitions.
pub async fn setup(conn_str: &str, ml_rows: i32) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(connection);
    client
        .batch_execute(&setup_sql(ml_rows))
        .await
        .map_err(|e| format!("{e}: {:?}", e.as_db_error().map(|d| d.message())))?;
    // A Query message of several statements is one transaction, which VACUUM refuses.
    client
        .batch_execute("VACUUM ANALYZE soak_kv, soak_ml, soak_rows")
        .await
        .map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT id::int8, a::int8, txt FROM soak_ml WHERE id % 997 = 0 OR id <= 20",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    for row in &rows {
        let id: i64 = row.get(0);
        let (a, txt): (i64, String) = (row.get(1), row.get(2));
        if a != ml_a(id) || txt != ml_txt(id) {
            return Err(format!(
                "soak_ml row {id} is ({a}, {txt:?}); the client expects ({}, {:?})",
                ml_a(id),
                ml_txt(id)
            ));
        }
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Compares the ledger with `soak_rows` and adds the `rows.*` counters:
/// `lost` (committed, absent), `duplicated` (extra copies of any key), `unexpected` (aborted
/// keys present, or keys the ledger never handed out), `corrupt` (payload not the key's),
/// `in_doubt_present` / `in_doubt_absent`, `in_table`.
pub async fn verify(conn_str: &str, stats: &Stats) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(connection);
    let mut present: HashMap<i64, u32> = HashMap::new();
    let (mut in_table, mut corrupt) = (0u64, 0u64);
    let mut stream = pin!(client
        .simple_query_raw("SELECT key, payload FROM soak_rows")
        .await
        .map_err(|e| e.to_string())?);
    while let Some(message) = stream.try_next().await.map_err(|e| e.to_string())? {
        if let SimpleQueryMessage::Row(row) = message {
            in_table += 1;
            let key: i64 = row
                .get(0)
                .and_then(|k| k.parse().ok())
                .ok_or("soak_rows.key is not a number")?;
            if row.get(1) != Some(payload(key).as_str()) {
                corrupt += 1;
            }
            *present.entry(key).or_default() += 1;
        }
    }
    let ledger = stats.ledger();
    let (mut lost, mut unexpected, mut doubt_present, mut doubt_absent) = (0u64, 0, 0, 0);
    for (key, state) in &ledger {
        let copies = present.get(key).copied().unwrap_or(0);
        match state {
            KeyState::Committed if copies == 0 => lost += 1,
            KeyState::Aborted if copies > 0 => unexpected += 1,
            KeyState::InDoubt | KeyState::Pending if copies > 0 => doubt_present += 1,
            KeyState::InDoubt | KeyState::Pending => doubt_absent += 1,
            _ => {}
        }
    }
    unexpected += present.keys().filter(|k| !ledger.contains_key(k)).count() as u64;
    let duplicated: u64 = present
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    for (name, value) in [
        ("rows.in_table", in_table),
        ("rows.lost", lost),
        ("rows.duplicated", duplicated),
        ("rows.unexpected", unexpected),
        ("rows.corrupt", corrupt),
        ("rows.in_doubt_present", doubt_present),
        ("rows.in_doubt_absent", doubt_absent),
    ] {
        // Zeros are printed too: the script reads them as results, not as missing counters.
        stats.set(name, value);
    }
    drop(client);
    let _ = task.await;
    Ok(())
}
