//! Parsing and checking single values (numbers, sizes, booleans, durations, addresses), with
//! errors naming their key.

use std::time::Duration;

use crate::error::ConfigError;

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The host part of `host:port` (IPv6 literals in brackets), checking the port.
pub(super) fn upstream_host(upstream: &str) -> Result<String, ConfigError> {
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

pub(super) fn number(
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
pub(super) fn parse_size(text: &str) -> Option<usize> {
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

pub(super) fn boolean(
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

pub(super) fn duration(
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

pub(super) fn nonzero(key: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(value)
    }
}

/// A flag, environment or file setting: (key, flag value, file value).
pub(super) type Setting = (&'static str, Option<String>, Option<toml::Value>);

/// A byte limit per unit (`one`, at least 1MiB, `default` when unset) and the limit of all units
/// together (`all`, at least `one`; by default 512MiB or `one`, whichever is more).
pub(super) fn byte_budgets(
    (key, cli, file): Setting,
    default: usize,
    (all_key, all_cli, all_file): Setting,
) -> Result<(usize, usize), ConfigError> {
    let one = number(key, cli, file, default)?;
    if one < 1 << 20 {
        return Err(invalid(key, "must be at least 1MiB"));
    }
    let all = number(all_key, all_cli, all_file, (512 << 20).max(one))?;
    if all < one {
        return Err(invalid(all_key, format!("must be at least {key}")));
    }
    Ok((one, all))
}
