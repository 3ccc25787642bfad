//! The Redis a fleet of sidecars shares: `redis_url`, `redis_key_prefix`, `redis_timeout`,
//! `inference_cache_redis`, `fleet_max_calls_per_endpoint`.

use std::time::Duration;

use super::values::{boolean, duration, invalid, nonzero, number};
use crate::enrich::fleet::FleetConfig;
use crate::error::ConfigError;

/// A key's value from the command line (or environment) and from the file.
pub(super) type Sources<T> = (Option<String>, Option<T>);

/// The fleet settings; None when nothing uses Redis. `cache_ttl` is `inference_cache_ttl`.
pub(super) fn fleet(
    url: Option<String>,
    key_prefix: Option<String>,
    timeout: Sources<String>,
    cache: Sources<toml::Value>,
    max_calls: Sources<toml::Value>,
    cache_ttl: Duration,
) -> Result<Option<FleetConfig>, ConfigError> {
    let cache = boolean("inference_cache_redis", cache.0, cache.1, false)?;
    let max_calls = number("fleet_max_calls_per_endpoint", max_calls.0, max_calls.1, 0)?;
    let key_prefix = key_prefix.unwrap_or_else(|| "pgenrich:".to_owned());
    let timeout = nonzero(
        "redis_timeout",
        duration("redis_timeout", timeout.0, timeout.1, "250ms")?,
    )?;
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        if cache {
            return Err(invalid("inference_cache_redis", "needs redis_url"));
        }
        if max_calls > 0 {
            return Err(invalid("fleet_max_calls_per_endpoint", "needs redis_url"));
        }
        return Ok(None);
    };
    // The message never repeats the URL: it may hold a password.
    crate::enrich::fleet::check_url(&url).map_err(|why| invalid("redis_url", why))?;
    if !cache && max_calls == 0 {
        return Err(invalid(
            "redis_url",
            "set, but neither inference_cache_redis nor fleet_max_calls_per_endpoint uses it",
        ));
    }
    Ok(Some(FleetConfig {
        url,
        key_prefix,
        timeout,
        cache,
        cache_ttl,
        max_calls_per_target: (max_calls > 0).then_some(max_calls),
    }))
}
