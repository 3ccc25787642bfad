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
use crate::enrich::budget::Charge;
use crate::enrich::{CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::sql::finish::{BlockPlan, CarriedType, Described, FinishPlan};

mod chunked;
mod prepared;
mod snapshot;
mod wire;

pub use chunked::ChunkedState;
use chunked::{run_chunked, run_chunked_execute};
pub use prepared::{handle_parse, run_execute, Prepared};
pub(crate) use snapshot::sync_upstream;
pub use snapshot::{end_snapshot, handle_bind};
use wire::{array, execute_body, named_body, only_row_functions, shape, Shape};
pub(crate) use wire::{named, parse_body};

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
    let Some(wrap) = begin_snapshot(relay, !plan.writes()).await? else {
        return ready(relay, b"I", outcome).await;
    };
    let streams = match &plan.row_local {
        Some(functions) => match only_row_functions(relay, functions, true).await? {
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
    let failed = report(relay, failure, wrap).await?;
    finish_query(relay, wrap, failed, outcome).await
}

/// Outside a transaction block, opens pgenrich's hidden snapshot transaction (REPEATABLE READ,
/// and READ ONLY if `read_only`) so that every phase sees one snapshot; inside one, the client's
/// is used. Whether pgenrich opened one; `None` if it could not (the error went to the client).
pub(crate) async fn begin_snapshot(
    relay: &mut Relay,
    read_only: bool,
) -> Result<Option<bool>, SessionError> {
    if relay.tracker.status() != b'I' {
        return Ok(Some(false));
    }
    match hidden_query(relay, snapshot_begin(read_only)).await? {
        None => Ok(Some(true)),
        Some(error) => {
            relay.push_to_client(message(b'E', &error));
            Ok(None)
        }
    }
}

/// The statement opening pgenrich's hidden snapshot transaction.
pub(crate) fn snapshot_begin(read_only: bool) -> &'static str {
    if read_only {
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    } else {
        "BEGIN ISOLATION LEVEL REPEATABLE READ"
    }
}

/// Reports how a statement ended; whether it failed. pgenrich's own error in the client's
/// transaction (not `own_transaction`) first aborts it as a native error would.
pub(crate) async fn report(
    relay: &mut Relay,
    failure: Option<Failure>,
    own_transaction: bool,
) -> Result<bool, SessionError> {
    Ok(match failure {
        None => false,
        Some(Failure::Relayed) => true,
        Some(Failure::Ours(error)) => {
            if !own_transaction {
                abort_client_transaction(relay).await?;
            }
            relay.push_to_client(error.encode());
            true
        }
    })
}

/// Runs `plan` as one statement of a multi-statement Query, inside the transaction the caller
/// holds open: its answer goes to the client but no ReadyForQuery; an inference error aborts the
/// transaction as a native error would. Whether it failed.
pub(crate) async fn run_in_transaction(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &FinishPlan,
    outcome: &mut Outcome,
) -> Result<bool, SessionError> {
    let failure = run_phases(relay, executor, plan, outcome).await?;
    report(relay, failure, false).await
}

/// Ends pgenrich's hidden transaction (if it began one; rolled back if `roll_back`) and answers
/// ReadyForQuery.
pub(crate) async fn finish_query(
    relay: &mut Relay,
    wrap: bool,
    roll_back: bool,
    outcome: Outcome,
) -> Result<Outcome, SessionError> {
    if wrap {
        let end = if roll_back { "ROLLBACK" } else { "COMMIT" };
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
pub(crate) enum Failure {
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

/// The DataRows of requests just sent (ended by Sync), up to ReadyForQuery; the other answers
/// pgenrich's requests get are dropped, notices and the like relayed, an error relayed.
pub(crate) async fn fetch_rows(relay: &mut Relay) -> Result<Result<Rows, Failure>, SessionError> {
    let mut rows = Held::new(relay);
    let failed = collect(relay, |kind, body| match kind {
        b'D' => {
            rows.push(body);
            true
        }
        b'1' | b'2' | b'3' | b'C' => true,
        _ => false,
    })
    .await?;
    Ok(if failed {
        Err(Failure::Relayed)
    } else {
        rows.into_rows().map_err(Failure::Ours)
    })
}

/// Base rows held for a statement that cannot stream, up to `max_buffered_bytes` and within the
/// process's `max_ml_memory`: past either they are dropped as they arrive (the rest of the result
/// is still read, so the session stays in step) and the statement fails with 54000 (53200)
/// instead of exhausting memory.
pub(crate) struct Held {
    rows: Vec<Bytes>,
    limit: usize,
    charge: Charge,
    over: Option<Over>,
}

#[derive(Clone, Copy)]
enum Over {
    Statement,
    Process,
}

/// Rows a statement holds, charged to the process's budget until dropped.
pub(crate) struct Rows {
    rows: Vec<Bytes>,
    _charge: Charge,
}

impl std::ops::Deref for Rows {
    type Target = [Bytes];

    fn deref(&self) -> &[Bytes] {
        &self.rows
    }
}

impl Held {
    pub(crate) fn new(relay: &Relay) -> Held {
        Held {
            rows: Vec::new(),
            limit: relay.max_buffered_bytes(),
            charge: relay.memory().charge(),
            over: None,
        }
    }

    pub(crate) fn push(&mut self, row: &Bytes) {
        if self.over.is_some() {
            return;
        }
        // The rows, and the residual's parameters built from them while they are still held.
        let cost = 2 * row.len();
        if self.charge.bytes() + cost > self.limit {
            self.over = Some(Over::Statement);
        } else if !self.charge.try_add(cost) {
            self.over = Some(Over::Process);
        } else {
            self.rows.push(row.clone());
            return;
        }
        self.rows = Vec::new();
        drop(self.charge.take());
    }

    pub(crate) fn into_rows(self) -> Result<Rows, ErrorMessage> {
        let hint = "Filter the rows in WHERE, or raise max_buffered_bytes. Statements without \
                    grouping, DISTINCT, windows, ORDER BY or LIMIT stream in chunks and hold no \
                    more than a few chunks.";
        match self.over {
            None => Ok(Rows {
                rows: self.rows,
                _charge: self.charge,
            }),
            Some(Over::Statement) => Err(ErrorMessage::error(
                SqlState::ProgramLimitExceeded,
                format!(
                    "the base rows of this ML statement exceed pgenrich's max_buffered_bytes ({} bytes)",
                    self.limit
                ),
            )
            .with_hint(hint)),
            Some(Over::Process) => Err(ErrorMessage::error(
                SqlState::OutOfMemory,
                "pgenrich's memory for ML statements (max_ml_memory) is in use by other statements",
            )
            .with_hint("Try again later, or raise max_ml_memory.")),
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
    let rows = match fetch_rows(relay).await? {
        Ok(rows) => rows,
        Err(failure) => return Ok(Err(failure)),
    };

    // 4. Inference, stopped by a cancel request or the client hanging up.
    Ok(score_rows(
        relay,
        executor,
        plan,
        shape,
        &rows,
        &Memo::new(relay.memory()),
        outcome,
    )
    .await?
    .map_err(Failure::Ours))
}

/// Scores base rows (`memo`: the inputs scored so far); the residual's parameters for them, or
/// pgenrich's error for the client.
async fn score_rows(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    plan: &BlockPlan,
    shape: &Shape,
    rows: &[Bytes],
    memo: &Memo,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Vec<u8>>, ErrorMessage>, SessionError> {
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    outcome.base_rows += parsed.len() as u64;
    let started = std::time::Instant::now();
    let results = match score(relay, executor, plan, &parsed, memo, outcome).await? {
        Ok(results) => results,
        Err(error) => return Ok(Err(error)),
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
