//! The names PostgreSQL gives unaliased output columns.

use super::*;

/// The name PostgreSQL gives an unaliased output column (its `FigureColname`), `?column?` when
/// it has none.
pub fn column_name(expr: &Expr) -> String {
    figure(expr).unwrap_or_else(|| "?column?".to_owned())
}

pub(super) fn ident_name(ident: &Ident) -> String {
    crate::sql::text::fold_identifier(&ident.value, ident.quote_style.is_some())
}

pub(super) fn figure(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Function(f) => {
            let name = f.name.0.last()?.as_ident()?;
            let name = ident_name(name);
            Some(name.trim_end_matches(ALL_FIELDS_SUFFIX).to_owned())
        }
        Expr::Nested(inner) => figure(inner),
        Expr::Cast {
            expr, data_type, ..
        } => figure(expr).or_else(|| Some(type_name(data_type))),
        Expr::Collate { expr, .. } => figure(expr),
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.last() {
            Some(sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))) => {
                Some(ident_name(field))
            }
            Some(sqlparser::ast::AccessExpr::Subscript(_)) => figure(root),
            _ => None,
        },
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Tuple(_) => Some("row".into()),
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) => match select.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some(ident_name(alias)),
                Some(SelectItem::UnnamedExpr(e)) => figure(e),
                _ => None,
            },
            _ => None,
        },
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        _ => None,
    }
}

/// PostgreSQL's internal name of a type written in a cast (what it names a cast column).
pub(super) fn type_name(data_type: &sqlparser::ast::DataType) -> String {
    let text = data_type.to_string().to_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim();
    let base = base.trim_end_matches("[]");
    match base {
        "int" | "integer" | "int4" => "int4",
        "smallint" | "int2" => "int2",
        "bigint" | "int8" => "int8",
        "real" | "float4" => "float4",
        "float" | "double precision" | "float8" | "double" => "float8",
        "boolean" | "bool" => "bool",
        "varchar" | "character varying" => "varchar",
        "char" | "character" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        "time" | "time without time zone" => "time",
        "timetz" | "time with time zone" => "timetz",
        other => other.rsplit('.').next().unwrap_or(other),
    }
    .trim_matches('"')
    .to_owned()
}
