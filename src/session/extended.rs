//! ML statements in the extended query protocol.
//!
//! A Parse of an ML statement prepares the *base* statement upstream under a name of pgenrich's
//! (`pgenrich.s.<client name>`) and remembers its plan, parameter description and layout. Binds
//! of it are rewritten to that name with result formats per base column, and the client's portal
//! is remembered; Describe of such a statement or portal is answered by pgenrich; Execute of such
//! a portal streams it with enrichment. Messages of other statements pass through untouched.
//! Parse, Describe and Execute of ML statements are answered only once the upstream has answered
//! everything before them, so responses stay in order; in a pipeline that has already failed
//! they are skipped, as PostgreSQL skips everything up to Sync after an error.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{SessionError, SqlState};
use crate::protocol::ErrorMessage;
use crate::protocol::{frontend, split_cstr};
use crate::session::relay::Relay;
use crate::session::rows::{expand_formats, message, Layout};
use crate::sql::plan::StreamingPlan;

/// A prepared ML statement.
#[derive(Debug)]
pub struct MlStatement {
    /// The base statement's name upstream.
    pub upstream_name: String,
    /// The ParameterDescription body the client gets.
    pub parameters: Bytes,
    pub prepared: Prepared,
}

/// How a prepared ML statement runs.
#[derive(Debug)]
pub enum Prepared {
    /// Streaming enrichment of the base statement's rows.
    Streaming {
        plan: Arc<StreamingPlan>,
        layout: Arc<Layout>,
    },
    /// Base statement, then residual statement ([`crate::session::finish`]).
    Finish(Box<crate::session::finish::Prepared>),
    /// `EXPLAIN [ANALYZE]` of an ML statement, answered by pgenrich
    /// ([`crate::session::explain`]); nothing of it is prepared upstream.
    Explain {
        analyze: bool,
        target: Arc<crate::session::explain::Target>,
    },
}

impl MlStatement {
    /// Runs as base + residual statements (two snapshots unless pgenrich holds one).
    pub fn two_phase(&self) -> bool {
        matches!(self.prepared, Prepared::Finish(_))
    }

    /// An EXPLAIN, whose Bind pgenrich answers itself.
    pub fn is_explain(&self) -> bool {
        matches!(self.prepared, Prepared::Explain { .. })
    }

    /// Columns of the client's result.
    pub fn columns(&self) -> usize {
        match &self.prepared {
            Prepared::Streaming { layout, .. } => layout.columns.len(),
            Prepared::Finish(finish) => finish.columns(),
            Prepared::Explain { .. } => 1,
        }
    }

    /// The client's RowDescription body with `formats`, `None` for NoData.
    pub fn row_description(&self, formats: &[i16]) -> Option<Vec<u8>> {
        match &self.prepared {
            Prepared::Streaming { layout, .. } => Some(layout.row_description(formats)),
            Prepared::Finish(finish) => finish.row_description(formats),
            Prepared::Explain { .. } => Some(crate::session::explain::plan_description(
                formats.first().copied().unwrap_or(0),
            )),
        }
    }
}

/// A portal bound to an ML statement.
#[derive(Debug, Clone)]
pub struct MlPortal {
    pub statement: Arc<MlStatement>,
    /// Closing messages (Sync, Query) forwarded before the Bind: the portal ends with the
    /// transaction the next of them ends.
    pub epoch: u64,
    /// Result format per client column.
    pub formats: Arc<Vec<i16>>,
    /// The Bind's parameters (format codes, then count and values), for a residual statement.
    pub parameters: Bytes,
    /// A base + residual portal whose residual runs upstream already.
    pub started: bool,
    /// Where a chunked base + residual portal stands.
    pub chunked: crate::session::finish::ChunkedState,
    /// An EXPLAIN portal's lines, once computed, and how many were sent.
    pub explained: Option<(Arc<Vec<String>>, usize)>,
}

/// The session's ML statements and portals, by client name.
#[derive(Debug, Default)]
pub struct Registry {
    pub statements: HashMap<String, Arc<MlStatement>>,
    pub portals: HashMap<String, MlPortal>,
}

/// Work the session does itself, in order with the upstream's answers.
#[derive(Debug)]
pub enum Intercept {
    /// A simple-protocol Query with ML calls.
    Query(Box<StreamingPlan>),
    /// A simple-protocol Query of several statements, some with ML calls.
    Multi(Vec<crate::sql::plan::Piece>),
    /// A simple-protocol Query whose ML calls need the base + residual plan.
    Finish(Box<crate::sql::finish::FinishPlan>),
    /// A simple-protocol `EXPLAIN [ANALYZE]` of an ML statement.
    Explain {
        analyze: bool,
        target: Box<crate::session::explain::Target>,
    },
    Parse {
        name: String,
        /// Parameter type section of the Parse body (count and OIDs), as sent.
        types: Bytes,
        plan: Box<StreamingPlan>,
    },
    ParseFinish {
        name: String,
        types: Bytes,
        plan: Box<crate::sql::finish::FinishPlan>,
    },
    Describe {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: usize,
    },
    ParseExplain {
        name: String,
        analyze: bool,
        target: Box<crate::session::explain::Target>,
    },
    /// A Bind (body) of an EXPLAIN, or of a base + residual statement while the session may be
    /// idle.
    Bind(Bytes),
    /// pgenrich's snapshot transaction must end before the client's next message.
    EndSnapshot,
}

fn cstr(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first cstring of a message body.
pub fn first_name(body: &[u8]) -> Option<String> {
    split_cstr(body).map(|(name, _)| cstr(name))
}

/// Parse body: (statement name, rest after the query text).
pub fn parse_parts(body: &[u8]) -> Option<(String, &[u8])> {
    let (name, rest) = split_cstr(body)?;
    let (_query, types) = split_cstr(rest)?;
    Some((cstr(name), types))
}

/// Describe / Close body: (kind, name).
pub fn target(body: &[u8]) -> Option<(u8, String)> {
    let (&kind, rest) = body.split_first()?;
    Some((kind, first_name(rest)?))
}

/// Execute body: (portal, max rows).
pub fn execute_parts(body: &[u8]) -> Option<(String, usize)> {
    let (portal, rest) = split_cstr(body)?;
    let rows = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    Some((cstr(portal), rows.max(0) as usize))
}

impl Registry {
    /// A transaction ended with the `answered`-th ReadyForQuery: its portals are gone.
    pub fn transaction_ended(&mut self, answered: u64) {
        self.portals.retain(|_, portal| portal.epoch >= answered);
    }

    /// The ML statement a Bind body names, if any.
    pub fn statement_of_bind(&self, body: &[u8]) -> Option<&Arc<MlStatement>> {
        let (_portal, rest) = split_cstr(body)?;
        let (statement, _) = split_cstr(rest)?;
        self.statements.get(&cstr(statement))
    }

    /// Rewrites a Bind of an ML statement to the upstream statement with per-base-column result
    /// formats, and remembers the portal. `None`: not an ML statement (relay unchanged).
    pub fn rewrite_bind(&mut self, body: &[u8], epoch: u64) -> Option<Bytes> {
        let (portal, rest) = split_cstr(body)?;
        let (statement, rest) = split_cstr(rest)?;
        let portal = cstr(portal);
        let Some(ml) = self.statements.get(&cstr(statement)).cloned() else {
            self.portals.remove(&portal);
            return None;
        };
        // Parameter formats and values pass as they are; only the result formats change.
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let slice = rest.get(*at..*at + n)?;
            *at += n;
            Some(slice)
        };
        let nformats = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?).max(0) as usize;
        take(&mut at, 2 * nformats)?;
        let nparams = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?).max(0) as usize;
        for _ in 0..nparams {
            let len = i32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
            if len > 0 {
                take(&mut at, len as usize)?;
            }
        }
        let params = &rest[..at];
        let nresults = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?).max(0) as usize;
        let codes: Vec<i16> = (0..nresults)
            .map(|_| {
                take(&mut at, 2)
                    .and_then(|b| b.try_into().ok())
                    .map(i16::from_be_bytes)
            })
            .collect::<Option<_>>()?;
        let client_formats = expand_formats(&codes, ml.columns());
        let base_formats = match &ml.prepared {
            Prepared::Streaming { layout, .. } => layout.base_formats(&client_formats),
            Prepared::Finish(finish) => finish.base_formats(),
            Prepared::Explain { .. } => Vec::new(),
        };
        let mut out = BytesMut::with_capacity(body.len() + 2 * base_formats.len() + 32);
        out.put_slice(portal.as_bytes());
        out.put_u8(0);
        out.put_slice(ml.upstream_name.as_bytes());
        out.put_u8(0);
        out.put_slice(params);
        out.put_u16(base_formats.len() as u16);
        for format in &base_formats {
            out.put_i16(*format);
        }
        self.portals.insert(
            portal,
            MlPortal {
                statement: ml,
                epoch,
                formats: Arc::new(client_formats),
                parameters: Bytes::copy_from_slice(params),
                started: false,
                chunked: Default::default(),
                explained: None,
            },
        );
        Some(message(frontend::BIND, &out))
    }

    /// Rewrites a Close of an ML statement to its upstream name and forgets it.
    pub fn rewrite_close(&mut self, body: &[u8]) -> Option<Bytes> {
        let (kind, name) = target(body)?;
        if kind == b'P' {
            self.portals.remove(&name);
            return None;
        }
        let statement = self.statements.remove(&name)?;
        let mut out = vec![b'S'];
        out.extend_from_slice(statement.upstream_name.as_bytes());
        out.push(0);
        Some(message(frontend::CLOSE, &out))
    }
}

/// Prepares an ML statement upstream and answers the client's Parse.
pub async fn handle_parse(
    relay: &mut Relay,
    name: String,
    types: Bytes,
    plan: StreamingPlan,
) -> Result<(), SessionError> {
    let upstream_name = format!("pgenrich.s.{name}");
    let mut requests = BytesMut::new();
    // Replace an earlier statement of the same client name (always so for the unnamed one).
    let mut close = vec![b'S'];
    close.extend_from_slice(upstream_name.as_bytes());
    close.push(0);
    requests.put_slice(&message(frontend::CLOSE, &close));
    let mut parse = upstream_name.as_bytes().to_vec();
    parse.push(0);
    parse.extend_from_slice(plan.base_sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&types);
    requests.put_slice(&message(frontend::PARSE, &parse));
    requests.put_slice(&message(frontend::DESCRIBE, &close));
    requests.put_slice(&message(b'H', &[]));
    relay.send_upstream_now(requests.freeze()).await?;
    let plan = Arc::new(plan);
    let mut parameters = Bytes::new();
    loop {
        let (kind, body) = relay.next_upstream_message().await?;
        match kind {
            b'3' | b'1' => {}
            b't' => parameters = body,
            b'T' | b'n' => {
                let layout = Arc::new(Layout::new(
                    &plan,
                    if kind == b'T' { &body } else { &[0, 0] },
                ));
                relay.registry().statements.insert(
                    name,
                    Arc::new(MlStatement {
                        upstream_name,
                        parameters,
                        prepared: Prepared::Streaming { plan, layout },
                    }),
                );
                relay.push_to_client(message(b'1', &[]));
                return Ok(());
            }
            b'E' => {
                // The database rejected the base statement: its error answers the Parse.
                relay.registry().statements.remove(&name);
                relay.push_to_client(message(b'E', &body));
                relay.mark_extended_failed();
                return Ok(());
            }
            _ => relay.push_to_client(message(kind, &body)),
        }
    }
}

/// Answers a message naming a portal that no longer exists, as PostgreSQL does (34000); the
/// upstream now skips to the client's Sync.
pub fn no_such_portal(relay: &mut Relay, portal: &str) {
    let error = ErrorMessage::error(
        SqlState::InvalidCursorName,
        format!("portal \"{portal}\" does not exist"),
    );
    relay.push_to_client(error.encode());
    relay.mark_extended_failed();
}

/// Answers Describe of an ML statement (ParameterDescription and RowDescription) or portal.
pub fn handle_describe(relay: &mut Relay, kind: u8, name: &str) {
    if kind == b'S' {
        let Some(statement) = relay.registry().statements.get(name).cloned() else {
            let error = ErrorMessage::error(
                SqlState::InvalidSqlStatementName,
                format!("prepared statement \"{name}\" does not exist"),
            );
            relay.push_to_client(error.encode());
            relay.mark_extended_failed();
            return;
        };
        let formats = vec![0i16; statement.columns()];
        relay.push_to_client(message(b't', &statement.parameters));
        relay.push_to_client(match statement.row_description(&formats) {
            Some(body) => message(b'T', &body),
            None => message(b'n', &[]),
        });
    } else if let Some(portal) = relay.registry().portals.get(name).cloned() {
        relay.push_to_client(match portal.statement.row_description(&portal.formats) {
            Some(body) => message(b'T', &body),
            None => message(b'n', &[]),
        });
    } else {
        no_such_portal(relay, name);
    }
}
