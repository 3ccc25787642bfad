//! Row-local two-phase statements, in both protocols: the base portal is fetched a chunk at a
//! time and each chunk scored and finished by the residual, so rows stream and memory stays
//! bounded.

use super::pipeline::{pipeline, ChunkRun, Ending};
use super::prepared::residual_bind;
use super::*;
use crate::session::statements::{ChunkProgress, ResidualStatement};

/// Names of the statements and portal a chunked run keeps open between chunks.
const RESIDUAL_STATEMENT: &str = "pgenrich.residual";
const BASE_PORTAL: &str = "pgenrich.base";

/// Runs a row-local statement chunk by chunk: the base portal is fetched `chunking.rows` rows at
/// a time, each chunk scored and run through the prepared residual, its rows sent on at once, so
/// memory stays bounded and the first rows arrive after one chunk.
pub(super) async fn run_chunked(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    let block = &plan.blocks[0];
    let shape = match describe_base(conv, block).await? {
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
    conv.send(requests.freeze()).await?;
    let mut description = None;
    let failed = conv
        .collect(|kind, body| match kind {
            b'T' => {
                description = Some(body.clone());
                true
            }
            b'1' | b'2' | b'3' | b't' | b'n' => true,
            _ => false,
        })
        .await?;
    if failed {
        close_chunked(conv).await?;
        return Ok(Some(Failure::Relayed));
    }
    if let Some(description) = description {
        conv.to_client(message(b'T', &description));
    }
    let run = ChunkRun {
        base_portal: BASE_PORTAL,
        residual_statement: RESIDUAL_STATEMENT,
        residual_portal: "",
        client_parameters: &[0, 0, 0, 0],
        formats: &[],
        calls: Arc::new(block.calls.clone()),
        shape: Arc::new(shape),
        // Identical inputs are scored once per statement, not once per chunk.
        memo: Arc::new(conv.new_memo()),
    };
    let (ending, sent) = pipeline(conv, &run, outcome).await?;
    close_chunked(conv).await?;
    Ok(match ending {
        Ending::Done => {
            conv.to_client(message(b'C', &done_tag(plan, sent)));
            None
        }
        Ending::UpstreamError => Some(Failure::Relayed),
        Ending::Failed(error) => Some(Failure::Ours(error)),
    })
}

/// The CommandComplete body of a chunked statement that selected or wrote `n` rows in all.
fn done_tag(plan: &ResidualPlan, n: u64) -> Vec<u8> {
    let mut tag = match &plan.modifies {
        Some(write) => write.command.tag(n),
        None => format!("SELECT {n}"),
    };
    tag.push('\0');
    tag.into_bytes()
}

/// Closes what a chunked run keeps open (none of it is an error if already gone).
async fn close_chunked(conv: &mut Conversation<'_>) -> Result<(), SessionError> {
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'P', BASE_PORTAL)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', RESIDUAL_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    conv.collect(|kind, _| kind == b'3').await?;
    Ok(())
}

/// A row-local portal: base chunks of `chunking.rows`, each scored and run through the residual;
/// the client's row limit is honoured across chunks (PortalSuspended, then the next Execute
/// continues where it stopped), and CommandComplete counts the whole result.
pub(super) async fn run_chunked_execute(
    conv: &mut Conversation<'_>,
    portal: &str,
    bound: &MlPortal,
    prepared: &ResidualStatement,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let residual_portal = format!("pgenrich.r.{portal}");
    let mut state = bound.chunked.clone();

    let memo = Arc::clone(state.memo.get_or_insert_with(|| Arc::new(conv.new_memo())));
    let (block, (_, shape)) = (&prepared.plan.blocks[0], &prepared.bases[0]);
    if max_rows == 0 && !state.residual_open && !state.base_done {
        // Read to the end: pipelined.
        let run = ChunkRun {
            base_portal: portal,
            residual_statement: &prepared.residual_name,
            residual_portal: &residual_portal,
            client_parameters: &bound.parameters,
            formats: &bound.formats,
            calls: Arc::new(block.calls.clone()),
            shape: Arc::new(shape.clone()),
            memo,
        };
        let (ending, sent) = pipeline(conv, &run, &mut outcome).await?;
        state.sent += sent;
        match ending {
            Ending::Done => {
                state.base_done = true;
                conv.to_client(message(b'C', &done_tag(&prepared.plan, state.sent)));
                snapshot::portal_done(conv).await?;
            }
            Ending::UpstreamError => conv.mark_failed(),
            Ending::Failed(error) => conv.fail_execute(error).await?,
        }
        return finish_execute(conv, portal, state, outcome).await;
    }
    // With a row limit, chunk by chunk: the residual portal of the current chunk stays open
    // between the client's Executes.
    let mut sent_now = 0usize;
    let outcome = loop {
        if max_rows > 0 && sent_now >= max_rows {
            // PostgreSQL too answers PortalSuspended when the limit is met exactly.
            conv.to_client(message(b's', &[]));
            break outcome;
        }
        if state.residual_open {
            let limit = if max_rows > 0 { max_rows - sent_now } else { 0 };
            let mut requests = Vec::new();
            requests.extend_from_slice(&message(
                frontend::EXECUTE,
                &execute_body(&residual_portal, limit),
            ));
            requests.extend_from_slice(&message(b'H', &[]));
            conv.send(Bytes::from(requests)).await?;
            loop {
                let (kind, body) = conv.next().await?;
                match kind {
                    b'2' => {}
                    b'D' => {
                        sent_now += 1;
                        state.sent += 1;
                        outcome.rows += 1;
                        conv.to_client(message(kind, &body));
                    }
                    b's' => break,
                    b'C' => {
                        state.residual_open = false;
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
            if conv.failed() {
                break outcome;
            }
            if state.residual_open {
                // The client's row limit is reached.
                conv.to_client(message(b's', &[]));
                break outcome;
            }
        }
        if state.base_done {
            conv.to_client(message(b'C', &done_tag(&prepared.plan, state.sent)));
            snapshot::portal_done(conv).await?;
            break outcome;
        }
        // The next chunk of base rows from the client's (rewritten) portal.
        let mut requests = Vec::new();
        requests.extend_from_slice(&message(
            frontend::EXECUTE,
            &execute_body(portal, conv.chunking().rows),
        ));
        requests.extend_from_slice(&message(b'H', &[]));
        conv.send(Bytes::from(requests)).await?;
        let mut rows = Vec::new();
        loop {
            let (kind, body) = conv.next().await?;
            match kind {
                b'D' => rows.push(body),
                b's' => break,
                b'C' => {
                    state.base_done = true;
                    break;
                }
                b'E' => {
                    conv.to_client(message(b'E', &body));
                    conv.mark_failed();
                    break;
                }
                _ => conv.to_client(message(kind, &body)),
            }
        }
        if conv.failed() {
            break outcome;
        }
        if rows.is_empty() {
            continue;
        }
        let ours = match score_rows(conv, block, shape, &rows, &memo, &mut outcome).await? {
            Ok(params) => params,
            Err(error) => {
                conv.fail_execute(error).await?;
                break outcome;
            }
        };
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
                break outcome;
            }
        };
        // The previous chunk's residual portal is done; its name is reused.
        let mut requests = Vec::new();
        requests.extend_from_slice(&message(frontend::CLOSE, &named(b'P', &residual_portal)));
        requests.extend_from_slice(&message(frontend::BIND, &bind));
        requests.extend_from_slice(&message(b'H', &[]));
        conv.send(Bytes::from(requests)).await?;
        let mut bound_ok = true;
        let mut answers = 0;
        while answers < 2 {
            let (kind, body) = conv.next().await?;
            match kind {
                b'3' | b'2' => answers += 1,
                b'E' => {
                    conv.to_client(message(b'E', &body));
                    conv.mark_failed();
                    bound_ok = false;
                    break;
                }
                _ => conv.to_client(message(kind, &body)),
            }
        }
        if !bound_ok {
            break outcome;
        }
        state.residual_open = true;
    };
    finish_execute(conv, portal, state, outcome).await
}

/// Remembers where the portal stands for the client's next Execute.
async fn finish_execute(
    conv: &mut Conversation<'_>,
    portal: &str,
    state: ChunkProgress,
    outcome: Outcome,
) -> Result<Outcome, SessionError> {
    if let Some(p) = conv.registry().portals.get_mut(portal) {
        p.chunked = state;
        p.started = true;
    }
    conv.flush().await?;
    Ok(outcome)
}
