//! Running a two-phase ML statement ([`FinishPlan`]) for a simple-protocol Query, on the
//! client's own upstream session:
//!
//! 1. outside a transaction block, `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` (hidden
//!    from the client), so both phases see one snapshot; inside one, the client's transaction;
//! 2. the base statement is described, the carried columns' type names looked up, and its rows
//!    fetched (ML arguments as text, carried values in binary where the type allows, so nothing
//!    depends on output settings);
//! 3. the executor scores the arguments (batched, de-duplicated);
//! 4. the residual runs over the enriched rows, bound as one array parameter per column, and its
//!    RowDescription, rows and CommandComplete go to the client as PostgreSQL produced them;
//! 5. COMMIT (or ROLLBACK after an error) of the hidden transaction, then ReadyForQuery.
//!
//! Errors keep PostgreSQL's semantics: an upstream error is relayed as it came; an inference
//! error inside the client's transaction block makes the upstream fail a stand-in statement so
//! the block is aborted exactly as by a native error.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::extended::{MlPortal, MlStatement};
use super::ml::{hidden_query, infer, Chunking, Memo, Outcome, Results};
use super::relay::Relay;
use super::rows::{message, split_fields, split_row};
use crate::enrich::{CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::sql::finish::{BlockPlan, CarriedType, Described, FinishPlan};

/// A prepared base + residual statement (extended protocol).
#[derive(Debug)]
pub struct Prepared {
    plan: FinishPlan,
    /// Per block: its base statement's name upstream and its shape.
    bases: Vec<(String, Shape)>,
    /// The residual statement's name upstream.
    residual_name: String,
    /// The residual's RowDescription body; `None`: NoData.
    row_description: Option<Bytes>,
}

impl Prepared {
    pub fn columns(&self) -> usize {
        self.row_description
            .as_deref()
            .map_or(0, |body| split_fields(body).len())
    }

    /// The client's RowDescription: the residual's, with `formats`.
    pub fn row_description(&self, formats: &[i16]) -> Option<Vec<u8>> {
        let body = self.row_description.as_deref()?;
        let fields = split_fields(body);
        let mut out = (fields.len() as u16).to_be_bytes().to_vec();
        for (i, field) in fields.iter().enumerate() {
            out.extend_from_slice(&field[..field.len().saturating_sub(2)]);
            out.extend_from_slice(&formats.get(i).copied().unwrap_or(0).to_be_bytes());
        }
        Some(out)
    }

    /// Result formats of the base statement: arguments in text, carried values as they travel.
    pub fn base_formats(&self) -> Vec<i16> {
        self.bases
            .first()
            .map(|(_, shape)| shape.base_formats())
            .unwrap_or_default()
    }
}

/// Reads the upstream's answers to `expected` requests sent with Flush: completions, parameter
/// and row descriptions count, notices and the like go to the client. `Err`: the upstream's
/// error body (it now skips to the client's Sync).
async fn answers(
    relay: &mut Relay,
    expected: usize,
) -> Result<Result<Vec<(u8, Bytes)>, Bytes>, SessionError> {
    let mut got = Vec::new();
    while got.len() < expected {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'E' => return Ok(Err(body)),
            b'1' | b'2' | b'3' | b't' | b'T' | b'n' => got.push((kind, body)),
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
    Ok(Ok(got))
}

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
    relay: &mut Relay,
    name: String,
    types: Bytes,
    plan: FinishPlan,
) -> Result<(), SessionError> {
    match prepare(relay, &name, &types, plan).await? {
        Ok(statement) => {
            relay
                .registry()
                .statements
                .insert(name, Arc::new(statement));
            relay.push_to_client(message(b'1', &[]));
        }
        Err(error) => {
            relay.registry().statements.remove(&name);
            relay.push_to_client(message(b'E', &error));
            relay.mark_extended_failed();
        }
    }
    Ok(())
}

async fn prepare(
    relay: &mut Relay,
    name: &str,
    types: &[u8],
    plan: FinishPlan,
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
    relay.send_upstream_now(requests.freeze()).await?;
    let got = match answers(relay, expected).await? {
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
        relay.send_upstream_now(requests.freeze()).await?;
        let got = match answers(relay, if b > 0 { 4 } else { 3 }).await? {
            Ok(got) => got,
            Err(error) => return Ok(Err(error)),
        };
        let description = got
            .iter()
            .find(|(kind, _)| *kind == b'T')
            .map(|(_, body)| body.clone());
        let shape = match shape(relay, block, description.as_deref(), false).await? {
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
    relay.send_upstream_now(requests.freeze()).await?;
    let got = match answers(relay, 3).await? {
        Ok(got) => got,
        Err(error) => return Ok(Err(error)),
    };
    let row_description = got
        .iter()
        .find(|(kind, _)| *kind == b'T')
        .map(|(_, body)| body.clone());
    Ok(Ok(MlStatement {
        upstream_name: base_name,
        parameters,
        prepared: crate::session::extended::Prepared::Finish(Box::new(Prepared {
            bases,
            residual_name,
            row_description,
            plan,
        })),
    }))
}

/// Runs a client's Execute of a base + residual portal: on the first Execute the base portal
/// (bound by the client's rewritten Bind) is read whole and scored, and the residual bound to a
/// portal of pgenrich's; every Execute then fetches from the residual, so row limits and
/// PortalSuspended behave as natively. Errors leave the upstream skipping to the client's Sync.
pub async fn run_execute(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    portal: &str,
    bound: &MlPortal,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let crate::session::extended::Prepared::Finish(prepared) = &bound.statement.prepared else {
        unreachable!("only base + residual portals come here")
    };
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
            relay.send_upstream_now(Bytes::from(requests)).await?;
            let mut rows = Vec::new();
            loop {
                let (kind, body) = relay.next_upstream_message().await?;
                match kind {
                    b'D' => rows.push(body),
                    b'2' => {}
                    b'C' => break,
                    b'E' => {
                        relay.push_to_client(message(b'E', &body));
                        relay.mark_extended_failed();
                        relay.flush_client().await?;
                        return Ok(outcome);
                    }
                    _ => relay.push_to_client(message(kind, &body)),
                }
            }
            let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
            let results =
                match score(relay, executor, block, &parsed, &Memo::new(), &mut outcome).await? {
                    Ok(results) => results,
                    Err(error) => {
                        super::ml::fail_upstream(relay, error).await?;
                        relay.mark_extended_failed();
                        relay.flush_client().await?;
                        return Ok(outcome);
                    }
                };
            ours.extend(residual_parameters(shape, &parsed, &results));
        }
        let Some(bind) = residual_bind(
            &residual_portal,
            &prepared.residual_name,
            &bound.parameters,
            &ours,
            &bound.formats,
        ) else {
            super::ml::fail_upstream(
                relay,
                ErrorMessage::error(SqlState::ProtocolViolation, "malformed Bind parameters"),
            )
            .await?;
            relay.mark_extended_failed();
            return Ok(outcome);
        };
        requests.put_slice(&message(frontend::BIND, &bind));
        if let Some(p) = relay.registry().portals.get_mut(portal) {
            p.started = true;
        }
    }
    requests.put_slice(&message(
        frontend::EXECUTE,
        &execute_body(&residual_portal, max_rows),
    ));
    requests.put_slice(&message(b'H', &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'2' => {}
            b'D' => {
                outcome.rows += 1;
                relay.push_to_client(message(kind, &body));
                relay.flush_client_soft().await?;
            }
            b'C' | b's' => {
                relay.push_to_client(message(kind, &body));
                break;
            }
            b'E' => {
                relay.push_to_client(message(kind, &body));
                relay.mark_extended_failed();
                break;
            }
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
    relay.flush_client().await?;
    Ok(outcome)
}

/// The residual's Bind: the client's parameters (as bound), then ours in binary; results in the
/// client's formats. `None`: the client's parameter section does not parse.
fn residual_bind(
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

/// The base statement's name on the upstream while pgenrich runs it.
const BASE_STATEMENT: &str = "pgenrich.base";

const TEXT_OID: u32 = 25;
const VARCHAR_OID: u32 = 1043;
const FLOAT4_OID: u32 = 700;

/// Runs `plan` for a simple-protocol Query: everything up to and including ReadyForQuery goes to
/// the client.
pub async fn run_query(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
    plan: FinishPlan,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let wrap = relay.tracker.status() == b'I';
    if wrap {
        // nextval() and setval() write, so a statement calling them cannot run read-only.
        let writes = plan.blocks.iter().any(|b| {
            let sql = b.base_sql.to_ascii_lowercase();
            sql.contains("nextval") || sql.contains("setval")
        });
        let begin = if writes {
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        };
        if let Some(error) = hidden_query(relay, begin).await? {
            relay.push_to_client(message(b'E', &error));
            return ready(relay, b"I", outcome).await;
        }
    }
    let streams = match &plan.row_local {
        Some(functions) => match only_row_functions(relay, functions).await? {
            Ok(streams) => streams,
            Err(body) => {
                relay.push_to_client(message(b'E', &body));
                return finish_query(relay, wrap, true, outcome).await;
            }
        },
        None => false,
    };
    let failure = if streams {
        run_chunked(relay, executor, chunking, &plan, &mut outcome).await?
    } else {
        run_phases(relay, executor, &plan, &mut outcome).await?
    };
    let failed = match failure {
        None => false,
        Some(Failure::Relayed) => true,
        Some(Failure::Ours(error)) => {
            if !wrap {
                abort_client_transaction(relay).await?;
            }
            relay.push_to_client(error.encode());
            true
        }
    };
    finish_query(relay, wrap, failed, outcome).await
}

/// Ends pgenrich's hidden transaction (if it began one) and answers ReadyForQuery.
async fn finish_query(
    relay: &mut Relay,
    wrap: bool,
    failed: bool,
    outcome: Outcome,
) -> Result<Outcome, SessionError> {
    if wrap {
        let end = if failed { "ROLLBACK" } else { "COMMIT" };
        if let Some(error) = hidden_query(relay, end).await? {
            relay.push_to_client(message(b'E', &error));
        }
        return ready(relay, b"I", outcome).await;
    }
    let status = [relay.tracker.status()];
    ready(relay, &status, outcome).await
}

pub(super) async fn ready(
    relay: &mut Relay,
    status: &[u8],
    outcome: Outcome,
) -> Result<Outcome, SessionError> {
    relay.note_ready(status);
    relay.push_to_client(message(b'Z', status));
    relay.flush_client().await?;
    Ok(outcome)
}

/// How a phase failed.
pub(super) enum Failure {
    /// The upstream's error has been relayed to the client.
    Relayed,
    /// pgenrich's error, not sent yet.
    Ours(ErrorMessage),
}

/// Makes the upstream fail a stand-in statement, aborting the client's transaction block as a
/// native error would; the stand-in's own error is dropped.
pub(super) async fn abort_client_transaction(relay: &mut Relay) -> Result<(), SessionError> {
    relay
        .send_upstream_now(crate::protocol::standin_query())
        .await?;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'Z' => {
                relay.note_ready(&body);
                return Ok(());
            }
            b'E' => {}
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

/// Reads upstream messages up to ReadyForQuery: `keep` decides per message whether pgenrich
/// consumes it (true) or it goes to the client; an ErrorResponse is relayed and remembered.
pub(super) async fn collect(
    relay: &mut Relay,
    mut keep: impl FnMut(u8, &Bytes) -> bool,
) -> Result<bool, SessionError> {
    let mut failed = false;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'Z' => {
                relay.note_ready(&body);
                return Ok(failed);
            }
            b'E' => {
                failed = true;
                relay.push_to_client(message(b'E', &body));
            }
            _ if keep(kind, &body) => {}
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

/// Whether none of `functions` is an aggregate or window function (by name, in any schema: a
/// name that is one anywhere keeps the statement from streaming). `Err`: the upstream's error.
async fn only_row_functions(
    relay: &mut Relay,
    functions: &[String],
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
    let mut text = sql.into_bytes();
    text.push(0);
    relay
        .send_upstream_now(message(frontend::QUERY, &text))
        .await?;
    let mut count = None;
    let mut error = None;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'D' => {
                count = split_row(&body)
                    .first()
                    .copied()
                    .flatten()
                    .map(<[u8]>::to_vec)
            }
            b'E' => error = Some(body),
            b'Z' => {
                relay.note_ready(&body);
                break;
            }
            b'N' | b'S' | b'A' => relay.push_to_client(message(kind, &body)),
            _ => {}
        }
    }
    Ok(match error {
        Some(error) => Err(error),
        None => Ok(count.as_deref() == Some(b"0")),
    })
}

/// Names of the statements and portal a chunked run keeps open between chunks.
const RESIDUAL_STATEMENT: &str = "pgenrich.residual";
const BASE_PORTAL: &str = "pgenrich.base";

/// Runs a row-local statement chunk by chunk: the base portal is fetched `chunking.rows` rows at
/// a time, each chunk scored and run through the prepared residual, its rows sent on at once, so
/// memory stays bounded and the first rows arrive after one chunk.
async fn run_chunked(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
    plan: &FinishPlan,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    let block = &plan.blocks[0];
    let shape = match describe_base(relay, block).await? {
        Ok(shape) => shape,
        Err(failure) => return Ok(Some(failure)),
    };
    let residual = plan.residual_sql(&[shape.described()], 1);
    // The residual, prepared once; the base bound to a portal kept open between chunks.
    let mut bind = named_body(BASE_PORTAL);
    bind.extend_from_slice(&named_body(BASE_STATEMENT));
    bind.extend_from_slice(&[0, 0, 0, 0]);
    let formats = shape.base_formats();
    bind.extend_from_slice(&(formats.len() as u16).to_be_bytes());
    for format in formats {
        bind.extend_from_slice(&format.to_be_bytes());
    }
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', RESIDUAL_STATEMENT)));
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(RESIDUAL_STATEMENT, &residual, &[]),
    ));
    requests.put_slice(&message(
        frontend::DESCRIBE,
        &named(b'S', RESIDUAL_STATEMENT),
    ));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let mut description = None;
    let failed = collect(relay, |kind, body| match kind {
        b'T' => {
            description = Some(body.clone());
            true
        }
        b'1' | b'2' | b'3' | b't' | b'n' => true,
        _ => false,
    })
    .await?;
    if failed {
        close_chunked(relay).await?;
        return Ok(Some(Failure::Relayed));
    }
    if let Some(description) = description {
        relay.push_to_client(message(b'T', &description));
    }
    let mut total = 0u64;
    // Identical inputs are scored once per statement, not once per chunk.
    let memo = Memo::new();
    loop {
        // The next chunk of base rows.
        let mut requests = BytesMut::new();
        requests.put_slice(&message(
            frontend::EXECUTE,
            &execute_body(BASE_PORTAL, chunking.rows),
        ));
        requests.put_slice(&message(frontend::SYNC, &[]));
        relay.send_upstream_now(requests.freeze()).await?;
        let mut rows: Vec<Bytes> = Vec::new();
        let mut done = false;
        let failed = collect(relay, |kind, body| match kind {
            b'D' => {
                rows.push(body.clone());
                true
            }
            b's' => true,
            b'C' => {
                done = true;
                true
            }
            _ => false,
        })
        .await?;
        if failed {
            close_chunked(relay).await?;
            return Ok(Some(Failure::Relayed));
        }
        if !rows.is_empty() {
            let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
            outcome.base_rows += parsed.len() as u64;
            let started = std::time::Instant::now();
            let results = match score(relay, executor, block, &parsed, &memo, outcome).await? {
                Ok(results) => results,
                Err(error) => {
                    close_chunked(relay).await?;
                    return Ok(Some(Failure::Ours(error)));
                }
            };
            outcome.inference += started.elapsed();
            let params = residual_parameters(&shape, &parsed, &results);
            let mut bind = BytesMut::new();
            bind.put_u8(0);
            bind.put_slice(&named_body(RESIDUAL_STATEMENT));
            bind.put_u16(1);
            bind.put_i16(1);
            bind.put_u16(params.len() as u16);
            for param in &params {
                bind.put_i32(param.len() as i32);
                bind.put_slice(param);
            }
            bind.put_u16(0);
            let mut requests = BytesMut::new();
            requests.put_slice(&message(frontend::BIND, &bind));
            requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
            requests.put_slice(&message(frontend::SYNC, &[]));
            relay.send_upstream_now(requests.freeze()).await?;
            let mut sent = 0u64;
            let failed = collect(relay, |kind, _| match kind {
                b'D' => {
                    sent += 1;
                    false
                }
                b'2' | b'C' => true,
                _ => false,
            })
            .await?;
            total += sent;
            outcome.rows += sent;
            if failed {
                close_chunked(relay).await?;
                return Ok(Some(Failure::Relayed));
            }
            relay.flush_client_soft().await?;
        }
        if done {
            break;
        }
    }
    close_chunked(relay).await?;
    relay.push_to_client(message(b'C', format!("SELECT {total}\0").as_bytes()));
    Ok(None)
}

/// Closes what a chunked run keeps open (none of it is an error if already gone).
async fn close_chunked(relay: &mut Relay) -> Result<(), SessionError> {
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'P', BASE_PORTAL)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', RESIDUAL_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    collect(relay, |kind, _| kind == b'3').await?;
    Ok(())
}

async fn run_phases(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &FinishPlan,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    let mut params = Vec::new();
    let mut described = Vec::with_capacity(plan.blocks.len());
    for block in &plan.blocks {
        match run_base(relay, executor, block, outcome).await? {
            Ok((shape, block_params)) => {
                described.push(shape.described());
                params.extend(block_params);
            }
            Err(failure) => return Ok(Some(failure)),
        }
    }
    run_residual(relay, plan, &described, params, outcome).await
}

/// Describes, fetches and scores one block's base rows; its residual parameters.
async fn run_base(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &BlockPlan,
    outcome: &mut Outcome,
) -> Result<Result<(Shape, Vec<Vec<u8>>), Failure>, SessionError> {
    let shape = match describe_base(relay, plan).await? {
        Ok(shape) => shape,
        Err(failure) => return Ok(Err(failure)),
    };
    let params = match fetch_and_score(relay, executor, plan, &shape, outcome).await? {
        Ok(params) => params,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(Ok((shape, params)))
}

/// Prepares and describes one block's base statement (as `pgenrich.base`, until
/// [`fetch_and_score`] closes it) and looks up its value columns' types.
pub(super) async fn describe_base(
    relay: &mut Relay,
    plan: &BlockPlan,
) -> Result<Result<Shape, Failure>, SessionError> {
    // 1. Describe the base statement (closing one an earlier failure may have left behind:
    // prepared statements outlive transactions).
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(BASE_STATEMENT, &plan.base_sql, &[]),
    ));
    requests.put_slice(&message(frontend::DESCRIBE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let mut description = None;
    let failed = collect(relay, |kind, body| match kind {
        b'1' | b't' | b'n' | b'3' => true,
        b'T' => {
            description = Some(body.clone());
            true
        }
        _ => false,
    })
    .await?;
    if failed {
        return Ok(Err(Failure::Relayed));
    }
    // 2. The value columns' type names and how they travel.
    let shape = match shape(relay, plan, description.as_deref(), true).await? {
        Ok(shape) => shape,
        Err(body) => {
            relay.push_to_client(message(b'E', &body));
            close_base(relay).await?;
            return Ok(Err(Failure::Relayed));
        }
    };

    Ok(Ok(shape))
}

/// Fetches the described base statement's rows and scores them: the block's residual parameters.
pub(super) async fn fetch_and_score(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &BlockPlan,
    shape: &Shape,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Vec<u8>>, Failure>, SessionError> {
    // 3. Fetch the base rows.
    let mut bind = BytesMut::new();
    bind.put_u8(0); // unnamed portal
    bind.put_slice(BASE_STATEMENT.as_bytes());
    bind.put_u8(0);
    bind.put_u16(0); // parameter formats
    bind.put_u16(0); // parameters
    let formats = shape.base_formats();
    bind.put_u16(formats.len() as u16);
    for format in formats {
        bind.put_i16(format);
    }
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let mut rows: Vec<Bytes> = Vec::new();
    let failed = collect(relay, |kind, body| match kind {
        b'2' | b'C' | b'3' => true,
        b'D' => {
            rows.push(body.clone());
            true
        }
        _ => false,
    })
    .await?;
    if failed {
        return Ok(Err(Failure::Relayed));
    }

    // 4. Inference, stopped by a cancel request or the client hanging up.
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    outcome.base_rows += parsed.len() as u64;
    let started = std::time::Instant::now();
    let results = match score(relay, executor, plan, &parsed, &Memo::new(), outcome).await? {
        Ok(results) => results,
        Err(error) => return Ok(Err(Failure::Ours(error))),
    };
    outcome.inference += started.elapsed();
    Ok(Ok(residual_parameters(shape, &parsed, &results)))
}

/// Runs the residual over every block's enriched rows, relaying its answer to the client.
async fn run_residual(
    relay: &mut Relay,
    plan: &FinishPlan,
    described: &[Described],
    params: Vec<Vec<u8>>,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    // 5. The residual over the enriched rows.
    let residual = plan.residual_sql(described, 1);
    let mut bind = BytesMut::new();
    bind.put_u8(0);
    bind.put_u8(0);
    bind.put_u16(1);
    bind.put_i16(1); // every parameter in binary
    bind.put_u16(params.len() as u16);
    for param in &params {
        bind.put_i32(param.len() as i32);
        bind.put_slice(param);
    }
    bind.put_u16(0); // results in text, as the simple protocol has them
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::PARSE, &parse_body("", &residual, &[])));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::DESCRIBE, b"P\0"));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let mut sent = 0u64;
    let failed = collect(relay, |kind, _| {
        if kind == b'D' {
            sent += 1;
        }
        matches!(kind, b'1' | b'2')
    })
    .await?;
    outcome.rows += sent;
    Ok(failed.then_some(Failure::Relayed))
}

/// Scores the base rows' ML arguments; a cancel request or a failed call gives the client's
/// error, the client hanging up ends the session.
async fn score(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &BlockPlan,
    parsed: &[Vec<Option<&[u8]>>],
    memo: &Memo,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Results>, ErrorMessage>, SessionError> {
    let mut stats = CallStats::default();
    let cancelled = relay.cancel_notify();
    let results = {
        let inference = infer(executor, &plan.calls, parsed, memo, &mut stats);
        tokio::select! {
            results = inference => results,
            _ = cancelled.notified() => {
                return Ok(Err(ErrorMessage::error(
                    SqlState::QueryCanceled,
                    "canceling statement due to user request",
                )));
            }
            gone = relay.client_gone() => return Err(gone),
        }
    };
    outcome.stats.rows += stats.rows;
    outcome.stats.calls += stats.calls;
    outcome.stats.duplicates_saved += stats.duplicates_saved;
    Ok(results.map_err(|error| {
        let function = plan
            .calls
            .first()
            .map(|c| c.function.name())
            .unwrap_or("ML call");
        error.error.to_client(function, &error.target)
    }))
}

/// The residual's array parameters (binary): one per carried column, then each call's results.
pub(super) fn residual_parameters(
    shape: &Shape,
    parsed: &[Vec<Option<&[u8]>>],
    results: &[Results],
) -> Vec<Vec<u8>> {
    let mut params: Vec<Vec<u8>> = Vec::new();
    for (j, &column) in shape.values.iter().enumerate() {
        let oid = if shape.types[j].as_text {
            TEXT_OID
        } else {
            shape.oids[j]
        };
        params.push(array(
            oid,
            parsed.iter().map(|row| row.get(column).copied().flatten()),
        ));
    }
    for result in results {
        match result {
            Results::Sentiment(values) => {
                params.push(array(
                    VARCHAR_OID,
                    values
                        .iter()
                        .map(|v| v.map(|s| s.label.as_str().as_bytes())),
                ));
                let confidences: Vec<Option<[u8; 4]>> = values
                    .iter()
                    .map(|v| v.map(|s| s.confidence.to_be_bytes()))
                    .collect();
                params.push(array(
                    FLOAT4_OID,
                    confidences.iter().map(|c| c.as_ref().map(|b| &b[..])),
                ));
            }
            Results::Text(values) => params.push(array(
                VARCHAR_OID,
                values.iter().map(|v| v.as_deref().map(str::as_bytes)),
            )),
        }
    }
    params
}

/// Closes the base statement after a failure between its Parse and its Execute.
async fn close_base(relay: &mut Relay) -> Result<(), SessionError> {
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    collect(relay, |kind, _| kind == b'3').await?;
    Ok(())
}

/// A Parse body declaring the parameter types `types`.
pub(super) fn parse_body(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + sql.len() + 4 + 4 * types.len());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for oid in types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    body
}

fn named_body(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body
}

/// A Describe or Close body.
fn named(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&named_body(name));
    body
}

fn execute_body(portal: &str, rows: usize) -> Vec<u8> {
    let mut body = named_body(portal);
    body.extend_from_slice(&(rows.min(i32::MAX as usize) as i32).to_be_bytes());
    body
}

/// `(name, type OID, type modifier)` of each column of a RowDescription body.
fn row_types(body: &[u8]) -> Vec<(String, u32, i32)> {
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

/// The base statement's columns as described: which carry values to the residual, their types
/// and how they travel, and the columns of each `*`.
#[derive(Debug, Clone, Default)]
pub(super) struct Shape {
    /// Base columns in all (arguments, values, star separators).
    columns: usize,
    /// Base column index of each value column.
    values: Vec<usize>,
    oids: Vec<u32>,
    types: Vec<CarriedType>,
    stars: Vec<Vec<String>>,
}

impl Shape {
    pub(super) fn described(&self) -> Described {
        Described {
            types: self.types.clone(),
            stars: self.stars.clone(),
        }
    }

    /// Result formats of the base statement: values in binary where they travel so, the rest
    /// (arguments, separators) in text.
    fn base_formats(&self) -> Vec<i16> {
        let mut formats = vec![0i16; self.columns];
        for (i, &column) in self.values.iter().enumerate() {
            formats[column] = i16::from(!self.types[i].as_text);
        }
        formats
    }
}

/// Reads the shape of the base statement from its RowDescription body and looks up the value
/// columns' types (see [`type_names`] for `sync`). `Err`: the upstream's error body.
async fn shape(
    relay: &mut Relay,
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
        match type_names(relay, &described, sync).await? {
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

fn internal(message: &str) -> Bytes {
    ErrorMessage::error(SqlState::InternalError, format!("pgenrich: {message}"))
        .encode()
        .slice(5..)
}

/// Looks up how each carried column is named in a cast and whether it must travel as text
/// (arrays cannot nest in an array parameter; some types have no binary I/O), with extended
/// protocol messages under pgenrich's own names, ended by Sync (`sync`) or Flush. `Err` holds the
/// upstream's error body (after Flush the upstream then skips to the client's Sync).
async fn type_names(
    relay: &mut Relay,
    columns: &[(u32, i32)],
    sync: bool,
) -> Result<Result<Vec<CarriedType>, Bytes>, SessionError> {
    const NAME: &str = "pgenrich.types";
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
    let mut bind = BytesMut::new();
    bind.put_slice(&named_body(NAME));
    bind.put_slice(&named_body(NAME));
    bind.put_slice(&[0, 0, 0, 0, 0, 0]);
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::PARSE, &parse_body(NAME, &sql, &[])));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, &execute_body(NAME, 0)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'P', NAME)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', NAME)));
    requests.put_slice(&message(if sync { frontend::SYNC } else { b'H' }, &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let mut types = Vec::new();
    let mut error = None;
    let mut closes = 0;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'D' => {
                let fields = split_row(&body);
                let name = fields
                    .first()
                    .copied()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let as_text = fields.get(1).copied().flatten() == Some(b"t");
                types.push(CarriedType { name, as_text });
            }
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
                relay.note_ready(&body);
                break;
            }
            b'N' | b'S' | b'A' => relay.push_to_client(message(kind, &body)),
            _ => {}
        }
    }
    if let Some(error) = error {
        return Ok(Err(error));
    }
    if types.len() != columns.len() {
        return Ok(Err(internal(
            "could not look up the types of the statement's columns",
        )));
    }
    Ok(Ok(types))
}

/// A one-dimensional array in PostgreSQL's binary format.
fn array<'a>(element: u32, values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
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
