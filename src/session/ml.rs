//! Streaming enrichment of one planned ML statement on the client's own upstream session.
//!
//! The base statement runs as a portal fetched `chunk_rows` at a time (Execute with a row limit,
//! Flush). As soon as a chunk has arrived the next one is requested, and the chunk's ML inputs go
//! to the executor in a separate task, so the database produces the next chunk while the models
//! run. Enriched rows reach the client in the database's order; at most `chunks_in_flight` chunks
//! are in inference while the next one is fetched.
//!
//! Failures keep PostgreSQL's semantics: an upstream error is relayed as it came; an inference
//! error (or a cancel) makes the upstream fail a stand-in message so that the implicit
//! transaction or transaction block is aborted exactly as by a native error, and the client gets
//! pgenrich's error in its place.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::task::AbortOnDropHandle;

use crate::enrich::budget::Charge;
use crate::enrich::{CallError, CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::session::relay::Relay;
use crate::session::rows::{message, sentiment_value, split_row, Column, Layout};
pub(super) use crate::session::scoring::{infer, Memo, Results};
use crate::sql::plan::StreamingPlan;

/// A chunk in inference on the ML runtime: its enriched DataRows and what the calls cost.
/// Dropping it (the statement ended early, the client went away) stops its service calls.
type ChunkTask = AbortOnDropHandle<Result<(Bytes, usize, CallStats), CallError>>;

/// How an ML statement ended, for the session's logs.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: u64,
    pub stats: CallStats,
    /// Base rows read (two-phase statements).
    pub base_rows: u64,
    /// Time spent waiting for inference (two-phase statements).
    pub inference: std::time::Duration,
}

/// Chunking settings.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    pub rows: usize,
    pub in_flight: usize,
    /// Base-row bytes that end a chunk before `rows` rows.
    pub bytes: usize,
}

/// Everything needed to enrich the rows of one portal.
pub struct Enrichment {
    pub plan: Arc<StreamingPlan>,
    pub layout: Arc<Layout>,
    /// The client's format per client column.
    pub formats: Arc<Vec<i16>>,
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

/// Execute `portal` for `rows` more rows (0: all), then Flush.
fn execute(portal: &str, rows: usize) -> Bytes {
    let mut body = portal.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(rows.min(i32::MAX as usize) as i32).to_be_bytes());
    let mut out = BytesMut::new();
    out.put_slice(&message(frontend::EXECUTE, &body));
    out.put_slice(&message(b'H', &[]));
    out.freeze()
}

/// The stand-in Execute that makes the upstream fail (and skip to Sync) where pgenrich failed.
fn standin() -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(&crate::protocol::standin_execute());
    out.put_slice(&message(b'H', &[]));
    out.freeze()
}

fn canceled() -> ErrorMessage {
    ErrorMessage::error(
        SqlState::QueryCanceled,
        "canceling statement due to user request",
    )
}

/// Streams the already bound upstream `portal`: fetches `chunking.rows` rows at a time (fewer
/// at the end of a client's row `limit`, never more), cuts chunks at `chunking.rows` rows or
/// `chunking.bytes` bytes, enriches them and queues the rows for the client. Completion messages
/// are left to the caller. Memory stays bounded whatever the limit or the row size: the upstream
/// is not read while `chunking.in_flight` chunks wait for inference, nor while the client is not
/// reading ([`Relay::next_upstream_message`]).
async fn stream(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    enrichment: &Enrichment,
    portal: &str,
    chunking: Chunking,
    limit: Option<usize>,
    outcome: &mut Outcome,
) -> Result<End, SessionError> {
    // Rows asked of the upstream so far; the next Execute asks for at most a chunk more.
    let mut requested = 0usize;
    let next_fetch = |requested: usize| match limit {
        Some(limit) => chunking.rows.min(limit - requested),
        None => chunking.rows,
    };
    let fetch = next_fetch(requested);
    requested += fetch;
    relay.send_upstream_now(execute(portal, fetch)).await?;
    let memo = Arc::new(Memo::new(relay.memory()));
    let cancelled = relay.cancel_notify();
    let mut rows: Vec<Bytes> = Vec::new();
    // The rows read for the next chunk (its bytes are the charge's), charged to the process's
    // budget until delivered.
    let mut charge = relay.memory().charge();
    let mut pending: VecDeque<(ChunkTask, Charge)> = VecDeque::new();
    // The budget was used up: wait for chunks in inference (or others') to free some.
    let mut starved = false;
    let mut delivered = 0u64;
    let mut executing = true;
    let mut end: Option<End> = None;
    let spawn = |rows: Vec<Bytes>| {
        let (owned, plan, layout, formats, memo) = (
            Arc::clone(executor),
            Arc::clone(&enrichment.plan),
            Arc::clone(&enrichment.layout),
            Arc::clone(&enrichment.formats),
            Arc::clone(&memo),
        );
        executor
            .spawn(async move { enrich_chunk(&owned, &plan, &layout, &formats, &memo, rows).await })
    };
    loop {
        // Finished chunks go out in order, keeping at most `in_flight` in inference.
        while pending.len() > chunking.in_flight || ((!executing || starved) && !pending.is_empty())
        {
            let Some((front, _held)) = pending.pop_front() else {
                break;
            };
            // Leaving the select any other way drops (so aborts) the chunk.
            let joined = tokio::select! {
                joined = front => Some(joined),
                _ = cancelled.notified() => None,
                // A client that hung up stops the statement at once, not at the next write.
                gone = relay.client_gone() => return Err(gone),
            };
            let failure = match joined {
                None => Some(canceled()),
                Some(Ok(Ok((out, rows, stats)))) => {
                    outcome.rows += rows as u64;
                    delivered += rows as u64;
                    outcome.stats.rows += stats.rows;
                    outcome.stats.calls += stats.calls;
                    outcome.stats.duplicates_saved += stats.duplicates_saved;
                    relay.push_to_client(out);
                    relay.flush_client_soft().await?;
                    None
                }
                Some(Ok(Err(error))) => {
                    let function = enrichment
                        .plan
                        .calls
                        .first()
                        .map(|c| c.function.name())
                        .unwrap_or("ML call");
                    Some(error.error.to_client(function, &error.target))
                }
                Some(Err(_)) => Some(ErrorMessage::error(
                    SqlState::ExternalRoutineException,
                    "ML evaluation failed unexpectedly",
                )),
            };
            if let Some(error) = failure {
                pending.clear();
                if executing {
                    drain_execute(relay).await?;
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
            let memory = Arc::clone(relay.memory());
            tokio::select! {
                _ = memory.room() => {}
                _ = cancelled.notified() => {
                    drain_execute(relay).await?;
                    return Ok(End::Failed(canceled()));
                }
                gone = relay.client_gone() => return Err(gone),
            }
        }
        let (kind, body) = tokio::select! {
            next = relay.next_upstream_message() => next?,
            _ = cancelled.notified() => {
                pending.clear();
                if executing {
                    drain_execute(relay).await?;
                }
                return Ok(End::Failed(canceled()));
            }
        };
        match kind {
            b'D' => {
                if !charge.try_add(body.len()) {
                    // Over max_ml_memory: what is read goes to inference, and reading waits.
                    if !rows.is_empty() {
                        pending.push_back((spawn(std::mem::take(&mut rows)), charge.take()));
                    }
                    charge.force_add(body.len());
                    starved = true;
                }
                rows.push(body);
                if rows.len() >= chunking.rows || charge.bytes() >= chunking.bytes {
                    // A full chunk goes to inference while the Execute's answer goes on.
                    pending.push_back((spawn(std::mem::take(&mut rows)), charge.take()));
                }
            }
            b's' | b'C' => {
                let more = kind == b's' && limit.is_none_or(|limit| requested < limit);
                if more {
                    let fetch = next_fetch(requested);
                    requested += fetch;
                    relay.send_upstream_now(execute(portal, fetch)).await?;
                } else {
                    executing = false;
                    end = Some(if kind == b'C' {
                        End::Complete(body)
                    } else {
                        End::Suspended
                    });
                }
                if !rows.is_empty() {
                    pending.push_back((spawn(std::mem::take(&mut rows)), charge.take()));
                }
            }
            b'E' => {
                pending.clear();
                return Ok(End::UpstreamError(body));
            }
            // Notices, notifications, parameter changes: pass on.
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

/// A `SELECT n` CommandComplete body with `rows` as n (other tags as they are).
fn select_tag(tag: Bytes, rows: u64) -> Bytes {
    if tag.starts_with(b"SELECT ") {
        Bytes::from(format!("SELECT {rows}\0"))
    } else {
        tag
    }
}

/// Reads the rest of an outstanding Execute's answer, discarding its rows.
async fn drain_execute(relay: &mut Relay) -> Result<(), SessionError> {
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b's' | b'C' | b'E' => return Ok(()),
            b'D' => {}
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

/// Makes the upstream fail where pgenrich did (so it skips to Sync and aborts the transaction)
/// and sends `error` to the client in place of the upstream's (`None`: the client has been told).
pub(super) async fn fail_upstream(
    relay: &mut Relay,
    error: Option<ErrorMessage>,
) -> Result<(), SessionError> {
    relay.send_upstream_now(standin()).await?;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            // The stand-in's error (or 25P02 in an aborted block) is replaced by ours.
            b'E' => break,
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
    if let Some(error) = error {
        relay.push_to_client(error.encode());
    }
    Ok(())
}

/// Runs `plan` for a simple-protocol Query: everything up to and including ReadyForQuery is sent
/// to the client.
pub async fn run_query(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
    plan: StreamingPlan,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let (_, ready) = run_one(relay, executor, chunking, plan, &mut outcome).await?;
    relay.push_to_client(message(b'Z', &ready));
    relay.flush_client().await?;
    Ok(outcome)
}

/// Runs one planned statement on the unnamed portal, then Syncs. Everything goes to the client
/// but the final ReadyForQuery, whose body is returned with whether the statement failed.
async fn run_one(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
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
    relay.send_upstream_now(requests.freeze()).await?;
    let mut layout = None;
    while layout.is_none() {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'1' | b'2' => {}
            b'T' => layout = Some(Layout::new(&plan, &body)),
            b'E' => {
                relay.push_to_client(message(b'E', &body));
                return Ok((true, sync(relay).await?));
            }
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
    let layout = Arc::new(layout.unwrap_or_else(|| Layout::new(&plan, &[])));
    let formats = Arc::new(vec![0i16; layout.columns.len()]);
    relay.push_to_client(message(b'T', &layout.row_description(&formats)));
    let enrichment = Enrichment {
        plan,
        layout,
        formats,
    };
    let failed = match stream(relay, executor, &enrichment, "", chunking, None, outcome).await? {
        End::Complete(tag) => {
            relay.push_to_client(message(b'C', &tag));
            false
        }
        End::Suspended => false,
        End::UpstreamError(body) => {
            relay.push_to_client(message(b'E', &body));
            true
        }
        End::Failed(error) => {
            fail_upstream(relay, Some(error)).await?;
            true
        }
    };
    Ok((failed, sync(relay).await?))
}

/// Sends Sync and relays the upstream's answer up to ReadyForQuery, whose body it returns
/// instead of relaying.
async fn sync(relay: &mut Relay) -> Result<Bytes, SessionError> {
    relay
        .send_upstream_now(message(frontend::SYNC, &[]))
        .await?;
    until_ready(relay).await
}

/// Relays the upstream's messages up to ReadyForQuery, whose body it returns instead.
async fn until_ready(relay: &mut Relay) -> Result<Bytes, SessionError> {
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        if kind == b'Z' {
            relay.note_ready(&body);
            return Ok(body);
        }
        relay.push_to_client(message(kind, &body));
    }
}

/// Sends a Query pgenrich needs (BEGIN, COMMIT, ROLLBACK) and reads its answer, keeping it from
/// the client except for an error, whose body it returns.
pub(super) async fn hidden_query(
    relay: &mut Relay,
    sql: &str,
) -> Result<Option<Bytes>, SessionError> {
    let mut text = sql.as_bytes().to_vec();
    text.push(0);
    relay
        .send_upstream_now(message(frontend::QUERY, &text))
        .await?;
    let mut error = None;
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'Z' => {
                relay.note_ready(&body);
                return Ok(error);
            }
            b'E' => error = Some(body),
            b'N' | b'A' | b'S' => relay.push_to_client(message(kind, &body)),
            _ => {}
        }
    }
}

/// Runs a Query message of several statements, some with ML calls, as PostgreSQL runs a
/// multi-statement Query: in order, in one transaction (pgenrich's BEGIN/COMMIT when the session
/// is not in a transaction block), stopping at the first error.
pub async fn run_multi(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
    pieces: Vec<crate::sql::plan::Piece>,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let wrap = relay.tracker.status() == b'I';
    if wrap {
        if let Some(error) = hidden_query(relay, "BEGIN").await? {
            relay.push_to_client(message(b'E', &error));
            relay.push_to_client(message(b'Z', b"I"));
            relay.flush_client().await?;
            return Ok(outcome);
        }
    }
    let mut failed = false;
    let mut ready = Bytes::from_static(b"T");
    for piece in pieces {
        let (piece_failed, piece_ready) = match piece {
            crate::sql::plan::Piece::Ml(plan) => {
                run_one(relay, executor, chunking, plan, &mut outcome).await?
            }
            crate::sql::plan::Piece::Finish(plan) => {
                let failed =
                    super::finish::run_in_transaction(relay, executor, &plan, &mut outcome).await?;
                (failed, Bytes::copy_from_slice(&[relay.tracker.status()]))
            }
            crate::sql::plan::Piece::Plain(text) => {
                let mut query = text.into_bytes();
                query.push(0);
                relay
                    .send_upstream_now(message(frontend::QUERY, &query))
                    .await?;
                let ready = until_ready(relay).await?;
                (ready.first() == Some(&b'E'), ready)
            }
        };
        ready = piece_ready;
        if piece_failed || ready.first() == Some(&b'E') {
            failed = true;
            break;
        }
    }
    if wrap {
        let end = if failed { "ROLLBACK" } else { "COMMIT" };
        if let Some(error) = hidden_query(relay, end).await? {
            relay.push_to_client(message(b'E', &error));
        }
        ready = Bytes::from_static(b"I");
    }
    relay.note_ready(&ready);
    relay.push_to_client(message(b'Z', &ready));
    relay.flush_client().await?;
    Ok(outcome)
}

/// Runs a client's Execute of an ML portal (extended protocol): rows, then CommandComplete or
/// PortalSuspended; errors leave the upstream skipping to the client's Sync, as PostgreSQL would.
pub async fn run_execute(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunking: Chunking,
    enrichment: &Enrichment,
    portal: &str,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let limit = (max_rows > 0).then_some(max_rows);
    match stream(
        relay,
        executor,
        enrichment,
        portal,
        chunking,
        limit,
        &mut outcome,
    )
    .await?
    {
        End::Complete(tag) => relay.push_to_client(message(b'C', &tag)),
        End::Suspended => relay.push_to_client(message(b's', &[])),
        End::UpstreamError(body) => {
            relay.push_to_client(message(b'E', &body));
            relay.mark_extended_failed();
        }
        End::Failed(error) => {
            fail_upstream(relay, Some(error)).await?;
            relay.mark_extended_failed();
        }
    }
    relay.flush_client().await?;
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
                        (Results::Sentiment(values), field) => values[r]
                            .map(|s| std::borrow::Cow::Owned(sentiment_value(s, field, format))),
                        (Results::Text(values), _) => values[r]
                            .as_deref()
                            .map(|t| std::borrow::Cow::Borrowed(t.as_bytes())),
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
