//! pgenrich's own traffic while it runs an ML statement: waiting for its requests to be written
//! and its answers to arrive, and noticing a client that went away meanwhile.

use super::*;

/// Client-bound bytes that [`Relay::next_upstream_message`] lets gather before writing them.
const WRITE_BATCH: usize = 64 * 1024;

impl Relay {
    /// Queues bytes for the upstream and waits until they are written.
    pub async fn send_upstream_now(&mut self, bytes: Bytes) -> Result<(), SessionError> {
        self.to_upstream.push(bytes);
        std::future::poll_fn(|cx| {
            let _ = self
                .to_client
                .poll_write(&mut self.client, cx)
                .map_err(SessionError::ClientIo)?;
            self.to_upstream
                .poll_write(&mut self.upstream, cx)
                .map_err(SessionError::UpstreamIo)?;
            if self.to_upstream.flushed() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Waits until everything queued for the client is written.
    pub async fn flush_client(&mut self) -> Result<(), SessionError> {
        std::future::poll_fn(|cx| {
            self.to_client
                .poll_write(&mut self.client, cx)
                .map_err(SessionError::ClientIo)?;
            if self.to_client.flushed() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Writes what the client socket takes now; waits only while much is queued
    /// (back-pressure), noticing a client that hangs up meanwhile.
    pub async fn flush_client_soft(&mut self) -> Result<(), SessionError> {
        std::future::poll_fn(|cx| {
            self.to_client
                .poll_write(&mut self.client, cx)
                .map_err(SessionError::ClientIo)?;
            if self.to_client.len < HIGH_WATER {
                return Poll::Ready(Ok(()));
            }
            match self.poll_client_gone(cx) {
                Poll::Ready(gone) => Poll::Ready(Err(gone)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// The next whole message from the upstream (type and body), for statements pgenrich runs
    /// itself. Bytes of a message already being passed through go to the client first.
    ///
    /// This is the session's one rule of back-pressure while it runs an ML statement: the
    /// upstream is not read while [`HIGH_WATER`] bytes wait for a client that is not reading, so
    /// whatever the ML modes queue for the client between two reads is all that can pile up.
    pub async fn next_upstream_message(&mut self) -> Result<(u8, Bytes), SessionError> {
        std::future::poll_fn(|cx| self.poll_upstream_message(cx)).await
    }

    fn poll_upstream_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(u8, Bytes), SessionError>> {
        if let Poll::Ready(gone) = self.poll_client_gone(cx) {
            return Poll::Ready(Err(gone));
        }
        // Each message counts against the task's budget: a result already buffered in full
        // would otherwise be read without ever yielding to the other sessions on this thread.
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            // Client-bound bytes are written in batches (or when the upstream has nothing to
            // read): one write per row would cost a system call per row.
            if self.to_client.len >= WRITE_BATCH {
                self.to_client
                    .poll_write(&mut self.client, cx)
                    .map_err(SessionError::ClientIo)?;
                if self.to_client.len >= HIGH_WATER {
                    // The write registered the waker: go on when the client has read some.
                    return Poll::Pending;
                }
            }
            let inbound = &mut self.from_upstream;
            if inbound.body_left > 0 {
                inbound.pass_body();
                inbound.release(&mut self.to_client);
            } else {
                inbound.release(&mut self.to_client);
                match header(&inbound.buf) {
                    Some(Err(bad)) => {
                        return Poll::Ready(Err(SessionError::UpstreamIo(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("invalid message length {} from upstream", bad.0),
                        ))))
                    }
                    Some(Ok((kind, len))) if inbound.buf.len() > len => {
                        let message = inbound.buf.split_to(1 + len).freeze();
                        budget.made_progress();
                        // Read for an ML statement, which may keep it from the client: if the
                        // upstream goes away now, the client still gets pgenrich's FATAL.
                        self.last_backend_kind = 0;
                        return Poll::Ready(Ok((kind, message.slice(HEADER_LEN..))));
                    }
                    Some(Ok((_, len))) => inbound.buf.reserve(1 + len - inbound.buf.len()),
                    None => {}
                }
            }
            reserve(&mut self.from_upstream.buf);
            match self
                .upstream
                .poll_read_into(cx, &mut self.from_upstream.buf)
            {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(SessionError::UpstreamIo(
                        io::ErrorKind::UnexpectedEof.into(),
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::UpstreamIo(e))),
                Poll::Pending => {
                    // Waiting anyway: what the client is owed goes out meanwhile.
                    self.to_client
                        .poll_write(&mut self.client, cx)
                        .map_err(SessionError::ClientIo)?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Ready when the client has hung up (or its connection failed) while pgenrich works on an
    /// ML statement. Bytes the client sends meanwhile are kept for later, up to the usual
    /// back-pressure limit.
    pub async fn client_gone(&mut self) -> SessionError {
        std::future::poll_fn(|cx| self.poll_client_gone(cx)).await
    }

    pub(super) fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<SessionError> {
        // Read until the socket would block (which registers the waker, also on an
        // edge-triggered pass-through loop) or enough is held.
        loop {
            if self.client_terminated
                || self.client_done_sending
                || self.from_client.buf.len() >= HIGH_WATER
            {
                return Poll::Pending;
            }
            reserve(&mut self.from_client.buf);
            match self.client.poll_read_into(cx, &mut self.from_client.buf) {
                // A client that sent Terminate after its query and closed its side still reads
                // the answer, as PostgreSQL would give it: finish, then let the Terminate end the
                // session.
                Poll::Ready(Ok(0))
                    if self
                        .from_client
                        .buf
                        .ends_with(&[frontend::TERMINATE, 0, 0, 0, 4]) =>
                {
                    self.client_done_sending = true;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(SessionError::ClientIo(io::ErrorKind::UnexpectedEof.into()))
                }
                // Kept for after the statement; look again for a hang-up.
                Poll::Ready(Ok(_)) => self.touch(),
                Poll::Ready(Err(e)) => return Poll::Ready(SessionError::ClientIo(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Records the status of a ReadyForQuery pgenrich read itself.
    pub fn note_ready(&mut self, body: &[u8]) {
        if let Some(&status) = body.first() {
            self.tracker.own_round_trip(status);
            if status == b'I' {
                self.ml.transaction_ended(self.tracker.closings_answered());
            }
        }
    }

    /// Base-row bytes one non-streaming ML statement may hold (`max_buffered_bytes`).
    pub fn max_buffered_bytes(&self) -> usize {
        self.ctx.max_buffered_bytes
    }

    /// The process-wide budget of bytes ML statements hold (`max_ml_memory`).
    pub fn memory(&self) -> &Arc<crate::enrich::budget::MemoryBudget> {
        &self.ctx.memory
    }

    /// What the session's role may call (`[[access]]` rules).
    pub fn grant(&self) -> &Arc<crate::access::Grant> {
        &self.ctx.grant
    }

    /// The login role.
    pub fn role(&self) -> &str {
        &self.ctx.role
    }

    /// The session's ML statements and portals.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.ml
    }

    /// The longest ML statement text the planner reads (`max_ml_statement_bytes`).
    pub fn max_ml_statement_bytes(&self) -> usize {
        self.ctx.max_ml_statement_bytes
    }

    /// The upstream now skips to Sync (after an error in the current pipeline).
    pub fn mark_extended_failed(&mut self) {
        self.tracker.mark_open_failed();
    }

    /// Whether the upstream now skips to the client's Sync after an error.
    pub fn extended_failed(&self) -> bool {
        self.tracker.open_failed()
    }

    /// Notified when a cancel request for this session arrives.
    pub fn cancel_notify(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.ctx.cancel_notify)
    }

    /// Whether the upstream's last message was an error (then it has told the client why it
    /// closed, and pgenrich adds nothing).
    pub fn upstream_sent_error_last(&self) -> bool {
        self.last_backend_kind == backend::ERROR_RESPONSE
    }

    /// Client-bound bytes end at a message boundary, so a message of pgenrich's may follow.
    pub fn client_at_boundary(&self) -> bool {
        self.from_upstream.at_boundary()
    }

    /// Upstream-bound bytes end at a message boundary.
    pub fn upstream_at_boundary(&self) -> bool {
        self.from_client.at_boundary()
    }

    /// Forwards a client message of type `kind` (as `bytes`, possibly rewritten) to the upstream,
    /// as the relay would have.
    pub fn forward_upstream(&mut self, kind: u8, bytes: Bytes) {
        self.tracker.on_client(kind);
        self.to_upstream.push(bytes);
    }

    pub fn push_to_client(&mut self, bytes: Bytes) {
        self.to_client.push(bytes);
    }

    /// Drops whatever the client sent that was not forwarded yet (used when closing).
    pub fn discard_pending_input(&mut self) {
        self.from_client.buf.clear();
        self.from_client.ready = 0;
        self.from_upstream.buf.clear();
        self.from_upstream.ready = 0;
    }

    pub fn push_to_upstream(&mut self, bytes: Bytes) {
        self.to_upstream.push(bytes);
    }

    /// Writes out both queues; Ready when they are empty and flushed.
    pub fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let up = self.to_upstream.poll_write(&mut self.upstream, cx);
        let down = self.to_client.poll_write(&mut self.client, cx);
        up?;
        down?;
        if self.to_upstream.flushed() && self.to_client.flushed() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
