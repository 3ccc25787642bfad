//! Recognising statements that call ML pseudo-functions.
//!
//! The relay only searches each Query and Parse text for the schema names
//! ([`mentions_ml_schema`], a byte search), so that ordinary traffic never pays for more. A text
//! that mentions `aws_comprehend` or `aws_sagemaker` is checked by [`guard`] (one tokenizer pass:
//! is there a call at all, and how deeply do its expressions nest) and only then parsed with
//! sqlparser (PostgreSQL dialect) and walked for calls by [`inspect`], on a planner thread. Text
//! that sqlparser cannot parse falls back to a token-level check, because some forms PostgreSQL
//! accepts (`VARIADIC ARRAY[...]`, `(f(x)).*`) are beyond sqlparser 0.64. A text longer than
//! `max_ml_statement_bytes` is neither tokenized nor parsed (both cost memory per token): [`light`]
//! decides in one pass over its bytes whether it may call one.

pub mod cursor;
pub mod explain;
pub mod guard;
pub mod light;
pub mod plan;
pub mod residual;
pub mod text;

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, ObjectNamePart, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The schemas whose functions pgenrich evaluates instead of the database.
pub const ML_SCHEMAS: [&str; 3] = ["aws_comprehend", "aws_sagemaker", "aws_bedrock"];

/// What the session should do with a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No ML call: relay the message unchanged.
    Relay,
    /// At least one ML call; `function` names the first one found (`schema.name`, lower case).
    Ml { function: String },
}

/// Decides whether `sql` (one Query or Parse text, possibly several statements) calls an ML
/// function. Never fails: text that cannot be understood and shows no ML call is relayed, so that
/// PostgreSQL reports its own syntax errors.
pub fn inspect(sql: &str) -> Verdict {
    if !mentions_ml_schema(sql.as_bytes()) {
        return Verdict::Relay;
    }
    let pieces = text::split_statements(sql);
    if pieces.len() > 1 {
        // One statement at a time: the syntax trees of all of them at once cost several hundred
        // bytes per byte of text.
        return pieces
            .into_iter()
            .map(inspect)
            .find(|verdict| *verdict != Verdict::Relay)
            .unwrap_or(Verdict::Relay);
    }
    match text::parse_folded(sql) {
        Ok(statements) => {
            let mut finder = CallFinder;
            match statements.visit(&mut finder) {
                ControlFlow::Break(function) => Verdict::Ml { function },
                ControlFlow::Continue(()) => Verdict::Relay,
            }
        }
        Err(_) => token_scan(sql),
    }
}

/// Case-insensitive search for `aws_comprehend` / `aws_sagemaker` anywhere in the bytes. False
/// positives (a literal, a comment, a column name) only cost a parse; false negatives are impossible
/// because every spelling of the schema contains these bytes.
pub fn mentions_ml_schema(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql).any(|at| {
        at >= 3
            && sql[at - 3..at].eq_ignore_ascii_case(b"aws")
            && ML_SCHEMAS.iter().any(|schema| {
                let tail = &schema.as_bytes()[4..];
                sql.get(at + 1..at + 1 + tail.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(tail))
            })
    })
}

/// The ML schema a qualified name refers to, if any (`aws_comprehend.f`, `db.aws_sagemaker.f`).
fn ml_function_name(name: &ObjectName) -> Option<String> {
    let parts = &name.0;
    if parts.len() < 2 {
        return None;
    }
    let ident = |part: &ObjectNamePart| match part {
        ObjectNamePart::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
        ObjectNamePart::Function(_) => None,
    };
    let schema = ident(&parts[parts.len() - 2])?;
    let function = ident(&parts[parts.len() - 1])?;
    ML_SCHEMAS
        .contains(&schema.as_str())
        .then(|| format!("{schema}.{function}"))
}

struct CallFinder;

impl Visitor for CallFinder {
    type Break = String;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
        if let Expr::Function(function) = expr {
            if let Some(name) = ml_function_name(&function.name) {
                return ControlFlow::Break(name);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        let called = match factor {
            // `FROM aws_comprehend.detect_sentiment(...)` parses as a table with arguments.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => ml_function_name(name),
            TableFactor::Function { name, .. } => ml_function_name(name),
            _ => None,
        };
        match called {
            Some(name) => ControlFlow::Break(name),
            None => ControlFlow::Continue(()),
        }
    }
}

/// Token-level recognition for text sqlparser cannot parse: `schema . name (` with an ML schema.
/// The tokenizer already separates literals, comments and quoted identifiers.
fn token_scan(sql: &str) -> Verdict {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Verdict::Relay;
    };
    let tokens: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    for window in tokens.windows(4) {
        if let [Token::Word(schema), Token::Period, Token::Word(function), Token::LParen] = window {
            let schema = schema.value.to_ascii_lowercase();
            if ML_SCHEMAS.contains(&schema.as_str()) {
                return Verdict::Ml {
                    function: format!("{schema}.{}", function.value.to_ascii_lowercase()),
                };
            }
        }
    }
    Verdict::Relay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SqlState;
    use sqlparser::parser::Parser;

    fn ml(sql: &str) -> Option<String> {
        match inspect(sql) {
            Verdict::Ml { function } => Some(function),
            Verdict::Relay => None,
        }
    }

    #[test]
    fn text_sqlparser_would_leave_unread_after_end_is_still_inspected() {
        // sqlparser stops at an END after a statement; the calls behind it count (found by
        // fuzzing), and the planners refuse the text as PostgreSQL would.
        let sql = "SELECT 1 END; SELECT aws_comprehend.detect_sentiment('x', 'en')";
        assert_eq!(ml(sql).as_deref(), Some("aws_comprehend.detect_sentiment"));
        let refused = plan::plan("SELECT aws_comprehend.detect_sentiment(b, 'en') FROM t END x")
            .expect_err("a syntax error");
        assert_eq!(refused.code, SqlState::SyntaxError, "{}", refused.message);
    }

    #[test]
    fn plain_statements_are_relayed() {
        for sql in [
            "SELECT 1",
            "SELECT * FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO t VALUES (1); COMMIT",
            "",
            "SELEC broken syntax (",
        ] {
            assert_eq!(inspect(sql), Verdict::Relay, "{sql}");
        }
    }

    #[test]
    fn calls_in_any_position_are_found() {
        let cases = [
            ("SELECT aws_comprehend.detect_sentiment(body, 'en') FROM r", "aws_comprehend.detect_sentiment"),
            ("select AWS_COMPREHEND.DETECT_SENTIMENT(body, 'en') from r", "aws_comprehend.detect_sentiment"),
            (r#"SELECT "aws_sagemaker"."invoke_endpoint"('m', 10, a) FROM t"#, "aws_sagemaker.invoke_endpoint"),
            ("SELECT (aws_comprehend.detect_sentiment(b, 'en')).sentiment FROM r", "aws_comprehend.detect_sentiment"),
            ("SELECT * FROM r WHERE aws_sagemaker.invoke_endpoint('m', NULL, x)::float > 0.9", "aws_sagemaker.invoke_endpoint"),
            ("SELECT * FROM aws_comprehend.detect_sentiment('I love it', 'en')", "aws_comprehend.detect_sentiment"),
            ("SELECT s.sentiment FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s", "aws_comprehend.detect_sentiment"),
            ("SELECT 1; SELECT x FROM t ORDER BY aws_sagemaker.invoke_endpoint('m', 1, x)", "aws_sagemaker.invoke_endpoint"),
            ("WITH s AS (SELECT aws_comprehend.detect_sentiment(b, 'en') FROM r) SELECT * FROM s", "aws_comprehend.detect_sentiment"),
            ("SELECT mydb.aws_comprehend.detect_sentiment(b, 'en') FROM r", "aws_comprehend.detect_sentiment"),
        ];
        for (sql, function) in cases {
            assert_eq!(ml(sql).as_deref(), Some(function), "{sql}");
        }
    }

    #[test]
    fn forms_sqlparser_cannot_parse_are_still_found() {
        for sql in [
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, VARIADIC ARRAY[a, b]) FROM t",
            "SELECT (aws_comprehend.detect_sentiment(b, 'en')).* FROM r",
        ] {
            assert!(Parser::parse_sql(&PostgreSqlDialect {}, sql).is_err() || ml(sql).is_some());
            assert!(ml(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn literals_comments_and_columns_are_not_calls() {
        for sql in [
            "SELECT 'aws_comprehend.detect_sentiment(x, ''en'')'",
            "SELECT 1 -- aws_comprehend.detect_sentiment(x, 'en')",
            "SELECT 1 /* aws_sagemaker.invoke_endpoint('m', 1, x) */",
            "SELECT aws_comprehend FROM t",
            "SELECT t.aws_sagemaker FROM t",
            "SELECT * FROM aws_comprehend.sentiment_log",
            "CREATE TABLE aws_sagemaker_results (id int)",
            "SELEC 'aws_comprehend.detect_sentiment(x)' broken (",
            "SELECT $$aws_comprehend.detect_sentiment(x, 'en')$$",
        ] {
            assert_eq!(inspect(sql), Verdict::Relay, "{sql}");
        }
    }

    #[test]
    fn schema_search_is_case_insensitive_and_bounded() {
        assert!(mentions_ml_schema(b"select Aws_Comprehend.x"));
        assert!(mentions_ml_schema(b"AWS_SAGEMAKER"));
        assert!(!mentions_ml_schema(b"aws_"));
        assert!(!mentions_ml_schema(b"_aws_compre"));
        assert!(!mentions_ml_schema(b"select pgbench_accounts"));
    }
}
