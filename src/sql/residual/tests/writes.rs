//! Plans of statements that write: INSERT … SELECT, CREATE TABLE AS, SELECT INTO, UPDATE and
//! DELETE with ML calls.
use super::{ok, residual};

#[test]
fn insert_select_runs_as_the_residual_over_all_base_rows() {
    let p = ok(
        "INSERT INTO t (a, b) SELECT x, aws_sagemaker.invoke_endpoint('e', NULL, x) FROM s \
                WHERE x > 1 ON CONFLICT (a) DO NOTHING RETURNING a",
    );
    // Row-local: the session may run it per chunk.
    assert!(p.writes() && p.row_local.is_some());
    assert_eq!(p.blocks.len(), 1);
    assert!(
        p.blocks[0].base_sql.contains("FROM s WHERE x > 1"),
        "{}",
        p.blocks[0].base_sql
    );
    let r = residual(&p);
    assert!(r.starts_with("INSERT INTO t (a, b) SELECT "), "{r}");
    assert!(r.ends_with("ON CONFLICT(a) DO NOTHING RETURNING a"), "{r}");
    assert!(!ok("SELECT aws_sagemaker.invoke_endpoint('e', NULL, x) FROM s WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) > '1'").writes());
}

#[test]
fn create_table_as_and_select_into_run_as_the_residual() {
    let p = ok(
        "CREATE TEMP TABLE t AS SELECT x, aws_sagemaker.invoke_endpoint('e', NULL, x) AS y \
                FROM s ORDER BY x",
    );
    assert_eq!(
        p.modifies.as_ref().map(|w| w.command.name()),
        Some("CREATE TABLE AS")
    );
    assert!(p.row_local.is_none());
    let r = residual(&p);
    assert!(r.starts_with("CREATE TEMPORARY TABLE t AS SELECT "), "{r}");
    assert!(
        !p.blocks[0].base_sql.contains("TABLE"),
        "{}",
        p.blocks[0].base_sql
    );

    let p = ok("SELECT x, aws_sagemaker.invoke_endpoint('e', NULL, x) AS y INTO UNLOGGED u FROM s");
    assert_eq!(
        p.modifies.as_ref().map(|w| w.command.name()),
        Some("SELECT INTO")
    );
    let r = residual(&p);
    assert!(r.starts_with("CREATE UNLOGGED TABLE u AS SELECT "), "{r}");
    assert!(!r.contains("INTO"), "{r}");
    assert!(
        !p.blocks[0].base_sql.contains("INTO"),
        "{}",
        p.blocks[0].base_sql
    );
    // SELECT INTO is never planned as a streaming SELECT (whose base would create the table).
    assert!(crate::sql::plan::plan(
        "SELECT aws_sagemaker.invoke_endpoint('e', NULL, x) INTO u FROM s"
    )
    .is_err());
}

#[test]
fn update_and_delete_lock_the_target_rows_and_join_on_their_identity() {
    let p = ok(
        "UPDATE reviews r SET label = (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment \
                WHERE r.id > 3 RETURNING r.id, r.label",
    );
    let w = p.modifies.as_ref().expect("writes");
    assert_eq!(
        (w.command.name(), w.table.as_deref(), w.chunkable),
        ("UPDATE", Some("reviews"), true)
    );
    let base = &p.blocks[0].base_sql;
    assert!(
        base.contains("r.ctid") && base.contains("r.tableoid"),
        "{base}"
    );
    assert!(
        base.contains("WHERE r.id > 3") && base.ends_with(" FOR UPDATE OF r"),
        "{base}"
    );
    let r = residual(&p);
    assert!(
        r.starts_with("UPDATE reviews r SET label = \"pgenrich.q\".\"pgenrich.v0\" FROM (SELECT "),
        "{r}"
    );
    assert!(
        r.ends_with("WHERE r.tableoid = \"pgenrich.q\".\"pgenrich.toid\" AND r.ctid = \"pgenrich.q\".\"pgenrich.ctid\" RETURNING r.id, r.label"),
        "{r}"
    );

    let p =
        ok("DELETE FROM s.reviews WHERE aws_sagemaker.invoke_endpoint('e', NULL, body)::int < 0");
    let w = p.modifies.as_ref().expect("writes");
    assert_eq!(
        (w.command.name(), w.table.as_deref()),
        ("DELETE", Some("s.reviews"))
    );
    assert!(
        p.blocks[0].base_sql.ends_with(" FOR UPDATE OF reviews"),
        "{}",
        p.blocks[0].base_sql
    );
    let r = residual(&p);
    assert!(r.starts_with("DELETE FROM s.reviews USING (SELECT "), "{r}");

    // ONLY and DEFAULT stay as written.
    let p = ok("UPDATE ONLY t SET a = DEFAULT, b = aws_sagemaker.invoke_endpoint('e', NULL, c)");
    let r = residual(&p);
    assert!(
        r.starts_with("UPDATE ONLY t SET a = DEFAULT, b = \"pgenrich.q\".\"pgenrich.v0\" FROM"),
        "{r}"
    );
    assert!(
        p.blocks[0].base_sql.contains("FROM ONLY t"),
        "{}",
        p.blocks[0].base_sql
    );

    // With FROM, a target row may meet several rows: never chunked.
    let p = ok(
        "UPDATE t SET y = aws_sagemaker.invoke_endpoint('e', NULL, u.x) FROM u WHERE u.id = t.id",
    );
    assert!(!p.modifies.as_ref().expect("writes").chunkable && p.row_local.is_none());
}
