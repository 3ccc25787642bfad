//! What a part of a statement holds — ML calls, rewritten blocks, references to ML CTEs — and
//! splitting conditions into their ML-free and ML-bearing conjuncts.

use super::*;

/// Whether `node` holds ML calls, a rewritten block, or a reference to a CTE holding one: such
/// parts can only be evaluated in the residual.
pub(super) fn needs_residual<V: sqlparser::ast::Visit + std::fmt::Display>(
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

/// Whether ML calls sit in `node` itself (not inside its subqueries), or ML table functions in
/// its own FROM.
pub(super) fn direct_ml<V: sqlparser::ast::Visit>(node: &V) -> bool {
    let breaks = |hit: bool| {
        if hit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    visit_top_level(
        node,
        |expr| breaks(matches!(expr, Expr::Function(f) if ml_name(&f.name).is_some())),
        |factor| breaks(ml_table_function(factor).is_some()),
    )
    .is_break()
}

/// Whether a FROM item needs the residual only because of ML calls in its inner-join conditions
/// (which become filters), not because of its relations.
pub(super) fn has_ml_condition_only(item: &TableWithJoins) -> bool {
    let relations_plain = !has_ml(&item.relation)
        && !item.relation.to_string().contains(BASE_MARKER)
        && item
            .joins
            .iter()
            .all(|j| !has_ml(&j.relation) && !j.relation.to_string().contains(BASE_MARKER));
    relations_plain && item.joins.iter().any(|j| has_ml(&j.join_operator))
}

pub(super) fn true_expr() -> Expr {
    Expr::Value(sqlparser::ast::Value::Boolean(true).into())
}

/// Splits `expr` at top-level ANDs into (ML-free, ML-bearing) conjuncts.
pub(super) fn split_conjuncts(expr: Expr, ml_ctes: &[String]) -> (Vec<Expr>, Vec<Expr>) {
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

pub(super) fn and_all(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}
