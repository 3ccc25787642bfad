//! The byte pump between one client and its upstream connection.
//!
//! Both directions are driven by [`Relay::poll_progress`] — from the session's task, or between
//! ML statements from a pass-through loop ([`crate::session::direct`]) — which never blocks one
//! direction on the other: bytes are read into large reusable buffers, frame headers are hopped
//! over, and whole byte ranges are queued for writing as shared slices of the read buffer (no
//! copy), written with one vectored write per wake-up. Only the messages the relay must look at are
//! assembled: Query and Parse from the client (for the ML hook), and ReadyForQuery,
//! BackendKeyData and stand-in errors from the upstream. A message too large for one read streams
//! through in pieces.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::cancel::{CancelKeyGuard, CancelRegistry, CancelTarget};
use crate::error::{SessionError, SqlState};
use crate::protocol::{self, backend, frontend, header, ErrorMessage, HEADER_LEN};
use crate::session::kept::KeptBudgets;
use crate::session::statements::{self, Intercept, Registry};
use crate::session::tracker::Tracker;
use crate::sql::plan;
use crate::sql::{self, Verdict};
use crate::stream::{ClientStream, Socket, UpstreamStream};

mod answers;
mod buffers;
mod hook;
mod own;
pub mod planner;

use buffers::{reserve, Inbound, Outbound};

/// Stop reading from one side while this much is queued for the other (back-pressure).
const HIGH_WATER: usize = 1024 * 1024;
/// Rounds of reads that brought bytes before [`Relay::poll_progress`] lets other sessions on the
/// thread have a turn (a stream whose both ends keep up would otherwise never yield).
const ROUNDS_PER_TURN: u32 = 32;

/// Why [`Relay::poll_progress`] returned.
#[derive(Debug)]
pub enum Event {
    ClientClosed,
    UpstreamClosed,
    /// Draining, and the session is idle outside a transaction: it can close now.
    Quiescent,
    /// Terminating, and the response stream is at a message boundary: it can close now.
    AtBoundary,
    /// Work on an ML statement; everything before it has been answered and client input is held.
    Intercept(Intercept),
}

/// Everything the relay needs besides the two streams.
pub struct RelayContext {
    pub max_query_bytes: usize,
    /// Longest ML statement text planned (`max_ml_statement_bytes`).
    pub max_ml_statement_bytes: usize,
    /// An idle timeout is configured: [`Relay::last_activity`] is kept (a clock read per
    /// message otherwise spent for nothing).
    pub idle_timeout: bool,
    /// Base-row bytes one non-streaming ML statement may hold.
    pub max_buffered_bytes: usize,
    /// Bytes all ML statements of the process hold.
    pub memory: Arc<crate::enrich::budget::MemoryBudget>,
    /// What the session's ML statements, portals and cursors may hold.
    pub prepared: KeptBudgets,
    /// Woken by a cancel request for this session (stops ML work in progress).
    pub cancel_notify: Arc<tokio::sync::Notify>,
    pub cancels: Arc<CancelRegistry>,
    pub upstream_addr: std::net::SocketAddr,
    /// What the session's role may call (`[[access]]` rules).
    pub grant: Arc<crate::access::Grant>,
    /// The login role (the startup packet's user).
    pub role: String,
}

pub struct Relay {
    pub(crate) client: ClientStream,
    pub(crate) upstream: UpstreamStream,
    from_client: Inbound,
    from_upstream: Inbound,
    to_upstream: Outbound,
    to_client: Outbound,
    pub(crate) tracker: Tracker,
    ctx: RelayContext,
    /// The first ReadyForQuery has arrived: authentication is over.
    pub(crate) ready: bool,
    /// The last [`Relay::poll_progress`] returned Pending to give others a turn, not because
    /// it waits for the sockets.
    pub(crate) yielded: bool,
    /// Queries and bytes not yet added to the process's metrics.
    counts: crate::metrics::RelayCounts,
    pub(crate) draining: bool,
    pub(crate) terminating: bool,
    client_terminated: bool,
    last_backend_kind: u8,
    /// The client's last message, or the session's last turn to idle outside a transaction
    /// block, whichever came later: the idle timeout counts from here (kept only when one is
    /// configured).
    pub(crate) last_activity: Instant,
    pub(crate) cancel_target: Option<CancelTarget>,
    cancel_key: Option<CancelKeyGuard>,
    /// Work on an ML statement waiting for the upstream to answer everything before it.
    pending: Option<Intercept>,
    /// ML statements and portals of the extended protocol.
    ml: Registry,
    /// Client bytes were left unprocessed while an ML statement ran.
    reprocess_client: bool,
    /// pgenrich is running an ML statement on the upstream (not visible to the tracker).
    pub(crate) ml_running: bool,
    /// The client sent Terminate and closed its side while an ML statement ran.
    client_done_sending: bool,
    /// pgenrich's snapshot transaction for a prepared base + residual statement is open
    /// ([`crate::session::residual`]'s `snapshot` module).
    pub(crate) snapshot_open: bool,
    /// The tracker's Bind count when that transaction began: with more than one Bind since,
    /// committing it when one portal is done would end the others.
    pub(crate) snapshot_binds: u64,
}

impl Relay {
    pub fn new(client: ClientStream, upstream: UpstreamStream, ctx: RelayContext) -> Relay {
        let ml = Registry::new(ctx.prepared.clone());
        Relay {
            client,
            upstream,
            from_client: Inbound::default(),
            from_upstream: Inbound::default(),
            to_upstream: Outbound::default(),
            to_client: Outbound::default(),
            tracker: Tracker::default(),
            ctx,
            ready: false,
            yielded: false,
            counts: Default::default(),
            draining: false,
            terminating: false,
            client_terminated: false,
            last_backend_kind: 0,
            last_activity: Instant::now(),
            cancel_target: None,
            cancel_key: None,
            pending: None,
            ml,
            reprocess_client: false,
            ml_running: false,
            client_done_sending: false,
            snapshot_open: false,
            snapshot_binds: 0,
        }
    }

    /// Notes activity for the idle timeout.
    pub(crate) fn touch(&mut self) {
        if self.ctx.idle_timeout {
            self.last_activity = Instant::now();
        }
    }

    /// Authentication is over: the pass-through loop ([`crate::session::direct`]) can carry the
    /// session.
    pub(crate) fn can_go_direct(&self) -> bool {
        self.ready
    }

    /// What the session's controls depend on: (ready, draining, terminating).
    pub(crate) fn control_state(&self) -> (bool, bool, bool) {
        (self.ready, self.draining, self.terminating)
    }

    /// Takes both sockets out of the tokio reactor for the pass-through loop.
    pub(crate) fn detach_streams(&mut self) -> Result<(), SessionError> {
        self.on_both_sockets(Socket::detach)
    }

    /// Puts both sockets back into the tokio reactor (in a runtime).
    pub(crate) fn attach_streams(&mut self) -> Result<(), SessionError> {
        self.on_both_sockets(Socket::attach)
    }

    /// Applies `op` to the client's socket, then the upstream's, naming the side that failed.
    fn on_both_sockets(
        &mut self,
        op: fn(&mut Socket) -> io::Result<()>,
    ) -> Result<(), SessionError> {
        op(self.client.socket()).map_err(SessionError::ClientIo)?;
        op(self.upstream.socket()).map_err(SessionError::UpstreamIo)
    }

    /// Queues bytes for the upstream (the startup packet).
    pub fn send_upstream(&mut self, bytes: Bytes) {
        self.to_upstream.push(bytes);
    }

    /// Moves both directions forward until an [`Event`] or until nothing can progress.
    #[inline]
    pub fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, SessionError>> {
        let progress = self.poll_relay(cx);
        self.counts.flush(self.tracker.queries_forwarded());
        progress
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, SessionError>> {
        // A read that returned Pending has registered the waker: polling it again in this call
        // would only ask the reactor the same question (twice per relayed message).
        let mut client_pending = false;
        let mut upstream_pending = false;
        let mut rounds = 0;
        self.yielded = false;
        loop {
            if self.terminating && self.from_upstream.at_boundary() {
                return Poll::Ready(Ok(Event::AtBoundary));
            }
            // Everything before the held message is answered; an extended-protocol run may
            // still be open (a Query ends it, as the session's task does for an ML one).
            if self.pending.is_some() && self.tracker.caught_up() {
                if let Some(intercept) = self.pending.take() {
                    return Poll::Ready(Ok(Event::Intercept(intercept)));
                }
            }
            // Set by reads that brought bytes, and by held client input processed again (which
            // may leave an ML message whose answers are already in).
            let mut progress = false;
            if self.reprocess_client && self.pending.is_none() {
                self.reprocess_client = false;
                self.process_client()?;
                progress = true;
            }
            if self.draining
                && self.ready
                && self.tracker.is_quiescent()
                && self.from_client.at_boundary()
                && self.from_client.buf.is_empty()
            {
                return Poll::Ready(Ok(Event::Quiescent));
            }
            // Writing matters to the next round only when it lets a held-back read go on; reads
            // that brought bytes always get another round.
            let throttled = self.to_upstream.len >= HIGH_WATER || self.to_client.len >= HIGH_WATER;
            let mut wrote = self
                .to_upstream
                .poll_write(&mut self.upstream, cx)
                .map_err(SessionError::UpstreamIo)?;
            wrote |= self
                .to_client
                .poll_write(&mut self.client, cx)
                .map_err(SessionError::ClientIo)?;
            progress |= wrote && throttled;

            let holding = self.pending.is_some();
            if holding && !client_pending && !self.terminating {
                // Input stays held, but a client that hangs up meanwhile is noticed.
                if let Poll::Ready(gone) = self.poll_client_gone(cx) {
                    return Poll::Ready(Err(gone));
                }
                client_pending = true;
            }
            if self.to_upstream.len < HIGH_WATER
                && !self.terminating
                && !self.client_terminated
                && !holding
                && !client_pending
            {
                reserve(&mut self.from_client.buf);
                match self.client.poll_read_into(cx, &mut self.from_client.buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientClosed)),
                    Poll::Ready(Ok(n)) => {
                        self.counts.from_client += n as u64;
                        self.touch();
                        self.process_client()?;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ClientIo(e))),
                    Poll::Pending => client_pending = true,
                }
            }
            if self.to_client.len < HIGH_WATER && !upstream_pending {
                reserve(&mut self.from_upstream.buf);
                match self
                    .upstream
                    .poll_read_into(cx, &mut self.from_upstream.buf)
                {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::UpstreamClosed)),
                    Poll::Ready(Ok(n)) => {
                        self.counts.from_upstream += n as u64;
                        self.process_upstream()?;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::UpstreamIo(e))),
                    Poll::Pending => upstream_pending = true,
                }
            }
            if !progress {
                return Poll::Pending;
            }
            rounds += 1;
            if rounds == ROUNDS_PER_TURN {
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Frames client bytes: passes everything through except Query/Parse texts that the ML hook
    /// rejects, which are replaced by a stand-in.
    fn process_client(&mut self) -> Result<(), SessionError> {
        loop {
            let inbound = &mut self.from_client;
            if inbound.discard_left > 0 {
                inbound.release(&mut self.to_upstream);
                let n = inbound.discard_left.min(inbound.buf.len());
                inbound.buf.advance(n);
                inbound.discard_left -= n;
                if inbound.discard_left > 0 {
                    break;
                }
                continue;
            }
            if inbound.body_left > 0 {
                if !inbound.pass_body() {
                    break;
                }
                continue;
            }
            let (kind, len) = match header(&inbound.buf[inbound.ready..]) {
                None => break,
                Some(Err(bad)) => return Err(SessionError::BadMessageLength(bad.0)),
                Some(Ok(frame)) => frame,
            };
            let total = 1 + len;
            if self.snapshot_open
                && matches!(
                    kind,
                    frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL
                )
            {
                // pgenrich's snapshot transaction ends first; the message is then processed
                // again as usual.
                inbound.release(&mut self.to_upstream);
                self.pending = Some(Intercept::EndSnapshot);
                self.await_answers();
                return Ok(());
            }
            let inspected = self.ready
                && match kind {
                    frontend::QUERY | frontend::PARSE => true,
                    frontend::BIND => {
                        let named = self.ml.watches_portals();
                        if named && len - 4 > self.ctx.max_query_bytes {
                            // Too large to hold: it is relayed as it streams in, but a portal of
                            // that name no longer belongs to an ML statement.
                            let prefix = &inbound.buf[inbound.ready + HEADER_LEN..];
                            if let Some(portal) = statements::first_name(prefix) {
                                self.ml.portals.remove(&portal);
                            }
                            self.ml.deferred.on_bind(prefix);
                        }
                        named && len - 4 <= self.ctx.max_query_bytes
                    }
                    frontend::DESCRIBE => self.ml.names_any(),
                    frontend::EXECUTE | frontend::CLOSE => self.ml.watches_portals(),
                    _ => false,
                };
            if !inspected {
                self.tracker.on_client(kind);
                if kind == frontend::TERMINATE {
                    self.client_terminated = true;
                }
                inbound.pass(total);
                continue;
            }
            if (kind == frontend::QUERY || kind == frontend::PARSE)
                && len - 4 > self.ctx.max_query_bytes
            {
                inbound.release(&mut self.to_upstream);
                let n = total.min(inbound.buf.len());
                inbound.buf.advance(n);
                inbound.discard_left = total - n;
                let error = ErrorMessage::error(
                    SqlState::ProgramLimitExceeded,
                    format!(
                        "statement text of {} bytes exceeds pgenrich's max_query_bytes ({})",
                        len - 4,
                        self.ctx.max_query_bytes
                    ),
                )
                .with_hint("Raise max_query_bytes, or send large values as parameters.");
                self.reject(kind, error);
                continue;
            }
            if !inbound.holds_whole(total) {
                break;
            }
            let body = &inbound.buf[inbound.ready + HEADER_LEN..inbound.ready + total];
            if !self.ml.deferred.is_empty() {
                // Prepared DEALLOCATE, CLOSE or DISCARD ALL commands, and their portals.
                match kind {
                    frontend::PARSE => self.ml.deferred.on_parse(body),
                    frontend::BIND => self.ml.deferred.on_bind(body),
                    frontend::CLOSE => self.ml.deferred.on_close(body),
                    _ => {}
                }
            }
            // A portal of an ML statement is charged before it exists; past the budgets its Bind
            // fails where PostgreSQL's would.
            let mut kept = None;
            if kind == frontend::BIND && self.ml.statement_of_bind(body).is_some() {
                if statements::first_name(body).is_some_and(|portal| portal.is_empty()) {
                    // This Bind replaces the unnamed portal, as it does upstream.
                    self.ml.portals.remove("");
                }
                match self.ml.budgets.portal(body.len()) {
                    Ok(charge) => kept = Some(charge),
                    Err(error) => {
                        inbound.release(&mut self.to_upstream);
                        inbound.buf.advance(total);
                        self.reject(kind, error);
                        continue;
                    }
                }
            }
            // Extended-protocol messages naming ML statements or portals.
            let mut close_token = None;
            let handled = match kind {
                frontend::BIND
                    if self.ml.statement_of_bind(body).is_some_and(|s| {
                        s.is_explain()
                            || (s.two_phase()
                                && !self.snapshot_open
                                && self.tracker.status() == b'I')
                    }) =>
                {
                    kept.take()
                        .map(|kept| Err(Intercept::Bind(Bytes::copy_from_slice(body), kept)))
                }
                frontend::BIND => self
                    .ml
                    .rewrite_bind(body, self.tracker.closings_forwarded(), kept.take())
                    .map(Ok),
                frontend::CLOSE => self.ml.rewrite_close(body).map(|(close, token)| {
                    close_token = Some(token);
                    Ok(close)
                }),
                frontend::DESCRIBE => statements::target(body)
                    .filter(|(k, name)| match k {
                        b'S' => self.ml.statements.contains_key(name),
                        _ => {
                            self.ml.portals.contains_key(name) || self.ml.cursors.contains_key(name)
                        }
                    })
                    .map(|(kind, name)| Err(Intercept::Describe { kind, name })),
                frontend::EXECUTE => statements::execute_parts(body)
                    .filter(|(portal, _)| self.ml.portals.contains_key(portal))
                    .map(|(portal, max_rows)| Err(Intercept::Execute { portal, max_rows })),
                _ => None,
            };
            if let Some(handled) = handled {
                inbound.release(&mut self.to_upstream);
                inbound.buf.advance(total);
                match handled {
                    Ok(rewritten) => {
                        self.tracker.on_client(kind);
                        if let Some(token) = close_token {
                            self.tracker.tag_close(token);
                            // Discarded after a seen error: the statement is back at once.
                            answers::settle_closes(&mut self.tracker, &mut self.ml);
                        }
                        self.to_upstream.push(rewritten);
                        continue;
                    }
                    Err(intercept) => {
                        self.pending = Some(intercept);
                        self.await_answers();
                        return Ok(());
                    }
                }
            }
            if kind != frontend::QUERY && kind != frontend::PARSE {
                let token = (kind == frontend::EXECUTE)
                    .then(|| self.ml.deferred_execute(body))
                    .flatten();
                self.tracker.on_client(kind);
                if let Some(token) = token {
                    // It carries out a prepared command that forgets names pgenrich holds.
                    self.tracker.tag_execute(token);
                    answers::settle_closes(&mut self.tracker, &mut self.ml);
                }
                self.from_client.ready += total;
                continue;
            }
            if let Some(name) = (kind == frontend::PARSE && !self.ml.statements.is_empty())
                .then(|| statements::first_name(body))
                .flatten()
                .filter(|name| !name.is_empty() && self.ml.statements.contains_key(name))
            {
                // Upstream the statement has pgenrich's name: refuse the client's as PostgreSQL
                // refuses a second statement of a name.
                inbound.release(&mut self.to_upstream);
                inbound.buf.advance(total);
                let error = ErrorMessage::error(
                    SqlState::DuplicatePreparedStatement,
                    format!("prepared statement \"{name}\" already exists"),
                );
                self.reject(kind, error);
                continue;
            }
            let text = protocol::statement_text(kind, body).unwrap_or_default();
            if sql::mentions_ml_schema(text)
                || (!self.ml.cursors.is_empty() && sql::cursor::may_be_command(text))
                || (!self.ml.statements.is_empty() && sql::cursor::may_end_statements(text))
            {
                // Inspected and planned by the session's task, off this thread; everything
                // after it waits until it has been handled.
                self.pending = Some(Intercept::Inspect {
                    kind,
                    body: Bytes::copy_from_slice(body),
                });
                inbound.release(&mut self.to_upstream);
                inbound.buf.advance(total);
                self.await_answers();
                return Ok(());
            }
            if kind == frontend::PARSE {
                // The client's statement of this name is a plain one from now on.
                if let Some(name) = statements::first_name(body) {
                    self.ml.statements.remove(&name);
                }
            }
            self.tracker.on_client(kind);
            self.from_client.ready += total;
        }
        self.from_client.release(&mut self.to_upstream);
        Ok(())
    }

    /// Holds client input until the upstream has answered everything before the pending ML
    /// message. PostgreSQL keeps extended-protocol answers buffered until Sync or Flush, so a
    /// Flush (which changes nothing else) makes it send them now.
    fn await_answers(&mut self) {
        self.reprocess_client = true;
        self.to_upstream
            .push(Bytes::from_static(&[b'H', 0, 0, 0, 4]));
    }

    /// Sends the upstream a stand-in for a rejected Query or Parse: a message that fails exactly
    /// where the original would have (aborting a transaction block, skipping to Sync, or not
    /// running at all in an already failed transaction), and whose error is replaced by `error`.
    pub(crate) fn reject(&mut self, kind: u8, error: ErrorMessage) {
        let (standin, standin_kind) = if kind == frontend::QUERY {
            (protocol::standin_query(), frontend::QUERY)
        } else {
            (protocol::standin_execute(), frontend::EXECUTE)
        };
        self.tracker.on_client(standin_kind);
        self.tracker.substitute_next_standin_error(error.encode());
        self.to_upstream.push(standin);
    }

    /// Sends an inspected Query or Parse (`kind`, `body`) without ML calls upstream as the client
    /// sent it.
    pub(crate) fn relay_inspected(&mut self, kind: u8, body: &[u8]) {
        if kind == frontend::PARSE {
            // The client's statement of this name is a plain one from now on.
            if let Some(name) = statements::first_name(body) {
                self.ml.statements.remove(&name);
            }
        }
        self.tracker.on_client(kind);
        self.to_upstream.push(protocol::message(kind, body));
    }

    /// The client sent Terminate: the session ends normally when either side hangs up.
    pub fn client_terminated(&self) -> bool {
        self.client_terminated
    }
}
