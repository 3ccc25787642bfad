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
//!   rows, bound as array parameters (`FROM (SELECT unnest($1::int8[]) AS c0, …) AS u`), every carried
//!   expression replaced by its base column and every ML call by its result columns. PostgreSQL
//!   evaluates everything else — operators, casts, comparisons, aggregates, sorting, output
//!   formats — exactly as it would natively.
//!
//! Statements that write take the same path with the write as the residual statement:
//! `INSERT … SELECT`, `CREATE TABLE … AS` and `SELECT … INTO` in [`dml`], `UPDATE` and `DELETE`
//! (target rows selected by identity and locked before inference) in [`modify`].
//!
//! The residual's text depends on the carried columns' types, which only PostgreSQL knows: the
//! planner keeps a marker where the base goes, and [`ResidualPlan::residual_sql`] fills it in once
//! the base statement has been described.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Cte, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, JoinConstraint, JoinOperator, ObjectName, OrderBy, OrderByKind, Query,
    Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor,
    TableWithJoins, VisitMut, VisitorMut, WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::plan::{
    call_arguments, function_of, function_short_name, has_ml, ml_name, ml_table_function,
    parse_ml_query, refuse_data_modifying, relation_alias, unsupported, visit_top_level, Call,
    MlFunction, PlanError,
};
use super::text::{rewrite_unparsable_forms, ALL_FIELDS_SUFFIX};
use crate::error::SqlState;

mod dml;
mod modify;
mod names;
mod outer;
mod planner;
mod rewrite;
mod scan;
mod typing;

pub use names::column_name;
use names::ident_name;
use planner::{correlated, Planner};
use rewrite::{Mode, Rewriter, TableFunction};
use scan::needs_residual;
use typing::{has_parameters, typing_statement};

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
pub struct ResidualPlan {
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
    /// Set if the residual writes (`INSERT … SELECT`, `CREATE TABLE … AS`, `SELECT … INTO`).
    pub modifies: Option<Write>,
    /// Text before the residual statement: `DECLARE … CURSOR FOR ` when the residual is a
    /// cursor's query ([`ResidualPlan::declared_as`]).
    prefix: String,
    /// The cursor it declares is `WITH HOLD`.
    hold: bool,
}

/// What a residual statement that writes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub command: Command,
    /// The target table, as written: an INSERT, UPDATE or DELETE of a temporary table may run
    /// in a READ ONLY transaction.
    pub table: Option<String>,
    /// Whether the statement may run per chunk of base rows (in one transaction, the chunks'
    /// tags summed): each base row is written by its own chunk's run only.
    pub chunkable: bool,
}

/// The kind of statement that writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Insert,
    CreateTableAs,
    SelectInto,
    Update,
    Delete,
}

impl Command {
    /// As PostgreSQL names it in "cannot execute … in a read-only transaction".
    pub fn name(self) -> &'static str {
        match self {
            Command::Insert => "INSERT",
            Command::CreateTableAs => "CREATE TABLE AS",
            Command::SelectInto => "SELECT INTO",
            Command::Update => "UPDATE",
            Command::Delete => "DELETE",
        }
    }

    /// PostgreSQL's CommandComplete tag for `n` rows written.
    pub fn tag(self, n: u64) -> String {
        match self {
            Command::Insert => format!("INSERT 0 {n}"),
            Command::Update => format!("UPDATE {n}"),
            Command::Delete => format!("DELETE {n}"),
            Command::CreateTableAs | Command::SelectInto => format!("SELECT {n}"),
        }
    }
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
                    _ => 1,
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

impl ResidualPlan {
    /// Whether a base statement calls nextval() or setval(), which write: then the statement
    /// cannot run in a READ ONLY transaction.
    pub fn writes(&self) -> bool {
        self.modifies.is_some()
            || self.blocks.iter().any(|b| {
                let sql = b.base_sql.to_ascii_lowercase();
                sql.contains("nextval") || sql.contains("setval")
            })
    }

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
                // (field, array element type, the column's type when it differs): embeddings
                // travel as their text form, one `float8[]` literal per row (arrays of arrays
                // must be rectangular; embeddings need not be).
                let outputs: &[(&str, &str, Option<&str>)] = match call.function {
                    MlFunction::DetectSentiment => &[
                        ("sentiment", "varchar", None),
                        ("confidence", "float4", None),
                    ],
                    MlFunction::InvokeEndpoint => &[("", "varchar", None)],
                    MlFunction::InvokeModel => &[("", "varchar", Some("text"))],
                    MlFunction::InvokeModelGetEmbeddings => &[("", "text", Some("float8[]"))],
                };
                for (field, ty, cast) in outputs {
                    let name = output_column(k, field);
                    arrays.push(format!("${}::{ty}[]", next()));
                    select.push(match cast {
                        Some(cast) => format!("u.{name}::{cast} AS {name}"),
                        None => format!("u.{name}"),
                    });
                    columns.push(name);
                }
            }
            // detect_sentiment's whole record: a row of a lateral subquery, so PostgreSQL knows
            // its field names wherever it goes; where the call gave NULL, a record of two NULLs,
            // as a native function with OUT parameters returns.
            let mut records = String::new();
            for &k in &block.records {
                {
                    let (s, c) = (
                        output_column(k, "sentiment"),
                        output_column(k, "confidence"),
                    );
                    select.push(format!("x{k} AS m{k}"));
                    records.push_str(&format!(
                        " CROSS JOIN LATERAL (SELECT u.{s} AS sentiment, u.{c} AS confidence) \
                         AS x{k}"
                    ));
                }
            }
            // unnest in a select list runs the arrays in step without materialising them (a
            // FROM unnest(a, b) copies every row into a tuplestore first: ~40% more CPU).
            let unnested: Vec<String> = arrays
                .iter()
                .zip(&columns)
                .map(|(array, column)| format!("unnest({array}) AS {column}"))
                .collect();
            let base = format!(
                "(SELECT {} FROM (SELECT {}) AS u{records}) AS {alias}",
                select.join(", "),
                unnested.join(", ")
            );
            residual = residual.replace(&block_marker(b), &base);
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
                residual = residual.replace(&star_marker(b, k), &list.join(", "));
            }
        }
        if self.prefix.is_empty() {
            residual
        } else {
            format!("{}{residual}", self.prefix)
        }
    }

    /// The plan whose residual statement declares a cursor over the result: `prefix` (the
    /// `DECLARE … CURSOR FOR ` of pgenrich's cursor) then the residual. It runs whole, never per
    /// chunk: the cursor's rows are the whole statement's.
    pub fn declared_as(mut self, prefix: String, hold: bool) -> ResidualPlan {
        self.prefix = prefix;
        self.hold = hold;
        self.row_local = None;
        self
    }

    /// Whether it declares a cursor ([`ResidualPlan::declared_as`]).
    pub fn declares(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Whether it declares a cursor without HOLD, which only a transaction block may hold.
    pub fn needs_block(&self) -> bool {
        self.declares() && !self.hold
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

/// Parses an expression pgenrich built around parts of the client's statement. sqlparser prints
/// what it parsed so that it parses again; should it not, the statement is refused, never
/// guessed at.
fn parse_expr(text: &str) -> Result<Expr, PlanError> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| PlanError {
            code: SqlState::SyntaxError,
            message: format!("pgenrich could not rewrite this ML statement: {e}"),
            hint: Some("Simplify the expression around the ML call, or report it.".into()),
        })
}

/// Plans one statement text whose ML calls the streaming plan cannot place.
pub fn plan(sql: &str) -> Result<ResidualPlan, PlanError> {
    let text = rewrite_unparsable_forms(sql);
    if text.contains("pgenrich:") || text.to_ascii_lowercase().contains(BASE_ALIAS) {
        return Err(unsupported(
            "names starting with pgenrich: or pgenrich_base are reserved in ML statements",
            "Rename the identifier.",
        ));
    }
    match dml::parse(&text)? {
        dml::Parsed::Query(mut query) => match dml::plan_select_into(&mut query) {
            Some(plan) => plan,
            None => plan_query(*query, |q| q.to_string(), None),
        },
        dml::Parsed::Insert(insert) => dml::plan_insert(insert),
        dml::Parsed::CreateTable(create) => dml::plan_create_table(create),
        dml::Parsed::Update(update) => modify::plan_update(*update),
        dml::Parsed::Delete(delete) => modify::plan_delete(*delete),
    }
}

/// Plans `query`, whose residual is `render(query rewritten)`; `modifies`: the command, if that
/// statement writes.
fn plan_query(
    mut query: Query,
    render: impl Fn(Query) -> String,
    modifies: Option<Write>,
) -> Result<ResidualPlan, PlanError> {
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
    // An INSERT may run per chunk (in one transaction; the session sums the chunks' tags); a
    // CREATE TABLE AS runs its residual once, over all base rows.
    let row_local = if modifies.as_ref().is_some_and(|w| !w.chunkable) {
        None
    } else {
        row_local_functions(&query, planner.blocks.len())
    };
    let typing_sql = if has_parameters(&original) {
        let typing = typing_statement(original)?;
        Some(if modifies.is_some() {
            render(*parse_ml_query(&typing)?)
        } else {
            typing
        })
    } else {
        None
    };
    let plan = ResidualPlan {
        blocks: planner.blocks,
        residual: render(query),
        row_local,
        typing_sql,
        modifies,
        prefix: String::new(),
        hold: false,
    };
    // Every text pgenrich sends upstream must be free of ML calls: PostgreSQL would refuse one
    // (or, where native functions exist, run it unbatched). A position the planner missed is
    // refused here rather than sent.
    let upstream = std::iter::once(plan.residual.as_str())
        .chain(plan.typing_sql.as_deref())
        .chain(plan.blocks.iter().map(|b| b.base_sql.as_str()));
    for text in upstream {
        if super::guard::scan(text).is_none_or(|scan| scan.calls_ml) {
            return Err(unsupported(
                "pgenrich cannot evaluate the ML calls of this statement where they appear",
                NOT_YET_HINT,
            ));
        }
    }
    Ok(plan)
}

/// The function names of a row-local residual (see [`ResidualPlan::row_local`]).
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
    let mut names = Vec::new();
    let mut window = false;
    let mut collect = |expr: &Expr| {
        if let Expr::Function(f) = expr {
            if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
                window = true;
                return ControlFlow::Break(());
            }
            if let Some(name) = f.name.0.last().and_then(|p| p.as_ident()) {
                names.push(ident_name(name));
            }
        }
        ControlFlow::Continue(())
    };
    let _ = visit_top_level(&select.projection, &mut collect, |_| {
        ControlFlow::Continue(())
    });
    let _ = visit_top_level(&select.selection, &mut collect, |_| {
        ControlFlow::Continue(())
    });
    if window {
        return None;
    }
    names.sort();
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests;
