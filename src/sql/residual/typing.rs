//! The typing statement: the original statement with ML calls as typed NULLs, described (never
//! run) so that `$n` parameters get the types PostgreSQL infers for the native functions.

use super::*;

/// Whether the statement has `$n` parameters.
pub(super) fn has_parameters(query: &Query) -> bool {
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
pub(super) fn typing_statement(mut query: Query) -> Result<String, PlanError> {
    struct Typer;
    impl Typer {
        fn args(function: MlFunction, args: &[Expr]) -> String {
            let types = function.parameter_types();
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
            // `(f(…)).*` arrives as the marked name: its record types the same.
            let name = name.strip_suffix(ALL_FIELDS_SUFFIX).unwrap_or(&name);
            let function = function_of(&format!("{schema}.{name}")).ok()?;
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            // A call the planner refuses still types (its refusal comes from the planner): one
            // whose arguments hold ML calls, which the planner evaluates first, is one of them.
            let args = call_arguments(function, list.args.clone()).unwrap_or_else(|_| {
                list.args
                    .iter()
                    .filter_map(|arg| match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr.clone()),
                        _ => None,
                    })
                    .collect()
            });
            Some((function, args))
        }
    }
    impl VisitorMut for Typer {
        type Break = PlanError;
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<PlanError> {
            let (call, result) = match &*expr {
                Expr::Function(f) => match Typer::call(f) {
                    Some((MlFunction::DetectSentiment, args)) => (
                        (MlFunction::DetectSentiment, args),
                        "ROW(NULL::varchar, NULL::real)".to_owned(),
                    ),
                    Some((function, args)) => (
                        (function, args),
                        format!("NULL::{}", function.result_type()),
                    ),
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
                        "NULL::real".to_owned()
                    } else {
                        "NULL::varchar".to_owned()
                    };
                    (call, result)
                }
                _ => return ControlFlow::Continue(()),
            };
            match parse_expr(&format!(
                "(CASE WHEN {} THEN {result} END)",
                Typer::args(call.0, &call.1)
            )) {
                Ok(typed) => {
                    *expr = typed;
                    ControlFlow::Continue(())
                }
                Err(error) => ControlFlow::Break(error),
            }
        }

        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<PlanError> {
            let Some((name, args, alias)) = ml_table_function(factor) else {
                return ControlFlow::Continue(());
            };
            let Ok(function) = function_of(&name) else {
                return ControlFlow::Continue(());
            };
            let Ok(args) = call_arguments(function, args) else {
                return ControlFlow::Continue(());
            };
            // The alias without its `AS`, which the text below writes itself.
            let alias = alias.map_or_else(
                || function_short_name(function).to_owned(),
                |a| {
                    sqlparser::ast::TableAlias {
                        explicit: false,
                        ..a
                    }
                    .to_string()
                },
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
    if let ControlFlow::Break(error) = query.visit(&mut Typer) {
        return Err(error);
    }
    Ok(query.to_string())
}
