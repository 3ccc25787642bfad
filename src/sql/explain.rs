//! `EXPLAIN [ANALYZE] <ML statement>`: recognising the request; the session answers it with
//! pgenrich's own plan (see `session::explain`), of the [`ExplainTarget`] the request was planned into.

use sqlparser::ast::{Expr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;

use super::text::rewrite_unparsable_forms;

/// An EXPLAIN of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainRequest {
    /// Run the statement and report what happened.
    pub analyze: bool,
    /// The explained statement's text.
    pub statement: String,
}

/// The statement an EXPLAIN is about, as pgenrich would run it.
#[derive(Debug)]
pub enum ExplainTarget {
    Streaming(super::plan::StreamingPlan),
    Residual(super::residual::ResidualPlan),
}

/// Whether `sql` has `$n` parameters (outside literals and comments).
pub fn has_parameters(sql: &str) -> bool {
    sqlparser::tokenizer::Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map(|tokens| {
            tokens.iter().any(
                |t| matches!(t, sqlparser::tokenizer::Token::Placeholder(p) if p.starts_with('$')),
            )
        })
        .unwrap_or(true)
}

/// `Some` when `sql` is one `EXPLAIN` statement (`EXPLAIN ANALYZE …`, `EXPLAIN (ANALYZE) …`).
/// Output options (FORMAT, COSTS, …) are accepted and the answer is always text.
pub fn explain(sql: &str) -> Option<ExplainRequest> {
    if !super::text::first_word_may_be(sql.as_bytes(), &["EXPLAIN"])
        || super::text::split_statements(sql).len() > 1
    {
        // Not an EXPLAIN, or several statements: not parsed whole (see `super::inspect`).
        return None;
    }
    let text = rewrite_unparsable_forms(sql);
    let mut statements = super::text::parse_folded(&text).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Explain {
        analyze,
        statement,
        options,
        ..
    }) = statements.pop()
    else {
        return None;
    };
    let option = options.iter().flatten().find_map(|o| {
        o.name
            .value
            .eq_ignore_ascii_case("analyze")
            .then(|| match &o.arg {
                None => true,
                Some(Expr::Value(v)) => match &v.value {
                    Value::Boolean(b) => *b,
                    Value::SingleQuotedString(s) | Value::Number(s, _) => {
                        matches!(s.to_ascii_lowercase().as_str(), "on" | "true" | "1")
                    }
                    _ => false,
                },
                Some(Expr::Identifier(i)) => {
                    matches!(i.value.to_ascii_lowercase().as_str(), "on" | "true")
                }
                Some(_) => false,
            })
    });
    Some(ExplainRequest {
        analyze: analyze || option.unwrap_or(false),
        statement: statement.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_outside_literals_and_comments() {
        assert!(has_parameters("SELECT f($1) FROM t"));
        assert!(!has_parameters(
            "SELECT '$1', \"$2\" -- $3\n FROM t /* $4 */"
        ));
    }

    #[test]
    fn explain_forms_are_recognised() {
        let sql = "SELECT id FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, x) > '1'";
        let plain = explain(&format!("EXPLAIN {sql}")).expect("explain");
        assert!(!plain.analyze);
        assert_eq!(plain.statement, sql);
        for form in [
            "EXPLAIN ANALYZE",
            "EXPLAIN (ANALYZE)",
            "EXPLAIN (ANALYZE true, COSTS off)",
        ] {
            let request = explain(&format!("{form} {sql}")).expect("explain");
            assert!(request.analyze, "{form}");
        }
        assert!(
            !explain(&format!("EXPLAIN (ANALYZE false) {sql}"))
                .expect("explain")
                .analyze
        );
        assert_eq!(explain(sql), None);
        assert_eq!(explain(&format!("EXPLAIN {sql}; SELECT 1")), None);
        // Past comments and any whitespace the tokenizer skips, in any case.
        for lead in ["-- c\n\x0b", "-- c\r", "/* c */ ", "  \n"] {
            assert!(
                explain(&format!("{lead}explain {sql}")).is_some(),
                "{lead:?}"
            );
        }
    }
}
