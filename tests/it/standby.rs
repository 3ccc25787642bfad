//! The hot standby the harness starts: replication reaches it (tables and the reference
//! database), and pgenrich in front of it relays reads, passes on PostgreSQL's read-only error for
//! writes, and runs ML statements, which must never write.

use mock_aws::models;
use tokio_postgres::Client;

use crate::harness::{connect, postgres, reference_database, sqlstate, standby, Proxy};

async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    crate::harness::text_result(client, sql).await.1
}

fn strings(rows: &[&[&str]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|v| Some((*v).to_owned())).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_replays_tables_and_the_reference_database() {
    let reference = reference_database();
    let primary = connect(&postgres().direct_conninfo()).await;
    primary
        .batch_execute(
            "DROP TABLE IF EXISTS standby_replayed;
             CREATE TABLE standby_replayed (id int PRIMARY KEY, body text);
             INSERT INTO standby_replayed VALUES (1, 'good'), (2, 'bad');",
        )
        .await
        .expect("primary");
    let standby = standby();
    standby.wait_for_replay();

    let replica = connect(&standby.direct_conninfo()).await;
    assert_eq!(
        text_rows(&replica, "SELECT pg_is_in_recovery()").await,
        strings(&[&["t"]])
    );
    assert_eq!(
        text_rows(
            &replica,
            "SELECT id, body FROM standby_replayed ORDER BY id"
        )
        .await,
        strings(&[&["1", "good"], &["2", "bad"]])
    );
    // wait_for_replay waits for the latest change, not just any.
    primary
        .batch_execute("UPDATE standby_replayed SET body = 'great' WHERE id = 2")
        .await
        .expect("update");
    standby.wait_for_replay();
    assert_eq!(
        text_rows(&replica, "SELECT body FROM standby_replayed WHERE id = 2").await,
        strings(&[&["great"]])
    );

    // The reference functions run on the standby too (read-only, no writes of their own).
    let reference = connect(&standby.direct_conninfo_to(reference)).await;
    assert_eq!(
        text_rows(
            &reference,
            "SELECT aws_comprehend.detect_sentiment('I love it, great product', 'en'), \
                    aws_sagemaker.invoke_endpoint('model', 1, '1', '2.5', 'abc')",
        )
        .await,
        strings(&[&["(POSITIVE,0.75)", "6.5"]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgenrich_on_the_standby_reads_refuses_writes_and_runs_ml() {
    let reference = reference_database();
    let bodies = [
        Some("I love it, great product"),
        Some("terrible, awful, broken on arrival"),
        Some("good but bad"),
        Some("café naïve 👍 good"),
        None,
        Some(""),
    ];
    // The same table in the test database (behind pgenrich) and the reference database (native).
    for conninfo in [
        postgres().direct_conninfo(),
        postgres().direct_conninfo_to(reference),
    ] {
        let primary = connect(&conninfo).await;
        primary
            .batch_execute(
                "DROP TABLE IF EXISTS standby_reviews;
                 CREATE TABLE standby_reviews (id int PRIMARY KEY, body text, amount numeric)",
            )
            .await
            .expect("create");
        for (i, body) in bodies.iter().enumerate() {
            primary
                .execute(
                    "INSERT INTO standby_reviews VALUES ($1, $2, $3::text::numeric)",
                    &[&(i as i32 + 1), body, &format!("{i}.25")],
                )
                .await
                .expect("insert");
        }
    }
    standby().wait_for_replay();
    let proxy = Proxy::start_on_standby().await;
    let client = proxy.connect().await;

    assert_eq!(
        text_rows(
            &client,
            "SELECT pg_is_in_recovery(), count(*) FROM standby_reviews"
        )
        .await,
        strings(&[&["t", "6"]])
    );
    for sql in [
        "INSERT INTO standby_reviews VALUES (99, 'x', 1)",
        "CREATE TABLE standby_nope (id int)",
        "CREATE TEMP TABLE standby_nope (id int)",
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&error), "25006", "{sql}");
    }

    // ML statements: the same results as the model, and as the reference functions natively on
    // the standby.
    let expected: Vec<Vec<Option<String>>> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let label = body
                .filter(|b| !b.is_empty())
                .map(|b| models::sentiment(b).label.to_owned());
            vec![Some((i + 1).to_string()), label]
        })
        .collect();
    let sentiment = "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
                     FROM standby_reviews ORDER BY id";
    assert_eq!(text_rows(&client, sentiment).await, expected);
    let native = connect(&standby().direct_conninfo_to(reference)).await;
    for sql in [
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM standby_reviews ORDER BY id",
        "SELECT r.id, s.* FROM standby_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
         ORDER BY r.id",
        "SELECT id, aws_sagemaker.invoke_endpoint('model', 2, amount, id) FROM standby_reviews \
         ORDER BY id",
    ] {
        assert_eq!(
            text_rows(&client, sql).await,
            text_rows(&native, sql).await,
            "{sql}"
        );
    }
    // Inside a read-only transaction block, and as a prepared statement with a parameter.
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .expect("begin");
    assert_eq!(text_rows(&client, sentiment).await, expected);
    let rows = client
        .query(
            "SELECT aws_sagemaker.invoke_endpoint('model', NULL, amount, $1::int) \
             FROM standby_reviews WHERE id = 2",
            &[&10i32],
        )
        .await
        .expect("prepared ML statement");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(0), "11.25");
    client.batch_execute("COMMIT").await.expect("commit");

    let stats = proxy.mock.stats();
    assert!(
        stats.comprehend_calls > 0 && stats.sagemaker_calls > 0,
        "the ML calls went to the mock: {stats:?}"
    );
}
