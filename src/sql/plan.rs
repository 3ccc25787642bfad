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

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName,
    ObjectNamePart, OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableFactor, Value, Visit, Visitor, WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::text::rewrite_unparsable_forms;
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
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, text).map_err(|e| PlanError {
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

/// Refuses ML calls outside the places streaming enrichment handles.
fn plan_query(query: &mut Query) -> Result<(), PlanError> {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            refuse_data_modifying(cte)?;
        }
        if has_ml(with) {
            return Err(unsupported(
                "ML calls inside WITH queries are not supported yet",
                LATER_HINT,
            ));
        }
    }
    // SELECT INTO writes: the residual planner runs it as CREATE TABLE AS.
    if matches!(query.body.as_ref(), SetExpr::Select(select) if select.into.is_some()) {
        return Err(unsupported(
            "SELECT INTO is planned as CREATE TABLE AS",
            LATER_HINT,
        ));
    }
    if !matches!(*query.body, SetExpr::Select(_)) {
        return Err(unsupported(
            "ML calls in UNION, INTERSECT, EXCEPT or VALUES are not supported yet",
            LATER_HINT,
        ));
    }
    if has_ml(&query.order_by) || has_ml(&query.limit_clause) || has_ml(&query.fetch) {
        return Err(unsupported(
            "ML calls in ORDER BY, LIMIT or FETCH are not supported yet",
            LATER_HINT,
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Planner {
    args: Vec<Expr>,
    calls: Vec<Call>,
    placeholders: Vec<Placeholder>,
}

/// An ML table function in FROM, by the name its columns are qualified with.
struct TableFunction {
    alias: String,
    call: usize,
    sentiment_name: String,
    confidence_name: String,
}

impl Planner {
    fn finish(mut self, query: &mut Query) -> Result<StreamingPlan, PlanError> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(unsupported("unexpected statement shape", LATER_HINT));
        };
        let select: &mut Select = select;
        for clause in [
            has_ml(&select.selection),
            has_ml(&select.having),
            has_ml(&select.qualify),
            has_ml(&select.named_window),
            has_ml(&select.group_by),
            has_ml(&select.sort_by),
        ] {
            if clause {
                return Err(unsupported(
                    "ML calls in WHERE, GROUP BY, HAVING or window clauses are not supported yet",
                    LATER_HINT,
                ));
            }
        }
        // FROM: take ML table functions out, remember their place for `*`.
        let mut functions = Vec::new();
        let mut star_parts: Vec<Option<String>> = Vec::new(); // Some(alias.*) or None for a function
        let mut star_expandable = true;
        let mut from = Vec::new();
        for item in std::mem::take(&mut select.from) {
            if item.joins.is_empty() {
                if let Some((name, args, alias)) = ml_table_function(&item.relation) {
                    let function = function_of(&name)?;
                    if function != MlFunction::DetectSentiment {
                        return Err(unsupported(
                            format!("{} is supported in the SELECT list only", function.name()),
                            &format!(
                                "Write SELECT {}(...) instead of selecting FROM it.",
                                function.name()
                            ),
                        ));
                    }
                    let call = self.add_call(function, args)?;
                    let default = function_short_name(function).to_owned();
                    let (alias_name, columns) = match alias {
                        Some(alias) => (
                            alias.name.value.clone(),
                            alias
                                .columns
                                .iter()
                                .map(|c| c.name.value.clone())
                                .collect::<Vec<_>>(),
                        ),
                        None => (default, Vec::new()),
                    };
                    functions.push(TableFunction {
                        alias: alias_name,
                        call,
                        sentiment_name: columns
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "sentiment".into()),
                        confidence_name: columns
                            .get(1)
                            .cloned()
                            .unwrap_or_else(|| "confidence".into()),
                    });
                    star_parts.push(None);
                    continue;
                }
            }
            if has_ml(&item) {
                return Err(unsupported(
                    "ML calls in JOIN clauses or subqueries in FROM are not supported yet",
                    LATER_HINT,
                ));
            }
            match relation_alias(&item.relation) {
                Some(alias) if item.joins.is_empty() => star_parts.push(Some(alias)),
                _ => star_expandable = false,
            }
            from.push(item);
        }
        select.from = from;
        if !functions.is_empty()
            && (references_functions(&*select, &functions)
                || references_functions_in(&query.order_by, &functions))
        {
            return Err(unsupported(
                "columns of ML table functions can be used in the SELECT list only",
                LATER_HINT,
            ));
        }

        // The select list.
        let mut items = Vec::new();
        for item in std::mem::take(&mut select.projection) {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    self.select_expr(expr, None, &functions, &mut items)?
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.select_expr(expr, Some(alias), &functions, &mut items)?
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    options,
                ) if functions
                    .iter()
                    .any(|f| single_name(&name).as_deref() == Some(f.alias.as_str())) =>
                {
                    let _ = options;
                    let alias = single_name(&name).unwrap_or_default();
                    let Some(function) = functions.iter().find(|f| f.alias == alias) else {
                        continue;
                    };
                    self.push_all(function, &mut items);
                }
                SelectItem::Wildcard(options) if !functions.is_empty() => {
                    if !star_expandable || options != WildcardAdditionalOptions::default() {
                        return Err(unsupported(
                            "SELECT * over an ML table function and a JOIN or an unnamed subquery is not supported",
                            "List the columns, e.g. SELECT r.*, s.* FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s.",
                        ));
                    }
                    let mut next_function = functions.iter();
                    for part in &star_parts {
                        match part {
                            Some(alias) => items.push(SelectItem::QualifiedWildcard(
                                SelectItemQualifiedWildcardKind::ObjectName(ObjectName::from(
                                    vec![Ident::with_quote('"', alias)],
                                )),
                                WildcardAdditionalOptions::default(),
                            )),
                            None => {
                                if let Some(function) = next_function.next() {
                                    self.push_all(function, &mut items);
                                }
                            }
                        }
                    }
                }
                other => {
                    if has_ml(&other) {
                        return Err(unsupported(
                            "ML calls inside other expressions are not supported yet",
                            LATER_HINT,
                        ));
                    }
                    items.push(other);
                }
            }
        }
        if self.calls.is_empty() {
            return Err(unsupported(
                "no ML call found where pgenrich can evaluate it",
                LATER_HINT,
            ));
        }
        if select.distinct.is_some() {
            return Err(unsupported(
                "SELECT DISTINCT with ML calls is not supported yet",
                LATER_HINT,
            ));
        }
        let arg_columns = self.args.len();
        let mut projection: Vec<SelectItem> = self
            .args
            .drain(..)
            .enumerate()
            .map(|(i, expr)| SelectItem::ExprWithAlias {
                expr,
                alias: Ident::with_quote('"', format!("{PLACEHOLDER_PREFIX}arg{i}")),
            })
            .collect();
        projection.extend(items);
        select.projection = projection;
        self.shift_ordinals(select, query_order_by(&mut query.order_by), arg_columns)?;
        Ok(StreamingPlan {
            base_sql: query.to_string(),
            arg_columns,
            calls: self.calls,
            placeholders: self.placeholders,
        })
    }

    fn add_call(
        &mut self,
        function: MlFunction,
        args: Vec<FunctionArg>,
    ) -> Result<usize, PlanError> {
        let exprs = call_arguments(function, args)?
            .into_iter()
            .enumerate()
            .map(|(i, arg)| typed_parameter(function, i, arg))
            .collect::<Vec<_>>();
        let call = Call {
            function,
            first_arg: self.args.len(),
            arg_count: exprs.len(),
        };
        self.args.extend(exprs);
        self.calls.push(call);
        Ok(self.calls.len() - 1)
    }

    fn placeholder_item(&mut self, call: usize, field: Field, name: String) -> SelectItem {
        self.placeholders.push(Placeholder { call, field, name });
        SelectItem::ExprWithAlias {
            expr: Expr::Value(Value::Null.into()),
            alias: Ident::with_quote(
                '"',
                format!("{PLACEHOLDER_PREFIX}{}", self.placeholders.len() - 1),
            ),
        }
    }

    fn push_all(&mut self, function: &TableFunction, items: &mut Vec<SelectItem>) {
        items.push(self.placeholder_item(
            function.call,
            Field::Sentiment,
            function.sentiment_name.clone(),
        ));
        items.push(self.placeholder_item(
            function.call,
            Field::Confidence,
            function.confidence_name.clone(),
        ));
    }

    fn select_expr(
        &mut self,
        expr: Expr,
        alias: Option<Ident>,
        functions: &[TableFunction],
        items: &mut Vec<SelectItem>,
    ) -> Result<(), PlanError> {
        let alias_name = alias.as_ref().map(|a| a.value.clone());
        // `s.sentiment` of a table function.
        if let Expr::CompoundIdentifier(parts) = &expr {
            if let [table, column] = parts.as_slice() {
                if let Some(function) = functions.iter().find(|f| f.alias == table.value) {
                    let field = if column.value == function.sentiment_name {
                        Field::Sentiment
                    } else if column.value == function.confidence_name {
                        Field::Confidence
                    } else {
                        return Err(PlanError {
                            code: SqlState::UndefinedColumn,
                            message: format!(
                                "column {}.{} does not exist",
                                table.value, column.value
                            ),
                            hint: None,
                        });
                    };
                    let name = alias_name.unwrap_or_else(|| column.value.clone());
                    items.push(self.placeholder_item(function.call, field, name));
                    return Ok(());
                }
            }
        }
        let (call_expr, field_name) = match expr {
            Expr::Function(_) => (expr, None),
            Expr::CompoundFieldAccess { root, access_chain } if access_chain.len() == 1 => {
                match (*root, &access_chain[0]) {
                    (
                        Expr::Nested(inner),
                        sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field)),
                    ) if matches!(*inner, Expr::Function(_)) => {
                        (*inner, Some(field.value.to_ascii_lowercase()))
                    }
                    (root, _) => {
                        let rebuilt = Expr::CompoundFieldAccess {
                            root: Box::new(root),
                            access_chain,
                        };
                        return self.plain(rebuilt, alias, items);
                    }
                }
            }
            other => return self.plain(other, alias, items),
        };
        let Expr::Function(function) = call_expr else {
            return self.plain(call_expr, alias, items);
        };
        let Some((schema, name)) = ml_name(&function.name) else {
            let expr = Expr::Function(function);
            return match field_name {
                Some(_) => Err(unsupported(
                    "field selection from a non-ML function next to ML calls",
                    LATER_HINT,
                )),
                None => self.plain(expr, alias, items),
            };
        };
        let all_fields = name.ends_with(ALL_FIELDS_SUFFIX);
        let base_name = name.trim_end_matches(ALL_FIELDS_SUFFIX).to_owned();
        let ml = function_of(&format!("{schema}.{base_name}"))?;
        let FunctionArguments::List(list) = function.args else {
            return Err(unsupported(
                format!("{} needs an argument list", ml.name()),
                LATER_HINT,
            ));
        };
        if function.over.is_some() || function.filter.is_some() || !list.clauses.is_empty() {
            return Err(unsupported(
                format!("{} is not an aggregate or window function", ml.name()),
                LATER_HINT,
            ));
        }
        let call = self.add_call(ml, list.args)?;
        match (ml, all_fields, field_name.as_deref()) {
            (MlFunction::DetectSentiment, true, _) => {
                let function = TableFunction {
                    alias: String::new(),
                    call,
                    sentiment_name: "sentiment".into(),
                    confidence_name: "confidence".into(),
                };
                self.push_all(&function, items);
            }
            (MlFunction::DetectSentiment, false, None) => {
                let name = alias_name.unwrap_or_else(|| "detect_sentiment".into());
                items.push(self.placeholder_item(call, Field::Record, name));
            }
            (MlFunction::DetectSentiment, false, Some(field @ ("sentiment" | "confidence"))) => {
                let kind = if field == "sentiment" {
                    Field::Sentiment
                } else {
                    Field::Confidence
                };
                let name = alias_name.unwrap_or_else(|| field.to_owned());
                items.push(self.placeholder_item(call, kind, name));
            }
            (MlFunction::DetectSentiment, false, Some(other)) => {
                return Err(PlanError {
                    code: SqlState::UndefinedColumn,
                    message: format!("column \"{other}\" not found in data type record"),
                    hint: Some("detect_sentiment returns (sentiment, confidence).".into()),
                })
            }
            (scalar, false, None) => {
                let name = alias_name.unwrap_or_else(|| function_short_name(scalar).into());
                let field = scalar.scalar_field().unwrap_or(Field::Text);
                items.push(self.placeholder_item(call, field, name));
            }
            (scalar, _, _) => {
                return Err(PlanError {
                    code: SqlState::WrongObjectType,
                    message: format!(
                        "{} returns {}, which has no fields",
                        scalar.name(),
                        scalar.result_type()
                    ),
                    hint: None,
                })
            }
        }
        Ok(())
    }

    fn plain(
        &mut self,
        expr: Expr,
        alias: Option<Ident>,
        items: &mut Vec<SelectItem>,
    ) -> Result<(), PlanError> {
        if has_ml(&expr) {
            return Err(unsupported(
                "ML calls inside other expressions are not supported yet",
                LATER_HINT,
            ));
        }
        items.push(match alias {
            Some(alias) => SelectItem::ExprWithAlias { expr, alias },
            None => SelectItem::UnnamedExpr(expr),
        });
        Ok(())
    }

    /// ORDER BY / GROUP BY ordinals refer to output columns; the base puts the arguments first.
    fn shift_ordinals(
        &self,
        select: &mut Select,
        order_by: Option<&mut Vec<sqlparser::ast::OrderByExpr>>,
        shift: usize,
    ) -> Result<(), PlanError> {
        // Output position (1-based) of each placeholder; unknown once a wildcard precedes it.
        let mut position = 0usize;
        let mut known = true;
        let mut placeholder_positions = Vec::new();
        for item in &select.projection[shift..] {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => known = false,
                SelectItem::ExprWithAlias { alias, .. }
                    if alias.value.starts_with(PLACEHOLDER_PREFIX) =>
                {
                    position += 1;
                    placeholder_positions.push(if known { Some(position) } else { None });
                }
                _ => position += 1,
            }
        }
        let names: Vec<&str> = self.placeholders.iter().map(|p| p.name.as_str()).collect();
        let fix = |expr: &mut Expr| -> Result<(), PlanError> {
            if let Expr::Value(value) = expr {
                if let Value::Number(n, long) = &value.value {
                    let ordinal: usize = n
                        .parse()
                        .map_err(|_| unsupported("invalid ordinal", LATER_HINT))?;
                    if placeholder_positions
                        .iter()
                        .any(|p| p.is_none_or(|p| p == ordinal))
                    {
                        return Err(unsupported(
                            "ORDER BY or GROUP BY on the result of an ML call is not supported yet",
                            LATER_HINT,
                        ));
                    }
                    value.value = Value::Number((ordinal + shift).to_string(), *long);
                }
            }
            if let Expr::Identifier(ident) = expr {
                if names.contains(&ident.value.as_str()) {
                    return Err(unsupported(
                        format!(
                            "ORDER BY or GROUP BY on the ML result \"{}\" is not supported yet",
                            ident.value
                        ),
                        LATER_HINT,
                    ));
                }
            }
            Ok(())
        };
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            for expr in exprs {
                fix(expr)?;
            }
        }
        if let Some(order_by) = order_by {
            for item in order_by {
                fix(&mut item.expr)?;
            }
        }
        Ok(())
    }
}

fn query_order_by(
    order_by: &mut Option<sqlparser::ast::OrderBy>,
) -> Option<&mut Vec<sqlparser::ast::OrderByExpr>> {
    match order_by.as_mut().map(|o| &mut o.kind) {
        Some(OrderByKind::Expressions(exprs)) => Some(exprs),
        _ => None,
    }
}

/// An ML call's arguments as expressions, checked against the function's signature.
pub(super) fn call_arguments(
    function: MlFunction,
    args: Vec<FunctionArg>,
) -> Result<Vec<Expr>, PlanError> {
    let exprs = args
        .into_iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Ok(expr),
            _ => Err(unsupported(
                format!(
                    "named or wildcard arguments to {} are not supported",
                    function.name()
                ),
                "Pass the arguments by position.",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (min, max) = match function {
        MlFunction::DetectSentiment => (2, 3),
        MlFunction::InvokeEndpoint => (3, usize::MAX),
        MlFunction::InvokeModel | MlFunction::InvokeModelGetEmbeddings => (4, 4),
    };
    if exprs.len() < min || exprs.len() > max {
        return Err(PlanError {
            code: SqlState::UndefinedFunction,
            message: format!(
                "function {}() with {} arguments does not exist",
                function.name(),
                exprs.len()
            ),
            hint: Some(match function {
                MlFunction::DetectSentiment => "Call aws_comprehend.detect_sentiment(text, language [, max_rows_per_batch]).".into(),
                MlFunction::InvokeEndpoint => "Call aws_sagemaker.invoke_endpoint(endpoint, max_rows_per_batch, input [, ...]).".into(),
                MlFunction::InvokeModel => "Call aws_bedrock.invoke_model(model_id, content_type, accept_type, model_input).".into(),
                MlFunction::InvokeModelGetEmbeddings => "Call aws_bedrock.invoke_model_get_embeddings(model_id, content_type, json_key, model_input).".into(),
            }),
        });
    }
    if exprs.iter().any(has_ml) {
        return Err(unsupported(
            "an ML call whose argument is another ML call is not supported",
            "Select the inner call's result in a subquery and call the outer function on it in a separate statement, or compute the input in SQL.",
        ));
    }
    Ok(exprs)
}

pub(super) fn function_short_name(function: MlFunction) -> &'static str {
    match function {
        MlFunction::DetectSentiment => "detect_sentiment",
        MlFunction::InvokeEndpoint => "invoke_endpoint",
        MlFunction::InvokeModel => "invoke_model",
        MlFunction::InvokeModelGetEmbeddings => "invoke_model_get_embeddings",
    }
}

pub(super) fn function_of(name: &str) -> Result<MlFunction, PlanError> {
    match name {
        "aws_comprehend.detect_sentiment" => Ok(MlFunction::DetectSentiment),
        "aws_sagemaker.invoke_endpoint" => Ok(MlFunction::InvokeEndpoint),
        "aws_bedrock.invoke_model" => Ok(MlFunction::InvokeModel),
        "aws_bedrock.invoke_model_get_embeddings" => Ok(MlFunction::InvokeModelGetEmbeddings),
        other => Err(PlanError {
            code: SqlState::UndefinedFunction,
            message: format!("function {other} is not available through pgenrich"),
            hint: Some("pgenrich provides aws_comprehend.detect_sentiment, aws_sagemaker.invoke_endpoint, aws_bedrock.invoke_model and aws_bedrock.invoke_model_get_embeddings.".into()),
        }),
    }
}

/// `(schema, function)` in lower case if `name` is in an ML schema.
pub(super) fn ml_name(name: &ObjectName) -> Option<(String, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
            ObjectNamePart::Function(_) => None,
        })
        .collect::<Option<_>>()?;
    let [.., schema, function] = parts.as_slice() else {
        return None;
    };
    ML_SCHEMAS
        .contains(&schema.as_str())
        .then(|| (schema.clone(), function.clone()))
}

pub(super) fn ml_table_function(
    factor: &TableFactor,
) -> Option<(String, Vec<FunctionArg>, Option<sqlparser::ast::TableAlias>)> {
    match factor {
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } => {
            let (schema, function) = ml_name(name)?;
            Some((
                format!("{schema}.{function}"),
                args.args.clone(),
                alias.clone(),
            ))
        }
        TableFactor::Function {
            name, args, alias, ..
        } => {
            let (schema, function) = ml_name(name)?;
            Some((format!("{schema}.{function}"), args.clone(), alias.clone()))
        }
        _ => None,
    }
}

pub(super) fn relation_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        }
        | TableFactor::Function {
            alias: Some(alias), ..
        } => Some(alias.name.value.clone()),
        TableFactor::Table {
            name,
            alias: None,
            args: None,
            ..
        } => name.0.last().and_then(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.clone()),
            ObjectNamePart::Function(_) => None,
        }),
        _ => None,
    }
}

pub(super) fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident.value.clone()),
        _ => None,
    }
}

/// Whether `node` contains an ML call (as a function or a table function).
pub fn has_ml<V: Visit>(node: &V) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f) if ml_name(&f.name).is_some() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match ml_table_function(factor) {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            }
        }
    }
    node.visit(&mut Finder).is_break()
}

/// A bare `$n` argument cast to the type of Aurora's signature, so that PostgreSQL infers the
/// parameter's type from the base statement as it would from the native function.
fn typed_parameter(function: MlFunction, position: usize, arg: Expr) -> Expr {
    let data_type = match function.parameter_types().get(position) {
        Some(&"varchar") => sqlparser::ast::DataType::Varchar(None),
        Some(&"int4") => sqlparser::ast::DataType::Int4(None),
        Some(&"text") => sqlparser::ast::DataType::Text,
        _ => return arg,
    };
    match arg {
        Expr::Value(ref v) if matches!(v.value, Value::Placeholder(_)) => Expr::Cast {
            kind: sqlparser::ast::CastKind::DoubleColon,
            expr: Box::new(arg),
            data_type,
            format: None,
        },
        other => other,
    }
}

/// Whether an ML table function's alias is referenced in `node`.
fn references_functions_in<V: Visit>(node: &V, functions: &[TableFunction]) -> bool {
    struct Finder<'a>(&'a [TableFunction]);
    impl Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = expr {
                if parts.len() >= 2 && self.0.iter().any(|f| f.alias == parts[0].value) {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    node.visit(&mut Finder(functions)).is_break()
}

/// Whether a table function's alias is used outside the select list.
fn references_functions(select: &Select, functions: &[TableFunction]) -> bool {
    references_functions_in(&select.selection, functions)
        || references_functions_in(&select.having, functions)
        || references_functions_in(&select.group_by, functions)
        || references_functions_in(&select.named_window, functions)
        || references_functions_in(&select.from, functions)
}

#[cfg(test)]
mod tests {
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
        let p = ok(
            "SELECT id, aws_sagemaker.invoke_endpoint('fraud', $1, amount, $2) AS score FROM tx",
        );
        assert_eq!(
            p.base_sql,
            // A parameter for max_rows_per_batch is typed as Aurora's int; model inputs stay "any".
            "SELECT 'fraud' AS \"pgenrich:arg0\", $1::INT4 AS \"pgenrich:arg1\", amount AS \"pgenrich:arg2\", $2 AS \"pgenrich:arg3\", id, NULL AS \"pgenrich:0\" FROM tx"
        );
        assert_eq!(p.placeholders, vec![placeholder(Field::Text, "score", 0)]);
        let v =
            ok("SELECT aws_sagemaker.invoke_endpoint('m', NULL, VARIADIC ARRAY[a, b + 1]) FROM t");
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

        let star = ok("SELECT * FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') AS s(label, score)");
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
}
