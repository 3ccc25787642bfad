//! Cursors over ML statements: `DECLARE name CURSOR FOR <ML SELECT>`, then FETCH, MOVE and
//! CLOSE ([`crate::sql::cursor`] plans them). Where the statement streams, pgenrich declares a
//! cursor of its own over the base statement and scores the rows of each FETCH as the streaming
//! mode scores a SELECT's (chunk by chunk, in bounded memory); otherwise the statement runs as
//! base and residual statements at DECLARE, and the residual statement declares pgenrich's
//! cursor, which FETCH then reads as it is. The session's cursors are in the statement table ([`MlCursor`]); errors name
//! the client's cursor, not pgenrich's. Like EXPLAIN, this uses the execution modes' phases.
//!
//! A streaming DECLARE in the simple protocol is remembered once PostgreSQL has accepted it; one
//! scored whole, just before it runs; a prepared one (psycopg's named cursors) when its Parse
//! passes, since its Execute may come much later. A cursor without HOLD is forgotten when its
//! transaction ends; CLOSE, CLOSE ALL, DISCARD ALL and a DECLARE of the name without ML calls
//! forget it too (sent as a Query, CLOSE ALL and DISCARD ALL — and DEALLOCATE of an ML statement —
//! forget only once PostgreSQL has accepted them; sent as a Parse, these and CLOSE forget once an
//! Execute of the statement completes, [`super::deferred`]). A cursor that ended upstream in any
//! other way (ROLLBACK TO SAVEPOINT, a rolled back WITH HOLD, a DECLARE that failed) gives
//! PostgreSQL's own `34000` on the next FETCH.

use std::sync::Arc;

use bytes::Bytes;

use super::conversation::requests::{flushed, named};
use super::conversation::{Conversation, Outcome};
use super::deferred::Forget;
use super::relay::Relay;
use super::rows::{message, Layout};
use super::statements::{self, CursorWork, MlCursor, Registry};
use super::{residual, streaming};
use crate::error::SessionError;
use crate::protocol::{self, frontend};
use crate::session::kept::Kept;
use crate::sql::cursor::{CursorCommand, CursorQuery, DeclarePlan};
use crate::sql::plan::StreamingPlan;

/// Settles what needs no conversation: statements relayed (rewritten or as they are) that only
/// change the session's cursors. Returns the work left for [`run`].
/// `kept` is the charge of what the statement keeps ([`crate::session::kept`]): taken by the
/// cursor settled here, if one is.
pub(super) fn settle(
    relay: &mut Relay,
    kind: u8,
    body: Bytes,
    work: CursorWork,
    kept: &mut Option<Kept>,
) -> Option<(u8, Bytes, CursorWork)> {
    let parse = kind == frontend::PARSE;
    let rewritten = |sql: &str| reparse(&body, sql).unwrap_or_else(|| body.clone());
    match work {
        // As a Query, a command that forgets names pgenrich holds runs as a conversation: they
        // are forgotten only once PostgreSQL has accepted it (it refuses them in an aborted
        // transaction, DISCARD ALL in a transaction block).
        CursorWork::Command(ref command) if !parse && forgets_any(relay.registry(), command) => {
            return Some((kind, body, work));
        }
        // The rest of these only name what pgenrich does not hold, or are prepared: a Parse only
        // names the command, which forgets once an Execute of it completes.
        CursorWork::Command(CursorCommand::CloseAll) => {
            if !(parse && defer(relay, &body, Forget::AllCursors)) {
                relay.registry().cursors.clear();
            }
            relay.relay_inspected(kind, &body);
        }
        CursorWork::Command(
            ref command @ (CursorCommand::DiscardAll | CursorCommand::DeallocateAll),
        ) => {
            if parse {
                let forget = match command {
                    CursorCommand::DiscardAll => Forget::Everything,
                    _ => Forget::AllStatements,
                };
                defer(relay, &body, forget);
            }
            relay.relay_inspected(kind, &body);
        }
        CursorWork::Command(CursorCommand::Deallocate { name, at }) => {
            // The statement upstream is pgenrich's.
            match deallocate_renamed(relay.registry(), kind, &body, &name, at) {
                Some(sql) => {
                    let upstream = relay.registry().statements.get(&name);
                    if let Some(upstream) =
                        upstream.filter(|_| parse).map(|s| s.upstream_name.clone())
                    {
                        defer(relay, &body, Forget::Statement { name, upstream });
                    }
                    relay.relay_inspected(kind, &rewritten(&sql));
                }
                None => relay.relay_inspected(kind, &body),
            }
        }
        CursorWork::Command(CursorCommand::Redeclare { name }) => {
            relay.registry().cursors.remove(&name);
            relay.relay_inspected(kind, &body);
        }
        CursorWork::Command(CursorCommand::Move { sql, .. }) if parse => {
            relay.relay_inspected(kind, &rewritten(&sql));
        }
        CursorWork::Command(CursorCommand::Close { name, sql }) if parse => {
            let upstream = relay
                .registry()
                .cursors
                .get(&name)
                .map(|c| c.upstream.clone());
            let deferred = upstream.is_some_and(|upstream| {
                let forget = Forget::Cursor {
                    name: name.clone(),
                    upstream,
                };
                defer(relay, &body, forget)
            });
            if !deferred {
                relay.registry().cursors.remove(&name);
            }
            relay.relay_inspected(kind, &rewritten(&sql));
        }
        CursorWork::Command(CursorCommand::Fetch { name, sql })
            if parse
                && relay
                    .registry()
                    .cursors
                    .get(&name)
                    .is_some_and(|c| c.plan.is_none()) =>
        {
            // A cursor over finished rows: read as they are.
            relay.relay_inspected(kind, &rewritten(&sql));
        }
        CursorWork::Declare(declare) if parse && declare.streaming_sql().is_some() => {
            let epoch = relay.tracker.closings_forwarded();
            let DeclarePlan {
                name,
                upstream,
                hold,
                query,
            } = *declare;
            if let CursorQuery::Streaming { sql, plan } = query {
                let body = rewritten(&sql);
                let cursor = remembered(upstream, Some(plan), hold, epoch, kept.take());
                relay.registry().cursors.insert(name, cursor);
                relay.relay_inspected(kind, &body);
            }
        }
        work => return Some((kind, body, work)),
    }
    None
}

/// Whether `command` (CLOSE ALL, DISCARD ALL, DEALLOCATE) forgets any name pgenrich holds.
fn forgets_any(registry: &Registry, command: &CursorCommand) -> bool {
    match command {
        CursorCommand::CloseAll => !registry.cursors.is_empty(),
        CursorCommand::DiscardAll => registry.names_any(),
        CursorCommand::DeallocateAll => !registry.statements.is_empty(),
        CursorCommand::Deallocate { name, .. } => registry.statements.contains_key(name),
        _ => false,
    }
}

/// The text of a `DEALLOCATE name` (a Query or Parse body) naming pgenrich's statement upstream
/// instead of the client's ML statement `name`; `None` when `name` is not an ML statement.
fn deallocate_renamed(
    registry: &Registry,
    kind: u8,
    body: &[u8],
    name: &str,
    at: std::ops::Range<usize>,
) -> Option<String> {
    let upstream = &registry.statements.get(name)?.upstream_name;
    let text = protocol::statement_text(kind, body).unwrap_or_default();
    Some(crate::sql::cursor::rename(
        &String::from_utf8_lossy(text),
        at,
        upstream,
    ))
}

/// Remembers that the Parse `body` prepares a command that forgets `forget` once an Execute of it
/// completes ([`crate::session::deferred`]). False when it cannot be remembered.
fn defer(relay: &mut Relay, body: &[u8], forget: Forget) -> bool {
    statements::first_name(body)
        .is_some_and(|name| relay.registry().deferred.prepared(name, forget))
}

/// Forgets what `command` (sent as a Query) ended upstream; prepared statements and cursors give
/// their charges back as they go.
fn forget(registry: &mut Registry, command: &CursorCommand) {
    let forget = match command {
        CursorCommand::CloseAll => Forget::AllCursors,
        CursorCommand::DiscardAll => Forget::Everything,
        CursorCommand::DeallocateAll => Forget::AllStatements,
        CursorCommand::Deallocate { name, .. } => match registry.statements.get(name) {
            Some(ml) => Forget::Statement {
                name: name.clone(),
                upstream: ml.upstream_name.clone(),
            },
            None => return,
        },
        _ => return,
    };
    registry.forget(&forget);
}

/// A Parse body like `body` (statement name, parameter types) with the text `sql`.
fn reparse(body: &[u8], sql: &str) -> Option<Bytes> {
    let (name, types) = statements::parse_parts(body)?;
    let mut out = Vec::with_capacity(name.len() + sql.len() + types.len() + 2);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out.extend_from_slice(types);
    Some(Bytes::from(out))
}

/// The client's cursor to remember: pgenrich's `upstream` one, scored per FETCH by `plan`
/// (`None`: over finished rows).
fn remembered(
    upstream: String,
    plan: Option<StreamingPlan>,
    hold: bool,
    epoch: u64,
    kept: Option<Kept>,
) -> Arc<MlCursor> {
    Arc::new(MlCursor {
        upstream,
        plan: plan.map(Arc::new),
        hold,
        epoch,
        kept,
    })
}

/// Runs a DECLARE, FETCH, MOVE or CLOSE sent as a Query (answered up to ReadyForQuery), or a
/// FETCH sent as a Parse (prepared as a streaming ML statement; `None`). A CLOSE ALL, DISCARD
/// ALL or DEALLOCATE sent as a Query forgets pgenrich's names once PostgreSQL accepts it
/// (`None`: not an ML statement). `kept`: the charge of the cursor or statement it keeps.
pub(super) async fn run(
    conv: &mut Conversation<'_>,
    kind: u8,
    body: Bytes,
    work: CursorWork,
    kept: Option<Kept>,
) -> Result<Option<Outcome>, SessionError> {
    // (Which statement, and whether it fetches, closes or moves.)
    let (name, sql, fetch, close) = match work {
        CursorWork::Declare(declare) => {
            return declare_cursor(conv, (kind, body), *declare, kept).await
        }
        CursorWork::Command(CursorCommand::Fetch { name, sql }) => (name, sql, true, false),
        CursorWork::Command(CursorCommand::Close { name, sql }) => (name, sql, false, true),
        CursorWork::Command(CursorCommand::Move { name, sql }) => (name, sql, false, false),
        // Queries that forget names pgenrich holds: forgotten once PostgreSQL accepts them.
        CursorWork::Command(
            command @ (CursorCommand::CloseAll
            | CursorCommand::DiscardAll
            | CursorCommand::Deallocate { .. }
            | CursorCommand::DeallocateAll),
        ) if kind == frontend::QUERY => {
            let renamed = match &command {
                CursorCommand::Deallocate { name, at } => {
                    deallocate_renamed(conv.registry(), kind, &body, name, at.clone())
                }
                _ => None,
            };
            let sql = renamed.unwrap_or_else(|| {
                let text = protocol::statement_text(kind, &body).unwrap_or_default();
                String::from_utf8_lossy(text).into_owned()
            });
            let (failed, ready) = query(conv, &sql).await?;
            if !failed {
                forget(conv.registry(), &command);
            }
            // Not an ML statement: neither counted nor logged as one.
            finish(conv, ready).await?;
            return Ok(None);
        }
        // Settled before a conversation began.
        CursorWork::Command(
            CursorCommand::CloseAll
            | CursorCommand::Redeclare { .. }
            | CursorCommand::DiscardAll
            | CursorCommand::Deallocate { .. }
            | CursorCommand::DeallocateAll,
        ) => {
            conv.forward(kind, message(kind, &body));
            conv.flush().await?;
            return Ok(None);
        }
    };
    let Some(cursor) = conv.registry().cursors.get(&name).cloned() else {
        conv.forward(kind, message(kind, &body));
        conv.flush().await?;
        return Ok(None);
    };
    conv.rename_in_errors(&cursor.upstream, &name);
    if let Some(plan) = cursor.plan.as_ref().filter(|_| fetch) {
        let plan = StreamingPlan {
            base_sql: sql,
            ..(**plan).clone()
        };
        if let Some((statement, types)) = statements::parse_parts(&body)
            .filter(|_| kind == frontend::PARSE)
            .map(|(name, types)| (name, Bytes::copy_from_slice(types)))
        {
            streaming::handle_parse(conv, statement, types, plan, kept).await?;
            conv.flush().await?;
            return Ok(None);
        }
        return streaming::run_query(conv, plan).await.map(Some);
    }
    // MOVE, CLOSE, or FETCH of finished rows.
    let (failed, ready) = query(conv, &sql).await?;
    if !failed && close {
        conv.registry().cursors.remove(&name);
    }
    finish(conv, ready).await
}

/// Declares a cursor: in the simple protocol, pgenrich's cursor over the base statement (then
/// remembered), or over the residual statement, scored whole; as a Parse, the residual's (a
/// streaming one is settled before).
async fn declare_cursor(
    conv: &mut Conversation<'_>,
    (kind, body): (u8, Bytes),
    declare: DeclarePlan,
    kept: Option<Kept>,
) -> Result<Option<Outcome>, SessionError> {
    let DeclarePlan {
        name,
        upstream,
        hold,
        query: cursor_query,
    } = declare;
    conv.rename_in_errors(&upstream, &name);
    let epoch = conv.tracker().closings_forwarded();
    let plan = match cursor_query {
        CursorQuery::Streaming { sql, plan } => {
            let (failed, ready) = query(conv, &sql).await?;
            if !failed {
                let cursor = remembered(upstream, Some(plan), hold, epoch, kept);
                conv.registry().cursors.insert(name, cursor);
            }
            return finish(conv, ready).await;
        }
        CursorQuery::Residual(plan) => *plan,
    };
    if kind == frontend::PARSE {
        let Some((statement, types)) = statements::parse_parts(&body) else {
            return Ok(None);
        };
        let types = Bytes::copy_from_slice(types);
        // The statement keeps the plan: the charge is its.
        let cursor = remembered(upstream, None, hold, epoch, None);
        conv.registry().cursors.insert(name, cursor);
        residual::handle_parse(conv, statement, types, plan, kept).await?;
        conv.flush().await?;
        return Ok(None);
    }
    if conv.status() == b'I' && !hold {
        // Outside a block, PostgreSQL refuses the cursor before any row is scored: its own
        // error, from a DECLARE that needs nothing scored.
        let refused = format!("DECLARE \"{upstream}\" CURSOR FOR SELECT");
        let (_, ready) = query(conv, &refused).await?;
        return finish(conv, ready).await;
    }
    // Remembered before it runs: if it fails, a FETCH gets PostgreSQL's 34000 as natively.
    let cursor = remembered(upstream, None, hold, epoch, kept);
    conv.registry().cursors.insert(name, cursor);
    residual::run_query(conv, plan).await.map(Some)
}

/// Sends the Query `sql` and relays its answers up to ReadyForQuery: whether it failed, and the
/// ReadyForQuery body.
async fn query(conv: &mut Conversation<'_>, sql: &str) -> Result<(bool, Bytes), SessionError> {
    let mut text = sql.as_bytes().to_vec();
    text.push(0);
    conv.send(message(frontend::QUERY, &text)).await?;
    conv.until_ready_failed().await
}

async fn finish(
    conv: &mut Conversation<'_>,
    ready: Bytes,
) -> Result<Option<Outcome>, SessionError> {
    conv.to_client(message(b'Z', &ready));
    conv.flush().await?;
    Ok(Some(Outcome::default()))
}

/// Answers Describe of a cursor over an ML statement (a portal, for the protocol): the
/// upstream cursor's columns with the ML results in place of their placeholders.
pub(super) async fn describe(conv: &mut Conversation<'_>, name: &str) -> Result<(), SessionError> {
    let Some(cursor) = conv.registry().cursors.get(name).cloned() else {
        return Ok(());
    };
    conv.rename_in_errors(&cursor.upstream, name);
    conv.send(flushed(message(
        frontend::DESCRIBE,
        &named(b'P', &cursor.upstream),
    )))
    .await?;
    match conv.answers(1).await? {
        Ok(answers) => {
            for (kind, body) in answers {
                if let (b'T', Some(plan)) = (kind, &cursor.plan) {
                    let layout = Layout::new(plan, &body);
                    let formats = vec![0i16; layout.columns.len()];
                    conv.to_client(message(b'T', &layout.row_description(&formats)));
                } else {
                    conv.to_client(message(kind, &body));
                }
            }
        }
        Err(error) => {
            conv.to_client(message(b'E', &error));
            conv.mark_failed();
        }
    }
    Ok(())
}
