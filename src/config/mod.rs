//! Typed configuration: defaults, then the TOML file, then `PGENRICH_*` environment variables,
//! then command-line flags (each later source wins). Every setting has the same name in all
//! three places (`max_client_connections` ⇄ `PGENRICH_MAX_CLIENT_CONNECTIONS` ⇄
//! `--max-client-connections`). Values are validated once, at start-up, and an invalid one stops
//! pgenrich with a message naming its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::error::ConfigError;

/// Command line. Every option can also come from the environment or the config file.
#[derive(Debug, Default, Parser)]
#[command(
    name = "pgenrich",
    version,
    about = "PostgreSQL wire-protocol sidecar that evaluates Aurora-style ML functions in batches",
    long_about = "pgenrich listens like a PostgreSQL server and relays every session to the upstream \
database. Each option may also be set as PGENRICH_<NAME> in the environment or as <name> in the \
TOML config file; precedence is flag > environment > file > default."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "PGENRICH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept client connections on [default: 127.0.0.1:6432].
    #[arg(long, env = "PGENRICH_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// The PostgreSQL server to relay to (host name resolved per connection).
    #[arg(long, env = "PGENRICH_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// Also listen on a Unix socket `<dir>/.s.PGSQL.<listen port>` (libpq `host=<dir>`).
    #[arg(long, env = "PGENRICH_UNIX_SOCKET_DIR", value_name = "DIR")]
    pub unix_socket_dir: Option<String>,
    /// Admin HTTP listener for /metrics, /livez and /readyz [default: off].
    #[arg(long, env = "PGENRICH_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<String>,
    /// PEM certificate chain offered to clients that request TLS (with --tls-key-file).
    #[arg(long, env = "PGENRICH_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<String>,
    /// PEM private key for --tls-cert-file.
    #[arg(long, env = "PGENRICH_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<String>,
    /// TLS to the upstream: disable, prefer, require, verify-ca or verify-full [default: prefer].
    #[arg(long, env = "PGENRICH_UPSTREAM_TLS_MODE", value_name = "MODE")]
    pub upstream_tls_mode: Option<String>,
    /// PEM CA bundle for verify-ca / verify-full (e.g. the RDS bundle) [default: system roots].
    #[arg(long, env = "PGENRICH_UPSTREAM_TLS_CA_FILE", value_name = "FILE")]
    pub upstream_tls_ca_file: Option<String>,
    /// Name checked against the upstream certificate in verify-full [default: upstream host].
    #[arg(long, env = "PGENRICH_UPSTREAM_TLS_SERVER_NAME", value_name = "NAME")]
    pub upstream_tls_server_name: Option<String>,
    /// Maximum concurrent client sessions; more get FATAL 53300 [default: 1000].
    #[arg(long, env = "PGENRICH_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<String>,
    /// Time a client has to finish startup and authentication [default: 30s].
    #[arg(long, env = "PGENRICH_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Close sessions idle outside a transaction this long with FATAL 57P05; 0 disables [default: 0].
    #[arg(long, env = "PGENRICH_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// TCP keepalive on client and database connections [default: true].
    #[arg(long, env = "PGENRICH_TCP_KEEPALIVE", value_name = "BOOL")]
    pub tcp_keepalive: Option<String>,
    /// Idle time before the first keepalive probe [default: 60s].
    #[arg(long, env = "PGENRICH_TCP_KEEPIDLE", value_name = "DURATION")]
    pub tcp_keepidle: Option<String>,
    /// Time between keepalive probes [default: 10s].
    #[arg(long, env = "PGENRICH_TCP_KEEPINTVL", value_name = "DURATION")]
    pub tcp_keepintvl: Option<String>,
    /// Unanswered probes before the connection counts as dead [default: 6].
    #[arg(long, env = "PGENRICH_TCP_KEEPCNT", value_name = "N")]
    pub tcp_keepcnt: Option<String>,
    /// On SIGTERM/SIGINT, how long busy sessions may finish before FATAL 57P01 [default: 30s].
    #[arg(long, env = "PGENRICH_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Timeout for connecting to the upstream, TLS included [default: 10s].
    #[arg(
        long,
        env = "PGENRICH_UPSTREAM_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_connect_timeout: Option<String>,
    /// Largest Query/Parse message text pgenrich inspects; longer ones get 54000 [default: 64MiB].
    #[arg(long, env = "PGENRICH_MAX_QUERY_BYTES", value_name = "BYTES")]
    pub max_query_bytes: Option<String>,
    /// Most base-row bytes one ML statement that cannot stream (grouping, sorting, …) holds in
    /// memory; more gets 54000 [default: 256MiB].
    #[arg(long, env = "PGENRICH_MAX_BUFFERED_BYTES", value_name = "BYTES")]
    pub max_buffered_bytes: Option<String>,
    /// Most base-row bytes all ML statements together hold; at least max_buffered_bytes
    /// [default: 512MiB].
    #[arg(long, env = "PGENRICH_MAX_ML_MEMORY", value_name = "BYTES")]
    pub max_ml_memory: Option<String>,
    /// Log format: text or json (level filter from RUST_LOG) [default: text].
    #[arg(long, env = "PGENRICH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Threads that relay sessions: 0 = automatic (pass-through loops: one per CPU; session
    /// runtime: one thread on hosts with up to 2 CPUs, else one per CPU), 1 = a single-threaded
    /// runtime and one loop, n = n of each [default: 0].
    #[arg(long, env = "PGENRICH_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<String>,
    /// Relay sessions between ML statements on pgenrich's own epoll loops (see
    /// --worker-threads); false = on the tokio runtime [default: true].
    #[arg(long, env = "PGENRICH_DIRECT_RELAY", value_name = "BOOL")]
    pub direct_relay: Option<String>,
    /// Run the pass-through loops under Linux's SCHED_BATCH policy: a loop woken by arriving
    /// bytes does not preempt the task on that CPU (often the PostgreSQL backend or client that
    /// sent them) but runs on an idle CPU or when that task's time slice ends [default: true].
    #[arg(long, env = "PGENRICH_RELAY_SCHED_BATCH", value_name = "BOOL")]
    pub relay_sched_batch: Option<String>,
    /// Threads for ML work (service calls, enriching rows), apart from the relay: 0 = one per
    /// CPU [default: 0].
    #[arg(long, env = "PGENRICH_ENRICH_THREADS", value_name = "N")]
    pub enrich_threads: Option<String>,
    /// AWS region for Comprehend and SageMaker [default: from the AWS chain, e.g. AWS_REGION].
    #[arg(long, env = "PGENRICH_AWS_REGION", value_name = "REGION")]
    pub aws_region: Option<String>,
    /// SageMaker Runtime endpoint URL [default: AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME or the regional endpoint].
    #[arg(long, env = "PGENRICH_SAGEMAKER_ENDPOINT_URL", value_name = "URL")]
    pub sagemaker_endpoint_url: Option<String>,
    /// Comprehend endpoint URL [default: AWS_ENDPOINT_URL_COMPREHEND or the regional endpoint].
    #[arg(long, env = "PGENRICH_COMPREHEND_ENDPOINT_URL", value_name = "URL")]
    pub comprehend_endpoint_url: Option<String>,
    /// AWS SDK retry mode: standard or adaptive [default: standard].
    #[arg(long, env = "PGENRICH_AWS_RETRY_MODE", value_name = "MODE")]
    pub aws_retry_mode: Option<String>,
    /// Attempts per inference call, first try included [default: 3].
    #[arg(long, env = "PGENRICH_AWS_MAX_ATTEMPTS", value_name = "N")]
    pub aws_max_attempts: Option<String>,
    /// Timeout of one inference call attempt [default: 30s].
    #[arg(long, env = "PGENRICH_INFERENCE_TIMEOUT", value_name = "DURATION")]
    pub inference_timeout: Option<String>,
    /// Rows fetched from the database per chunk of an ML statement [default: 1000].
    #[arg(long, env = "PGENRICH_CHUNK_ROWS", value_name = "N")]
    pub chunk_rows: Option<String>,
    /// Chunks of an ML statement in inference at once while the next is fetched [default: 4].
    #[arg(long, env = "PGENRICH_CHUNKS_IN_FLIGHT", value_name = "N")]
    pub chunks_in_flight: Option<String>,
    /// Base-row bytes that end a chunk before chunk_rows rows [default: 4MiB].
    #[arg(long, env = "PGENRICH_CHUNK_BYTES", value_name = "BYTES")]
    pub chunk_bytes: Option<String>,
    /// Rows per InvokeEndpoint call when max_rows_per_batch is NULL [default: 500].
    #[arg(long, env = "PGENRICH_DEFAULT_BATCH_ROWS", value_name = "N")]
    pub default_batch_rows: Option<String>,
    /// Inference calls in flight at once, all sessions together [default: 16].
    #[arg(long, env = "PGENRICH_MAX_CONCURRENT_CALLS", value_name = "N")]
    pub max_concurrent_calls: Option<String>,
    /// Inference calls in flight at once per endpoint / language [default: 8].
    #[arg(
        long,
        env = "PGENRICH_MAX_CONCURRENT_CALLS_PER_ENDPOINT",
        value_name = "N"
    )]
    pub max_concurrent_calls_per_endpoint: Option<String>,
    /// Cut Comprehend documents over 5,000 bytes instead of failing: true or false [default: false].
    #[arg(long, env = "PGENRICH_COMPREHEND_TRUNCATE", value_name = "BOOL")]
    pub comprehend_truncate: Option<String>,
    /// What serves aws_comprehend.detect_sentiment: aws (Amazon Comprehend) or local (the
    /// embedded VADER model) [default: aws].
    #[arg(long, env = "PGENRICH_COMPREHEND_BACKEND", value_name = "BACKEND")]
    pub comprehend_backend: Option<String>,
    /// Endpoints served by local ONNX models, as NAME=onnx:MODEL_FILE[,...]; other names go to
    /// SageMaker. Replaces the config file's [endpoints.*] tables [default: none].
    #[arg(long, env = "PGENRICH_ENDPOINTS", value_name = "LIST")]
    pub endpoints: Option<String>,
}

/// One `[endpoints.<name>]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    backend: String,
    model: Option<String>,
    output: Option<String>,
}

/// The config file: the same keys, with TOML types.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    upstream: Option<String>,
    unix_socket_dir: Option<String>,
    admin_listen: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    upstream_tls_mode: Option<String>,
    upstream_tls_ca_file: Option<String>,
    upstream_tls_server_name: Option<String>,
    max_client_connections: Option<toml::Value>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    tcp_keepalive: Option<toml::Value>,
    tcp_keepidle: Option<String>,
    tcp_keepintvl: Option<String>,
    tcp_keepcnt: Option<toml::Value>,
    upstream_connect_timeout: Option<String>,
    max_query_bytes: Option<toml::Value>,
    max_buffered_bytes: Option<toml::Value>,
    max_ml_memory: Option<toml::Value>,
    log_format: Option<String>,
    worker_threads: Option<toml::Value>,
    direct_relay: Option<toml::Value>,
    relay_sched_batch: Option<toml::Value>,
    enrich_threads: Option<toml::Value>,
    aws_region: Option<String>,
    sagemaker_endpoint_url: Option<String>,
    comprehend_endpoint_url: Option<String>,
    aws_retry_mode: Option<String>,
    aws_max_attempts: Option<toml::Value>,
    inference_timeout: Option<String>,
    chunk_rows: Option<toml::Value>,
    chunks_in_flight: Option<toml::Value>,
    chunk_bytes: Option<toml::Value>,
    default_batch_rows: Option<toml::Value>,
    max_concurrent_calls: Option<toml::Value>,
    max_concurrent_calls_per_endpoint: Option<toml::Value>,
    comprehend_truncate: Option<toml::Value>,
    comprehend_backend: Option<String>,
    endpoints: Option<BTreeMap<String, EndpointFile>>,
}

/// The AWS SDK's retry modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryMode {
    Standard,
    Adaptive,
}

/// Settings of the inference path.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    pub aws_region: Option<String>,
    pub sagemaker_endpoint_url: Option<String>,
    pub comprehend_endpoint_url: Option<String>,
    pub retry_mode: RetryMode,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub chunk_rows: usize,
    pub chunks_in_flight: usize,
    /// A chunk ends at `chunk_rows` rows or at this many bytes of base rows, whichever first.
    pub chunk_bytes: usize,
    pub default_batch_rows: usize,
    pub max_concurrent_calls: usize,
    pub max_concurrent_calls_per_endpoint: usize,
    pub comprehend_truncate: bool,
    pub comprehend_backend: SentimentBackendKind,
    /// Endpoint names served by local models (every other name goes to SageMaker).
    pub endpoints: BTreeMap<String, LocalEndpoint>,
}

/// What serves `aws_comprehend.detect_sentiment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentimentBackendKind {
    /// Amazon Comprehend.
    Aws,
    /// The embedded VADER model.
    Local,
}

/// An endpoint served by an ONNX model run in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub model: PathBuf,
    /// The model output to return (default: `probabilities` if present, else the first).
    pub output: Option<String>,
}

/// TLS towards the upstream, with libpq's `sslmode` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `host:port` as configured; resolved for every new session.
    pub upstream: String,
    pub upstream_host: String,
    pub unix_socket_dir: Option<PathBuf>,
    /// The admin HTTP listener (metrics, health); None: off.
    pub admin_listen: Option<SocketAddr>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub upstream_tls_mode: UpstreamTlsMode,
    pub upstream_tls_ca_file: Option<PathBuf>,
    pub upstream_tls_server_name: Option<String>,
    pub max_client_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    /// TCP keepalive on both legs (None: off).
    pub keepalive: Option<Keepalive>,
    pub upstream_connect_timeout: Duration,
    pub max_query_bytes: usize,
    /// Base-row bytes a non-streaming ML statement may hold.
    pub max_buffered_bytes: usize,
    /// Base-row bytes all ML statements together may hold.
    pub max_ml_memory: usize,
    pub log_format: LogFormat,
    /// Relay runtime threads as configured (0: automatic, see [`Config::relay_threads`]).
    pub worker_threads: usize,
    /// Sessions are relayed on the pass-through loops ([`crate::session::direct`]).
    pub direct_relay: bool,
    /// The pass-through loops run under SCHED_BATCH ([`crate::session::direct`]).
    pub relay_sched_batch: bool,
    /// ML runtime threads as configured (0: one per CPU, see [`Config::ml_threads`]).
    pub enrich_threads: usize,
    pub inference: InferenceConfig,
}

/// TCP keepalive settings (PgBouncer's `tcp_keepidle`, `tcp_keepintvl`, `tcp_keepcnt`): a peer
/// that vanished without closing is noticed after about `idle + interval × count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Config {
    /// Threads of the runtime that relays sessions, on a host with `cpus` CPUs. Automatic: one
    /// on up to 2 CPUs, where the sidecar shares its cores with the application or the database
    /// and a second relay thread mostly adds cross-thread wake-ups; one per CPU above that.
    pub fn relay_threads(&self, cpus: usize) -> usize {
        match self.worker_threads {
            0 if cpus <= 2 => 1,
            0 => cpus,
            n => n,
        }
    }

    /// Pass-through loops ([`crate::session::direct`]) on a host with `cpus` CPUs. Automatic:
    /// one per CPU, also on small hosts. A loop's thread sleeps in epoll when it has nothing to
    /// relay, and sessions stay on the loop they were given, so a second loop costs no
    /// cross-thread wake-ups; it does keep half the sessions moving while the other loop's
    /// thread waits for a CPU.
    pub fn loop_threads(&self, cpus: usize) -> usize {
        match self.worker_threads {
            0 => cpus.max(1),
            n => n,
        }
    }

    /// Threads of the runtime that runs ML work, on a host with `cpus` CPUs.
    pub fn ml_threads(&self, cpus: usize) -> usize {
        match self.enrich_threads {
            0 => cpus.max(1),
            n => n,
        }
    }

    /// Settings for tests and embedding: defaults plus the two addresses.
    pub fn new(listen: SocketAddr, upstream: &str) -> Result<Config, ConfigError> {
        Self::resolve(
            Cli {
                listen: Some(listen.to_string()),
                upstream: Some(upstream.to_owned()),
                ..Cli::default()
            },
            FileConfig::default(),
        )
    }

    /// Merges the command line (which already carries the environment) over the config file.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let mut file = read_file(path)?;
                // Model paths in the file are relative to the file.
                let dir = path.parent().unwrap_or(Path::new(""));
                for endpoint in file.endpoints.iter_mut().flat_map(|e| e.values_mut()) {
                    if let Some(model) = &mut endpoint.model {
                        *model = dir.join(&*model).to_string_lossy().into_owned();
                    }
                }
                file
            }
            None => FileConfig::default(),
        };
        Self::resolve(cli, file)
    }

    fn resolve(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let listen_text = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:6432".to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "listen",
                format!("`{listen_text}`: {e} (expected ADDR:PORT)"),
            )
        })?;
        let admin_listen = match cli.admin_listen.or(file.admin_listen) {
            Some(text) if !text.is_empty() => Some(text.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "admin_listen",
                    format!("`{text}`: {e} (expected ADDR:PORT)"),
                )
            })?),
            _ => None,
        };
        if admin_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                "admin_listen",
                "must differ from `listen`: the admin endpoints never share the client port",
            ));
        }
        let upstream = cli.upstream.or(file.upstream).ok_or(ConfigError::Missing {
            key: "upstream",
            flag: "upstream",
            env: "UPSTREAM",
        })?;
        let upstream_host = upstream_host(&upstream)?;
        let tls_cert_file = cli.tls_cert_file.or(file.tls_cert_file).map(PathBuf::from);
        let tls_key_file = cli.tls_key_file.or(file.tls_key_file).map(PathBuf::from);
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), None) => return Err(invalid("tls_key_file", "required with tls_cert_file")),
            (None, Some(_)) => return Err(invalid("tls_cert_file", "required with tls_key_file")),
            _ => {}
        }
        let mode_text = cli.upstream_tls_mode.or(file.upstream_tls_mode);
        let upstream_tls_mode = match mode_text.as_deref().unwrap_or("prefer") {
            "disable" => UpstreamTlsMode::Disable,
            "prefer" => UpstreamTlsMode::Prefer,
            "require" => UpstreamTlsMode::Require,
            "verify-ca" => UpstreamTlsMode::VerifyCa,
            "verify-full" => UpstreamTlsMode::VerifyFull,
            other => {
                return Err(invalid(
                    "upstream_tls_mode",
                    format!(
                        "`{other}` (expected disable, prefer, require, verify-ca or verify-full)"
                    ),
                ))
            }
        };
        let log_format = match cli
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("`{other}` (expected text or json)"),
                ))
            }
        };
        let max_client_connections = number(
            "max_client_connections",
            cli.max_client_connections,
            file.max_client_connections,
            1000,
        )?;
        if max_client_connections == 0 {
            return Err(invalid("max_client_connections", "must be at least 1"));
        }
        let max_query_bytes = number(
            "max_query_bytes",
            cli.max_query_bytes,
            file.max_query_bytes,
            64 << 20,
        )?;
        if !(1024..=1 << 30).contains(&max_query_bytes) {
            return Err(invalid(
                "max_query_bytes",
                "must be between 1024 and 1073741824",
            ));
        }
        let max_buffered_bytes = number(
            "max_buffered_bytes",
            cli.max_buffered_bytes,
            file.max_buffered_bytes,
            256 << 20,
        )?;
        if max_buffered_bytes < 1 << 20 {
            return Err(invalid("max_buffered_bytes", "must be at least 1MiB"));
        }
        let max_ml_memory = number(
            "max_ml_memory",
            cli.max_ml_memory,
            file.max_ml_memory,
            (512 << 20).max(max_buffered_bytes),
        )?;
        if max_ml_memory < max_buffered_bytes {
            return Err(invalid(
                "max_ml_memory",
                "must be at least max_buffered_bytes",
            ));
        }
        let idle_timeout = duration("idle_timeout", cli.idle_timeout, file.idle_timeout, "0s")?;
        let positive =
            |key: &'static str, cli: Option<String>, file: Option<toml::Value>, default: usize| {
                let n = number(key, cli, file, default)?;
                if n == 0 {
                    Err(invalid(key, "must be at least 1"))
                } else {
                    Ok(n)
                }
            };
        let inference = InferenceConfig {
            aws_region: cli.aws_region.or(file.aws_region),
            sagemaker_endpoint_url: cli.sagemaker_endpoint_url.or(file.sagemaker_endpoint_url),
            comprehend_endpoint_url: cli.comprehend_endpoint_url.or(file.comprehend_endpoint_url),
            retry_mode: match cli
                .aws_retry_mode
                .or(file.aws_retry_mode)
                .as_deref()
                .unwrap_or("standard")
            {
                "standard" => RetryMode::Standard,
                "adaptive" => RetryMode::Adaptive,
                other => {
                    return Err(invalid(
                        "aws_retry_mode",
                        format!("`{other}` (expected standard or adaptive)"),
                    ))
                }
            },
            max_attempts: u32::try_from(positive(
                "aws_max_attempts",
                cli.aws_max_attempts,
                file.aws_max_attempts,
                3,
            )?)
            .map_err(|_| invalid("aws_max_attempts", "too large"))?,
            timeout: nonzero(
                "inference_timeout",
                duration(
                    "inference_timeout",
                    cli.inference_timeout,
                    file.inference_timeout,
                    "30s",
                )?,
            )?,
            chunk_rows: positive("chunk_rows", cli.chunk_rows, file.chunk_rows, 1000)?,
            chunks_in_flight: positive(
                "chunks_in_flight",
                cli.chunks_in_flight,
                file.chunks_in_flight,
                4,
            )?,
            chunk_bytes: {
                let n = number("chunk_bytes", cli.chunk_bytes, file.chunk_bytes, 4 << 20)?;
                if !(64 << 10..=1 << 30).contains(&n) {
                    return Err(invalid("chunk_bytes", "must be between 64KiB and 1GiB"));
                }
                n
            },
            default_batch_rows: positive(
                "default_batch_rows",
                cli.default_batch_rows,
                file.default_batch_rows,
                500,
            )?,
            max_concurrent_calls: positive(
                "max_concurrent_calls",
                cli.max_concurrent_calls,
                file.max_concurrent_calls,
                16,
            )?,
            max_concurrent_calls_per_endpoint: positive(
                "max_concurrent_calls_per_endpoint",
                cli.max_concurrent_calls_per_endpoint,
                file.max_concurrent_calls_per_endpoint,
                8,
            )?,
            comprehend_truncate: boolean(
                "comprehend_truncate",
                cli.comprehend_truncate,
                file.comprehend_truncate,
                false,
            )?,
            comprehend_backend: match cli
                .comprehend_backend
                .or(file.comprehend_backend)
                .as_deref()
                .unwrap_or("aws")
            {
                "aws" => SentimentBackendKind::Aws,
                "local" => SentimentBackendKind::Local,
                other => {
                    return Err(invalid(
                        "comprehend_backend",
                        format!("`{other}` (expected aws or local)"),
                    ))
                }
            },
            endpoints: match cli.endpoints {
                Some(list) => endpoint_list(&list)?,
                None => endpoint_tables(file.endpoints.unwrap_or_default())?,
            },
        };
        Ok(Config {
            listen,
            upstream,
            upstream_host,
            unix_socket_dir: cli
                .unix_socket_dir
                .or(file.unix_socket_dir)
                .map(PathBuf::from),
            admin_listen,
            tls_cert_file,
            tls_key_file,
            upstream_tls_mode,
            upstream_tls_ca_file: cli
                .upstream_tls_ca_file
                .or(file.upstream_tls_ca_file)
                .map(PathBuf::from),
            upstream_tls_server_name: cli
                .upstream_tls_server_name
                .or(file.upstream_tls_server_name),
            max_client_connections,
            handshake_timeout: nonzero(
                "handshake_timeout",
                duration(
                    "handshake_timeout",
                    cli.handshake_timeout,
                    file.handshake_timeout,
                    "30s",
                )?,
            )?,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            drain_timeout: duration(
                "drain_timeout",
                cli.drain_timeout,
                file.drain_timeout,
                "30s",
            )?,
            keepalive: boolean("tcp_keepalive", cli.tcp_keepalive, file.tcp_keepalive, true)?
                .then(|| -> Result<Keepalive, ConfigError> {
                    let seconds = |key, cli, file, default| {
                        let value = nonzero(key, duration(key, cli, file, default)?)?;
                        if value.as_secs() == 0 || value.as_secs() > 32_767 {
                            return Err(invalid(key, "must be between 1s and 32767s"));
                        }
                        Ok(value)
                    };
                    Ok(Keepalive {
                        idle: seconds("tcp_keepidle", cli.tcp_keepidle, file.tcp_keepidle, "60s")?,
                        interval: seconds(
                            "tcp_keepintvl",
                            cli.tcp_keepintvl,
                            file.tcp_keepintvl,
                            "10s",
                        )?,
                        count: match positive("tcp_keepcnt", cli.tcp_keepcnt, file.tcp_keepcnt, 6)?
                        {
                            n @ 1..=127 => n as u32,
                            _ => return Err(invalid("tcp_keepcnt", "must be between 1 and 127")),
                        },
                    })
                })
                .transpose()?,
            upstream_connect_timeout: nonzero(
                "upstream_connect_timeout",
                duration(
                    "upstream_connect_timeout",
                    cli.upstream_connect_timeout,
                    file.upstream_connect_timeout,
                    "10s",
                )?,
            )?,
            max_query_bytes,
            max_buffered_bytes,
            max_ml_memory,
            log_format,
            worker_threads: number("worker_threads", cli.worker_threads, file.worker_threads, 0)?,
            direct_relay: boolean("direct_relay", cli.direct_relay, file.direct_relay, true)?,
            relay_sched_batch: boolean(
                "relay_sched_batch",
                cli.relay_sched_batch,
                file.relay_sched_batch,
                true,
            )?,
            enrich_threads: number("enrich_threads", cli.enrich_threads, file.enrich_threads, 0)?,
            inference,
        })
    }
}

fn read_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: shown,
        message: e.to_string(),
    })
}

/// `NAME=onnx:MODEL[,NAME=onnx:MODEL...]` from the command line or environment.
fn endpoint_list(list: &str) -> Result<BTreeMap<String, LocalEndpoint>, ConfigError> {
    let mut endpoints = BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').map(|(name, spec)| {
            let (backend, model) = spec.split_once(':').unwrap_or((spec, ""));
            (name.trim(), backend.trim(), model.trim())
        });
        match parsed {
            Some((name, "onnx", model)) if !name.is_empty() && !model.is_empty() => {
                endpoints.insert(
                    name.to_owned(),
                    LocalEndpoint {
                        model: PathBuf::from(model),
                        output: None,
                    },
                );
            }
            Some((name, "sagemaker", _)) if !name.is_empty() => {}
            _ => {
                return Err(invalid(
                    "endpoints",
                    format!("`{entry}` (expected NAME=onnx:MODEL_FILE or NAME=sagemaker)"),
                ))
            }
        }
    }
    Ok(endpoints)
}

fn endpoint_tables(
    tables: BTreeMap<String, EndpointFile>,
) -> Result<BTreeMap<String, LocalEndpoint>, ConfigError> {
    let mut endpoints = BTreeMap::new();
    for (name, table) in tables {
        match (table.backend.as_str(), table.model) {
            ("onnx", Some(model)) => {
                endpoints.insert(
                    name,
                    LocalEndpoint {
                        model: PathBuf::from(model),
                        output: table.output,
                    },
                );
            }
            ("onnx", None) => {
                return Err(invalid(
                    "endpoints",
                    format!("[endpoints.{name}]: backend \"onnx\" needs `model` (a file path)"),
                ))
            }
            ("sagemaker", _) => {}
            (other, _) => {
                return Err(invalid(
                    "endpoints",
                    format!("[endpoints.{name}]: backend `{other}` (expected onnx or sagemaker)"),
                ))
            }
        }
    }
    Ok(endpoints)
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The host part of `host:port` (IPv6 literals in brackets), checking the port.
fn upstream_host(upstream: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        invalid(
            "upstream",
            format!("`{upstream}`: {why} (expected HOST:PORT)"),
        )
    };
    let (host, port) = upstream.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>().map_err(|_| bad("invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    Ok(host.to_owned())
}

fn number(
    key: &'static str,
    cli: Option<String>,
    file: Option<toml::Value>,
    default: usize,
) -> Result<usize, ConfigError> {
    let text = match (cli, file) {
        (Some(text), _) => text,
        (None, Some(toml::Value::Integer(n))) => n.to_string(),
        (None, Some(toml::Value::String(text))) => text,
        (None, Some(other)) => return Err(invalid(key, format!("`{other:?}` is not a number"))),
        (None, None) => return Ok(default),
    };
    parse_size(&text).ok_or_else(|| invalid(key, format!("`{text}` is not a non-negative number")))
}

/// `1048576`, `64KiB`, `16MiB`, `1GiB`.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: usize = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "kB" | "KB" => 1 << 10,
        "MiB" | "MB" => 1 << 20,
        "GiB" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn boolean(
    key: &'static str,
    cli: Option<String>,
    file: Option<toml::Value>,
    default: bool,
) -> Result<bool, ConfigError> {
    match (cli, file) {
        (Some(text), _) => match text.trim() {
            "true" | "on" | "1" => Ok(true),
            "false" | "off" | "0" => Ok(false),
            other => Err(invalid(key, format!("`{other}` (expected true or false)"))),
        },
        (None, Some(toml::Value::Boolean(b))) => Ok(b),
        (None, Some(other)) => Err(invalid(
            key,
            format!("`{other:?}` (expected true or false)"),
        )),
        (None, None) => Ok(default),
    }
}

fn duration(
    key: &'static str,
    cli: Option<String>,
    file: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = cli.or(file).unwrap_or_else(|| default.to_owned());
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| invalid(key, format!("`{text}`: {e} (expected e.g. 500ms, 30s, 5m)")))
}

fn nonzero(key: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
