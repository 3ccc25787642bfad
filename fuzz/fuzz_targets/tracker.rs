//! The relay's response accounting (`session::tracker`) against a model of PostgreSQL's side of
//! the protocol (postgres.c): the fuzzer picks what the client sends, whether each message
//! fails, how the server answers and when its answers arrive; the model answers as PostgreSQL
//! would — skipping everything up to Sync after an error in an extended-protocol message — and
//! after every step the tracker must agree with it: caught up exactly when nothing forwarded is
//! still owed, idle exactly when no extended-protocol run is open either, the transaction status
//! of the last ReadyForQuery, and the error of a stand-in message (and only that one) replaced by
//! pgenrich's own. Every Close and Execute is tagged: each settles once, as done exactly when
//! PostgreSQL closed (answered CloseComplete) or completed it (CommandComplete) rather than
//! skipped it, failed or suspended it, and by the end all have.
//!
//! A second pass feeds arbitrary server message types and bodies: a misbehaving upstream must
//! not panic the tracker, and its answers to the relay's questions must stay consistent.
#![no_main]

use std::collections::{HashMap, VecDeque};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgenrich::session::tracker::{Tracker, STANDIN_NAME};

/// A client message, as the relay forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum Client {
    Query,
    FunctionCall,
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    Flush,
    CopyData,
    /// pgenrich's stand-in for a rejected Query (`EXECUTE "pgenrich.rejected"`).
    StandinQuery,
    /// pgenrich's stand-in for a rejected Parse (Execute of the portal that never exists).
    StandinExecute,
}

impl Client {
    fn kind(self) -> u8 {
        match self {
            Client::Query | Client::StandinQuery => b'Q',
            Client::FunctionCall => b'F',
            Client::Parse => b'P',
            Client::Bind => b'B',
            Client::DescribeStatement | Client::DescribePortal => b'D',
            Client::Execute | Client::StandinExecute => b'E',
            Client::Close => b'C',
            Client::Sync => b'S',
            Client::Flush => b'H',
            Client::CopyData => b'd',
        }
    }

    fn extended(self) -> bool {
        matches!(
            self,
            Client::Parse
                | Client::Bind
                | Client::DescribeStatement
                | Client::DescribePortal
                | Client::Execute
                | Client::Close
                | Client::StandinExecute
        )
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// The client sends a message. `fails`: the server answers it with an error; `variant`
    /// picks among its other answers; `status` is the transaction status byte of a
    /// ReadyForQuery it causes.
    Send {
        message: Client,
        fails: bool,
        variant: u8,
        status: u8,
    },
    /// The next `n` server messages arrive.
    Deliver(u8),
    /// An asynchronous message (NoticeResponse, NotificationResponse, ParameterStatus).
    Async(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    steps: Vec<Step>,
    /// Arbitrary server messages for the robustness pass: (type, body, client message before it).
    chaos: Vec<(u8, Option<Vec<u8>>, u8)>,
}

/// One server message on its way to the relay.
#[derive(Debug)]
struct Answer {
    kind: u8,
    body: Vec<u8>,
    /// Owed for a forwarded message (not asynchronous).
    owed: bool,
    /// pgenrich's error that must replace this one (a stand-in's error).
    replaced_by: Option<Bytes>,
}

/// PostgreSQL's side, answering each message as it arrives.
#[derive(Default)]
struct Server {
    /// postgres.c's `ignore_till_sync`.
    ignore_till_sync: bool,
    wire: VecDeque<Answer>,
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

impl Server {
    fn send(&mut self, kind: u8, body: &[u8]) {
        self.wire.push_back(Answer {
            kind,
            body: body.to_vec(),
            owed: true,
            replaced_by: None,
        });
    }

    fn error(&mut self, body: Vec<u8>, replaced_by: Option<Bytes>, extended: bool) {
        self.wire.push_back(Answer {
            kind: b'E',
            body,
            owed: true,
            replaced_by,
        });
        if extended {
            self.ignore_till_sync = true;
        }
    }

    /// What PostgreSQL sends for `message`. `ours` is the error pgenrich registered for a
    /// stand-in.
    fn receive(&mut self, message: Client, fails: bool, variant: u8, status: u8, ours: &Bytes) {
        if matches!(message, Client::Flush | Client::CopyData) {
            return;
        }
        if self.ignore_till_sync && message != Client::Sync {
            return;
        }
        let other_error = || error_body("42P01", "relation \"x\" does not exist");
        match message {
            Client::Query | Client::FunctionCall => {
                if fails {
                    self.error(other_error(), None, false);
                } else if message == Client::FunctionCall {
                    self.send(b'V', b"\xff\xff\xff\xff");
                } else {
                    match variant % 3 {
                        0 => self.send(b'I', b""),
                        1 => {
                            self.send(b'C', b"BEGIN\0");
                        }
                        _ => {
                            self.send(b'T', b"\0\0");
                            for _ in 0..variant % 5 {
                                self.send(b'D', b"\0\0");
                            }
                            self.send(b'C', b"SELECT 1\0");
                        }
                    }
                }
                self.send(b'Z', &[status]);
            }
            Client::StandinQuery => {
                // In a failed transaction block PostgreSQL answers 25P02 instead: relayed.
                if fails {
                    self.error(
                        error_body("25P02", "current transaction is aborted"),
                        None,
                        false,
                    );
                } else {
                    let message = format!("prepared statement \"{STANDIN_NAME}\" does not exist");
                    self.error(error_body("26000", &message), Some(ours.clone()), false);
                }
                self.send(b'Z', &[status]);
            }
            Client::StandinExecute => {
                if fails {
                    self.error(
                        error_body("25P02", "current transaction is aborted"),
                        None,
                        true,
                    );
                } else {
                    let message = format!("portal \"{STANDIN_NAME}\" does not exist");
                    self.error(error_body("34000", &message), Some(ours.clone()), true);
                }
            }
            Client::Sync => {
                self.ignore_till_sync = false;
                self.send(b'Z', &[status]);
            }
            _ if fails => self.error(other_error(), None, true),
            Client::Parse => self.send(b'1', b""),
            Client::Bind => self.send(b'2', b""),
            Client::Close => self.send(b'3', b""),
            Client::DescribeStatement => {
                self.send(b't', b"\0\0");
                self.send(if variant % 2 == 0 { b'T' } else { b'n' }, b"\0\0");
            }
            Client::DescribePortal => {
                self.send(if variant % 2 == 0 { b'T' } else { b'n' }, b"\0\0");
            }
            Client::Execute => {
                for _ in 0..variant % 4 {
                    self.send(b'D', b"\0\0");
                }
                match variant % 3 {
                    0 => self.send(b'C', b"SELECT 1\0"),
                    1 => self.send(b's', b""),
                    _ => self.send(b'I', b""),
                }
            }
            Client::Flush | Client::CopyData => {}
        }
    }
}

/// The steps so far, for the failure message.
#[allow(dead_code)] // read through Debug only
#[derive(Debug, Clone, Copy)]
enum Traced {
    Send(Client, bool),
    Deliver(char),
}

/// What the tracker must say once everything up to now has arrived or not.
struct Model {
    /// Extended-protocol messages sent since the last Sync, Query or FunctionCall.
    open_run: bool,
    /// Status byte of the last ReadyForQuery delivered.
    status: u8,
}

fn check(tracker: &Tracker, server: &Server, model: &Model, trace: &[Traced]) {
    let owed = server.wire.iter().any(|a| a.owed);
    assert_eq!(
        tracker.caught_up(),
        !owed,
        "caught_up disagrees with the model (owed: {owed}) after {trace:?}; wire {:?}",
        server.wire
    );
    assert_eq!(
        tracker.is_idle(),
        !owed && !model.open_run,
        "is_idle disagrees with the model after {trace:?}"
    );
    assert_eq!(tracker.status(), model.status);
    assert!(!tracker.can_resync() || tracker.caught_up());
    assert!(!tracker.is_quiescent() || tracker.is_idle());
    assert!(!tracker.open_failed() || !tracker.is_idle());
}

/// Checks the Closes and Executes the tracker has settled against what PostgreSQL did with them.
fn settle(tracker: &mut Tracker, closes: &mut HashMap<u64, bool>, trace: &[Traced]) {
    for (token, closed) in tracker.settled_closes().into_iter().flatten() {
        assert_eq!(
            closes.remove(&token),
            Some(closed),
            "Close or Execute {token} settled wrongly or twice after {trace:?}"
        );
    }
}

fuzz_target!(|input: Input| {
    let mut tracker = Tracker::default();
    // Tagged Closes and Executes not settled yet: whether PostgreSQL closed or completed them.
    let mut closes = HashMap::new();
    let mut server = Server::default();
    let mut model = Model {
        open_run: false,
        status: b'I',
    };
    let ours = Bytes::from_static(b"E\0\0\0\x04pgenrich's own error");
    let mut trace = Vec::new();
    for step in input.steps.iter().take(256) {
        match *step {
            Step::Send {
                message,
                fails,
                variant,
                status,
            } => {
                let simple = matches!(
                    message,
                    Client::Query | Client::FunctionCall | Client::StandinQuery
                );
                trace.push(Traced::Send(message, fails));
                tracker.on_client(message.kind());
                if matches!(message, Client::Close | Client::Execute) {
                    let token = trace.len() as u64;
                    // An Execute completes with CommandComplete (Server::receive's variant 0).
                    let done = !server.ignore_till_sync
                        && !fails
                        && (message == Client::Close || variant % 3 == 0);
                    closes.insert(token, done);
                    if message == Client::Close {
                        tracker.tag_close(token);
                    } else {
                        tracker.tag_execute(token);
                    }
                    settle(&mut tracker, &mut closes, &trace);
                }
                if matches!(message, Client::StandinQuery | Client::StandinExecute) {
                    tracker.substitute_next_standin_error(ours.clone());
                }
                if message.extended() {
                    model.open_run = true;
                } else if message == Client::Sync
                    || (simple && !server.ignore_till_sync)
                {
                    // A Query or FunctionCall that PostgreSQL discards (skipping to Sync after
                    // an error) leaves the run open: only Sync ends it then.
                    model.open_run = false;
                }
                server.receive(message, fails, variant, status, &ours);
            }
            Step::Deliver(n) => {
                for _ in 0..n.max(1) {
                    let Some(answer) = server.wire.pop_front() else {
                        break;
                    };
                    trace.push(Traced::Deliver(answer.kind as char));
                    let wants = tracker.wants_body(answer.kind);
                    let replacement =
                        tracker.on_backend(answer.kind, wants.then_some(&answer.body[..]));
                    assert_eq!(
                        replacement, answer.replaced_by,
                        "the wrong answer was replaced after {trace:?}"
                    );
                    if answer.kind == b'Z' {
                        model.status = answer.body[0];
                    }
                    settle(&mut tracker, &mut closes, &trace);
                }
            }
            Step::Async(which) => {
                let (kind, body): (u8, &[u8]) = match which % 3 {
                    0 => (b'N', b"SNOTICE\0Mhi\0\0"),
                    1 => (b'A', b"\0\0\0\x01chan\0payload\0"),
                    _ => (b'S', b"TimeZone\0UTC\0"),
                };
                server.wire.push_back(Answer {
                    kind,
                    body: body.to_vec(),
                    owed: false,
                    replaced_by: None,
                });
            }
        }
        check(&tracker, &server, &model, &trace);
    }
    // Everything arrives: every Close and Execute has been answered, or skipped by an error that
    // arrived.
    while let Some(answer) = server.wire.pop_front() {
        trace.push(Traced::Deliver(answer.kind as char));
        let wants = tracker.wants_body(answer.kind);
        tracker.on_backend(answer.kind, wants.then_some(&answer.body[..]));
        settle(&mut tracker, &mut closes, &trace);
    }
    assert!(
        closes.is_empty(),
        "Closes or Executes never settled: {closes:?} after {trace:?}"
    );

    // A misbehaving upstream: anything, in any order.
    let mut tracker = Tracker::default();
    for (kind, body, client) in input.chaos.iter().take(256) {
        tracker.on_client(*client);
        if client % 7 == 0 {
            tracker.substitute_next_standin_error(ours.clone());
        }
        if client % 5 == 0 {
            tracker.tag_close(u64::from(*kind));
        }
        if client % 3 == 0 {
            tracker.tag_execute(u64::from(*kind));
        }
        let _ = tracker.settled_closes().map(Iterator::count);
        let wants = tracker.wants_body(*kind);
        let body = if wants { body.as_deref() } else { None };
        if let Some(replacement) = tracker.on_backend(*kind, body) {
            assert_eq!(
                replacement, ours,
                "only registered errors replace upstream ones"
            );
        }
        assert!(!tracker.can_resync() || tracker.caught_up());
        assert!(!tracker.is_quiescent() || tracker.is_idle());
        assert!(!tracker.is_idle() || tracker.caught_up());
    }
});
