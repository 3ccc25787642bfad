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

/// Passes on the client's Bind of a base + residual statement, first opening pgenrich's
/// snapshot transaction when the session is idle and nothing of the client's would be lost.
pub async fn handle_bind(relay: &mut Relay, body: Bytes) -> Result<(), SessionError> {
    use crate::session::extended::Prepared as Kind;
    let read_only = match relay
        .registry()
        .statement_of_bind(&body)
        .map(|s| &s.prepared)
    {
        Some(Kind::Finish(prepared)) => !prepared.writes(),
        Some(Kind::Explain { .. }) => {
            // Nothing is bound upstream: the portal is pgenrich's alone.
            let epoch = relay.tracker.closings_forwarded();
            relay.registry().rewrite_bind(&body, epoch);
            relay.push_to_client(message(b'2', &[]));
            return Ok(());
        }
        _ => true,
    };
    if !relay.snapshot_open && relay.tracker.status() == b'I' && relay.tracker.can_resync() {
        sync_upstream(relay).await?;
        match wire::catalog_rows(relay, snapshot_begin(read_only), false).await? {
            Ok(_) => {
                relay.snapshot_open = true;
                relay.snapshot_binds = relay.tracker.binds();
            }
            Err(error) => {
                // The upstream now skips to the client's Sync, the Bind included.
                relay.push_to_client(message(b'E', &error));
                relay.mark_extended_failed();
            }
        }
    }
    let epoch = relay.tracker.closings_forwarded();
    let bind = relay
        .registry()
        .rewrite_bind(&body, epoch)
        .unwrap_or_else(|| message(frontend::BIND, &body));
    relay.forward_upstream(frontend::BIND, bind);
    Ok(())
}

/// The client's portal has returned its last row: commits pgenrich's snapshot transaction, if
/// one is open for this portal alone and has not failed, so the rest of the pipeline runs
/// outside it.
pub(crate) async fn portal_done(relay: &mut Relay) -> Result<(), SessionError> {
    // With other portals bound in it (a suspended one, say), it lasts until the client's Sync,
    // as they would natively.
    let binds = relay.tracker.binds() - relay.snapshot_binds;
    if !relay.snapshot_open || relay.extended_failed() || binds > 1 {
        return Ok(());
    }
    match wire::catalog_rows(relay, "COMMIT", false).await? {
        Ok(_) => relay.snapshot_open = false,
        Err(error) => {
            relay.push_to_client(message(b'E', &error));
            relay.mark_extended_failed();
        }
    }
    Ok(())
}

/// Before the client's Sync (or Query, FunctionCall) while pgenrich's snapshot transaction is
/// open: ends it — a Sync of pgenrich's stops the skipping after an error, then COMMIT (which
/// PostgreSQL turns into ROLLBACK in a failed transaction) — so the client's message finds the
/// session as natively: outside a transaction block.
pub async fn end_snapshot(relay: &mut Relay) -> Result<(), SessionError> {
    if !relay.snapshot_open {
        return Ok(());
    }
    sync_upstream(relay).await?;
    relay.snapshot_open = false;
    if let Err(error) = wire::catalog_rows(relay, "COMMIT", true).await? {
        relay.push_to_client(message(b'E', &error));
    }
    Ok(())
}

/// Sends a Sync of pgenrich's and reads up to its ReadyForQuery.
pub(crate) async fn sync_upstream(relay: &mut Relay) -> Result<(), SessionError> {
    relay
        .send_upstream_now(message(frontend::SYNC, &[]))
        .await?;
    collect(relay, |_, _| false).await?;
    Ok(())
}
