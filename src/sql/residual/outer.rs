//! Outer joins whose ON condition calls ML functions.
//!
//! An inner join's ML condition is a filter and moves to the residual's WHERE, but an outer
//! join's decides which rows are NULL-extended, so it must stay in the join. Two rewrites, tried
//! in this order, turn it into forms the planner handles:
//!
//! 1. [`push_down_outer_join_filters`]: a LEFT JOIN condition on the joined table alone filters
//!    that table first (its rows are read once).
//! 2. [`probe_outer_joins`]: any other LEFT, RIGHT or FULL join condition `P AND M` (M the ML
//!    conjuncts) becomes `P AND ROW(<columns M reads>)::text IN (SELECT key FROM m)`, where the
//!    CTE `m` is `SELECT ROW(<columns M reads>)::text AS key FROM <the same join as an inner
//!    join> ON P WHERE M` — an ordinary ML block whose inner join scores only the pairs P admits.
//!    M depends on nothing but those columns, so a pair satisfies M exactly when its key is in
//!    `m`; the join itself then runs natively in the residual, which reads both sides again in
//!    the same snapshot. (The key is text, so NULLs compare as values and the membership test is
//!    one hash probe.)

use super::scan::{and_all, direct_ml, split_conjuncts, true_expr};
use super::*;

/// Names the CTEs of [`probe_outer_joins`].
pub(super) const PROBE_CTE: &str = "pgenrich:oj";
const PROBE_KEY: &str = "pgenrich:key";

/// Applies [`probe_outer_joins`] to every SELECT of `body` (the branches of set operations too)
/// and returns the CTEs they need, numbered from `*next`.
pub(super) fn probe_outer_joins_in(body: &mut SetExpr, next: &mut usize) -> Vec<Cte> {
    match body {
        SetExpr::Select(select) => {
            push_down_outer_join_filters(select);
            probe_outer_joins(select, next)
        }
        SetExpr::SetOperation { left, right, .. } => {
            let mut ctes = probe_outer_joins_in(left, next);
            ctes.extend(probe_outer_joins_in(right, next));
            ctes
        }
        _ => Vec::new(),
    }
}

/// Rewrites the ML conditions of `select`'s outer joins into key probes of CTEs (returned), when
/// the SELECT calls ML functions nowhere else (those calls would need the probe's results in
/// their own base statement) and the ML conditions hold no subquery. Anything left is refused by
/// the planner.
pub(super) fn probe_outer_joins(select: &mut Select, next: &mut usize) -> Vec<Cte> {
    let mut targets = Vec::new();
    for (f, item) in select.from.iter().enumerate() {
        for (j, join) in item.joins.iter().enumerate() {
            if ml_table_function(&join.relation).is_none()
                && outer_condition(join).is_some_and(has_ml)
            {
                targets.push((f, j));
            }
        }
    }
    if targets.is_empty() {
        return Vec::new();
    }
    // The SELECT without these conditions must call no ML function.
    let mut rest = select.clone();
    for &(f, j) in &targets {
        if let Some(on) = outer_condition_mut(&mut rest.from[f].joins[j]) {
            *on = true_expr();
        }
    }
    if direct_ml(&rest) {
        return Vec::new();
    }
    let mut ctes = Vec::new();
    for (f, j) in targets {
        let item = &select.from[f];
        let Some(on) = outer_condition(&item.joins[j]) else {
            continue;
        };
        let (plain, ml) = split_conjuncts(on.clone(), &[]);
        let full = matches!(item.joins[j].join_operator, JoinOperator::FullOuter(_));
        let equality = plain.iter().any(|e| {
            matches!(
                e,
                Expr::BinaryOp {
                    op: BinaryOperator::Eq,
                    ..
                }
            )
        });
        if full && !equality {
            // PostgreSQL runs a FULL JOIN only on a hashable or mergeable condition; natively
            // that can be the ML equality itself, here it must be a plain one.
            continue;
        }
        let Some(ml) = and_all(ml) else {
            continue;
        };
        let Some(columns) = columns_read(&ml) else {
            continue;
        };
        let columns: Vec<String> = columns.iter().map(ToString::to_string).collect();
        let key = format!("ROW({})::text", columns.join(", "));
        let name = format!("{PROBE_CTE}{next}");
        let mut pairs = TableWithJoins {
            relation: item.relation.clone(),
            joins: item.joins[..=j].to_vec(),
        };
        pairs.joins[j].join_operator = JoinOperator::Inner(JoinConstraint::On(
            and_all(plain.clone()).unwrap_or_else(true_expr),
        ));
        let text = format!(
            "WITH \"{name}\" AS (SELECT {key} AS \"{PROBE_KEY}\" FROM {pairs} WHERE {ml}) \
             SELECT 1 WHERE {key} IN (SELECT \"{PROBE_KEY}\" FROM \"{name}\")"
        );
        let Some((cte, probe)) = parse_probe(&text) else {
            continue;
        };
        *next += 1;
        let mut condition = plain;
        condition.push(probe);
        if let Some(on) = outer_condition_mut(&mut select.from[f].joins[j]) {
            *on = and_all(condition).unwrap_or_else(true_expr);
        }
        ctes.push(cte);
    }
    ctes
}

/// The ON condition of a LEFT, RIGHT or FULL join.
fn outer_condition(join: &sqlparser::ast::Join) -> Option<&Expr> {
    match &join.join_operator {
        JoinOperator::Left(JoinConstraint::On(on))
        | JoinOperator::LeftOuter(JoinConstraint::On(on))
        | JoinOperator::Right(JoinConstraint::On(on))
        | JoinOperator::RightOuter(JoinConstraint::On(on))
        | JoinOperator::FullOuter(JoinConstraint::On(on)) => Some(on),
        _ => None,
    }
}

fn outer_condition_mut(join: &mut sqlparser::ast::Join) -> Option<&mut Expr> {
    match &mut join.join_operator {
        JoinOperator::Left(JoinConstraint::On(on))
        | JoinOperator::LeftOuter(JoinConstraint::On(on))
        | JoinOperator::Right(JoinConstraint::On(on))
        | JoinOperator::RightOuter(JoinConstraint::On(on))
        | JoinOperator::FullOuter(JoinConstraint::On(on)) => Some(on),
        _ => None,
    }
}

/// The CTE and the probe condition of a `WITH m AS (…) SELECT 1 WHERE <probe>` text.
fn parse_probe(text: &str) -> Option<(Cte, Expr)> {
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, text).ok()?;
    let Some(Statement::Query(query)) = parsed.pop() else {
        return None;
    };
    let Query { with, body, .. } = *query;
    let cte = with?.cte_tables.pop()?;
    let SetExpr::Select(select) = *body else {
        return None;
    };
    Some((cte, select.selection?))
}

/// The column references `expr` reads (identifiers, qualified or not, but not the field names of
/// `(…).field`), each once; `None` if it holds a subquery (whose columns may be its own).
fn columns_read(expr: &Expr) -> Option<Vec<Expr>> {
    struct Collector {
        columns: Vec<Expr>,
        /// Field names of `(…).field` selections: identifiers that are not columns.
        fields: Vec<*const Expr>,
    }
    impl sqlparser::ast::Visitor for Collector {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            ControlFlow::Break(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::CompoundFieldAccess { access_chain, .. } => {
                    for access in access_chain {
                        if let sqlparser::ast::AccessExpr::Dot(field) = access {
                            self.fields.push(field as *const Expr);
                        }
                    }
                }
                Expr::Identifier(_) if self.fields.contains(&(expr as *const Expr)) => {}
                Expr::Identifier(_) | Expr::CompoundIdentifier(_)
                    if !self.columns.contains(expr) =>
                {
                    self.columns.push(expr.clone());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut collector = Collector {
        columns: Vec::new(),
        fields: Vec::new(),
    };
    if sqlparser::ast::Visit::visit(expr, &mut collector).is_break() {
        return None;
    }
    Some(collector.columns)
}

/// `A LEFT JOIN B b ON <plain> AND <ML condition on b alone>` keeps every row of A and only the
/// rows of B that pass the ML condition: it is `A LEFT JOIN (SELECT * FROM B b WHERE <ML
/// condition>) b ON <plain>`, whose subquery is an ordinary ML block. Done only when B is a table
/// and every column the ML conditions mention is qualified by b; other outer joins with ML
/// conditions go through [`probe_outer_joins`].
pub(super) fn push_down_outer_join_filters(select: &mut Select) {
    for item in &mut select.from {
        for join in &mut item.joins {
            let (JoinOperator::Left(JoinConstraint::On(on))
            | JoinOperator::LeftOuter(JoinConstraint::On(on))) = &mut join.join_operator
            else {
                continue;
            };
            if !has_ml(&*on) {
                continue;
            }
            let TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } = &join.relation
            else {
                continue;
            };
            let Some(b) = relation_alias(&join.relation) else {
                continue;
            };
            let (plain, ml) = split_conjuncts(on.clone(), &[]);
            if !ml.iter().all(|e| only_qualified_by(e, &b)) {
                continue;
            }
            let alias_sql = alias
                .as_ref()
                .map_or_else(String::new, |a| format!(" AS {a}"));
            let filter = and_all(ml).map(|e| e.to_string()).unwrap_or_default();
            let text = format!(
                "SELECT 1 FROM (SELECT * FROM {name}{alias_sql} WHERE {filter}) AS {}",
                Ident::with_quote('"', &b)
            );
            let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, &text) else {
                continue;
            };
            let Some(Statement::Query(query)) = parsed.pop() else {
                continue;
            };
            let SetExpr::Select(wrapper) = *query.body else {
                continue;
            };
            let Some(relation) = wrapper.from.into_iter().next().map(|f| f.relation) else {
                continue;
            };
            join.relation = relation;
            *on = and_all(plain).unwrap_or_else(true_expr);
        }
    }
}

/// Whether every column reference in `expr` is `name.column` and it holds no subquery (which
/// could be correlated to either side).
fn only_qualified_by(expr: &Expr, name: &str) -> bool {
    columns_read(expr).is_some_and(|columns| {
        columns
            .iter()
            .all(|c| matches!(c, Expr::CompoundIdentifier(parts) if parts[0].value == name))
    })
}
