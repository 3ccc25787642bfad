//! ML calls in data-modifying statements. `INSERT INTO t [(cols)] SELECT … ML … [ON CONFLICT …]
//! [RETURNING …]`: the SELECT is planned like any residual statement, and the residual statement
//! is the INSERT over the enriched base rows, so PostgreSQL writes the rows, checks constraints,
//! resolves conflicts and returns RETURNING rows and the `INSERT 0 n` tag itself, in the
//! client's transaction or pgenrich's own (read-write) one, atomically.
//!
//! Other data-modifying forms are refused with `0A000` for now.

use sqlparser::ast::{Insert, Query, SetExpr, Statement};

use super::super::plan::{has_ml, ml_query, parse_ml_statement, unsupported, PlanError};

/// A statement the residual planner takes.
pub(super) enum Parsed {
    Query(Box<Query>),
    Insert(Box<Insert>),
}

pub(super) fn parse(text: &str) -> Result<Parsed, PlanError> {
    match parse_ml_statement(text)? {
        Statement::Insert(insert) => Ok(Parsed::Insert(Box::new(insert))),
        other => ml_query(other).map(Parsed::Query),
    }
}

pub(super) fn plan_insert(mut insert: Box<Insert>) -> Result<super::ResidualPlan, PlanError> {
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
        true,
    )
}
