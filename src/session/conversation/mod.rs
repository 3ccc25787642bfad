//! The conversation layer: the only code that talks to the upstream while an ML statement runs.
//!
//! Every mode (streaming, base + residual, EXPLAIN) gets a [`Conversation`] — not the relay — and
//! sends its requests and reads their answers through it, so one set of rules holds for all of
//! them:
//!
//! - **Back-pressure.** [`Conversation::next`] does not read the upstream while the relay's
//!   high-water mark of bytes waits for a client that is not reading; whatever a mode queues for
//!   the client between two reads is all that can pile up. [`Conversation::flush_soft`] waits only
//!   while that much is queued.
//! - **Hang-up.** Every wait (for the upstream, for the client, for inference) ends with the
//!   session's error as soon as the client hangs up; the session then cancels its backend.
//! - **Cancel.** A cancel request reaches the backend directly (its own error comes back as an
//!   answer); work of pgenrich's own — inference, waiting for memory — runs under
//!   [`Conversation::guard`], which stops it.
//! - **Drain.** An answer that pgenrich stops reading early is drained ([`reads`]), so the next
//!   request finds the upstream in step.
//!
//! [`reads`] has the answer patterns (up to ReadyForQuery, a fixed number of answers, an
//! Execute's rest), [`requests`] the request bodies, [`transaction`] pgenrich's hidden
//! transactions and how a failure is reported, [`held`] rows held under the memory limits.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::enrich::budget::MemoryBudget;
use crate::enrich::{CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::ErrorMessage;
use crate::session::relay::Relay;
use crate::session::rows::message;
use crate::session::statements::{MlStatement, Registry};
use crate::session::tracker::Tracker;

pub mod held;
pub mod reads;
pub mod requests;
pub mod settings;
pub mod transaction;

/// Chunking settings.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    pub rows: usize,
    pub in_flight: usize,
    /// Base-row bytes that end a chunk before `rows` rows.
    pub bytes: usize,
}

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

impl Outcome {
    /// Adds what a chunk's calls cost.
    pub fn add_calls(&mut self, stats: &CallStats) {
        self.stats.rows += stats.rows;
        self.stats.calls += stats.calls;
        self.stats.duplicates_saved += stats.duplicates_saved;
    }
}

/// One ML statement's (or message's) access to the session: the upstream, the client, the
/// statement table, the executor and the limits.
pub struct Conversation<'r> {
    relay: &'r mut Relay,
    executor: Arc<Executor>,
    chunking: Chunking,
    /// Progress NOTICEs of the running statement (`SET pgenrich.progress = on`).
    progress: Option<settings::Progress>,
    /// The session's own row cap (`SET pgenrich.max_inference_rows`).
    row_cap: Option<u64>,
    /// A name of pgenrich's upstream and the client's name it stands for, in errors.
    rename: Option<(String, String)>,
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The framed ErrorResponse `error` with every `from` in it replaced by `to`.
fn renamed(error: &[u8], from: &str, to: &str) -> Bytes {
    let body = error.get(5..).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    while let Some(found) = memchr::memmem::find(&body[at..], from.as_bytes()) {
        out.extend_from_slice(&body[at..at + found]);
        out.extend_from_slice(to.as_bytes());
        at += found + from.len();
    }
    out.extend_from_slice(&body[at..]);
    message(b'E', &out)
}

/// The error a cancel request gives the statement, as PostgreSQL words it.
pub fn canceled() -> ErrorMessage {
    ErrorMessage::error(
        SqlState::QueryCanceled,
        "canceling statement due to user request",
    )
}

impl<'r> Conversation<'r> {
    pub fn new(relay: &'r mut Relay, executor: Arc<Executor>, chunking: Chunking) -> Self {
        Conversation {
            relay,
            executor,
            chunking,
            progress: None,
            row_cap: None,
            rename: None,
        }
    }

    /// Sends requests upstream and waits until they are written.
    pub async fn send(&mut self, requests: Bytes) -> Result<(), SessionError> {
        self.relay.send_upstream_now(requests).await
    }

    /// The upstream's next whole message (type and body), read under the session's
    /// back-pressure rule; a client hang-up meanwhile ends the wait.
    pub async fn next(&mut self) -> Result<(u8, Bytes), SessionError> {
        self.relay.next_upstream_message().await
    }

    /// Queues a message for the client.
    pub fn to_client(&mut self, bytes: Bytes) {
        let bytes = match &self.rename {
            Some((from, to)) if bytes.first() == Some(&b'E') => renamed(&bytes, from, to),
            _ => bytes,
        };
        self.relay.push_to_client(bytes);
    }

    /// From now on, errors for the client say `to` where the upstream's say `from` (a name of
    /// pgenrich's for an object of the client's).
    pub fn rename_in_errors(&mut self, from: &str, to: &str) {
        self.rename = Some((from.to_owned(), to.to_owned()));
    }

    /// Waits until everything queued for the client is written.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.relay.flush_client().await
    }

    /// Writes what the client takes now; waits only while the high-water mark is queued.
    pub async fn flush_soft(&mut self) -> Result<(), SessionError> {
        self.relay.flush_client_soft().await
    }

    /// Runs pgenrich's own `work` (inference, a wait for memory) until it ends: `Ok(None)` when
    /// a cancel request for the session came first (dropping `work` stops it), `Err` when the
    /// client hung up.
    pub async fn guard<F: Future>(&mut self, work: F) -> Result<Option<F::Output>, SessionError> {
        let cancelled = self.relay.cancel_notify();
        let cancelled = cancelled.notified();
        tokio::pin!(work, cancelled);
        loop {
            let next_notice = self.progress.as_ref().map(|p| p.next);
            tokio::select! {
                output = &mut work => return Ok(Some(output)),
                _ = &mut cancelled => return Ok(None),
                gone = self.relay.client_gone() => return Err(gone),
                _ = sleep_until(next_notice) => {
                    if let Some(progress) = self.progress.as_mut() {
                        let notice = progress.notice();
                        self.to_client(notice);
                        self.flush_soft().await?;
                    }
                }
            }
        }
    }

    /// The upstream's next message, or `Ok(None)` when a cancel request for the session comes
    /// first (the upstream then still owes its answer).
    pub async fn next_or_cancel(&mut self) -> Result<Option<(u8, Bytes)>, SessionError> {
        let cancelled = self.relay.cancel_notify();
        tokio::select! {
            next = self.relay.next_upstream_message() => next.map(Some),
            _ = cancelled.notified() => Ok(None),
        }
    }

    /// Records the status of a ReadyForQuery pgenrich read itself.
    pub fn note_ready(&mut self, body: &[u8]) {
        self.relay.note_ready(body);
    }

    /// The session's ML statements and portals.
    pub fn registry(&mut self) -> &mut Registry {
        self.relay.registry()
    }

    /// What the session's responses have been so far.
    pub fn tracker(&self) -> &Tracker {
        &self.relay.tracker
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.relay.tracker.status()
    }

    /// The upstream now skips to the client's Sync (after an error in its pipeline).
    pub fn mark_failed(&mut self) {
        self.relay.mark_extended_failed();
    }

    /// What pgenrich prepared for the client's Parse of statement `name` is ready: the client's
    /// statement of that name is `statement` from now on, and its Parse is answered.
    pub fn parse_accepted(&mut self, name: String, statement: MlStatement) {
        self.registry().statements.insert(name, Arc::new(statement));
        self.to_client(message(b'1', &[]));
    }

    /// The database refused what pgenrich prepared for the client's Parse of statement `name`:
    /// its `error` answers the Parse, the client's statement of that name is gone, and the
    /// upstream skips to the client's Sync.
    pub fn parse_refused(&mut self, name: &str, error: &[u8]) {
        self.registry().statements.remove(name);
        self.to_client(message(b'E', error));
        self.mark_failed();
    }

    /// Whether the upstream skips to the client's Sync after an error.
    pub fn failed(&self) -> bool {
        self.relay.extended_failed()
    }

    /// A message of the extended protocol is about to run: it opens a run up to Sync if none is
    /// open.
    pub fn begin_run(&mut self) {
        self.relay.tracker.ensure_open();
    }

    /// Ends the open extended-protocol run with a Sync of pgenrich's, as a Query ends it
    /// natively (committing its implicit transaction).
    pub async fn end_open_run(&mut self) -> Result<(), SessionError> {
        self.sync_upstream().await?;
        self.relay.tracker.end_open_run();
        Ok(())
    }

    /// Forwards a client message (possibly rewritten) as the relay would have.
    pub fn forward(&mut self, kind: u8, bytes: Bytes) {
        self.relay.forward_upstream(kind, bytes);
    }

    /// Whether pgenrich's snapshot transaction for a prepared base + residual statement is open.
    pub fn snapshot_open(&self) -> bool {
        self.relay.snapshot_open
    }

    /// pgenrich's snapshot transaction has begun (`true`) or ended.
    pub fn set_snapshot_open(&mut self, open: bool) {
        self.relay.snapshot_open = open;
        if open {
            self.relay.snapshot_binds = self.relay.tracker.binds();
        }
    }

    /// Binds forwarded since the snapshot transaction began.
    pub fn binds_in_snapshot(&self) -> u64 {
        self.relay.tracker.binds() - self.relay.snapshot_binds
    }

    /// The process-wide budget of bytes ML statements hold (`max_ml_memory`).
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        self.relay.memory()
    }

    /// What the session's role may call (`[[access]]` rules).
    pub fn grant(&self) -> &Arc<crate::access::Grant> {
        self.relay.grant()
    }

    /// A new statement's memo: de-duplication within the memory budget, the role's grant, and
    /// the statement's share of call slots and row cap.
    pub fn new_memo(&mut self) -> crate::session::scoring::Memo {
        let claim = self.executor.claim_for(self.relay.role(), self.row_cap);
        if let Some(progress) = self.progress.as_mut() {
            progress.claims.push(Arc::clone(&claim));
        }
        crate::session::scoring::Memo::new(self.memory(), self.grant(), claim)
    }

    /// Base-row bytes one non-streaming statement may hold (`max_buffered_bytes`).
    pub fn max_buffered_bytes(&self) -> usize {
        self.relay.max_buffered_bytes()
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    pub fn chunking(&self) -> Chunking {
        self.chunking
    }
}
