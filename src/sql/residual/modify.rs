//! `UPDATE t SET c = <expr with ML calls> [FROM …] [WHERE …] [RETURNING …]` and `DELETE FROM t
//! [USING …] WHERE <condition with ML calls> [RETURNING …]`.
//!
//! The statement becomes a SELECT of the target rows' identity (`tableoid`, `ctid`) and the new
//! values, planned like any residual statement; its base statement locks the target rows (`FOR
//! UPDATE OF t`) as it reads them, before inference, so no concurrent writer can change a row
//! between its scoring and its update (the writer waits, as it would for a native UPDATE). The
//! residual statement is the UPDATE or DELETE joined on the rows' identity to the enriched rows,
//! so PostgreSQL writes, checks constraints, fires triggers and answers RETURNING and the tag.

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, SelectItem, TableFactor, TableWithJoins, Update,
    UpdateTableFromKind,
};

use super::super::plan::{has_ml, parse_ml_query, unsupported, PlanError};
use super::{Command, ResidualPlan, Write};

/// The enriched rows, as the residual UPDATE or DELETE joins them.
const ROWS: &str = "\"pgenrich.q\"";

/// The statement's target table.
struct Target {
    /// As written, with its alias.
    written: String,
    /// How columns refer to it: the alias, else the name as written.
    reference: String,
    /// How `FOR UPDATE OF` names it: the alias, else the table's own name.
    lock: String,
    /// The name as written (the read-only check looks it up).
    name: String,
}

fn target(table: &TableWithJoins) -> Result<Target, PlanError> {
    match &table.relation {
        TableFactor::Table {
            name, alias, args, ..
        } if table.joins.is_empty() && args.is_none() => {
            let own = name
                .0
                .last()
                .map(|part| part.to_string())
                .unwrap_or_default();
            let alias = alias.as_ref().map(|a| a.name.to_string());
            Ok(Target {
                written: table.relation.to_string(),
                reference: alias.clone().unwrap_or_else(|| name.to_string()),
                lock: alias.unwrap_or(own),
                name: name.to_string(),
            })
        }
        _ => Err(unsupported(
            "this UPDATE or DELETE target with ML calls is not supported",
            "Name one table as the target.",
        )),
    }
}

/// The SELECT of the target rows' identity and `values`, over the target and `from`.
fn rows_select(
    target: &Target,
    values: &[String],
    from: &[TableWithJoins],
    selection: Option<&Expr>,
) -> String {
    let r = &target.reference;
    let mut columns = vec![
        format!("{r}.tableoid AS \"pgenrich.toid\""),
        format!("{r}.ctid AS \"pgenrich.ctid\""),
    ];
    columns.extend(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("({v}) AS \"pgenrich.v{i}\"")),
    );
    let mut sql = format!("SELECT {} FROM {}", columns.join(", "), target.written);
    for item in from {
        sql.push_str(&format!(", {item}"));
    }
    if let Some(selection) = selection {
        sql.push_str(&format!(" WHERE {selection}"));
    }
    sql
}

fn returning(
    items: &Option<Vec<SelectItem>>,
    with_other_tables: bool,
) -> Result<String, PlanError> {
    let Some(items) = items else {
        return Ok(String::new());
    };
    if has_ml(items) || with_other_tables {
        return Err(unsupported(
            "RETURNING with ML calls, or next to FROM/USING tables, is not supported in an \
             UPDATE or DELETE with ML calls",
            "Return the target table's columns only.",
        ));
    }
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    Ok(format!(" RETURNING {}", items.join(", ")))
}

/// Plans `select` (from [`rows_select`]) with the residual `{head} {join_keyword} (<enriched
/// rows>) AS … WHERE <target = rows by identity>{tail}`, and locks the target rows as the base
/// statement reads them.
fn plan_by_identity(
    target: Target,
    select: &str,
    head: String,
    join_keyword: &'static str,
    tail: String,
    command: Command,
    chunkable: bool,
) -> Result<ResidualPlan, PlanError> {
    let r = &target.reference;
    let join =
        format!("{r}.tableoid = {ROWS}.\"pgenrich.toid\" AND {r}.ctid = {ROWS}.\"pgenrich.ctid\"");
    let plan = super::plan_query(
        *parse_ml_query(select)?,
        move |q| format!("{head} {join_keyword} ({q}) AS {ROWS} WHERE {join}{tail}"),
        Some(Write {
            command,
            table: Some(target.name.clone()),
            chunkable,
        }),
    )?;
    lock(plan, &target)
}

/// Locks the target rows as the base statement reads them.
fn lock(mut plan: ResidualPlan, target: &Target) -> Result<ResidualPlan, PlanError> {
    let identity = format!("{}.ctid AS", target.reference);
    let [block] = plan.blocks.as_mut_slice() else {
        return Err(unsupported(
            "ML calls in subqueries of an UPDATE or DELETE are not supported",
            "Call the ML functions on the target table's (and FROM tables') columns directly.",
        ));
    };
    if !block.base_sql.contains(&identity) {
        return Err(unsupported(
            "ML calls in subqueries of an UPDATE or DELETE are not supported",
            "Call the ML functions on the target table's (and FROM tables') columns directly.",
        ));
    };
    block
        .base_sql
        .push_str(&format!(" FOR UPDATE OF {}", target.lock));
    Ok(plan)
}

pub(super) fn plan_update(update: Update) -> Result<ResidualPlan, PlanError> {
    let target = target(&update.table)?;
    let from = match update.from {
        None => Vec::new(),
        Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) => f,
    };
    let tail = returning(&update.returning, !from.is_empty())?;
    let mut values = Vec::new();
    let mut sets = Vec::new();
    for assignment in &update.assignments {
        let AssignmentTarget::ColumnName(column) = &assignment.target else {
            return Err(unsupported(
                "SET (a, b) = … with ML calls is not supported",
                "Assign each column on its own: SET a = …, b = ….",
            ));
        };
        // DEFAULT is no expression: it stays in the UPDATE itself.
        if matches!(&assignment.value, Expr::Identifier(id)
            if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
        {
            sets.push(format!("{column} = DEFAULT"));
            continue;
        }
        sets.push(format!("{column} = {ROWS}.\"pgenrich.v{}\"", values.len()));
        values.push(assignment.value.to_string());
    }
    let select = rows_select(&target, &values, &from, update.selection.as_ref());
    let head = format!("UPDATE {} SET {}", target.written, sets.join(", "));
    // With FROM, a target row may meet several rows (updated once, natively): not per chunk.
    let chunkable = from.is_empty();
    plan_by_identity(
        target,
        &select,
        head,
        "FROM",
        tail,
        Command::Update,
        chunkable,
    )
}

pub(super) fn plan_delete(delete: Delete) -> Result<ResidualPlan, PlanError> {
    let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
    let ([table], true) = (tables.as_slice(), delete.tables.is_empty()) else {
        return Err(unsupported(
            "this DELETE form with ML calls is not supported",
            "Write DELETE FROM t [USING …] WHERE ….",
        ));
    };
    let target = target(table)?;
    let using = delete.using.unwrap_or_default();
    let tail = returning(&delete.returning, !using.is_empty())?;
    let select = rows_select(&target, &[], &using, delete.selection.as_ref());
    let head = format!("DELETE FROM {}", target.written);
    let chunkable = using.is_empty();
    plan_by_identity(
        target,
        &select,
        head,
        "USING",
        tail,
        Command::Delete,
        chunkable,
    )
}
