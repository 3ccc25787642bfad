//! Finding the ML-bearing SELECT blocks of a statement and splitting each into its base relation
//! and its residual form.

use super::super::plan::input_column_names;
use super::outer::{probe_outer_joins_in, push_down_outer_join_filters};
use super::scan::{
    and_all, direct_ml, has_ml_condition_only, needs_residual, split_conjuncts, true_expr,
};
use super::*;

/// Finds the ML-bearing SELECT blocks of a statement, innermost first, rewriting each into its
/// residual form and collecting its base relation.
#[derive(Default)]
pub(super) struct Planner {
    pub(super) blocks: Vec<BlockPlan>,
    /// Plain CTEs of the enclosing queries, outermost first: base statements may use them.
    pub(super) ctes: Vec<sqlparser::ast::Cte>,
    pub(super) recursive: bool,
    /// Names of CTEs that hold ML blocks: their rows exist only in the residual.
    pub(super) ml_ctes: Vec<String>,
    /// CTEs made for outer-join ML conditions so far (they are numbered).
    pub(super) probes: usize,
}

impl Planner {
    pub(super) fn query(&mut self, query: &mut Query, nested: bool) -> Result<(), PlanError> {
        if !self.needs_residual(&*query) {
            return Ok(());
        }
        if has_ml(&query.limit_clause) || has_ml(&query.fetch) {
            return Err(unsupported(
                "ML calls in LIMIT, OFFSET or FETCH are not supported",
                "Compute the limit in a separate statement and pass it as a parameter.",
            ));
        }
        let scope = self.ctes.len();
        // Outer joins with ML conditions probe CTEs of pgenrich's, which run as ML blocks.
        let probes = probe_outer_joins_in(query.body.as_mut(), &mut self.probes);
        if !probes.is_empty() {
            match &mut query.with {
                Some(with) => with.cte_tables.extend(probes),
                None => {
                    query.with = Some(sqlparser::ast::With {
                        with_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
                        recursive: false,
                        cte_tables: probes,
                    })
                }
            }
        }
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                refuse_data_modifying(cte)?;
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
                if has_ml(&query.order_by) {
                    return Err(unsupported(
                        "ML calls in the ORDER BY of a UNION, INTERSECT or EXCEPT are not supported",
                        "Select the ML result in the branches and sort by its output column.",
                    ));
                }
                self.set_expr(body, nested)
            }
        };
        self.ctes.truncate(scope);
        result
    }

    pub(super) fn set_expr(&mut self, body: &mut SetExpr, nested: bool) -> Result<(), PlanError> {
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

    pub(super) fn select(
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
        push_down_outer_join_filters(select);
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

    pub(super) fn needs_residual<V: sqlparser::ast::Visit + std::fmt::Display>(
        &self,
        node: &V,
    ) -> bool {
        needs_residual(node, &self.ml_ctes)
    }

    /// Rewrites one block whose own clauses call ML functions into its residual form.
    pub(super) fn block(
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
            input_names: input_column_names(select),
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
                if ml_table_function(&join.relation).is_none() {
                    return true;
                }
                // `LEFT JOIN LATERAL f(…) s ON c` too, with s's columns NULL where c fails.
                let condition = match &join.join_operator {
                    JoinOperator::CrossJoin(JoinConstraint::None) => None,
                    JoinOperator::Left(JoinConstraint::On(on))
                    | JoinOperator::LeftOuter(JoinConstraint::On(on)) => Some(on.clone()),
                    _ => return true,
                };
                split.push((
                    TableWithJoins {
                        relation: join.relation.clone(),
                        joins: Vec::new(),
                    },
                    condition,
                ));
                false
            });
            from.push((item, None));
            from.extend(split);
        }
        for (mut item, condition) in from {
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
                    if condition.as_ref().is_some_and(has_ml) {
                        return Err(unsupported(
                            "an ML call in the condition of a LEFT JOIN LATERAL is not supported",
                            "Filter on the ML result in WHERE, or move the call into the select list.",
                        ));
                    }
                    rewriter.functions.push(TableFunction {
                        alias,
                        call,
                        sentiment: column(0, "sentiment"),
                        confidence: column(1, "confidence"),
                        condition: condition.clone(),
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
                                "ML calls in the condition of an outer join are supported only when the SELECT calls no other ML function, the condition holds no subquery and, for a FULL JOIN, it has a plain equality",
                                "Join in a subquery and call the other ML functions over it: SELECT …, aws_comprehend.detect_sentiment(s.body, 'en') FROM (SELECT … FROM a LEFT JOIN b ON …) s.",
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
                        expr: rewriter.function_field(&function, field)?,
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
        // DISTINCT ON expressions follow ORDER BY's rules: a bare name may be an output column.
        if let Some(Distinct::On(exprs)) = &mut select.distinct {
            for expr in exprs {
                rewriter.rewrite(expr, Mode::OrderBy)?;
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

        // Phase 2: the block over its enriched base rows (and the function's columns named
        // unqualified in subqueries, as a lateral row of their own).
        select.from = marker_from(index);
        let grouped = select.having.is_some()
            || !matches!(&select.group_by, GroupByExpr::Expressions(exprs, _) if exprs.is_empty());
        if grouped && !rewriter.exposed.is_empty() {
            // The lateral row's columns are not the grouped ones.
            return Err(unsupported(
                "a column of an ML table function named unqualified inside a subquery of a grouped SELECT is not supported",
                "Qualify it with the function's alias, e.g. s.sentiment.",
            ));
        }
        if !rewriter.exposed.is_empty() {
            let columns: Vec<String> = rewriter
                .exposed
                .iter()
                .map(|(name, value)| format!("{value} AS {name}"))
                .collect();
            let sql = format!(
                "SELECT 1 FROM x CROSS JOIN LATERAL (SELECT {}) AS {}_columns",
                columns.join(", "),
                rewriter.alias
            );
            let parsed = Parser::parse_sql(&PostgreSqlDialect {}, &sql).map_err(|e| PlanError {
                code: SqlState::InternalError,
                message: format!("pgenrich could not build its residual statement: {e}"),
                hint: None,
            })?;
            if let Some(Statement::Query(query)) = parsed.into_iter().next() {
                if let (SetExpr::Select(built), Some(base)) = (*query.body, select.from.first_mut())
                {
                    base.joins
                        .extend(built.from.into_iter().flat_map(|f| f.joins));
                }
            }
        }
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

/// Plans ML blocks inside a block's subqueries (expressions and derived tables).
pub(super) struct Inner<'a> {
    pub(super) planner: &'a mut Planner,
    pub(super) depth: usize,
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

/// Stands for star `k`'s columns in the residual's select list until they are known.
pub(super) fn star_placeholder(b: usize, k: usize) -> SelectItem {
    let marker = star_marker(b, k);
    SelectItem::UnnamedExpr(Expr::Identifier(Ident::with_quote(
        '"',
        marker.trim_matches('"'),
    )))
}

/// `FROM "pgenrich:base<b>"`, replaced by block `b`'s base rows in
/// [`ResidualPlan::residual_sql`].
pub(super) fn marker_from(b: usize) -> Vec<TableWithJoins> {
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
pub(super) fn marker_query() -> Query {
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

pub(super) fn correlated(name: &str) -> PlanError {
    unsupported(
        format!("an ML call in a subquery refers to \"{name}\" of an outer query (a correlated subquery)"),
        "Join the outer table inside the subquery, or move the ML call to the outer query.",
    )
}
