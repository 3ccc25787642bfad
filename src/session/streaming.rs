//! Streaming enrichment of one planned ML statement on the client's own upstream session.
//!
//! The base statement runs as a portal fetched `chunk_rows` at a time (Execute with a row limit,
//! Flush). As soon as a chunk has arrived the next one is requested, and the chunk's ML inputs go
//! to the executor in a separate task, so the database produces the next chunk while the models
//! run. Enriched rows reach the client in the database's order; at most `chunks_in_flight` chunks
//! are in inference while the next one is fetched.
//!
//! Entry points: [`run_query`] (a simple-protocol Query, up to ReadyForQuery),
//! [`run_statement`] (one statement of a multi-statement Query), [`handle_parse`] and
//! [`run_execute`] (the extended protocol).
//!
//! Failures keep PostgreSQL's semantics: an upstream error is relayed as it came; an inference
//! error (or a cancel) makes the upstream fail a stand-in message so that the implicit
//! transaction or transaction block is aborted exactly as by a native error, and the client gets
//! pgenrich's error in its place.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::AbortOnDropHandle;

use crate::enrich::budget::Charge;
use crate::enrich::{CallError, CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::session::conversation::requests::execute;
use crate::session::conversation::{canceled, Conversation, Outcome};
use crate::session::kept::Kept;
use crate::session::rows::{
    float8_array, message, sentiment_record, sentiment_value, split_row, Column, Layout,
};
use crate::session::scoring::{call_error, infer, Memo, Results};
use crate::session::statements::{MlPortal, MlStatement, Prepared};
use crate::sql::plan::{Field, StreamingPlan};

/// A chunk in inference on the ML runtime: its enriched DataRows and what the calls cost.
/// Dropping it (the statement ended early, the client went away) stops its service calls.
type ChunkTask = AbortOnDropHandle<Result<(Bytes, usize, CallStats), CallError>>;

/// Everything needed to enrich the rows of one portal.
struct Enrichment {
    plan: Arc<StreamingPlan>,
    layout: Arc<Layout>,
    /// The client's format per client column.
    formats: Arc<Vec<i16>>,
}

/// How streaming a portal ended.
enum End {
    /// CommandComplete from the upstream (its body).
    Complete(Bytes),
    /// The row limit of an Execute was reached.
    Suspended,
    /// The upstream reported an error (its body); it now skips to Sync.
    UpstreamError(Bytes),
    /// pgenrich stopped the statement; the upstream portal is idle, not failed.
    Failed(ErrorMessage),
}

/// Streams the already bound upstream `portal`: fetches `chunk_rows` rows at a time (fewer at
/// the end of a client's row `limit`, never more), cuts chunks at `chunk_rows` rows or
/// `chunk_bytes` bytes, enriches them and queues the rows for the client. Completion messages
/// are left to the caller. Memory stays bounded whatever the limit or the row size: the upstream
/// is not read while `chunks_in_flight` chunks wait for inference, nor while the client is not
/// reading ([`Conversation::next`]).
async fn stream(
    conv: &mut Conversation<'_>,
    enrichment: &Enrichment,
    portal: &str,
    limit: Option<usize>,
    outcome: &mut Outcome,
) -> Result<End, SessionError> {
    let chunking = conv.chunking();
    let executor = Arc::clone(conv.executor());
    // Rows asked of the upstream so far; the next Execute asks for at most a chunk more.
    let mut requested = 0usize;
    let next_fetch = |requested: usize| match limit {
        Some(limit) => chunking.rows.min(limit - requested),
        None => chunking.rows,
    };
    let fetch = next_fetch(requested);
    requested += fetch;
    conv.send(execute(portal, fetch)).await?;
    let memo = Arc::new(conv.new_memo());
    let mut rows: Vec<Bytes> = Vec::new();
    // The rows read for the next chunk (its bytes are the charge's), charged to the process's
    // budget until delivered.
    let mut charge = conv.memory().charge();
    let mut pending: VecDeque<(ChunkTask, Charge)> = VecDeque::new();
    // The budget was used up: wait for chunks in inference (or others') to free some.
    let mut starved = false;
    let mut delivered = 0u64;
    let mut executing = true;
    let mut end: Option<End> = None;
    // Chunks cut from the rows read, to go to inference once they have a process-wide slot.
    let mut cut: Vec<(Vec<Bytes>, Charge)> = Vec::new();
    let spawn = |rows: Vec<Bytes>, slot: OwnedSemaphorePermit| {
        let (owned, plan, layout, formats, memo) = (
            Arc::clone(&executor),
            Arc::clone(&enrichment.plan),
            Arc::clone(&enrichment.layout),
            Arc::clone(&enrichment.formats),
            Arc::clone(&memo),
        );
        executor.spawn(async move {
            let _slot = slot;
            enrich_chunk(&owned, &plan, &layout, &formats, &memo, rows).await
        })
    };
    loop {
        // Finished chunks go out in order, keeping at most `in_flight` in inference.
        while pending.len() > chunking.in_flight || ((!executing || starved) && !pending.is_empty())
        {
            let Some((front, _held)) = pending.pop_front() else {
                break;
            };
            // Leaving the wait any other way drops (so aborts) the chunk.
            let failure = match conv.guard(front).await? {
                None => Some(canceled()),
                Some(Ok(Ok((out, rows, stats)))) => {
                    outcome.rows += rows as u64;
                    delivered += rows as u64;
                    outcome.add_calls(&stats);
                    conv.to_client(out);
                    conv.flush_soft().await?;
                    None
                }
                Some(Ok(Err(error))) => Some(call_error(error, &enrichment.plan.calls)),
                Some(Err(_)) => Some(ErrorMessage::error(
                    SqlState::ExternalRoutineException,
                    "ML evaluation failed unexpectedly",
                )),
            };
            if let Some(error) = failure {
                pending.clear();
                if executing {
                    conv.drain_execute().await?;
                }
                return Ok(End::Failed(error));
            }
        }
        if !executing && pending.is_empty() {
            return Ok(match end {
                // The upstream's tag counts its last fetch only; the client's counts its Execute.
                Some(End::Complete(tag)) => End::Complete(select_tag(tag, delivered)),
                other => other.unwrap_or(End::Suspended),
            });
        }
        if std::mem::take(&mut starved) {
            // This statement holds nothing now: read on once others have freed some.
            let memory = Arc::clone(conv.memory());
            if conv.guard(memory.room()).await?.is_none() {
                conv.drain_execute().await?;
                return Ok(End::Failed(canceled()));
            }
        }
        let Some((kind, body)) = conv.next_or_cancel().await? else {
            pending.clear();
            if executing {
                conv.drain_execute().await?;
            }
            return Ok(End::Failed(canceled()));
        };
        match kind {
            b'D' => {
                if !charge.try_add(body.len()) {
                    // Over max_ml_memory: what is read goes to inference, and reading waits.
                    if !rows.is_empty() {
                        cut.push((std::mem::take(&mut rows), charge.take()));
                    }
                    charge.force_add(body.len());
                    starved = true;
                }
                rows.push(body);
                if rows.len() >= chunking.rows || charge.bytes() >= chunking.bytes {
                    // A full chunk goes to inference while the Execute's answer goes on.
                    cut.push((std::mem::take(&mut rows), charge.take()));
                }
            }
            b's' | b'C' => {
                let more = kind == b's' && limit.is_none_or(|limit| requested < limit);
                if more {
                    let fetch = next_fetch(requested);
                    requested += fetch;
                    conv.send(execute(portal, fetch)).await?;
                } else {
                    executing = false;
                    end = Some(if kind == b'C' {
                        End::Complete(body)
                    } else {
                        End::Suspended
                    });
                }
                if !rows.is_empty() {
                    cut.push((std::mem::take(&mut rows), charge.take()));
                }
            }
            b'E' => {
                pending.clear();
                return Ok(End::UpstreamError(body));
            }
            // Notices, notifications, parameter changes: pass on.
            _ => conv.to_client(message(kind, &body)),
        }
        for (rows, held) in cut.drain(..) {
            // Rows are read on only once a slot is free (the chunks holding them are in
            // inference, so they free them whatever the clients do).
            let Some(slot) = conv.guard(executor.chunk_slot()).await? else {
                pending.clear();
                if executing {
                    conv.drain_execute().await?;
                }
                return Ok(End::Failed(canceled()));
            };
            pending.push_back((spawn(rows, slot), held));
        }
    }
}

/// A `SELECT n` (or a cursor's `FETCH n`) CommandComplete body with `rows` as n (other tags as
/// they are).
fn select_tag(tag: Bytes, rows: u64) -> Bytes {
    if tag.starts_with(b"SELECT ") {
        Bytes::from(format!("SELECT {rows}\0"))
    } else if tag.starts_with(b"FETCH ") {
        Bytes::from(format!("FETCH {rows}\0"))
    } else {
        tag
    }
}

/// Runs `plan` for a simple-protocol Query: everything up to and including ReadyForQuery is sent
/// to the client.
pub async fn run_query(
    conv: &mut Conversation<'_>,
    plan: StreamingPlan,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let (_, ready) = run_statement(conv, plan, &mut outcome).await?;
    conv.to_client(message(b'Z', &ready));
    conv.flush().await?;
    Ok(outcome)
}

/// Runs one planned statement on the unnamed portal, then Syncs. Everything goes to the client
/// but the final ReadyForQuery, whose body is returned with whether the statement failed.
pub async fn run_statement(
    conv: &mut Conversation<'_>,
    plan: StreamingPlan,
    outcome: &mut Outcome,
) -> Result<(bool, Bytes), SessionError> {
    let plan = Arc::new(plan);
    let mut parse = BytesMut::new();
    parse.put_u8(0);
    parse.put_slice(plan.base_sql.as_bytes());
    parse.put_u8(0);
    parse.put_u16(0);
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::PARSE, &parse));
    // Bind the unnamed portal: no parameters, all results in text.
    requests.put_slice(&message(frontend::BIND, &[0, 0, 0, 0, 0, 0, 0, 0]));
    requests.put_slice(&message(frontend::DESCRIBE, b"P\0"));
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    let mut layout = None;
    while layout.is_none() {
        let (kind, body) = conv.next().await?;
        match kind {
            b'1' | b'2' => {}
            b'T' => layout = Some(Layout::new(&plan, &body)),
            b'E' => {
                conv.to_client(message(b'E', &body));
                return Ok((true, conv.sync().await?));
            }
            // No rows to enrich (a FETCH from a cursor that no longer exists): it runs as it is.
            b'n' => {
                conv.send(execute("", 0)).await?;
                loop {
                    let (kind, body) = conv.next().await?;
                    conv.to_client(message(kind, &body));
                    if matches!(kind, b'C' | b'E' | b'I') {
                        return Ok((kind == b'E', conv.sync().await?));
                    }
                }
            }
            _ => conv.to_client(message(kind, &body)),
        }
    }
    let layout = Arc::new(layout.unwrap_or_else(|| Layout::new(&plan, &[])));
    let formats = Arc::new(vec![0i16; layout.columns.len()]);
    conv.to_client(message(b'T', &layout.row_description(&formats)));
    let enrichment = Enrichment {
        plan,
        layout,
        formats,
    };
    let failed = match stream(conv, &enrichment, "", None, outcome).await? {
        End::Complete(tag) => {
            conv.to_client(message(b'C', &tag));
            false
        }
        End::Suspended => false,
        End::UpstreamError(body) => {
            conv.to_client(message(b'E', &body));
            true
        }
        End::Failed(error) => {
            conv.fail_upstream(Some(error)).await?;
            true
        }
    };
    Ok((failed, conv.sync().await?))
}

/// Prepares an ML statement upstream and answers the client's Parse; `kept` is the statement's
/// charge.
pub async fn handle_parse(
    conv: &mut Conversation<'_>,
    name: String,
    types: Bytes,
    plan: StreamingPlan,
    kept: Option<Kept>,
) -> Result<(), SessionError> {
    let upstream_name = format!("pgenrich.s.{name}");
    let mut requests = BytesMut::new();
    // Replace an earlier statement of the same client name (always so for the unnamed one).
    let mut close = vec![b'S'];
    close.extend_from_slice(upstream_name.as_bytes());
    close.push(0);
    requests.put_slice(&message(frontend::CLOSE, &close));
    let mut parse = upstream_name.as_bytes().to_vec();
    parse.push(0);
    parse.extend_from_slice(plan.base_sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&types);
    requests.put_slice(&message(frontend::PARSE, &parse));
    requests.put_slice(&message(frontend::DESCRIBE, &close));
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    let plan = Arc::new(plan);
    let mut parameters = Bytes::new();
    loop {
        let (kind, body) = conv.next().await?;
        match kind {
            b'3' | b'1' => {}
            b't' => parameters = body,
            b'T' | b'n' => {
                let layout = Arc::new(Layout::new(
                    &plan,
                    if kind == b'T' { &body } else { &[0, 0] },
                ));
                let statement = MlStatement {
                    upstream_name,
                    parameters,
                    prepared: Prepared::Streaming { plan, layout },
                    kept,
                };
                break conv.parse_accepted(name, statement);
            }
            // The database rejected the base statement: its error answers the Parse.
            b'E' => break conv.parse_refused(&name, &body),
            _ => conv.to_client(message(kind, &body)),
        }
    }
    Ok(())
}

/// Runs a client's Execute of a streaming ML portal (extended protocol): rows, then
/// CommandComplete or PortalSuspended; errors leave the upstream skipping to the client's Sync,
/// as PostgreSQL would.
pub async fn run_execute(
    conv: &mut Conversation<'_>,
    portal: &str,
    bound: &MlPortal,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let Prepared::Streaming { plan, layout } = &bound.statement.prepared else {
        unreachable!("only streaming portals come here")
    };
    let enrichment = Enrichment {
        plan: Arc::clone(plan),
        layout: Arc::clone(layout),
        formats: Arc::clone(&bound.formats),
    };
    let limit = (max_rows > 0).then_some(max_rows);
    match stream(conv, &enrichment, portal, limit, &mut outcome).await? {
        End::Complete(tag) => conv.to_client(message(b'C', &tag)),
        End::Suspended => conv.to_client(message(b's', &[])),
        End::UpstreamError(body) => {
            conv.to_client(message(b'E', &body));
            conv.mark_failed();
        }
        End::Failed(error) => conv.fail_execute(error).await?,
    }
    conv.flush().await?;
    Ok(outcome)
}

async fn enrich_chunk(
    executor: &Executor,
    plan: &StreamingPlan,
    layout: &Layout,
    formats: &[i16],
    memo: &Memo,
    rows: Vec<Bytes>,
) -> Result<(Bytes, usize, CallStats), CallError> {
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    let mut stats = CallStats::default();
    let results = infer(executor, &plan.calls, &parsed, memo, &mut stats).await?;
    // All of the chunk's DataRows in one buffer: one allocation, one queue entry.
    let mut out = BytesMut::with_capacity(rows.iter().map(|r| r.len() + 16).sum());
    for (r, row) in parsed.iter().enumerate() {
        let start = out.len();
        out.put_u8(b'D');
        out.put_u32(0); // length, set below
        out.put_u16(layout.columns.len() as u16);
        for (position, column) in layout.columns.iter().enumerate() {
            let format = formats.get(position).copied().unwrap_or(0);
            let value: Option<std::borrow::Cow<'_, [u8]>> = match *column {
                Column::Base(i) => row
                    .get(i)
                    .copied()
                    .flatten()
                    .map(std::borrow::Cow::Borrowed),
                Column::Ml(p) => {
                    let placeholder = &plan.placeholders[p];
                    match (&results[placeholder.call], placeholder.field) {
                        (Results::Sentiment(values), Field::Record) => {
                            Some(std::borrow::Cow::Owned(sentiment_record(values[r], format)))
                        }
                        (Results::Sentiment(values), field) => values[r]
                            .map(|s| std::borrow::Cow::Owned(sentiment_value(s, field, format))),
                        (Results::Text(values), _) => values[r]
                            .as_deref()
                            .map(|t| std::borrow::Cow::Borrowed(t.as_bytes())),
                        (Results::Embedding(values), _) => values[r]
                            .as_deref()
                            .map(|v| std::borrow::Cow::Owned(float8_array(v, format))),
                    }
                }
            };
            match value {
                Some(bytes) => {
                    out.put_i32(bytes.len() as i32);
                    out.put_slice(&bytes);
                }
                None => out.put_i32(-1),
            }
        }
        let len = (out.len() - start - 1) as u32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
    Ok((out.freeze(), parsed.len(), stats))
}
