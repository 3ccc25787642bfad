//! Rows a statement must hold whole (to sort, group or score them all before the residual),
//! under `max_buffered_bytes` per statement and `max_ml_memory` per process.

use bytes::Bytes;

use super::transaction::Failure;
use super::Conversation;
use crate::enrich::budget::Charge;
use crate::error::{SessionError, SqlState};
use crate::protocol::ErrorMessage;

/// Base rows held for a statement that cannot stream, up to `max_buffered_bytes` and within the
/// process's `max_ml_memory`: past either they are dropped as they arrive (the rest of the result
/// is still read, so the session stays in step) and the statement fails with 54000 (53200)
/// instead of exhausting memory.
pub struct Held {
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
pub struct Rows {
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
    pub fn new(conversation: &Conversation<'_>) -> Held {
        Held {
            rows: Vec::new(),
            limit: conversation.max_buffered_bytes(),
            charge: conversation.memory().charge(),
            over: None,
        }
    }

    pub fn push(&mut self, row: &Bytes) {
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

    pub fn into_rows(self) -> Result<Rows, ErrorMessage> {
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

impl Conversation<'_> {
    /// The DataRows of requests just sent (ended by Sync), up to ReadyForQuery, held whole; the
    /// other answers pgenrich's requests get are dropped, notices and the like relayed, an error
    /// relayed.
    pub async fn fetch_rows(&mut self) -> Result<Result<Rows, Failure>, SessionError> {
        let mut rows = Held::new(self);
        let failed = self
            .collect(|kind, body| match kind {
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
}
