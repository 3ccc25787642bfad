//! How pgenrich reads the answers to its own requests: up to ReadyForQuery, a fixed number of
//! answers after Flush, the rest of an Execute. Notices, notifications and parameter changes
//! always go on to the client.

use bytes::Bytes;

use super::requests::{flushed, standin};
use super::Conversation;
use crate::error::SessionError;
use crate::protocol::{frontend, ErrorMessage};
use crate::session::rows::message;

impl Conversation<'_> {
    /// Reads upstream messages up to ReadyForQuery: `keep` decides per message whether pgenrich
    /// consumes it (true) or it goes to the client; an ErrorResponse is relayed and remembered.
    /// Whether one came.
    pub async fn collect(
        &mut self,
        mut keep: impl FnMut(u8, &Bytes) -> bool,
    ) -> Result<bool, SessionError> {
        let mut failed = false;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'Z' => {
                    self.note_ready(&body);
                    return Ok(failed);
                }
                b'E' => {
                    failed = true;
                    self.to_client(message(b'E', &body));
                }
                _ if keep(kind, &body) => {}
                _ => self.to_client(message(kind, &body)),
            }
        }
    }

    /// Reads the answers to `expected` requests sent with Flush: completions, parameter and row
    /// descriptions count, notices and the like go to the client. `Err`: the upstream's error
    /// body (it now skips to the client's Sync).
    pub async fn answers(
        &mut self,
        expected: usize,
    ) -> Result<Result<Vec<(u8, Bytes)>, Bytes>, SessionError> {
        let mut got = Vec::new();
        while got.len() < expected {
            let (kind, body) = self.next().await?;
            match kind {
                b'E' => return Ok(Err(body)),
                b'1' | b'2' | b'3' | b't' | b'T' | b'n' => got.push((kind, body)),
                _ => self.to_client(message(kind, &body)),
            }
        }
        Ok(Ok(got))
    }

    /// Relays the upstream's messages up to ReadyForQuery, whose body it returns instead.
    pub async fn until_ready(&mut self) -> Result<Bytes, SessionError> {
        self.until_ready_failed().await.map(|(_, ready)| ready)
    }

    /// [`Conversation::until_ready`], also saying whether an error was among the messages.
    pub async fn until_ready_failed(&mut self) -> Result<(bool, Bytes), SessionError> {
        let mut failed = false;
        loop {
            let (kind, body) = self.next().await?;
            if kind == b'Z' {
                self.note_ready(&body);
                return Ok((failed, body));
            }
            failed |= kind == b'E';
            self.to_client(message(kind, &body));
        }
    }

    /// Sends Sync and relays the answer up to ReadyForQuery, whose body it returns instead.
    pub async fn sync(&mut self) -> Result<Bytes, SessionError> {
        self.send(message(frontend::SYNC, &[])).await?;
        self.until_ready().await
    }

    /// Sends a Sync of pgenrich's and reads up to its ReadyForQuery (an error, relayed).
    pub async fn sync_upstream(&mut self) -> Result<(), SessionError> {
        self.send(message(frontend::SYNC, &[])).await?;
        self.collect(|_, _| false).await?;
        Ok(())
    }

    /// Sends a Query pgenrich needs (BEGIN, COMMIT, ROLLBACK) and reads its answer, keeping it
    /// from the client except for an error, whose body it returns.
    pub async fn hidden_query(&mut self, sql: &str) -> Result<Option<Bytes>, SessionError> {
        self.hidden_query_row(sql).await.map(|(error, _)| error)
    }

    /// [`Conversation::hidden_query`] that also returns the body of the first DataRow, if any.
    pub async fn hidden_query_row(
        &mut self,
        sql: &str,
    ) -> Result<(Option<Bytes>, Option<Bytes>), SessionError> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        self.send(message(frontend::QUERY, &text)).await?;
        let (mut error, mut row) = (None, None);
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'Z' => {
                    self.note_ready(&body);
                    return Ok((error, row));
                }
                b'E' => error = Some(body),
                b'D' if row.is_none() => row = Some(body),
                b'N' | b'A' | b'S' => self.to_client(message(kind, &body)),
                _ => {}
            }
        }
    }

    /// Makes the upstream fail where pgenrich did (so it skips to Sync and aborts the
    /// transaction) and sends `error` to the client in place of the upstream's (`None`: the
    /// client has been told).
    pub async fn fail_upstream(&mut self, error: Option<ErrorMessage>) -> Result<(), SessionError> {
        self.send(flushed(standin())).await?;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                // The stand-in's error (or 25P02 in an aborted block) is replaced by ours.
                b'E' => break,
                _ => self.to_client(message(kind, &body)),
            }
        }
        if let Some(error) = error {
            self.to_client(error.encode());
        }
        Ok(())
    }

    /// Fails the client's Execute where pgenrich failed: the upstream fails a stand-in
    /// (aborting the transaction and skipping to Sync as PostgreSQL would) and the client gets
    /// `error`.
    pub async fn fail_execute(&mut self, error: ErrorMessage) -> Result<(), SessionError> {
        self.fail_upstream(Some(error)).await?;
        self.mark_failed();
        Ok(())
    }

    /// Makes the upstream fail a stand-in statement, aborting the client's transaction block as
    /// a native error would; the stand-in's own error is dropped.
    pub async fn abort_client_transaction(&mut self) -> Result<(), SessionError> {
        self.send(crate::protocol::standin_query()).await?;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'Z' => {
                    self.note_ready(&body);
                    return Ok(());
                }
                b'E' => {}
                _ => self.to_client(message(kind, &body)),
            }
        }
    }

    /// Reads the rest of an outstanding Execute's answer, discarding its rows.
    pub async fn drain_execute(&mut self) -> Result<(), SessionError> {
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b's' | b'C' | b'E' => return Ok(()),
                b'D' => {}
                _ => self.to_client(message(kind, &body)),
            }
        }
    }
}
