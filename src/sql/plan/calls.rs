//! ML calls and names in syntax trees: a call's arguments against its signature, which schema
//! and function a name means, table functions in FROM and their aliases.

use super::*;

/// An ML call's arguments as expressions, checked against the function's signature.
pub(in crate::sql) fn call_arguments(
    function: MlFunction,
    args: Vec<FunctionArg>,
) -> Result<Vec<Expr>, PlanError> {
    let exprs = args
        .into_iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Ok(expr),
            _ => Err(unsupported(
                format!(
                    "named or wildcard arguments to {} are not supported",
                    function.name()
                ),
                "Pass the arguments by position.",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (min, max) = match function {
        MlFunction::DetectSentiment => (2, 3),
        MlFunction::InvokeEndpoint => (3, usize::MAX),
        MlFunction::InvokeModel | MlFunction::InvokeModelGetEmbeddings => (4, 4),
    };
    if exprs.len() < min || exprs.len() > max {
        return Err(PlanError {
            code: SqlState::UndefinedFunction,
            message: format!(
                "function {}() with {} arguments does not exist",
                function.name(),
                exprs.len()
            ),
            hint: Some(match function {
                MlFunction::DetectSentiment => "Call aws_comprehend.detect_sentiment(text, language [, max_rows_per_batch]).".into(),
                MlFunction::InvokeEndpoint => "Call aws_sagemaker.invoke_endpoint(endpoint, max_rows_per_batch, input [, ...]).".into(),
                MlFunction::InvokeModel => "Call aws_bedrock.invoke_model(model_id, content_type, accept_type, model_input).".into(),
                MlFunction::InvokeModelGetEmbeddings => "Call aws_bedrock.invoke_model_get_embeddings(model_id, content_type, json_key, model_input).".into(),
            }),
        });
    }
    if exprs.iter().any(has_ml) {
        return Err(unsupported(
            "an ML call whose argument is another ML call is not supported",
            "Select the inner call's result in a subquery and call the outer function on it in a separate statement, or compute the input in SQL.",
        ));
    }
    Ok(exprs)
}

pub(in crate::sql) fn function_short_name(function: MlFunction) -> &'static str {
    match function {
        MlFunction::DetectSentiment => "detect_sentiment",
        MlFunction::InvokeEndpoint => "invoke_endpoint",
        MlFunction::InvokeModel => "invoke_model",
        MlFunction::InvokeModelGetEmbeddings => "invoke_model_get_embeddings",
    }
}

pub(in crate::sql) fn function_of(name: &str) -> Result<MlFunction, PlanError> {
    match name {
        "aws_comprehend.detect_sentiment" => Ok(MlFunction::DetectSentiment),
        "aws_sagemaker.invoke_endpoint" => Ok(MlFunction::InvokeEndpoint),
        "aws_bedrock.invoke_model" => Ok(MlFunction::InvokeModel),
        "aws_bedrock.invoke_model_get_embeddings" => Ok(MlFunction::InvokeModelGetEmbeddings),
        other => Err(PlanError {
            code: SqlState::UndefinedFunction,
            message: format!("function {other} is not available through pgenrich"),
            hint: Some("pgenrich provides aws_comprehend.detect_sentiment, aws_sagemaker.invoke_endpoint, aws_bedrock.invoke_model and aws_bedrock.invoke_model_get_embeddings.".into()),
        }),
    }
}

/// `(schema, function)` in lower case if `name` is in an ML schema.
pub(in crate::sql) fn ml_name(name: &ObjectName) -> Option<(String, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
            ObjectNamePart::Function(_) => None,
        })
        .collect::<Option<_>>()?;
    let [.., schema, function] = parts.as_slice() else {
        return None;
    };
    ML_SCHEMAS
        .contains(&schema.as_str())
        .then(|| (schema.clone(), function.clone()))
}

pub(in crate::sql) fn ml_table_function(
    factor: &TableFactor,
) -> Option<(String, Vec<FunctionArg>, Option<sqlparser::ast::TableAlias>)> {
    match factor {
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } => {
            let (schema, function) = ml_name(name)?;
            Some((
                format!("{schema}.{function}"),
                args.args.clone(),
                alias.clone(),
            ))
        }
        TableFactor::Function {
            name, args, alias, ..
        } => {
            let (schema, function) = ml_name(name)?;
            Some((format!("{schema}.{function}"), args.clone(), alias.clone()))
        }
        _ => None,
    }
}

pub(in crate::sql) fn relation_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        }
        | TableFactor::Function {
            alias: Some(alias), ..
        } => Some(alias.name.value.clone()),
        TableFactor::Table {
            name,
            alias: None,
            args: None,
            ..
        } => name.0.last().and_then(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.clone()),
            ObjectNamePart::Function(_) => None,
        }),
        _ => None,
    }
}

pub(in crate::sql) fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident.value.clone()),
        _ => None,
    }
}

/// Whether `node` contains an ML call (as a function or a table function).
pub fn has_ml<V: Visit>(node: &V) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f) if ml_name(&f.name).is_some() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match ml_table_function(factor) {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            }
        }
    }
    node.visit(&mut Finder).is_break()
}
