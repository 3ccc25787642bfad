//! Process-wide metrics, served as Prometheus text by the admin listener ([`admin`]).
//!
//! The `metrics` facade with `metrics-exporter-prometheus`'s recorder: one registry per process,
//! installed by [`install`] when `admin_listen` is set. Until then every recording is a no-op
//! (the facade's default recorder), so a pgenrich without the admin listener pays nothing.
//!
//! The relay's hot path never touches the registry: sessions count queries and bytes in plain
//! fields ([`RelayCounts`]) and add them to handles registered once ([`Handles`]) when the relay
//! turns over. Everything else (ML statements, inference calls) records per statement or per
//! service call, by name with labels.
//!
//! Labels that come from SQL text (endpoint names, languages) are bounded: the first
//! [`MAX_TARGETS`] distinct values get their own series, later ones are counted as `_other`, so
//! that a client cannot grow the registry without limit.

pub mod admin;
pub mod loops;

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Distinct endpoint names and languages with series of their own.
pub const MAX_TARGETS: usize = 200;

/// Histogram buckets (seconds) for statement and inference-call durations.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Metric names, in one place (README's metrics table lists the same).
pub mod names {
    pub const CLIENT_CONNECTIONS: &str = "pgenrich_client_connections";
    pub const SESSIONS_OPENED: &str = "pgenrich_sessions_opened_total";
    pub const SESSIONS_CLOSED: &str = "pgenrich_sessions_closed_total";
    pub const SESSIONS_REFUSED: &str = "pgenrich_sessions_refused_total";
    pub const QUERIES: &str = "pgenrich_queries_relayed_total";
    pub const BYTES: &str = "pgenrich_relayed_bytes_total";
    pub const ML_STATEMENTS: &str = "pgenrich_ml_statements_total";
    pub const ML_STATEMENT_SECONDS: &str = "pgenrich_ml_statement_duration_seconds";
    pub const ML_BYTES_HELD: &str = "pgenrich_ml_bytes_held";
    pub const INFERENCE_CALLS: &str = "pgenrich_inference_calls_total";
    pub const INFERENCE_ROWS: &str = "pgenrich_inference_rows_total";
    pub const INFERENCE_BYTES: &str = "pgenrich_inference_bytes_total";
    pub const INFERENCE_RETRIES: &str = "pgenrich_inference_retries_total";
    pub const INFERENCE_ERRORS: &str = "pgenrich_inference_errors_total";
    pub const INFERENCE_SECONDS: &str = "pgenrich_inference_call_duration_seconds";
    pub const DUPLICATES_SAVED: &str = "pgenrich_inference_duplicates_saved_total";
    pub const MEMO_HITS: &str = "pgenrich_memo_hits_total";
    pub const CACHE_LOOKUPS: &str = "pgenrich_cache_lookups_total";
    pub const REDIS_ERRORS: &str = "pgenrich_redis_errors_total";
    pub const FLEET_WAITS: &str = "pgenrich_fleet_slot_waits_total";
    pub const FLEET_WAIT_SECONDS: &str = "pgenrich_fleet_slot_wait_seconds";
    pub const LOOP_ROUNDS: &str = "pgenrich_relay_loop_rounds_total";
    pub const LOOP_SLOW_ROUNDS: &str = "pgenrich_relay_loop_slow_rounds_total";
    pub const LOOP_BUSY: &str = "pgenrich_relay_loop_busy_ratio";
}

/// What a session is doing, for [`names::CLIENT_CONNECTIONS`]`{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Startup, TLS and authentication.
    Handshake,
    /// Authenticated, its bytes relayed (idle or running plain SQL).
    Relaying,
    /// Running an ML statement.
    Ml,
}

impl ConnectionState {
    fn label(self) -> &'static str {
        match self {
            ConnectionState::Handshake => "handshake",
            ConnectionState::Relaying => "relaying",
            ConnectionState::Ml => "ml",
        }
    }
}

/// Handles of the metrics the relay and sessions update often, registered once at [`install`].
pub struct Handles {
    pub queries_simple: Counter,
    pub queries_extended: Counter,
    pub bytes_to_upstream: Counter,
    pub bytes_to_client: Counter,
    connections: [Gauge; 3],
}

struct Installed {
    handle: PrometheusHandle,
    handles: Handles,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). Needs a tokio
/// runtime: it starts the recorder's upkeep task.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(installed) = INSTALLED.get() {
        return Ok(installed.handle.clone());
    }
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(installed) = INSTALLED.get() {
        return Ok(installed.handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    let connection =
        |state: ConnectionState| gauge!(names::CLIENT_CONNECTIONS, "state" => state.label());
    let handles = Handles {
        queries_simple: counter!(names::QUERIES, "protocol" => "simple"),
        queries_extended: counter!(names::QUERIES, "protocol" => "extended"),
        bytes_to_upstream: counter!(names::BYTES, "direction" => "to_upstream"),
        bytes_to_client: counter!(names::BYTES, "direction" => "to_client"),
        connections: [
            connection(ConnectionState::Handshake),
            connection(ConnectionState::Relaying),
            connection(ConnectionState::Ml),
        ],
    };
    // Histograms keep their samples until rendered; upkeep drains them without a scrape.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let installed = INSTALLED.get_or_init(|| Installed {
        handle: handle.clone(),
        handles,
    });
    Ok(installed.handle.clone())
}

/// The often-updated handles, once [`install`] has run.
#[inline]
pub fn handles() -> Option<&'static Handles> {
    INSTALLED.get().map(|i| &i.handles)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        names::CLIENT_CONNECTIONS,
        "Client connections by state (handshake, relaying, ml)."
    );
    describe_counter!(names::SESSIONS_OPENED, "Client sessions accepted.");
    describe_counter!(names::SESSIONS_CLOSED, "Client sessions ended, by how.");
    describe_counter!(
        names::SESSIONS_REFUSED,
        "Client connections refused over max_client_connections."
    );
    describe_counter!(
        names::QUERIES,
        "Query (simple) and Execute (extended) messages relayed to the database."
    );
    describe_counter!(names::BYTES, Unit::Bytes, "Bytes relayed, by direction.");
    describe_counter!(
        names::ML_STATEMENTS,
        "ML statements by mode (streaming, residual, explain) and refused ones."
    );
    describe_histogram!(
        names::ML_STATEMENT_SECONDS,
        Unit::Seconds,
        "Duration of ML statements, by mode."
    );
    describe_gauge!(
        names::ML_BYTES_HELD,
        Unit::Bytes,
        "Bytes held by ML statements (max_ml_memory)."
    );
    describe_counter!(
        names::INFERENCE_CALLS,
        "Inference service calls, by function and endpoint or language."
    );
    describe_counter!(names::INFERENCE_ROWS, "Rows sent to inference services.");
    describe_counter!(
        names::INFERENCE_BYTES,
        Unit::Bytes,
        "Payload bytes sent to and received from inference services."
    );
    describe_counter!(
        names::INFERENCE_RETRIES,
        "Inference call attempts retried by the AWS SDK, by service."
    );
    describe_counter!(
        names::INFERENCE_ERRORS,
        "Failed inference calls, by function, endpoint or language and SQLSTATE."
    );
    describe_histogram!(
        names::INFERENCE_SECONDS,
        Unit::Seconds,
        "Duration of inference calls (retries included), by function."
    );
    describe_counter!(
        names::DUPLICATES_SAVED,
        "Rows not sent because an identical input in the same statement was."
    );
    describe_counter!(
        names::CACHE_LOOKUPS,
        "Rows looked up in the result cache across statements, by tier (memory, redis) and \
         result (hit, miss)."
    );
    describe_counter!(
        names::REDIS_ERRORS,
        "Redis operations that failed or timed out (pgenrich went on without them), by operation."
    );
    describe_counter!(
        names::FLEET_WAITS,
        "Times a call found every fleet slot of its endpoint taken and waited."
    );
    describe_histogram!(
        names::FLEET_WAIT_SECONDS,
        Unit::Seconds,
        "Time calls took to get a fleet slot (fleet_max_calls_per_endpoint)."
    );
    describe_counter!(
        names::MEMO_HITS,
        "Rows answered from the statement's memo of earlier chunks."
    );
    describe_counter!(
        names::LOOP_ROUNDS,
        "Rounds of work of each pass-through loop (from epoll's return to its next wait)."
    );
    describe_counter!(
        names::LOOP_SLOW_ROUNDS,
        "Pass-through loop rounds that took 1 ms or more: every session on the loop waited."
    );
    describe_gauge!(
        names::LOOP_BUSY,
        "Share of the last second each pass-through loop spent in rounds (wall time)."
    );
}

/// A session's place in [`names::CLIENT_CONNECTIONS`]: counted in one state from creation to
/// drop.
pub struct Connection {
    state: Option<ConnectionState>,
}

impl Connection {
    pub fn new() -> Connection {
        let mut connection = Connection { state: None };
        connection.set(ConnectionState::Handshake);
        connection
    }

    pub fn set(&mut self, state: ConnectionState) {
        let Some(handles) = handles() else {
            return;
        };
        if self.state == Some(state) {
            return;
        }
        if let Some(old) = self.state {
            handles.connections[old as usize].decrement(1.0);
        }
        handles.connections[state as usize].increment(1.0);
        self.state = Some(state);
    }
}

impl Default for Connection {
    fn default() -> Self {
        Connection::new()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let (Some(handles), Some(old)) = (handles(), self.state) {
            handles.connections[old as usize].decrement(1.0);
        }
    }
}

/// Queries and bytes of one relay not yet added to the process's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayCounts {
    /// Bytes read from the client and from the upstream since the last flush.
    pub from_client: u64,
    pub from_upstream: u64,
    /// Query and Execute messages counted so far (totals, as the session's tracker gives them).
    flushed_queries: (u64, u64),
}

impl RelayCounts {
    /// Adds what was counted since the last flush to the process's counters; `queries` is the
    /// session's running total of Query and Execute messages.
    #[inline]
    pub fn flush(&mut self, queries: (u64, u64)) {
        if self.from_client | self.from_upstream == 0 && queries == self.flushed_queries {
            return;
        }
        if let Some(handles) = handles() {
            handles
                .queries_simple
                .increment(queries.0.saturating_sub(self.flushed_queries.0));
            handles
                .queries_extended
                .increment(queries.1.saturating_sub(self.flushed_queries.1));
            handles.bytes_to_upstream.increment(self.from_client);
            handles.bytes_to_client.increment(self.from_upstream);
        }
        self.from_client = 0;
        self.from_upstream = 0;
        self.flushed_queries = queries;
    }
}

/// How a session ended, for [`names::SESSIONS_CLOSED`]`{reason}`.
pub fn session_closed(reason: &'static str) {
    counter!(names::SESSIONS_CLOSED, "reason" => reason).increment(1);
}

pub fn session_opened() {
    counter!(names::SESSIONS_OPENED).increment(1);
}

pub fn session_refused() {
    counter!(names::SESSIONS_REFUSED).increment(1);
}

/// An ML statement ran in `mode` (`streaming`, `residual`, `explain`, `multi`) for `elapsed`.
pub fn ml_statement(mode: &'static str, elapsed: Duration) {
    counter!(names::ML_STATEMENTS, "mode" => mode).increment(1);
    histogram!(names::ML_STATEMENT_SECONDS, "mode" => mode).record(elapsed.as_secs_f64());
}

/// An ML statement was refused (planning error, e.g. `0A000`, `54001`).
pub fn ml_statement_refused(sqlstate: &'static str) {
    counter!(names::ML_STATEMENTS, "mode" => "refused", "sqlstate" => sqlstate).increment(1);
}

/// Bytes ML statements hold now: rows, and their de-duplication memos.
pub fn ml_bytes_held(rows: usize, memos: usize, prepared: usize) {
    gauge!(names::ML_BYTES_HELD, "kind" => "rows").set(rows as f64);
    gauge!(names::ML_BYTES_HELD, "kind" => "memo").set(memos as f64);
    gauge!(names::ML_BYTES_HELD, "kind" => "prepared").set(prepared as f64);
}

/// One inference call: `function` (`detect_sentiment`, `invoke_endpoint`), its endpoint or
/// language, rows and payload bytes each way; `error` the SQLSTATE when it failed.
pub struct InferenceCall<'a> {
    pub function: &'static str,
    pub target: &'a str,
    pub rows: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
    pub elapsed: Duration,
    pub error: Option<&'static str>,
}

pub fn inference_call(call: InferenceCall<'_>) {
    if INSTALLED.get().is_none() {
        return;
    }
    let target = target_label(call.target);
    let labels = [
        ("function", SharedString::from(call.function)),
        ("target", target),
    ];
    counter!(names::INFERENCE_CALLS, &labels).increment(1);
    counter!(names::INFERENCE_ROWS, &labels).increment(call.rows as u64);
    counter!(names::INFERENCE_BYTES, "function" => call.function, "direction" => "sent")
        .increment(call.bytes_sent as u64);
    counter!(names::INFERENCE_BYTES, "function" => call.function, "direction" => "received")
        .increment(call.bytes_received as u64);
    histogram!(names::INFERENCE_SECONDS, "function" => call.function)
        .record(call.elapsed.as_secs_f64());
    if let Some(sqlstate) = call.error {
        let [function, target] = labels;
        counter!(
            names::INFERENCE_ERRORS,
            &[function, target, ("sqlstate", SharedString::from(sqlstate))]
        )
        .increment(1);
    }
}

/// An attempt the AWS SDK retried (`service`: `sagemaker`, `comprehend`).
pub fn inference_retry(service: &'static str) {
    counter!(names::INFERENCE_RETRIES, "service" => service).increment(1);
}

/// Rows of a statement not sent because an identical input of the same chunk was.
pub fn deduplicated(rows: u64) {
    if rows > 0 {
        counter!(names::DUPLICATES_SAVED).increment(rows);
    }
}

/// Rows of a chunk answered by the statement's memo (results of earlier or concurrent chunks).
pub fn memo_hits(rows: u64) {
    if rows > 0 {
        counter!(names::MEMO_HITS).increment(rows);
    }
}

/// Rows found in the result cache across statements and rows not found.
pub fn cache_lookups(tier: &'static str, hits: u64, misses: u64) {
    if hits > 0 {
        counter!(names::CACHE_LOOKUPS, "tier" => tier, "result" => "hit").increment(hits);
    }
    if misses > 0 {
        counter!(names::CACHE_LOOKUPS, "tier" => tier, "result" => "miss").increment(misses);
    }
}

pub fn redis_error(op: &'static str) {
    counter!(names::REDIS_ERRORS, "op" => op).increment(1);
}

/// A call found its endpoint's fleet slots all taken (once per attempt).
pub fn fleet_waited() {
    counter!(names::FLEET_WAITS).increment(1);
}

/// A call got its fleet slot after `waited`.
pub fn fleet_wait(waited: Duration) {
    histogram!(names::FLEET_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// The label for an endpoint name or language: itself for the first [`MAX_TARGETS`] distinct
/// values, `_other` after that.
fn target_label(target: &str) -> SharedString {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(target) {
        return SharedString::from(target.to_owned());
    }
    if seen.len() < MAX_TARGETS {
        seen.insert(target.to_owned());
        return SharedString::from(target.to_owned());
    }
    SharedString::const_str("_other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_beyond_the_bound_share_one_label() {
        // Other tests may have named targets already: fill up to the bound, then one more.
        for i in 0..MAX_TARGETS {
            target_label(&format!("bound-test-{i}"));
        }
        assert_eq!(&*target_label("one-too-many"), "_other");
        assert_eq!(&*target_label("bound-test-0"), "bound-test-0");
    }
}
