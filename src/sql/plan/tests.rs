use super::*;

fn ok(sql: &str) -> StreamingPlan {
    plan(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

fn refused(sql: &str) -> PlanError {
    match plan(sql) {
        Ok(p) => panic!("{sql} was planned: {p:?}"),
        Err(e) => e,
    }
}

fn placeholder(field: Field, name: &str, call: usize) -> Placeholder {
    Placeholder {
        call,
        field,
        name: name.into(),
    }
}

#[test]
fn bare_call_in_the_select_list() {
    let p = ok("SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews WHERE id < 10 ORDER BY id LIMIT 5");
    assert_eq!(
        p.base_sql,
        "SELECT body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", id, NULL AS \"pgenrich:0\" FROM reviews WHERE id < 10 ORDER BY id LIMIT 5"
    );
    assert_eq!(p.arg_columns, 2);
    assert_eq!(
        p.calls,
        vec![Call {
            function: MlFunction::DetectSentiment,
            first_arg: 0,
            arg_count: 2
        }]
    );
    assert_eq!(
        p.placeholders,
        vec![placeholder(Field::Record, "detect_sentiment", 0)]
    );
    assert_eq!(p.placeholder(b"pgenrich:0"), Some(&p.placeholders[0]));
    assert_eq!(p.placeholder(b"id"), None);
}

#[test]
fn field_selections_aliases_and_all_fields() {
    let p = ok(
        "SELECT (aws_comprehend.detect_sentiment(b, 'en', 10)).sentiment AS s, \
                (AWS_COMPREHEND.detect_sentiment(b, 'en')).confidence, \
                (aws_comprehend.detect_sentiment(b, 'fr')).* FROM r",
    );
    assert_eq!(p.calls.len(), 3);
    assert_eq!(p.calls[0].arg_count, 3);
    assert_eq!(p.arg_columns, 7);
    assert_eq!(
        p.placeholders,
        vec![
            placeholder(Field::Sentiment, "s", 0),
            placeholder(Field::Confidence, "confidence", 1),
            placeholder(Field::Sentiment, "sentiment", 2),
            placeholder(Field::Confidence, "confidence", 2),
        ]
    );
}

#[test]
fn invoke_endpoint_with_parameters_and_variadic_array() {
    let p =
        ok("SELECT id, aws_sagemaker.invoke_endpoint('fraud', $1, amount, $2) AS score FROM tx");
    assert_eq!(
        p.base_sql,
        // A parameter for max_rows_per_batch is typed as Aurora's int; model inputs stay "any".
        "SELECT 'fraud' AS \"pgenrich:arg0\", $1::INT4 AS \"pgenrich:arg1\", amount AS \"pgenrich:arg2\", $2 AS \"pgenrich:arg3\", id, NULL AS \"pgenrich:0\" FROM tx"
    );
    assert_eq!(p.placeholders, vec![placeholder(Field::Text, "score", 0)]);
    let v = ok("SELECT aws_sagemaker.invoke_endpoint('m', NULL, VARIADIC ARRAY[a, b + 1]) FROM t");
    assert_eq!(v.calls[0].arg_count, 4);
    assert!(
        v.base_sql.contains("b + 1 AS \"pgenrich:arg3\""),
        "{}",
        v.base_sql
    );
}

#[test]
fn table_functions_in_from() {
    let p = ok("SELECT r.id, s.sentiment, s.confidence AS c FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s");
    assert_eq!(
        p.base_sql,
        "SELECT r.body AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", r.id, NULL AS \"pgenrich:0\", NULL AS \"pgenrich:1\" FROM reviews r"
    );
    assert_eq!(
        p.placeholders,
        vec![
            placeholder(Field::Sentiment, "sentiment", 0),
            placeholder(Field::Confidence, "c", 0)
        ]
    );

    let star = ok(
        "SELECT * FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') AS s(label, score)",
    );
    assert!(
        star.base_sql
            .contains("\"r\".*, NULL AS \"pgenrich:0\", NULL AS \"pgenrich:1\""),
        "{}",
        star.base_sql
    );
    assert_eq!(star.placeholders[0].name, "label");
    assert_eq!(star.placeholders[1].name, "score");

    let alone = ok("SELECT * FROM aws_comprehend.detect_sentiment('I love it', 'en')");
    assert_eq!(alone.base_sql, "SELECT 'I love it' AS \"pgenrich:arg0\", 'en' AS \"pgenrich:arg1\", NULL AS \"pgenrich:0\", NULL AS \"pgenrich:1\"");
    let qualified = ok("SELECT s.* FROM aws_comprehend.detect_sentiment('x', 'en') s");
    assert_eq!(qualified.placeholders.len(), 2);
}

#[test]
fn ordinals_shift_past_the_arguments() {
    let p = ok("SELECT id, aws_comprehend.detect_sentiment(b, 'en') FROM r ORDER BY 1 DESC");
    assert!(p.base_sql.ends_with("ORDER BY 3 DESC"), "{}", p.base_sql);
    let e = refused("SELECT id, aws_comprehend.detect_sentiment(b, 'en') FROM r ORDER BY 2");
    assert_eq!(e.code.code(), "0A000");
    let e = refused("SELECT aws_comprehend.detect_sentiment(b, 'en') AS s FROM r ORDER BY s");
    assert_eq!(e.code.code(), "0A000");
}

#[test]
fn other_positions_are_refused_with_a_hint() {
    for sql in [
        "SELECT * FROM r WHERE (aws_comprehend.detect_sentiment(b, 'en')).sentiment = 'POSITIVE'",
        "SELECT upper((aws_comprehend.detect_sentiment(b, 'en')).sentiment) FROM r",
        "SELECT aws_sagemaker.invoke_endpoint('m', 1, x)::float FROM t",
        "WITH s AS (SELECT aws_comprehend.detect_sentiment(b, 'en') FROM r) SELECT * FROM s",
        "SELECT * FROM (SELECT aws_comprehend.detect_sentiment(b, 'en') FROM r) q",
        "SELECT 1 UNION SELECT aws_sagemaker.invoke_endpoint('m', 1, 2)",
        "SELECT DISTINCT aws_comprehend.detect_sentiment(b, 'en') FROM r",
        "INSERT INTO t SELECT aws_sagemaker.invoke_endpoint('m', 1, x) FROM s",
        "UPDATE t SET y = aws_sagemaker.invoke_endpoint('m', 1, x)",
        "SELECT 1; SELECT aws_comprehend.detect_sentiment('x', 'en')",
        "SELECT s.sentiment FROM r, aws_comprehend.detect_sentiment(r.b, 'en') s WHERE s.confidence > 0.5",
        "SELECT aws_comprehend.detect_sentiment(aws_comprehend.detect_sentiment('x', 'en')::text, 'en')",
    ] {
        let e = refused(sql);
        assert_eq!(e.code.code(), "0A000", "{sql}: {e:?}");
        assert!(e.hint.is_some(), "{sql}");
    }
}

#[test]
fn wrong_signatures_are_reported_as_postgres_would() {
    assert_eq!(
        refused("SELECT aws_comprehend.detect_sentiment('x')")
            .code
            .code(),
        "42883"
    );
    assert_eq!(
        refused("SELECT aws_sagemaker.invoke_endpoint('m', 1)")
            .code
            .code(),
        "42883"
    );
    assert_eq!(
        refused("SELECT aws_comprehend.detect_entities('x', 'en')")
            .code
            .code(),
        "42883"
    );
    assert_eq!(
        refused("SELECT (aws_comprehend.detect_sentiment('x', 'en')).score")
            .code
            .code(),
        "42703"
    );
}
