//! Unit tests of the response accounting.

use super::*;
use crate::error::SqlState;
use crate::protocol::ErrorMessage;

fn standin_error(code: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "ERROR".to_owned()),
        (b'C', code.to_owned()),
        (b'M', format!("portal \"{STANDIN_NAME}\" does not exist")),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

#[test]
fn simple_queries_are_answered_by_ready_for_query() {
    let mut t = Tracker::default();
    t.on_client(b'Q');
    t.on_client(b'Q');
    assert!(!t.is_idle());
    for kind in [b'T', b'D', b'C'] {
        t.on_backend(kind, None);
    }
    t.on_backend(b'Z', Some(b"T"));
    assert!(!t.is_idle());
    assert_eq!(t.status(), b'T');
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_quiescent());
}

#[test]
fn extended_runs_end_at_sync_and_errors_skip_the_rest() {
    let mut t = Tracker::default();
    for kind in [b'P', b'B', b'D', b'E', b'S'] {
        t.on_client(kind);
    }
    t.on_backend(b'1', None);
    t.on_backend(b'E', None);
    assert!(!t.is_idle(), "the Sync's ReadyForQuery is still due");
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}

#[test]
fn closings_count_only_what_was_forwarded() {
    let mut t = Tracker::default();
    t.on_backend(b'Z', Some(b"I")); // end of startup
    assert_eq!((t.closings_forwarded(), t.closings_answered()), (0, 0));
    t.on_client(b'Q');
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));
    assert_eq!((t.closings_forwarded(), t.closings_answered()), (2, 1));
    t.own_round_trip(b'T');
    assert_eq!(
        (t.closings_forwarded(), t.closings_answered(), t.status()),
        (3, 2, b'T')
    );
}

#[test]
fn caught_up_allows_an_open_answered_run() {
    let mut t = Tracker::default();
    t.on_client(b'B');
    assert!(!t.caught_up());
    t.on_backend(b'2', None);
    assert!(t.caught_up() && !t.is_idle());
    assert!(!t.open_failed());
    t.mark_open_failed();
    assert!(t.open_failed());
    t.on_client(b'S');
    assert!(!t.caught_up());
}

#[test]
fn resync_only_while_the_run_holds_no_portal() {
    let mut t = Tracker::default();
    assert!(t.can_resync());
    t.on_client(b'P');
    assert!(!t.can_resync(), "the Parse is not answered yet");
    t.on_backend(b'1', None);
    assert!(
        t.can_resync(),
        "a prepared statement outlives the transaction"
    );
    t.on_client(b'B');
    t.on_backend(b'2', None);
    assert!(!t.can_resync(), "a Sync would end the client's portal");
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.can_resync());
    t.on_client(b'D');
    t.mark_open_failed();
    assert!(!t.can_resync(), "the upstream skips to the client's Sync");
}

#[test]
fn standin_errors_are_replaced_once_in_order() {
    let mut t = Tracker::default();
    t.on_client(b'P');
    t.on_client(b'E');
    let ours = ErrorMessage::error(SqlState::FeatureNotSupported, "no").encode();
    t.substitute_next_standin_error(ours.clone());
    t.on_client(b'S');
    t.on_backend(b'1', None);
    assert!(t.wants_body(b'E'));
    assert_eq!(
        t.on_backend(b'E', Some(&standin_error("34000"))),
        Some(ours)
    );
    assert!(!t.wants_body(b'E'));
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}

#[test]
fn other_errors_pass_and_unused_substitutions_expire() {
    let mut t = Tracker::default();
    t.on_client(b'Q');
    t.substitute_next_standin_error(Bytes::from_static(b"ours"));
    // In an aborted transaction the upstream answers 25P02 instead: relay that one.
    assert_eq!(t.on_backend(b'E', Some(&standin_error("25P02"))), None);
    t.on_backend(b'Z', Some(b"E"));
    t.on_client(b'Q');
    assert!(
        !t.wants_body(b'E'),
        "substitutions never leak into later statements"
    );
}

#[test]
fn a_query_discarded_after_an_error_is_not_owed() {
    // Seen before it was forwarded: nothing is owed for it.
    let mut t = Tracker::default();
    t.on_client(b'C');
    t.on_backend(b'E', None);
    t.on_client(b'Q');
    assert!(t.caught_up());
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
    assert_eq!(t.closings_forwarded(), t.closings_answered());

    // Forwarded before the error arrived: the error discards it.
    let mut t = Tracker::default();
    t.on_client(b'P');
    t.on_client(b'Q');
    t.on_client(b'B');
    t.on_client(b'S');
    t.on_backend(b'E', None);
    assert!(!t.is_idle(), "the Sync's ReadyForQuery is due");
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle(), "nothing else comes");
    assert_eq!(t.closings_forwarded(), t.closings_answered());
}

#[test]
fn messages_forwarded_after_a_seen_error_are_not_owed() {
    let mut t = Tracker::default();
    t.on_client(b'P');
    t.on_backend(b'E', None);
    t.on_client(b'B');
    t.on_client(b'E');
    assert!(t.caught_up(), "nothing is owed before the Sync");
    assert!(t.open_failed());
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}

#[test]
fn a_standin_query_after_an_open_run_gets_its_substitution() {
    let mut t = Tracker::default();
    t.on_client(b'P');
    t.on_backend(b'1', None);
    t.on_client(b'Q');
    let ours = ErrorMessage::error(SqlState::FeatureNotSupported, "no").encode();
    t.substitute_next_standin_error(ours.clone());
    assert!(t.wants_body(b'E'));
    assert_eq!(
        t.on_backend(b'E', Some(&standin_error("26000"))),
        Some(ours)
    );
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}

fn settled(t: &mut Tracker) -> Vec<(u64, bool)> {
    t.settled_closes()
        .map(Iterator::collect)
        .unwrap_or_default()
}

#[test]
fn tagged_closes_settle_when_answered_or_skipped() {
    let mut t = Tracker::default();
    t.on_client(b'C');
    t.tag_close(1);
    t.on_client(b'C'); // a Close pgenrich does not wait for
    t.on_client(b'C');
    t.tag_close(2);
    t.on_client(b'S');
    assert_eq!(settled(&mut t), []);
    t.on_backend(b'3', None);
    assert_eq!(settled(&mut t), [(1, true)]);
    t.on_backend(b'3', None);
    assert_eq!(settled(&mut t), []);
    // The third Close's answer is an error: the upstream did not close.
    t.on_backend(b'E', None);
    assert_eq!(settled(&mut t), [(2, false)]);
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());

    // Forwarded after an error was seen: discarded, settled at once.
    t.on_client(b'P');
    t.on_backend(b'E', None);
    t.on_client(b'C');
    t.tag_close(3);
    assert_eq!(settled(&mut t), [(3, false)]);
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));

    // Behind a Query that ends a run which then fails: skipped with the Query.
    t.on_client(b'P');
    t.on_client(b'Q');
    t.on_client(b'C');
    t.tag_close(4);
    t.on_client(b'S');
    t.on_backend(b'E', None);
    assert_eq!(settled(&mut t), [(4, false)]);
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}

#[test]
fn tagged_executes_settle_when_completed_or_not() {
    let mut t = Tracker::default();
    // Parse, Bind, Execute (untagged: its rows and CommandComplete), Bind, Execute (tagged).
    for kind in *b"PBEB" {
        t.on_client(kind);
    }
    t.on_client(b'E');
    t.tag_execute(1);
    t.on_client(b'S');
    for kind in *b"12DDC2" {
        t.on_backend(kind, None);
    }
    assert_eq!(settled(&mut t), []);
    t.on_backend(b'C', None);
    assert_eq!(settled(&mut t), [(1, true)]);
    t.on_backend(b'Z', Some(b"I"));

    // An empty statement or a suspended portal did not complete; an error did not either.
    for (answer, token) in [(b'I', 2), (b's', 3), (b'E', 4)] {
        t.on_client(b'E');
        t.tag_execute(token);
        t.on_client(b'S');
        t.on_backend(answer, None);
        assert_eq!(settled(&mut t), [(token, false)]);
        t.on_backend(b'Z', Some(b"I"));
    }

    // Skipped after an earlier error, and discarded after a seen one.
    t.on_client(b'B');
    t.on_client(b'E');
    t.tag_execute(5);
    t.on_backend(b'E', None);
    assert_eq!(settled(&mut t), [(5, false)]);
    t.on_client(b'E');
    t.tag_execute(6);
    assert_eq!(settled(&mut t), [(6, false)]);
    t.on_client(b'S');
    t.on_backend(b'Z', Some(b"I"));

    // Behind a Query that ends the run: the Query's own CommandComplete answers nothing tagged.
    t.on_client(b'E');
    t.on_client(b'Q');
    t.on_client(b'E');
    t.tag_execute(7);
    t.on_client(b'S');
    t.on_backend(b'C', None); // the first Execute
    t.on_backend(b'C', None); // the Query
    t.on_backend(b'Z', Some(b"I"));
    assert_eq!(settled(&mut t), []);
    t.on_backend(b'C', None);
    assert_eq!(settled(&mut t), [(7, true)]);
    t.on_backend(b'Z', Some(b"I"));
    assert!(t.is_idle());
}
