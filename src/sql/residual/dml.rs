//! ML calls in data-modifying statements. `INSERT INTO t [(cols)] SELECT … ML … [ON CONFLICT …]
//! [RETURNING …]`: the SELECT is planned like any residual statement, and the residual statement
//! is the INSERT over the enriched base rows, so PostgreSQL writes the rows, checks constraints,
//! resolves conflicts and returns RETURNING rows and the `INSERT 0 n` tag itself, in the
//! client's transaction or pgenrich's own (read-write) one, atomically.
//!
//! `CREATE [TEMP|UNLOGGED] TABLE t AS SELECT … ML …` and `SELECT … ML … INTO t FROM …` work
//! the same way: the residual statement is the CREATE TABLE AS over the enriched rows (SELECT
//! INTO as the CREATE TABLE AS it stands for, with the same `SELECT n` tag).
//!
//! UPDATE and DELETE: see [`super::modify`]. Other data-modifying forms (MERGE, COPY, ML calls
//! in VALUES, ON CONFLICT or RETURNING) are refused with `0A000`.

use sqlparser::ast::{CreateTable, Delete, Insert, Query, SetExpr, Statement, Update};

use super::super::plan::{has_ml, ml_query, parse_ml_statement, unsupported, PlanError};
use super::{Command, Write};

/// A statement the residual planner takes.
pub(super) enum Parsed {
    Query(Box<Query>),
    Insert(Box<Insert>),
    CreateTable(Box<CreateTable>),
    Update(Box<Update>),
    Delete(Box<Delete>),
}

pub(super) fn parse(text: &str) -> Result<Parsed, PlanError> {
    match parse_ml_statement(text)? {
        Statement::Insert(insert) => Ok(Parsed::Insert(Box::new(insert))),
        Statement::CreateTable(create) if create.query.is_some() => {
            Ok(Parsed::CreateTable(Box::new(create)))
        }
        Statement::Update(update) => Ok(Parsed::Update(Box::new(update))),
        Statement::Delete(delete) => Ok(Parsed::Delete(Box::new(delete))),
        other => ml_query(other).map(Parsed::Query),
    }
}

pub(super) fn plan_insert(mut insert: Box<Insert>) -> Result<super::ResidualPlan, PlanError> {
    let table = insert.table.to_string();
    if has_ml(&insert.on) || has_ml(&insert.returning) {
        return Err(unsupported(
            "ML calls in ON CONFLICT or RETURNING are not supported",
            "Call the ML functions in the INSERT's SELECT and refer to their columns.",
        ));
    }
    let Some(source) = insert.source.take() else {
        return Err(unsupported(
            "this INSERT form with ML calls is not supported",
            "Write INSERT INTO t (…) SELECT … with the ML calls in the SELECT.",
        ));
    };
    if matches!(source.body.as_ref(), SetExpr::Values(_)) || has_ml(&source.with) {
        return Err(unsupported(
            "ML calls in INSERT … VALUES or in a WITH query of an INSERT are not supported",
            "Write INSERT INTO t (…) SELECT <the ML calls> [FROM …].",
        ));
    }
    super::plan_query(
        *source,
        |query| {
            let mut insert = insert.clone();
            insert.source = Some(Box::new(query));
            Statement::Insert(*insert).to_string()
        },
        Some(Write {
            command: Command::Insert,
            table: Some(table),
            chunkable: true,
        }),
    )
}

pub(super) fn plan_create_table(
    mut create: Box<CreateTable>,
) -> Result<super::ResidualPlan, PlanError> {
    if create.with_data.as_ref().is_some_and(|w| !w.data) {
        return Err(unsupported(
            "CREATE TABLE … AS … WITH NO DATA over ML calls is not supported",
            "Create the table with explicit column types instead.",
        ));
    }
    let Some(query) = create.query.take() else {
        return Err(unsupported(
            "this CREATE TABLE form with ML calls is not supported",
            "Write CREATE TABLE t AS SELECT <the ML calls> FROM ….",
        ));
    };
    super::plan_query(
        *query,
        |query| {
            let mut create = create.clone();
            create.query = Some(Box::new(query));
            Statement::CreateTable(*create).to_string()
        },
        Some(Write {
            command: Command::CreateTableAs,
            table: None,
            chunkable: false,
        }),
    )
}

/// `SELECT … INTO [TEMP|UNLOGGED] [TABLE] t …` at the top of `query`, planned as the CREATE TABLE
/// AS it stands for; `None` for any other query.
pub(super) fn plan_select_into(
    query: &mut Query,
) -> Option<Result<super::ResidualPlan, PlanError>> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let into = select.into.take()?;
    let [target] = into.targets.as_slice() else {
        return Some(Err(unsupported(
            "SELECT INTO names one table",
            "Write SELECT … INTO t FROM ….",
        )));
    };
    let create = format!(
        "CREATE {}{}TABLE {target} AS ",
        if into.temporary { "TEMPORARY " } else { "" },
        if into.unlogged { "UNLOGGED " } else { "" },
    );
    Some(super::plan_query(
        query.clone(),
        move |query| format!("{create}{query}"),
        Some(Write {
            command: Command::SelectInto,
            table: None,
            chunkable: false,
        }),
    ))
}
