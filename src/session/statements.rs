//! The session's table of ML statements and portals (extended query protocol), and the work the
//! relay hands to the session's task ([`Intercept`]) — plain data, which the relay owns and every
//! mode reads; no I/O here.
//!
//! A Parse of an ML statement prepares the *base* statement upstream under a name of pgenrich's
//! (`pgenrich.s.<client name>`) and remembers its plan, parameter description and layout. Binds
//! of it are rewritten to that name with result formats per base column, and the client's portal
//! is remembered; Describe of such a statement or portal is answered by pgenrich; Execute of such
//! a portal runs it in its mode. Messages of other statements pass through untouched. Parse,
//! Describe and Execute of ML statements are answered only once the upstream has answered
//! everything before them, so responses stay in order; in a pipeline that has already failed
//! they are skipped, as PostgreSQL skips everything up to Sync after an error.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{frontend, split_cstr};
use crate::session::deferred::{Deferred, Forget};
use crate::session::kept::{Kept, KeptBudgets};
use crate::session::rows::{expand_formats, message, split_fields, Layout};
use crate::session::scoring::Memo;
use crate::sql::cursor::{CursorCommand, DeclarePlan};
use crate::sql::explain::ExplainTarget;
use crate::sql::plan::StreamingPlan;
use crate::sql::residual::{CarriedType, Described, ResidualPlan};

/// A prepared ML statement.
#[derive(Debug)]
pub struct MlStatement {
    /// The base statement's name upstream.
    pub upstream_name: String,
    /// The ParameterDescription body the client gets.
    pub parameters: Bytes,
    pub prepared: Prepared,
    /// Its charge against the prepared-statement budgets (given back with the statement).
    pub kept: Option<Kept>,
}

/// How a prepared ML statement runs.
#[derive(Debug)]
pub enum Prepared {
    /// Streaming enrichment of the base statement's rows.
    Streaming {
        plan: Arc<StreamingPlan>,
        layout: Arc<Layout>,
    },
    /// Base statements, then the residual statement ([`crate::session::residual`]).
    Residual(Box<ResidualStatement>),
    /// `EXPLAIN [ANALYZE]` of an ML statement, answered by pgenrich
    /// ([`crate::session::explain`]); nothing of it is prepared upstream.
    Explain {
        analyze: bool,
        target: Arc<ExplainTarget>,
    },
}

/// A prepared base + residual statement.
#[derive(Debug)]
pub struct ResidualStatement {
    pub plan: ResidualPlan,
    /// Per block: its base statement's name upstream and its shape.
    pub bases: Vec<(String, Shape)>,
    /// The residual statement's name upstream.
    pub residual_name: String,
    /// The residual's RowDescription body; `None`: NoData.
    pub row_description: Option<Bytes>,
    /// Row-local: executions fetch, score and finish the base rows chunk by chunk.
    pub chunked: bool,
}

impl ResidualStatement {
    pub fn columns(&self) -> usize {
        self.row_description
            .as_deref()
            .map_or(0, |body| split_fields(body).len())
    }

    /// The client's RowDescription: the residual's, with `formats`.
    pub fn row_description(&self, formats: &[i16]) -> Option<Vec<u8>> {
        let body = self.row_description.as_deref()?;
        let fields = split_fields(body);
        let mut out = (fields.len() as u16).to_be_bytes().to_vec();
        for (i, field) in fields.iter().enumerate() {
            out.extend_from_slice(&field[..field.len().saturating_sub(2)]);
            out.extend_from_slice(&formats.get(i).copied().unwrap_or(0).to_be_bytes());
        }
        Some(out)
    }

    /// Whether the statement writes (so its snapshot transaction cannot be READ ONLY).
    pub fn writes(&self) -> bool {
        self.plan.writes()
    }

    /// Result formats of the base statement: arguments in text, carried values as they travel.
    pub fn base_formats(&self) -> Vec<i16> {
        self.bases
            .first()
            .map(|(_, shape)| shape.base_formats())
            .unwrap_or_default()
    }
}

/// A base statement's columns as described: which carry values to the residual, their types
/// and how they travel, and the columns of each `*`.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Base columns in all (arguments, values, star separators).
    pub columns: usize,
    /// Base column index of each value column.
    pub values: Vec<usize>,
    pub oids: Vec<u32>,
    pub types: Vec<CarriedType>,
    pub stars: Vec<Vec<String>>,
}

impl Shape {
    pub fn described(&self) -> Described {
        Described {
            types: self.types.clone(),
            stars: self.stars.clone(),
        }
    }

    /// Result formats of the base statement: values in binary where they travel so, the rest
    /// (arguments, separators) in text.
    pub fn base_formats(&self) -> Vec<i16> {
        let mut formats = vec![0i16; self.columns];
        for (i, &column) in self.values.iter().enumerate() {
            formats[column] = i16::from(!self.types[i].as_text);
        }
        formats
    }
}

impl MlStatement {
    /// Runs as base + residual statements (two snapshots unless pgenrich holds one).
    pub fn two_phase(&self) -> bool {
        matches!(self.prepared, Prepared::Residual(_))
    }

    /// An EXPLAIN, whose Bind pgenrich answers itself.
    pub fn is_explain(&self) -> bool {
        matches!(self.prepared, Prepared::Explain { .. })
    }

    /// Columns of the client's result.
    pub fn columns(&self) -> usize {
        match &self.prepared {
            Prepared::Streaming { layout, .. } => layout.columns.len(),
            Prepared::Residual(residual) => residual.columns(),
            Prepared::Explain { .. } => 1,
        }
    }

    /// The client's RowDescription body with `formats`, `None` for NoData.
    pub fn row_description(&self, formats: &[i16]) -> Option<Vec<u8>> {
        match &self.prepared {
            Prepared::Streaming { layout, .. } => Some(layout.row_description(formats)),
            Prepared::Residual(residual) => residual.row_description(formats),
            Prepared::Explain { .. } => {
                Some(plan_description(formats.first().copied().unwrap_or(0)))
            }
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
    pub chunked: ChunkProgress,
    /// An EXPLAIN portal's lines, once computed, and how many were sent.
    pub explained: Option<(Arc<Vec<String>>, usize)>,
    /// Its charge against the prepared-statement budgets (shared by its copies).
    pub kept: Option<Arc<Kept>>,
}

/// Where a chunked (row-local) base + residual portal stands between the client's Executes.
#[derive(Clone, Default)]
pub struct ChunkProgress {
    /// The base portal has no more rows.
    pub base_done: bool,
    /// The residual portal of the current chunk has rows left.
    pub residual_open: bool,
    /// Rows sent for the whole portal so far (for CommandComplete).
    pub sent: u64,
    /// Inputs scored so far: each distinct one once per execution.
    pub memo: Option<Arc<Memo>>,
}

impl std::fmt::Debug for ChunkProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkProgress")
            .field("base_done", &self.base_done)
            .field("residual_open", &self.residual_open)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// The RowDescription of an EXPLAIN's one `QUERY PLAN` column (text) in `format`.
pub fn plan_description(format: i16) -> Vec<u8> {
    const TEXT_OID: u32 = 25;
    let mut description = BytesMut::new();
    description.put_u16(1);
    description.put_slice(b"QUERY PLAN\0");
    description.put_u32(0);
    description.put_i16(0);
    description.put_u32(TEXT_OID);
    description.put_i16(-1);
    description.put_i32(-1);
    description.put_i16(format);
    description.to_vec()
}

/// A cursor over an ML statement (`DECLARE … CURSOR FOR`), kept under the client's name.
#[derive(Debug)]
pub struct MlCursor {
    /// The cursor's name upstream.
    pub upstream: String,
    /// How each FETCH's rows are scored (base statement: the cursor's query); `None` for a
    /// cursor over finished rows (its query ran whole, base + residual, at DECLARE).
    pub plan: Option<Arc<StreamingPlan>>,
    /// `WITH HOLD`: it outlives the transaction that commits it.
    pub hold: bool,
    /// Closing messages forwarded before its DECLARE: one without HOLD ends with the transaction
    /// the next of them ends.
    pub epoch: u64,
    /// Its charge against the prepared-statement budgets.
    pub kept: Option<Kept>,
}

/// The session's ML statements, portals and cursors, by client name.
#[derive(Debug)]
pub struct Registry {
    pub statements: HashMap<String, Arc<MlStatement>>,
    pub portals: HashMap<String, MlPortal>,
    pub cursors: HashMap<String, Arc<MlCursor>>,
    /// What they may hold ([`crate::session::kept`]).
    pub budgets: KeptBudgets,
    /// Statements and cursors a forwarded Close names, by the token the tracker settles it with:
    /// the upstream skips a Close after an error, and then they stay.
    closing: HashMap<u64, Closing>,
    /// Prepared commands that forget some of them once executed ([`crate::session::deferred`]).
    pub deferred: Deferred,
    /// The last token given to a Close or an Execute to settle.
    closes: u64,
}

#[derive(Debug)]
enum Closing {
    Statement(String, Arc<MlStatement>),
    Cursor(String, Arc<MlCursor>),
}

/// What a statement about cursors over ML statements asks for.
#[derive(Debug)]
pub enum CursorWork {
    /// Declare one.
    Declare(Box<DeclarePlan>),
    /// FETCH, MOVE or CLOSE one, or forget some.
    Command(CursorCommand),
}

/// Work the session does itself, in order with the upstream's answers.
#[derive(Debug)]
pub enum Intercept {
    /// A Query or Parse (kind, body) whose text mentions an ML schema: to inspect and plan off
    /// the relay's thread ([`crate::session::relay::planner`]).
    Inspect {
        kind: u8,
        body: Bytes,
    },
    /// A simple-protocol Query with ML calls.
    Query(Box<StreamingPlan>),
    /// A simple-protocol Query of several statements, some with ML calls.
    Multi(Vec<crate::sql::plan::Piece>),
    /// A simple-protocol Query whose ML calls need the base + residual plan.
    Residual(Box<ResidualPlan>),
    /// A simple-protocol `EXPLAIN [ANALYZE]` of an ML statement.
    Explain {
        analyze: bool,
        target: Box<ExplainTarget>,
    },
    Parse {
        name: String,
        /// Parameter type section of the Parse body (count and OIDs), as sent.
        types: Bytes,
        plan: Box<StreamingPlan>,
    },
    ParseResidual {
        name: String,
        types: Bytes,
        plan: Box<ResidualPlan>,
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
        target: Box<ExplainTarget>,
    },
    /// A Bind (body, and the portal's charge) of an EXPLAIN, or of a base + residual statement
    /// while the session may be idle.
    Bind(Bytes, Kept),
    /// pgenrich's snapshot transaction must end before the client's next message.
    EndSnapshot,
    /// A Query or Parse (kind, body) about cursors over ML statements.
    Cursor {
        kind: u8,
        body: Bytes,
        work: CursorWork,
    },
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
    pub fn new(budgets: KeptBudgets) -> Registry {
        Registry {
            statements: HashMap::new(),
            portals: HashMap::new(),
            cursors: HashMap::new(),
            budgets,
            closing: HashMap::new(),
            deferred: Deferred::default(),
            closes: 0,
        }
    }

    /// A transaction ended with the `answered`-th ReadyForQuery: its portals are gone.
    pub fn transaction_ended(&mut self, answered: u64) {
        self.portals.retain(|_, portal| portal.epoch >= answered);
        self.cursors
            .retain(|_, cursor| cursor.hold || cursor.epoch >= answered);
    }

    /// Whether any ML statement, portal or cursor is named (so Describe is looked at).
    pub fn names_any(&self) -> bool {
        !self.statements.is_empty() || !self.portals.is_empty() || !self.cursors.is_empty()
    }

    /// Whether Bind, Execute and Close are looked at: some ML name is held, or a prepared
    /// command that forgets such names ([`crate::session::deferred`]).
    pub fn watches_portals(&self) -> bool {
        self.names_any() || !self.deferred.is_empty()
    }

    /// The ML statement a Bind body names, if any.
    pub fn statement_of_bind(&self, body: &[u8]) -> Option<&Arc<MlStatement>> {
        let (_portal, rest) = split_cstr(body)?;
        let (statement, _) = split_cstr(rest)?;
        self.statements.get(&cstr(statement))
    }

    /// Rewrites a Bind of an ML statement to the upstream statement with per-base-column result
    /// formats, and remembers the portal with its charge `kept`. `None`: not an ML statement
    /// (relay unchanged).
    pub fn rewrite_bind(&mut self, body: &[u8], epoch: u64, kept: Option<Kept>) -> Option<Bytes> {
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
            Prepared::Residual(residual) => residual.base_formats(),
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
                kept: kept.map(Arc::new),
            },
        );
        Some(message(frontend::BIND, &out))
    }

    /// Rewrites a Close of an ML statement or cursor to its upstream name, and holds it until the
    /// upstream has answered the Close: the token to tag it with ([`Registry::settle_close`]).
    pub fn rewrite_close(&mut self, body: &[u8]) -> Option<(Bytes, u64)> {
        let (kind, name) = target(body)?;
        let (upstream, closing) = if kind == b'P' {
            self.portals.remove(&name);
            // A cursor is a portal too: Close of it closes pgenrich's.
            let cursor = self.cursors.remove(&name)?;
            (cursor.upstream.clone(), Closing::Cursor(name, cursor))
        } else {
            let statement = self.statements.remove(&name)?;
            (
                statement.upstream_name.clone(),
                Closing::Statement(name, statement),
            )
        };
        self.closes += 1;
        self.closing.insert(self.closes, closing);
        let mut out = vec![kind];
        out.extend_from_slice(upstream.as_bytes());
        out.push(0);
        Some((message(frontend::CLOSE, &out), self.closes))
    }

    /// The upstream answered the Close tagged `token` (`closed`), or skipped it after an error:
    /// then its statement or cursor is the client's again, unless the name was taken meanwhile.
    pub fn settle_close(&mut self, token: u64, closed: bool) {
        match self.closing.remove(&token) {
            Some(_) if closed => {}
            Some(Closing::Statement(name, statement)) => {
                self.statements.entry(name).or_insert(statement);
            }
            Some(Closing::Cursor(name, cursor)) => {
                self.cursors.entry(name).or_insert(cursor);
            }
            None => {
                if let Some(forget) = self.deferred.settled(token, closed) {
                    self.forget(&forget);
                }
            }
        }
    }

    /// An Execute (body) about to be forwarded: the token to tag it with when it carries out a
    /// prepared command that forgets names pgenrich holds ([`crate::session::deferred`]).
    pub fn deferred_execute(&mut self, body: &[u8]) -> Option<u64> {
        if self.deferred.is_empty() || !self.deferred.on_execute(body, self.closes + 1) {
            return None;
        }
        self.closes += 1;
        Some(self.closes)
    }

    /// Forgets what a command carried out upstream has ended there; statements, portals and
    /// cursors give their charges back as they go.
    pub fn forget(&mut self, forget: &Forget) {
        match forget {
            Forget::Statement { name, upstream } => {
                if self
                    .statements
                    .get(name)
                    .is_some_and(|s| &s.upstream_name == upstream)
                {
                    self.statements.remove(name);
                }
            }
            Forget::Cursor { name, upstream } => {
                if self
                    .cursors
                    .get(name)
                    .is_some_and(|c| &c.upstream == upstream)
                {
                    self.cursors.remove(name);
                }
            }
            Forget::AllStatements => self.statements.clear(),
            Forget::AllCursors => self.cursors.clear(),
            Forget::Everything => {
                self.cursors.clear();
                self.statements.clear();
                self.portals.clear();
                self.deferred.clear();
            }
        }
    }
}
