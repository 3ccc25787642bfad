//! Typed configuration: defaults, then the TOML file, then `PGENRICH_*` environment variables,
//! then command-line flags (each later source wins). Every setting has the same name in all
//! three places (`max_client_connections` ⇄ `PGENRICH_MAX_CLIENT_CONNECTIONS` ⇄
//! `--max-client-connections`). Values are validated once, at start-up, and an invalid one stops
//! pgenrich with a message naming its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;

mod cli;
mod file;
mod redis;
mod values;

pub use cli::Cli;
use file::{endpoint_list, endpoint_tables, read_file, FileConfig};
use values::{boolean, byte_budgets, duration, invalid, nonzero, number, upstream_host};

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
    pub bedrock_endpoint_url: Option<String>,
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
    /// Most rows one statement may send to inference (None: no cap).
    pub max_inference_rows: Option<u64>,
    /// `[[rate_limits]]`: rows and calls per second per role.
    pub rate_limits: Vec<crate::enrich::rate::RateRule>,
    /// The result cache across statements: byte budget (0: off) and entry lifetime.
    pub cache_bytes: usize,
    pub cache_ttl: Duration,
    /// The Redis a fleet of sidecars shares (results, calls in flight); None: not used.
    pub fleet: Option<crate::enrich::fleet::FleetConfig>,
    pub comprehend_truncate: bool,
    pub redact_aws_errors: bool,
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
    /// Longest Query/Parse text calling an ML function that pgenrich tokenizes and plans.
    pub max_ml_statement_bytes: usize,
    /// Base-row bytes a non-streaming ML statement may hold.
    pub max_buffered_bytes: usize,
    /// Base-row bytes all ML statements together may hold.
    pub max_ml_memory: usize,
    /// Bytes one session's ML prepared statements, portals and cursors may hold.
    pub max_prepared_bytes: usize,
    /// Bytes those of all sessions together may hold.
    pub max_prepared_memory: usize,
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
    /// `[[access]]` rules: which roles may call which functions, endpoints and languages.
    pub access: crate::access::Rules,
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
        let max_ml_statement_bytes = number(
            "max_ml_statement_bytes",
            cli.max_ml_statement_bytes,
            file.max_ml_statement_bytes,
            256 << 10,
        )?;
        if max_ml_statement_bytes < 1024 {
            return Err(invalid("max_ml_statement_bytes", "must be at least 1KiB"));
        }
        let (max_buffered_bytes, max_ml_memory) = byte_budgets(
            (
                "max_buffered_bytes",
                cli.max_buffered_bytes,
                file.max_buffered_bytes,
            ),
            256 << 20,
            ("max_ml_memory", cli.max_ml_memory, file.max_ml_memory),
        )?;
        let (max_prepared_bytes, max_prepared_memory) = byte_budgets(
            (
                "max_prepared_bytes",
                cli.max_prepared_bytes,
                file.max_prepared_bytes,
            ),
            64 << 20,
            (
                "max_prepared_memory",
                cli.max_prepared_memory,
                file.max_prepared_memory,
            ),
        )?;
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
        let cache_ttl = nonzero(
            "inference_cache_ttl",
            duration(
                "inference_cache_ttl",
                cli.inference_cache_ttl,
                file.inference_cache_ttl,
                "1h",
            )?,
        )?;
        let fleet = redis::fleet(
            cli.redis_url.or(file.redis_url),
            cli.redis_key_prefix.or(file.redis_key_prefix),
            (cli.redis_timeout, file.redis_timeout),
            (cli.inference_cache_redis, file.inference_cache_redis),
            (
                cli.fleet_max_calls_per_endpoint,
                file.fleet_max_calls_per_endpoint,
            ),
            cache_ttl,
        )?;
        let inference = InferenceConfig {
            aws_region: cli.aws_region.or(file.aws_region),
            sagemaker_endpoint_url: cli.sagemaker_endpoint_url.or(file.sagemaker_endpoint_url),
            comprehend_endpoint_url: cli.comprehend_endpoint_url.or(file.comprehend_endpoint_url),
            bedrock_endpoint_url: cli.bedrock_endpoint_url.or(file.bedrock_endpoint_url),
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
            rate_limits: {
                let rules = file.rate_limits.unwrap_or_default();
                crate::enrich::rate::RateLimits::new(rules.clone())
                    .map_err(|e| invalid("rate_limits", e))?;
                rules
            },
            cache_bytes: number(
                "inference_cache_bytes",
                cli.inference_cache_bytes,
                file.inference_cache_bytes,
                0,
            )?,
            cache_ttl,
            fleet,
            max_inference_rows: match number(
                "max_inference_rows",
                cli.max_inference_rows,
                file.max_inference_rows,
                0,
            )? {
                0 => None,
                n => Some(n as u64),
            },
            comprehend_truncate: boolean(
                "comprehend_truncate",
                cli.comprehend_truncate,
                file.comprehend_truncate,
                false,
            )?,
            redact_aws_errors: boolean(
                "redact_aws_errors",
                cli.redact_aws_errors,
                file.redact_aws_errors,
                true,
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
            max_ml_statement_bytes,
            max_buffered_bytes,
            max_ml_memory,
            max_prepared_bytes,
            max_prepared_memory,
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
            access: crate::access::Rules::new(file.access).map_err(|e| invalid("access", e))?,
        })
    }
}

#[cfg(test)]
mod tests;
