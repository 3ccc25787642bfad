//! Base + residual statements in the extended protocol: preparing them for the client's Parse
//! and running them for its Execute.

use super::*;
use crate::error::SqlState;
use crate::session::conversation::held::Held;
use crate::session::kept::Kept;
use crate::session::statements::{Prepared, ResidualStatement};

fn parameter_oids(description: &[u8]) -> Vec<u32> {
    let count = description
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
    (0..count)
        .filter_map(|i| description.get(2 + 4 * i..6 + 4 * i))
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Prepares a base + residual statement upstream for the client's Parse and answers it: the
/// typing statement fixes the client's parameter types, then the base is prepared and described,
/// the carried types looked up, and the residual prepared; its RowDescription is the client's.
pub async fn handle_parse(
    conv: &mut Conversation<'_>,
    name: String,
    types: Bytes,
    plan: ResidualPlan,
    kept: Option<Kept>,
) -> Result<(), SessionError> {
    match prepare(conv, &name, &types, plan).await? {
        Ok(mut statement) => {
            statement.kept = kept;
            conv.parse_accepted(name, statement);
        }
        Err(error) => conv.parse_refused(&name, &error),
    }
    Ok(())
}

pub(crate) async fn prepare(
    conv: &mut Conversation<'_>,
    name: &str,
    types: &[u8],
    plan: ResidualPlan,
) -> Result<Result<MlStatement, Bytes>, SessionError> {
    const TYPING: &str = "pgenrich.t";
    let base_name = format!("pgenrich.s.{name}");
    let residual_name = format!("pgenrich.r.{name}");
    // 1. The client's parameter types, as PostgreSQL infers them from the whole statement.
    let declared: Vec<u32> = parameter_oids(types);
    let mut requests = BytesMut::new();
    for old in [&base_name, &residual_name] {
        requests.put_slice(&message(frontend::CLOSE, &named(b'S', old)));
    }
    let mut expected = 2;
    if let Some(typing) = &plan.typing_sql {
        requests.put_slice(&message(
            frontend::PARSE,
            &parse_body(TYPING, typing, &declared),
        ));
        requests.put_slice(&message(frontend::DESCRIBE, &named(b'S', TYPING)));
        requests.put_slice(&message(frontend::CLOSE, &named(b'S', TYPING)));
        expected += 4;
    }
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    let got = match conv.answers(expected).await? {
        Ok(got) => got,
        Err(error) => return Ok(Err(error)),
    };
    // Without `$n` in the text, only the declared types (PostgreSQL describes those as given).
    let parameters = got
        .iter()
        .find(|(kind, _)| *kind == b't')
        .map(|(_, body)| body.clone())
        .unwrap_or_else(|| {
            let mut body = (declared.len() as u16).to_be_bytes().to_vec();
            for oid in &declared {
                body.extend_from_slice(&oid.to_be_bytes());
            }
            Bytes::from(body)
        });
    let client_types = parameter_oids(&parameters);

    // 2. Each block's base statement and its columns.
    let mut bases = Vec::with_capacity(plan.blocks.len());
    for (b, block) in plan.blocks.iter().enumerate() {
        let name = if b == 0 {
            base_name.clone()
        } else {
            format!("pgenrich.s{b}.{name}")
        };
        let mut requests = BytesMut::new();
        if b > 0 {
            requests.put_slice(&message(frontend::CLOSE, &named(b'S', &name)));
        }
        requests.put_slice(&message(
            frontend::PARSE,
            &parse_body(&name, &block.base_sql, &client_types),
        ));
        requests.put_slice(&message(frontend::DESCRIBE, &named(b'S', &name)));
        requests.put_slice(&message(b'H', &[]));
        conv.send(requests.freeze()).await?;
        let got = match conv.answers(if b > 0 { 4 } else { 3 }).await? {
            Ok(got) => got,
            Err(error) => return Ok(Err(error)),
        };
        let description = got
            .iter()
            .find(|(kind, _)| *kind == b'T')
            .map(|(_, body)| body.clone());
        let shape = match shape(conv, block, description.as_deref(), false).await? {
            Ok(shape) => shape,
            Err(error) => return Ok(Err(error)),
        };
        bases.push((name, shape));
    }

    // 3. The residual, with the client's parameters first.
    let described: Vec<Described> = bases.iter().map(|(_, shape)| shape.described()).collect();
    let residual = plan.residual_sql(&described, client_types.len() + 1);
    let mut requests = BytesMut::new();
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(&residual_name, &residual, &client_types),
    ));
    requests.put_slice(&message(frontend::DESCRIBE, &named(b'S', &residual_name)));
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    let got = match conv.answers(3).await? {
        Ok(got) => got,
        Err(error) => return Ok(Err(error)),
    };
    let row_description = got
        .iter()
        .find(|(kind, _)| *kind == b'T')
        .map(|(_, body)| body.clone());
    // A statement that writes runs chunked only when an Execute reads it to the end (see
    // `run_execute`).
    let chunked = match (&plan.row_local, plan.blocks.len()) {
        (Some(functions), 1) => match only_row_functions(conv, functions, false).await? {
            Ok(chunked) => chunked,
            Err(error) => return Ok(Err(error)),
        },
        _ => false,
    };
    Ok(Ok(MlStatement {
        upstream_name: base_name,
        parameters,
        prepared: Prepared::Residual(Box::new(ResidualStatement {
            bases,
            residual_name,
            row_description,
            chunked,
            plan,
        })),
        kept: None,
    }))
}

/// Runs a client's Execute of a base + residual portal: on the first Execute the base portal
/// (bound by the client's rewritten Bind) is read whole and scored, and the residual bound to a
/// portal of pgenrich's; every Execute then fetches from the residual, so row limits and
/// PortalSuspended behave as natively. Errors leave the upstream skipping to the client's Sync.
pub async fn run_execute(
    conv: &mut Conversation<'_>,
    portal: &str,
    bound: &MlPortal,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let Prepared::Residual(prepared) = &bound.statement.prepared else {
        unreachable!("only base + residual portals come here")
    };
    // A statement that writes goes chunk by chunk only when this first Execute reads it to the
    // end: with a row limit the rows of later chunks would stay unwritten if the client closed
    // the portal, so then it runs whole (as PostgreSQL runs a portal that writes).
    if !bound.started && !check_writable_execute(conv, &prepared.plan).await? {
        return Ok(outcome);
    }
    if !bound.started && prepared.plan.needs_block() && conv.snapshot_open() {
        // Outside a transaction block (the only one open is pgenrich's snapshot), PostgreSQL
        // refuses a cursor without HOLD before anything runs: so does pgenrich, before any call.
        let error = ErrorMessage::error(
            SqlState::NoActiveSqlTransaction,
            "DECLARE CURSOR can only be used in transaction blocks",
        );
        conv.fail_execute(error).await?;
        return Ok(outcome);
    }
    let writes_whole = prepared.plan.modifies.is_some() && (max_rows > 0 || bound.started);
    if prepared.chunked && !writes_whole {
        return run_chunked_execute(conv, portal, bound, prepared, max_rows).await;
    }
    let residual_portal = format!("pgenrich.r.{portal}");
    let mut requests = BytesMut::new();
    if !bound.started {
        // Each block's base rows: block 0's portal is the client's (its Bind was rewritten), the
        // others are bound now with the client's parameters.
        let mut ours = Vec::new();
        for (b, ((base_name, shape), block)) in
            prepared.bases.iter().zip(&prepared.plan.blocks).enumerate()
        {
            let base_portal = if b == 0 {
                portal.to_owned()
            } else {
                format!("pgenrich.b{b}.{portal}")
            };
            let mut requests = Vec::new();
            if b > 0 {
                // A portal of that name from an earlier statement of this transaction goes.
                requests.extend_from_slice(&message(frontend::CLOSE, &named(b'P', &base_portal)));
                let mut bind = named_body(&base_portal);
                bind.extend_from_slice(&named_body(base_name));
                bind.extend_from_slice(&bound.parameters);
                let formats = shape.base_formats();
                bind.extend_from_slice(&(formats.len() as u16).to_be_bytes());
                for format in formats {
                    bind.extend_from_slice(&format.to_be_bytes());
                }
                requests.extend_from_slice(&message(frontend::BIND, &bind));
            }
            requests.extend_from_slice(&message(frontend::EXECUTE, &execute_body(&base_portal, 0)));
            requests.extend_from_slice(&message(b'H', &[]));
            conv.send(Bytes::from(requests)).await?;
            let mut rows = Held::new(conv);
            loop {
                let (kind, body) = conv.next().await?;
                match kind {
                    b'D' => rows.push(&body),
                    b'2' | b'3' => {}
                    b'C' => break,
                    b'E' => {
                        conv.to_client(message(b'E', &body));
                        conv.mark_failed();
                        conv.flush().await?;
                        return Ok(outcome);
                    }
                    _ => conv.to_client(message(kind, &body)),
                }
            }
            let rows = match rows.into_rows() {
                Ok(rows) => rows,
                Err(error) => {
                    conv.fail_execute(error).await?;
                    conv.flush().await?;
                    return Ok(outcome);
                }
            };
            let memo = conv.new_memo();
            match score_rows(conv, block, shape, &rows, &memo, &mut outcome).await? {
                Ok(params) => ours.extend(params),
                Err(error) => {
                    conv.fail_execute(error).await?;
                    conv.flush().await?;
                    return Ok(outcome);
                }
            }
        }
        let bind = match residual_bind(
            &residual_portal,
            &prepared.residual_name,
            &bound.parameters,
            &ours,
            &bound.formats,
        ) {
            Ok(bind) => bind,
            Err(error) => {
                conv.fail_execute(error).await?;
                return Ok(outcome);
            }
        };
        // The residual portal of an earlier statement on this client portal, in a transaction
        // block, is still open.
        requests.put_slice(&message(frontend::CLOSE, &named(b'P', &residual_portal)));
        requests.put_slice(&message(frontend::BIND, &bind));
        if let Some(p) = conv.registry().portals.get_mut(portal) {
            p.started = true;
        }
    }
    requests.put_slice(&message(
        frontend::EXECUTE,
        &execute_body(&residual_portal, max_rows),
    ));
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    loop {
        let (kind, body) = conv.next().await?;
        match kind {
            b'2' | b'3' => {}
            b'D' => {
                outcome.rows += 1;
                conv.to_client(message(kind, &body));
            }
            b'C' => {
                conv.to_client(message(kind, &body));
                snapshot::portal_done(conv).await?;
                break;
            }
            b's' => {
                conv.to_client(message(kind, &body));
                break;
            }
            b'E' => {
                conv.to_client(message(kind, &body));
                conv.mark_failed();
                break;
            }
            _ => conv.to_client(message(kind, &body)),
        }
    }
    conv.flush().await?;
    Ok(outcome)
}

/// The residual's Bind: the client's parameters (as bound), then ours in binary; results in the
/// client's formats. An error if the client's parameter section does not parse.
pub(crate) fn residual_bind(
    portal: &str,
    statement: &str,
    client: &[u8],
    ours: &[Vec<u8>],
    formats: &[i16],
) -> Result<Vec<u8>, ErrorMessage> {
    residual_bind_body(portal, statement, client, ours, formats).ok_or_else(|| {
        ErrorMessage::error(SqlState::ProtocolViolation, "malformed Bind parameters")
    })
}

fn residual_bind_body(
    portal: &str,
    statement: &str,
    client: &[u8],
    ours: &[Vec<u8>],
    formats: &[i16],
) -> Option<Vec<u8>> {
    let word = |at: usize| -> Option<u16> {
        client
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let nformats = word(0)? as usize;
    let codes: Vec<u16> = (0..nformats)
        .map(|i| word(2 + 2 * i))
        .collect::<Option<_>>()?;
    let values_at = 2 + 2 * nformats;
    let nparams = word(values_at)? as usize;
    let values = client.get(values_at + 2..)?;
    let mut body = named_body(portal);
    body.extend_from_slice(&named_body(statement));
    let total = nparams + ours.len();
    body.extend_from_slice(&(total as u16).to_be_bytes());
    for i in 0..nparams {
        let code = match codes.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        };
        body.extend_from_slice(&code.to_be_bytes());
    }
    for _ in ours {
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    body.extend_from_slice(&(total as u16).to_be_bytes());
    body.extend_from_slice(values);
    for param in ours {
        body.extend_from_slice(&(param.len() as i32).to_be_bytes());
        body.extend_from_slice(param);
    }
    body.extend_from_slice(&(formats.len() as u16).to_be_bytes());
    for format in formats {
        body.extend_from_slice(&format.to_be_bytes());
    }
    Some(body)
}
