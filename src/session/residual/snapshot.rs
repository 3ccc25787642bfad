//! One snapshot for both phases of a prepared base + residual statement run outside a
//! transaction block.
//!
//! In the extended protocol the client's messages up to Sync share one implicit transaction, in
//! which every statement (the base portal at Bind, the residual at the first Execute) takes its
//! own snapshot under READ COMMITTED. So when the client binds such a statement while idle, and
//! its implicit transaction holds nothing of its own yet (no portal bound or executed since its
//! last Sync, no error), pgenrich ends that transaction with a Sync of its own and opens its hidden
//! `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` before the Bind. The transaction is
//! committed as soon as the portal has returned its last row, so that the rest of the client's
//! pipeline runs as it would natively; a portal left suspended (or failed) keeps it open until
//! the client's Sync, where pgenrich ends it before passing the Sync on, so the client sees the
//! ReadyForQuery status it would natively. When the implicit transaction already holds client
//! state, the statement runs in it as it is.

use super::*;
use crate::session::conversation::transaction::snapshot_begin;
use crate::session::kept::Kept;

/// Passes on the client's Bind of a base + residual statement, first opening pgenrich's
/// snapshot transaction when the session is idle and nothing of the client's would be lost.
pub async fn handle_bind(
    conv: &mut Conversation<'_>,
    body: Bytes,
    kept: Kept,
) -> Result<(), SessionError> {
    use crate::session::statements::Prepared as Kind;
    let read_only = match conv
        .registry()
        .statement_of_bind(&body)
        .map(|s| &s.prepared)
    {
        Some(Kind::Residual(prepared)) => !prepared.writes(),
        Some(Kind::Explain { .. }) => {
            // Nothing is bound upstream: the portal is pgenrich's alone.
            let epoch = conv.tracker().closings_forwarded();
            conv.registry().rewrite_bind(&body, epoch, Some(kept));
            conv.to_client(message(b'2', &[]));
            return Ok(());
        }
        _ => true,
    };
    if !conv.snapshot_open() && conv.status() == b'I' && conv.tracker().can_resync() {
        conv.sync_upstream().await?;
        match catalog::catalog_rows(conv, snapshot_begin(read_only), false).await? {
            Ok(_) => conv.set_snapshot_open(true),
            Err(error) => {
                // The upstream now skips to the client's Sync, the Bind included.
                conv.to_client(message(b'E', &error));
                conv.mark_failed();
            }
        }
    }
    let epoch = conv.tracker().closings_forwarded();
    let bind = conv
        .registry()
        .rewrite_bind(&body, epoch, Some(kept))
        .unwrap_or_else(|| message(frontend::BIND, &body));
    conv.forward(frontend::BIND, bind);
    Ok(())
}

/// The client's portal has returned its last row: commits pgenrich's snapshot transaction, if
/// one is open for this portal alone and has not failed, so the rest of the pipeline runs
/// outside it.
pub(crate) async fn portal_done(conv: &mut Conversation<'_>) -> Result<(), SessionError> {
    // With other portals bound in it (a suspended one, say), it lasts until the client's Sync,
    // as they would natively.
    if !conv.snapshot_open() || conv.failed() || conv.binds_in_snapshot() > 1 {
        return Ok(());
    }
    match catalog::catalog_rows(conv, "COMMIT", false).await? {
        Ok(_) => conv.set_snapshot_open(false),
        Err(error) => {
            conv.to_client(message(b'E', &error));
            conv.mark_failed();
        }
    }
    Ok(())
}

/// Before the client's Sync (or Query, FunctionCall) while pgenrich's snapshot transaction is
/// open: ends it — a Sync of pgenrich's stops the skipping after an error, then COMMIT (which
/// PostgreSQL turns into ROLLBACK in a failed transaction) — so the client's message finds the
/// session as natively: outside a transaction block.
pub async fn end_snapshot(conv: &mut Conversation<'_>) -> Result<(), SessionError> {
    if !conv.snapshot_open() {
        return Ok(());
    }
    conv.sync_upstream().await?;
    conv.set_snapshot_open(false);
    if let Err(error) = catalog::catalog_rows(conv, "COMMIT", true).await? {
        conv.to_client(message(b'E', &error));
    }
    Ok(())
}
