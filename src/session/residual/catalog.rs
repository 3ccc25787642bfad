//! What the residual mode looks up in the catalog and reads from descriptions: RowDescription
//! types, the base statement's shape and its columns' type names, whether functions are
//! row-local, and the binary arrays its parameters travel in.

use super::*;
use crate::error::SqlState;

/// `(name, type OID, type modifier)` of each column of a RowDescription body.
pub(crate) fn row_types(body: &[u8]) -> Vec<(String, u32, i32)> {
    let mut out = Vec::new();
    let Some(count) = body.get(..2) else {
        return out;
    };
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut at = 2;
    for _ in 0..count {
        let Some(end) = body[at..].iter().position(|&b| b == 0) else {
            break;
        };
        let name = String::from_utf8_lossy(&body[at..at + end]).into_owned();
        at += end + 1;
        let Some(field) = body.get(at..at + 18) else {
            break;
        };
        let oid = u32::from_be_bytes([field[6], field[7], field[8], field[9]]);
        let typmod = i32::from_be_bytes([field[12], field[13], field[14], field[15]]);
        out.push((name, oid, typmod));
        at += 18;
    }
    out
}

/// Reads the shape of the base statement from its RowDescription body and looks up the value
/// columns' types (see [`type_names`] for `sync`). `Err`: the upstream's error body.
pub(crate) async fn shape(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
    description: Option<&[u8]>,
    sync: bool,
) -> Result<Result<Shape, Bytes>, SessionError> {
    let columns = description.map(row_types).unwrap_or_default();
    let names: Vec<String> = columns.iter().map(|(n, _, _)| n.clone()).collect();
    let Some((values, stars)) = plan.value_columns(&names) else {
        return Ok(Err(internal(
            "the base statement does not have the planned columns",
        )));
    };
    let described: Vec<(u32, i32)> = values
        .iter()
        .map(|&i| (columns[i].1, columns[i].2))
        .collect();
    let types = if described.is_empty() {
        Vec::new()
    } else {
        match type_names(conv, &described, sync).await? {
            Ok(types) => types,
            Err(error) => return Ok(Err(error)),
        }
    };
    Ok(Ok(Shape {
        columns: columns.len(),
        oids: described.iter().map(|(oid, _)| *oid).collect(),
        values,
        types,
        stars,
    }))
}

pub(crate) fn internal(message: &str) -> Bytes {
    ErrorMessage::error(SqlState::InternalError, format!("pgenrich: {message}"))
        .encode()
        .slice(5..)
}

/// Runs a catalog query of pgenrich's with extended protocol messages under pgenrich's own names
/// (so the client's unnamed statement and portal survive), ended by Sync (`sync`) or Flush; its
/// rows as text. `Err` holds the upstream's error body (after Flush the upstream then skips to
/// the client's Sync).
pub(crate) async fn catalog_rows(
    conv: &mut Conversation<'_>,
    sql: &str,
    sync: bool,
) -> Result<Result<Vec<Vec<Option<String>>>, Bytes>, SessionError> {
    const NAME: &str = "pgenrich.catalog";
    let mut bind = BytesMut::new();
    bind.put_slice(&named_body(NAME));
    bind.put_slice(&named_body(NAME));
    bind.put_slice(&[0, 0, 0, 0, 0, 0]);
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::PARSE, &parse_body(NAME, sql, &[])));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, &execute_body(NAME, 0)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'P', NAME)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', NAME)));
    requests.put_slice(&message(if sync { frontend::SYNC } else { b'H' }, &[]));
    conv.send(requests.freeze()).await?;
    let mut rows = Vec::new();
    let mut error = None;
    let mut closes = 0;
    loop {
        let (kind, body) = conv.next().await?;
        match kind {
            b'D' => rows.push(
                split_row(&body)
                    .iter()
                    .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                    .collect(),
            ),
            b'E' => {
                error = Some(body);
                if !sync {
                    break;
                }
            }
            b'3' => {
                closes += 1;
                if !sync && closes == 2 {
                    break;
                }
            }
            b'Z' => {
                conv.note_ready(&body);
                break;
            }
            b'N' | b'S' | b'A' => conv.to_client(message(kind, &body)),
            _ => {}
        }
    }
    Ok(match error {
        Some(error) => Err(error),
        None => Ok(rows),
    })
}

/// Looks up how each carried column is named in a cast and whether it must travel as text
/// (arrays cannot nest in an array parameter; some types have no binary I/O); see
/// [`catalog_rows`] for `sync`.
pub(crate) async fn type_names(
    conv: &mut Conversation<'_>,
    columns: &[(u32, i32)],
    sync: bool,
) -> Result<Result<Vec<CarriedType>, Bytes>, SessionError> {
    let oids: Vec<String> = columns.iter().map(|(o, _)| o.to_string()).collect();
    let mods: Vec<String> = columns.iter().map(|(_, m)| m.to_string()).collect();
    let sql = format!(
        "SELECT pg_catalog.format_type(x.o, x.m), \
         (t.typelem <> 0 AND t.typlen = -1) OR t.typsend::oid = 0 \
         FROM unnest('{{{}}}'::oid[], '{{{}}}'::int4[]) WITH ORDINALITY AS x(o, m, n) \
         JOIN pg_catalog.pg_type t ON t.oid = x.o ORDER BY x.n",
        oids.join(","),
        mods.join(",")
    );
    let rows = match catalog_rows(conv, &sql, sync).await? {
        Ok(rows) => rows,
        Err(error) => return Ok(Err(error)),
    };
    if rows.len() != columns.len() {
        return Ok(Err(internal(
            "could not look up the types of the statement's columns",
        )));
    }
    Ok(Ok(rows
        .into_iter()
        .map(|row| CarriedType {
            name: row.first().cloned().flatten().unwrap_or_default(),
            as_text: row.get(1).cloned().flatten().as_deref() == Some("t"),
        })
        .collect()))
}

/// Whether none of `functions` is an aggregate or window function (by name, in any schema: a
/// name that is one anywhere keeps the statement from streaming); see [`catalog_rows`].
pub(crate) async fn only_row_functions(
    conv: &mut Conversation<'_>,
    functions: &[String],
    sync: bool,
) -> Result<Result<bool, Bytes>, SessionError> {
    if functions.is_empty() {
        return Ok(Ok(true));
    }
    let names: Vec<String> = functions
        .iter()
        .map(|f| format!("'{}'", f.replace('\'', "''")))
        .collect();
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_proc WHERE prokind IN ('a', 'w') \
         AND proname = ANY (ARRAY[{}]::name[])",
        names.join(", ")
    );
    Ok(catalog_rows(conv, &sql, sync).await?.map(|rows| {
        rows.first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .as_deref()
            == Some("0")
    }))
}

/// A one-dimensional array in PostgreSQL's binary format.
pub(crate) fn array<'a>(element: u32, values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = values.collect();
    let mut out = Vec::with_capacity(
        20 + values
            .iter()
            .map(|v| 4 + v.map_or(0, <[u8]>::len))
            .sum::<usize>(),
    );
    if values.is_empty() {
        out.extend_from_slice(&0i32.to_be_bytes()); // dimensions
        out.extend_from_slice(&0i32.to_be_bytes()); // has nulls
        out.extend_from_slice(&element.to_be_bytes());
        return out;
    }
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&i32::from(values.iter().any(Option::is_none)).to_be_bytes());
    out.extend_from_slice(&element.to_be_bytes());
    out.extend_from_slice(&(values.len() as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for value in values {
        match value {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_use_postgres_binary_layout() {
        let out = array(23, [Some(&[0, 0, 0, 7][..]), None].into_iter());
        let mut expected = Vec::new();
        for word in [1i32, 1, 23, 2, 1, 4] {
            expected.extend_from_slice(&word.to_be_bytes());
        }
        expected.extend_from_slice(&[0, 0, 0, 7]);
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(out, expected);
        assert_eq!(array(25, std::iter::empty()).len(), 12);
    }

    #[test]
    fn row_descriptions_give_types_and_modifiers() {
        let mut body = vec![0, 2];
        for (name, oid, typmod) in [("a", 1700u32, 655366i32), ("bb", 25, -1)] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&typmod.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
        }
        assert_eq!(
            row_types(&body),
            [("a".to_owned(), 1700, 655366), ("bb".to_owned(), 25, -1)]
        );
        assert_eq!(row_types(&body[..10]), []);
    }
}
