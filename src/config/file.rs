//! The TOML config file: the same keys as the command line, with TOML types, and the local
//! endpoint tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::values::invalid;
use super::LocalEndpoint;
use crate::error::ConfigError;

/// One `[endpoints.<name>]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointFile {
    pub(super) backend: String,
    pub(super) model: Option<String>,
    pub(super) output: Option<String>,
}

/// The config file: the same keys, with TOML types.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) unix_socket_dir: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) tls_cert_file: Option<String>,
    pub(super) tls_key_file: Option<String>,
    pub(super) upstream_tls_mode: Option<String>,
    pub(super) upstream_tls_ca_file: Option<String>,
    pub(super) upstream_tls_server_name: Option<String>,
    pub(super) max_client_connections: Option<toml::Value>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) tcp_keepalive: Option<toml::Value>,
    pub(super) tcp_keepidle: Option<String>,
    pub(super) tcp_keepintvl: Option<String>,
    pub(super) tcp_keepcnt: Option<toml::Value>,
    pub(super) upstream_connect_timeout: Option<String>,
    pub(super) max_query_bytes: Option<toml::Value>,
    pub(super) max_ml_statement_bytes: Option<toml::Value>,
    pub(super) max_buffered_bytes: Option<toml::Value>,
    pub(super) max_ml_memory: Option<toml::Value>,
    pub(super) max_prepared_bytes: Option<toml::Value>,
    pub(super) max_prepared_memory: Option<toml::Value>,
    pub(super) log_format: Option<String>,
    pub(super) worker_threads: Option<toml::Value>,
    pub(super) direct_relay: Option<toml::Value>,
    pub(super) relay_sched_batch: Option<toml::Value>,
    pub(super) enrich_threads: Option<toml::Value>,
    pub(super) aws_region: Option<String>,
    pub(super) sagemaker_endpoint_url: Option<String>,
    pub(super) comprehend_endpoint_url: Option<String>,
    pub(super) bedrock_endpoint_url: Option<String>,
    pub(super) aws_retry_mode: Option<String>,
    pub(super) aws_max_attempts: Option<toml::Value>,
    pub(super) inference_timeout: Option<String>,
    pub(super) chunk_rows: Option<toml::Value>,
    pub(super) chunks_in_flight: Option<toml::Value>,
    pub(super) chunk_bytes: Option<toml::Value>,
    pub(super) default_batch_rows: Option<toml::Value>,
    pub(super) max_concurrent_calls: Option<toml::Value>,
    pub(super) max_concurrent_calls_per_endpoint: Option<toml::Value>,
    pub(super) max_inference_rows: Option<toml::Value>,
    pub(super) inference_cache_bytes: Option<toml::Value>,
    pub(super) inference_cache_ttl: Option<String>,
    pub(super) inference_cache_redis: Option<toml::Value>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_key_prefix: Option<String>,
    pub(super) redis_timeout: Option<String>,
    pub(super) fleet_max_calls_per_endpoint: Option<toml::Value>,
    pub(super) rate_limits: Option<Vec<crate::enrich::rate::RateRule>>,
    pub(super) comprehend_truncate: Option<toml::Value>,
    pub(super) redact_aws_errors: Option<toml::Value>,
    pub(super) access: Option<Vec<crate::access::Rule>>,
    pub(super) comprehend_backend: Option<String>,
    pub(super) endpoints: Option<BTreeMap<String, EndpointFile>>,
}

pub(super) fn read_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
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
pub(super) fn endpoint_list(list: &str) -> Result<BTreeMap<String, LocalEndpoint>, ConfigError> {
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

pub(super) fn endpoint_tables(
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
