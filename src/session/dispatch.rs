//! Runs the work on an ML statement that the relay handed over ([`Intercept`]), in order with
//! the upstream's answers: picks the mode — streaming, base + residual, EXPLAIN — and gives it a
//! [`Conversation`]. Also what is common to every mode: Describe of an ML statement or portal
//! (answered from the statement table), a portal that no longer exists, and a Query of several
//! statements, whose ML statements may run in different modes.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info};

use super::conversation::{Chunking, Conversation, Outcome};
use super::kept::Kept;
use super::relay::planner::{self, Planned};
use super::relay::Relay;
use super::rows::message;
use super::statements::{self, CursorWork, Intercept, Prepared};
use super::{cursor, explain, residual, streaming};
use crate::enrich::Executor;
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::sql::cursor::CursorCommand;
use crate::sql::plan::Piece;

/// Runs work on an ML statement that the relay handed over, in order with the upstream's
/// answers.
pub(super) async fn intercept_ml(
    executor: &Arc<Executor>,
    chunking: Chunking,
    relay: &mut Relay,
    intercept: Intercept,
) -> Result<(), SessionError> {
    let started = std::time::Instant::now();
    // The charge of the statement, portal or cursor this work keeps, if any.
    let mut kept = None;
    let intercept = match intercept {
        // After an error earlier in this pipeline PostgreSQL discards a Query or Parse unread,
        // answering nothing: so does pgenrich, without planning it. (It planned it first, so a
        // client could have any number of statements planned for nothing, and a prepared DECLARE
        // left a cursor pgenrich held but PostgreSQL never declared.)
        Intercept::Inspect { .. } if relay.tracker.open_failed() => {
            debug!("ML message skipped unplanned: the pipeline already failed");
            return Ok(());
        }
        Intercept::Inspect { kind, body } => {
            let max_bytes = relay.max_ml_statement_bytes();
            let planned = match planner::plan(kind, body.clone(), held(relay), max_bytes).await {
                Planned::Intercept(intercept) => match charge(relay, kind, &body, &intercept) {
                    Ok(charge) => {
                        kept = charge;
                        Planned::Intercept(intercept)
                    }
                    Err(error) => Planned::Rejected(error),
                },
                planned => planned,
            };
            match planned {
                Planned::Relay => {
                    relay.relay_inspected(kind, &body);
                    return Ok(());
                }
                Planned::Rejected(error) => {
                    crate::metrics::ml_statement_refused(error.code.code());
                    relay.reject(kind, error);
                    return Ok(());
                }
                Planned::Intercept(Intercept::Cursor { kind, body, work }) => {
                    match cursor::settle(relay, kind, body, work, &mut kept) {
                        Some((kind, body, work)) => Intercept::Cursor { kind, body, work },
                        None => return Ok(()),
                    }
                }
                Planned::Intercept(intercept) => intercept,
            }
        }
        intercept => intercept,
    };
    // A cancel request that arrived while nothing of pgenrich's was running (the session idle,
    // or a plain statement) must not cancel this statement: PostgreSQL ignores those too.
    {
        use futures_util::FutureExt;
        let _ = relay.cancel_notify().notified().now_or_never();
    }
    // After an error earlier in this pipeline PostgreSQL ignores everything up to Sync, a Query
    // too (but pgenrich's snapshot transaction must end before the client's Sync all the same).
    if relay.tracker.open_failed() && !matches!(intercept, Intercept::EndSnapshot) {
        debug!("ML message skipped: the pipeline already failed");
        return Ok(());
    }
    let is_query = matches!(
        intercept,
        Intercept::Query(_)
            | Intercept::Multi(_)
            | Intercept::Residual(_)
            | Intercept::Explain { .. }
            | Intercept::Cursor {
                kind: frontend::QUERY,
                ..
            }
    );
    let mut conv = Conversation::new(relay, Arc::clone(executor), chunking);
    let conv = &mut conv;
    if is_query && !conv.tracker().is_idle() {
        // A Query ends the open extended-protocol run (PostgreSQL commits its implicit
        // transaction): a Sync of pgenrich's does that before the ML statement runs.
        conv.end_open_run().await?;
    }
    if is_query {
        // `SET pgenrich.*` values for this statement (progress, the session's row cap).
        conv.apply_session_settings().await?;
    } else if !is_query && !matches!(intercept, Intercept::EndSnapshot) {
        conv.begin_run();
    }
    let mode = match &intercept {
        Intercept::Query(_) => "streaming",
        Intercept::Multi(_) => "multi",
        Intercept::Residual(_) => "residual",
        Intercept::Explain { .. } => "explain",
        Intercept::Cursor { .. } => "cursor",
        Intercept::Execute { portal, .. } => match conv.registry().portals.get(portal) {
            Some(bound) => match &bound.statement.prepared {
                Prepared::Streaming { .. } => "streaming",
                Prepared::Residual(_) => "residual",
                Prepared::Explain { .. } => "explain",
            },
            None => "none",
        },
        _ => "none",
    };
    let outcome = match intercept {
        Intercept::Query(plan) => streaming::run_query(conv, *plan).await?,
        Intercept::Multi(pieces) => run_multi(conv, pieces).await?,
        Intercept::Residual(plan) => residual::run_query(conv, *plan).await?,
        Intercept::Explain { analyze, target } => explain::run(conv, analyze, *target).await?,
        Intercept::Parse { name, types, plan } => {
            streaming::handle_parse(conv, name, types, *plan, kept).await?;
            return conv.flush().await;
        }
        Intercept::ParseResidual { name, types, plan } => {
            residual::handle_parse(conv, name, types, *plan, kept).await?;
            return conv.flush().await;
        }
        Intercept::ParseExplain {
            name,
            analyze,
            target,
        } => {
            explain::handle_parse(conv, name, analyze, *target, kept).await?;
            return conv.flush().await;
        }
        Intercept::Describe { kind, name } => {
            let registry = conv.registry();
            if kind == b'P'
                && !registry.portals.contains_key(&name)
                && registry.cursors.contains_key(&name)
            {
                cursor::describe(conv, &name).await?;
            } else {
                describe(conv, kind, &name);
            }
            return conv.flush().await;
        }
        Intercept::Cursor { kind, body, work } => {
            match cursor::run(conv, kind, body, work, kept).await? {
                Some(outcome) => outcome,
                None => return Ok(()),
            }
        }
        Intercept::Bind(body, kept) => {
            residual::handle_bind(conv, body, kept).await?;
            return conv.flush().await;
        }
        Intercept::EndSnapshot => {
            residual::end_snapshot(conv).await?;
            return conv.flush().await;
        }
        // Resolved above: the planner never answers with another one.
        Intercept::Inspect { .. } => return Ok(()),
        Intercept::Execute { portal, max_rows } => {
            let Some(bound) = conv.registry().portals.get(&portal).cloned() else {
                // A Sync (or COMMIT) since the Bind destroyed it, as it did upstream.
                no_such_portal(conv, &portal);
                return conv.flush().await;
            };
            match &bound.statement.prepared {
                Prepared::Streaming { .. } => {
                    streaming::run_execute(conv, &portal, &bound, max_rows).await?
                }
                Prepared::Residual(_) => {
                    residual::run_execute(conv, &portal, &bound, max_rows).await?
                }
                Prepared::Explain { analyze, target } => {
                    explain::run_execute(conv, (*analyze, target), &portal, &bound, max_rows)
                        .await?
                }
            }
        }
    };
    log_outcome(&outcome, started);
    if mode != "none" {
        crate::metrics::ml_statement(mode, started.elapsed());
        crate::metrics::deduplicated(outcome.stats.duplicates_saved);
    }
    Ok(())
}

fn log_outcome(outcome: &Outcome, started: std::time::Instant) {
    info!(
        rows = outcome.rows,
        inputs = outcome.stats.rows,
        calls = outcome.stats.calls,
        duplicates_saved = outcome.stats.duplicates_saved,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ML statement"
    );
}

/// Charges what `intercept`, planned from a Query or Parse (`kind`, `body`), keeps after it
/// has run — a prepared statement, or a cursor — against the session's budgets; `Err`: refused
/// (53200).
fn charge(
    relay: &mut Relay,
    kind: u8,
    body: &[u8],
    intercept: &Intercept,
) -> Result<Option<Kept>, ErrorMessage> {
    let keeps = match intercept {
        Intercept::Parse { .. }
        | Intercept::ParseResidual { .. }
        | Intercept::ParseExplain { .. } => true,
        Intercept::Cursor { work, .. } => {
            matches!(work, CursorWork::Declare(_))
                || (kind == frontend::PARSE
                    && matches!(work, CursorWork::Command(CursorCommand::Fetch { .. })))
        }
        _ => false,
    };
    if !keeps {
        return Ok(None);
    }
    if kind == frontend::PARSE && statements::first_name(body).is_some_and(|n| n.is_empty()) {
        // This Parse replaces the unnamed statement, which PostgreSQL drops before parsing.
        relay.registry().statements.remove("");
    }
    relay.registry().budgets.statement(body.len()).map(Some)
}

/// The session's cursors over ML statements, for the planner: client name → upstream name.
fn held(relay: &mut Relay) -> planner::HeldCursors {
    relay
        .registry()
        .cursors
        .iter()
        .map(|(name, cursor)| (name.clone(), cursor.upstream.clone()))
        .collect()
}

/// Answers a message naming a portal that no longer exists, as PostgreSQL does (34000); the
/// upstream now skips to the client's Sync.
fn no_such_portal(conv: &mut Conversation<'_>, portal: &str) {
    let error = ErrorMessage::error(
        SqlState::InvalidCursorName,
        format!("portal \"{portal}\" does not exist"),
    );
    conv.to_client(error.encode());
    conv.mark_failed();
}

/// Answers Describe of an ML statement (ParameterDescription and RowDescription) or portal.
fn describe(conv: &mut Conversation<'_>, kind: u8, name: &str) {
    if kind == b'S' {
        let Some(statement) = conv.registry().statements.get(name).cloned() else {
            let error = ErrorMessage::error(
                SqlState::InvalidSqlStatementName,
                format!("prepared statement \"{name}\" does not exist"),
            );
            conv.to_client(error.encode());
            conv.mark_failed();
            return;
        };
        let formats = vec![0i16; statement.columns()];
        conv.to_client(message(b't', &statement.parameters));
        conv.to_client(match statement.row_description(&formats) {
            Some(body) => message(b'T', &body),
            None => message(b'n', &[]),
        });
    } else if let Some(portal) = conv.registry().portals.get(name).cloned() {
        conv.to_client(match portal.statement.row_description(&portal.formats) {
            Some(body) => message(b'T', &body),
            None => message(b'n', &[]),
        });
    } else {
        no_such_portal(conv, name);
    }
}

/// Runs a Query message of several statements, some with ML calls, as PostgreSQL runs a
/// multi-statement Query: in order, in one transaction (pgenrich's BEGIN/COMMIT when the session
/// is not in a transaction block), stopping at the first error.
async fn run_multi(
    conv: &mut Conversation<'_>,
    pieces: Vec<Piece>,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let wrap = conv.status() == b'I';
    if wrap {
        if let Some(error) = conv.hidden_query("BEGIN").await? {
            conv.to_client(message(b'E', &error));
            return conv.ready(b"I", outcome).await;
        }
    }
    let mut failed = false;
    let mut ready = Bytes::from_static(b"T");
    for piece in pieces {
        let (piece_failed, piece_ready) = match piece {
            Piece::Ml(plan) => streaming::run_statement(conv, plan, &mut outcome).await?,
            Piece::Residual(plan) => {
                let failed = residual::run_statement(conv, &plan, &mut outcome).await?;
                (failed, conv.status_body())
            }
            Piece::Plain(text) => {
                let mut query = text.into_bytes();
                query.push(0);
                conv.send(message(frontend::QUERY, &query)).await?;
                let ready = conv.until_ready().await?;
                (ready.first() == Some(&b'E'), ready)
            }
        };
        ready = piece_ready;
        if piece_failed || ready.first() == Some(&b'E') {
            failed = true;
            break;
        }
    }
    if wrap {
        conv.end_hidden(failed).await?;
        ready = Bytes::from_static(b"I");
    }
    conv.ready(&ready, outcome).await
}
