//! pgenrich's hidden transactions around statements of several phases, and how a statement's
//! failure is reported inside the client's transaction or pgenrich's.

use bytes::Bytes;

use super::{Conversation, Outcome};
use crate::error::SessionError;
use crate::protocol::ErrorMessage;
use crate::session::rows::message;

/// How a phase failed.
pub enum Failure {
    /// The upstream's error has been relayed to the client.
    Relayed,
    /// pgenrich's error, not sent yet.
    Ours(ErrorMessage),
}

/// The statement opening pgenrich's hidden snapshot transaction.
pub fn snapshot_begin(read_only: bool) -> &'static str {
    if read_only {
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    } else {
        "BEGIN ISOLATION LEVEL REPEATABLE READ"
    }
}

impl Conversation<'_> {
    /// Outside a transaction block, opens pgenrich's hidden snapshot transaction (REPEATABLE
    /// READ, and READ ONLY if `read_only`) so that every phase sees one snapshot; inside one, the
    /// client's is used. Whether pgenrich opened one; `None` if it could not (the error went to
    /// the client).
    pub async fn begin_snapshot(&mut self, read_only: bool) -> Result<Option<bool>, SessionError> {
        if self.status() != b'I' {
            return Ok(Some(false));
        }
        match self.hidden_query(snapshot_begin(read_only)).await? {
            None => Ok(Some(true)),
            Some(error) => {
                self.to_client(message(b'E', &error));
                Ok(None)
            }
        }
    }

    /// Reports how a statement ended; whether it failed. pgenrich's own error in the client's
    /// transaction (not `own_transaction`) first aborts it as a native error would.
    pub async fn report(
        &mut self,
        failure: Option<Failure>,
        own_transaction: bool,
    ) -> Result<bool, SessionError> {
        Ok(match failure {
            None => false,
            Some(Failure::Relayed) => true,
            Some(Failure::Ours(error)) => {
                if !own_transaction {
                    self.abort_client_transaction().await?;
                }
                self.to_client(error.encode());
                true
            }
        })
    }

    /// Ends pgenrich's hidden transaction (if it began one; rolled back if `roll_back`) and
    /// answers ReadyForQuery.
    pub async fn finish_query(
        &mut self,
        wrap: bool,
        roll_back: bool,
        outcome: Outcome,
    ) -> Result<Outcome, SessionError> {
        if wrap {
            self.end_hidden(roll_back).await?;
            return self.ready(b"I", outcome).await;
        }
        let status = [self.status()];
        self.ready(&status, outcome).await
    }

    /// Ends pgenrich's hidden transaction: ROLLBACK if `roll_back`, else COMMIT; its error (if
    /// any) goes to the client.
    pub async fn end_hidden(&mut self, roll_back: bool) -> Result<(), SessionError> {
        let end = if roll_back { "ROLLBACK" } else { "COMMIT" };
        if let Some(error) = self.hidden_query(end).await? {
            self.to_client(message(b'E', &error));
        }
        Ok(())
    }

    /// Answers ReadyForQuery with `status` and flushes.
    pub async fn ready(
        &mut self,
        status: &[u8],
        outcome: Outcome,
    ) -> Result<Outcome, SessionError> {
        self.note_ready(status);
        self.to_client(message(b'Z', status));
        self.flush().await?;
        Ok(outcome)
    }

    /// The status byte of the last ReadyForQuery, as a body.
    pub fn status_body(&self) -> Bytes {
        Bytes::copy_from_slice(&[self.status()])
    }
}
