//! The differential suite (issue 4): every position an ML call can take in a SELECT, run natively
//! on the reference database (where the ML functions are real SQL functions reproducing the mock's
//! models, see `reference.sql`) and through pgenrich on the plain test database, over identical
//! data. Column names, parameter and column types (from Describe), values and, where ORDER BY
//! fixes it, row order must be identical.
//!
//! Each case in [`CASES`] states what it expects in each protocol:
//! * `Same`: pgenrich answers exactly what PostgreSQL answers natively;
//! * `Pending`: not supported yet, so pgenrich must refuse it with SQLSTATE 0A000 and a hint
//!   (never a wrong answer) and the session must stay usable;
//! * `Refused`: a form that must always be refused with 0A000 and a hint (correlated ML
//!   arguments, ML in data-modifying statements, COPY, DDL, an ML call inside another's argument).
//!
//! A case may also carry `.bug("…")` (or `.simple_bug` / `.extended_bug`): a known deviation from
//! its expectation (wrong result, wrong error, wrong Describe), given as a piece of the failure
//! text. A failure containing it is printed under KNOWN BUGS instead of failing the test (any
//! other failure still fails it); once the case behaves as expected the test fails with "fixed",
//! so that the marker is removed.
//!
//! HOW TO FLIP A CASE when support lands: the failure says "now matches native in the <protocol>
//! protocol". The constructors are `same` (both protocols Same), `same_simple` (simple Same,
//! extended Pending), `pending` (both Pending) and `refused`; change `pending(` to `same_simple(`
//! or `same_simple(` to `same(` accordingly, and remove a `.bug(…)` once it reports "fixed".
//!
//! Every case without parameters runs in the simple query protocol (values compared as text) and
//! in the extended one (`prepare` + `query`: parameter and column descriptions compared before
//! execution, values compared as the binary bytes PostgreSQL sends); cases with `$n` parameters
//! run in the extended protocol only, executing each prepared statement twice. Native results are
//! computed only when needed (Same cases, and anything pgenrich answers). The cases run in two
//! lanes (two connection pairs) to keep the run short. `every_position_*` runs the whole table
//! against the primary, `standby_*` a subset against the hot standby, and `random_sampling_*`
//! checks volatile sampling (random(), TABLESAMPLE) for internal consistency, since its rows cannot
//! match a native run.

use std::collections::HashMap;
use std::fmt::Write as _;

use tokio::sync::OnceCell;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{connect, postgres, reference_database, standby, Proxy, DATABASE};

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Identical to the native result.
    Same,
    /// Not supported yet: refused with 0A000 and a hint.
    Pending,
    /// Never supported: refused with 0A000 and a hint.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The query's ORDER BY fixes the row order: compare it.
    Ordered,
    /// Compare rows as a multiset.
    AnyOrder,
}
use Order::{AnyOrder, Ordered};

/// A bind parameter, typed as PostgreSQL infers it for the statement.
#[derive(Debug, Clone, Copy)]
enum Param {
    Text(&'static str),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl Param {
    fn value(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(v) => v,
            Param::I32(v) => v,
            Param::I64(v) => v,
            Param::F32(v) => v,
            Param::F64(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    sql: &'static str,
    params: &'static [Param],
    order: Order,
    /// Expected in the simple query protocol (not run for cases with parameters).
    simple: Expect,
    /// Expected as a prepared statement.
    extended: Expect,
    /// A known deviation from `simple` / `extended`, as a piece of its failure text: the run
    /// prints it and passes while it deviates, and fails once the case behaves as expected.
    simple_bug: Option<&'static str>,
    extended_bug: Option<&'static str>,
}

const fn case(name: &'static str, order: Order, sql: &'static str, expect: Expect) -> Case {
    Case {
        name,
        sql,
        params: &[],
        order,
        simple: expect,
        extended: expect,
        simple_bug: None,
        extended_bug: None,
    }
}

/// Same as native in both protocols.
const fn same(name: &'static str, order: Order, sql: &'static str) -> Case {
    case(name, order, sql, Expect::Same)
}

/// Same as native in the simple protocol; not supported yet as a prepared statement.
#[allow(dead_code)] // for forms that land in one protocol first
const fn same_simple(name: &'static str, order: Order, sql: &'static str) -> Case {
    Case {
        extended: Expect::Pending,
        ..case(name, order, sql, Expect::Same)
    }
}

/// Not supported yet in either protocol. (Every case is supported at the moment; kept for the
/// next form found.)
#[allow(dead_code)]
const fn pending(name: &'static str, order: Order, sql: &'static str) -> Case {
    case(name, order, sql, Expect::Pending)
}

/// Refused by design in both protocols.
const fn refused(name: &'static str, sql: &'static str) -> Case {
    case(name, AnyOrder, sql, Expect::Refused)
}

impl Case {
    /// Runs the case as a prepared statement with these parameters (extended protocol only).
    const fn with(self, params: &'static [Param]) -> Case {
        Case { params, ..self }
    }

    /// A known deviation in both protocols. (None is recorded at the moment; the markers stay
    /// for the next one found.)
    #[allow(dead_code)]
    const fn bug(self, what: &'static str) -> Case {
        Case {
            simple_bug: Some(what),
            extended_bug: Some(what),
            ..self
        }
    }

    /// A known deviation in the simple protocol only.
    #[allow(dead_code)]
    const fn simple_bug(self, what: &'static str) -> Case {
        Case {
            simple_bug: Some(what),
            ..self
        }
    }

    /// A known deviation as a prepared statement only.
    #[allow(dead_code)]
    const fn extended_bug(self, what: &'static str) -> Case {
        Case {
            extended_bug: Some(what),
            ..self
        }
    }

    fn known_bug(&self, protocol: Protocol) -> Option<&'static str> {
        match protocol {
            Protocol::Simple => self.simple_bug,
            Protocol::Extended => self.extended_bug,
        }
    }

    fn expect(&self, protocol: Protocol) -> Expect {
        match protocol {
            Protocol::Simple => self.simple,
            Protocol::Extended => self.extended,
        }
    }

    fn protocols(&self) -> &'static [Protocol] {
        if self.params.is_empty() {
            &[Protocol::Simple, Protocol::Extended]
        } else {
            &[Protocol::Extended]
        }
    }
}

/// The whole table. Names are `<position>_<variant>`; the report groups by the prefix.
/// DS(x) below stands for aws_comprehend.detect_sentiment, IE for aws_sagemaker.invoke_endpoint.
const CASES: &[Case] = &[
    // --- The outermost SELECT list: bare, field selection, (f(...)).* -------------------------
    same(
        "select_bare_record",
        Ordered,
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM diff_reviews ORDER BY id",
    ),
    same(
        "select_field_per_row_language",
        Ordered,
        "SELECT id, lang, (aws_comprehend.detect_sentiment(body, lang)).sentiment \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "select_star_fields_with_batch",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en', 10)).*, id \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "select_confidence_alias_nullable_bio",
        AnyOrder,
        "SELECT id, name, (aws_comprehend.detect_sentiment(bio, 'en')).confidence AS c \
           FROM diff_users",
    ),
    same(
        "select_invoke_numeric_and_int",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('score', 10, amount, qty) AS score \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "select_invoke_text_csv_quoting",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', NULL, merchant, memo) \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "select_invoke_boolean",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', 3, flagged) AS b, \
                aws_sagemaker.invoke_endpoint('score', 3, flagged) AS s \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "select_invoke_timestamp",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', 4, ts), \
                aws_sagemaker.invoke_endpoint('score', 4, ts) AS len \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "select_invoke_float8",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('score', 7, fee) FROM diff_tx ORDER BY id",
    ),
    same(
        "select_invoke_mixed_types_cast_to_text",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', 5, amount::text, flagged::text, \
                                                  ts::text, merchant) \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "select_plain_where_and_join",
        Ordered,
        "SELECT u.name, r.id, (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment \
           FROM diff_users u JOIN diff_reviews r ON r.user_id = u.id \
          WHERE r.rating >= 3 AND r.verified ORDER BY r.id",
    ),
    same(
        "select_plain_order_limit_offset",
        Ordered,
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM diff_reviews \
          ORDER BY created DESC, id LIMIT 10 OFFSET 5",
    ),
    same(
        "select_ml_over_aggregate_argument",
        Ordered,
        "SELECT lang, aws_comprehend.detect_sentiment(string_agg(body, ' ' ORDER BY id), 'en') \
           FROM diff_reviews GROUP BY lang ORDER BY lang",
    ),
    same(
        "select_plain_window_next_to_ml",
        Ordered,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                row_number() OVER (PARTITION BY lang ORDER BY id) AS n \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "select_params_language_and_filter",
        Ordered,
        "SELECT id, (aws_comprehend.detect_sentiment(body, $1)).sentiment \
           FROM diff_reviews WHERE rating >= $2 ORDER BY id",
    )
    .with(&[Param::Text("en"), Param::I32(3)]),
    same(
        "select_params_invoke_input",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('score', 10, amount, $1::int) \
           FROM diff_tx WHERE id < $2 ORDER BY id",
    )
    .with(&[Param::I32(1000), Param::I32(40)]),
    same(
        "select_ordinal_of_ml_in_order_by",
        Ordered,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).confidence \
           FROM diff_reviews ORDER BY 2 DESC, 1",
    ),
    same(
        "select_alias_shadowing_a_column_in_order_by",
        Ordered,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).confidence AS rating \
           FROM diff_reviews ORDER BY rating, id",
    ),
    // --- FROM: the table-function form ---------------------------------------------------------
    same(
        "from_function_constant",
        Ordered,
        "SELECT * FROM aws_comprehend.detect_sentiment('I love it, but the box was broken', 'en')",
    ),
    same(
        "from_function_params",
        Ordered,
        "SELECT s.sentiment, s.confidence FROM aws_comprehend.detect_sentiment($1, $2) s",
    )
    .with(&[Param::Text("happy happy sad"), Param::Text("de")]),
    same(
        "from_lateral_columns",
        Ordered,
        "SELECT r.id, s.sentiment, s.confidence \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ),
    same(
        "from_lateral_star",
        Ordered,
        "SELECT r.id, s.* FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, r.lang) s \
          ORDER BY r.id",
    ),
    same(
        "from_lateral_where_on_label",
        Ordered,
        "SELECT r.id, s.confidence \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          WHERE s.sentiment = 'POSITIVE' ORDER BY r.id",
    ),
    same(
        "from_lateral_where_on_score_and_plain",
        AnyOrder,
        "SELECT r.id, r.rating, s.sentiment \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          WHERE s.confidence > 0.6 AND r.rating < 4",
    ),
    same(
        "from_lateral_order_by_score_limit",
        Ordered,
        "SELECT r.id, s.sentiment \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          ORDER BY s.confidence DESC NULLS LAST, r.id LIMIT 15",
    ),
    same(
        "from_lateral_group_by_label",
        AnyOrder,
        "SELECT s.sentiment, count(*) \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          GROUP BY s.sentiment",
    ),
    same(
        "from_cross_join_lateral",
        Ordered,
        "SELECT r.id, s.sentiment FROM diff_reviews r \
          CROSS JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ),
    same(
        "from_left_join_lateral_on_label",
        Ordered,
        "SELECT r.id, s.sentiment FROM diff_reviews r \
           LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
             ON s.sentiment <> 'NEUTRAL' ORDER BY r.id",
    ),
    // Subqueries referring to a table function's columns (they stayed `s.…` in the residual,
    // which has no `s`: 42P01 where PostgreSQL answers).
    same(
        "from_lateral_column_in_scalar_subquery",
        Ordered,
        "SELECT r.id, (SELECT count(*) FROM diff_reviews o WHERE o.body < s.sentiment) AS n \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ),
    same(
        "from_lateral_column_in_where_exists",
        Ordered,
        "SELECT r.id FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          WHERE EXISTS (SELECT 1 FROM diff_reviews o WHERE o.id = r.id + 1 AND s.sentiment <> 'NEUTRAL') \
          ORDER BY r.id",
    ),
    same(
        "from_left_join_lateral_on_subquery",
        Ordered,
        "SELECT r.id, s.sentiment, s.confidence FROM diff_reviews r \
           LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
             ON EXISTS (SELECT 1 FROM diff_reviews o WHERE o.id = r.id AND s.sentiment = 'POSITIVE') \
          ORDER BY r.id",
    ),
    // Found by the sql_ast fuzz target: an ML block in the condition, copied into both
    // references to the function's columns.
    same(
        "from_left_join_lateral_on_ml_subquery",
        Ordered,
        "SELECT r.id, s.sentiment = 'POSITIVE' AS positive, s.sentiment FROM diff_reviews r \
           LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s \
             ON s.sentiment <> (SELECT (aws_comprehend.detect_sentiment(o.body, 'en')).sentiment \
                                  FROM diff_reviews o WHERE o.id = 1) \
          ORDER BY r.id",
    ),
    same(
        "from_lateral_name_shadowed_in_subquery",
        Ordered,
        "SELECT r.id, s.sentiment FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
          WHERE EXISTS (SELECT 1 FROM diff_reviews s WHERE s.id = r.id AND s.rating > 2) ORDER BY r.id",
    ),
    // Unqualified, a table function's column inside a subquery is the subquery's own where its
    // FROM has one of the name, the function's otherwise (42703 before: pgenrich cannot know).
    same(
        "from_lateral_unqualified_column_in_scalar_subquery",
        Ordered,
        "SELECT r.id, (SELECT count(*) FROM diff_reviews o WHERE o.body < sentiment) AS n \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ),
    same(
        "from_lateral_unqualified_column_in_where_exists",
        Ordered,
        "SELECT r.id, s.sentiment FROM diff_reviews r \
           LEFT JOIN LATERAL aws_comprehend.detect_sentiment(r.body, 'en') s ON r.rating > 2 \
          WHERE NOT EXISTS (SELECT 1 FROM diff_reviews o WHERE o.id = r.id + 1 AND confidence > 0.9) \
          ORDER BY r.id",
    ),
    same(
        "from_lateral_unqualified_column_selected",
        Ordered,
        "SELECT r.id, sentiment, upper(sentiment) AS loud FROM diff_reviews r, \
                aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
    ),
    same(
        "from_function_unqualified_columns",
        Ordered,
        "SELECT sentiment, confidence > 0.5 AS sure FROM aws_comprehend.detect_sentiment('I love it', 'en')",
    ),
    refused(
        "from_lateral_unqualified_column_in_a_grouped_subquery",
        "SELECT s.sentiment, count(*), (SELECT count(*) FROM diff_reviews o WHERE o.body < sentiment) \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s GROUP BY s.sentiment",
    ),
    same(
        "from_lateral_unqualified_name_the_subquery_has",
        Ordered,
        "SELECT r.id, s.body, (SELECT count(*) FROM diff_reviews o WHERE body < label) AS n \
           FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s(label, body) \
          ORDER BY r.id",
    ),
    // --- WHERE ---------------------------------------------------------------------------------
    same(
        "where_label",
        AnyOrder,
        "SELECT id, body FROM diff_reviews \
          WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE'",
    ),
    same(
        "where_and_plain",
        Ordered,
        "SELECT id, rating FROM diff_reviews \
          WHERE rating >= 3 AND (aws_comprehend.detect_sentiment(body, lang)).sentiment = 'NEGATIVE' \
          ORDER BY id",
    ),
    same(
        "where_or_plain",
        AnyOrder,
        "SELECT id FROM diff_reviews \
          WHERE verified IS NOT TRUE OR (aws_comprehend.detect_sentiment(body, 'en')).confidence > 0.7",
    ),
    same(
        "where_record_is_null",
        AnyOrder,
        "SELECT id, body FROM diff_reviews \
          WHERE aws_comprehend.detect_sentiment(body, lang) IS NULL",
    ),
    same(
        "where_label_in_list_and_is_distinct",
        AnyOrder,
        "SELECT id FROM diff_users \
          WHERE (aws_comprehend.detect_sentiment(bio, 'en')).sentiment IN ('MIXED', 'NEUTRAL') \
             OR (aws_comprehend.detect_sentiment(bio, 'en')).sentiment IS DISTINCT FROM 'POSITIVE'",
    ),
    same(
        "where_invoke_cast_float",
        Ordered,
        "SELECT id, amount FROM diff_tx \
          WHERE aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::float > 50 ORDER BY id",
    ),
    same(
        "where_params_language_threshold",
        Ordered,
        "SELECT id FROM diff_reviews \
          WHERE (aws_comprehend.detect_sentiment(body, $1)).confidence >= $2 ORDER BY id",
    )
    .with(&[Param::Text("fr"), Param::F32(0.75)]),
    same(
        "where_params_endpoint_threshold",
        Ordered,
        "SELECT id, amount FROM diff_tx \
          WHERE aws_sagemaker.invoke_endpoint($1, 10, amount, qty)::float8 > $2 ORDER BY id",
    )
    .with(&[Param::Text("score"), Param::F64(20.5)]),
    // --- JOIN ... ON ---------------------------------------------------------------------------
    same(
        "join_on_labels_of_both_sides",
        AnyOrder,
        "SELECT u.id, r.id FROM diff_users u JOIN diff_reviews r \
             ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment \
              = (aws_comprehend.detect_sentiment(u.bio, 'en')).sentiment",
    ),
    same(
        "left_join_on_label",
        AnyOrder,
        "SELECT u.id, u.name, r.id FROM diff_users u LEFT JOIN diff_reviews r \
             ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'NEGATIVE'",
    ),
    same(
        "join_on_invoke_score",
        AnyOrder,
        "SELECT t.id, u.id FROM diff_tx t JOIN diff_users u \
             ON u.id = t.user_id \
            AND aws_sagemaker.invoke_endpoint('score', 10, t.amount, t.qty)::numeric > u.id",
    ),
    same(
        "left_join_on_labels_of_both_sides",
        AnyOrder,
        "SELECT u.id, r.id FROM diff_users u LEFT JOIN diff_reviews r \
             ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment \
              = (aws_comprehend.detect_sentiment(u.bio, 'en')).sentiment",
    ),
    same(
        "left_join_on_unqualified_columns",
        AnyOrder,
        "SELECT u.id, r.id, r.rating FROM diff_users u LEFT JOIN diff_reviews r \
             ON r.user_id = u.id AND (aws_comprehend.detect_sentiment(body, lang)).sentiment = 'POSITIVE'",
    ),
    same(
        "right_join_on_score_of_both_sides",
        AnyOrder,
        "SELECT t.id, u.id, u.name FROM diff_users u RIGHT JOIN diff_tx t \
             ON u.id = t.user_id \
            AND aws_sagemaker.invoke_endpoint('score', 10, t.amount, t.qty)::numeric > u.id",
    ),
    same(
        "full_join_on_confidence_of_both_sides",
        AnyOrder,
        "SELECT u.id, r.id, r.rating FROM diff_users u FULL JOIN diff_reviews r \
             ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body || coalesce(u.name, ''), 'en')).confidence > 0.6",
    ),
    same(
        "left_join_chain_condition_on_an_outer_joined_side",
        Ordered,
        "SELECT u.id, count(r.id), count(t.id), sum(t.qty) FROM diff_users u \
           LEFT JOIN diff_reviews r ON r.user_id = u.id AND r.rating > 3 \
           LEFT JOIN diff_tx t ON t.user_id = u.id \
            AND aws_sagemaker.invoke_endpoint('score', 10, t.qty, r.rating)::numeric > 5 \
          GROUP BY u.id ORDER BY u.id",
    ),
    same(
        "left_join_labels_with_parameters",
        AnyOrder,
        "SELECT u.id, r.id FROM diff_users u LEFT JOIN diff_reviews r \
             ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body, $1)).sentiment \
              = (aws_comprehend.detect_sentiment(u.bio, $1)).sentiment",
    )
    .with(&[Param::Text("en")]),
    // --- GROUP BY and HAVING -------------------------------------------------------------------
    same(
        "group_by_label_ordinal",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, count(*) \
           FROM diff_reviews GROUP BY 1 ORDER BY 1",
    ),
    same(
        "group_by_label_expression",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, lang)).sentiment, avg(rating) \
           FROM diff_reviews GROUP BY (aws_comprehend.detect_sentiment(body, lang)).sentiment",
    ),
    same(
        "group_by_plain_and_label",
        AnyOrder,
        "SELECT lang, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, count(*), \
                max(id) \
           FROM diff_reviews GROUP BY lang, (aws_comprehend.detect_sentiment(body, 'en')).sentiment",
    ),
    same(
        "group_by_invoke",
        AnyOrder,
        "SELECT aws_sagemaker.invoke_endpoint('score', 10, qty) AS q, count(*) \
           FROM diff_tx GROUP BY 1",
    ),
    same(
        "having_avg_confidence",
        AnyOrder,
        "SELECT lang, count(*) FROM diff_reviews GROUP BY lang \
         HAVING avg((aws_comprehend.detect_sentiment(body, 'en')).confidence::numeric) > 0.7",
    ),
    same(
        "having_count_filter_params",
        AnyOrder,
        "SELECT lang, count(*) FROM diff_reviews GROUP BY lang \
         HAVING count(*) FILTER \
                (WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = $1) > $2",
    )
    .with(&[Param::Text("POSITIVE"), Param::I64(2)]),
    // --- Aggregates over ML values ---------------------------------------------------------------
    same(
        "aggregates_count_avg_sum_min_max",
        Ordered,
        "SELECT count(aws_comprehend.detect_sentiment(body, 'en')) AS n, \
                avg((aws_comprehend.detect_sentiment(body, 'en')).confidence::numeric) AS a, \
                sum((aws_comprehend.detect_sentiment(body, 'en')).confidence::numeric) AS s, \
                min((aws_comprehend.detect_sentiment(body, 'en')).sentiment) AS lo, \
                max((aws_comprehend.detect_sentiment(body, 'en')).confidence) AS hi \
           FROM diff_reviews",
    ),
    same(
        "aggregates_filter",
        Ordered,
        "SELECT count(*) FILTER \
                  (WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE') AS pos, \
                count(*) FILTER \
                  (WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE') AS neg, \
                count(*) AS total \
           FROM diff_reviews",
    ),
    same(
        "aggregates_invoke_numeric",
        Ordered,
        "SELECT sum(aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric), \
                max(aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric), \
                count(DISTINCT aws_sagemaker.invoke_endpoint('score', 10, qty)) \
           FROM diff_tx",
    ),
    same(
        "aggregates_string_agg_distinct",
        Ordered,
        "SELECT string_agg(DISTINCT (aws_comprehend.detect_sentiment(body, 'en')).sentiment, ',' \
                           ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment) \
           FROM diff_reviews",
    ),
    same(
        "aggregates_per_group_filter",
        Ordered,
        "SELECT user_id, count(*) FILTER \
                  (WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE') \
           FROM diff_reviews GROUP BY user_id ORDER BY user_id",
    ),
    // --- ORDER BY with LIMIT / OFFSET ------------------------------------------------------------
    same(
        "order_by_confidence_limit",
        Ordered,
        "SELECT id, body FROM diff_reviews \
          ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).confidence DESC NULLS LAST, id \
          LIMIT 20",
    ),
    same(
        "order_by_label_offset",
        Ordered,
        "SELECT id FROM diff_reviews \
          ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment, id LIMIT 10 OFFSET 30",
    ),
    same(
        "order_by_invoke_numeric",
        Ordered,
        "SELECT id, amount, qty FROM diff_tx \
          ORDER BY aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric DESC, id \
          LIMIT 10",
    ),
    same(
        "order_by_params_limit",
        Ordered,
        "SELECT id FROM diff_reviews \
          ORDER BY (aws_comprehend.detect_sentiment(body, $1)).confidence, id LIMIT $2",
    )
    .with(&[Param::Text("en"), Param::I64(7)]),
    // --- DISTINCT and DISTINCT ON ----------------------------------------------------------------
    same(
        "distinct_label",
        AnyOrder,
        "SELECT DISTINCT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews",
    ),
    same(
        "distinct_plain_and_label",
        AnyOrder,
        "SELECT DISTINCT lang, (aws_comprehend.detect_sentiment(body, lang)).sentiment \
           FROM diff_reviews",
    ),
    same(
        "distinct_on_label",
        Ordered,
        "SELECT DISTINCT ON ((aws_comprehend.detect_sentiment(body, 'en')).sentiment) \
                (aws_comprehend.detect_sentiment(body, 'en')).sentiment, id, body \
           FROM diff_reviews \
          ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment, id",
    ),
    same(
        "distinct_on_plain_key_ml_value",
        Ordered,
        "SELECT DISTINCT ON (user_id) user_id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
           FROM diff_reviews ORDER BY user_id, id",
    ),
    // Output column names of ML results in the clauses that may name them.
    same(
        "distinct_on_alias_of_label",
        Ordered,
        "SELECT DISTINCT ON (s) (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, id \
           FROM diff_reviews ORDER BY s, id",
    ),
    same(
        "distinct_on_alias_of_invoke_and_plain",
        Ordered,
        "SELECT DISTINCT ON (lang, q) lang, \
                aws_sagemaker.invoke_endpoint('score', 10, rating) AS q, id \
           FROM diff_reviews ORDER BY lang, q, id DESC",
    ),
    same(
        "distinct_on_alias_of_record",
        Ordered,
        "SELECT DISTINCT ON (r) aws_comprehend.detect_sentiment(body, 'en') AS r, id \
           FROM diff_reviews ORDER BY r, id",
    ),
    // Unquoted names in any case are one name, folded as PostgreSQL folds them (ASCII letters
    // only); a quoted name keeps its case.
    same(
        "alias_in_other_case_in_order_by",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS Label, id \
           FROM diff_reviews ORDER BY LABEL DESC, ID",
    ),
    same(
        "alias_in_other_case_in_group_by",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).Sentiment AS LaBeL, count(*) \
           FROM diff_reviews GROUP BY label",
    ),
    same(
        "function_alias_and_field_in_other_case",
        Ordered,
        "SELECT S.Sentiment, d.ID FROM diff_reviews D, aws_comprehend.detect_sentiment(d.body, 'en') AS s \
           WHERE S.SENTIMENT <> 'NEUTRAL' ORDER BY d.id",
    ),
    same(
        "function_alias_in_other_case_streaming",
        Ordered,
        "SELECT S.Sentiment, D.id FROM diff_reviews d, aws_comprehend.detect_sentiment(D.Body, 'en') s \
           ORDER BY d.ID",
    ),
    // An alias that is also an input column's name: GROUP BY takes the input column, ORDER BY
    // the output column, as PostgreSQL resolves them.
    same(
        "group_by_name_of_input_column_and_alias",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(lang, 'en')).sentiment AS lang, count(*) \
           FROM diff_reviews GROUP BY lang",
    ),
    same(
        "select_ml_of_grouped_column",
        AnyOrder,
        "SELECT lang, (aws_comprehend.detect_sentiment(lang, 'en')).sentiment AS s, count(*) \
           FROM diff_reviews GROUP BY lang",
    ),
    same(
        "order_by_name_of_input_column_and_alias",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS lang, id \
           FROM diff_reviews ORDER BY lang, id",
    ),
    same(
        "quoted_alias_keeps_its_case",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS \"Label\", id \
           FROM diff_reviews ORDER BY \"Label\", id",
    ),
    same(
        "distinct_on_non_ascii_alias",
        Ordered,
        "SELECT DISTINCT ON (Ärger) (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS ÄrgER, id \
           FROM diff_reviews ORDER BY ÄRGER, id",
    ),
    same(
        "order_by_alias_of_confidence_desc",
        Ordered,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).confidence AS c \
           FROM diff_reviews ORDER BY c DESC NULLS LAST, id LIMIT 12",
    ),
    same(
        "order_by_alias_and_ordinal",
        Ordered,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, id \
           FROM diff_reviews ORDER BY 1 DESC, s, id",
    ),
    same(
        "group_by_alias_of_label",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, count(*) \
           FROM diff_reviews GROUP BY s",
    ),
    same(
        "group_by_alias_order_by_alias",
        Ordered,
        "SELECT aws_sagemaker.invoke_endpoint('score', 10, qty) AS q, count(*) AS n \
           FROM diff_tx GROUP BY q ORDER BY n DESC, q",
    ),
    same(
        "group_by_alias_having_on_alias_column",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, lang)).sentiment AS s, max(id) \
           FROM diff_reviews GROUP BY s HAVING count(*) > 1",
    ),
    // NULL and empty texts give a record of two NULLs, as a native function with OUT parameters.
    same(
        "record_of_null_and_empty_text",
        Ordered,
        "SELECT id, aws_comprehend.detect_sentiment(body, lang), \
                aws_comprehend.detect_sentiment(body, lang) IS NULL AS is_null, \
                (aws_comprehend.detect_sentiment(body, lang)).sentiment IS NULL AS no_label \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "record_of_null_text_in_residual",
        Ordered,
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') AS r FROM diff_reviews \
          WHERE (aws_comprehend.detect_sentiment(body, 'en')).confidence IS NULL \
             OR (aws_comprehend.detect_sentiment(body, 'en')).confidence > 0.5 \
          ORDER BY id",
    ),
    same(
        "record_of_null_literal",
        Ordered,
        "SELECT aws_comprehend.detect_sentiment(NULL, 'en'), aws_comprehend.detect_sentiment('', 'en'), \
                aws_comprehend.detect_sentiment('good', NULL)",
    ),
    // --- Bedrock --------------------------------------------------------------------------------
    same(
        "bedrock_invoke_model_in_select_list",
        Ordered,
        "SELECT id, aws_bedrock.invoke_model('anthropic.claude-v2', 'application/json', NULL, body) \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "bedrock_echo_in_where_and_order_by",
        Ordered,
        "SELECT id, aws_bedrock.invoke_model('echo', 'text/plain', 'text/plain', body) AS b \
           FROM diff_reviews \
          WHERE aws_bedrock.invoke_model('echo', 'text/plain', 'text/plain', body) LIKE '%o%' \
          ORDER BY b, id",
    ),
    same(
        "bedrock_embeddings_in_select_list",
        Ordered,
        "SELECT id, aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v2:0', \
                'application/json', 'embedding', json_build_object('inputText', body)::text) \
           FROM diff_reviews WHERE body IS NOT NULL ORDER BY id",
    ),
    same(
        "bedrock_embeddings_indexed_grouped_and_sorted",
        Ordered,
        "SELECT (aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v2:0', \
                 'application/json', 'embedding', \
                 json_build_object('inputText', coalesce(body, ''), 'dimensions', 2)::text))[2] > 0.5 AS high, \
                count(*) \
           FROM diff_reviews GROUP BY 1 ORDER BY 1",
    ),
    same(
        "bedrock_embeddings_param_model",
        Ordered,
        "SELECT id, array_length(aws_bedrock.invoke_model_get_embeddings($1, 'application/json', \
                'embedding', json_build_object('inputText', body)::text), 1) AS n \
           FROM diff_reviews WHERE body IS NOT NULL ORDER BY id LIMIT 5",
    )
    .with(&[Param::Text("amazon.titan-embed-text-v2:0")]),
    // --- Window functions ------------------------------------------------------------------------
    same(
        "window_rank_by_label_and_score",
        AnyOrder,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, \
                rank() OVER (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
                             ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).confidence DESC) \
           FROM diff_reviews",
    ),
    same(
        "window_row_number_tiebreak",
        Ordered,
        "SELECT id, row_number() OVER (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
                                       ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).confidence, id) \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "window_avg_over_label",
        Ordered,
        "SELECT id, avg(rating) OVER (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment) \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "window_running_sum_of_scores",
        Ordered,
        "SELECT id, sum(aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric) \
                      OVER (ORDER BY id) \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "window_named",
        Ordered,
        "SELECT id, count(*) OVER w FROM diff_reviews \
         WINDOW w AS (PARTITION BY (aws_comprehend.detect_sentiment(body, 'en')).sentiment ORDER BY id) \
          ORDER BY id",
    ),
    // --- Nested in other expressions -----------------------------------------------------------
    same(
        "nested_cast_float",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::float AS f \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "nested_cast_numeric_arithmetic",
        Ordered,
        "SELECT id, aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric * 2 + 1 \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "nested_case",
        Ordered,
        "SELECT id, CASE (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
                      WHEN 'POSITIVE' THEN 1 WHEN 'NEGATIVE' THEN -1 ELSE 0 END AS polarity \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "nested_coalesce_lower_upper_concat",
        Ordered,
        "SELECT id, coalesce(lower((aws_comprehend.detect_sentiment(body, lang)).sentiment), 'none') \
                    || ':' || upper(coalesce(lang, '?')) \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "nested_operators_on_confidence",
        Ordered,
        "SELECT id, round(((aws_comprehend.detect_sentiment(body, 'en')).confidence * 100)::numeric, 2), \
                (aws_comprehend.detect_sentiment(body, 'en')).confidence > 0.7 AS sure \
           FROM diff_reviews ORDER BY id",
    ),
    same(
        "nested_record_cast_to_text",
        Ordered,
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en')::text FROM diff_reviews ORDER BY id",
    ),
    same(
        "nested_length_of_echo",
        Ordered,
        "SELECT id, length(aws_sagemaker.invoke_endpoint('echo', 5, merchant, memo)) \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "nested_compare_with_column_and_boolean_logic",
        Ordered,
        "SELECT t.id, aws_sagemaker.invoke_endpoint('score', 10, amount, qty)::numeric > amount AS up, \
                (aws_sagemaker.invoke_endpoint('echo', 1, flagged) = 't') AND qty > 0 AS both \
           FROM diff_tx t ORDER BY id",
    ),
    same(
        "nested_timestamp_arithmetic",
        Ordered,
        "SELECT id, ts + aws_sagemaker.invoke_endpoint('score', 4, qty)::int * interval '1 minute' \
           FROM diff_tx ORDER BY id",
    ),
    same(
        "nested_params_case_threshold",
        Ordered,
        "SELECT id, CASE WHEN (aws_comprehend.detect_sentiment(body, 'en')).confidence > $1 \
                         THEN 'sure' ELSE 'unsure' END \
           FROM diff_reviews ORDER BY id",
    )
    .with(&[Param::F32(0.7)]),
    // --- CTEs ----------------------------------------------------------------------------------
    same(
        "cte_plain_ml_in_main_select_list",
        Ordered,
        "WITH v AS (SELECT id, body FROM diff_reviews WHERE verified) \
         SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM v ORDER BY id",
    ),
    same(
        "cte_ml_inside_grouped_outside",
        AnyOrder,
        "WITH s AS (SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label \
                      FROM diff_reviews) \
         SELECT label, count(*) FROM s GROUP BY label",
    ),
    same(
        "cte_plain_ml_in_main_where",
        AnyOrder,
        "WITH v AS (SELECT * FROM diff_reviews WHERE rating <= 2) \
         SELECT id FROM v \
          WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment <> 'POSITIVE'",
    ),
    same(
        "cte_materialized_record",
        Ordered,
        "WITH s AS MATERIALIZED \
              (SELECT id, aws_comprehend.detect_sentiment(body, 'en') AS d FROM diff_reviews) \
         SELECT id, (d).sentiment FROM s WHERE (d).confidence > 0.7 ORDER BY id",
    ),
    same(
        "cte_two_ml_ctes_joined",
        AnyOrder,
        "WITH a AS (SELECT user_id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment s \
                      FROM diff_reviews), \
              b AS (SELECT id, (aws_comprehend.detect_sentiment(bio, 'en')).sentiment s \
                      FROM diff_users) \
         SELECT a.user_id, count(*) FROM a JOIN b ON a.user_id = b.id AND a.s = b.s \
          GROUP BY a.user_id",
    ),
    // --- Subqueries in FROM ----------------------------------------------------------------------
    same(
        "subquery_plain_ml_in_outer_select_list",
        Ordered,
        "SELECT t.id, (aws_comprehend.detect_sentiment(t.body, 'en')).sentiment \
           FROM (SELECT id, body FROM diff_reviews ORDER BY id LIMIT 25) t ORDER BY t.id",
    ),
    same(
        "subquery_ml_filtered_outside",
        AnyOrder,
        "SELECT * FROM (SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s \
                          FROM diff_reviews) t \
          WHERE s = 'MIXED'",
    ),
    same(
        "subquery_ml_aggregated_inside",
        AnyOrder,
        "SELECT s, n FROM (SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment s, \
                                  count(*) n FROM diff_reviews GROUP BY 1) g \
          WHERE n > 1",
    ),
    // --- IN / EXISTS / scalar subqueries -------------------------------------------------------
    same(
        "in_subquery",
        AnyOrder,
        "SELECT id, name FROM diff_users WHERE id IN \
           (SELECT user_id FROM diff_reviews \
             WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE')",
    ),
    same(
        "not_in_subquery",
        AnyOrder,
        "SELECT id FROM diff_users WHERE id NOT IN \
           (SELECT user_id FROM diff_reviews \
             WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' \
               AND user_id IS NOT NULL)",
    ),
    same(
        "in_subquery_of_labels",
        AnyOrder,
        "SELECT id FROM diff_users \
          WHERE (aws_comprehend.detect_sentiment(bio, 'en')).sentiment IN \
                (SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment \
                   FROM diff_reviews WHERE rating = 1)",
    ),
    same(
        "exists_subquery_correlated_by_plain_column",
        AnyOrder,
        "SELECT u.id FROM diff_users u WHERE EXISTS \
           (SELECT 1 FROM diff_reviews r WHERE r.user_id = u.id \
               AND (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment = 'POSITIVE')",
    ),
    same(
        "scalar_subqueries",
        Ordered,
        "SELECT (SELECT count(*) FROM diff_reviews \
                  WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE') AS pos, \
                (SELECT count(*) FROM diff_users) AS users",
    ),
    same(
        "scalar_subquery_in_where",
        AnyOrder,
        "SELECT id FROM diff_tx WHERE amount > \
           (SELECT max(aws_sagemaker.invoke_endpoint('score', 10, qty)::numeric) \
              FROM diff_tx WHERE flagged)",
    ),
    // --- UNION / INTERSECT / EXCEPT --------------------------------------------------------------
    same(
        "union_labels",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews \
         UNION SELECT (aws_comprehend.detect_sentiment(bio, 'en')).sentiment FROM diff_users",
    ),
    same(
        "union_all_branches",
        AnyOrder,
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews \
          WHERE id <= 10 \
         UNION ALL SELECT id, (aws_comprehend.detect_sentiment(bio, 'en')).sentiment FROM diff_users",
    ),
    same(
        "union_all_plain_and_ml_branch",
        AnyOrder,
        "SELECT id, name::text FROM diff_users \
         UNION ALL SELECT id, aws_sagemaker.invoke_endpoint('echo', 1, memo) FROM diff_tx",
    ),
    same(
        "intersect_labels",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews \
         INTERSECT SELECT (aws_comprehend.detect_sentiment(bio, 'en')).sentiment FROM diff_users",
    ),
    same(
        "except_labels",
        AnyOrder,
        "SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews \
         EXCEPT SELECT (aws_comprehend.detect_sentiment(bio, 'en')).sentiment FROM diff_users \
                 WHERE vip",
    ),
    // --- Forms that must be refused ------------------------------------------------------------
    refused(
        "refused_correlated_scalar_subquery",
        "SELECT u.id, (SELECT count(*) FROM diff_reviews r WHERE r.user_id = u.id \
                         AND (aws_comprehend.detect_sentiment(u.bio, 'en')).sentiment = 'POSITIVE') \
           FROM diff_users u",
    ),
    refused(
        "refused_correlated_exists",
        "SELECT u.id FROM diff_users u WHERE EXISTS \
           (SELECT 1 FROM diff_reviews r \
             WHERE aws_comprehend.detect_sentiment(u.bio || r.body, 'en') IS NOT NULL)",
    ),
    // INSERT … SELECT writes the enriched rows (each side into its own diff_insert; diff_sink
    // stays empty, for the refused writes).
    same(
        "insert_select_returning",
        AnyOrder,
        "INSERT INTO diff_insert (id, label) \
         SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews \
         RETURNING id, label",
    ),
    same(
        "insert_select_where_ml_returning_expression",
        AnyOrder,
        "INSERT INTO diff_insert (id, label) \
         SELECT id, aws_sagemaker.invoke_endpoint('score', 10, rating) FROM diff_reviews \
          WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'POSITIVE' \
         RETURNING id * 2, upper(label)",
    ),
    refused(
        "refused_insert_values",
        "INSERT INTO diff_sink VALUES (1, aws_sagemaker.invoke_endpoint('score', 1, 1))",
    ),
    refused(
        "refused_insert_returning",
        "INSERT INTO diff_sink VALUES (2, 'good') \
         RETURNING (aws_comprehend.detect_sentiment(label, 'en')).sentiment",
    ),
    // UPDATE and DELETE, each of a table of its own (copies of diff_reviews).
    same(
        "update_set_ml_returning",
        AnyOrder,
        "UPDATE diff_upd_set SET label = (aws_comprehend.detect_sentiment(label, 'en')).sentiment \
          WHERE id % 2 = 0 RETURNING id, label",
    ),
    same(
        "update_where_ml_returning",
        AnyOrder,
        "UPDATE diff_upd_where u SET label = lower(u.label) \
          WHERE aws_sagemaker.invoke_endpoint('score', 10, u.rating)::int > 3 \
         RETURNING u.id, u.label",
    ),
    same(
        "delete_where_ml_returning",
        AnyOrder,
        "DELETE FROM diff_del \
          WHERE (aws_comprehend.detect_sentiment(label, 'en')).sentiment = 'NEGATIVE' RETURNING id",
    ),
    refused(
        "refused_update_ml_in_a_subquery",
        "UPDATE diff_sink SET label = 'x' \
          WHERE id IN (SELECT id FROM diff_reviews \
                        WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = 'NEGATIVE')",
    ),
    refused(
        "refused_merge",
        "MERGE INTO diff_sink k USING diff_reviews r ON k.id = r.id \
         WHEN NOT MATCHED THEN \
           INSERT VALUES (r.id, (aws_comprehend.detect_sentiment(r.body, 'en')).sentiment)",
    ),
    refused(
        "refused_dml_in_cte",
        "WITH ins AS (INSERT INTO diff_cte_log VALUES (3, 'bad') RETURNING label) \
         SELECT aws_comprehend.detect_sentiment(label, 'en') FROM ins",
    ),
    refused(
        "refused_dml_in_cte_ml_in_where",
        "WITH ins AS (INSERT INTO diff_cte_log VALUES (4, 'good') RETURNING id, label) \
         SELECT id FROM ins \
          WHERE (aws_comprehend.detect_sentiment(label, 'en')).sentiment = 'POSITIVE'",
    ),
    refused(
        "refused_copy",
        "COPY (SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM diff_reviews) TO STDOUT",
    ),
    refused(
        "refused_create_table_as_with_no_data",
        "CREATE TABLE diff_ctas AS \
         SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM diff_reviews WITH NO DATA",
    ),
    refused(
        "refused_create_view",
        "CREATE VIEW diff_view AS \
         SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM diff_reviews",
    ),
    refused(
        "refused_outer_join_condition_next_to_other_ml_calls",
        "SELECT u.id, (aws_comprehend.detect_sentiment(u.bio, 'en')).sentiment \
           FROM diff_users u LEFT JOIN diff_reviews r ON r.user_id = u.id \
            AND (aws_comprehend.detect_sentiment(r.body || u.name, 'en')).sentiment = 'POSITIVE'",
    ),
    refused(
        "refused_nested_ml_argument",
        "SELECT aws_comprehend.detect_sentiment(aws_sagemaker.invoke_endpoint('echo', 1, body), 'en') \
           FROM diff_reviews",
    ),
    refused(
        "refused_nested_invoke_in_invoke",
        "SELECT aws_sagemaker.invoke_endpoint('score', 1, \
                  aws_sagemaker.invoke_endpoint('score', 1, amount, qty)) FROM diff_tx",
    ),
];

/// The subset run against the hot standby: every kind of expectation, both ML functions, and
/// parameters.
const STANDBY_CASES: &[&str] = &[
    "select_bare_record",
    "select_star_fields_with_batch",
    "select_invoke_numeric_and_int",
    "select_invoke_text_csv_quoting",
    "select_params_language_and_filter",
    "from_lateral_columns",
    "from_function_params",
    "cte_plain_ml_in_main_select_list",
    "where_label",
    "group_by_label_ordinal",
    "order_by_params_limit",
    "window_rank_by_label_and_score",
    "nested_cast_float",
    "where_params_endpoint_threshold",
    "left_join_on_label",
    "full_join_on_confidence_of_both_sides",
    "left_join_labels_with_parameters",
    "in_subquery",
    "cte_two_ml_ctes_joined",
    "union_all_branches",
    "refused_correlated_exists",
];

// ---------------------------------------------------------------------------------------------
// Test data, identical in both databases
// ---------------------------------------------------------------------------------------------

/// Review texts: every sentiment label, NULL, empty and blank, Unicode (accents, CJK, Greek,
/// Arabic, emoji), quotes, commas, newlines, tabs, backslashes; rows reuse them (duplicates).
const TEXTS: &[Option<&str>] = &[
    Some("I love it, great product!"),
    Some("terrible, awful, broken on arrival"),
    Some("good but bad"),
    Some("a table"),
    Some(""),
    None,
    Some("Café was good, naïve décor but great"),
    Some("很好 good 很差"),
    Some("日本語のテキスト"),
    Some("Ünïcödé is great 👍"),
    Some("👍good👎bad"),
    Some("say \"great\"\nthen\r\nleave, good"),
    Some("'good','bad','sad'"),
    Some("O'Reilly's book: excellent, excellent"),
    Some("commas, commas, everywhere, happy"),
    Some("line one\nline two: sad"),
    Some("HATE HATE love"),
    Some("best best best best"),
    Some("worst worst worst"),
    Some("wonderful fantastic amazing happy excellent poor horrible disappointing sad"),
    Some("good bad good bad"),
    Some("nothing to say"),
    Some("   "),
    Some("NULL"),
    Some("tab\tseparated\tnice"),
    Some("Ελληνικά good"),
    Some("مرحبا bad"),
    Some("😀😀😀"),
    Some("%_ wildcards good"),
    Some("back\\slash bad"),
    Some("semi;colon; great"),
    Some("emoji 🎉 party, amazing, awful"),
    Some("ok"),
    Some("I love it, great product!"),
    Some("good, good; bad, poor, sad. hate"),
    Some("\"quoted\" \"\" ,,, happy happy"),
    Some("Naïve café 😀, nice, NICE, nice"),
];

const NAMES: &[&str] = &[
    "Zoë",
    "François",
    "王小明",
    "O'Brien",
    "Ana, María",
    "😀 Smiley",
    "Line\nBreak",
    "plain",
    "Ørsted",
    "Σωκράτης",
    "\"Quote\"",
    "  spaced  ",
    "",
    "Ünal",
    "Kim 김",
    "Jürgen",
    "Noël",
    "back\\slash",
    "comma,name",
    "Zed",
];

const LANGS: &[Option<&str>] = &[
    Some("en"),
    Some("en"),
    Some("es"),
    Some("en"),
    Some("fr"),
    Some("de"),
    Some("en"),
    Some("ja"),
    None,
    Some("zh-TW"),
];

const AMOUNTS: &[Option<&str>] = &[
    Some("12.50"),
    Some("0.1"),
    Some("-3"),
    Some("1000000"),
    Some("0"),
    Some("99.999"),
    Some("0.0000001"),
    None,
    Some("250"),
    Some("7.25"),
    Some("-0.01"),
];

const FEES: &[Option<&str>] = &[
    Some("0.1"),
    Some("2.5"),
    Some("0.001"),
    Some("-0.5"),
    None,
    Some("3.4e38"),
    Some("1e-7"),
];

const MERCHANTS: &[Option<&str>] = &[
    Some("ACME"),
    Some("Café Olé"),
    Some("Smith, Jones & Co"),
    Some("say \"hi\""),
    Some("日本商店"),
    Some("🍕 Pizza"),
    Some(""),
    None,
    Some("multi\nline"),
];

const REVIEWS: usize = 80;

fn literal(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("'{}'", v.replace('\'', "''")),
        None => "NULL".to_owned(),
    }
}

/// The setup script: the same tables and rows in both databases.
fn setup_sql() -> String {
    let mut sql = String::from(
        "DROP VIEW IF EXISTS diff_view;
         DROP TABLE IF EXISTS diff_reviews, diff_users, diff_tx, diff_sink, diff_insert, diff_cte_log, diff_ctas,
             diff_upd_set, diff_upd_where, diff_del;
         CREATE TABLE diff_users (id int PRIMARY KEY, name varchar(40), country text,
             vip boolean, signup timestamp, bio text);
         CREATE TABLE diff_reviews (id int PRIMARY KEY, user_id int, body text, lang text,
             rating int, helpful numeric, verified boolean, created timestamp);
         CREATE TABLE diff_tx (id int PRIMARY KEY, user_id int, amount numeric, qty int,
             fee float8, flagged boolean, ts timestamp, merchant text, memo text);
         CREATE TABLE diff_sink (id int, label text);
         CREATE TABLE diff_insert (id int, label text);
         -- Written by the data-modifying CTE cases (if pgenrich ever runs them).
         CREATE TABLE diff_cte_log (id int, label text);
        ",
    );
    let countries = [Some("DE"), Some("FR"), Some("CN"), None, Some("ES")];
    let mut values = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let id = i + 1;
        let bio = if i % 7 == 3 {
            None
        } else {
            TEXTS[(i * 5 + 2) % TEXTS.len()]
        };
        values.push(format!(
            "({id}, {}, {}, {}, timestamp '2023-06-01 09:30:00' + interval '1 day 3 hours' * {i}, {})",
            literal(Some(name)),
            literal(countries[i % countries.len()]),
            ["true", "false", "NULL", "false"][i % 4],
            literal(bio),
        ));
    }
    let _ = writeln!(sql, "INSERT INTO diff_users VALUES {};", values.join(",\n"));
    values.clear();
    let helpful = [
        Some("0.5"),
        Some("12.50"),
        None,
        Some("-3"),
        Some("0"),
        Some("1e-7"),
    ];
    for i in 0..REVIEWS {
        let id = i + 1;
        let user = if i % 13 == 12 {
            "NULL".to_owned()
        } else {
            (1 + (i * 11) % 23).to_string()
        };
        let rating = if i % 17 == 16 {
            "NULL".to_owned()
        } else {
            (1 + (i * 7) % 5).to_string()
        };
        values.push(format!(
            "({id}, {user}, {}, {}, {rating}, {}, {}, \
              timestamp '2024-01-01 00:00:00' + interval '1 minute' * {})",
            literal(TEXTS[i % TEXTS.len()]),
            literal(LANGS[(i * 3) % LANGS.len()]),
            literal(helpful[i % helpful.len()]).replace("'", ""),
            ["true", "false", "NULL"][i % 3],
            (i * 433) % 10_007,
        ));
    }
    let _ = writeln!(
        sql,
        "INSERT INTO diff_reviews VALUES {};",
        values.join(",\n")
    );
    // The UPDATE and DELETE cases' tables, one each: the two lanes run cases concurrently.
    for table in ["diff_upd_set", "diff_upd_where", "diff_del"] {
        let _ = writeln!(
            sql,
            "CREATE TABLE {table} AS SELECT id, rating, body AS label FROM diff_reviews;"
        );
    }
    values.clear();
    for i in 0..60usize {
        let id = i + 1;
        let user = if i % 10 == 9 {
            "NULL".to_owned()
        } else {
            (1 + i % 22).to_string()
        };
        let qty = if i % 9 == 0 {
            "NULL".to_owned()
        } else {
            ((i % 9) as i64 * 3 - 5).to_string()
        };
        values.push(format!(
            "({id}, {user}, {}, {qty}, {}, {}, \
              timestamp '2024-03-01 08:00:00' + interval '97 minutes' * {i} \
                + interval '0.123456 second' * {}, {}, {})",
            literal(AMOUNTS[(i * 3) % AMOUNTS.len()]).replace("'", ""),
            literal(FEES[i % FEES.len()]).replace("'", ""),
            ["true", "NULL", "false", "false", "false"][i % 5],
            i % 3,
            literal(MERCHANTS[i % MERCHANTS.len()]),
            literal(TEXTS[(i * 3 + 1) % TEXTS.len()]),
        ));
    }
    let _ = writeln!(sql, "INSERT INTO diff_tx VALUES {};", values.join(",\n"));
    sql
}

/// Creates the tables once per test process in both databases (the plain test database behind
/// pgenrich and the reference database), directly, as the application role.
async fn setup() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let script = setup_sql();
        for database in [DATABASE, reference_database()] {
            let client = connect(&postgres().direct_conninfo_to(database)).await;
            client
                .batch_execute(&script)
                .await
                .unwrap_or_else(|e| panic!("differential setup in {database}: {e:?}"));
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Running and comparing
// ---------------------------------------------------------------------------------------------

/// A result: the description (parameter and column names/types, extended protocol only), the
/// column names, and the rows as strings.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    described: Vec<String>,
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// Any value as its raw bytes, for comparing binary results exactly.
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary value, decoded where that is easy (for readable diffs) and hex otherwise; equal
/// strings mean equal bytes.
fn render(ty: &Type, raw: &[u8]) -> String {
    let hex = || {
        let mut out = String::from("\\x");
        for b in raw {
            let _ = write!(out, "{b:02x}");
        }
        out
    };
    match *ty {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            match std::str::from_utf8(raw) {
                Ok(s) => s.to_owned(),
                Err(_) => hex(),
            }
        }
        Type::BOOL if raw.len() == 1 => (raw[0] != 0).to_string(),
        Type::INT2 => raw
            .try_into()
            .map_or_else(|_| hex(), |b| i16::from_be_bytes(b).to_string()),
        Type::INT4 => raw
            .try_into()
            .map_or_else(|_| hex(), |b| i32::from_be_bytes(b).to_string()),
        Type::INT8 => raw
            .try_into()
            .map_or_else(|_| hex(), |b| i64::from_be_bytes(b).to_string()),
        Type::FLOAT4 => raw
            .try_into()
            .map_or_else(|_| hex(), |b| format!("{:?}f32", f32::from_be_bytes(b))),
        Type::FLOAT8 => raw
            .try_into()
            .map_or_else(|_| hex(), |b| format!("{:?}f64", f64::from_be_bytes(b))),
        _ => hex(),
    }
}

fn describe_statement(statement: &tokio_postgres::Statement) -> Vec<String> {
    let params = statement
        .params()
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${} {}", i + 1, t.name()));
    let columns = statement.columns().iter().map(|c| {
        format!(
            "{} {} (oid {}, typmod {})",
            c.name(),
            c.type_().name(),
            c.type_().oid(),
            c.type_modifier()
        )
    });
    params.chain(columns).collect()
}

async fn run_simple(client: &Client, sql: &str) -> Result<Outcome, tokio_postgres::Error> {
    let mut outcome = Outcome {
        described: Vec::new(),
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in client.simple_query(sql).await? {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                outcome.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => outcome.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(outcome)
}

/// Prepares (Parse/Describe) and executes `executions` times; the description is taken before
/// the first execution. A re-execution that returns other rows is reported as other rows.
async fn run_extended(
    client: &Client,
    sql: &str,
    params: &[Param],
    executions: usize,
) -> Result<Outcome, tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let described = describe_statement(&statement);
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::value).collect();
    let mut first: Option<Vec<Vec<Option<String>>>> = None;
    for execution in 0..executions {
        let rows = client.query(&statement, &values).await?;
        let mut rows: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|row| {
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, column)| {
                        let Raw(raw) = row.get::<_, Raw>(i);
                        raw.map(|raw| render(column.type_(), &raw))
                    })
                    .collect()
            })
            .collect();
        match &first {
            None => first = Some(rows),
            Some(earlier) if *earlier != rows => {
                // Shows up as a difference from the native result.
                rows.insert(0, vec![Some(format!("re-execution {execution} differs"))]);
                first = Some(rows);
                break;
            }
            Some(_) => {}
        }
    }
    Ok(Outcome {
        described,
        columns,
        rows: first.unwrap_or_default(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Simple,
    Extended,
}

async fn run_sql(
    client: &Client,
    sql: &str,
    params: &[Param],
    protocol: Protocol,
) -> Result<Outcome, tokio_postgres::Error> {
    match protocol {
        Protocol::Simple => run_simple(client, sql).await,
        // Statements with parameters run twice per prepared statement.
        Protocol::Extended => {
            let executions = if params.is_empty() { 1 } else { 2 };
            run_extended(client, sql, params, executions).await
        }
    }
}

fn row_text(row: &[Option<String>]) -> String {
    let cells: Vec<String> = row
        .iter()
        .map(|v| match v {
            Some(v) => format!("{v:?}"),
            None => "NULL".to_owned(),
        })
        .collect();
    format!("({})", cells.join(", "))
}

/// None when equal; otherwise a readable account of the differences.
fn difference(native: &Outcome, proxied: &Outcome, order: Order) -> Option<String> {
    if native.described != proxied.described {
        return Some(format!(
            "Describe differs before execution:\n      native:   {:?}\n      pgenrich: {:?}",
            native.described, proxied.described
        ));
    }
    if native.columns != proxied.columns {
        return Some(format!(
            "column names differ:\n      native:   {:?}\n      pgenrich: {:?}",
            native.columns, proxied.columns
        ));
    }
    let (mut expected, mut got) = (native.rows.clone(), proxied.rows.clone());
    if order == AnyOrder {
        expected.sort();
        got.sort();
    }
    if expected == got {
        return None;
    }
    let mut out = format!(
        "rows differ: native {} rows, pgenrich {} rows",
        expected.len(),
        got.len()
    );
    const SHOWN: usize = 8;
    match order {
        Ordered => {
            let show = |r: Option<&Vec<Option<String>>>| {
                r.map_or_else(|| "(no row)".to_owned(), |r| row_text(r))
            };
            let differing = (0..expected.len().max(got.len()))
                .filter(|&i| expected.get(i) != got.get(i))
                .take(SHOWN);
            for i in differing {
                let _ = write!(
                    out,
                    "\n      row {i}: native {} / pgenrich {}",
                    show(expected.get(i)),
                    show(got.get(i))
                );
            }
        }
        AnyOrder => {
            // Multiset differences of the sorted rows.
            let (mut only_native, mut only_proxied) = (Vec::new(), Vec::new());
            let (mut i, mut j) = (0, 0);
            loop {
                match (expected.get(i), got.get(j)) {
                    (Some(e), Some(g)) if e == g => {
                        i += 1;
                        j += 1;
                    }
                    (Some(e), Some(g)) if e < g => {
                        only_native.push(e);
                        i += 1;
                    }
                    (Some(e), None) => {
                        only_native.push(e);
                        i += 1;
                    }
                    (_, Some(g)) => {
                        only_proxied.push(g);
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
            for (label, rows) in [
                ("only native", only_native),
                ("only pgenrich", only_proxied),
            ] {
                let _ = write!(out, "\n      {label}: {} rows", rows.len());
                for row in rows.iter().take(SHOWN) {
                    let _ = write!(out, "\n        {}", row_text(row));
                }
            }
        }
    }
    Some(out)
}

fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("client error: {error}"),
    }
}

/// Ok when `error` is pgenrich's refusal: SQLSTATE 0A000 with a hint.
fn check_refusal(error: &tokio_postgres::Error) -> Result<(), String> {
    match error.as_db_error() {
        Some(db) if db.code().code() == "0A000" && db.hint().is_some() => Ok(()),
        Some(db) if db.code().code() == "0A000" => Err(format!(
            "refused with 0A000 but without a hint: {}",
            db.message()
        )),
        _ => Err(format!(
            "expected a 0A000 refusal, got {}",
            error_text(error)
        )),
    }
}

/// What happened to one case in one protocol.
enum Verdict {
    /// As expected; the short state for the summary.
    Pass(&'static str),
    /// A known deviation, still there: printed, not failed.
    KnownBug(String),
    Fail(String),
}

/// How pgenrich's answer relates to native evaluation.
enum Observed {
    Matched,
    Refused,
    Differs(String),
    Error(String),
}

/// Runs the case through pgenrich; compares with `native` (the native result if already known,
/// else computed now, only when pgenrich answered).
async fn observe(
    native: &Client,
    expected: Option<Outcome>,
    proxied: &Client,
    case: &Case,
    protocol: Protocol,
) -> Observed {
    let got = run_sql(proxied, case.sql, case.params, protocol).await;
    let observed = match got {
        Err(e) => match check_refusal(&e) {
            Ok(()) => Observed::Refused,
            Err(why) => Observed::Error(why),
        },
        Ok(got) => match match expected {
            Some(expected) => Ok(expected),
            None => run_sql(native, case.sql, case.params, protocol).await,
        } {
            Ok(expected) => match difference(&expected, &got, case.order) {
                None => Observed::Matched,
                Some(diff) => Observed::Differs(diff),
            },
            Err(e) => Observed::Differs(format!(
                "pgenrich answered ({} rows) where native evaluation fails: {}",
                got.rows.len(),
                error_text(&e)
            )),
        },
    };
    if !matches!(observed, Observed::Matched) {
        // After a refusal (or any failure) the session must go on.
        if let Err(e) = proxied.simple_query("SELECT 1").await {
            return Observed::Error(format!("the session is unusable afterwards: {e}"));
        }
    }
    observed
}

async fn evaluate(native: &Client, proxied: &Client, case: &Case, protocol: Protocol) -> Verdict {
    let expect = case.expect(protocol);
    let mut expected = None;
    if expect == Expect::Pending && protocol == Protocol::Extended {
        // Not executed natively unless pgenrich answers, but it must be valid SQL there.
        if let Err(e) = native.prepare(case.sql).await {
            return Verdict::Fail(format!(
                "the case itself does not prepare on the reference database: {}",
                error_text(&e)
            ));
        }
    }
    if expect == Expect::Same {
        // A Same case must also run natively, whatever pgenrich does.
        match run_sql(native, case.sql, case.params, protocol).await {
            Ok(outcome) => expected = Some(outcome),
            Err(e) => {
                return Verdict::Fail(format!(
                    "the case itself fails natively on the reference database: {}",
                    error_text(&e)
                ))
            }
        }
    }
    let observed = observe(native, expected, proxied, case, protocol).await;
    let verdict = match (expect, &observed) {
        (Expect::Same, Observed::Matched) => Verdict::Pass("same"),
        (Expect::Same, Observed::Differs(diff)) => Verdict::Fail(format!("WRONG RESULT: {diff}")),
        (Expect::Same, Observed::Refused) => {
            Verdict::Fail("expected the native result, got a 0A000 refusal".into())
        }
        (Expect::Same, Observed::Error(e)) => {
            Verdict::Fail(format!("expected the native result, got {e}"))
        }
        (Expect::Pending | Expect::Refused, Observed::Refused) => Verdict::Pass("0A000"),
        (Expect::Pending, Observed::Matched) => Verdict::Fail(format!(
            "now matches native in the {protocol:?} protocol: mark it Same there \
             (pending( -> same_simple( -> same()"
        )),
        (Expect::Refused, Observed::Matched) => {
            Verdict::Fail("must be refused with 0A000, but pgenrich answered it".into())
        }
        (Expect::Pending | Expect::Refused, Observed::Differs(diff)) => Verdict::Fail(format!(
            "must be refused with 0A000, but pgenrich answered with a WRONG RESULT: {diff}"
        )),
        (Expect::Pending | Expect::Refused, Observed::Error(e)) => Verdict::Fail(e.clone()),
    };
    match (case.known_bug(protocol), verdict) {
        (None, verdict) => verdict,
        (Some(_), Verdict::Fail(why))
            if matches!((expect, &observed), (Expect::Pending, Observed::Matched)) =>
        {
            Verdict::Fail(format!("fixed: remove its .bug(...) marker; {why}"))
        }
        // Only the known deviation passes; any other failure is reported.
        (Some(signature), Verdict::Fail(why)) if why.contains(signature) => Verdict::KnownBug(why),
        (Some(signature), Verdict::Fail(why)) => Verdict::Fail(format!(
            "{why}\n    (the known bug of this case is \"{signature}\", not this)"
        )),
        (Some(_), _) => {
            Verdict::Fail("fixed (behaves as expected now): remove its .bug(...) marker".into())
        }
    }
}

/// The outcome of a case in each protocol it runs in.
struct CaseResult {
    case: Case,
    verdicts: Vec<(Protocol, Verdict)>,
}

/// One lane: its own native and pgenrich connections, running `cases` in turn.
async fn run_lane(native_conninfo: String, proxy: &Proxy, cases: Vec<Case>) -> Vec<CaseResult> {
    let native = connect(&native_conninfo).await;
    let proxied = proxy.connect().await;
    let mut results = Vec::new();
    for case in cases {
        let mut verdicts = Vec::new();
        for &protocol in case.protocols() {
            verdicts.push((protocol, evaluate(&native, &proxied, &case, protocol).await));
        }
        results.push(CaseResult { case, verdicts });
    }
    results
}

/// Runs `cases` in two lanes, prints a summary (with every known bug), and panics with every
/// failure.
async fn run_table(label: &str, native_conninfo: &str, proxy: &Proxy, cases: &[Case]) {
    let started = std::time::Instant::now();
    let lane =
        |parity: usize| -> Vec<Case> { cases.iter().skip(parity).step_by(2).copied().collect() };
    let (a, b) = tokio::join!(
        run_lane(native_conninfo.to_owned(), proxy, lane(0)),
        run_lane(native_conninfo.to_owned(), proxy, lane(1)),
    );
    // Back in table order: lane a holds cases 0, 2, 4, …
    let mut results = Vec::new();
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => results.extend(x.into_iter().chain(y)),
        }
    }

    let mut failures = Vec::new();
    let mut bugs = Vec::new();
    let mut lines = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for result in &results {
        let case = &result.case;
        let mut states = Vec::new();
        for (protocol, verdict) in &result.verdicts {
            let expect = case.expect(*protocol);
            let kind = match case.known_bug(*protocol) {
                Some(_) => format!("{expect:?} (known bug)"),
                None => format!("{expect:?}"),
            };
            *counts.entry(format!("{protocol:?} {kind}")).or_default() += 1;
            let state = match verdict {
                Verdict::Pass(state) => (*state).to_owned(),
                Verdict::KnownBug(what) => {
                    bugs.push(format!(
                        "{} [{protocol:?}]: {what}\n    known as: {}\n    SQL: {}",
                        case.name,
                        case.known_bug(*protocol).unwrap_or_default(),
                        case.sql
                    ));
                    "KNOWN BUG".to_owned()
                }
                Verdict::Fail(why) => {
                    failures.push(format!(
                        "{} [{protocol:?}, expected {kind}]: {why}\n    SQL: {}",
                        case.name, case.sql
                    ));
                    "FAILED".to_owned()
                }
            };
            states.push(format!("{protocol:?}: {kind} -> {state}"));
        }
        lines.push(format!("  {:<46} {}", case.name, states.join(", ")));
    }
    let mut counts: Vec<String> = counts
        .into_iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    counts.sort();
    let pending = results
        .iter()
        .filter(|r| {
            r.verdicts
                .iter()
                .any(|(p, _)| r.case.expect(*p) == Expect::Pending)
        })
        .count();
    println!(
        "differential ({label}): {} cases in {:.1?}; {pending} cases PENDING in at least one \
         protocol (refused with 0A000 until supported)\n  per protocol: {}\n{}",
        cases.len(),
        started.elapsed(),
        counts.join(", "),
        lines.join("\n")
    );
    if !bugs.is_empty() {
        println!(
            "differential ({label}): {} KNOWN BUGS (passing only while they deviate):\n  {}",
            bugs.len(),
            bugs.join("\n  ")
        );
    }
    assert!(
        failures.is_empty(),
        "differential ({label}): {} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Refused statements changed nothing.
async fn assert_nothing_written(client: &Client) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM diff_sink), \
                    to_regclass('diff_ctas') IS NULL AND to_regclass('diff_view') IS NULL",
            &[],
        )
        .await
        .expect("check writes");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, bool>(1)),
        (0, true),
        "a refused statement wrote something"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_table_is_well_formed() {
    let mut names = std::collections::BTreeSet::new();
    for case in CASES {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let placeholders = (1..=9)
            .filter(|n| case.sql.contains(&format!("${n}")))
            .count();
        assert_eq!(placeholders, case.params.len(), "{}: parameters", case.name);
    }
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    let prepared = CASES.iter().filter(|c| c.extended == Expect::Same).count();
    assert!(
        prepared >= 15,
        "{prepared} cases compared as prepared statements"
    );
    for name in STANDBY_CASES {
        assert!(names.contains(name), "standby case {name} is not in CASES");
    }
    assert!(STANDBY_CASES.len() >= 10);
}

#[test]
fn differences_are_reported_row_by_row() {
    let outcome = |rows: &[&[Option<&str>]]| Outcome {
        described: vec!["id int4 (oid 23, typmod -1)".into()],
        columns: vec!["id".into()],
        rows: rows
            .iter()
            .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
            .collect(),
    };
    let native = outcome(&[&[Some("1")], &[Some("2")], &[None]]);
    let shuffled = outcome(&[&[None], &[Some("2")], &[Some("1")]]);
    assert_eq!(difference(&native, &shuffled, AnyOrder), None);
    let diff = difference(&native, &shuffled, Ordered).expect("order differs");
    assert!(
        diff.contains("row 0: native (\"1\") / pgenrich (NULL)"),
        "{diff}"
    );
    let other = outcome(&[&[Some("1")], &[Some("2")], &[Some("2")]]);
    let diff = difference(&native, &other, AnyOrder).expect("rows differ");
    assert!(
        diff.contains("only native: 1 rows\n        (NULL)")
            && diff.contains("only pgenrich: 1 rows\n        (\"2\")"),
        "{diff}"
    );
    let mut described = native.clone();
    described.described = vec!["id text (oid 25, typmod -1)".into()];
    let diff = difference(&native, &described, AnyOrder).expect("Describe differs");
    assert!(diff.starts_with("Describe differs"), "{diff}");
}

/// Every case of the table against the primary: native on the reference database, through
/// pgenrich (mock AWS) on the plain test database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_position_agrees_with_native_or_is_refused() {
    setup().await;
    let native = postgres().direct_conninfo_to(reference_database());
    let proxy = Proxy::start().await;
    run_table("primary", &native, &proxy, CASES).await;
    assert_nothing_written(&connect(&postgres().direct_conninfo()).await).await;
}

/// A subset on the hot standby: native on its copy of the reference database, through pgenrich
/// in front of it on its copy of the test database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_agrees_with_native_on_the_standby() {
    setup().await;
    let standby = standby();
    standby.wait_for_replay();
    let native = standby.direct_conninfo_to(reference_database());
    let proxy = Proxy::start_on_standby().await;
    let in_recovery = proxy
        .connect()
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("recovery state");
    assert!(
        in_recovery.get::<_, bool>(0),
        "pgenrich is not on the standby"
    );
    let cases: Vec<Case> = STANDBY_CASES
        .iter()
        .map(|name| {
            *CASES
                .iter()
                .find(|c| c.name == *name)
                .expect("standby case in CASES")
        })
        .collect();
    run_table("standby", &native, &proxy, &cases).await;
}

/// A sampling query: returns `id, sentiment, confidence` and optionally the sampled random value
/// `x`, which the query keeps only below 0.5.
struct Sample {
    name: &'static str,
    sql: &'static str,
    simple: Expect,
    extended: Expect,
    /// Rows the sample is drawn from, by the reference's (sentiment, confidence).
    eligible: fn(&(Option<String>, Option<String>)) -> bool,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "select_list_where_random",
        sql: "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                     (aws_comprehend.detect_sentiment(body, 'en')).confidence \
                FROM diff_reviews WHERE random() < 0.5",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |_| true,
    },
    Sample {
        name: "table_function_where_random",
        sql: "SELECT r.id, s.sentiment, s.confidence \
                FROM diff_reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
               WHERE random() < 0.5",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |_| true,
    },
    Sample {
        name: "tablesample_bernoulli",
        sql: "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).* \
                FROM diff_reviews TABLESAMPLE BERNOULLI (50)",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |_| true,
    },
    Sample {
        name: "random_in_plain_subquery_evaluated_once",
        sql: "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                     (aws_comprehend.detect_sentiment(body, 'en')).confidence, x \
                FROM (SELECT id, body, random() AS x FROM diff_reviews) t WHERE x < 0.5",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |_| true,
    },
    Sample {
        name: "where_random_and_ml",
        sql: "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                     (aws_comprehend.detect_sentiment(body, 'en')).confidence \
                FROM diff_reviews \
               WHERE random() < 0.5 \
                 AND (aws_comprehend.detect_sentiment(body, 'en')).sentiment <> 'NEUTRAL'",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |(s, _)| s.as_deref().is_some_and(|s| s != "NEUTRAL"),
    },
    Sample {
        name: "ml_filter_over_random_in_plain_subquery_evaluated_once",
        sql: "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                     (aws_comprehend.detect_sentiment(body, 'en')).confidence, x \
                FROM (SELECT id, body, random() AS x FROM diff_reviews) t \
               WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment IS NOT NULL \
                 AND x < 0.5 \
               ORDER BY id",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |(s, _)| s.is_some(),
    },
    Sample {
        name: "random_next_to_ml_in_subquery_evaluated_once",
        sql: "SELECT id, s, c, x FROM \
                (SELECT id, random() AS x, \
                        (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS s, \
                        (aws_comprehend.detect_sentiment(body, 'en')).confidence AS c \
                   FROM diff_reviews) t \
               WHERE x < 0.5",
        simple: Expect::Same,
        extended: Expect::Same,
        eligible: |_| true,
    },
];

/// Volatile sampling cannot be compared with a native run; instead every returned row must carry
/// the reference model's values for that row, no row twice, no row outside the population, the
/// sampled value below the cut, and a plausible number of rows (p = 0.5 over the population).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sampling_is_consistent_with_the_reference() {
    setup().await;
    let native = connect(&postgres().direct_conninfo_to(reference_database())).await;
    let proxy = Proxy::start().await;
    let proxied = proxy.connect().await;
    let mut failures = Vec::new();
    for protocol in [Protocol::Simple, Protocol::Extended] {
        // The reference's values in this protocol's rendering (text, or decoded binary).
        let reference: HashMap<String, (Option<String>, Option<String>)> = run_sql(
            &native,
            "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment, \
                    (aws_comprehend.detect_sentiment(body, 'en')).confidence FROM diff_reviews",
            &[],
            protocol,
        )
        .await
        .expect("reference values")
        .rows
        .into_iter()
        .map(|mut r| {
            let confidence = r.pop().flatten();
            let sentiment = r.pop().flatten();
            (r.pop().flatten().expect("id"), (sentiment, confidence))
        })
        .collect();
        assert_eq!(reference.len(), REVIEWS);
        for sample in SAMPLES {
            if let Err(why) = check_sample(sample, &reference, &proxied, protocol).await {
                failures.push(format!(
                    "{} [{protocol:?}]: {why}\n    SQL: {}",
                    sample.name, sample.sql
                ));
            }
        }
    }
    let pending = SAMPLES
        .iter()
        .filter(|s| s.simple == Expect::Pending || s.extended == Expect::Pending)
        .count();
    println!(
        "random sampling: {} queries in both protocols, {pending} PENDING in at least one",
        SAMPLES.len()
    );
    assert!(
        failures.is_empty(),
        "random sampling: {} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

async fn check_sample(
    sample: &Sample,
    reference: &HashMap<String, (Option<String>, Option<String>)>,
    proxied: &Client,
    protocol: Protocol,
) -> Result<(), String> {
    let expect = match protocol {
        Protocol::Simple => sample.simple,
        Protocol::Extended => sample.extended,
    };
    let outcome = match run_sql(proxied, sample.sql, &[], protocol).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let usable = proxied.simple_query("SELECT 1").await;
            return match (expect, check_refusal(&e), usable) {
                (_, _, Err(u)) => Err(format!("the session is unusable afterwards: {u}")),
                (Expect::Same, _, _) => Err(format!("expected rows, got {}", error_text(&e))),
                (_, refusal, _) => refusal,
            };
        }
    };
    let mut problems = Vec::new();
    if expect != Expect::Same {
        problems.push(format!(
            "expected a 0A000 refusal ({expect:?}), got {} rows (mark it Same if the checks below \
             pass)",
            outcome.rows.len()
        ));
    }
    let population = reference.values().filter(|v| (sample.eligible)(v)).count();
    let mut seen = std::collections::HashSet::new();
    for row in &outcome.rows {
        let id = row[0].clone().unwrap_or_default();
        if !seen.insert(id.clone()) {
            problems.push(format!("row {id} returned twice"));
        }
        let values = (row[1].clone(), row[2].clone());
        match reference.get(&id) {
            None => problems.push(format!("row {id} does not exist")),
            Some(expected) if *expected != values => problems.push(format!(
                "row {id}: {values:?}, the reference says {expected:?}"
            )),
            Some(expected) if !(sample.eligible)(expected) => {
                problems.push(format!("row {id} ({expected:?}) is not eligible"))
            }
            Some(_) => {}
        }
        if let Some(x) = row.get(3) {
            let text = x.as_deref().unwrap_or("NULL");
            match text.trim_end_matches("f64").parse::<f64>() {
                Ok(x) if x < 0.5 => {}
                _ => problems.push(format!("row {id}: sampled x = {text} is not below 0.5")),
            }
        }
    }
    // Binomial(population, 0.5): more than 7 standard deviations out is implausible.
    let n = outcome.rows.len() as f64;
    let (mean, sd) = (population as f64 / 2.0, (population as f64).sqrt() / 2.0);
    if (n - mean).abs() > 7.0 * sd {
        problems.push(format!(
            "{n} rows sampled from {population}: implausible for p = 0.5"
        ));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}
