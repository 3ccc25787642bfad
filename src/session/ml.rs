//! Streaming enrichment of one planned ML statement on the client's own upstream session.
//!
//! The base statement runs as an unnamed portal fetched `chunk_rows` at a time (Execute with a row
//! limit, Flush). As soon as a chunk has arrived the next one is requested, and the chunk's ML
//! inputs go to the executor in a separate task, so the database produces the next chunk while
//! the models run. Enriched rows reach the client in the database's order; at most
//! `chunks_in_flight` chunks are in inference while the next one is fetched.
//!
//! Failures keep PostgreSQL's semantics: an upstream error is relayed as it came; an inference
//! error (or a cancel) makes the upstream fail a stand-in message so that a transaction block is
//! aborted exactly as by a native error, and the client gets pgenrich's error in its place.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::backends::Sentiment;
use crate::enrich::{CallError, CallStats, Executor, InvokeInput, SentimentInput};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::session::relay::Relay;
use crate::session::tracker::STANDIN_NAME;
use crate::sql::plan::{Field, MlFunction, StreamingPlan};

/// PostgreSQL type OIDs of ML result columns.
const RECORD_OID: u32 = 2249;
const VARCHAR_OID: u32 = 1043;
const FLOAT4_OID: u32 = 700;

/// Where each client column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Base(usize),
    Ml(usize),
}

/// A chunk in inference: its enriched DataRows and what the calls cost.
type ChunkTask = tokio::task::JoinHandle<Result<(Vec<Bytes>, CallStats), CallError>>;

/// How an ML statement ended, for the session's logs.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: u64,
    pub stats: CallStats,
}

fn message(kind: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(kind);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
    out.freeze()
}

fn base_requests(plan: &StreamingPlan, chunk_rows: usize) -> Bytes {
    let mut parse = BytesMut::new();
    parse.put_u8(0);
    parse.put_slice(plan.base_sql.as_bytes());
    parse.put_u8(0);
    parse.put_u16(0);
    // Bind: unnamed portal and statement, no parameters, all results in text.
    let bind = [0u8, 0, 0, 0, 0, 0, 0, 0];
    let describe = [b'P', 0];
    let mut out = BytesMut::new();
    out.put_slice(&message(frontend::PARSE, &parse));
    out.put_slice(&message(frontend::BIND, &bind));
    out.put_slice(&message(frontend::DESCRIBE, &describe));
    out.put_slice(&execute(chunk_rows));
    out.freeze()
}

/// Execute the unnamed portal for `rows` more rows, then Flush.
fn execute(rows: usize) -> Bytes {
    let mut body = vec![0u8];
    body.extend_from_slice(&(rows.min(i32::MAX as usize) as i32).to_be_bytes());
    let mut out = BytesMut::new();
    out.put_slice(&message(frontend::EXECUTE, &body));
    out.put_slice(&message(b'H', &[]));
    out.freeze()
}

/// Runs `plan` for a simple-protocol Query: everything up to and including ReadyForQuery is sent
/// to the client.
pub async fn run_query(
    relay: &mut Relay,
    executor: &Arc<Executor>,
    chunk_rows: usize,
    chunks_in_flight: usize,
    plan: StreamingPlan,
) -> Result<Outcome, SessionError> {
    let plan = Arc::new(plan);
    let mut outcome = Outcome::default();
    relay
        .send_upstream_now(base_requests(&plan, chunk_rows))
        .await?;
    let mut layout: Option<Arc<Vec<Column>>> = None;
    let mut rows: Vec<Bytes> = Vec::new();
    let mut pending: VecDeque<ChunkTask> = VecDeque::new();
    let mut executing = true;
    let mut cancel = false;
    let memo = Arc::new(Memo::new());
    let cancelled = relay.cancel_notify();
    let failure: Option<ErrorMessage> = loop {
        // Rows of finished chunks go out in order, keeping at most one chunk in inference
        // while the next is fetched.
        while pending.len() > chunks_in_flight || (!executing && !pending.is_empty()) {
            let Some(front) = pending.pop_front() else {
                break;
            };
            let abort = front.abort_handle();
            let joined = tokio::select! {
                joined = front => Some(joined),
                _ = cancelled.notified() => None,
            };
            let Some(joined) = joined else {
                abort.abort();
                break_with(&mut pending);
                cancel = true;
                break;
            };
            match joined {
                Ok(Ok((out, stats))) => {
                    outcome.rows += out.len() as u64;
                    outcome.stats.rows += stats.rows;
                    outcome.stats.calls += stats.calls;
                    outcome.stats.duplicates_saved += stats.duplicates_saved;
                    for row in out {
                        relay.push_to_client(row);
                    }
                    relay.flush_client_soft().await?;
                }
                Ok(Err(error)) => {
                    let function = plan
                        .calls
                        .first()
                        .map(|c| c.function.name())
                        .unwrap_or("ML call");
                    break_with(&mut pending);
                    return finish_with_error(
                        relay,
                        executing,
                        error.error.to_client(function, &error.target),
                    )
                    .await
                    .map(|_| outcome);
                }
                Err(_) => {
                    break_with(&mut pending);
                    return finish_with_error(
                        relay,
                        executing,
                        ErrorMessage::error(
                            SqlState::ExternalRoutineException,
                            "ML evaluation failed unexpectedly",
                        ),
                    )
                    .await
                    .map(|_| outcome);
                }
            }
        }
        if cancel {
            break Some(canceled());
        }
        if !executing {
            if pending.is_empty() {
                break None;
            }
            // A cancel arrived while the last chunks were in inference.
            break_with(&mut pending);
            break Some(canceled());
        }
        let (kind, body) = tokio::select! {
            next = relay.next_upstream_message() => next?,
            _ = cancelled.notified() => {
                break_with(&mut pending);
                break Some(canceled());
            }
        };
        match kind {
            b'1' | b'2' => {}
            b'T' => {
                let (description, columns) = describe(&plan, &body);
                relay.push_to_client(message(b'T', &description));
                layout = Some(Arc::new(columns));
            }
            b'D' => rows.push(body),
            b's' | b'C' => {
                if kind == b's' {
                    relay.send_upstream_now(execute(chunk_rows)).await?;
                } else {
                    executing = false;
                }
                let chunk = std::mem::take(&mut rows);
                if let Some(layout) = &layout {
                    let (executor, plan, layout, memo) = (
                        Arc::clone(executor),
                        Arc::clone(&plan),
                        Arc::clone(layout),
                        Arc::clone(&memo),
                    );
                    pending.push_back(tokio::spawn(async move {
                        enrich_chunk(&executor, &plan, &layout, &memo, chunk).await
                    }));
                }
                if kind == b'C' {
                    // Hold the completion until the rows are out.
                    outcome_tag(relay, body);
                }
            }
            b'E' => {
                // The database refused or failed the statement: its error, as it came.
                break_with(&mut pending);
                relay.push_to_client(message(b'E', &body));
                relay
                    .send_upstream_now(message(frontend::SYNC, &[]))
                    .await?;
                relay_until_ready(relay).await?;
                return Ok(outcome);
            }
            // Notices, notifications, parameter changes: pass on.
            _ => relay.push_to_client(message(kind, &body)),
        }
    };
    match failure {
        None => {
            relay.release_held_completion();
            relay
                .send_upstream_now(message(frontend::SYNC, &[]))
                .await?;
            relay_until_ready(relay).await?;
            Ok(outcome)
        }
        Some(error) => finish_with_error(relay, executing, error)
            .await
            .map(|_| outcome),
    }
}

fn canceled() -> ErrorMessage {
    ErrorMessage::error(
        SqlState::QueryCanceled,
        "canceling statement due to user request",
    )
}

fn outcome_tag(relay: &mut Relay, body: Bytes) {
    relay.hold_completion(message(b'C', &body));
}

fn break_with<T>(pending: &mut VecDeque<tokio::task::JoinHandle<T>>) {
    for task in pending.drain(..) {
        task.abort();
    }
}

/// Stops the statement with `error`: lets an outstanding Execute finish, makes the upstream fail
/// a stand-in (so a transaction block is aborted), and sends `error` and ReadyForQuery.
async fn finish_with_error(
    relay: &mut Relay,
    executing: bool,
    error: ErrorMessage,
) -> Result<(), SessionError> {
    relay.drop_held_completion();
    if executing {
        loop {
            let (kind, body) = relay.next_upstream_message().await?;
            match kind {
                b's' | b'C' | b'E' => break,
                b'D' | b'1' | b'2' | b'T' | b'n' => {}
                _ => relay.push_to_client(message(kind, &body)),
            }
        }
    }
    let mut standin = vec![];
    standin.extend_from_slice(STANDIN_NAME.as_bytes());
    standin.push(0);
    standin.extend_from_slice(&0i32.to_be_bytes());
    relay
        .send_upstream_now(message(frontend::EXECUTE, &standin))
        .await?;
    relay
        .send_upstream_now(message(frontend::SYNC, &[]))
        .await?;
    relay.push_to_client(error.encode());
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            // The stand-in's own error (or 25P02 in an aborted block) is replaced by ours.
            b'E' => {}
            b'Z' => {
                relay.note_ready(&body);
                relay.push_to_client(message(b'Z', &body));
                relay.flush_client().await?;
                return Ok(());
            }
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

async fn relay_until_ready(relay: &mut Relay) -> Result<(), SessionError> {
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        relay.push_to_client(message(kind, &body));
        if kind == b'Z' {
            relay.note_ready(&body);
            relay.flush_client().await?;
            return Ok(());
        }
    }
}

/// The client's RowDescription for the base statement's, and where each column comes from.
fn describe(plan: &StreamingPlan, base: &[u8]) -> (Vec<u8>, Vec<Column>) {
    let fields = split_fields(base);
    let mut out = Vec::new();
    let mut columns = Vec::new();
    for (index, field) in fields.iter().enumerate().skip(plan.arg_columns) {
        let name_end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        match plan.placeholder(&field[..name_end]) {
            Some(placeholder) => {
                let position = plan
                    .placeholders
                    .iter()
                    .position(|p| p == placeholder)
                    .unwrap_or(0);
                let (oid, len) = match placeholder.field {
                    Field::Record => (RECORD_OID, -1i16),
                    Field::Sentiment | Field::Text => (VARCHAR_OID, -1),
                    Field::Confidence => (FLOAT4_OID, 4),
                };
                out.extend_from_slice(placeholder.name.as_bytes());
                out.push(0);
                out.extend_from_slice(&0u32.to_be_bytes());
                out.extend_from_slice(&0i16.to_be_bytes());
                out.extend_from_slice(&oid.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&(-1i32).to_be_bytes());
                out.extend_from_slice(&0i16.to_be_bytes());
                columns.push(Column::Ml(position));
            }
            None => {
                out.extend_from_slice(field);
                columns.push(Column::Base(index));
            }
        }
    }
    let mut description = (columns.len() as u16).to_be_bytes().to_vec();
    description.extend_from_slice(&out);
    (description, columns)
}

/// The field entries of a RowDescription body (name, then 18 bytes of attributes each).
fn split_fields(body: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return fields;
    };
    for _ in 0..u16::from_be_bytes(*count) {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        let end = (nul + 1 + 18).min(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    fields
}

/// The columns of a DataRow body: `None` for NULL.
fn split_row(body: &[u8]) -> Vec<Option<&[u8]>> {
    let mut columns = Vec::new();
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return columns;
    };
    for _ in 0..u16::from_be_bytes(*count) {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            columns.push(None);
            rest = tail;
        } else {
            let len = (len as usize).min(tail.len());
            columns.push(Some(&tail[..len]));
            rest = &tail[len..];
        }
    }
    columns
}

fn text(value: Option<&[u8]>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}

fn integer(value: Option<&[u8]>, what: &str) -> Result<Option<i64>, CallError> {
    match text(value) {
        None => Ok(None),
        Some(t) => t.trim().parse::<i64>().map(Some).map_err(|_| CallError {
            target: what.to_owned(),
            error: crate::error::InferenceError::InvalidArgument(format!(
                "max_rows_per_batch must be an integer, got {t:?}"
            )),
        }),
    }
}

/// One ML call's results for a chunk.
enum Results {
    Sentiment(Vec<Option<Sentiment>>),
    Text(Vec<Option<String>>),
}

fn column<'a>(row: &[Option<&'a [u8]>], index: usize) -> Option<&'a [u8]> {
    row.get(index).copied().flatten()
}

/// Bytes of inputs remembered per statement for de-duplication (see [`crate::enrich::memo`]).
const MEMO_BUDGET: usize = 16 << 20;

/// One statement's memo of inputs already sent.
struct Memo {
    sentiment: crate::enrich::memo::Memo<SentimentInput, Sentiment>,
    text: crate::enrich::memo::Memo<InvokeInput, String>,
}

impl Memo {
    fn new() -> Memo {
        Memo {
            sentiment: crate::enrich::memo::Memo::new(MEMO_BUDGET / 2),
            text: crate::enrich::memo::Memo::new(MEMO_BUDGET / 2),
        }
    }
}

fn abandoned(function: MlFunction) -> impl Fn() -> CallError {
    move || CallError {
        target: function.name().to_owned(),
        error: crate::error::InferenceError::InvalidArgument(
            "a concurrent call for the same input failed".into(),
        ),
    }
}

async fn enrich_chunk(
    executor: &Executor,
    plan: &StreamingPlan,
    layout: &[Column],
    memo: &Memo,
    rows: Vec<Bytes>,
) -> Result<(Vec<Bytes>, CallStats), CallError> {
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    let mut stats = CallStats::default();
    let mut results = Vec::with_capacity(plan.calls.len());
    for call in &plan.calls {
        match call.function {
            MlFunction::DetectSentiment => {
                let inputs = parsed
                    .iter()
                    .map(|row| {
                        Ok(SentimentInput {
                            text: text(column(row, call.first_arg)),
                            language: text(column(row, call.first_arg + 1)),
                            max_rows_per_batch: if call.arg_count > 2 {
                                integer(column(row, call.first_arg + 2), "max_rows_per_batch")?
                            } else {
                                None
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, CallError>>()?;
                let stats = &mut stats;
                let out = memo
                    .sentiment
                    .resolve(
                        inputs,
                        |misses| async move { executor.detect_sentiment(&misses, stats).await },
                        abandoned(call.function),
                    )
                    .await?;
                results.push(Results::Sentiment(out));
            }
            MlFunction::InvokeEndpoint => {
                let inputs = parsed
                    .iter()
                    .map(|row| {
                        Ok(InvokeInput {
                            endpoint: text(column(row, call.first_arg)),
                            max_rows_per_batch: integer(
                                column(row, call.first_arg + 1),
                                "max_rows_per_batch",
                            )?,
                            fields: (2..call.arg_count)
                                .map(|i| text(column(row, call.first_arg + i)))
                                .collect(),
                        })
                    })
                    .collect::<Result<Vec<_>, CallError>>()?;
                let stats = &mut stats;
                let out = memo
                    .text
                    .resolve(
                        inputs,
                        |misses| async move { executor.invoke_endpoint(&misses, stats).await },
                        abandoned(call.function),
                    )
                    .await?;
                results.push(Results::Text(out));
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for (r, row) in parsed.iter().enumerate() {
        let mut body = BytesMut::new();
        body.put_u16(layout.len() as u16);
        for column in layout {
            let value: Option<Vec<u8>> = match *column {
                Column::Base(i) => row.get(i).copied().flatten().map(<[u8]>::to_vec),
                Column::Ml(p) => {
                    let placeholder = &plan.placeholders[p];
                    match (&results[placeholder.call], placeholder.field) {
                        (Results::Sentiment(values), field) => {
                            values[r].map(|s| sentiment_text(s, field).into_bytes())
                        }
                        (Results::Text(values), _) => values[r].clone().map(String::into_bytes),
                    }
                }
            };
            match value {
                Some(bytes) => {
                    body.put_i32(bytes.len() as i32);
                    body.put_slice(&bytes);
                }
                None => body.put_i32(-1),
            }
        }
        out.push(message(b'D', &body));
    }
    Ok((out, stats))
}

fn sentiment_text(s: Sentiment, field: Field) -> String {
    match field {
        Field::Sentiment => s.label.as_str().to_owned(),
        Field::Confidence => float4_text(s.confidence),
        _ => format!("({},{})", s.label.as_str(), float4_text(s.confidence)),
    }
}

/// `real` in PostgreSQL's default text form (shortest exact digits; exponent outside 1e-4..1e15).
pub fn float4_text(value: f32) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e15).contains(&magnitude) {
        return format!("{value}");
    }
    let text = format!("{value:e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(float4_text(0.75), "0.75");
        assert_eq!(float4_text(2.0 / 3.0), "0.6666667");
        assert_eq!(float4_text(1.0), "1");
        assert_eq!(float4_text(0.9), "0.9");
        assert_eq!(float4_text(1e-5), "1e-05");
        assert_eq!(float4_text(f32::NAN), "NaN");
    }

    #[test]
    fn rows_and_descriptions_split() {
        let row = [0u8, 3, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(split_row(&row), vec![Some(&b"a"[..]), None, Some(&b""[..])]);
        let mut description = vec![0u8, 1];
        description.extend_from_slice(b"id\0");
        description.extend_from_slice(&[0u8; 18]);
        assert_eq!(split_fields(&description).len(), 1);
    }
}
