//! Planning ML statements as "enrich, then finish in PostgreSQL" (DESIGN.md): for ML calls in
//! WHERE, JOIN … ON, GROUP BY, HAVING, ORDER BY, DISTINCT, window clauses, inside other
//! expressions, and for predicates on the columns of an ML table function.
//!
//! The ML-bearing SELECT block is split in two:
//!
//! - the **base** relation, which PostgreSQL runs first: the block's FROM (without ML table
//!   functions) and its ML-free WHERE conjuncts, projecting every ML call's arguments and then the
//!   *carried* expressions — each column reference of the block, and each ML-free subquery
//!   expression, once;
//! - the **residual**, the original statement with the block's FROM replaced by the enriched base
//!   rows, bound as array parameters (`FROM unnest($1::int8[], …) AS u(…)`), every carried
//!   expression replaced by its base column and every ML call by its result columns. PostgreSQL
//!   evaluates everything else — operators, casts, comparisons, aggregates, sorting, output
//!   formats — exactly as it would natively.
//!
//! The residual's text depends on the carried columns' types, which only PostgreSQL knows: the
//! planner keeps a marker where the base goes, and [`FinishPlan::residual_sql`] fills it in once
//! the base statement has been described.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, FunctionArguments, GroupByExpr, Ident, JoinConstraint,
    JoinOperator, ObjectName, OrderBy, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableWithJoins, VisitMut,
    VisitorMut, WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::plan::{
    call_arguments, function_of, function_short_name, has_ml, ml_name, ml_table_function,
    relation_alias, unsupported, Call, MlFunction, PlanError,
};
use super::text::{rewrite_unparsable_forms, ALL_FIELDS_SUFFIX};
use crate::error::SqlState;

/// The alias the residual gives the enriched base rows.
pub const BASE_ALIAS: &str = "pgenrich_base";
/// Prefix of the table names standing for base rows in the residual (see [`block_marker`]).
const BASE_MARKER: &str = "pgenrich:base";

const NOT_YET_HINT: &str = "pgenrich evaluates ML calls in one SELECT block: its select list, \
WHERE, JOIN … ON, GROUP BY, HAVING, ORDER BY, DISTINCT and window clauses, and as table functions \
in its FROM list. Move the ML call into the outermost SELECT of the statement.";

/// A planned two-phase ML statement: one base relation per ML-bearing SELECT block, and one
/// residual statement over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishPlan {
    pub blocks: Vec<BlockPlan>,
    /// Phase 2, with a marker per block where its base rows go.
    residual: String,
    /// The statement with typed NULLs for the ML calls, to describe `$n` parameters natively;
    /// `None` when it has no parameters.
    pub typing_sql: Option<String>,
    /// `Some` when the residual is row-local — one block, the statement itself, without
    /// grouping, DISTINCT, windows, sorting or limits — provided none of these functions is an
    /// aggregate or window function (the session asks the database): then it can run per chunk
    /// of base rows and stream.
    pub row_local: Option<Vec<String>>,
}

/// One ML-bearing SELECT block's base relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    /// Phase 1. Its columns: the calls' arguments (`calls[i]` names its range), then one column
    /// per carried expression, then each star's columns and a marker column.
    pub base_sql: String,
    pub calls: Vec<Call>,
    pub arg_columns: usize,
    /// The carried expressions as SQL text, in base column order after the arguments.
    pub carried: Vec<String>,
    /// `*` / `t.*` items of the block: the base selects each after the carried columns, ended
    /// by a NULL column named `pgenrich:end<k>`, and the residual lists their columns.
    pub stars: usize,
    /// Calls whose whole detect_sentiment record the residual uses.
    pub records: Vec<usize>,
}

/// How a carried base column travels to the residual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedType {
    /// The type as `format_type` names it (with its modifier), e.g. `numeric(10,2)`.
    pub name: String,
    /// Sent as text and cast back (array types, types without binary I/O); otherwise binary.
    pub as_text: bool,
}

impl BlockPlan {
    /// Splits the base statement's column names (as described) into the columns carrying values
    /// to the residual — the carried expressions, then each star's columns — and the names of
    /// each star's columns. `None`: the description does not have the planned shape.
    pub fn value_columns(&self, names: &[String]) -> Option<(Vec<usize>, Vec<Vec<String>>)> {
        let explicit = self.arg_columns..self.arg_columns + self.carried.len();
        if names.len() < explicit.end {
            return None;
        }
        let mut values: Vec<usize> = explicit.clone().collect();
        let mut stars = Vec::with_capacity(self.stars);
        let mut at = explicit.end;
        for k in 0..self.stars {
            let end = format!("pgenrich:end{k}");
            let width = names.get(at..)?.iter().position(|n| *n == end)?;
            values.extend(at..at + width);
            stars.push(names[at..at + width].to_vec());
            at += width + 1;
        }
        (at == names.len()).then_some((values, stars))
    }

    /// The residual's parameters for this block: one per value column, then per call its results.
    pub fn parameter_count(&self, values: usize) -> usize {
        values
            + self
                .calls
                .iter()
                .map(|c| match c.function {
                    MlFunction::DetectSentiment => 2,
                    MlFunction::InvokeEndpoint => 1,
                })
                .sum::<usize>()
    }
}

/// A block's base as described: the type of each value column and the names of each star's
/// columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Described {
    pub types: Vec<CarriedType>,
    pub stars: Vec<Vec<String>>,
}

impl FinishPlan {
    /// The residual statement, given each block's [`Described`] base. Its parameters are
    /// numbered from `first_param`: per block, first its value columns, then per call its
    /// results (`varchar[]` sentiment and `float4[]` confidence, or `varchar[]` text).
    pub fn residual_sql(&self, described: &[Described], first_param: usize) -> String {
        let mut residual = self.residual.clone();
        let mut param = first_param;
        for (b, (block, described)) in self.blocks.iter().zip(described).enumerate() {
            let alias = block_alias(b);
            let mut next = || {
                param += 1;
                param - 1
            };
            let mut columns = Vec::new();
            let mut arrays = Vec::new();
            let mut select = Vec::new();
            for (i, t) in described.types.iter().enumerate() {
                let element = if t.as_text { "text" } else { t.name.as_str() };
                arrays.push(format!("${}::{element}[]", next()));
                columns.push(format!("c{i}"));
                select.push(format!("u.c{i}::{} AS c{i}", t.name));
            }
            for (k, call) in block.calls.iter().enumerate() {
                let outputs: &[(&str, &str)] = match call.function {
                    MlFunction::DetectSentiment => {
                        &[("sentiment", "varchar"), ("confidence", "float4")]
                    }
                    MlFunction::InvokeEndpoint => &[("", "varchar")],
                };
                for (field, ty) in outputs {
                    let name = output_column(k, field);
                    arrays.push(format!("${}::{ty}[]", next()));
                    select.push(format!("u.{name}"));
                    columns.push(name);
                }
            }
            // detect_sentiment's whole record: a row of a lateral subquery, so PostgreSQL knows
            // its field names wherever it goes, and NULL (no row) where the call gave NULL.
            let mut records = String::new();
            for &k in &block.records {
                {
                    let (s, c) = (
                        output_column(k, "sentiment"),
                        output_column(k, "confidence"),
                    );
                    select.push(format!("x{k} AS m{k}"));
                    records.push_str(&format!(
                        " LEFT JOIN LATERAL (SELECT u.{s} AS sentiment, u.{c} AS confidence \
                         WHERE u.{s} IS NOT NULL) AS x{k} ON true"
                    ));
                }
            }
            let base = format!(
                "(SELECT {} FROM unnest({}) AS u({}){records}) AS {alias}",
                select.join(", "),
                arrays.join(", "),
                columns.join(", ")
            );
            residual = residual.replacen(&block_marker(b), &base, 1);
            let mut column = block.carried.len();
            for (k, names) in described.stars.iter().enumerate() {
                let list: Vec<String> = names
                    .iter()
                    .map(|name| {
                        column += 1;
                        format!(
                            "{alias}.c{} AS \"{}\"",
                            column - 1,
                            name.replace('"', "\"\"")
                        )
                    })
                    .collect();
                residual = residual.replacen(&star_marker(b, k), &list.join(", "), 1);
            }
        }
        residual
    }
}

/// The residual's name for block `b`'s base rows.
fn block_alias(b: usize) -> String {
    format!("{BASE_ALIAS}{b}")
}

/// Stands for block `b`'s base rows in the residual until their types are known.
fn block_marker(b: usize) -> String {
    format!("\"{BASE_MARKER}{b}\"")
}

/// Stands for star `k` of block `b` in the residual's select list.
fn star_marker(b: usize, k: usize) -> String {
    format!("\"pgenrich:star{b}_{k}\"")
}

/// The residual's column for call `k`'s `field` (empty for invoke_endpoint's text).
fn output_column(k: usize, field: &str) -> String {
    if field.is_empty() {
        format!("m{k}")
    } else {
        format!("m{k}_{field}")
    }
}

fn parse_expr(text: &str) -> Expr {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .unwrap_or_else(|e| unreachable!("pgenrich builds valid expressions ({text}): {e}"))
}

/// Plans one statement text whose ML calls the streaming plan cannot place.
pub fn plan(sql: &str) -> Result<FinishPlan, PlanError> {
    let text = rewrite_unparsable_forms(sql);
    if text.contains("pgenrich:") || text.contains(BASE_ALIAS) {
        return Err(unsupported(
            "names starting with pgenrich: or pgenrich_base are reserved in ML statements",
            "Rename the identifier.",
        ));
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, &text).map_err(|e| PlanError {
        code: SqlState::SyntaxError,
        message: format!("pgenrich could not parse this ML statement: {e}"),
        hint: Some("pgenrich parses statements that call ML functions itself; simplify the syntax or report it.".into()),
    })?;
    if statements.len() != 1 {
        return Err(unsupported(
            "this text holds several statements; pgenrich plans ML statements one at a time",
            "Send the statement that calls the ML function on its own.",
        ));
    }
    let Some(Statement::Query(query)) = statements.pop() else {
        return Err(unsupported(
            "ML functions can only be called in SELECT statements through pgenrich",
            "Run the SELECT through pgenrich and write its results with a separate statement \
             (INSERT, UPDATE, DELETE, MERGE, COPY and DDL cannot call ML functions).",
        ));
    };
    plan_query(*query)
}

fn plan_query(mut query: Query) -> Result<FinishPlan, PlanError> {
    let original = query.clone();
    if !query.locks.is_empty() {
        return Err(unsupported(
            "FOR UPDATE / FOR SHARE in an ML statement is not supported",
            "Lock the rows in a separate statement of the same transaction.",
        ));
    }
    let mut planner = Planner::default();
    planner.query(&mut query, false)?;
    if planner.blocks.is_empty() {
        return Err(unsupported(
            "no ML call found where pgenrich can evaluate it",
            NOT_YET_HINT,
        ));
    }
    let row_local = row_local_functions(&query, planner.blocks.len());
    Ok(FinishPlan {
        blocks: planner.blocks,
        residual: query.to_string(),
        row_local,
        typing_sql: if has_parameters(&original) {
            Some(typing_statement(original)?)
        } else {
            None
        },
    })
}

/// Finds the ML-bearing SELECT blocks of a statement, innermost first, rewriting each into its
/// residual form and collecting its base relation.
#[derive(Default)]
struct Planner {
    blocks: Vec<BlockPlan>,
    /// Plain CTEs of the enclosing queries, outermost first: base statements may use them.
    ctes: Vec<sqlparser::ast::Cte>,
    recursive: bool,
    /// Names of CTEs that hold ML blocks: their rows exist only in the residual.
    ml_ctes: Vec<String>,
}

impl Planner {
    fn query(&mut self, query: &mut Query, nested: bool) -> Result<(), PlanError> {
        if !self.needs_residual(&*query) {
            return Ok(());
        }
        let scope = self.ctes.len();
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                if !matches!(
                    cte.query.body.as_ref(),
                    SetExpr::Select(_)
                        | SetExpr::Query(_)
                        | SetExpr::SetOperation { .. }
                        | SetExpr::Values(_)
                ) {
                    return Err(unsupported(
                        "ML calls in a statement with a data-modifying WITH query are not supported",
                        "Run the INSERT, UPDATE or DELETE in a separate statement.",
                    ));
                }
                if self.needs_residual(&*cte.query) {
                    self.query(&mut cte.query, true)?;
                    self.ml_ctes.push(cte.alias.name.value.clone());
                } else {
                    self.ctes.push(cte.clone());
                    self.recursive |= with.recursive;
                }
            }
        }
        let result = match query.body.as_mut() {
            SetExpr::Select(select) => self.select(select, Some(&mut query.order_by), nested),
            body => {
                if has_ml(&query.order_by) || has_ml(&query.limit_clause) {
                    return Err(unsupported(
                        "ML calls in the ORDER BY or LIMIT of a UNION, INTERSECT or EXCEPT are not supported",
                        "Select the ML result in the branches and sort by its output column.",
                    ));
                }
                self.set_expr(body, nested)
            }
        };
        self.ctes.truncate(scope);
        result
    }

    fn set_expr(&mut self, body: &mut SetExpr, nested: bool) -> Result<(), PlanError> {
        match body {
            SetExpr::Select(select) => self.select(select, None, nested),
            SetExpr::Query(query) => self.query(query, nested),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, nested)?;
                self.set_expr(right, nested)
            }
            other if has_ml(&*other) => Err(unsupported(
                "ML calls in VALUES lists are not supported",
                "Select the values from a subquery and call the function in its select list.",
            )),
            _ => Ok(()),
        }
    }

    fn select(
        &mut self,
        select: &mut Select,
        order_by: Option<&mut Option<OrderBy>>,
        nested: bool,
    ) -> Result<(), PlanError> {
        if select.into.is_some() {
            return Err(unsupported(
                "SELECT INTO with ML calls is not supported",
                "Use CREATE TABLE … AS in a separate statement over the ML results fetched by the application.",
            ));
        }
        // Blocks inside this one's subqueries first.
        let mut inner = Inner {
            planner: self,
            depth: 0,
        };
        if let ControlFlow::Break(error) = select.visit(&mut inner) {
            return Err(error);
        }
        let mut order_by = order_by;
        if let Some(order_by) = order_by.as_deref_mut() {
            if let ControlFlow::Break(error) = order_by.visit(&mut inner) {
                return Err(error);
            }
        }
        let direct = direct_ml(&*select) || order_by.as_deref().is_some_and(direct_ml);
        if !direct {
            return Ok(());
        }
        let block = self.block(select, order_by, nested)?;
        self.blocks.push(block);
        Ok(())
    }

    fn needs_residual<V: sqlparser::ast::Visit + std::fmt::Display>(&self, node: &V) -> bool {
        needs_residual(node, &self.ml_ctes)
    }

    /// Rewrites one block whose own clauses call ML functions into its residual form.
    fn block(
        &mut self,
        select: &mut Select,
        order_by: Option<&mut Option<OrderBy>>,
        nested: bool,
    ) -> Result<BlockPlan, PlanError> {
        let index = self.blocks.len();
        let mut rewriter = Rewriter {
            alias: block_alias(index),
            nested,
            ml_ctes: self.ml_ctes.clone(),
            ..Rewriter::default()
        };
        // FROM: ML table functions become calls; ML conditions of inner joins move to WHERE.
        let mut base_from = Vec::new();
        let mut residual_where = Vec::new();
        let mut base_where = Vec::new();
        // `CROSS JOIN [LATERAL] f(…) s` of an ML table function is `, f(…) s`: one row per row.
        let mut from = Vec::new();
        for mut item in std::mem::take(&mut select.from) {
            let mut split = Vec::new();
            item.joins.retain(|join| {
                let cross = matches!(
                    join.join_operator,
                    JoinOperator::CrossJoin(JoinConstraint::None)
                );
                if cross && ml_table_function(&join.relation).is_some() {
                    split.push(TableWithJoins {
                        relation: join.relation.clone(),
                        joins: Vec::new(),
                    });
                    false
                } else {
                    true
                }
            });
            from.push(item);
            from.extend(split);
        }
        for mut item in from {
            if item.joins.is_empty() {
                if let Some((name, args, alias)) = ml_table_function(&item.relation) {
                    let function = function_of(&name)?;
                    if function != MlFunction::DetectSentiment {
                        return Err(unsupported(
                        "aws_sagemaker.invoke_endpoint returns a scalar; it cannot be selected FROM",
                        "Call it in the select list: SELECT aws_sagemaker.invoke_endpoint(...).",
                    ));
                    }
                    let call = rewriter.add_call(function, call_arguments(function, args)?)?;
                    let default = function_short_name(function).to_owned();
                    let (alias, columns) = match alias {
                        Some(a) => (
                            a.name.value,
                            a.columns.into_iter().map(|c| c.name.value).collect(),
                        ),
                        None => (default, Vec::new()),
                    };
                    let column = |i: usize, default: &str| -> String {
                        columns
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| default.to_owned())
                    };
                    rewriter.functions.push(TableFunction {
                        alias,
                        call,
                        sentiment: column(0, "sentiment"),
                        confidence: column(1, "confidence"),
                    });
                    continue;
                }
            }
            if needs_residual(&item, &self.ml_ctes) && !has_ml_condition_only(&item) {
                return Err(unsupported(
                "an ML call over rows that themselves come from ML calls is not supported",
                "Compute the inner ML results in one statement and the outer ones in another, or call both functions on the underlying columns in one SELECT.",
            ));
            }
            for join in &mut item.joins {
                if has_ml(&join.relation) {
                    return Err(unsupported(
                    "ML table functions in JOIN clauses are not supported yet",
                    "List the function in FROM with a comma: FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s WHERE ….",
                ));
                }
                match &mut join.join_operator {
                    JoinOperator::Join(JoinConstraint::On(on))
                    | JoinOperator::Inner(JoinConstraint::On(on)) => {
                        if needs_residual(&*on, &self.ml_ctes) {
                            // An inner join's condition is a filter over the joined rows.
                            let (plain, ml) =
                                split_conjuncts(std::mem::replace(on, true_expr()), &self.ml_ctes);
                            *on = and_all(plain).unwrap_or_else(true_expr);
                            residual_where.extend(ml);
                        }
                    }
                    other => {
                        if has_ml(&*other) {
                            return Err(unsupported(
                                "ML calls in the condition of an outer join are not supported yet",
                                "Use an inner join, or filter on the ML result in WHERE.",
                            ));
                        }
                    }
                }
            }
            rewriter.names.push(relation_alias(&item.relation));
            for join in &item.joins {
                rewriter.names.push(relation_alias(&join.relation));
            }
            base_from.push(item);
        }
        if let Some(selection) = select.selection.take() {
            let (plain, ml) = split_conjuncts(selection, &self.ml_ctes);
            base_where.extend(plain);
            residual_where.extend(ml);
        }
        // Predicates on a table function's columns are ML conditions even without a call in them.
        let (on_functions, plain): (Vec<_>, Vec<_>) = base_where
            .into_iter()
            .partition(|e| rewriter.mentions_function(e));
        let base_where = plain;
        residual_where.splice(0..0, on_functions);
        // Conditions on columns of an outer query (a correlated subquery) are evaluated in the
        // residual, where the outer row exists; the base relation stays uncorrelated.
        let (correlated_where, base_where): (Vec<_>, Vec<_>) = base_where
            .into_iter()
            .partition(|e| nested && rewriter.outer_reference(e).is_some());
        residual_where.extend(correlated_where);

        // The select list.
        let aliases: Vec<String> = select
            .projection
            .iter()
            .filter_map(|item| match item {
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                _ => None,
            })
            .collect();
        let mut projection = Vec::new();
        let mut stars: Vec<SelectItem> = Vec::new();
        for item in std::mem::take(&mut select.projection) {
            match item {
            SelectItem::UnnamedExpr(Expr::Function(f))
                if ml_name(&f.name).is_some_and(|(_, n)| n.ends_with(ALL_FIELDS_SUFFIX)) =>
            {
                let (schema, name) = ml_name(&f.name).unwrap_or_default();
                let function =
                    function_of(&format!("{schema}.{}", name.trim_end_matches(ALL_FIELDS_SUFFIX)))?;
                let FunctionArguments::List(list) = f.args else {
                    return Err(unsupported("an ML call needs an argument list", NOT_YET_HINT));
                };
                let call = rewriter.add_call(function, call_arguments(function, list.args)?)?;
                for field in ["sentiment", "confidence"] {
                    projection.push(SelectItem::ExprWithAlias {
                        expr: rewriter.base_ref(&output_column(call, field)),
                        alias: Ident::with_quote('"', field),
                    });
                }
            }
            SelectItem::UnnamedExpr(mut expr) => {
                let name = column_name(&expr);
                let before = expr.to_string();
                rewriter.rewrite(&mut expr, Mode::Plain)?;
                projection.push(if expr.to_string() == before {
                    SelectItem::UnnamedExpr(expr)
                } else {
                    SelectItem::ExprWithAlias {
                        expr,
                        alias: Ident::with_quote('"', name),
                    }
                });
            }
            SelectItem::ExprWithAlias { mut expr, alias } => {
                rewriter.rewrite(&mut expr, Mode::Plain)?;
                projection.push(SelectItem::ExprWithAlias { expr, alias });
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _)
                if rewriter.function(&name).is_some() =>
            {
                let Some(function) = rewriter.function(&name).cloned() else {
                    continue;
                };
                for (field, column) in [
                    ("sentiment", &function.sentiment),
                    ("confidence", &function.confidence),
                ] {
                    projection.push(SelectItem::ExprWithAlias {
                        expr: rewriter.base_ref(&output_column(function.call, field)),
                        alias: Ident::with_quote('"', column),
                    });
                }
            }
            SelectItem::ExprWithAliases { .. } => {
                return Err(unsupported(
                    "multiple aliases for one select item are not PostgreSQL syntax",
                    "Give each column one alias.",
                ))
            }
            SelectItem::Wildcard(ref options)
                if *options == WildcardAdditionalOptions::default()
                    && rewriter.functions.is_empty() =>
            {
                projection.push(star_placeholder(index, stars.len()));
                stars.push(item);
            }
            SelectItem::QualifiedWildcard(
                SelectItemQualifiedWildcardKind::ObjectName(_),
                ref options,
            ) if *options == WildcardAdditionalOptions::default() => {
                projection.push(star_placeholder(index, stars.len()));
                stars.push(item);
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err(unsupported(
                    "SELECT * over an ML table function in a statement that filters, groups or sorts on ML results is not supported",
                    "List the columns, e.g. SELECT r.*, s.sentiment FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s WHERE ….",
                ))
            }
        }
        }
        select.projection = projection;

        // Everything else in the block.
        for conjunct in &mut residual_where {
            rewriter.rewrite(conjunct, Mode::Plain)?;
        }
        rewriter.aliases = aliases;
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            for expr in exprs {
                rewriter.rewrite(expr, Mode::GroupBy)?;
            }
        }
        if let Some(having) = &mut select.having {
            rewriter.rewrite(having, Mode::Plain)?;
        }
        if let Some(Distinct::On(exprs)) = &mut select.distinct {
            for expr in exprs {
                rewriter.rewrite(expr, Mode::Plain)?;
            }
        }
        for window in &mut select.named_window {
            rewriter.rewrite_node(window, Mode::Plain)?;
        }
        if let Some(Some(order_by)) = order_by {
            if let OrderByKind::Expressions(exprs) = &mut order_by.kind {
                for item in exprs {
                    rewriter.rewrite(&mut item.expr, Mode::OrderBy)?;
                }
            }
        }

        if rewriter.calls.is_empty() {
            return Err(unsupported(
                "no ML call found where pgenrich can evaluate it",
                NOT_YET_HINT,
            ));
        }

        // Phase 1: the block's FROM and ML-free filters, projecting arguments and carried values.
        let mut base_items: Vec<SelectItem> = Vec::new();
        let mut calls = Vec::new();
        for (function, args) in &rewriter.calls {
            calls.push(Call {
                function: *function,
                first_arg: base_items.len(),
                arg_count: args.len(),
            });
            for arg in args {
                base_items.push(SelectItem::ExprWithAlias {
                    expr: arg.clone(),
                    alias: Ident::with_quote('"', format!("pgenrich:arg{}", base_items.len())),
                });
            }
        }
        let arg_columns = base_items.len();
        for (i, expr) in rewriter.carried.iter().enumerate() {
            base_items.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', format!("pgenrich:c{i}")),
            });
        }
        let star_count = stars.len();
        for (k, star) in stars.into_iter().enumerate() {
            base_items.push(star);
            base_items.push(SelectItem::ExprWithAlias {
                expr: Expr::Value(sqlparser::ast::Value::Null.into()),
                alias: Ident::with_quote('"', format!("pgenrich:end{k}")),
            });
        }
        let mut base_select = select.clone();
        base_select.distinct = None;
        base_select.projection = base_items;
        base_select.from = base_from;
        base_select.selection = and_all(base_where);
        base_select.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        base_select.having = None;
        base_select.named_window = Vec::new();
        base_select.qualify = None;
        let mut base = marker_query();
        *base.body = SetExpr::Select(Box::new(base_select));
        if !self.ctes.is_empty() {
            base.with = Some(sqlparser::ast::With {
                with_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
                recursive: self.recursive,
                cte_tables: self.ctes.clone(),
            });
        }

        // Phase 2: the block over its enriched base rows.
        select.from = marker_from(index);
        select.selection = and_all(residual_where);
        Ok(BlockPlan {
            base_sql: base.to_string(),
            calls,
            arg_columns,
            carried: rewriter.carried.iter().map(ToString::to_string).collect(),
            stars: star_count,
            records: rewriter.records,
        })
    }
}

/// Whether `node` holds ML calls, a rewritten block, or a reference to a CTE holding one: such
/// parts can only be evaluated in the residual.
fn needs_residual<V: sqlparser::ast::Visit + std::fmt::Display>(
    node: &V,
    ml_ctes: &[String],
) -> bool {
    if has_ml(node) || node.to_string().contains(BASE_MARKER) {
        return true;
    }
    if ml_ctes.is_empty() {
        return false;
    }
    struct Finder<'a>(&'a [String]);
    impl sqlparser::ast::Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            match name.0.as_slice() {
                [part] if part.as_ident().is_some_and(|i| self.0.contains(&i.value)) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    node.visit(&mut Finder(ml_ctes)).is_break()
}

/// Plans ML blocks inside a block's subqueries (expressions and derived tables).
struct Inner<'a> {
    planner: &'a mut Planner,
    depth: usize,
}

impl VisitorMut for Inner<'_> {
    type Break = PlanError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<PlanError> {
        self.depth += 1;
        if self.depth == 1 {
            if let Err(error) = self.planner.query(query, true) {
                return ControlFlow::Break(error);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<PlanError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Whether ML calls sit in `node` itself (not inside its subqueries), or ML table functions in
/// its own FROM.
fn direct_ml<V: sqlparser::ast::Visit>(node: &V) -> bool {
    struct Finder {
        depth: usize,
    }
    impl sqlparser::ast::Visitor for Finder {
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
            match expr {
                Expr::Function(f) if self.depth == 0 && ml_name(&f.name).is_some() => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if self.depth == 0 && ml_table_function(factor).is_some() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    node.visit(&mut Finder { depth: 0 }).is_break()
}

/// The function names of a row-local residual (see [`FinishPlan::row_local`]).
fn row_local_functions(query: &Query, blocks: usize) -> Option<Vec<String>> {
    if blocks != 1
        || query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
    {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let grouped = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => !exprs.is_empty() || !modifiers.is_empty(),
        GroupByExpr::All(_) => true,
    };
    if grouped
        || select.distinct.is_some()
        || select.having.is_some()
        || !select.named_window.is_empty()
        || select.qualify.is_some()
        || !select.from.iter().all(|f| f.joins.is_empty())
        || select.from.len() != 1
    {
        return None;
    }
    struct Functions {
        names: Vec<String>,
        depth: usize,
        window: bool,
    }
    impl sqlparser::ast::Visitor for Functions {
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
            if let (0, Expr::Function(f)) = (self.depth, expr) {
                if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
                    self.window = true;
                    return ControlFlow::Break(());
                }
                if let Some(name) = f.name.0.last().and_then(|p| p.as_ident()) {
                    self.names.push(ident_name(name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut functions = Functions {
        names: Vec::new(),
        depth: 0,
        window: false,
    };
    let _ = sqlparser::ast::Visit::visit(&select.projection, &mut functions);
    let _ = sqlparser::ast::Visit::visit(&select.selection, &mut functions);
    if functions.window {
        return None;
    }
    functions.names.sort();
    functions.names.dedup();
    Some(functions.names)
}

/// Whether the statement has `$n` parameters.
fn has_parameters(query: &Query) -> bool {
    struct Finder;
    impl sqlparser::ast::Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Value(v) if matches!(v.value, sqlparser::ast::Value::Placeholder(_)) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    sqlparser::ast::Visit::visit(query, &mut Finder).is_break()
}

/// The statement with every ML call replaced by a typed NULL of its result type that still
/// mentions the call's arguments cast to the parameter types of Aurora's signature, and ML table
/// functions by a LATERAL subquery doing the same. It is only described, never run: PostgreSQL
/// infers the client's `$n` parameter types from it exactly as from the native statement.
fn typing_statement(mut query: Query) -> Result<String, PlanError> {
    struct Typer;
    impl Typer {
        fn args(function: MlFunction, args: &[Expr]) -> String {
            let types: &[&str] = match function {
                MlFunction::DetectSentiment => &["varchar", "varchar", "int4"],
                MlFunction::InvokeEndpoint => &["varchar", "int4"],
            };
            args.iter()
                .enumerate()
                .map(|(i, arg)| match types.get(i) {
                    Some(ty) => format!("({arg})::{ty} IS NULL"),
                    None => format!("({arg}) IS NULL"),
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        }

        fn call(f: &sqlparser::ast::Function) -> Option<(MlFunction, Vec<Expr>)> {
            let (schema, name) = ml_name(&f.name)?;
            let function = function_of(&format!("{schema}.{name}")).ok()?;
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            Some((function, call_arguments(function, list.args.clone()).ok()?))
        }
    }
    impl VisitorMut for Typer {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            let (call, result) = match &*expr {
                Expr::Function(f) => match Typer::call(f) {
                    Some((MlFunction::InvokeEndpoint, args)) => {
                        ((MlFunction::InvokeEndpoint, args), "NULL::varchar")
                    }
                    Some(call) => (call, "ROW(NULL::varchar, NULL::real)"),
                    None => return ControlFlow::Continue(()),
                },
                Expr::CompoundFieldAccess { root, access_chain } => {
                    let (
                        Expr::Nested(inner),
                        Some(sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))),
                    ) = (root.as_ref(), access_chain.first())
                    else {
                        return ControlFlow::Continue(());
                    };
                    let Expr::Function(f) = inner.as_ref() else {
                        return ControlFlow::Continue(());
                    };
                    let Some(call) = Typer::call(f) else {
                        return ControlFlow::Continue(());
                    };
                    let result = if field.value.eq_ignore_ascii_case("confidence") {
                        "NULL::real"
                    } else {
                        "NULL::varchar"
                    };
                    (call, result)
                }
                _ => return ControlFlow::Continue(()),
            };
            *expr = parse_expr(&format!(
                "(CASE WHEN {} THEN {result} END)",
                Typer::args(call.0, &call.1)
            ));
            ControlFlow::Continue(())
        }

        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            let Some((name, args, alias)) = ml_table_function(factor) else {
                return ControlFlow::Continue(());
            };
            let Ok(function) = function_of(&name) else {
                return ControlFlow::Continue(());
            };
            let Ok(args) = call_arguments(function, args) else {
                return ControlFlow::Continue(());
            };
            let alias = alias.map_or_else(
                || function_short_name(function).to_owned(),
                |a| a.to_string(),
            );
            let text = format!(
                "SELECT 1 FROM LATERAL (SELECT NULL::varchar AS sentiment, NULL::real AS confidence \
                 WHERE {}) AS {alias}",
                Typer::args(function, &args)
            );
            if let Ok([Statement::Query(q)]) =
                Parser::parse_sql(&PostgreSqlDialect {}, &text).as_deref()
            {
                if let SetExpr::Select(select) = q.body.as_ref() {
                    if let Some(item) = select.from.first() {
                        *factor = item.relation.clone();
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = query.visit(&mut Typer);
    Ok(query.to_string())
}

/// Stands for star `k`'s columns in the residual's select list until they are known.
fn star_placeholder(b: usize, k: usize) -> SelectItem {
    let marker = star_marker(b, k);
    SelectItem::UnnamedExpr(Expr::Identifier(Ident::with_quote(
        '"',
        marker.trim_matches('"'),
    )))
}

/// `FROM "pgenrich:base<b>"`, replaced by block `b`'s base rows in
/// [`FinishPlan::residual_sql`].
fn marker_from(b: usize) -> Vec<TableWithJoins> {
    match marker_query().body.as_ref() {
        SetExpr::Select(select) => {
            let mut from = select.from.clone();
            if let Some(TableFactor::Table { name, .. }) = from.first_mut().map(|f| &mut f.relation)
            {
                *name = ObjectName::from(vec![Ident::with_quote('"', format!("{BASE_MARKER}{b}"))]);
            }
            from
        }
        _ => unreachable!("a SELECT"),
    }
}

/// `SELECT 1 FROM "pgenrich:base"`, the skeleton of base statements and markers.
fn marker_query() -> Query {
    let parsed = Parser::parse_sql(
        &PostgreSqlDialect {},
        &format!("SELECT 1 FROM \"{BASE_MARKER}\""),
    );
    match parsed {
        Ok(mut statements) => match statements.pop() {
            Some(Statement::Query(query)) => *query,
            _ => unreachable!("a query"),
        },
        Err(e) => unreachable!("the marker parses: {e}"),
    }
}

/// Whether a FROM item needs the residual only because of ML calls in its inner-join conditions
/// (which become filters), not because of its relations.
fn has_ml_condition_only(item: &TableWithJoins) -> bool {
    let relations_plain = !has_ml(&item.relation)
        && !item.relation.to_string().contains(BASE_MARKER)
        && item
            .joins
            .iter()
            .all(|j| !has_ml(&j.relation) && !j.relation.to_string().contains(BASE_MARKER));
    relations_plain && item.joins.iter().any(|j| has_ml(&j.join_operator))
}

fn correlated(name: &str) -> PlanError {
    unsupported(
        format!("an ML call in a subquery refers to \"{name}\" of an outer query (a correlated subquery)"),
        "Join the outer table inside the subquery, or move the ML call to the outer query.",
    )
}

fn true_expr() -> Expr {
    Expr::Value(sqlparser::ast::Value::Boolean(true).into())
}

/// Splits `expr` at top-level ANDs into (ML-free, ML-bearing) conjuncts.
fn split_conjuncts(expr: Expr, ml_ctes: &[String]) -> (Vec<Expr>, Vec<Expr>) {
    let mut plain = Vec::new();
    let mut ml = Vec::new();
    let mut stack = vec![expr];
    let mut ordered = Vec::new();
    while let Some(expr) = stack.pop() {
        match expr {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(*right);
                stack.push(*left);
            }
            Expr::Nested(inner)
                if matches!(
                    *inner,
                    Expr::BinaryOp {
                        op: BinaryOperator::And,
                        ..
                    }
                ) =>
            {
                stack.push(*inner)
            }
            other => ordered.push(other),
        }
    }
    for expr in ordered {
        if needs_residual(&expr, ml_ctes) {
            ml.push(expr);
        } else {
            plain.push(expr);
        }
    }
    (plain, ml)
}

fn and_all(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}

/// An ML table function in FROM.
#[derive(Debug, Clone)]
struct TableFunction {
    alias: String,
    call: usize,
    sentiment: String,
    confidence: String,
}

impl TableFunction {
    fn field(&self, column: &str) -> Option<&'static str> {
        if column == self.sentiment {
            Some("sentiment")
        } else if column == self.confidence {
            Some("confidence")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// A bare name may be an output column (PostgreSQL looks there first).
    OrderBy,
    /// A bare name may be an output column holding an ML result.
    GroupBy,
}

/// Replaces column references and ML calls of the block with base columns, collecting what the
/// base must carry.
#[derive(Default)]
struct Rewriter {
    /// The residual's name for this block's base rows.
    alias: String,
    /// The block is inside another query: references to outer names are correlated.
    nested: bool,
    ml_ctes: Vec<String>,
    calls: Vec<(MlFunction, Vec<Expr>)>,
    /// Calls whose whole record is used.
    records: Vec<usize>,
    call_keys: HashMap<String, usize>,
    carried: Vec<Expr>,
    carried_keys: HashMap<String, usize>,
    /// Names qualifying the block's FROM items (None: an unnamed subquery).
    names: Vec<Option<String>>,
    functions: Vec<TableFunction>,
    /// Output column aliases, for ORDER BY / GROUP BY names.
    aliases: Vec<String>,
    mode: Option<Mode>,
    depth: usize,
}

impl Rewriter {
    fn base_ref(&self, column: &str) -> Expr {
        Expr::CompoundIdentifier(vec![Ident::new(&self.alias), Ident::new(column)])
    }

    /// A `name.column` reference in `node` (outside its subqueries) whose name is none of the
    /// block's.
    fn outer_reference<V: sqlparser::ast::Visit>(&self, node: &V) -> Option<String> {
        struct Finder<'a> {
            rewriter: &'a Rewriter,
            depth: usize,
            found: Option<String>,
        }
        impl sqlparser::ast::Visitor for Finder<'_> {
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
                if let Expr::CompoundIdentifier(parts) = expr {
                    if self.depth == 0
                        && parts.len() == 2
                        && !self.rewriter.is_block_name(&parts[0].value)
                    {
                        self.found = Some(parts[0].value.clone());
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let mut finder = Finder {
            rewriter: self,
            depth: 0,
            found: None,
        };
        let _ = node.visit(&mut finder);
        finder.found
    }

    fn is_block_name(&self, name: &str) -> bool {
        name.starts_with(BASE_ALIAS)
            || self.names.iter().flatten().any(|n| n == name)
            || self.functions.iter().any(|f| f.alias == name)
    }

    fn add_call(&mut self, function: MlFunction, args: Vec<Expr>) -> Result<usize, PlanError> {
        if self.nested {
            if let Some(name) = args.iter().find_map(|a| self.outer_reference(a)) {
                return Err(correlated(&name));
            }
        }
        let key = format!(
            "{}({})",
            function.name(),
            args.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(&k) = self.call_keys.get(&key) {
            return Ok(k);
        }
        self.calls.push((function, args));
        self.call_keys.insert(key, self.calls.len() - 1);
        Ok(self.calls.len() - 1)
    }

    fn carry(&mut self, expr: &Expr) -> Expr {
        let key = expr.to_string();
        let index = match self.carried_keys.get(&key) {
            Some(&i) => i,
            None => {
                self.carried.push(expr.clone());
                self.carried_keys.insert(key, self.carried.len() - 1);
                self.carried.len() - 1
            }
        };
        self.base_ref(&format!("c{index}"))
    }

    fn function(&self, name: &ObjectName) -> Option<&TableFunction> {
        let [part] = name.0.as_slice() else {
            return None;
        };
        let ident = part.as_ident()?;
        self.functions.iter().find(|f| f.alias == ident.value)
    }

    /// Whether `expr` refers to a column of an ML table function.
    fn mentions_function(&self, expr: &Expr) -> bool {
        struct Finder<'a>(&'a [TableFunction]);
        impl sqlparser::ast::Visitor for Finder<'_> {
            type Break = ();
            fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
                let hit = match expr {
                    Expr::CompoundIdentifier(parts) => {
                        parts.len() == 2 && self.0.iter().any(|f| f.alias == parts[0].value)
                    }
                    Expr::Identifier(ident) => {
                        self.0.iter().any(|f| f.field(&ident.value).is_some())
                    }
                    _ => false,
                };
                if hit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
        }
        sqlparser::ast::Visit::visit(expr, &mut Finder(&self.functions)).is_break()
    }

    fn rewrite(&mut self, expr: &mut Expr, mode: Mode) -> Result<(), PlanError> {
        self.rewrite_node(expr, mode)
    }

    fn rewrite_node<V: VisitMut>(&mut self, node: &mut V, mode: Mode) -> Result<(), PlanError> {
        self.mode = Some(mode);
        self.depth = 0;
        match node.visit(self) {
            ControlFlow::Break(error) => Err(error),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    /// The replacement of an ML call (`field`: a selected field of detect_sentiment's record).
    fn ml_call(
        &mut self,
        function: &sqlparser::ast::Function,
        field: Option<&str>,
    ) -> Result<Expr, PlanError> {
        let Some((schema, name)) = ml_name(&function.name) else {
            unreachable!("only called for ML names")
        };
        let ml = function_of(&format!("{schema}.{name}"))?;
        let FunctionArguments::List(list) = &function.args else {
            return Err(unsupported(
                format!("{} needs an argument list", ml.name()),
                NOT_YET_HINT,
            ));
        };
        if function.over.is_some() || function.filter.is_some() || !list.clauses.is_empty() {
            return Err(unsupported(
                format!("{} is not an aggregate or window function", ml.name()),
                NOT_YET_HINT,
            ));
        }
        let call = self.add_call(ml, call_arguments(ml, list.args.clone())?)?;
        match (ml, field) {
            (MlFunction::InvokeEndpoint, None) => Ok(self.base_ref(&output_column(call, ""))),
            (MlFunction::InvokeEndpoint, Some(_)) => Err(PlanError {
                code: SqlState::WrongObjectType,
                message: "aws_sagemaker.invoke_endpoint returns text, which has no fields".into(),
                hint: None,
            }),
            (MlFunction::DetectSentiment, Some(f @ ("sentiment" | "confidence"))) => {
                Ok(self.base_ref(&output_column(call, f)))
            }
            (MlFunction::DetectSentiment, Some(other)) => Err(PlanError {
                code: SqlState::UndefinedColumn,
                message: format!("column \"{other}\" not found in data type record"),
                hint: Some("detect_sentiment returns (sentiment, confidence).".into()),
            }),
            // The whole record (see FinishPlan::residual_sql).
            (MlFunction::DetectSentiment, None) => {
                if !self.records.contains(&call) {
                    self.records.push(call);
                }
                Ok(self.base_ref(&format!("m{call}")))
            }
        }
    }
}

impl VisitorMut for Rewriter {
    type Break = PlanError;

    fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<PlanError> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<PlanError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<PlanError> {
        let replacement = if self.depth > 0 {
            // Inside a subquery of an ML expression: only references qualified by the block's
            // names are the block's (correlated) columns.
            match expr {
                Expr::CompoundIdentifier(parts)
                    if parts.len() == 2
                        && self.names.iter().flatten().any(|n| *n == parts[0].value) =>
                {
                    Some(Ok(self.carry(expr)))
                }
                _ => None,
            }
        } else {
            self.replace(expr)
        };
        match replacement {
            Some(Ok(new)) => {
                *expr = new;
                ControlFlow::Continue(())
            }
            Some(Err(error)) => ControlFlow::Break(error),
            None => ControlFlow::Continue(()),
        }
    }
}

impl Rewriter {
    /// What a block-level expression becomes, if it is replaced as a whole.
    fn replace(&mut self, expr: &Expr) -> Option<Result<Expr, PlanError>> {
        match expr {
            Expr::Function(f) if ml_name(&f.name).is_some() => Some(self.ml_call(f, None)),
            Expr::CompoundFieldAccess { root, access_chain } if access_chain.len() == 1 => {
                let (Expr::Nested(inner), sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))) =
                    (root.as_ref(), &access_chain[0])
                else {
                    return None;
                };
                match inner.as_ref() {
                    Expr::Function(f) if ml_name(&f.name).is_some() => {
                        Some(self.ml_call(f, Some(&field.value.to_ascii_lowercase())))
                    }
                    _ => None,
                }
            }
            Expr::Identifier(ident) => {
                let mode = self.mode.unwrap_or(Mode::Plain);
                if mode == Mode::OrderBy && self.aliases.contains(&ident.value) {
                    return None;
                }
                if let Some((call, field)) = self
                    .functions
                    .iter()
                    .find_map(|f| f.field(&ident.value).map(|field| (f.call, field)))
                {
                    return Some(Ok(self.base_ref(&output_column(call, field))));
                }
                if mode == Mode::GroupBy && self.aliases.contains(&ident.value) {
                    return None;
                }
                Some(Ok(self.carry(expr)))
            }
            // Already replaced (the parts of a whole-record replacement).
            Expr::CompoundIdentifier(parts) if parts[0].value.starts_with(BASE_ALIAS) => None,
            Expr::CompoundIdentifier(parts) => {
                if self.nested && parts.len() == 2 && !self.is_block_name(&parts[0].value) {
                    // A column of an outer query: valid where the residual evaluates this.
                    return None;
                }
                if let [table, column] = parts.as_slice() {
                    if let Some(function) = self.functions.iter().find(|f| f.alias == table.value) {
                        return Some(match function.field(&column.value) {
                            Some(field) => Ok(self.base_ref(&output_column(function.call, field))),
                            None => Err(PlanError {
                                code: SqlState::UndefinedColumn,
                                message: format!(
                                    "column {}.{} does not exist",
                                    table.value, column.value
                                ),
                                hint: None,
                            }),
                        });
                    }
                }
                Some(Ok(self.carry(expr)))
            }
            // ML-free subquery expressions are evaluated per base row, in phase 1.
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::In {
                target: sqlparser::ast::InTarget::Subquery(_),
                ..
            }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
                if !needs_residual(expr, &self.ml_ctes) && !self.mentions_function(expr) =>
            {
                Some(Ok(self.carry(expr)))
            }
            _ => None,
        }
    }
}

/// The name PostgreSQL gives an unaliased output column (its `FigureColname`), `?column?` when
/// it has none.
pub fn column_name(expr: &Expr) -> String {
    figure(expr).unwrap_or_else(|| "?column?".to_owned())
}

fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn figure(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Function(f) => {
            let name = f.name.0.last()?.as_ident()?;
            let name = ident_name(name);
            Some(name.trim_end_matches(ALL_FIELDS_SUFFIX).to_owned())
        }
        Expr::Nested(inner) => figure(inner),
        Expr::Cast {
            expr, data_type, ..
        } => figure(expr).or_else(|| Some(type_name(data_type))),
        Expr::Collate { expr, .. } => figure(expr),
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.last() {
            Some(sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))) => {
                Some(ident_name(field))
            }
            Some(sqlparser::ast::AccessExpr::Subscript(_)) => figure(root),
            _ => None,
        },
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Tuple(_) => Some("row".into()),
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) => match select.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some(ident_name(alias)),
                Some(SelectItem::UnnamedExpr(e)) => figure(e),
                _ => None,
            },
            _ => None,
        },
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        _ => None,
    }
}

/// PostgreSQL's internal name of a type written in a cast (what it names a cast column).
fn type_name(data_type: &sqlparser::ast::DataType) -> String {
    let text = data_type.to_string().to_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim();
    let base = base.trim_end_matches("[]");
    match base {
        "int" | "integer" | "int4" => "int4",
        "smallint" | "int2" => "int2",
        "bigint" | "int8" => "int8",
        "real" | "float4" => "float4",
        "float" | "double precision" | "float8" | "double" => "float8",
        "boolean" | "bool" => "bool",
        "varchar" | "character varying" => "varchar",
        "char" | "character" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        "time" | "time without time zone" => "time",
        "timetz" | "time with time zone" => "timetz",
        other => other.rsplit('.').next().unwrap_or(other),
    }
    .trim_matches('"')
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> FinishPlan {
        plan(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    fn refused(sql: &str) -> PlanError {
        match plan(sql) {
            Ok(p) => panic!("{sql} was planned: {p:?}"),
            Err(e) => e,
        }
    }

    fn residual(p: &FinishPlan) -> String {
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
            assert!(p.row_local.as_ref().is_none_or(|f| f.contains(&"count".to_owned())), "{sql}");
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
             FROM unnest($1::t0[], $2::t1[], $3::varchar[], $4::float4[]) \
             AS u(c0, c1, m0_sentiment, m0_confidence)) AS pgenrich_base0 \
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
        let p = ok("SELECT a.id, b.id FROM tx a JOIN tx b ON a.id < b.id \
                    AND aws_sagemaker.invoke_endpoint('score', NULL, a.amount, b.amount)::numeric > 10");
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
        // The whole record is a row of a lateral subquery: NULL where the call gave NULL.
        assert!(
            r.contains(
                "x0 AS m0 FROM unnest($1::t0[], $2::varchar[], $3::float4[]) AS u(c0, m0_sentiment, \
                 m0_confidence) LEFT JOIN LATERAL (SELECT u.m0_sentiment AS sentiment, \
                 u.m0_confidence AS confidence WHERE u.m0_sentiment IS NOT NULL) AS x0 ON true)"
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
            "INSERT INTO t SELECT aws_sagemaker.invoke_endpoint('e', NULL, x) FROM s",
            "UPDATE t SET y = aws_sagemaker.invoke_endpoint('e', NULL, x)",
            "SELECT * FROM t, aws_comprehend.detect_sentiment(x, 'en') s WHERE s.sentiment = 'x'",
            "SELECT x FROM t WHERE EXISTS (SELECT 1 FROM s WHERE aws_sagemaker.invoke_endpoint('e', NULL, t.x) = '1')",
            "WITH w AS (SELECT aws_sagemaker.invoke_endpoint('e', NULL, x) v FROM t) SELECT aws_sagemaker.invoke_endpoint('e', NULL, v) FROM w",
            "SELECT aws_sagemaker.invoke_endpoint('e', NULL, v) FROM (SELECT aws_sagemaker.invoke_endpoint('f', NULL, x) v FROM t) sub WHERE v > '1'",
            "SELECT x FROM t LEFT JOIN s ON aws_sagemaker.invoke_endpoint('e', NULL, x) = s.y",
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
            r.contains("unnest($4::t0[], $5::t1[], $6::varchar[])"),
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
        assert!(
            residual(&p).ends_with("WHERE pgenrich_base0.m0 = '1' AND pgenrich_base0.c1 = t.x)")
        );
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
        ] {
            assert_eq!(column_name(&parse_expr(expr)), name, "{expr}");
        }
    }
}
