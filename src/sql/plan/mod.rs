//! Planning ML statements for streaming enrichment, as plain data.
//!
//! [`plan`] turns a statement whose ML calls sit in the outermost select list (bare, with a field
//! selection, or `(…).*`) or are table functions in its FROM list (`FROM r,
//! aws_comprehend.detect_sentiment(r.body, 'en') s` with `s.sentiment`, `s.*`, or `*`) into a
//! [`StreamingPlan`]: the *base* statement PostgreSQL runs — the original with every ML call
//! replaced by its argument expressions, which come first as extra columns — and where each ML
//! result goes. The base keeps every other item, FROM entry, filter, sort and limit, so
//! PostgreSQL computes all of the SQL and inference only sees the rows the statement yields.
//!
//! ML calls anywhere else (WHERE, ORDER BY, inside other expressions, CTEs, subqueries, …), and
//! ML calls in statements other than SELECT, are refused with a [`PlanError`] saying what to write
//! instead; they are never guessed at.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName,
    ObjectNamePart, OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableFactor, Value, Visit, Visitor, WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::text::{self, rewrite_unparsable_forms};
use super::ML_SCHEMAS;
use crate::error::SqlState;

/// The functions pgenrich evaluates, with Aurora's signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlFunction {
    /// `aws_comprehend.detect_sentiment(text, language [, max_rows_per_batch])`
    /// → `(sentiment varchar, confidence real)`
    DetectSentiment,
    /// `aws_sagemaker.invoke_endpoint(endpoint, max_rows_per_batch, VARIADIC inputs)` → varchar
    InvokeEndpoint,
    /// `aws_bedrock.invoke_model(model_id, content_type, accept_type, model_input)` → text
    InvokeModel,
    /// `aws_bedrock.invoke_model_get_embeddings(model_id, content_type, json_key, model_input)`
    /// → float8[]
    InvokeModelGetEmbeddings,
}

impl MlFunction {
    pub fn name(self) -> &'static str {
        match self {
            MlFunction::DetectSentiment => "aws_comprehend.detect_sentiment",
            MlFunction::InvokeEndpoint => "aws_sagemaker.invoke_endpoint",
            MlFunction::InvokeModel => "aws_bedrock.invoke_model",
            MlFunction::InvokeModelGetEmbeddings => "aws_bedrock.invoke_model_get_embeddings",
        }
    }

    /// The client column of a scalar function's result (None for detect_sentiment's record).
    pub fn scalar_field(self) -> Option<Field> {
        match self {
            MlFunction::DetectSentiment => None,
            MlFunction::InvokeEndpoint => Some(Field::Text),
            MlFunction::InvokeModel => Some(Field::Body),
            MlFunction::InvokeModelGetEmbeddings => Some(Field::Embedding),
        }
    }

    /// Aurora's parameter types, in order (invoke_endpoint's VARIADIC inputs are untyped).
    pub fn parameter_types(self) -> &'static [&'static str] {
        match self {
            MlFunction::DetectSentiment => &["varchar", "varchar", "int4"],
            MlFunction::InvokeEndpoint => &["varchar", "int4"],
            MlFunction::InvokeModel | MlFunction::InvokeModelGetEmbeddings => {
                &["varchar", "text", "text", "text"]
            }
        }
    }

    /// The SQL type of a scalar function's result (detect_sentiment: its record's fields).
    pub fn result_type(self) -> &'static str {
        match self {
            MlFunction::DetectSentiment => "record",
            MlFunction::InvokeEndpoint => "varchar",
            MlFunction::InvokeModel => "text",
            MlFunction::InvokeModelGetEmbeddings => "float8[]",
        }
    }
}

/// Which part of a call's result a client column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// detect_sentiment's whole `record`.
    Record,
    Sentiment,
    Confidence,
    /// invoke_endpoint's text (`varchar`).
    Text,
    /// invoke_model's response body (`text`).
    Body,
    /// invoke_model_get_embeddings' array (`float8[]`).
    Embedding,
}

/// One ML call site: its arguments are base columns `first_arg .. first_arg + arg_count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub function: MlFunction,
    pub first_arg: usize,
    pub arg_count: usize,
}

/// A base column standing for an ML result: the base statement has `NULL AS "pgenrich:N"` where
/// the client's column goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub call: usize,
    pub field: Field,
    /// The client's column name (alias, or what PostgreSQL would name it).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingPlan {
    /// The statement PostgreSQL runs.
    pub base_sql: String,
    /// Leading base columns holding ML arguments (not sent to the client).
    pub arg_columns: usize,
    pub calls: Vec<Call>,
    pub placeholders: Vec<Placeholder>,
}

/// Column name prefix marking placeholders in the base statement's row description.
pub const PLACEHOLDER_PREFIX: &str = "pgenrich:";

impl StreamingPlan {
    /// The placeholder a base column name stands for, if any.
    pub fn placeholder(&self, column_name: &[u8]) -> Option<&Placeholder> {
        let index = std::str::from_utf8(column_name.strip_prefix(PLACEHOLDER_PREFIX.as_bytes())?)
            .ok()?
            .parse::<usize>()
            .ok()?;
        self.placeholders.get(index)
    }
}

/// Why a statement cannot be planned; reported as an ERROR with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// `0A000` for forms not supported, `42883` for a function or argument list that does not
    /// exist, `42601` for syntax errors in ML statements.
    pub code: SqlState,
    pub message: String,
    pub hint: Option<String>,
}

pub(super) fn unsupported(message: impl Into<String>, hint: &str) -> PlanError {
    PlanError {
        code: SqlState::FeatureNotSupported,
        message: message.into(),
        hint: Some(hint.to_owned()),
    }
}

const LATER_HINT: &str = "pgenrich evaluates ML calls in the outermost SELECT list and as table \
functions in its FROM list; filter, sort or compute on their results in an outer query over a \
subquery that selects them is not supported yet either, so select the ML results and process them \
in the application.";

use super::text::ALL_FIELDS_SUFFIX;

/// A Query message's statements: each plain (relayed) or an ML statement (planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Plain(String),
    Ml(StreamingPlan),
    /// An ML statement that needs the base + residual plan.
    Residual(Box<super::residual::ResidualPlan>),
}

/// Plans one ML statement: streaming where its calls allow, else base + residual (whose refusal
/// is then the one reported).
fn plan_piece(sql: &str) -> Result<Piece, PlanError> {
    match plan(sql) {
        Ok(streaming) => Ok(Piece::Ml(streaming)),
        Err(error) if error.code == SqlState::FeatureNotSupported => {
            super::residual::plan(sql).map(|p| Piece::Residual(Box::new(p)))
        }
        Err(error) => Err(error),
    }
}

/// Plans a simple-protocol Query text known to call an ML function: one statement, or several
/// run in order in one transaction. Transaction control and COPY among several statements are
/// refused: their interplay with the implicit transaction is not reproduced.
pub fn plan_query_message(sql: &str) -> Result<Vec<Piece>, PlanError> {
    let texts = super::text::split_statements(sql);
    if texts.len() <= 1 {
        return plan_piece(sql).map(|p| vec![p]);
    }
    let mut pieces = Vec::with_capacity(texts.len());
    for text in texts {
        if super::mentions_ml_schema(text.as_bytes())
            && super::inspect(text) != super::Verdict::Relay
        {
            pieces.push(plan_piece(text)?);
            continue;
        }
        let controls = Parser::parse_sql(&PostgreSqlDialect {}, text).map(|statements| {
            statements.iter().any(|s| {
                matches!(
                    s,
                    Statement::StartTransaction { .. }
                        | Statement::Commit { .. }
                        | Statement::Rollback { .. }
                        | Statement::Savepoint { .. }
                        | Statement::ReleaseSavepoint { .. }
                        | Statement::Copy { .. }
                )
            })
        });
        // Unparsable text is left to PostgreSQL, except what looks like transaction control.
        let first = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let looks_like_control = matches!(
            first.as_str(),
            "begin"
                | "start"
                | "commit"
                | "end"
                | "rollback"
                | "abort"
                | "savepoint"
                | "release"
                | "copy"
        );
        if controls.unwrap_or(looks_like_control) || looks_like_control {
            return Err(unsupported(
                "transaction control or COPY in a Query message with ML calls is not supported",
                "Send BEGIN, COMMIT or COPY in Query messages of their own.",
            ));
        }
        pieces.push(Piece::Plain(text.to_owned()));
    }
    Ok(pieces)
}

/// Plans one statement text known to call an ML function.
pub fn plan(sql: &str) -> Result<StreamingPlan, PlanError> {
    let mut query = parse_ml_query(&rewrite_unparsable_forms(sql))?;
    plan_query(&mut query)?;
    let planner = Planner::default();
    planner.finish(&mut query)
}

/// Parses the one SELECT an ML statement must be (after [`rewrite_unparsable_forms`]).
pub(super) fn parse_ml_query(text: &str) -> Result<Box<Query>, PlanError> {
    ml_query(parse_ml_statement(text)?)
}

/// Parses the one statement of an ML statement's text.
pub(super) fn parse_ml_statement(text: &str) -> Result<Statement, PlanError> {
    let mut statements = text::parse_folded(text).map_err(|e| PlanError {
        code: SqlState::SyntaxError,
        message: format!("pgenrich could not parse this ML statement: {e}"),
        hint: Some("pgenrich parses statements that call ML functions itself; simplify the syntax or report it.".into()),
    })?;
    match (statements.pop(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        _ => Err(unsupported(
            "this text holds several statements; pgenrich plans ML statements one at a time",
            "Send the statement that calls the ML function on its own.",
        )),
    }
}

/// The query of an ML statement that is a SELECT; other statements are refused.
pub(super) fn ml_query(statement: Statement) -> Result<Box<Query>, PlanError> {
    match statement {
        Statement::Query(query) => Ok(query),
        // A view keeps the calls for the database to evaluate at each read, where no pgenrich
        // is: it could never work (natively the functions would not even exist).
        Statement::CreateView(view) => Err(unsupported(
            format!(
                "a {}view over ML calls cannot work through pgenrich: the database would \
                 evaluate the calls later, without pgenrich",
                if view.materialized {
                    "materialized "
                } else {
                    ""
                }
            ),
            "Materialise the results into a table instead: create the table, then fill it with \
             the rows of the SELECT run through pgenrich, and build the view over that table.",
        )),
        // A DECLARE on its own is a cursor's ([`super::cursor`]); here it is one of several.
        Statement::Declare { .. } => Err(unsupported(
            "a DECLARE of a cursor over ML calls must be a statement of its own",
            "Send DECLARE (and each FETCH, MOVE and CLOSE) in a Query message of its own, as \
             psql and drivers do.",
        )),
        _ => Err(unsupported(
            "through pgenrich, ML functions can be called in SELECT, INSERT … SELECT, UPDATE, \
             DELETE and CREATE TABLE … AS statements only",
            "Write the results with INSERT INTO t (…) SELECT <the ML calls> FROM … or UPDATE t \
             SET c = <the ML call> …; MERGE, COPY and other DDL cannot call ML functions.",
        )),
    }
}

/// Refuses a data-modifying WITH query (`WITH x AS (INSERT …)`) next to ML calls.
pub(super) fn refuse_data_modifying(cte: &sqlparser::ast::Cte) -> Result<(), PlanError> {
    match cte.query.body.as_ref() {
        SetExpr::Select(_)
        | SetExpr::Query(_)
        | SetExpr::SetOperation { .. }
        | SetExpr::Values(_) => Ok(()),
        _ => Err(unsupported(
            "ML calls in a statement with a data-modifying WITH query are not supported",
            "Run the INSERT, UPDATE or DELETE in a separate statement.",
        )),
    }
}

mod calls;
mod streaming;
#[cfg(test)]
mod tests;

pub use calls::has_ml;
pub(in crate::sql) use calls::{
    call_arguments, function_of, function_short_name, ml_name, ml_table_function, relation_alias,
    single_name,
};
use streaming::{plan_query, Planner};

/// The unqualified names `select`'s own expressions use as columns (not its subqueries'),
/// outside GROUP BY and ORDER BY. A GROUP BY name among them is an input column for certain, so
/// it is grouped as one even where an output column has that alias; pgenrich cannot see the
/// columns of a name used nowhere else (see the README's differences from native). Empty when
/// the block has no GROUP BY, the only clause that asks.
pub(crate) fn input_column_names(select: &Select) -> HashSet<String> {
    let mut found = HashSet::new();
    if matches!(&select.group_by, GroupByExpr::Expressions(exprs, _) if exprs.is_empty()) {
        return found; // no GROUP BY name to resolve
    }
    let mut collect = |expr: &Expr| {
        if let Expr::Identifier(ident) = expr {
            found.insert(ident.value.clone());
        }
        ControlFlow::Continue(())
    };
    let factors = |_: &TableFactor| ControlFlow::Continue(());
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            let _ = visit_top_level(expr, &mut collect, factors);
        }
    }
    let _ = visit_top_level(&select.from, &mut collect, factors);
    let _ = visit_top_level(&select.selection, &mut collect, factors);
    let _ = visit_top_level(&select.having, &mut collect, factors);
    found
}

/// Visits the expressions and table factors of `node` that belong to it, not to its subqueries,
/// until a callback breaks.
pub(crate) fn visit_top_level<V: sqlparser::ast::Visit>(
    node: &V,
    expr: impl FnMut(&Expr) -> ControlFlow<()>,
    factor: impl FnMut(&TableFactor) -> ControlFlow<()>,
) -> ControlFlow<()> {
    struct TopLevel<E, F> {
        depth: usize,
        expr: E,
        factor: F,
    }
    impl<E, F> sqlparser::ast::Visitor for TopLevel<E, F>
    where
        E: FnMut(&Expr) -> ControlFlow<()>,
        F: FnMut(&TableFactor) -> ControlFlow<()>,
    {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                (self.expr)(expr)
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if self.depth == 0 {
                (self.factor)(factor)
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    node.visit(&mut TopLevel {
        depth: 0,
        expr,
        factor,
    })
}
