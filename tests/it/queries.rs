//! Ordinary traffic through pgenrich with tokio-postgres: both protocols, prepared statements,
//! binary results, large results and parameters, notifications.

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use crate::harness::{connect, postgres, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_protocols_return_what_postgres_returns() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;

    let messages = client
        .simple_query("SELECT 1 AS one, 'two' AS two; SELECT generate_series(1, 3) AS n")
        .await
        .expect("simple query");
    let rows: Vec<Vec<String>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows,
        vec![vec!["1", "two"], vec!["1"], vec!["2"], vec!["3"]]
    );

    // Extended protocol with parameters; results arrive in binary format.
    let row = client
        .query_one(
            "SELECT $1::int8 * 2, $2::text || '!', now() > '2000-01-01'::timestamptz",
            &[&21i64, &"hi"],
        )
        .await
        .expect("extended query");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert!(row.get::<_, bool>(2));

    // A named prepared statement reused with different parameters.
    let statement = client
        .prepare("SELECT $1::float8 + 0.5, pg_typeof($1::float8)::text")
        .await
        .expect("prepare");
    for x in [1.0f64, -3.25, 1e10] {
        let row = client.query_one(&statement, &[&x]).await.expect("execute");
        assert_eq!(row.get::<_, f64>(0), x + 0.5);
        assert_eq!(row.get::<_, String>(1), "double precision");
    }

    // DDL, DML and a transaction, with the upstream's own error passed through.
    client
        .batch_execute("CREATE TEMP TABLE items (id int PRIMARY KEY, name text)")
        .await
        .expect("create");
    let inserted = client
        .execute(
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g",
            &[],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 100);
    let duplicate = client
        .execute("INSERT INTO items VALUES (1, 'again')", &[])
        .await
        .expect_err("duplicate key");
    assert_eq!(duplicate.code().map(|c| c.code()), Some("23505"));
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_result_arrives_intact() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let rows = client
        .query(
            "SELECT i, repeat(md5(i::text), 32) AS payload FROM generate_series(1, 50000) i",
            &[],
        )
        .await
        .expect("large query");
    assert_eq!(rows.len(), 50_000);
    let mut bytes = 0usize;
    for (n, row) in rows.iter().enumerate() {
        let i: i32 = row.get(0);
        let payload: &str = row.get(1);
        assert_eq!(i as usize, n + 1, "rows in order");
        assert_eq!(payload.len(), 1024);
        bytes += payload.len();
    }
    assert!(bytes >= 50 * 1000 * 1000, "{bytes} bytes");
    // Spot-check content against PostgreSQL's own md5.
    let expected: String = client
        .query_one("SELECT md5('49999')", &[])
        .await
        .expect("md5")
        .get(0);
    assert_eq!(&rows[49_998].get::<_, &str>(1)[..32], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bind_parameter_reaches_postgres() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let value: String = (0..10 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let row = client
        .query_one("SELECT length($1::text), md5($1::text)", &[&value])
        .await
        .expect("bind 10 MB");
    assert_eq!(row.get::<_, i32>(0) as usize, value.len());
    let direct = connect(&postgres().direct_conninfo()).await;
    let expected: String = direct
        .query_one("SELECT md5($1::text)", &[&value])
        .await
        .expect("direct md5")
        .get(0);
    assert_eq!(row.get::<_, String>(1), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_notices_are_delivered() {
    let proxy = Proxy::start().await;
    let (client, mut connection) = tokio_postgres::connect(
        &proxy.conninfo(crate::harness::USER, crate::harness::PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    client
        .batch_execute("LISTEN pgenrich_events")
        .await
        .expect("listen");
    let other = connect(&postgres().direct_conninfo()).await;
    other
        .batch_execute("NOTIFY pgenrich_events, 'hello through the proxy'")
        .await
        .expect("notify");
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$")
        .await
        .expect("notice");
    let mut got_notification = false;
    let mut got_notice = false;
    while !(got_notification && got_notice) {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("message within 10s")
            .expect("connection alive");
        match message {
            AsyncMessage::Notification(n) => {
                assert_eq!(n.channel(), "pgenrich_events");
                assert_eq!(n.payload(), "hello through the proxy");
                got_notification = true;
            }
            AsyncMessage::Notice(notice) => {
                assert_eq!(notice.message(), "a notice");
                got_notice = true;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_serves_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.unix_socket_dir = Some(path.clone())).await;
    let conninfo = format!(
        "host={} port={} user={} password={} dbname={}",
        path.display(),
        proxy.addr.port(),
        crate::harness::USER,
        crate::harness::PASSWORD,
        crate::harness::DATABASE
    );
    let client = connect(&conninfo).await;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), crate::harness::USER);
}
