//! The streaming planner: ML calls in the outermost select list and as table functions in FROM
//! become placeholders and argument columns of the base statement; every other position is
//! refused with what to write instead.

use super::*;

/// Refuses ML calls outside the places streaming enrichment handles.
pub(super) fn plan_query(query: &mut Query) -> Result<(), PlanError> {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            refuse_data_modifying(cte)?;
        }
        if has_ml(with) {
            return Err(unsupported(
                "ML calls inside WITH queries are not supported yet",
                LATER_HINT,
            ));
        }
    }
    // SELECT INTO writes: the residual planner runs it as CREATE TABLE AS.
    if matches!(query.body.as_ref(), SetExpr::Select(select) if select.into.is_some()) {
        return Err(unsupported(
            "SELECT INTO is planned as CREATE TABLE AS",
            LATER_HINT,
        ));
    }
    if !matches!(*query.body, SetExpr::Select(_)) {
        return Err(unsupported(
            "ML calls in UNION, INTERSECT, EXCEPT or VALUES are not supported yet",
            LATER_HINT,
        ));
    }
    if has_ml(&query.order_by) || has_ml(&query.limit_clause) || has_ml(&query.fetch) {
        return Err(unsupported(
            "ML calls in ORDER BY, LIMIT or FETCH are not supported yet",
            LATER_HINT,
        ));
    }
    Ok(())
}

#[derive(Default)]
pub(super) struct Planner {
    args: Vec<Expr>,
    calls: Vec<Call>,
    placeholders: Vec<Placeholder>,
}

/// An ML table function in FROM, by the name its columns are qualified with.
struct TableFunction {
    alias: String,
    call: usize,
    sentiment_name: String,
    confidence_name: String,
}

impl Planner {
    pub(super) fn finish(mut self, query: &mut Query) -> Result<StreamingPlan, PlanError> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(unsupported("unexpected statement shape", LATER_HINT));
        };
        let select: &mut Select = select;
        let input_names = input_column_names(select);
        for clause in [
            has_ml(&select.selection),
            has_ml(&select.having),
            has_ml(&select.qualify),
            has_ml(&select.named_window),
            has_ml(&select.group_by),
            has_ml(&select.sort_by),
        ] {
            if clause {
                return Err(unsupported(
                    "ML calls in WHERE, GROUP BY, HAVING or window clauses are not supported yet",
                    LATER_HINT,
                ));
            }
        }
        // FROM: take ML table functions out, remember their place for `*`.
        let mut functions = Vec::new();
        let mut star_parts: Vec<Option<String>> = Vec::new(); // Some(alias.*) or None for a function
        let mut star_expandable = true;
        let mut from = Vec::new();
        for item in std::mem::take(&mut select.from) {
            if item.joins.is_empty() {
                if let Some((name, args, alias)) = ml_table_function(&item.relation) {
                    let function = function_of(&name)?;
                    if function != MlFunction::DetectSentiment {
                        return Err(unsupported(
                            format!("{} is supported in the SELECT list only", function.name()),
                            &format!(
                                "Write SELECT {}(...) instead of selecting FROM it.",
                                function.name()
                            ),
                        ));
                    }
                    let call = self.add_call(function, args)?;
                    let default = function_short_name(function).to_owned();
                    let (alias_name, columns) = match alias {
                        Some(alias) => (
                            alias.name.value.clone(),
                            alias
                                .columns
                                .iter()
                                .map(|c| c.name.value.clone())
                                .collect::<Vec<_>>(),
                        ),
                        None => (default, Vec::new()),
                    };
                    functions.push(TableFunction {
                        alias: alias_name,
                        call,
                        sentiment_name: columns
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "sentiment".into()),
                        confidence_name: columns
                            .get(1)
                            .cloned()
                            .unwrap_or_else(|| "confidence".into()),
                    });
                    star_parts.push(None);
                    continue;
                }
            }
            if has_ml(&item) {
                return Err(unsupported(
                    "ML calls in JOIN clauses or subqueries in FROM are not supported yet",
                    LATER_HINT,
                ));
            }
            match relation_alias(&item.relation) {
                Some(alias) if item.joins.is_empty() => star_parts.push(Some(alias)),
                _ => star_expandable = false,
            }
            from.push(item);
        }
        select.from = from;
        // In the select list only `alias.column` stands for a function's column here; inside
        // any other expression (a subquery's included) the residual mode replaces it.
        let in_expressions = |projection: &[SelectItem]| {
            projection.iter().any(|item| match item {
                SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                    !matches!(expr, Expr::CompoundIdentifier(parts) if parts.len() == 2)
                        && references_functions_in(expr, &functions)
                }
                _ => false,
            })
        };
        if !functions.is_empty()
            && (in_expressions(&select.projection)
                || references_functions(&*select, &functions)
                || references_functions_in(&query.order_by, &functions))
        {
            return Err(unsupported(
                "columns of ML table functions can be selected only as they are",
                LATER_HINT,
            ));
        }

        // The select list.
        let mut items = Vec::new();
        for item in std::mem::take(&mut select.projection) {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    self.select_expr(expr, None, &functions, &mut items)?
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.select_expr(expr, Some(alias), &functions, &mut items)?
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    options,
                ) if functions
                    .iter()
                    .any(|f| single_name(&name).as_deref() == Some(f.alias.as_str())) =>
                {
                    let _ = options;
                    let alias = single_name(&name).unwrap_or_default();
                    let Some(function) = functions.iter().find(|f| f.alias == alias) else {
                        continue;
                    };
                    self.push_all(function, &mut items);
                }
                SelectItem::Wildcard(options) if !functions.is_empty() => {
                    if !star_expandable || options != WildcardAdditionalOptions::default() {
                        return Err(unsupported(
                            "SELECT * over an ML table function and a JOIN or an unnamed subquery is not supported",
                            "List the columns, e.g. SELECT r.*, s.* FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s.",
                        ));
                    }
                    let mut next_function = functions.iter();
                    for part in &star_parts {
                        match part {
                            Some(alias) => items.push(SelectItem::QualifiedWildcard(
                                SelectItemQualifiedWildcardKind::ObjectName(ObjectName::from(
                                    vec![Ident::with_quote('"', alias)],
                                )),
                                WildcardAdditionalOptions::default(),
                            )),
                            None => {
                                if let Some(function) = next_function.next() {
                                    self.push_all(function, &mut items);
                                }
                            }
                        }
                    }
                }
                other => {
                    if has_ml(&other) {
                        return Err(unsupported(
                            "ML calls inside other expressions are not supported yet",
                            LATER_HINT,
                        ));
                    }
                    items.push(other);
                }
            }
        }
        if self.calls.is_empty() {
            return Err(unsupported(
                "no ML call found where pgenrich can evaluate it",
                LATER_HINT,
            ));
        }
        if select.distinct.is_some() {
            return Err(unsupported(
                "SELECT DISTINCT with ML calls is not supported yet",
                LATER_HINT,
            ));
        }
        let arg_columns = self.args.len();
        let mut projection: Vec<SelectItem> = self
            .args
            .drain(..)
            .enumerate()
            .map(|(i, expr)| SelectItem::ExprWithAlias {
                expr,
                alias: Ident::with_quote('"', format!("{PLACEHOLDER_PREFIX}arg{i}")),
            })
            .collect();
        projection.extend(items);
        select.projection = projection;
        self.shift_ordinals(
            select,
            query_order_by(&mut query.order_by),
            arg_columns,
            &input_names,
        )?;
        Ok(StreamingPlan {
            base_sql: query.to_string(),
            arg_columns,
            calls: self.calls,
            placeholders: self.placeholders,
        })
    }

    fn add_call(
        &mut self,
        function: MlFunction,
        args: Vec<FunctionArg>,
    ) -> Result<usize, PlanError> {
        let exprs = call_arguments(function, args)?
            .into_iter()
            .enumerate()
            .map(|(i, arg)| typed_parameter(function, i, arg))
            .collect::<Vec<_>>();
        let call = Call {
            function,
            first_arg: self.args.len(),
            arg_count: exprs.len(),
        };
        self.args.extend(exprs);
        self.calls.push(call);
        Ok(self.calls.len() - 1)
    }

    fn placeholder_item(&mut self, call: usize, field: Field, name: String) -> SelectItem {
        self.placeholders.push(Placeholder { call, field, name });
        SelectItem::ExprWithAlias {
            expr: Expr::Value(Value::Null.into()),
            alias: Ident::with_quote(
                '"',
                format!("{PLACEHOLDER_PREFIX}{}", self.placeholders.len() - 1),
            ),
        }
    }

    fn push_all(&mut self, function: &TableFunction, items: &mut Vec<SelectItem>) {
        items.push(self.placeholder_item(
            function.call,
            Field::Sentiment,
            function.sentiment_name.clone(),
        ));
        items.push(self.placeholder_item(
            function.call,
            Field::Confidence,
            function.confidence_name.clone(),
        ));
    }

    fn select_expr(
        &mut self,
        expr: Expr,
        alias: Option<Ident>,
        functions: &[TableFunction],
        items: &mut Vec<SelectItem>,
    ) -> Result<(), PlanError> {
        let alias_name = alias.as_ref().map(|a| a.value.clone());
        // `s.sentiment` of a table function.
        if let Expr::CompoundIdentifier(parts) = &expr {
            if let [table, column] = parts.as_slice() {
                if let Some(function) = functions.iter().find(|f| f.alias == table.value) {
                    let field = if column.value == function.sentiment_name {
                        Field::Sentiment
                    } else if column.value == function.confidence_name {
                        Field::Confidence
                    } else {
                        return Err(PlanError {
                            code: SqlState::UndefinedColumn,
                            message: format!(
                                "column {}.{} does not exist",
                                table.value, column.value
                            ),
                            hint: None,
                        });
                    };
                    let name = alias_name.unwrap_or_else(|| column.value.clone());
                    items.push(self.placeholder_item(function.call, field, name));
                    return Ok(());
                }
            }
        }
        let (call_expr, field_name) = match expr {
            Expr::Function(_) => (expr, None),
            Expr::CompoundFieldAccess { root, access_chain } if access_chain.len() == 1 => {
                match (*root, &access_chain[0]) {
                    (
                        Expr::Nested(inner),
                        sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field)),
                    ) if matches!(*inner, Expr::Function(_)) => {
                        (*inner, Some(field.value.to_ascii_lowercase()))
                    }
                    (root, _) => {
                        let rebuilt = Expr::CompoundFieldAccess {
                            root: Box::new(root),
                            access_chain,
                        };
                        return self.plain(rebuilt, alias, items);
                    }
                }
            }
            other => return self.plain(other, alias, items),
        };
        let Expr::Function(function) = call_expr else {
            return self.plain(call_expr, alias, items);
        };
        let Some((schema, name)) = ml_name(&function.name) else {
            let expr = Expr::Function(function);
            return match field_name {
                Some(_) => Err(unsupported(
                    "field selection from a non-ML function next to ML calls",
                    LATER_HINT,
                )),
                None => self.plain(expr, alias, items),
            };
        };
        let all_fields = name.ends_with(ALL_FIELDS_SUFFIX);
        let base_name = name.trim_end_matches(ALL_FIELDS_SUFFIX).to_owned();
        let ml = function_of(&format!("{schema}.{base_name}"))?;
        let FunctionArguments::List(list) = function.args else {
            return Err(unsupported(
                format!("{} needs an argument list", ml.name()),
                LATER_HINT,
            ));
        };
        if function.over.is_some() || function.filter.is_some() || !list.clauses.is_empty() {
            return Err(unsupported(
                format!("{} is not an aggregate or window function", ml.name()),
                LATER_HINT,
            ));
        }
        let call = self.add_call(ml, list.args)?;
        match (ml, all_fields, field_name.as_deref()) {
            (MlFunction::DetectSentiment, true, _) => {
                let function = TableFunction {
                    alias: String::new(),
                    call,
                    sentiment_name: "sentiment".into(),
                    confidence_name: "confidence".into(),
                };
                self.push_all(&function, items);
            }
            (MlFunction::DetectSentiment, false, None) => {
                let name = alias_name.unwrap_or_else(|| "detect_sentiment".into());
                items.push(self.placeholder_item(call, Field::Record, name));
            }
            (MlFunction::DetectSentiment, false, Some(field @ ("sentiment" | "confidence"))) => {
                let kind = if field == "sentiment" {
                    Field::Sentiment
                } else {
                    Field::Confidence
                };
                let name = alias_name.unwrap_or_else(|| field.to_owned());
                items.push(self.placeholder_item(call, kind, name));
            }
            (MlFunction::DetectSentiment, false, Some(other)) => {
                return Err(PlanError {
                    code: SqlState::UndefinedColumn,
                    message: format!("column \"{other}\" not found in data type record"),
                    hint: Some("detect_sentiment returns (sentiment, confidence).".into()),
                })
            }
            (scalar, false, None) => {
                let name = alias_name.unwrap_or_else(|| function_short_name(scalar).into());
                let field = scalar.scalar_field().unwrap_or(Field::Text);
                items.push(self.placeholder_item(call, field, name));
            }
            (scalar, _, _) => {
                return Err(PlanError {
                    code: SqlState::WrongObjectType,
                    message: format!(
                        "{} returns {}, which has no fields",
                        scalar.name(),
                        scalar.result_type()
                    ),
                    hint: None,
                })
            }
        }
        Ok(())
    }

    fn plain(
        &mut self,
        expr: Expr,
        alias: Option<Ident>,
        items: &mut Vec<SelectItem>,
    ) -> Result<(), PlanError> {
        if has_ml(&expr) {
            return Err(unsupported(
                "ML calls inside other expressions are not supported yet",
                LATER_HINT,
            ));
        }
        items.push(match alias {
            Some(alias) => SelectItem::ExprWithAlias { expr, alias },
            None => SelectItem::UnnamedExpr(expr),
        });
        Ok(())
    }

    /// ORDER BY / GROUP BY ordinals refer to output columns; the base puts the arguments first.
    fn shift_ordinals(
        &self,
        select: &mut Select,
        order_by: Option<&mut Vec<sqlparser::ast::OrderByExpr>>,
        shift: usize,
        input_names: &HashSet<String>,
    ) -> Result<(), PlanError> {
        // Output position (1-based) of each placeholder; unknown once a wildcard precedes it.
        let mut position = 0usize;
        let mut known = true;
        let mut placeholder_positions = Vec::new();
        for item in &select.projection[shift..] {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => known = false,
                SelectItem::ExprWithAlias { alias, .. }
                    if alias.value.starts_with(PLACEHOLDER_PREFIX) =>
                {
                    position += 1;
                    placeholder_positions.push(if known { Some(position) } else { None });
                }
                _ => position += 1,
            }
        }
        let names: Vec<&str> = self.placeholders.iter().map(|p| p.name.as_str()).collect();
        // A GROUP BY name that is also an input column means the input column (PostgreSQL's
        // rule), whatever output column it also names.
        let fix = |expr: &mut Expr, group_by: bool| -> Result<(), PlanError> {
            if let Expr::Value(value) = expr {
                if let Value::Number(n, long) = &value.value {
                    let ordinal: usize = n
                        .parse()
                        .map_err(|_| unsupported("invalid ordinal", LATER_HINT))?;
                    if placeholder_positions
                        .iter()
                        .any(|p| p.is_none_or(|p| p == ordinal))
                    {
                        return Err(unsupported(
                            "ORDER BY or GROUP BY on the result of an ML call is not supported yet",
                            LATER_HINT,
                        ));
                    }
                    value.value = Value::Number((ordinal + shift).to_string(), *long);
                }
            }
            if let Expr::Identifier(ident) = expr {
                if names.contains(&ident.value.as_str())
                    && !(group_by && input_names.contains(&ident.value))
                {
                    return Err(unsupported(
                        format!(
                            "ORDER BY or GROUP BY on the ML result \"{}\" is not supported yet",
                            ident.value
                        ),
                        LATER_HINT,
                    ));
                }
            }
            Ok(())
        };
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            for expr in exprs {
                fix(expr, true)?;
            }
        }
        if let Some(order_by) = order_by {
            for item in order_by {
                fix(&mut item.expr, false)?;
            }
        }
        Ok(())
    }
}

fn query_order_by(
    order_by: &mut Option<sqlparser::ast::OrderBy>,
) -> Option<&mut Vec<sqlparser::ast::OrderByExpr>> {
    match order_by.as_mut().map(|o| &mut o.kind) {
        Some(OrderByKind::Expressions(exprs)) => Some(exprs),
        _ => None,
    }
}

/// A bare `$n` argument cast to the type of Aurora's signature, so that PostgreSQL infers the
/// parameter's type from the base statement as it would from the native function.
fn typed_parameter(function: MlFunction, position: usize, arg: Expr) -> Expr {
    let data_type = match function.parameter_types().get(position) {
        Some(&"varchar") => sqlparser::ast::DataType::Varchar(None),
        Some(&"int4") => sqlparser::ast::DataType::Int4(None),
        Some(&"text") => sqlparser::ast::DataType::Text,
        _ => return arg,
    };
    match arg {
        Expr::Value(ref v) if matches!(v.value, Value::Placeholder(_)) => Expr::Cast {
            kind: sqlparser::ast::CastKind::DoubleColon,
            expr: Box::new(arg),
            data_type,
            format: None,
        },
        other => other,
    }
}

/// Whether an ML table function's alias is referenced in `node`.
fn references_functions_in<V: Visit>(node: &V, functions: &[TableFunction]) -> bool {
    struct Finder<'a>(&'a [TableFunction]);
    impl Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            let hit = match expr {
                Expr::CompoundIdentifier(parts) => {
                    parts.len() >= 2 && self.0.iter().any(|f| f.alias == parts[0].value)
                }
                // Unqualified: a function's column unless a subquery's own (PostgreSQL knows).
                Expr::Identifier(ident) => self
                    .0
                    .iter()
                    .any(|f| ident.value == f.sentiment_name || ident.value == f.confidence_name),
                _ => false,
            };
            if hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    node.visit(&mut Finder(functions)).is_break()
}

/// Whether a table function's alias is used outside the select list.
fn references_functions(select: &Select, functions: &[TableFunction]) -> bool {
    references_functions_in(&select.selection, functions)
        || references_functions_in(&select.having, functions)
        || references_functions_in(&select.group_by, functions)
        || references_functions_in(&select.named_window, functions)
        || references_functions_in(&select.from, functions)
}
