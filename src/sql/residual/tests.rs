//! Plans asserted as data, without I/O: base relation, residual and parameters per position.
use super::*;

mod subqueries;
mod writes;

fn ok(sql: &str) -> ResidualPlan {
    plan(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

fn refused(sql: &str) -> PlanError {
    match plan(sql) {
        Ok(p) => panic!("{sql} was planned: {p:?}"),
        Err(e) => e,
    }
}

fn residual(p: &ResidualPlan) -> String {
    let described: Vec<Described> = p
        .blocks
        .iter()
        .map(|b| Described {
            types: (0..b.carried.len())
                .map(|i| CarriedType {
                    name: format!("t{i}"),
                    as_text: false,
                })
                .collect(),
            stars: Vec::new(),
        })
        .collect();
    p.residual_sql(&described, 1)
}

#[test]
fn where_splits_into_base_filters_and_residual_ml_conditions() {
    let p = ok("SELECT r.id, upper(r.body) FROM reviews r \
                WHERE r.id > 10 AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'POSITIVE'");
    // Filters and projections only: the residual can run per chunk.
    assert_eq!(p.row_local.as_deref(), Some(&["upper".to_owned()][..]));
    for sql in [
        "SELECT count(*) FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1'",
        "SELECT x FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1' ORDER BY x",
        "SELECT DISTINCT x FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1'",
        "SELECT x, rank() OVER () FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1'",
        "SELECT x FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1' LIMIT 1",
    ] {
        let p = ok(sql);
        // count is listed for the database to classify; the others are structural.
        assert!(
            p.row_local
                .as_ref()
                .is_none_or(|f| f.contains(&"count".to_owned())),
            "{sql}"
        );
    }
    let p = ok("SELECT r.id, r.body FROM reviews r \
                WHERE r.id > 10 AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'POSITIVE'");
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT r.body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", r.id AS \"pgenrich:c0\", \
         r.body AS \"pgenrich:c1\" FROM reviews r WHERE r.id > 10"
    );
    assert_eq!(p.blocks[0].arg_columns, 2);
    assert_eq!(p.blocks[0].carried, ["r.id", "r.body"]);
    assert_eq!(
        p.blocks[0].calls,
        [Call {
            function: MlFunction::DetectSentiment,
            first_arg: 0,
            arg_count: 2
        }]
    );
    assert_eq!(
        residual(&p),
        "SELECT pgenrich_base0.c0 AS \"id\", pgenrich_base0.c1 AS \"body\" FROM \
         (SELECT u.c0::t0 AS c0, u.c1::t1 AS c1, u.m0_sentiment, u.m0_confidence \
         FROM (SELECT unnest($1::t0[]) AS c0, unnest($2::t1[]) AS c1, \
         unnest($3::varchar[]) AS m0_sentiment, unnest($4::float4[]) AS m0_confidence) AS u) \
         AS pgenrich_base0 \
         WHERE pgenrich_base0.m0_sentiment = 'POSITIVE'"
    );
}

#[test]
fn group_by_having_order_by_and_aggregates_stay_in_the_residual() {
    let p = ok("SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label, count(*), \
                avg(stars) FILTER (WHERE stars > 1) FROM reviews GROUP BY label HAVING count(*) > 1 \
                ORDER BY label LIMIT 3 OFFSET 1");
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", stars AS \"pgenrich:c0\" FROM reviews"
    );
    let r = residual(&p);
    assert!(
        r.starts_with(
            "SELECT pgenrich_base0.m0_sentiment AS label, count(*), \
             avg(pgenrich_base0.c0) FILTER (WHERE pgenrich_base0.c0 > 1) AS \"avg\" FROM ("
        ),
        "{r}"
    );
    assert!(
        r.ends_with("GROUP BY label HAVING count(*) > 1 ORDER BY label LIMIT 3 OFFSET 1"),
        "{r}"
    );
}

#[test]
fn casts_and_expressions_around_calls_keep_postgres_column_names() {
    let p = ok("SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, amount)::float, \
                CASE WHEN aws_sagemaker.invoke_endpoint('score', NULL, amount)::float > 2 THEN 'hi' END, \
                upper((aws_comprehend.detect_sentiment(note, 'en')).sentiment) FROM tx ORDER BY 2 DESC");
    // The same call twice is one call.
    assert_eq!(p.blocks[0].calls.len(), 2);
    assert_eq!(p.blocks[0].carried, ["id"]);
    let r = residual(&p);
    assert!(
        r.starts_with(
            "SELECT pgenrich_base0.c0 AS \"id\", pgenrich_base0.m0::FLOAT AS \"invoke_endpoint\", \
             CASE WHEN pgenrich_base0.m0::FLOAT > 2 THEN 'hi' END AS \"case\", \
             upper(pgenrich_base0.m1_sentiment) AS \"upper\" FROM"
        ),
        "{r}"
    );
    assert!(r.ends_with("ORDER BY 2 DESC"), "{r}");
}

#[test]
fn table_function_columns_filter_and_sort_in_the_residual() {
    let p = ok("SELECT r.id, s.sentiment, confidence FROM reviews r, \
                aws_comprehend.detect_sentiment(r.body, 'en') s \
                WHERE s.confidence > 0.5 AND r.id < 100 ORDER BY s.confidence DESC, r.id");
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT r.body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", r.id AS \"pgenrich:c0\" \
         FROM reviews r WHERE r.id < 100"
    );
    let r = residual(&p);
    assert!(
        r.ends_with(
            "WHERE pgenrich_base0.m0_confidence > 0.5 \
             ORDER BY pgenrich_base0.m0_confidence DESC, pgenrich_base0.c0"
        ),
        "{r}"
    );
    assert!(r.starts_with("SELECT pgenrich_base0.c0 AS \"id\", pgenrich_base0.m0_sentiment AS \"sentiment\", pgenrich_base0.m0_confidence AS \"confidence\""), "{r}");
}

#[test]
fn inner_join_conditions_with_ml_become_residual_filters() {
    let p = ok(
        "SELECT a.id, b.id FROM tx a JOIN tx b ON a.id < b.id \
                AND aws_sagemaker.invoke_endpoint('score', NULL, a.amount, b.amount)::numeric > 10",
    );
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT 'score' AS \"pgenrich:arg0\", NULL AS \"pgenrich:arg1\", a.amount AS \"pgenrich:arg2\", \
         b.amount AS \"pgenrich:arg3\", a.id AS \"pgenrich:c0\", b.id AS \"pgenrich:c1\" \
         FROM tx a JOIN tx b ON a.id < b.id"
    );
    assert!(residual(&p).ends_with("WHERE pgenrich_base0.m0::NUMERIC > 10"));
}

#[test]
fn the_typing_statement_types_parameters_as_the_native_functions_would() {
    let p = ok("SELECT r.id FROM reviews r, aws_comprehend.detect_sentiment(r.body, $1) s \
                WHERE s.confidence > $2 AND aws_sagemaker.invoke_endpoint($3, NULL, r.id)::float > $4 \
                AND (aws_comprehend.detect_sentiment(r.title, 'en')).sentiment = $5");
    assert_eq!(
        p.typing_sql.as_deref().expect("has parameters"),
        "SELECT r.id FROM reviews r, LATERAL (SELECT NULL::VARCHAR AS sentiment, NULL::REAL AS confidence \
         WHERE (r.body)::VARCHAR IS NULL OR ($1)::VARCHAR IS NULL) AS s \
         WHERE s.confidence > $2 AND (CASE WHEN ($3)::VARCHAR IS NULL OR (NULL)::INT4 IS NULL \
         OR (r.id) IS NULL THEN NULL::VARCHAR END)::FLOAT > $4 \
         AND (CASE WHEN (r.title)::VARCHAR IS NULL OR ('en')::VARCHAR IS NULL THEN NULL::VARCHAR END) = $5"
    );
}

#[test]
fn distinct_windows_and_whole_records() {
    let p = ok("SELECT DISTINCT ON (aws_comprehend.detect_sentiment(body, 'en')) id, \
                aws_comprehend.detect_sentiment(body, 'en'), \
                rank() OVER (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment ORDER BY id) \
                FROM reviews ORDER BY aws_comprehend.detect_sentiment(body, 'en'), id");
    assert_eq!(p.blocks[0].calls.len(), 1);
    let r = residual(&p);
    assert!(
        r.starts_with(
            "SELECT DISTINCT ON (pgenrich_base0.m0) pgenrich_base0.c0 AS \"id\", \
             pgenrich_base0.m0 AS \"detect_sentiment\", rank() OVER \
             (PARTITION BY pgenrich_base0.m0_sentiment ORDER BY pgenrich_base0.c0) AS \"rank\""
        ),
        "{r}"
    );
    // The whole record is a row of a lateral subquery: two NULLs where the call gave NULL.
    assert!(
        r.contains(
            "x0 AS m0 FROM (SELECT unnest($1::t0[]) AS c0, unnest($2::varchar[]) AS m0_sentiment, \
             unnest($3::float4[]) AS m0_confidence) AS u CROSS JOIN LATERAL (SELECT u.m0_sentiment AS sentiment, \
             u.m0_confidence AS confidence) AS x0)"
        ),
        "{r}"
    );
}

#[test]
fn subqueries_are_carried_and_correlated_references_replaced() {
    let p = ok("SELECT id FROM reviews r WHERE \
                (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE' \
                OR EXISTS (SELECT 1 FROM flags f WHERE f.review_id = r.id) \
                AND r.id IN (SELECT review_id FROM flags)");
    assert_eq!(p.blocks[0].carried.len(), 3, "{:?}", p.blocks[0].carried);
    assert!(
        p.blocks[0].carried[1].starts_with("EXISTS (SELECT 1 FROM flags"),
        "{:?}",
        p.blocks[0].carried
    );
    assert!(
        p.blocks[0].carried[2].starts_with("r.id IN (SELECT"),
        "{:?}",
        p.blocks[0].carried
    );
}

#[test]
fn unsupported_forms_are_refused_with_a_hint() {
    for sql in [
        "INSERT INTO t VALUES (aws_sagemaker.invoke_endpoint('e', NULL, 1))",
        "CREATE TABLE t AS SELECT aws_sagemaker.invoke_endpoint('e', NULL, 1) WITH NO DATA",
        "SELECT aws_sagemaker.invoke_endpoint('e', NULL, 1) INTO a, b",
        "INSERT INTO t SELECT x FROM s RETURNING aws_sagemaker.invoke_endpoint('e', NULL, x)",
        "INSERT INTO t SELECT x FROM s ON CONFLICT (x) DO UPDATE SET y = aws_sagemaker.invoke_endpoint('e', NULL, 1)",
        "UPDATE t SET (y, z) = (aws_sagemaker.invoke_endpoint('e', NULL, x), 1)",
        "UPDATE t SET y = 1 FROM u WHERE aws_sagemaker.invoke_endpoint('e', NULL, u.x) = '1' RETURNING u.x",
        "UPDATE t SET y = 1 WHERE x IN (SELECT aws_sagemaker.invoke_endpoint('e', NULL, z) FROM u)",
        "DELETE FROM t RETURNING aws_sagemaker.invoke_endpoint('e', NULL, x)",
        "SELECT * FROM t, aws_comprehend.detect_sentiment(x, 'en') s WHERE s.sentiment = 'x'",
        "SELECT x FROM t WHERE EXISTS (SELECT 1 FROM s WHERE aws_sagemaker.invoke_endpoint('e', NULL, t.x) = '1')",
        "WITH w AS (SELECT aws_sagemaker.invoke_endpoint('e', NULL, x) v FROM t) SELECT aws_sagemaker.invoke_endpoint('e', NULL, v) FROM w",
        "SELECT aws_sagemaker.invoke_endpoint('e', NULL, v) FROM (SELECT aws_sagemaker.invoke_endpoint('f', NULL, x) v FROM t) sub WHERE v > '1'",
        "SELECT x, aws_sagemaker.invoke_endpoint('e', NULL, s.y) FROM t LEFT JOIN s ON aws_sagemaker.invoke_endpoint('e', NULL, x) = s.y",
        "SELECT x FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, aws_sagemaker.invoke_endpoint('f', NULL, x)) = '1'",
        "SELECT x FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) = '1' FOR UPDATE",
    ] {
        let error = refused(sql);
        assert_eq!(error.code, SqlState::FeatureNotSupported, "{sql}: {error:?}");
        assert!(error.hint.is_some(), "{sql}");
    }
    assert_eq!(
        refused("SELECT 1 FROM t WHERE aws_comprehend.detect_sentiment(x) IS NULL").code,
        SqlState::UndefinedFunction
    );
}

#[test]
fn stars_are_listed_once_the_base_is_described() {
    let p = ok("SELECT *, r.* FROM reviews r \
                WHERE aws_sagemaker.invoke_endpoint('e', NULL, id) = '1'");
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT 'e' AS \"pgenrich:arg0\", NULL AS \"pgenrich:arg1\", id AS \"pgenrich:arg2\", \
         *, NULL AS \"pgenrich:end0\", r.*, NULL AS \"pgenrich:end1\" FROM reviews r"
    );
    let names: Vec<String> = [
        "pgenrich:arg0",
        "pgenrich:arg1",
        "pgenrich:arg2",
        "id",
        "say \"hi\"",
        "pgenrich:end0",
        "id",
        "say \"hi\"",
        "pgenrich:end1",
    ]
    .iter()
    .map(|n| n.to_string())
    .collect();
    let (values, stars) = p.blocks[0].value_columns(&names).expect("planned shape");
    assert_eq!(values, [3, 4, 6, 7]);
    let types = vec![
        CarriedType {
            name: "integer".into(),
            as_text: false
        };
        4
    ];
    let r = p.residual_sql(&[Described { types, stars }], 1);
    assert!(
        r.starts_with(
            "SELECT pgenrich_base0.c0 AS \"id\", pgenrich_base0.c1 AS \"say \"\"hi\"\"\", \
             pgenrich_base0.c2 AS \"id\", pgenrich_base0.c3 AS \"say \"\"hi\"\"\" FROM"
        ),
        "{r}"
    );
    assert!(p.blocks[0].value_columns(&names[..5]).is_none());
}

#[test]
fn blocks_in_ctes_subqueries_and_set_operations_each_get_a_base() {
    let p = ok("WITH labelled AS (SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s FROM reviews), \
                plain AS (SELECT id FROM flags) \
                SELECT s, count(*) FROM labelled WHERE id IN (SELECT id FROM plain) GROUP BY s \
                UNION ALL \
                SELECT category, count(*) FROM products WHERE aws_sagemaker.invoke_endpoint('e', NULL, price)::float > \
                  (SELECT avg(price) FROM products) GROUP BY category ORDER BY 1");
    assert_eq!(p.blocks.len(), 2);
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", id AS \"pgenrich:c0\" FROM reviews"
    );
    // The second block's base knows the plain CTE; its subquery is carried whole.
    assert!(
        p.blocks[1]
            .base_sql
            .starts_with("WITH plain AS (SELECT id FROM flags) SELECT 'e'"),
        "{}",
        p.blocks[1].base_sql
    );
    let r = residual(&p);
    assert!(r.starts_with("WITH labelled AS (SELECT pgenrich_base0.c0 AS \"id\", pgenrich_base0.m0_sentiment AS s FROM (SELECT"), "{r}");
    assert!(r.contains("AS pgenrich_base1 WHERE pgenrich_base1.m0::FLOAT > pgenrich_base1.c1 GROUP BY pgenrich_base1.c0 ORDER BY 1"), "{r}");
    assert!(
        r.contains("unnest($4::t0[]) AS c0, unnest($5::t1[]) AS c1, unnest($6::varchar[]) AS m0"),
        "{r}"
    );
    // A subquery correlated by a plain condition: the condition moves to the residual.
    let p = ok(
        "SELECT x FROM t WHERE x IN (SELECT y FROM s WHERE s.y = t.x \
                AND aws_sagemaker.invoke_endpoint('e', NULL, y) = '1')",
    );
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT 'e' AS \"pgenrich:arg0\", NULL AS \"pgenrich:arg1\", y AS \"pgenrich:arg2\", \
         y AS \"pgenrich:c0\", s.y AS \"pgenrich:c1\" FROM s"
    );
    assert!(residual(&p).ends_with("WHERE pgenrich_base0.m0 = '1' AND pgenrich_base0.c1 = t.x)"));
    // An uncorrelated subquery with ML calls inside a WHERE.
    let p = ok(
        "SELECT id FROM tx WHERE customer IN (SELECT id FROM customers \
                WHERE aws_sagemaker.invoke_endpoint('vip', NULL, spend)::float > 0.5)",
    );
    assert_eq!(p.blocks.len(), 1);
    assert!(residual(&p).starts_with(
        "SELECT id FROM tx WHERE customer IN (SELECT pgenrich_base0.c0 AS \"id\" FROM"
    ));
}

#[test]
fn column_names_follow_postgres() {
    for (expr, name) in [
        ("a", "a"),
        ("T.\"Mixed\"", "Mixed"),
        ("Upper(x)", "upper"),
        ("x::int", "x"),
        ("(1 + 2)::bigint", "int8"),
        ("'a' || 'b'", "?column?"),
        ("CASE WHEN true THEN 1 END", "case"),
        ("(f(x)).field", "field"),
        // UTF-8 databases fold ASCII letters only.
        ("ÄBc", "Äbc"),
        ("\"ÄBc\"", "ÄBc"),
    ] {
        assert_eq!(
            column_name(&parse_expr(expr).expect("an expression")),
            name,
            "{expr}"
        );
    }
}

#[test]
fn left_join_lateral_conditions_null_the_function_columns() {
    let p = ok("SELECT r.id, s.sentiment FROM reviews r \
                LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
                ON s.sentiment <> 'NEUTRAL' ORDER BY r.id");
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT r.body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", r.id AS \"pgenrich:c0\" FROM reviews AS r"
            .replace(" AS r", " r")
    );
    assert!(
        residual(&p).starts_with(
            "SELECT pgenrich_base0.c0 AS \"id\", CASE WHEN pgenrich_base0.m0_sentiment <> 'NEUTRAL' \
             THEN pgenrich_base0.m0_sentiment END AS \"sentiment\" FROM"
        ),
        "{}",
        residual(&p)
    );
    let error = refused(
        "SELECT r.id FROM reviews r LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
         ON aws_sagemaker.invoke_endpoint('e', NULL, s.sentiment) = '1'",
    );
    assert_eq!(error.code, SqlState::FeatureNotSupported);
}

#[test]
fn a_block_copied_with_a_lateral_condition_gets_its_base_rows_in_every_copy() {
    // The ON condition stands in every reference to the function's columns (here two), and so
    // does the subquery in it, an ML block of its own. Found by the sql_ast fuzz target: only
    // the first copy got the block's base rows; the second kept the marker.
    let p = ok(
        "SELECT r.id BETWEEN s.sentiment AND 10, s.sentiment FROM reviews r \
                LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
                ON s.sentiment <> EXISTS (SELECT 1 FROM t \
                WHERE aws_comprehend.detect_sentiment('a', 'en') = s.sentiment)",
    );
    assert_eq!(p.blocks.len(), 2);
    let sql = residual(&p);
    assert!(!sql.contains(BASE_MARKER), "{sql}");
    assert_eq!(sql.matches("AS pgenrich_base0").count(), 2, "{sql}");
    // The function's column in the subquery is the outer block's base column (it stayed `s.…`,
    // a name the residual does not have).
    assert!(!sql.contains("s.sentiment"), "{sql}");
    assert_eq!(
        sql.matches("pgenrich_base0.m0 = pgenrich_base1.m0_sentiment")
            .count(),
        2,
        "{sql}"
    );
}

#[test]
fn subqueries_see_table_function_columns_as_base_columns_unless_they_name_their_own() {
    let sql = residual(&ok(
        "SELECT r.id, (SELECT max(t.x) FROM t WHERE t.x = s.sentiment) \
         FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s",
    ));
    assert!(
        sql.contains("WHERE t.x = pgenrich_base0.m0_sentiment)"),
        "{sql}"
    );
    // Under LEFT JOIN LATERAL the condition's subquery sees the column as it is, and stays in
    // the residual (the base has no such column).
    let p = ok("SELECT r.id, s.sentiment FROM reviews r \
                LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
                ON EXISTS (SELECT 1 FROM t WHERE t.x = s.sentiment)");
    assert!(!p.blocks[0].base_sql.contains("EXISTS"), "{p:?}");
    let sql = residual(&p);
    assert!(
        sql.contains(
            "CASE WHEN EXISTS (SELECT 1 FROM t WHERE t.x = pgenrich_base0.m0_sentiment) THEN"
        ),
        "{sql}"
    );
    // A subquery's own FROM item of the same name is its own.
    let sql = residual(&ok(
        "SELECT r.id FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
         WHERE s.sentiment = 'POSITIVE' AND EXISTS (SELECT 1 FROM t AS s WHERE s.x = 1)",
    ));
    assert!(
        sql.contains("EXISTS (SELECT 1 FROM t AS s WHERE s.x = 1)"),
        "{sql}"
    );
}

#[test]
fn left_join_ml_conditions_on_the_joined_table_are_pushed_into_it() {
    let p = ok(
        "SELECT u.id, u.name, r.id FROM users u LEFT JOIN reviews r ON r.user_id = u.id \
                AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'NEGATIVE'",
    );
    assert_eq!(p.blocks.len(), 1);
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT r.body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", *, NULL AS \"pgenrich:end0\" FROM reviews AS r"
    );
}

#[test]
fn outer_join_ml_conditions_probe_a_cte_of_scored_pairs() {
    let p = ok("SELECT a.id, b.id FROM ta a LEFT JOIN tb b ON a.k = b.k \
                AND (aws_comprehend.detect_sentiment(a.t || b.t, 'en')).sentiment = 'POSITIVE'");
    // The pairs the plain condition admits are scored by an inner join ...
    assert_eq!(
        p.blocks[0].base_sql,
        "SELECT a.t || b.t AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", a.t AS \"pgenrich:c0\", \
         b.t AS \"pgenrich:c1\" FROM ta a INNER JOIN tb b ON a.k = b.k"
    );
    // ... and the outer join runs natively, probing the keys of the pairs that passed.
    let text = residual(&p);
    assert!(
        text.starts_with("WITH \"pgenrich:oj0\" AS (SELECT ROW(pgenrich_base0.c0, pgenrich_base0.c1)::TEXT AS \"pgenrich:key\" FROM"),
        "{text}"
    );
    assert!(
        text.ends_with("FROM ta a LEFT JOIN tb b ON a.k = b.k AND ROW(a.t, b.t)::TEXT IN (SELECT \"pgenrich:key\" FROM \"pgenrich:oj0\")"),
        "{text}"
    );
    // RIGHT and FULL joins, unqualified columns, and a condition on an earlier outer join's side.
    for sql in [
        "SELECT * FROM ta a RIGHT JOIN tb b ON a.k = b.k AND aws_sagemaker.invoke_endpoint('e', NULL, a.x, b.y)::int > 1",
        "SELECT * FROM ta a FULL JOIN tb b ON a.k = b.k AND aws_sagemaker.invoke_endpoint('e', NULL, x, y)::int > 1",
        "SELECT count(*) FROM ta a LEFT JOIN tc c ON c.k = a.k LEFT JOIN tb b ON b.k = a.k \
         AND aws_sagemaker.invoke_endpoint('e', NULL, c.z, b.y)::int > 1",
    ] {
        let p = ok(sql);
        assert_eq!(p.blocks.len(), 1, "{sql}");
        assert!(residual(&p).contains("IN (SELECT \"pgenrich:key\" FROM \"pgenrich:oj0\")"), "{sql}");
    }
    // With other ML calls in the same SELECT, or a subquery in the condition: refused.
    for sql in [
        "SELECT aws_sagemaker.invoke_endpoint('e', NULL, a.x) FROM ta a LEFT JOIN tb b ON a.k = b.k \
         AND aws_sagemaker.invoke_endpoint('e', NULL, a.x, b.y)::int > 1",
        "SELECT * FROM ta a LEFT JOIN tb b ON a.k = b.k \
         AND aws_sagemaker.invoke_endpoint('e', NULL, (SELECT max(z) FROM tc), b.y)::int > 1",
        "SELECT * FROM ta a FULL JOIN tb b ON a.k < b.k \
         AND aws_sagemaker.invoke_endpoint('e', NULL, a.x) = aws_sagemaker.invoke_endpoint('e', NULL, b.y)",
    ] {
        assert_eq!(refused(sql).code, SqlState::FeatureNotSupported, "{sql}");
    }
}

#[test]
fn typing_statement_replaces_table_functions_aliased_with_as() {
    // Found by the `sql` fuzz target: an alias written `AS s` printed as `AS AS s` in the
    // LATERAL stand-in, which did not parse, so the ML table function stayed in the typing
    // statement that goes upstream.
    let p = ok(
        "SELECT s.sentiment FROM t, aws_comprehend.detect_sentiment(t.b, $1) AS s \
         WHERE s.confidence > 0.5",
    );
    assert_eq!(
        p.typing_sql.as_deref().expect("has parameters"),
        "SELECT s.sentiment FROM t, LATERAL (SELECT NULL::VARCHAR AS sentiment, NULL::REAL AS \
         confidence WHERE (t.b)::VARCHAR IS NULL OR ($1)::VARCHAR IS NULL) AS s \
         WHERE s.confidence > 0.5"
    );
}

#[test]
fn typing_statement_replaces_calls_expanded_with_star() {
    // Found by the `sql_ast` fuzz target: `(f(…)).*`, which is parsed under a marked name, stayed
    // in the typing statement as a call of that name, so PostgreSQL refused the statement.
    let p = ok(
        "SELECT (aws_comprehend.detect_sentiment(body, $1)).* FROM r \
                WHERE (aws_comprehend.detect_sentiment(body, $1)).confidence > 0.5",
    );
    assert_eq!(
        p.typing_sql.as_deref().expect("has parameters"),
        "SELECT (CASE WHEN (body)::VARCHAR IS NULL OR ($1)::VARCHAR IS NULL \
         THEN ROW(NULL::VARCHAR, NULL::REAL) END) FROM r \
         WHERE (CASE WHEN (body)::VARCHAR IS NULL OR ($1)::VARCHAR IS NULL THEN NULL::REAL END) > 0.5"
    );
}

#[test]
fn ml_calls_in_limit_or_offset_never_reach_the_residual() {
    // Found by the `sql_ast` fuzz target: the residual statement, which PostgreSQL runs, kept
    // the call (an error on PostgreSQL, a native call where the functions exist).
    for sql in [
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM t ORDER BY 1 \
         LIMIT aws_sagemaker.invoke_endpoint('e', 1, 2)::int",
        "SELECT id FROM t WHERE aws_comprehend.detect_sentiment(body, 'en') IS NULL \
         OFFSET aws_sagemaker.invoke_endpoint('e', 1, 2)::int",
    ] {
        let Err(error) = super::plan(sql) else {
            panic!("{sql} was planned");
        };
        assert_eq!(
            error.code,
            SqlState::FeatureNotSupported,
            "{}",
            error.message
        );
        assert!(error.message.contains("LIMIT"), "{}", error.message);
        // Nor does the streaming plan take it (the session tries that first).
        assert!(crate::sql::plan::plan(sql).is_err(), "{sql}");
    }
}

#[test]
fn typing_statement_replaces_calls_with_ml_calls_in_their_arguments() {
    // Found by the `sql_ast` fuzz target: the typing statement is described upstream, where the
    // outer call (its argument a subquery with a call) stays, as `call_arguments` refuses it.
    let p = ok("SELECT count(g) FROM generate_series(1, 30) g \
                WHERE aws_sagemaker.invoke_endpoint('score', NULL, \
                  g % 3 IN (SELECT aws_sagemaker.invoke_endpoint('score', NULL, g) FROM t))::int > $1");
    let typing = p.typing_sql.expect("has parameters");
    assert_eq!(
        crate::sql::inspect(&typing),
        crate::sql::Verdict::Relay,
        "{typing}"
    );
}
