//! `ml_stream_client CONNSTR SQL`: runs SQL with the simple query protocol, streaming the rows, and
//! prints one line `rows=… null_last=… first_row_s=… total_s=… rows_per_s=…` (null_last: rows whose
//! last column is NULL). Used by `benches/e2e_ml.sh`; exits 1 with the error on failure.

use std::pin::pin;
use std::time::Instant;

use futures_util::TryStreamExt;
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conn_str, sql] = args.as_slice() else {
        eprintln!("usage: ml_stream_client CONNSTR SQL");
        std::process::exit(2);
    };
    if let Err(error) = run(conn_str, sql).await {
        match error.as_db_error() {
            Some(db) => eprintln!(
                "error: {} {} ({:?})",
                db.code().code(),
                db.message(),
                db.detail()
            ),
            None => eprintln!("error: {error}"),
        }
        std::process::exit(1);
    }
}

async fn run(conn_str: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    let connection = tokio::spawn(connection);

    let start = Instant::now();
    let mut first_row = None;
    let (mut rows, mut null_last) = (0u64, 0u64);
    let mut stream = pin!(client.simple_query_raw(sql).await?);
    while let Some(message) = stream.try_next().await? {
        if let SimpleQueryMessage::Row(row) = message {
            first_row.get_or_insert_with(|| start.elapsed());
            rows += 1;
            if row.is_empty() || row.get(row.len() - 1).is_none() {
                null_last += 1;
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    let first_row_s = first_row.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "rows={rows} null_last={null_last} first_row_s={first_row_s:.4} total_s={total:.4} rows_per_s={:.0}",
        rows as f64 / total
    );

    drop(client);
    connection.await.ok();
    Ok(())
}
