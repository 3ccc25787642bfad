//! pgenrich: a PostgreSQL wire-protocol sidecar that relays sessions to the upstream database and
//! intervenes only in statements calling ML pseudo-functions (`aws_comprehend.*`,
//! `aws_sagemaker.*`, `aws_bedrock.*`).
//!
//! # Layout
//!
//! - [`config`]: typed settings from flags, `PGENRICH_*` variables and the TOML file.
//! - [`access`]: which database roles may call which ML functions, endpoints and languages.
//! - [`error`]: errors per layer and the one SQLSTATE table.
//! - [`server`]: listeners, connection limit, graceful drain.
//! - [`session`]: one client session — negotiation, the byte-pump relay, response accounting,
//!   and running ML statements. See "Session layers" below.
//! - [`protocol`]: frame headers and messages pgenrich builds (pgwire's codec); no I/O.
//! - [`sql`]: the ML hook — does a statement call an ML function? — and ML statement plans as
//!   plain data (streaming, base + residual, EXPLAIN targets).
//! - [`enrich`]: the inference executor — batching, de-duplication, concurrency with fair
//!   shares between statements and the row cap ([`enrich::share`]), ordering, the result cache
//!   across statements ([`enrich::cache`]), what a fleet of sidecars shares through Redis
//!   (cached results, calls in flight per endpoint: [`enrich::fleet`]) — and the process-wide
//!   budget of bytes ML statements hold ([`enrich::budget`]).
//! - [`backends`]: Comprehend and SageMaker Runtime through the AWS SDK, and the embedded ones
//!   (VADER sentiment, ONNX models by tract).
//! - [`upstream`]: connecting to the database (TLS modes) and forwarding cancel requests.
//! - [`cancel`]: client-facing cancel keys and where they lead.
//! - [`tls`]: rustls configuration for both legs.
//! - [`stream`]: the client and upstream stream types.
//! - [`telemetry`]: tracing subscriber set-up.
//! - [`metrics`]: the process's metrics registry (Prometheus) and the admin listener
//!   (`/metrics`, `/livez`, `/readyz`); any layer records into it.
//!
//! # Session layers
//!
//! [`session`] is layered: a file imports only its own layer or lower ones, no two modules of one
//! layer import each other, and there are no import circles. From the top:
//!
//! 1. the session's life ([`session`]'s root: negotiation, the relay loop, closing), the
//!    pass-through loops ([`session::direct`]) and `dispatch`, which hands each ML message to
//!    its mode with a conversation;
//! 2. [`session::explain`], which describes (and with ANALYZE runs) what an execution mode would
//!    do, so it uses the residual mode's phases, and `cursor` (DECLARE, FETCH, MOVE, CLOSE of
//!    cursors over ML statements), which scores each FETCH with the streaming mode's phases;
//! 3. the execution modes, which never import each other: [`session::streaming`] and
//!    [`session::residual`] (base statements, then the residual statement; DESIGN.md's "enrich,
//!    then finish in PostgreSQL"). Each offers the same entry points: `run_query` (a simple
//!    Query), `run_statement` (one statement of a multi-statement Query), `handle_parse` and
//!    `run_execute` (extended protocol);
//! 4. [`session::conversation`]: the only code that sends requests upstream and reads answers
//!    during an ML statement, with the session's one rule for back-pressure (the upstream is not
//!    read while 1 MiB waits for a client that is not reading), cancel, client hang-up,
//!    draining, and the session's `pgenrich.*` settings (progress notices, its row cap);
//! 5. [`session::relay`]: the byte pump and the ML hook: Query/Parse texts that mention an ML
//!    schema go to the session's task, which inspects and plans them on one of the planner threads
//!    ([`session::relay::planner`]: large stack, depth guard, panics contained), never on a
//!    pass-through loop;
//! 6. [`session::statements`]: the table of ML statements, portals and cursors, as plain data
//!    the relay owns, each entry with its charge;
//! 7. leaves: [`session::tracker`] (what the upstream owes), [`session::rows`] (DataRow and
//!    RowDescription codecs), `scoring` (a chunk's inference and the statement's memo),
//!    [`session::kept`] (the charges of what a session keeps between messages against
//!    `max_prepared_bytes` and `max_prepared_memory`), [`session::deferred`] (prepared
//!    DEALLOCATE, CLOSE and DISCARD ALL commands, which forget ML names once executed).
//!
//! # Threads
//!
//! The binary runs two tokio runtimes: one for sessions (a single thread on hosts with up to
//! 2 CPUs), the other for ML work — service calls and the enrichment of streamed chunks — on
//! every CPU ([`enrich::Executor::spawn`]). A relayed query then costs no cross-thread wake-up,
//! and an ML statement neither waits behind the relay nor holds it up.
//!
//! Sessions are relayed between ML statements by pass-through loops
//! ([`session::direct`], one thread per CPU) that wait on epoll themselves: per relayed
//! query about half the user-space instructions of relaying on tokio. The session's task hands its
//! relay over once authentication is done and gets it back for each ML statement, each control
//! that fires (idle check, draining) and at the end; a TLS session goes with its TLS state.
//! The loops run under SCHED_BATCH (`relay_sched_batch`) so that their wake-ups do not preempt
//! the database backend or client sharing their CPU. Handshakes and ML statements run on the
//! tokio runtime.

pub mod access;
pub mod backends;
pub mod cancel;
pub mod config;
pub mod enrich;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sql;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod upstream;
