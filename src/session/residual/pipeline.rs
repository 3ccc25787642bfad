//! Row-local residual statements read to the end (a simple Query, or an Execute without a row
//! limit), pipelined as streaming is: while a chunk of base rows is in inference the next one is
//! fetched, and each chunk's residual runs as soon as its scores are in, in the base rows' order.
//!
//! Requests go out with Flush, so the upstream answers them in order while pgenrich works; the
//! answers are matched to the requests still owed ([`Owed`]). At most `chunks_in_flight` chunks
//! are in inference while the next is fetched, each chunk's rows (and the parameters built from
//! them) are charged to the process's budget until its residual is sent, and the residual's rows
//! reach the client under the conversation's back-pressure.

use std::collections::VecDeque;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::AbortOnDropHandle;

use super::prepared::residual_bind;
use super::*;
use crate::enrich::budget::Charge;
use crate::enrich::{CallError, Executor};
use crate::error::SqlState;
use crate::session::conversation::requests::execute;
use crate::sql::plan::Call;

/// Fetches of the base portal kept asked, so that the database produces the next chunk while
/// pgenrich reads the last one instead of waiting for the request (one more CommandComplete,
/// of no rows, when the portal ends).
const FETCHES_AHEAD: usize = 2;

/// Residual rows are queued for the client in batches of about this many bytes.
const ROW_BATCH: usize = 64 * 1024;

/// A chunk in inference: the residual's parameters for it and what the calls cost. Dropping it
/// stops its calls.
type ScoreTask = AbortOnDropHandle<Result<(Vec<Vec<u8>>, CallStats), CallError>>;

/// What the pipeline runs on the upstream.
pub(super) struct ChunkRun<'a> {
    /// The base portal, bound and not yet executed.
    pub base_portal: &'a str,
    /// The prepared residual statement and the portal its runs are bound to.
    pub residual_statement: &'a str,
    pub residual_portal: &'a str,
    /// The client's Bind parameter section (formats, then values), which the residual takes
    /// first; `[0, 0, 0, 0]` when it has none.
    pub client_parameters: &'a [u8],
    /// Result formats of the residual (none: all text).
    pub formats: &'a [i16],
    pub calls: Arc<Vec<Call>>,
    pub shape: Arc<Shape>,
    pub memo: Arc<Memo>,
}

/// How the pipeline ended.
pub(super) enum Ending {
    /// The base portal is exhausted and every residual has run.
    Done,
    /// The upstream's error has gone to the client; it now skips to Sync.
    UpstreamError,
    /// pgenrich's error, not sent yet; the upstream is in step and not failed.
    Failed(ErrorMessage),
}

/// An answer the upstream still owes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// A base fetch: rows, then PortalSuspended or CommandComplete.
    Base,
    /// A residual run: CloseComplete, BindComplete, rows, CommandComplete.
    Residual,
}

/// Runs `run` to the end; how it ended and the rows its residual runs counted (selected and sent
/// to the client, or written).
pub(super) async fn pipeline(
    conv: &mut Conversation<'_>,
    run: &ChunkRun<'_>,
    outcome: &mut Outcome,
) -> Result<(Ending, u64), SessionError> {
    let chunking = conv.chunking();
    let executor = Arc::clone(conv.executor());
    let memory = Arc::clone(conv.memory());
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut scoring: VecDeque<(ScoreTask, Charge)> = VecDeque::new();
    let mut rows: Vec<Bytes> = Vec::new();
    let mut charge = memory.charge();
    let mut out = Output::default();
    // The base portal has returned its last row (CommandComplete).
    let mut exhausted = false;
    // Fetches of the base portal asked and not yet answered to the end.
    let mut fetches = 0usize;
    // The budget was used up: no fetching until what is held has gone to the residual.
    let mut starved = false;
    // Chunks cut from the base rows read, to go to inference once they have a process-wide slot.
    let mut cut: Vec<(Vec<Bytes>, Charge)> = Vec::new();
    let spawn = |rows: Vec<Bytes>, slot: OwnedSemaphorePermit| {
        let (owned, calls, shape, memo) = (
            Arc::clone(&executor),
            Arc::clone(&run.calls),
            Arc::clone(&run.shape),
            Arc::clone(&run.memo),
        );
        executor.spawn(async move {
            let _slot = slot;
            score_chunk(&owned, &calls, &shape, &memo, rows).await
        })
    };
    let failure = 'run: loop {
        while !exhausted
            && !starved
            && fetches < FETCHES_AHEAD
            && scoring.len() <= chunking.in_flight
        {
            conv.send(execute(run.base_portal, chunking.rows)).await?;
            owed.push_back(Owed::Base);
            fetches += 1;
        }
        // Scored chunks go to the residual in order: as soon as they are scored, and at once
        // (waiting) when nothing else is owed or too many are in inference.
        let mut failed = None;
        while let Some((front, _)) = scoring.front() {
            let wait = owed.is_empty() || scoring.len() > chunking.in_flight;
            if !wait && !front.is_finished() {
                break;
            }
            let Some((task, held)) = scoring.pop_front() else {
                break;
            };
            let params = match conv.guard(task).await? {
                None => Err(canceled()),
                Some(Ok(Ok((params, stats)))) => {
                    outcome.add_calls(&stats);
                    Ok(params)
                }
                Some(Ok(Err(error))) => Err(call_error(error, &run.calls)),
                Some(Err(_)) => Err(ErrorMessage::error(
                    SqlState::ExternalRoutineException,
                    "ML evaluation failed unexpectedly",
                )),
            };
            let bind = params.and_then(|params| {
                residual_bind(
                    run.residual_portal,
                    run.residual_statement,
                    run.client_parameters,
                    &params,
                    run.formats,
                )
            });
            let bind = match bind {
                Ok(bind) => bind,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            let mut requests = BytesMut::new();
            requests.put_slice(&message(frontend::CLOSE, &named(b'P', run.residual_portal)));
            requests.put_slice(&message(frontend::BIND, &bind));
            requests.put_slice(&message(
                frontend::EXECUTE,
                &execute_body(run.residual_portal, 0),
            ));
            requests.put_slice(&message(b'H', &[]));
            conv.send(requests.freeze()).await?;
            drop(held);
            owed.push_back(Owed::Residual);
        }
        if let Some(error) = failed {
            break Some(error);
        }
        let Some(&front) = owed.front() else {
            if starved {
                // Everything held has gone: go on once there is room again.
                if conv.guard(memory.room()).await?.is_none() {
                    break Some(canceled());
                }
                starved = false;
                continue;
            }
            if !exhausted || !scoring.is_empty() {
                continue;
            }
            break None;
        };
        let Some((kind, body)) = conv.next_or_cancel().await? else {
            break Some(canceled());
        };
        match (front, kind) {
            (_, b'E') => {
                out.send(conv);
                conv.to_client(message(b'E', &body));
                return Ok(out.end(conv, outcome, Ending::UpstreamError));
            }
            (Owed::Base, b'D') => {
                outcome.base_rows += 1;
                // The rows, and the residual's parameters built from them.
                let cost = 2 * body.len();
                if !charge.try_add(cost) {
                    // Over max_ml_memory: what is read goes to inference, and fetching waits
                    // (the fetches already asked are read to their end in whole chunks).
                    if !starved && !rows.is_empty() {
                        cut.push((std::mem::take(&mut rows), charge.take()));
                    }
                    charge.force_add(cost);
                    starved = true;
                }
                rows.push(body);
                if charge.bytes() >= chunking.bytes {
                    cut.push((std::mem::take(&mut rows), charge.take()));
                }
            }
            (Owed::Base, b's' | b'C') => {
                owed.pop_front();
                fetches -= 1;
                // A fetch asked after the last row gets an empty CommandComplete.
                exhausted |= kind == b'C';
                if !rows.is_empty() {
                    cut.push((std::mem::take(&mut rows), charge.take()));
                }
            }
            (Owed::Residual, b'D') => out.push(conv, &body),
            (Owed::Residual, b'C') => {
                owed.pop_front();
                out.count(&body);
                out.send(conv);
                conv.flush_soft().await?;
            }
            (Owed::Residual, b'2' | b'3') => {}
            _ => {
                out.send(conv);
                conv.to_client(message(kind, &body));
            }
        }
        // Rows are read on only once a slot is free (see `Executor::chunk_slot`).
        for (rows, held) in cut.drain(..) {
            let Some(slot) = conv.guard(executor.chunk_slot()).await? else {
                break 'run Some(canceled());
            };
            scoring.push_back((spawn(rows, slot), held));
        }
    };
    let Some(error) = failure else {
        return Ok(out.end(conv, outcome, Ending::Done));
    };
    // What was asked is still answered: residual rows as natively (before the error), base rows
    // dropped.
    drop(scoring);
    while let Some(front) = owed.pop_front() {
        loop {
            let (kind, body) = conv.next().await?;
            match (front, kind) {
                (_, b'E') => {
                    out.send(conv);
                    conv.to_client(message(b'E', &body));
                    return Ok(out.end(conv, outcome, Ending::UpstreamError));
                }
                (Owed::Base, b'D') | (_, b'2' | b'3') => {}
                (Owed::Base, b's' | b'C') => break,
                (Owed::Residual, b'C') => {
                    out.count(&body);
                    break;
                }
                (Owed::Residual, b'D') => out.push(conv, &body),
                _ => {
                    out.send(conv);
                    conv.to_client(message(kind, &body));
                }
            }
        }
    }
    Ok(out.end(conv, outcome, Ending::Failed(error)))
}

/// Residual rows on their way to the client, queued in batches.
#[derive(Default)]
struct Output {
    batch: BytesMut,
    rows: u64,
    /// The residual runs' CommandComplete counts: rows selected, or written by an INSERT.
    tagged: u64,
}

impl Output {
    /// Adds the count of a residual run's CommandComplete (`SELECT n`, `INSERT 0 n`).
    fn count(&mut self, tag: &[u8]) {
        self.tagged += tag_count(tag);
    }

    fn push(&mut self, conv: &mut Conversation<'_>, row: &[u8]) {
        self.batch.put_u8(b'D');
        self.batch.put_u32(row.len() as u32 + 4);
        self.batch.put_slice(row);
        self.rows += 1;
        if self.batch.len() >= ROW_BATCH {
            self.send(conv);
        }
    }

    /// Sends what is left and counts the rows: the pipeline's result.
    fn end(
        mut self,
        conv: &mut Conversation<'_>,
        outcome: &mut Outcome,
        ending: Ending,
    ) -> (Ending, u64) {
        self.send(conv);
        outcome.rows += self.rows;
        (ending, self.tagged)
    }

    fn send(&mut self, conv: &mut Conversation<'_>) {
        if !self.batch.is_empty() {
            conv.to_client(self.batch.split().freeze());
        }
    }
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`); 0 if none.
fn tag_count(tag: &[u8]) -> u64 {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    let digits = tag.rsplit(|b| *b == b' ').next().unwrap_or_default();
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Scores one chunk: the residual's parameters for its rows.
async fn score_chunk(
    executor: &Executor,
    calls: &[Call],
    shape: &Shape,
    memo: &Memo,
    rows: Vec<Bytes>,
) -> Result<(Vec<Vec<u8>>, CallStats), CallError> {
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    let mut stats = CallStats::default();
    let results = infer(executor, calls, &parsed, memo, &mut stats).await?;
    Ok((residual_parameters(shape, &parsed, &results), stats))
}

#[cfg(test)]
mod tests {
    use super::tag_count;

    #[test]
    fn tags_give_their_row_counts() {
        assert_eq!(tag_count(b"SELECT 12\0"), 12);
        assert_eq!(tag_count(b"INSERT 0 7\0"), 7);
        assert_eq!(tag_count(b"INSERT 0 7"), 7);
        assert_eq!(tag_count(b"CREATE TABLE\0"), 0);
        assert_eq!(tag_count(b""), 0);
    }
}
