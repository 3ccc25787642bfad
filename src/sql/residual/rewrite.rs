//! Rewriting a block's expressions: column references and ML calls become base columns.

use super::*;
use std::collections::HashSet;

/// An ML table function in FROM.
#[derive(Debug, Clone)]
pub(super) struct TableFunction {
    pub(super) alias: String,
    pub(super) call: usize,
    pub(super) sentiment: String,
    pub(super) confidence: String,
    /// `LEFT JOIN LATERAL f(…) s ON <condition>`: s's columns are NULL where it does not hold
    /// (f yields exactly one row per row, so nothing else changes).
    pub(super) condition: Option<Expr>,
}

impl TableFunction {
    pub(super) fn field(&self, column: &str) -> Option<&'static str> {
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
pub(super) enum Mode {
    Plain,
    /// A bare name may be an output column (PostgreSQL looks there first).
    OrderBy,
    /// A bare name may be an output column holding an ML result.
    GroupBy,
}

/// Replaces column references and ML calls of the block with base columns, collecting what the
/// base must carry.
#[derive(Default)]
pub(super) struct Rewriter {
    /// The residual's name for this block's base rows.
    pub(super) alias: String,
    /// The block is inside another query: references to outer names are correlated.
    pub(super) nested: bool,
    pub(super) ml_ctes: Vec<String>,
    pub(super) calls: Vec<(MlFunction, Vec<Expr>)>,
    /// Calls whose whole record is used.
    pub(super) records: Vec<usize>,
    pub(super) call_keys: HashMap<String, usize>,
    pub(super) carried: Vec<Expr>,
    pub(super) carried_keys: HashMap<String, usize>,
    /// Names qualifying the block's FROM items (None: an unnamed subquery).
    pub(super) names: Vec<Option<String>>,
    pub(super) functions: Vec<TableFunction>,
    /// Output column aliases, for ORDER BY / GROUP BY names.
    pub(super) aliases: Vec<String>,
    /// Unqualified names the block's select list, FROM, WHERE or HAVING use as columns: input
    /// columns, which a GROUP BY name means before an output alias (PostgreSQL's rule).
    pub(super) input_names: HashSet<String>,
    pub(super) mode: Option<Mode>,
    pub(super) depth: usize,
    /// Names of the FROM items of the subqueries the rewrite is inside (innermost last): a
    /// reference qualified by one of them is the subquery's, not the block's.
    pub(super) scopes: Vec<Vec<String>>,
    /// An ML table function's columns named unqualified inside subqueries, with their values: the
    /// residual gives its rows columns of these names, so that PostgreSQL resolves each name to
    /// the subquery's own column where its FROM has one, and to the function's otherwise.
    pub(super) exposed: Vec<(Ident, Expr)>,
}

impl Rewriter {
    /// A table function's column: its base column, NULL where a LEFT JOIN's condition fails.
    pub(super) fn function_field(
        &mut self,
        function: &TableFunction,
        field: &str,
    ) -> Result<Expr, PlanError> {
        let column = self.base_ref(&output_column(function.call, field));
        let Some(condition) = &function.condition else {
            return Ok(column);
        };
        // The condition itself sees the function's columns as they are.
        let mut condition = condition.clone();
        let scopes = std::mem::take(&mut self.scopes);
        let saved = (self.mode, self.depth, std::mem::take(&mut self.functions));
        self.functions = saved
            .2
            .iter()
            .map(|f| TableFunction {
                condition: None,
                ..f.clone()
            })
            .collect();
        let result = self.rewrite_node(&mut condition, Mode::Plain);
        (self.mode, self.depth, self.functions) = saved;
        self.scopes = scopes;
        result?;
        parse_expr(&format!("CASE WHEN {condition} THEN {column} END"))
    }

    pub(super) fn base_ref(&self, column: &str) -> Expr {
        Expr::CompoundIdentifier(vec![Ident::new(&self.alias), Ident::new(column)])
    }

    /// A `name.column` reference in `node` (outside its subqueries) whose name is none of the
    /// block's.
    pub(super) fn outer_reference<V: sqlparser::ast::Visit>(&self, node: &V) -> Option<String> {
        let mut found = None;
        let _ = visit_top_level(
            node,
            |expr| match expr {
                Expr::CompoundIdentifier(parts)
                    if parts.len() == 2 && !self.is_block_name(&parts[0].value) =>
                {
                    found = Some(parts[0].value.clone());
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            },
            |_| ControlFlow::Continue(()),
        );
        found
    }

    pub(super) fn is_block_name(&self, name: &str) -> bool {
        name.starts_with(BASE_ALIAS)
            || self.names.iter().flatten().any(|n| n == name)
            || self.functions.iter().any(|f| f.alias == name)
    }

    pub(super) fn add_call(
        &mut self,
        function: MlFunction,
        args: Vec<Expr>,
    ) -> Result<usize, PlanError> {
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

    pub(super) fn carry(&mut self, expr: &Expr) -> Expr {
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

    pub(super) fn function(&self, name: &ObjectName) -> Option<&TableFunction> {
        let [part] = name.0.as_slice() else {
            return None;
        };
        let ident = part.as_ident()?;
        self.functions.iter().find(|f| f.alias == ident.value)
    }

    /// Whether `expr` refers to a column of an ML table function, or to the block's base rows
    /// (parts already rewritten: a subquery over them stays in the residual).
    pub(super) fn mentions_function(&self, expr: &Expr) -> bool {
        struct Finder<'a>(&'a [TableFunction]);
        impl sqlparser::ast::Visitor for Finder<'_> {
            type Break = ();
            fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
                let hit = match expr {
                    Expr::CompoundIdentifier(parts) => {
                        parts.len() == 2
                            && (self.0.iter().any(|f| f.alias == parts[0].value)
                                || parts[0].value.starts_with(BASE_ALIAS))
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

    pub(super) fn rewrite(&mut self, expr: &mut Expr, mode: Mode) -> Result<(), PlanError> {
        self.rewrite_node(expr, mode)
    }

    pub(super) fn rewrite_node<V: VisitMut>(
        &mut self,
        node: &mut V,
        mode: Mode,
    ) -> Result<(), PlanError> {
        self.mode = Some(mode);
        self.depth = 0;
        self.scopes.clear();
        match node.visit(self) {
            ControlFlow::Break(error) => Err(error),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    /// The replacement of an ML call (`field`: a selected field of detect_sentiment's record).
    pub(super) fn ml_call(
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
            (
                MlFunction::InvokeEndpoint
                | MlFunction::InvokeModel
                | MlFunction::InvokeModelGetEmbeddings,
                None,
            ) => Ok(self.base_ref(&output_column(call, ""))),
            (
                MlFunction::InvokeEndpoint
                | MlFunction::InvokeModel
                | MlFunction::InvokeModelGetEmbeddings,
                Some(_),
            ) => Err(PlanError {
                code: SqlState::WrongObjectType,
                message: format!(
                    "{} returns {}, which has no fields",
                    ml.name(),
                    ml.result_type()
                ),
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
            // The whole record (see ResidualPlan::residual_sql).
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

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<PlanError> {
        self.depth += 1;
        let mut names = Vec::new();
        from_names(&query.body, &mut names);
        if let Some(with) = &query.with {
            names.extend(
                with.cte_tables
                    .iter()
                    .map(|cte| cte.alias.name.value.clone()),
            );
        }
        self.scopes.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<PlanError> {
        self.depth -= 1;
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<PlanError> {
        let replacement = if self.depth > 0 {
            // Inside a subquery of an ML expression: only references qualified by the block's
            // names, or an ML table function's, are the block's (correlated) columns — unless
            // a subquery on the way names a FROM item so too.
            match expr {
                Expr::CompoundIdentifier(parts)
                    if parts.len() == 2
                        && !self.scopes.iter().flatten().any(|n| *n == parts[0].value) =>
                {
                    if self.names.iter().flatten().any(|n| *n == parts[0].value) {
                        Some(Ok(self.carry(expr)))
                    } else if self.functions.iter().any(|f| f.alias == parts[0].value) {
                        self.replace(expr)
                    } else {
                        None
                    }
                }
                Expr::Identifier(ident)
                    if !self.exposed.iter().any(|(n, _)| n.value == ident.value) =>
                {
                    // Every function's column of the name: two are ambiguous, as natively.
                    let fields: Vec<_> = self
                        .functions
                        .iter()
                        .filter_map(|f| f.field(&ident.value).map(|field| (f.clone(), field)))
                        .collect();
                    fields.into_iter().find_map(|(function, field)| {
                        match self.function_field(&function, field) {
                            Ok(value) => {
                                self.exposed.push((ident.clone(), value));
                                None
                            }
                            Err(error) => Some(Err(error)),
                        }
                    })
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
    pub(super) fn replace(&mut self, expr: &Expr) -> Option<Result<Expr, PlanError>> {
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
                if let Some((function, field)) = self
                    .functions
                    .iter()
                    .find_map(|f| f.field(&ident.value).map(|field| (f.clone(), field)))
                {
                    return Some(self.function_field(&function, field));
                }
                if mode == Mode::GroupBy
                    && self.aliases.contains(&ident.value)
                    && !self.input_names.contains(&ident.value)
                {
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
                    if let Some(function) = self
                        .functions
                        .iter()
                        .find(|f| f.alias == table.value)
                        .cloned()
                    {
                        return Some(match function.field(&column.value) {
                            Some(field) => self.function_field(&function, field),
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

/// Names qualifying the FROM items of a query body's SELECT blocks (not of their subqueries).
fn from_names(body: &SetExpr, out: &mut Vec<String>) {
    fn factor(relation: &TableFactor, out: &mut Vec<String>) {
        if let TableFactor::NestedJoin {
            table_with_joins, ..
        } = relation
        {
            factor(&table_with_joins.relation, out);
            for join in &table_with_joins.joins {
                factor(&join.relation, out);
            }
        }
        out.extend(relation_alias(relation));
    }
    match body {
        SetExpr::Select(select) => {
            for item in &select.from {
                factor(&item.relation, out);
                for join in &item.joins {
                    factor(&join.relation, out);
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            from_names(left, out);
            from_names(right, out);
        }
        SetExpr::Query(query) => from_names(&query.body, out),
        _ => {}
    }
}
