//! How an ML statement is planned: streaming where its calls allow it, else base + residual.
//! Runs on a planner thread ([`super::planner`]), never on the relay's.

use super::*;

/// Plans a simple-protocol Query with ML calls: streaming where the calls allow it, else (one
/// statement) the base + residual plan, whose refusal is then the one reported.
pub(super) fn plan_query(text: &str) -> Result<Intercept, plan::PlanError> {
    if let Some(request) = crate::sql::explain::explain(text) {
        return plan_explain(&request);
    }
    plan::plan_query_message(text).map(|mut pieces| match (pieces.len(), pieces.pop()) {
        (1, Some(plan::Piece::Ml(single))) => Intercept::Query(Box::new(single)),
        (1, Some(plan::Piece::Residual(single))) => Intercept::Residual(single),
        (_, last) => Intercept::Multi(pieces.into_iter().chain(last).collect()),
    })
}

/// Plans the statement an EXPLAIN is about: streaming where possible, else base + residual.
fn plan_explain(
    request: &crate::sql::explain::ExplainRequest,
) -> Result<Intercept, plan::PlanError> {
    use crate::sql::explain::ExplainTarget;
    let target = match plan::plan(&request.statement) {
        Ok(streaming) => ExplainTarget::Streaming(streaming),
        Err(error) if error.code == crate::error::SqlState::FeatureNotSupported => {
            ExplainTarget::Residual(crate::sql::residual::plan(&request.statement)?)
        }
        Err(error) => return Err(error),
    };
    Ok(Intercept::Explain {
        analyze: request.analyze,
        target: Box::new(target),
    })
}

/// Plans one statement (a Parse): streaming where possible, else base + residual.
pub(super) fn plan_statement(text: &str) -> Result<Intercept, plan::PlanError> {
    if let Some(request) = crate::sql::explain::explain(text) {
        if crate::sql::explain::has_parameters(&request.statement) {
            return Err(plan::PlanError {
                code: crate::error::SqlState::FeatureNotSupported,
                message: "EXPLAIN of an ML statement with $n parameters is not supported".into(),
                hint: Some(
                    "Write the parameter values into the EXPLAINed statement as literals.".into(),
                ),
            });
        }
        return plan_explain(&request);
    }
    match plan::plan(text) {
        Ok(single) => Ok(Intercept::Query(Box::new(single))),
        Err(error) if error.code == crate::error::SqlState::FeatureNotSupported => {
            crate::sql::residual::plan(text).map(|p| Intercept::Residual(Box::new(p)))
        }
        Err(error) => Err(error),
    }
}
