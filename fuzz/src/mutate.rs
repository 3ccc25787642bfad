//! Mutations of parsed seed statements for the `sql_ast` target: the fuzzer's bytes choose a
//! seed, then a few edits of its syntax tree — an expression replaced by an ML call over it,
//! wrapped in a function, a subquery, an operator or a cast, or swapped for another of the
//! statement's expressions — and of the whole statement (nested as a subquery, a CTE, a set
//! operation, EXPLAIN). The result is printed back to text, so every input is SQL that sqlparser
//! wrote, reaching deep into the planners instead of stopping at the parser.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use sqlparser::ast::{visit_expressions, visit_expressions_mut, Expr, Ident, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Expression templates: `__x__` is the chosen expression, `__y__` another of the statement's.
const EXPR_TEMPLATES: &[&str] = &[
    "aws_comprehend.detect_sentiment(__x__, 'en')",
    "(aws_comprehend.detect_sentiment(__x__, 'en')).sentiment",
    "(aws_comprehend.detect_sentiment(__x__, __y__, 5)).confidence",
    "aws_sagemaker.invoke_endpoint('score', NULL, __x__, __y__)",
    "aws_sagemaker.invoke_endpoint('echo', 10, __x__)::numeric",
    "aws_comprehend.detect_sentiment(__x__)",
    "aws_sagemaker.other(__x__)",
    "aws_bedrock.invoke_model('m', 'application/json', '*/*', __x__)",
    "aws_bedrock.invoke_model_get_embeddings('m', 'application/json', 'embedding', __x__)",
    "(SELECT __x__)",
    "(SELECT __x__ FROM t WHERE __y__)",
    "EXISTS (SELECT 1 FROM t WHERE __x__ = __y__)",
    "__x__ IN (SELECT __y__ FROM t)",
    "coalesce(__x__, __y__)",
    "lower(__x__)",
    "CASE WHEN __x__ THEN __y__ ELSE NULL END",
    "__x__ = __y__",
    "__x__ AND __y__",
    "__x__ OR NOT __y__",
    "__x__ + 1",
    "-__x__",
    "count(__x__)",
    "count(*) FILTER (WHERE __x__)",
    "sum(__x__) OVER (PARTITION BY __y__ ORDER BY __x__)",
    "CAST(__x__ AS text)",
    "__x__::int",
    "ARRAY[__x__, __y__]",
    "(__x__, __y__)",
    "__x__ IS NULL",
    "__x__ BETWEEN __y__ AND 10",
    "$1",
    "__y__",
];

/// Statement templates: `__q__` is the statement's text.
const STATEMENT_TEMPLATES: &[&str] = &[
    "SELECT * FROM (__q__) AS s",
    "SELECT s.*, aws_comprehend.detect_sentiment(s.x, 'en') FROM (__q__) AS s",
    "WITH c AS (__q__) SELECT * FROM c",
    "WITH c AS (__q__) SELECT aws_sagemaker.invoke_endpoint('e', 1, c.x) FROM c WHERE c.y > 0",
    "__q__ UNION ALL __q__",
    "__q__ EXCEPT SELECT 1",
    "EXPLAIN __q__",
    "EXPLAIN ANALYZE __q__",
    "EXPLAIN (ANALYZE, COSTS false) __q__",
    "SELECT 1; __q__",
    "__q__; SELECT 2",
    "BEGIN; __q__",
    "SELECT * FROM t LEFT JOIN LATERAL (__q__) AS l ON aws_comprehend.detect_sentiment(l.x, 'en') IS NULL",
];

/// The seed statements, parsed once: the `sql` target's seed corpus (`seeds/sql`).
fn seeds() -> &'static [Vec<Statement>] {
    static SEEDS: OnceLock<Vec<Vec<Statement>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/sql");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        files.sort();
        let seeds: Vec<Vec<Statement>> = files
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .filter_map(|text| Parser::parse_sql(&PostgreSqlDialect {}, &text).ok())
            .filter(|statements| !statements.is_empty())
            .collect();
        assert!(!seeds.is_empty(), "no parsable seed statements in {dir}");
        seeds
    })
}

fn templates() -> &'static [Expr] {
    static TEMPLATES: OnceLock<Vec<Expr>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        EXPR_TEMPLATES
            .iter()
            .map(|text| {
                Parser::new(&PostgreSqlDialect {})
                    .try_with_sql(text)
                    .and_then(|mut p| p.parse_expr())
                    .unwrap_or_else(|e| panic!("template {text}: {e}"))
            })
            .collect()
    })
}

/// Replaces the identifiers `__x__` and `__y__` in `template`.
fn instantiate(template: &Expr, x: &Expr, y: &Expr) -> Expr {
    let mut out = template.clone();
    let _ = visit_expressions_mut(&mut out, |e| {
        if let Expr::Identifier(Ident { value, .. }) = e {
            match value.as_str() {
                "__x__" => *e = x.clone(),
                "__y__" => *e = y.clone(),
                _ => {}
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// A seed statement with up to four edits, printed back to SQL text.
pub fn mutated_sql(u: &mut Unstructured) -> Result<String> {
    let seeds = seeds();
    let mut statements = seeds[u.choose_index(seeds.len())?].clone();
    for _ in 0..u.int_in_range(0..=4)? {
        // Count first, clone only the expression chosen: cloning every subtree is quadratic in
        // the depth the edits build up.
        let mut count = 0;
        let _ = visit_expressions(&statements, |_| {
            count += 1;
            ControlFlow::<()>::Continue(())
        });
        if count == 0 {
            break;
        }
        let target = u.choose_index(count)?;
        let other_index = u.choose_index(count)?;
        let mut index = 0;
        let mut other = None;
        let _ = visit_expressions(&statements, |e| {
            if index == other_index {
                other = Some(e.clone());
                return ControlFlow::Break(());
            }
            index += 1;
            ControlFlow::Continue(())
        });
        let Some(other) = other else { break };
        let template = &templates()[u.choose_index(EXPR_TEMPLATES.len())?];
        let mut index = 0;
        let _ = visit_expressions_mut(&mut statements, |e| {
            if index == target {
                *e = instantiate(template, e, &other);
            }
            index += 1;
            ControlFlow::<()>::Continue(())
        });
    }
    let mut text = statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if u.ratio(1, 3)? {
        let template = STATEMENT_TEMPLATES[u.choose_index(STATEMENT_TEMPLATES.len())?];
        text = template.replace("__q__", &text);
    }
    Ok(text)
}
