//! One client session: pre-startup negotiation (SSL, GSSENC, cancel requests), connecting the
//! upstream, then the relay loop with its timeouts, draining and closing.

mod controls;
pub mod conversation;
mod cursor;
pub mod deferred;
pub mod direct;
mod dispatch;
pub mod explain;
pub mod kept;
pub mod relay;
pub mod residual;
pub mod rows;
mod scoring;
pub mod statements;
pub mod streaming;
pub mod tracker;

use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument, Span};

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::error::SessionError;
use crate::protocol::frontend;
use crate::protocol::startup::{self, StartupError, StartupPacket};
use crate::stream::{ClientStream, Socket};
use crate::upstream::Upstream;
use controls::{Control, Controls};
use kept::KeptBudgets;
use relay::{Event, Relay, RelayContext};

/// How long pgenrich keeps trying to deliver its last words to a closing session.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by all sessions of a server.
pub struct SessionContext {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    pub tls: Option<TlsAcceptor>,
    pub cancels: Arc<CancelRegistry>,
    pub executor: Arc<crate::enrich::Executor>,
    /// Bytes all ML statements hold (`max_ml_memory`).
    pub memory: Arc<crate::enrich::budget::MemoryBudget>,
    /// Bytes all sessions' ML prepared statements, portals and cursors hold
    /// (`max_prepared_memory`).
    pub prepared: Arc<crate::enrich::budget::MemoryBudget>,
    /// Cancelled on SIGTERM/SIGINT: sessions close as soon as they are idle.
    pub draining: CancellationToken,
    /// Cancelled when the drain timeout expires: sessions close now.
    pub terminate: CancellationToken,
    /// The pass-through loops (None: everything is relayed on tokio).
    pub direct: Option<direct::Loops>,
}

/// Runs a client connection to its end. `admitted` is false when the connection limit is reached.
/// `span` is the session's: everything but the pump of relayed bytes runs in it, so that the
/// pump does not enter and leave it twice per relayed query (about 700 instructions when the
/// log level lets the span through, as the default `info` does).
pub async fn run(ctx: Arc<SessionContext>, stream: ClientStream, admitted: bool, span: Span) {
    let result = session(&ctx, stream, admitted, &span).await;
    if admitted {
        crate::metrics::session_closed(close_reason(&result));
    }
    span.in_scope(|| match result {
        Ok(()) => debug!("session ended"),
        Err(error @ (SessionError::ClientIo(_) | SessionError::Shutdown)) => {
            debug!(%error, "session closed")
        }
        Err(error) => info!(%error, "session ended with an error"),
    })
}

/// How a session ended, as [`crate::metrics::session_closed`] labels it.
fn close_reason(result: &Result<(), SessionError>) -> &'static str {
    match result {
        Ok(()) => "terminate",
        Err(SessionError::ClientIo(_)) => "client_gone",
        Err(SessionError::UpstreamIo(_) | SessionError::UpstreamConnect { .. }) => "upstream",
        Err(SessionError::Shutdown) => "shutdown",
        Err(SessionError::IdleTimeout) => "idle_timeout",
        Err(SessionError::HandshakeTimeout) => "handshake_timeout",
        Err(_) => "error",
    }
}

async fn session(
    ctx: &SessionContext,
    stream: ClientStream,
    admitted: bool,
    span: &Span,
) -> Result<(), SessionError> {
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    let mut connection = crate::metrics::Connection::new();
    let Some(relay) = open(ctx, stream, admitted, deadline)
        .instrument(span.clone())
        .await?
    else {
        return Ok(());
    };
    let (relay, result) = relay_loop(ctx, Box::new(relay), deadline, span, &mut connection).await?;
    close(ctx, *relay, result).instrument(span.clone()).await
}

/// Negotiates with the client up to its StartupMessage and connects upstream; the relay that
/// will carry the session, or None for a cancel request.
async fn open(
    ctx: &SessionContext,
    mut stream: ClientStream,
    admitted: bool,
    deadline: Instant,
) -> Result<Option<Relay>, SessionError> {
    // PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a TLS handshake instead of an
    // SSLRequest.
    stream = match direct_tls(ctx, stream, deadline).await? {
        Some(stream) => stream,
        None => return Ok(None),
    };
    // What the login role may call; a startup packet without a user is refused by the database.
    let mut grant = ctx.config.access.grant("");
    let mut role = String::new();
    // Pre-startup packets: answer SSL/GSSENC requests until the StartupMessage arrives.
    let raw_startup = loop {
        let packet = match timeout_at(deadline, read_startup_packet(&mut stream)).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(error)) => return fail(stream, error).await,
            Err(_) => return fail(stream, SessionError::HandshakeTimeout).await,
        };
        match packet {
            StartupPacket::SslRequest => {
                stream = match (stream, &ctx.tls) {
                    (ClientStream::Plain(Socket::Tcp(mut tcp)), Some(acceptor)) => {
                        tcp.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let tls = timeout_at(deadline, acceptor.accept(Socket::Tcp(tcp)))
                            .await
                            .map_err(|_| SessionError::HandshakeTimeout)?
                            .map_err(SessionError::ClientTls)?;
                        ClientStream::Tls(Box::new(tls))
                    }
                    (mut other, _) => {
                        other
                            .write_all(b"N")
                            .await
                            .map_err(SessionError::ClientIo)?;
                        other
                    }
                }
            }
            StartupPacket::GssEncRequest => stream
                .write_all(b"N")
                .await
                .map_err(SessionError::ClientIo)?,
            StartupPacket::Cancel { pid, secret } => {
                forward_cancel(ctx, pid, &secret).await;
                return Ok(None);
            }
            StartupPacket::Startup { params, raw, .. } => {
                let span = Span::current();
                for (name, value) in &params {
                    match name.as_str() {
                        "user" => {
                            grant = ctx.config.access.grant(value);
                            role.clone_from(value);
                            span.record("user", value.as_str())
                        }
                        "database" => span.record("database", value.as_str()),
                        _ => &span,
                    };
                }
                break raw;
            }
        }
    };
    if !admitted {
        return fail(stream, SessionError::TooManyConnections).await;
    }
    if ctx.draining.is_cancelled() {
        return fail(stream, SessionError::Shutdown).await;
    }
    let (upstream, upstream_addr) = match ctx.upstream.connect().await {
        Ok(connected) => connected,
        Err(error) => return fail(stream, error).await,
    };
    debug!(%upstream_addr, tls = stream.is_tls(), "connected upstream");
    let mut relay = Relay::new(
        stream,
        upstream,
        RelayContext {
            max_query_bytes: ctx.config.max_query_bytes,
            max_ml_statement_bytes: ctx.config.max_ml_statement_bytes,
            idle_timeout: ctx.config.idle_timeout.is_some(),
            max_buffered_bytes: ctx.config.max_buffered_bytes,
            memory: Arc::clone(&ctx.memory),
            prepared: KeptBudgets {
                session: crate::enrich::budget::MemoryBudget::plain(ctx.config.max_prepared_bytes),
                process: Arc::clone(&ctx.prepared),
            },
            cancel_notify: Arc::new(tokio::sync::Notify::new()),
            cancels: Arc::clone(&ctx.cancels),
            upstream_addr,
            grant: Arc::new(grant),
            role,
        },
    );
    relay.send_upstream(raw_startup);
    Ok(Some(relay))
}

/// Pumps until the session ends, honouring the handshake deadline, the idle timeout, draining
/// and termination; the relay comes back for closing with the result. Err when the relay was
/// lost (the pass-through loop stopped), with nothing left to close.
async fn relay_loop(
    ctx: &SessionContext,
    mut relay: Box<Relay>,
    handshake_deadline: Instant,
    span: &Span,
    connection: &mut crate::metrics::Connection,
) -> Result<(Box<Relay>, Result<(), SessionError>), SessionError> {
    let mut controls = Controls::new(
        handshake_deadline,
        ctx.config.idle_timeout,
        &ctx.draining,
        &ctx.terminate,
    );
    let direct = ctx.direct.as_ref().map(|loops| (loops, loops.pick()));
    loop {
        if relay.ready {
            connection.set(crate::metrics::ConnectionState::Relaying);
        }
        let step = match direct {
            Some((loops, index)) if relay.can_go_direct() => {
                let (back, step) = loops.hand_over(index, relay, &mut controls).await?;
                relay = back;
                step
            }
            _ => {
                let step = poll_fn(|cx| {
                    if let Poll::Ready(control) = controls.poll(cx, relay.control_state()) {
                        return Poll::Ready(Some(Err(control)));
                    }
                    let progress = catch_unwind(AssertUnwindSafe(|| relay.poll_progress(cx)))
                        .unwrap_or_else(|panic| Poll::Ready(Err(contained(&*panic))));
                    match progress {
                        // Authentication is over: the pass-through loop takes it from here.
                        Poll::Pending if direct.is_some() && relay.can_go_direct() => {
                            Poll::Ready(None)
                        }
                        progress => progress.map(|event| Some(Ok(event))),
                    }
                })
                .await;
                let Some(step) = step else {
                    continue;
                };
                step
            }
        };
        if matches!(step, Ok(Ok(Event::Intercept(_)))) {
            connection.set(crate::metrics::ConnectionState::Ml);
        }
        let stepped = AssertUnwindSafe(relay_step(ctx, &mut relay, &mut controls, step, span))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(contained(&*panic)));
        match stepped {
            Ok(true) => {}
            Ok(false) => return Ok((relay, Ok(()))),
            Err(error) => return Ok((relay, Err(error))),
        }
    }
}

/// A panic while serving a session, contained to it: logged, and the session closes with
/// `XX000` (when the client can still parse a message) while the process goes on.
pub(crate) fn contained(panic: &(dyn std::any::Any + Send)) -> SessionError {
    let what = crate::error::panic_text(panic);
    tracing::error!(%what, "a session failed; it is closed, other sessions go on");
    SessionError::Internal(what)
}

/// Acts on one step of the relay loop: Ok(true) to go on, Ok(false) when the session is over.
async fn relay_step(
    ctx: &SessionContext,
    relay: &mut Relay,
    controls: &mut Controls,
    step: direct::Step,
    span: &Span,
) -> Result<bool, SessionError> {
    let event = match step {
        Ok(event) => event?,
        // Authentication may have finished since the deadline fired.
        Err(Control::HandshakeTimeout) if relay.ready => return Ok(true),
        Err(Control::HandshakeTimeout) => return Err(SessionError::HandshakeTimeout),
        Err(Control::IdleCheck) => {
            let Some(timeout) = ctx.config.idle_timeout else {
                return Ok(true);
            };
            // A busy session, or one inside a transaction block, is looked at again one
            // timeout later; an idle one when its idle time is up.
            let next = if relay.tracker.is_quiescent() {
                let since = Instant::from_std(relay.last_activity);
                if since.elapsed() >= timeout {
                    return Err(SessionError::IdleTimeout);
                }
                since + timeout
            } else {
                Instant::now() + timeout
            };
            controls.rearm_idle(next);
            return Ok(true);
        }
        Err(Control::Drain) => {
            relay.draining = true;
            return Ok(true);
        }
        Err(Control::Terminate) => {
            relay.terminating = true;
            return Ok(true);
        }
    };
    match event {
        // After the client's Terminate both sides simply hang up.
        Event::ClientClosed | Event::UpstreamClosed if relay.client_terminated() => Ok(false),
        Event::ClientClosed => Err(SessionError::ClientIo(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Event::UpstreamClosed => Err(SessionError::UpstreamIo(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Event::Quiescent | Event::AtBoundary => Err(SessionError::Shutdown),
        Event::Intercept(intercept) => {
            relay.ml_running = true;
            dispatch::intercept_ml(&ctx.executor, chunking(&ctx.config), relay, intercept)
                .instrument(span.clone())
                .await?;
            relay.ml_running = false;
            Ok(true)
        }
    }
}

/// Ends a relayed session: tells the client why (when it can still parse a message), stops the
/// upstream's work if the client vanished mid-query, and closes both connections.
async fn close(
    ctx: &SessionContext,
    mut relay: Relay,
    result: Result<(), SessionError>,
) -> Result<(), SessionError> {
    let error = match result {
        Ok(()) => {
            let _ = timeout(CLOSE_FLUSH_TIMEOUT, poll_fn(|cx| relay.poll_flush_all(cx))).await;
            return Ok(());
        }
        Err(error) => error,
    };
    let client_gone = matches!(
        error,
        SessionError::ClientIo(_) | SessionError::ClientTls(_)
    );
    if client_gone && (!relay.tracker.is_idle() || relay.ml_running) {
        // PostgreSQL notices a vanished client only when it next writes; a long query would keep
        // running (and holding locks) until then.
        if let Some(target) = relay.cancel_target.clone() {
            let upstream = Arc::clone(&ctx.upstream);
            tokio::spawn(async move {
                let _ = upstream
                    .cancel(
                        target.upstream_addr,
                        target.upstream_pid,
                        &target.upstream_secret,
                    )
                    .await;
            });
        }
    }
    let upstream_gone = matches!(error, SessionError::UpstreamIo(_));
    relay.discard_pending_input();
    let says_why = !(upstream_gone && relay.upstream_sent_error_last());
    if !client_gone && says_why && relay.client_at_boundary() {
        if let Some(message) = error.to_client() {
            relay.push_to_client(message.encode());
        }
    }
    if !upstream_gone && relay.upstream_at_boundary() {
        relay.push_to_upstream(terminate_message());
    }
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, poll_fn(|cx| relay.poll_flush_all(cx))).await;
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, relay.client.shutdown()).await;
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, relay.upstream.shutdown()).await;
    if client_gone && relay.tracker.is_idle() {
        return Ok(());
    }
    Err(error)
}

/// The chunking settings of ML statements.
fn chunking(config: &Config) -> conversation::Chunking {
    conversation::Chunking {
        rows: config.inference.chunk_rows,
        in_flight: config.inference.chunks_in_flight,
        bytes: config.inference.chunk_bytes,
    }
}

fn terminate_message() -> Bytes {
    Bytes::from_static(&[frontend::TERMINATE, 0, 0, 0, 4])
}

/// Sends a FATAL for `error` (if it has one) on a session that never reached the relay.
async fn fail<T>(mut stream: ClientStream, error: SessionError) -> Result<T, SessionError> {
    if let Some(message) = error.to_client() {
        let _ = timeout(CLOSE_FLUSH_TIMEOUT, async {
            stream.write_all(&message.encode()).await?;
            stream.shutdown().await
        })
        .await;
    }
    Err(error)
}

/// The first byte of a TLS handshake record. A startup packet starts with its length, which is
/// never that large, so the two cannot be confused.
const TLS_HANDSHAKE: u8 = 0x16;

/// A fatal `handshake_failure` TLS alert: the refusal a direct TLS client understands.
const TLS_REFUSAL: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

/// Takes a client that opens with a TLS handshake (PostgreSQL 17's `sslnegotiation=direct`)
/// into TLS when a certificate is configured, as PostgreSQL 17 does: the client must have
/// negotiated the ALPN protocol `postgresql`. Without a certificate the handshake is refused
/// with a TLS alert. Other clients are returned untouched; None when the connection was refused.
async fn direct_tls(
    ctx: &SessionContext,
    stream: ClientStream,
    deadline: Instant,
) -> Result<Option<ClientStream>, SessionError> {
    let ClientStream::Plain(Socket::Tcp(mut tcp)) = stream else {
        return Ok(Some(stream));
    };
    let mut first = [0u8; 1];
    let peeked = match timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(peeked) => peeked.map_err(SessionError::ClientIo)?,
        Err(_) => {
            let stream = ClientStream::Plain(Socket::Tcp(tcp));
            return fail(stream, SessionError::HandshakeTimeout).await;
        }
    };
    if peeked == 0 || first[0] != TLS_HANDSHAKE {
        return Ok(Some(ClientStream::Plain(Socket::Tcp(tcp))));
    }
    let Some(acceptor) = &ctx.tls else {
        debug!("direct TLS refused: no certificate is configured (tls_cert_file)");
        let _ = timeout(CLOSE_FLUSH_TIMEOUT, async {
            tcp.write_all(&TLS_REFUSAL).await?;
            tcp.shutdown().await
        })
        .await;
        return Ok(None);
    };
    // A client that stalls mid-handshake cannot read a plaintext FATAL: it is just closed.
    let tls = timeout_at(deadline, acceptor.accept(Socket::Tcp(tcp)))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)?
        .map_err(SessionError::ClientTls)?;
    let alpn = tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_POSTGRESQL);
    let stream = ClientStream::Tls(Box::new(tls));
    if !alpn {
        return fail(
            stream,
            SessionError::BadStartup(
                "direct TLS connection without the ALPN protocol \"postgresql\"".to_owned(),
            ),
        )
        .await;
    }
    Ok(Some(stream))
}

async fn read_startup_packet(stream: &mut ClientStream) -> Result<StartupPacket, SessionError> {
    let len = stream.read_u32().await.map_err(SessionError::ClientIo)?;
    let len = startup::check_length(len).map_err(startup_error)?;
    let mut raw = BytesMut::zeroed(len);
    raw[..4].copy_from_slice(&(len as u32).to_be_bytes());
    stream
        .read_exact(&mut raw[4..])
        .await
        .map_err(SessionError::ClientIo)?;
    startup::decode(raw.freeze()).map_err(startup_error)
}

fn startup_error(error: StartupError) -> SessionError {
    match error {
        StartupError::BadLength(len) => {
            SessionError::BadStartup(format!("invalid length of startup packet ({len})"))
        }
        StartupError::UnsupportedProtocol { major, minor } => {
            SessionError::UnsupportedProtocol { major, minor }
        }
        StartupError::Malformed(why) => SessionError::BadStartup(why.to_owned()),
    }
}

/// Forwards a client's cancel request to the upstream backend its key stands for, then stops
/// the session's own work (inference). Unknown keys are ignored silently, as PostgreSQL does.
///
/// The order matters: the session answers a stopped statement at once and the client's next
/// statement follows, so a cancel still on its way to PostgreSQL would cancel that one. Once
/// `cancel` returns, PostgreSQL has signalled its backend, which cancels what it runs now or
/// ignores the signal while idle.
async fn forward_cancel(ctx: &SessionContext, pid: i32, secret: &[u8]) {
    let Some(target) = ctx.cancels.lookup(pid, secret) else {
        debug!("cancel request with an unknown key ignored");
        return;
    };
    let forwarded = ctx
        .upstream
        .cancel(
            target.upstream_addr,
            target.upstream_pid,
            &target.upstream_secret,
        )
        .await;
    target.session.notify_one();
    match forwarded {
        Ok(()) => debug!("cancel request forwarded"),
        Err(error) => info!(%error, "could not forward a cancel request"),
    }
}
