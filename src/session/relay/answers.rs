//! The upstream's side of the pump: framing what the database sends, tracking completions and
//! the transaction status, minting the client's cancel key and swapping stand-in errors.

use super::*;

impl Relay {
    /// Frames upstream bytes, tracking completions and the transaction status, minting the
    /// client's cancel key and swapping stand-in errors.
    pub(super) fn process_upstream(&mut self) -> Result<(), SessionError> {
        loop {
            let inbound = &mut self.from_upstream;
            if inbound.body_left > 0 {
                if !inbound.pass_body() {
                    break;
                }
                continue;
            }
            if self.terminating {
                break;
            }
            let (kind, len) = match header(&inbound.buf[inbound.ready..]) {
                None => break,
                Some(Err(bad)) => {
                    return Err(SessionError::UpstreamIo(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("invalid message length {} from upstream", bad.0),
                    )))
                }
                Some(Ok(frame)) => frame,
            };
            let total = 1 + len;
            self.last_backend_kind = kind;
            let is_key = kind == backend::BACKEND_KEY_DATA && !self.ready;
            let is_auth = kind == backend::AUTHENTICATION && !self.ready;
            if !is_key && !is_auth && !self.tracker.wants_body(kind) {
                self.tracker.on_backend(kind, None);
                settle_closes(&mut self.tracker, &mut self.ml);
                inbound.pass(total);
                continue;
            }
            if !inbound.holds_whole(total) {
                break;
            }
            let body = &inbound.buf[inbound.ready + HEADER_LEN..inbound.ready + total];
            let replacement = if is_key {
                let body = body.to_vec();
                self.mint_cancel_key(&body)
            } else if is_auth {
                protocol::without_channel_binding(body)
            } else {
                let replacement = self.tracker.on_backend(kind, Some(body));
                settle_closes(&mut self.tracker, &mut self.ml);
                if kind == backend::READY_FOR_QUERY {
                    self.ready = true;
                    if body.first() == Some(&b'I') {
                        self.touch();
                        // Portals end with their transaction.
                        self.ml.transaction_ended(self.tracker.closings_answered());
                    }
                }
                replacement
            };
            match replacement {
                Some(bytes) => {
                    let inbound = &mut self.from_upstream;
                    inbound.release(&mut self.to_client);
                    inbound.buf.advance(total);
                    self.to_client.push(bytes);
                }
                None => self.from_upstream.ready += total,
            }
        }
        self.from_upstream.release(&mut self.to_client);
        Ok(())
    }

    /// Replaces the upstream's BackendKeyData with a key of pgenrich's own.
    fn mint_cancel_key(&mut self, body: &[u8]) -> Option<Bytes> {
        if body.len() < 8 {
            return None;
        }
        let target = CancelTarget {
            session: Arc::clone(&self.ctx.cancel_notify),
            upstream_addr: self.ctx.upstream_addr,
            upstream_pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            upstream_secret: Bytes::copy_from_slice(&body[4..]),
        };
        self.cancel_target = Some(target.clone());
        let (guard, pid, secret) = self.ctx.cancels.register(target)?;
        self.cancel_key = Some(guard);
        let mut payload = pid.to_be_bytes().to_vec();
        payload.extend_from_slice(&secret);
        Some(protocol::message(backend::BACKEND_KEY_DATA, &payload))
    }
}

/// Settles the ML statements and cursors of Closes the upstream has answered or skipped.
pub(super) fn settle_closes(tracker: &mut Tracker, ml: &mut Registry) {
    if let Some(settled) = tracker.settled_closes() {
        settled.for_each(|(token, closed)| ml.settle_close(token, closed));
    }
}
