//! Errors per layer and the one table that gives each a SQLSTATE.
//!
//! [`SqlState`] lists every code pgenrich itself sends; [`SessionError::to_client`] is the single
//! place that turns a session failure into what the client sees (an ERROR or FATAL with a code),
//! matched exhaustively so that a new variant does not compile without one. Errors that come from
//! the upstream database are never rebuilt: their bytes pass through unchanged.

use std::io;

use crate::protocol::ErrorMessage;

/// The SQLSTATE codes pgenrich sends on its own behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 0A000 — an ML statement (until ML evaluation lands), an unsupported protocol version.
    FeatureNotSupported,
    /// 08P01 — malformed frames from the client.
    ProtocolViolation,
    /// 08006 — the upstream could not be reached or went away.
    ConnectionFailure,
    /// 53300 — over `max_client_connections`.
    TooManyConnections,
    /// 54000 — a statement text longer than `max_query_bytes`.
    ProgramLimitExceeded,
    /// 57P01 — pgenrich is shutting down.
    AdminShutdown,
    /// 57P05 — a session idle for longer than `idle_timeout`.
    IdleSessionTimeout,
    /// 57014 — the handshake did not finish within `handshake_timeout`.
    QueryCanceled,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::FeatureNotSupported => "0A000",
            SqlState::ProtocolViolation => "08P01",
            SqlState::ConnectionFailure => "08006",
            SqlState::TooManyConnections => "53300",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::AdminShutdown => "57P01",
            SqlState::IdleSessionTimeout => "57P05",
            SqlState::QueryCanceled => "57014",
        }
    }
}

/// An invalid setting; the message names the configuration key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("missing required setting `{key}` (flag --{flag}, environment PGENRICH_{env}, or `{key}` in the config file)")]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("could not read config file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
}

/// Why a client session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(#[source] io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(#[source] io::Error),
    #[error("could not connect to upstream {upstream}: {reason}")]
    UpstreamConnect { upstream: String, reason: String },
    #[error("invalid startup packet: {0}")]
    BadStartup(String),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid message length {0}")]
    BadMessageLength(i32),
    #[error("client TLS handshake failed: {0}")]
    ClientTls(#[source] io::Error),
    #[error("too many client connections")]
    TooManyConnections,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("idle timeout")]
    IdleTimeout,
    #[error("shutting down")]
    Shutdown,
}

impl SessionError {
    /// What the client is told before its connection closes, if anything can still be sent.
    pub fn to_client(&self) -> Option<ErrorMessage> {
        use SqlState::*;
        fn fatal(code: SqlState, message: impl Into<String>) -> ErrorMessage {
            ErrorMessage::fatal(code, message)
        }
        match self {
            // The client's socket is gone or its TLS failed: nothing to tell it.
            SessionError::ClientIo(_) | SessionError::ClientTls(_) => None,
            SessionError::UpstreamIo(_) => Some(fatal(
                ConnectionFailure,
                "the connection to the upstream database was lost",
            )),
            SessionError::UpstreamConnect { reason, .. } => Some(
                fatal(
                    ConnectionFailure,
                    "pgenrich could not connect to the upstream database",
                )
                .with_detail(reason.clone()),
            ),
            SessionError::BadStartup(reason) => Some(fatal(ProtocolViolation, reason.clone())),
            SessionError::UnsupportedProtocol { major, minor } => Some(fatal(
                FeatureNotSupported,
                format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
                ),
            )),
            SessionError::BadMessageLength(len) => Some(fatal(
                ProtocolViolation,
                format!("invalid message length {len}"),
            )),
            SessionError::TooManyConnections => {
                Some(fatal(TooManyConnections, "sorry, too many clients already"))
            }
            SessionError::HandshakeTimeout => Some(fatal(
                QueryCanceled,
                "canceling authentication due to timeout",
            )),
            SessionError::IdleTimeout => Some(fatal(
                IdleSessionTimeout,
                "terminating connection due to idle-session timeout",
            )),
            SessionError::Shutdown => Some(fatal(
                AdminShutdown,
                "terminating connection due to administrator command",
            )),
        }
    }
}
