//! The relay's byte pump (`session::relay`) end to end: a real `Relay` between two Unix socket
//! pairs, fed arbitrary client and upstream byte streams in arbitrary pieces and orders, with
//! the pieces of each message arriving in separate reads. Under every input nothing panics, and
//! as long as the client sends no ML statement (no text mentioning an ML schema, no statement
//! over `max_query_bytes`) the relay is transparent: the upstream receives exactly the client's
//! bytes, and the client exactly the upstream's — except that before the first ReadyForQuery
//! BackendKeyData carries pgenrich's key and AuthenticationSASL loses SCRAM-SHA-256-PLUS. What
//! is still on its way at the end is a message the relay holds until it has all of it.
#![no_main]

use std::future::poll_fn;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgenrich::cancel::CancelRegistry;
use pgenrich::enrich::budget::MemoryBudget;
use pgenrich::protocol::{self, header, HEADER_LEN};
use pgenrich::session::kept::KeptBudgets;
use pgenrich::session::relay::{Event, Relay, RelayContext};
use pgenrich::stream::{Socket, Stream};

/// The relay's limit on statement texts it holds (pgenrich's default is larger; a small one
/// lets the fuzzer reach the refusal).
const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Debug, Arbitrary)]
enum Step {
    /// A framed client message: type byte, then the body (a NUL is added to Query texts).
    Client(u8, Vec<u8>),
    /// A framed upstream message.
    Upstream(u8, Vec<u8>),
    /// Raw client bytes (anything: truncated or bad frames).
    ClientRaw(Vec<u8>),
    UpstreamRaw(Vec<u8>),
    /// Deliver up to this many of the client's queued bytes, then let the relay work.
    SendClient(u16),
    SendUpstream(u16),
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// One side: bytes queued, bytes written to the relay, bytes the other side received.
#[derive(Default)]
struct Side {
    queued: Vec<u8>,
    sent: Vec<u8>,
}

fn frame(kind: u8, mut body: Vec<u8>) -> Vec<u8> {
    if kind == b'Q' && body.last() != Some(&0) {
        body.push(0);
    }
    protocol::message(kind, &body).to_vec()
}

/// Reads everything a peer socket has.
fn drain(peer: &mut StdUnixStream, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    let mut any = false;
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return any,
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                any = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return any,
            Err(e) => panic!("reading a peer: {e}"),
        }
    }
}

/// Why the relay stopped.
#[derive(Debug)]
enum Stop {
    /// An ML statement: the session's task would take over.
    Intercept,
    Error,
    Other,
}

struct Pump {
    relay: Relay,
    client: StdUnixStream,
    upstream: StdUnixStream,
    to_upstream: Vec<u8>,
    to_client: Vec<u8>,
    stop: Option<Stop>,
}

impl Pump {
    /// Lets the relay work until neither side moves.
    async fn settle(&mut self) {
        let mut quiet = 0;
        while quiet < 3 && self.stop.is_none() {
            let polled = poll_fn(|cx| Poll::Ready(self.relay.poll_progress(cx))).await;
            match polled {
                Poll::Ready(Ok(Event::Intercept(_))) => self.stop = Some(Stop::Intercept),
                Poll::Ready(Ok(_)) => self.stop = Some(Stop::Other),
                Poll::Ready(Err(_)) => self.stop = Some(Stop::Error),
                Poll::Pending => {}
            }
            let moved = drain(&mut self.upstream, &mut self.to_upstream)
                | drain(&mut self.client, &mut self.to_client);
            tokio::task::yield_now().await;
            quiet = if moved { 0 } else { quiet + 1 };
        }
    }

    async fn send(&mut self, client: bool, side: &mut Side, n: usize) {
        let n = n.min(side.queued.len());
        let bytes: Vec<u8> = side.queued.drain(..n).collect();
        let mut at = 0;
        while at < bytes.len() && self.stop.is_none() {
            let peer = if client {
                &mut self.client
            } else {
                &mut self.upstream
            };
            match peer.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.settle().await,
                Err(e) => panic!("writing a peer: {e}"),
            }
        }
        side.sent.extend_from_slice(&bytes[..at]);
        self.settle().await;
    }
}

/// Checks that `got` is what the relay owes for `sent`, as far as it has gone: frames of `sent`
/// one by one (rewritten as the relay rewrites upstream messages before the first
/// ReadyForQuery), and what is missing at the end one message the relay holds whole, or the
/// frame it stopped at.
fn check_transparent(sent: &[u8], got: &[u8], upstream: bool, complete: bool) {
    let mut rest = sent;
    let mut out = got;
    let mut ready = false;
    while !out.is_empty() {
        let Some(Ok((kind, len))) = header(rest) else {
            panic!(
                "the relay sent {} bytes beyond the frames it got",
                out.len()
            );
        };
        let total = 1 + len;
        if total > rest.len() {
            // A message passed through as it arrives: what was forwarded is a prefix.
            assert!(
                rest.starts_with(out),
                "a partial message changed on its way"
            );
            return;
        }
        let message = &rest[..total];
        rest = &rest[total..];
        if !upstream && kind == b'X' {
            // Terminate: the relay reads no more (what came with it in one read still passes).
            let n = total.min(out.len());
            assert_eq!(&out[..n], &message[..n]);
            return;
        }
        if upstream && !ready && kind == b'K' && len - 4 >= 8 {
            // pgenrich's own cancel key: same type, its own body.
            let Some(Ok((k, l))) = header(out) else {
                panic!("a BackendKeyData is cut short");
            };
            assert_eq!(k, b'K');
            out = &out[(1 + l).min(out.len())..];
            continue;
        }
        let rewritten = (upstream && !ready && kind == b'R')
            .then(|| protocol::without_channel_binding(&message[HEADER_LEN..]))
            .flatten();
        let expected = rewritten.as_deref().unwrap_or(message);
        if upstream && kind == b'Z' {
            ready = true;
        }
        if out.len() < expected.len() {
            assert!(expected.starts_with(out), "a message changed on its way");
            return;
        }
        assert_eq!(
            &out[..expected.len()],
            expected,
            "a message changed on its way"
        );
        out = &out[expected.len()..];
    }
    // What was not forwarded starts at a frame the relay holds or stopped at; no complete
    // message after it that it could have passed.
    if !complete || (!upstream && rest.first() == Some(&b'X')) {
        return;
    }
    if let Some(Ok((_, len))) = header(rest) {
        let total = 1 + len;
        if total <= rest.len() {
            panic!(
                "a complete {} message of {} bytes was not forwarded ({} bytes left)",
                rest[0] as char,
                total,
                rest.len()
            );
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let rt = runtime();
    rt.block_on(async {
        let (client_end, client_peer) = tokio::net::UnixStream::pair().expect("a socket pair");
        let (upstream_end, upstream_peer) = tokio::net::UnixStream::pair().expect("a socket pair");
        let client_peer = client_peer.into_std().expect("std");
        let upstream_peer = upstream_peer.into_std().expect("std");
        let ctx = RelayContext {
            max_query_bytes: MAX_QUERY_BYTES,
            max_ml_statement_bytes: MAX_QUERY_BYTES,
            idle_timeout: false,
            max_buffered_bytes: 1 << 20,
            memory: MemoryBudget::new(64 << 20),
            prepared: KeptBudgets {
                session: MemoryBudget::plain(64 << 20),
                process: MemoryBudget::plain(256 << 20),
            },
            cancel_notify: Arc::new(tokio::sync::Notify::new()),
            cancels: CancelRegistry::new(),
            upstream_addr: "127.0.0.1:5432".parse().expect("an address"),
            grant: Arc::new(pgenrich::access::Grant::All),
            role: String::new(),
        };
        let relay = Relay::new(
            Stream::Plain(Socket::Unix(client_end)),
            Stream::Plain(Socket::Unix(upstream_end)),
            ctx,
        );
        let mut pump = Pump {
            relay,
            client: client_peer,
            upstream: upstream_peer,
            to_upstream: Vec::new(),
            to_client: Vec::new(),
            stop: None,
        };
        let (mut client, mut upstream) = (Side::default(), Side::default());
        for step in steps.into_iter().take(64) {
            if pump.stop.is_some() {
                break;
            }
            match step {
                Step::Client(kind, body) => client.queued.extend(frame(kind, body)),
                Step::Upstream(kind, body) => upstream.queued.extend(frame(kind, body)),
                Step::ClientRaw(bytes) => client.queued.extend(bytes),
                Step::UpstreamRaw(bytes) => upstream.queued.extend(bytes),
                Step::SendClient(n) => pump.send(true, &mut client, n.into()).await,
                Step::SendUpstream(n) => pump.send(false, &mut upstream, n.into()).await,
            }
        }
        let n = client.queued.len();
        pump.send(true, &mut client, n).await;
        let n = upstream.queued.len();
        pump.send(false, &mut upstream, n).await;

        // Transparency holds while no statement is the ML hook's business.
        let plain = !pgenrich::sql::mentions_ml_schema(&client.sent) && !oversized(&client.sent);
        if plain && !matches!(pump.stop, Some(Stop::Intercept)) {
            let complete = pump.stop.is_none();
            check_transparent(&client.sent, &pump.to_upstream, false, complete);
            check_transparent(&upstream.sent, &pump.to_client, true, complete);
        }
    });
});

/// Whether a Query or Parse message declares a text over the relay's limit.
fn oversized(mut stream: &[u8]) -> bool {
    while let Some(Ok((kind, len))) = header(stream) {
        if matches!(kind, b'Q' | b'P') && len - 4 > MAX_QUERY_BYTES {
            return true;
        }
        stream = &stream[(1 + len).min(stream.len())..];
    }
    false
}
