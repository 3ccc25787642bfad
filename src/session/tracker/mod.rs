//! Response accounting for one session: which client requests the upstream has yet to answer.
//!
//! The relay forwards messages as they come and learns their outcome only from the response
//! stream, so it keeps a queue of *segments*: a Query or FunctionCall (answered up to its
//! ReadyForQuery), or a run of extended-protocol messages (each answered by one completion or
//! error message, closed by Sync and its ReadyForQuery). PostgreSQL answers strictly in order, so
//! the front segment is always the one being answered. This tells the session when the upstream
//! is idle (for draining and idle timeouts), the transaction status, which upstream error is the
//! answer to a stand-in message whose error pgenrich replaces with its own, and whether the
//! upstream carried out a Close of an ML statement or skipped it after an error, and whether it
//! completed a tagged Execute (a prepared DEALLOCATE or CLOSE of pgenrich's names).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::{error_fields, frontend};

pub use crate::protocol::STANDIN_NAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Query or FunctionCall: answered by everything up to one ReadyForQuery.
    Simple,
    /// Extended-protocol messages: `pending` completions due, then a ReadyForQuery if `synced`.
    Extended,
}

#[derive(Debug)]
struct Segment {
    kind: Kind,
    pending: u32,
    synced: bool,
    /// The upstream already reported an error here and skips until Sync.
    failed: bool,
    /// A portal was bound or executed here: the implicit transaction holds client state.
    portals: bool,
    /// Errors to send instead of the upstream's answers to stand-in messages, in order.
    substitutions: VecDeque<Bytes>,
    /// Close messages forwarded here and not answered yet, in order, with the token of those
    /// whose outcome pgenrich waits for ([`Tracker::settled_closes`]).
    closes: VecDeque<Option<u64>>,
    /// Execute messages forwarded here, and those answered (by CommandComplete, EmptyQuery or
    /// PortalSuspended): the n-th Execute is answered by the n-th of these.
    executes: u32,
    executes_answered: u32,
    /// Tagged Executes not answered yet, in order: (which Execute of the run, token).
    tagged_executes: VecDeque<(u32, u64)>,
}

impl Segment {
    fn new(kind: Kind) -> Segment {
        Segment {
            kind,
            pending: 0,
            synced: false,
            failed: false,
            portals: false,
            substitutions: VecDeque::new(),
            closes: VecDeque::new(),
            executes: 0,
            executes_answered: 0,
            tagged_executes: VecDeque::new(),
        }
    }
}

#[derive(Debug)]
pub struct Tracker {
    segments: VecDeque<Segment>,
    status: u8,
    /// Sync / Query / FunctionCall messages forwarded, and ReadyForQuery answers seen: a portal
    /// bound after the n-th forwarded one outlives the first n answers.
    closings_forwarded: u64,
    closings_answered: u64,
    /// Bind messages forwarded.
    binds: u64,
    /// Query and Execute messages forwarded and not discarded (for metrics).
    queries: u64,
    executes: u64,
    /// Closes and Executes with a token whose outcome is known: (token, whether the upstream
    /// closed, or completed the Execute).
    settled: Vec<(u64, bool)>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            segments: VecDeque::new(),
            status: b'I',
            closings_forwarded: 0,
            closings_answered: 0,
            binds: 0,
            queries: 0,
            executes: 0,
            settled: Vec::new(),
        }
    }
}

impl Tracker {
    /// Query and Execute messages forwarded so far (and not discarded after an error).
    pub fn queries_forwarded(&self) -> (u64, u64) {
        (self.queries, self.executes)
    }

    /// Transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Records a round trip pgenrich made itself (a Sync it sent and the ReadyForQuery it read)
    /// and the transaction status it reported.
    pub fn own_round_trip(&mut self, status: u8) {
        self.status = status;
        self.closings_forwarded += 1;
        self.closings_answered += 1;
    }

    pub fn closings_forwarded(&self) -> u64 {
        self.closings_forwarded
    }

    /// Bind messages forwarded so far.
    pub fn binds(&self) -> u64 {
        self.binds
    }

    pub fn closings_answered(&self) -> u64 {
        self.closings_answered
    }

    /// Everything forwarded has been answered, except that an extended-protocol run may still
    /// be open (no Sync yet): pgenrich may answer a message of that run itself now.
    pub fn caught_up(&self) -> bool {
        self.segments
            .iter()
            .all(|s| s.kind == Kind::Extended && !s.synced && s.pending == 0)
    }

    /// Everything forwarded is answered, and the client has neither bound nor executed a portal
    /// since its last Sync, nor met an error: the upstream's implicit transaction holds nothing of
    /// the client's, so pgenrich may end it with a Sync of its own.
    pub fn can_resync(&self) -> bool {
        self.caught_up() && self.segments.iter().all(|s| !s.failed && !s.portals)
    }

    /// The open extended-protocol run has failed: the upstream skips everything up to Sync.
    pub fn open_failed(&self) -> bool {
        matches!(
            self.segments.back(),
            Some(Segment {
                kind: Kind::Extended,
                synced: false,
                failed: true,
                ..
            })
        )
    }

    /// Makes sure an extended-protocol run is open (its Sync closes it).
    pub fn ensure_open(&mut self) {
        self.open_extended();
    }

    /// Forgets the open extended-protocol run, which a Sync of pgenrich's has just closed (in
    /// place of the client's Query, which would have closed it).
    pub fn end_open_run(&mut self) {
        if let Some(Segment {
            kind: Kind::Extended,
            synced: false,
            ..
        }) = self.segments.back()
        {
            self.segments.pop_back();
        }
    }

    /// Records that the upstream failed in the open run and now skips to Sync.
    pub fn mark_open_failed(&mut self) {
        let segment = self.open_extended();
        segment.failed = true;
        segment.pending = 0;
    }

    /// Everything forwarded has been answered.
    pub fn is_idle(&self) -> bool {
        self.segments.is_empty()
    }

    /// Idle and outside a transaction block: the session can be closed without losing work.
    pub fn is_quiescent(&self) -> bool {
        self.is_idle() && self.status == b'I'
    }

    fn open_extended(&mut self) -> &mut Segment {
        let reuse = matches!(
            self.segments.back(),
            Some(Segment {
                kind: Kind::Extended,
                synced: false,
                ..
            })
        );
        if !reuse {
            self.segments.push_back(Segment::new(Kind::Extended));
        }
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// A client message of type `kind` was forwarded to the upstream. After an error in an
    /// extended-protocol run the upstream discards every message up to Sync (a Query too): those
    /// are owed nothing.
    pub fn on_client(&mut self, kind: u8) {
        let discarded = self.open_failed() && kind != frontend::SYNC;
        match kind {
            _ if discarded => {
                self.binds += u64::from(kind == frontend::BIND);
            }
            frontend::QUERY | frontend::FUNCTION_CALL => {
                self.queries += u64::from(kind == frontend::QUERY);
                self.closings_forwarded += 1;
                self.segments.push_back(Segment::new(Kind::Simple))
            }
            frontend::BIND | frontend::EXECUTE => {
                self.binds += u64::from(kind == frontend::BIND);
                self.executes += u64::from(kind == frontend::EXECUTE);
                let run = self.open_extended();
                run.pending += 1;
                run.portals = true;
                if kind == frontend::EXECUTE {
                    run.executes = run.executes.wrapping_add(1);
                }
            }
            frontend::PARSE | frontend::DESCRIBE => self.open_extended().pending += 1,
            frontend::CLOSE => {
                let run = self.open_extended();
                run.pending += 1;
                run.closes.push_back(None);
            }
            frontend::SYNC => {
                self.closings_forwarded += 1;
                self.open_extended().synced = true
            }
            // Flush, CopyData/Done/Fail, Terminate and authentication messages get no reply of
            // their own.
            _ => {}
        }
    }

    /// Tags the Close message just passed to [`Tracker::on_client`] with `token`: its outcome
    /// (closed, or skipped after an error) comes out of [`Tracker::settled_closes`]. A Close the
    /// upstream discards (the open run has failed) settles unclosed at once.
    pub fn tag_close(&mut self, token: u64) {
        let tagged = match self.segments.back_mut() {
            Some(run) if run.kind == Kind::Extended && !run.failed => run.closes.back_mut(),
            _ => None,
        };
        match tagged {
            Some(slot @ None) => *slot = Some(token),
            _ => self.settled.push((token, false)),
        }
    }

    /// Tags the Execute message just passed to [`Tracker::on_client`] with `token`: whether the
    /// upstream completed it (CommandComplete) or not (an error, or skipped after one) comes out
    /// of [`Tracker::settled_closes`], like a Close's outcome. One the upstream discards settles
    /// at once.
    pub fn tag_execute(&mut self, token: u64) {
        match self.segments.back_mut() {
            Some(run) if run.kind == Kind::Extended && !run.failed && run.executes > 0 => {
                run.tagged_executes.push_back((run.executes - 1, token))
            }
            _ => self.settled.push((token, false)),
        }
    }

    /// Closes tagged by [`Tracker::tag_close`] and Executes tagged by [`Tracker::tag_execute`]
    /// whose outcome is now known, oldest first: (token, whether the upstream closed, or
    /// completed the Execute).
    pub fn settled_closes(&mut self) -> Option<std::vec::Drain<'_, (u64, bool)>> {
        (!self.settled.is_empty()).then(|| self.settled.drain(..))
    }

    /// The upstream skipped the Closes and Executes not answered yet in `segment` (it failed,
    /// or ended).
    fn skipped_closes(settled: &mut Vec<(u64, bool)>, segment: &mut Segment) {
        settled.extend(
            segment
                .closes
                .drain(..)
                .flatten()
                .chain(segment.tagged_executes.drain(..).map(|(_, token)| token))
                .map(|token| (token, false)),
        );
    }

    /// Registers the error to send in place of the upstream's answer to the stand-in message just
    /// passed to [`Tracker::on_client`].
    pub fn substitute_next_standin_error(&mut self, error: Bytes) {
        if let Some(segment) = self.segments.back_mut() {
            segment.substitutions.push_back(error);
        }
    }

    /// Whether the relay must assemble a backend message of this type and pass its body to
    /// [`Tracker::on_backend`].
    pub fn wants_body(&self, kind: u8) -> bool {
        match kind {
            b'Z' => true,
            b'E' => self
                .segments
                .get(self.ended_runs())
                .is_some_and(|s| !s.substitutions.is_empty()),
            _ => false,
        }
    }

    /// Leading extended-protocol runs that a Query after them has ended: no Sync, nothing owed,
    /// no error, another segment behind. The upstream's next answers are that segment's.
    fn ended_runs(&self) -> usize {
        let len = self.segments.len();
        self.segments
            .iter()
            .enumerate()
            .take_while(|&(i, s)| {
                s.kind == Kind::Extended && !s.synced && s.pending == 0 && !s.failed && i + 1 < len
            })
            .count()
    }

    /// A backend message of type `kind` passed by; `body` is given when [`Tracker::wants_body`]
    /// asked for it. Returns a replacement for the message, if it is a stand-in's error.
    pub fn on_backend(&mut self, kind: u8, body: Option<&[u8]>) -> Option<Bytes> {
        match kind {
            b'Z' => {
                // The ReadyForQuery ending startup answers nothing that was forwarded.
                if !self.segments.is_empty() {
                    self.closings_answered += 1;
                }
                if let Some(&status) = body.and_then(|b| b.first()) {
                    self.status = status;
                }
                // A Query sent before a Sync implicitly ends the open extended run.
                while let Some(mut segment) = self.segments.pop_front() {
                    Self::skipped_closes(&mut self.settled, &mut segment);
                    if segment.kind == Kind::Simple || segment.synced {
                        break;
                    }
                }
                None
            }
            b'E' => {
                self.segments.drain(..self.ended_runs());
                let front = self.segments.front_mut()?;
                let replacement = match body {
                    Some(body) if is_standin_error(body) => front.substitutions.pop_front(),
                    _ => None,
                };
                if front.kind == Kind::Extended {
                    front.pending = 0;
                    front.failed = true;
                    Self::skipped_closes(&mut self.settled, front);
                    if !front.synced {
                        self.discard_until_sync();
                    }
                }
                replacement
            }
            // Completions of extended-protocol messages (in a Query's answer these are not final).
            b'1' | b'2' | b'3' | b'n' | b'T' | b'C' | b'I' | b's' => {
                self.segments.drain(..self.ended_runs());
                if let Some(front) = self.segments.front_mut() {
                    if front.kind == Kind::Extended {
                        front.pending = front.pending.saturating_sub(1);
                        if kind == b'3' {
                            if let Some(Some(token)) = front.closes.pop_front() {
                                self.settled.push((token, true));
                            }
                        }
                        if matches!(kind, b'C' | b'I' | b's') {
                            let answered = front.executes_answered;
                            front.executes_answered = answered.wrapping_add(1);
                            if front.tagged_executes.front().map(|&(n, _)| n) == Some(answered) {
                                if let Some((_, token)) = front.tagged_executes.pop_front() {
                                    self.settled.push((token, kind == b'C'));
                                }
                            }
                        }
                    }
                }
                None
            }
            _ => None,
        }
    }
}

impl Tracker {
    /// The front run failed before its Sync: the upstream discards what was forwarded after it
    /// up to the next Sync, so Queries sent meanwhile are owed nothing (counted as answered, so
    /// that portal lifetimes stay aligned) and the Sync's ReadyForQuery closes the front run.
    fn discard_until_sync(&mut self) {
        while self.segments.len() > 1 {
            let Some(mut next) = self.segments.remove(1) else {
                break;
            };
            Self::skipped_closes(&mut self.settled, &mut next);
            match next.kind {
                Kind::Simple => self.closings_answered += 1,
                Kind::Extended => {
                    if next.synced {
                        self.segments[0].synced = true;
                        break;
                    }
                }
            }
        }
    }
}

fn is_standin_error(body: &[u8]) -> bool {
    let (code, message) = error_fields(body);
    matches!(code, Some(b"26000") | Some(b"34000"))
        && message.is_some_and(|m| memchr::memmem::find(m, STANDIN_NAME.as_bytes()).is_some())
}

#[cfg(test)]
mod tests;
