//! Commands that forget names pgenrich holds — `DEALLOCATE name`, `DEALLOCATE ALL`, `DISCARD
//! ALL`, `CLOSE name`, `CLOSE ALL` — sent as a Parse (psycopg in pipeline mode deallocates so,
//! libpq's `PQexecParams` sends any command so). PostgreSQL carries one out when an Execute of a
//! portal bound from it completes, not at Parse, and not at all if that Execute fails or is
//! skipped after an error. So pgenrich remembers which statements and portals would forget what,
//! tags their Execute with the response tracker, and forgets only when the tracker reports a
//! CommandComplete for it ([`super::statements::Registry::settle_close`]).
//!
//! At most [`MAX_DEFERRED`] statements and as many portals are remembered (a client can prepare
//! any number of them); past that, the command takes effect at Parse, as before.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::split_cstr;

/// Statements (and portals) of such commands remembered at once.
pub const MAX_DEFERRED: usize = 64;

/// What a command forgets once carried out.
#[derive(Debug, PartialEq, Eq)]
pub enum Forget {
    /// `DEALLOCATE name` of an ML statement: the client's name, and its name upstream when the
    /// command was prepared (a statement prepared again under the name meanwhile stays).
    Statement { name: String, upstream: String },
    /// `CLOSE name` of a cursor over an ML statement, likewise.
    Cursor { name: String, upstream: String },
    /// `DEALLOCATE ALL`.
    AllStatements,
    /// `CLOSE ALL`.
    AllCursors,
    /// `DISCARD ALL`.
    Everything,
}

/// The session's prepared forgetting commands, their portals, and their Executes in flight.
#[derive(Debug, Default)]
pub struct Deferred {
    statements: HashMap<String, Arc<Forget>>,
    portals: HashMap<String, Arc<Forget>>,
    executing: HashMap<u64, Arc<Forget>>,
}

impl Deferred {
    /// Nothing prepared or bound: Parse, Bind, Close and Execute need no look.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.portals.is_empty()
    }

    /// The client's statement `name` (just relayed) is the command `forget`. False when too many
    /// are remembered: the caller then applies it at once.
    pub fn prepared(&mut self, name: String, forget: Forget) -> bool {
        if self.statements.len() >= MAX_DEFERRED && !self.statements.contains_key(&name) {
            return false;
        }
        self.statements.insert(name, Arc::new(forget));
        true
    }

    /// A Parse (body) replaces the client's statement of its name.
    pub fn on_parse(&mut self, body: &[u8]) {
        if let Some((name, _)) = split_cstr(body) {
            self.statements.remove(&String::from_utf8_lossy(name)[..]);
        }
    }

    /// A Close (body) of a statement or portal.
    pub fn on_close(&mut self, body: &[u8]) {
        let Some((&kind, rest)) = body.split_first() else {
            return;
        };
        let Some((name, _)) = split_cstr(rest) else {
            return;
        };
        let name = String::from_utf8_lossy(name);
        match kind {
            b'S' => self.statements.remove(&name[..]),
            _ => self.portals.remove(&name[..]),
        };
    }

    /// A Bind (body) replaces its portal, with one of such a command if its statement is one.
    pub fn on_bind(&mut self, body: &[u8]) {
        let Some((portal, rest)) = split_cstr(body) else {
            return;
        };
        let Some((statement, _)) = split_cstr(rest) else {
            return;
        };
        let portal = String::from_utf8_lossy(portal).into_owned();
        self.portals.remove(&portal);
        let statement = self.statements.get(&String::from_utf8_lossy(statement)[..]);
        if let Some(forget) = statement {
            if self.portals.len() < MAX_DEFERRED {
                self.portals.insert(portal, Arc::clone(forget));
            }
        }
    }

    /// An Execute (body) about to be forwarded: whether it runs such a command. If so the caller
    /// tags it with `token`, which [`Deferred::settled`] then takes.
    pub fn on_execute(&mut self, body: &[u8], token: u64) -> bool {
        let Some((portal, _)) = split_cstr(body) else {
            return false;
        };
        // Once run, the portal is done: another Execute of it does nothing.
        match self.portals.remove(&String::from_utf8_lossy(portal)[..]) {
            Some(forget) => {
                self.executing.insert(token, forget);
                true
            }
            None => false,
        }
    }

    /// The Execute tagged `token` has settled: what to forget if it completed.
    pub fn settled(&mut self, token: u64, completed: bool) -> Option<Arc<Forget>> {
        let forget = self.executing.remove(&token)?;
        completed.then_some(forget)
    }

    /// DISCARD ALL: no statement or portal is left upstream.
    pub fn clear(&mut self) {
        self.statements.clear();
        self.portals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstrs(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| [p.as_bytes(), b"\0"].concat())
            .collect()
    }

    #[test]
    fn a_prepared_command_is_forgotten_only_once_its_execute_completes() {
        let mut d = Deferred::default();
        assert!(d.is_empty());
        assert!(d.prepared(String::new(), Forget::AllStatements));
        d.on_bind(&cstrs(&["p", ""]));
        // Another portal of another statement: nothing to tag.
        d.on_bind(&cstrs(&["q", "other"]));
        assert!(!d.on_execute(&cstrs(&["q"]), 1));
        assert!(d.on_execute(&cstrs(&["p"]), 2));
        // Executed once: a second Execute of the portal forgets nothing more.
        assert!(!d.on_execute(&cstrs(&["p"]), 3));
        assert_eq!(d.settled(2, true).as_deref(), Some(&Forget::AllStatements));
        assert_eq!(d.settled(2, true), None);

        // Failed or skipped: nothing forgotten.
        d.on_bind(&cstrs(&["", ""]));
        assert!(d.on_execute(&cstrs(&[""]), 4));
        assert_eq!(d.settled(4, false), None);
    }

    #[test]
    fn parse_close_and_bind_replace_what_was_remembered() {
        let mut d = Deferred::default();
        d.prepared("d".into(), Forget::AllCursors);
        d.on_bind(&cstrs(&["p", "d"]));
        // The portal is bound again from another statement.
        d.on_bind(&cstrs(&["p", "x"]));
        assert!(!d.on_execute(&cstrs(&["p"]), 1));
        d.on_bind(&cstrs(&["p", "d"]));
        d.on_close(&[b"P".as_slice(), &cstrs(&["p"])].concat());
        assert!(!d.on_execute(&cstrs(&["p"]), 2));
        // The statement is prepared again as something else.
        d.on_parse(&cstrs(&["d", "SELECT 1"]));
        d.on_bind(&cstrs(&["p", "d"]));
        assert!(!d.on_execute(&cstrs(&["p"]), 3));
        assert!(d.is_empty());
        d.prepared("d".into(), Forget::AllCursors);
        d.on_close(&[b"S".as_slice(), &cstrs(&["d"])].concat());
        assert!(d.is_empty());
    }

    #[test]
    fn only_so_many_are_remembered() {
        let mut d = Deferred::default();
        for i in 0..MAX_DEFERRED {
            assert!(d.prepared(format!("s{i}"), Forget::Everything));
        }
        assert!(!d.prepared("one more".into(), Forget::Everything));
        // A statement remembered already may be replaced.
        assert!(d.prepared("s0".into(), Forget::AllCursors));
        for i in 0..=MAX_DEFERRED {
            d.on_bind(&cstrs(&[&format!("p{i}"), "s1"]));
        }
        assert!(d.on_execute(&cstrs(&["p0"]), 1));
        assert!(!d.on_execute(&cstrs(&[&format!("p{MAX_DEFERRED}")]), 2));
        d.clear();
        assert!(d.is_empty());
    }
}
