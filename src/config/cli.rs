//! The command line (and, through clap, the `PGENRICH_*` environment): every setting as text,
//! parsed and checked with the file's values in [`super::Config::load`].

use std::path::PathBuf;

use clap::Parser;

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
    /// Longest Query/Parse text calling an ML function that pgenrich plans (parsing costs a few
    /// hundred bytes of memory per byte of text); longer ones get 54000 [default: 256KiB].
    #[arg(long, env = "PGENRICH_MAX_ML_STATEMENT_BYTES", value_name = "BYTES")]
    pub max_ml_statement_bytes: Option<String>,
    /// Most base-row bytes one ML statement that cannot stream (grouping, sorting, …) holds in
    /// memory; more gets 54000 [default: 256MiB].
    #[arg(long, env = "PGENRICH_MAX_BUFFERED_BYTES", value_name = "BYTES")]
    pub max_buffered_bytes: Option<String>,
    /// Most base-row bytes all ML statements together hold; at least max_buffered_bytes
    /// [default: 512MiB].
    #[arg(long, env = "PGENRICH_MAX_ML_MEMORY", value_name = "BYTES")]
    pub max_ml_memory: Option<String>,
    /// Most bytes one session's ML prepared statements, portals and cursors hold; a Parse, Bind
    /// or DECLARE past it gets 53200 [default: 64MiB].
    #[arg(long, env = "PGENRICH_MAX_PREPARED_BYTES", value_name = "BYTES")]
    pub max_prepared_bytes: Option<String>,
    /// Most bytes those of all sessions together hold; at least max_prepared_bytes
    /// [default: 512MiB].
    #[arg(long, env = "PGENRICH_MAX_PREPARED_MEMORY", value_name = "BYTES")]
    pub max_prepared_memory: Option<String>,
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
    /// Bedrock Runtime endpoint URL [default: AWS_ENDPOINT_URL_BEDROCK_RUNTIME or the regional endpoint].
    #[arg(long, env = "PGENRICH_BEDROCK_ENDPOINT_URL", value_name = "URL")]
    pub bedrock_endpoint_url: Option<String>,
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
    /// Most rows one statement may send to inference; more fails it with 54000; 0 for no cap
    /// [default: 0].
    #[arg(long, env = "PGENRICH_MAX_INFERENCE_ROWS", value_name = "N")]
    pub max_inference_rows: Option<String>,
    /// Bytes of inference results kept across statements (e.g. 64MiB); 0 turns the cache off
    /// [default: 0].
    #[arg(long, env = "PGENRICH_INFERENCE_CACHE_BYTES", value_name = "SIZE")]
    pub inference_cache_bytes: Option<String>,
    /// How long a cached inference result is used [default: 1h].
    #[arg(long, env = "PGENRICH_INFERENCE_CACHE_TTL", value_name = "DURATION")]
    pub inference_cache_ttl: Option<String>,
    /// Keep inference results in Redis too (redis_url), shared by every sidecar using it:
    /// true or false [default: false].
    #[arg(long, env = "PGENRICH_INFERENCE_CACHE_REDIS", value_name = "BOOL")]
    pub inference_cache_redis: Option<String>,
    /// The Redis a fleet of sidecars shares for inference_cache_redis and
    /// fleet_max_calls_per_endpoint: redis://[USER:PASSWORD@]HOST[:PORT][/DB] or rediss://…
    /// (TLS) [default: none].
    #[arg(
        long,
        env = "PGENRICH_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Prefix of the keys pgenrich writes in Redis [default: pgenrich:].
    #[arg(long, env = "PGENRICH_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Longest wait for one Redis operation; past it pgenrich goes on without Redis (a cache
    /// miss; the call under this sidecar's own limits) [default: 250ms].
    #[arg(long, env = "PGENRICH_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,
    /// Inference calls in flight at once per endpoint / language over every sidecar sharing
    /// redis_url; 0 for no such limit [default: 0].
    #[arg(long, env = "PGENRICH_FLEET_MAX_CALLS_PER_ENDPOINT", value_name = "N")]
    pub fleet_max_calls_per_endpoint: Option<String>,
    /// Cut Comprehend documents over 5,000 bytes instead of failing: true or false [default: false].
    #[arg(long, env = "PGENRICH_COMPREHEND_TRUNCATE", value_name = "BOOL")]
    pub comprehend_truncate: Option<String>,
    /// Remove ARNs and AWS account ids from inference errors sent to clients (the log keeps the
    /// full text) [default: true].
    #[arg(long, env = "PGENRICH_REDACT_AWS_ERRORS", value_name = "BOOL")]
    pub redact_aws_errors: Option<String>,
    /// What serves aws_comprehend.detect_sentiment: aws (Amazon Comprehend) or local (the
    /// embedded VADER model) [default: aws].
    #[arg(long, env = "PGENRICH_COMPREHEND_BACKEND", value_name = "BACKEND")]
    pub comprehend_backend: Option<String>,
    /// Endpoints served by local ONNX models, as NAME=onnx:MODEL_FILE[,...]; other names go to
    /// SageMaker. Replaces the config file's [endpoints.*] tables [default: none].
    #[arg(long, env = "PGENRICH_ENDPOINTS", value_name = "LIST")]
    pub endpoints: Option<String>,
}
