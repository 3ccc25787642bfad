//! ML calls in data-modifying statements (issue 18): `INSERT … SELECT` with ML calls writes the
//! enriched rows in one statement, atomically, with PostgreSQL's own tag, conflicts and
//! RETURNING, in both protocols and inside or outside a transaction block.

use crate::harness::*;

async fn table(client: &tokio_postgres::Client, name: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id int PRIMARY KEY, label varchar, score real, answer text)"
        ))
        .await
        .expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_writes_enriched_rows_atomically() {
    let pg = postgres();
    let direct = connect(&pg.direct_conninfo()).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 4).await;
    let client = proxy.connect().await;
    table(&direct, "dml_insert").await;
    let insert = "INSERT INTO dml_insert (id, label, score) \
                  SELECT g, s.sentiment, s.confidence \
                  FROM generate_series(1, 10) g, \
                       aws_comprehend.detect_sentiment('text ' || g, 'en') s \
                  WHERE s.confidence > 0";
    // Outside a block: pgenrich's own transaction, PostgreSQL's tag.
    let out = client.simple_query(insert).await.expect("insert");
    let tag = command_count(&out);
    assert_eq!(tag, Some(10));
    // What was written is what the SELECT through pgenrich returns.
    let select = text_rows(
        &client
            .simple_query(
                "SELECT g, s.sentiment, s.confidence, NULL \
                 FROM generate_series(1, 10) g, \
                      aws_comprehend.detect_sentiment('text ' || g, 'en') s ORDER BY g",
            )
            .await
            .expect("select"),
    );
    assert_eq!(table_rows(&direct, "dml_insert").await, select);

    // A conflict fails the whole statement: nothing half-written.
    let error = client
        .simple_query(
            "INSERT INTO dml_insert (id, answer) \
             SELECT g + 8, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(1, 5) g",
        )
        .await
        .expect_err("duplicate key");
    assert_eq!(sqlstate(&error), "23505");
    assert_eq!(table_rows(&direct, "dml_insert").await.len(), 10);
    // An inference failure too, and the session goes on.
    let error = client
        .simple_query(
            "INSERT INTO dml_insert (id, answer) \
             SELECT g + 100, aws_sagemaker.invoke_endpoint('model-error', NULL, g) \
             FROM generate_series(1, 5) g",
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000");
    assert_eq!(table_rows(&direct, "dml_insert").await.len(), 10);

    // ON CONFLICT and RETURNING, extended protocol with a parameter.
    let rows = client
        .query(
            "INSERT INTO dml_insert (id, answer) \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(9, $1::int) g \
             ON CONFLICT (id) DO UPDATE SET answer = EXCLUDED.answer \
             RETURNING id, answer",
            &[&12i32],
        )
        .await
        .expect("upsert");
    assert_eq!(rows.len(), 4);
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [9, 10, 11, 12]);
    let after = table_rows(&direct, "dml_insert").await;
    assert_eq!(after.len(), 12);
    assert!(after[8..].iter().all(|r| r[3].is_some()), "{after:?}");

    // Inside the client's block: rolled back with it.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .simple_query(
            "INSERT INTO dml_insert (id, label) \
             SELECT 50 + g, (aws_comprehend.detect_sentiment('x' || g, 'en')).sentiment \
             FROM generate_series(1, 3) g",
        )
        .await
        .expect("insert in block");
    let inside = client
        .query_one("SELECT count(*) FROM dml_insert", &[])
        .await
        .expect("count");
    assert_eq!(inside.get::<_, i64>(0), 15);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(table_rows(&direct, "dml_insert").await.len(), 12);

    // A prepared INSERT without RETURNING, executed twice.
    let statement = client
        .prepare(
            "INSERT INTO dml_insert (id, label) \
             SELECT g, (aws_comprehend.detect_sentiment(t, 'en')).sentiment \
             FROM unnest($1::int[], $2::text[]) AS u(g, t)",
        )
        .await
        .expect("prepare");
    assert!(statement.columns().is_empty());
    let n = client
        .execute(&statement, &[&vec![200i32, 201], &vec!["good", "bad"]])
        .await
        .expect("execute");
    assert_eq!(n, 2);
    let n = client
        .execute(&statement, &[&vec![202i32], &vec!["fine"]])
        .await
        .expect("execute again");
    assert_eq!(n, 1);
    assert_eq!(table_rows(&direct, "dml_insert").await.len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_on_a_standby_fails_as_natively() {
    table(&connect(&postgres().direct_conninfo()).await, "dml_standby").await;
    standby().wait_for_replay();
    let proxy = Proxy::start_on_standby().await;
    let client = proxy.connect().await;
    let error = client
        .simple_query(
            "INSERT INTO dml_standby (id) \
             SELECT g FROM generate_series(1, 2) g \
             WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::int > 0",
        )
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&error), "25006", "{error}");
    assert_eq!(
        proxy.mock.stats().sagemaker_calls,
        0,
        "nothing is scored for an INSERT that cannot run"
    );
    client.simple_query("SELECT 1").await.expect("usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_in_a_read_only_transaction_fails_before_scoring() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    table(&client, "dml_read_only").await;
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .expect("begin");
    let error = client
        .simple_query(
            "INSERT INTO dml_read_only (id, label) \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(1, 3) g",
        )
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&error), "25006", "{error}");
    assert_eq!(proxy.mock.stats().sagemaker_calls, 0);
    // Prepared too (the extended protocol checks at the first Execute).
    let error = client
        .execute(
            "UPDATE dml_read_only SET answer = aws_sagemaker.invoke_endpoint('score', NULL, id)",
            &[],
        )
        .await
        .expect_err("read-only");
    assert_eq!(
        sqlstate(&error),
        "25P02",
        "the block was already aborted: {error}"
    );
    client
        .batch_execute("ROLLBACK; BEGIN READ ONLY")
        .await
        .expect("again");
    let error = client
        .execute(
            "INSERT INTO dml_read_only (id, answer) \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(1, $1::int) g",
            &[&3i32],
        )
        .await
        .expect_err("read-only");
    assert_read_only(&error, "INSERT");
    client
        .batch_execute("ROLLBACK; BEGIN READ ONLY")
        .await
        .expect("again");
    // An UPDATE's base locks its rows: PostgreSQL refuses that at Bind, before any call.
    let error = client
        .execute(
            "UPDATE dml_read_only SET answer = aws_sagemaker.invoke_endpoint('score', NULL, id)",
            &[],
        )
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&error), "25006", "{error}");
    assert_eq!(proxy.mock.stats().sagemaker_calls, 0);
    // The transaction is aborted, as natively.
    let error = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&error), "25P02", "{error}");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(table_rows(&client, "dml_read_only").await.is_empty());

    // As natively, an INSERT into a temporary table may run in a READ ONLY transaction.
    client
        .batch_execute("CREATE TEMP TABLE dml_temp (id int, answer text); BEGIN READ ONLY")
        .await
        .expect("temp table");
    let n = client
        .execute(
            "INSERT INTO pg_temp.dml_temp \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(1, 3) g",
            &[],
        )
        .await
        .expect("insert into a temporary table");
    assert_eq!(n, 3);
    let n = client
        .simple_query(
            "INSERT INTO dml_temp \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) \
             FROM generate_series(4, 5) g",
        )
        .await
        .expect("simple protocol too");
    assert!(!n.is_empty());
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(table_rows(&client, "dml_temp").await.len(), 5);
}

/// A table's columns (name and type) and rows, to compare one made through pgenrich with one
/// made natively.
async fn described(client: &tokio_postgres::Client, name: &str) -> Vec<Vec<Option<String>>> {
    let mut out = text_rows(
        &client
            .simple_query(&format!(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = '{name}'::regclass AND attnum > 0 ORDER BY attnum"
            ))
            .await
            .expect("columns"),
    );
    out.extend(table_rows(client, name).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_as_and_select_into_match_native() {
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start_with(|c| c.inference.chunk_rows = 4).await;
    let client = proxy.connect().await;
    let statements = [
        (
            "dml_ctas",
            "CREATE TABLE dml_ctas AS \
             SELECT g AS id, s.sentiment, s.confidence, \
                    aws_sagemaker.invoke_endpoint('score', NULL, g) AS answer \
             FROM generate_series(1, 10) g, \
                  aws_comprehend.detect_sentiment('text ' || g, 'en') s \
             WHERE s.confidence > 0",
        ),
        (
            "dml_into",
            "SELECT g AS id, (aws_comprehend.detect_sentiment('x' || g, 'en')).*, \
                    aws_sagemaker.invoke_endpoint('score', NULL, g) AS answer \
             INTO TEMP dml_into FROM generate_series(1, 7) g ORDER BY g",
        ),
        (
            "dml_into_where",
            "SELECT g AS id INTO UNLOGGED dml_into_where FROM generate_series(1, 9) g \
             WHERE (aws_comprehend.detect_sentiment( \
                      CASE WHEN g % 3 = 0 THEN 'good' ELSE 'bad' END, 'en')).sentiment \
                   = 'POSITIVE'",
        ),
    ];
    for (name, sql) in statements {
        for c in [&client, &native] {
            c.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await
                .expect("drop");
        }
        let ours = command_count(&client.simple_query(sql).await.expect(name));
        let theirs = command_count(&native.simple_query(sql).await.expect(name));
        assert_eq!(ours, theirs, "{name}: tag");
        assert!(ours.is_some_and(|n| n > 0), "{name}: {ours:?}");
        assert_eq!(
            described(&client, name).await,
            described(&native, name).await,
            "{name}: columns and rows"
        );
    }

    // A whole record as a column fails as natively (a column cannot be of type record).
    let record = "CREATE TEMP TABLE dml_record AS \
                  SELECT g, aws_comprehend.detect_sentiment('x' || g, 'en') AS s \
                  FROM generate_series(1, 3) g";
    let ours = client.simple_query(record).await.expect_err("record");
    let theirs = native.simple_query(record).await.expect_err("record");
    assert_eq!(sqlstate(&ours), sqlstate(&theirs), "{ours} / {theirs}");

    // Atomic: an inference failure creates nothing; the session goes on.
    let error = client
        .simple_query(
            "CREATE TABLE dml_ctas_failed AS \
             SELECT g, aws_sagemaker.invoke_endpoint('model-error', NULL, g) \
             FROM generate_series(1, 5) g",
        )
        .await
        .expect_err("model error");
    assert_eq!(sqlstate(&error), "38000", "{error}");
    let exists = client
        .query_one("SELECT to_regclass('dml_ctas_failed') IS NOT NULL", &[])
        .await
        .expect("check");
    assert!(!exists.get::<_, bool>(0));
    // PostgreSQL's own errors come as they are.
    let error = client
        .simple_query(statements[0].1)
        .await
        .expect_err("exists");
    assert_eq!(sqlstate(&error), "42P07", "{error}");
    // WITH NO DATA never runs the query: refused rather than billed.
    let error = client
        .simple_query(
            "CREATE TABLE dml_ctas_empty AS \
             SELECT aws_sagemaker.invoke_endpoint('score', NULL, 1) WITH NO DATA",
        )
        .await
        .expect_err("no data");
    assert_eq!(sqlstate(&error), "0A000", "{error}");

    // Extended protocol, with a parameter, inside a block that rolls back.
    client.batch_execute("BEGIN").await.expect("begin");
    let n = client
        .execute(
            "CREATE TABLE dml_ctas_param AS \
             SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) AS answer \
             FROM generate_series(1, $1::int) g",
            &[&6i32],
        )
        .await
        .expect("prepared CTAS");
    assert_eq!(n, 6);
    assert_eq!(table_rows(&client, "dml_ctas_param").await.len(), 6);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let exists = client
        .query_one("SELECT to_regclass('dml_ctas_param') IS NOT NULL", &[])
        .await
        .expect("check");
    assert!(!exists.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_larger_than_max_buffered_bytes_runs_chunk_by_chunk() {
    let proxy = Proxy::start_with(|c| c.max_buffered_bytes = 1 << 20).await;
    let client = proxy.connect().await;
    table(&client, "dml_backfill").await;
    // About 4 MB of base rows: held at once they would exceed max_buffered_bytes.
    let insert = "INSERT INTO dml_backfill (id, label, answer) \
                  SELECT g, (aws_comprehend.detect_sentiment(CASE WHEN g % 2 = 0 \
                             THEN 'good' ELSE 'bad' END, 'en')).sentiment, \
                         aws_sagemaker.invoke_endpoint('score', NULL, g) || repeat('x', 60) \
                  FROM generate_series(1, 40000) g";
    let out = client.simple_query(insert).await.expect("backfill");
    let tag = command_count(&out);
    assert_eq!(tag, Some(40000));
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT label), count(answer) FROM dml_backfill",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (40000, 2, 40000)
    );
    // Prepared and executed to the end (as drivers do), it runs chunk by chunk too.
    let n = client
        .execute(&insert.replace("(1, 40000)", "(50001, 90000)"), &[])
        .await
        .expect("prepared backfill");
    assert_eq!(n, 40000);
    // An Execute with a row limit runs a write whole (later chunks would stay unwritten if the
    // client closed the portal): the same backfill then stops at max_buffered_bytes, before
    // any call, and a small one writes every row though the client read only some.
    let mut limited = proxy.connect().await;
    let calls = proxy.mock.stats().sagemaker_calls;
    let tx = limited.transaction().await.expect("begin");
    let big = tx
        .prepare(&format!(
            "{} RETURNING id",
            insert.replace("(1, 40000)", "(100001, 140000)")
        ))
        .await
        .expect("prepare");
    let portal = tx.bind(&big, &[]).await.expect("bind");
    let error = tx
        .query_portal(&portal, 10)
        .await
        .expect_err("over max_buffered_bytes");
    assert_eq!(sqlstate(&error), "54000", "{error}");
    assert_eq!(proxy.mock.stats().sagemaker_calls, calls);
    tx.rollback().await.expect("rollback");
    let tx = limited.transaction().await.expect("begin");
    let small = tx
        .prepare(&format!(
            "{} RETURNING id",
            insert.replace("(1, 40000)", "(200001, 200030)")
        ))
        .await
        .expect("prepare");
    let portal = tx.bind(&small, &[]).await.expect("bind");
    let first = tx.query_portal(&portal, 5).await.expect("first rows");
    assert_eq!(first.len(), 5);
    tx.commit().await.expect("commit");
    let row = client
        .query_one("SELECT count(*) FROM dml_backfill WHERE id > 200000", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 30);
    // A failure in a late chunk (a document over Comprehend's 5,000 bytes) leaves nothing of
    // the earlier chunks, which PostgreSQL had already written in the same transaction.
    let error = client
        .simple_query(
            "INSERT INTO dml_backfill (id, label) \
             SELECT g, (aws_comprehend.detect_sentiment( \
                    CASE WHEN g = 139990 THEN repeat('x', 6000) ELSE 'fine' END, 'en')).sentiment \
             FROM generate_series(100001, 140000) g",
        )
        .await
        .expect_err("oversized document");
    assert!(
        error
            .as_db_error()
            .is_some_and(|e| e.message().contains("5000") || e.message().contains("5,000")),
        "{error:?}"
    );
    let row = client
        .query_one("SELECT count(*) FROM dml_backfill", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 80030);
}
