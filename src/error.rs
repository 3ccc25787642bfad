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
    /// 57014 — the handshake did not finish within `handshake_timeout`; an inference call timed
    /// out.
    QueryCanceled,
    /// 38000 — the inference service or model failed, or answered something unusable.
    ExternalRoutineException,
    /// 53000 — the inference service kept throttling past the retry budget.
    InsufficientResources,
    /// 58000 — the inference service could not be reached.
    SystemError,
    /// 42501 — the AWS credentials were refused.
    InsufficientPrivilege,
    /// 22023 — an ML argument is invalid (language, batch size, endpoint name).
    InvalidParameterValue,
    /// 22001 — a document exceeds the service's size limit.
    StringDataRightTruncation,
    /// 42883 — an ML function or argument list that does not exist.
    UndefinedFunction,
    /// 42703 — a field of an ML result that does not exist.
    UndefinedColumn,
    /// 42601 — an ML statement pgenrich cannot parse.
    SyntaxError,
    /// 42809 — a field selection from a result that has no fields.
    WrongObjectType,
    /// XX000 — the upstream answered pgenrich's own catalog query unexpectedly, or pgenrich
    /// itself failed (a contained panic).
    InternalError,
    /// 25P02 — a statement pgenrich answers itself, in a failed transaction block.
    InFailedSqlTransaction,
    /// 25006 — an ML statement that writes, in a READ ONLY transaction or on a standby.
    ReadOnlySqlTransaction,
    /// 25P01 — a prepared DECLARE of a cursor without HOLD, outside a transaction block.
    NoActiveSqlTransaction,
    /// 53200 — the process's memory for ML statements (`max_ml_memory`) is used up, or that of
    /// ML prepared statements (`max_prepared_bytes`, `max_prepared_memory`).
    OutOfMemory,
    /// 34000 — Describe or Execute of an ML portal that no longer exists.
    InvalidCursorName,
    /// 26000 — Describe of an ML statement that no longer exists.
    InvalidSqlStatementName,
    /// 42P05 — a Parse naming an ML statement that exists.
    DuplicatePreparedStatement,
    /// 54001 — a statement nested too deeply to inspect (PostgreSQL's "stack depth limit
    /// exceeded").
    StatementTooComplex,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::FeatureNotSupported => "0A000",
            SqlState::InFailedSqlTransaction => "25P02",
            SqlState::ReadOnlySqlTransaction => "25006",
            SqlState::NoActiveSqlTransaction => "25P01",
            SqlState::ProtocolViolation => "08P01",
            SqlState::ConnectionFailure => "08006",
            SqlState::TooManyConnections => "53300",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::AdminShutdown => "57P01",
            SqlState::IdleSessionTimeout => "57P05",
            SqlState::QueryCanceled => "57014",
            SqlState::ExternalRoutineException => "38000",
            SqlState::InsufficientResources => "53000",
            SqlState::SystemError => "58000",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::InvalidParameterValue => "22023",
            SqlState::StringDataRightTruncation => "22001",
            SqlState::UndefinedFunction => "42883",
            SqlState::UndefinedColumn => "42703",
            SqlState::SyntaxError => "42601",
            SqlState::WrongObjectType => "42809",
            SqlState::InternalError => "XX000",
            SqlState::InvalidCursorName => "34000",
            SqlState::OutOfMemory => "53200",
            SqlState::InvalidSqlStatementName => "26000",
            SqlState::DuplicatePreparedStatement => "42P05",
            SqlState::StatementTooComplex => "54001",
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
    /// pgenrich failed while serving the session (a panic, contained to it).
    #[error("internal error: {0}")]
    Internal(String),
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
            SessionError::Internal(what) => Some(
                fatal(
                    InternalError,
                    "pgenrich failed while serving this session; other sessions go on",
                )
                .with_detail(what.clone()),
            ),
        }
    }
}

/// The message of a caught panic, for logs and the client's error detail.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// A failed inference call or invalid ML input, before the statement context is added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    #[error("the service returned {code}: {message}")]
    Service {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("the service kept throttling requests after all retries")]
    Throttled { request_id: Option<String> },
    #[error("the call timed out")]
    Timeout,
    #[error("the service could not be reached: {message}")]
    Transport { message: String },
    #[error("the credentials were refused ({code}): {message}")]
    AccessDenied {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("unsupported language: {message}")]
    UnsupportedLanguage {
        message: String,
        request_id: Option<String>,
    },
    #[error("a document exceeds the service's limit of {limit} bytes")]
    DocumentTooLarge { limit: usize },
    #[error("one model input of {bytes} bytes exceeds the {limit}-byte payload limit")]
    PayloadTooLarge { bytes: usize, limit: usize },
    #[error("document {index} of the batch failed with {code}: {message}")]
    Item {
        index: i32,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("malformed response: {message}")]
    Malformed {
        message: String,
        request_id: Option<String>,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// The session's role may not call the function on this endpoint or language
    /// (`[[access]]` rules).
    #[error("permission denied for function {function}")]
    Denied { function: String, role: String },
    /// The statement would send more rows to inference than `max_inference_rows`.
    #[error("the statement would send more than max_inference_rows = {cap} rows to inference")]
    RowCap { cap: u64 },
}

impl InferenceError {
    /// The one SQLSTATE table for inference failures.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            InferenceError::Service { .. }
            | InferenceError::Item { .. }
            | InferenceError::Malformed { .. } => SqlState::ExternalRoutineException,
            InferenceError::Throttled { .. } => SqlState::InsufficientResources,
            InferenceError::Timeout => SqlState::QueryCanceled,
            InferenceError::Transport { .. } => SqlState::SystemError,
            InferenceError::AccessDenied { .. } | InferenceError::Denied { .. } => {
                SqlState::InsufficientPrivilege
            }
            InferenceError::UnsupportedLanguage { .. } | InferenceError::InvalidArgument(_) => {
                SqlState::InvalidParameterValue
            }
            InferenceError::DocumentTooLarge { .. } => SqlState::StringDataRightTruncation,
            InferenceError::PayloadTooLarge { .. } | InferenceError::RowCap { .. } => {
                SqlState::ProgramLimitExceeded
            }
        }
    }

    /// The same error with ARNs and account ids removed from the service's texts (see
    /// [`redact_aws`]), for the client.
    pub fn redacted(self) -> InferenceError {
        use InferenceError::*;
        match self {
            Service {
                code,
                message,
                request_id,
            } => Service {
                code,
                message: redact_aws(&message),
                request_id,
            },
            AccessDenied {
                code,
                message,
                request_id,
            } => AccessDenied {
                code,
                message: redact_aws(&message),
                request_id,
            },
            UnsupportedLanguage {
                message,
                request_id,
            } => UnsupportedLanguage {
                message: redact_aws(&message),
                request_id,
            },
            Item {
                index,
                code,
                message,
                request_id,
            } => Item {
                index,
                code,
                message: redact_aws(&message),
                request_id,
            },
            Malformed {
                message,
                request_id,
            } => Malformed {
                message: redact_aws(&message),
                request_id,
            },
            Transport { message } => Transport {
                message: redact_aws(&message),
            },
            other => other,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            InferenceError::Service { request_id, .. }
            | InferenceError::Throttled { request_id }
            | InferenceError::AccessDenied { request_id, .. }
            | InferenceError::UnsupportedLanguage { request_id, .. }
            | InferenceError::Item { request_id, .. }
            | InferenceError::Malformed { request_id, .. } => request_id.as_deref(),
            InferenceError::Timeout
            | InferenceError::Transport { .. }
            | InferenceError::DocumentTooLarge { .. }
            | InferenceError::PayloadTooLarge { .. }
            | InferenceError::InvalidArgument(_)
            | InferenceError::Denied { .. }
            | InferenceError::RowCap { .. } => None,
        }
    }

    /// The ErrorResponse for a statement whose call of `function` (on `target`, an endpoint name
    /// or language) failed: the function and target in the message, the AWS request id in DETAIL.
    pub fn to_client(&self, function: &str, target: &str) -> ErrorMessage {
        if let InferenceError::Denied { function, role } = self {
            let what = if function == crate::access::INVOKE_ENDPOINT {
                "endpoint"
            } else {
                "language"
            };
            return ErrorMessage::error(
                self.sqlstate(),
                format!("permission denied for function {function} on {what} \"{target}\""),
            )
            .with_hint(format!(
                "pgenrich's [[access]] rules do not let role \"{role}\" call it."
            ));
        }
        if let InferenceError::RowCap { .. } = self {
            return ErrorMessage::error(self.sqlstate(), self.to_string()).with_hint(
                "Narrow the statement (WHERE, LIMIT), or raise max_inference_rows; nothing was \
                 sent for the rows past the cap.",
            );
        }
        let mut message = ErrorMessage::error(
            self.sqlstate(),
            format!("{function} failed for \"{target}\": {self}"),
        );
        if let Some(id) = self.request_id() {
            message = message.with_detail(format!("AWS request id: {id}"));
        }
        let hint = match self {
            InferenceError::Throttled { .. } => {
                Some("Lower max_rows_per_batch or pgenrich's concurrency limits, or raise aws_max_attempts.")
            }
            InferenceError::DocumentTooLarge { .. } => {
                Some("Shorten the text, or set comprehend_truncate = true to cut documents at 5,000 bytes.")
            }
            InferenceError::AccessDenied { .. } => {
                Some("Check the AWS credentials pgenrich runs with (environment, profile, IRSA or instance role).")
            }
            _ => None,
        };
        match hint {
            Some(hint) => message.with_hint(hint),
            None => message,
        }
    }
}

/// `text` with ARNs (`arn:…` up to the next blank, quote or bracket) and 12-digit AWS account
/// ids replaced by `arn:(redacted)` and `(account)`: service messages name the caller's role,
/// the endpoint's ARN and the account, which are not the database client's business.
pub fn redact_aws(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let starts_word = |i: usize| i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with("arn:") && starts_word(i) {
            let mut end = rest
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | '(' | ')' | '<' | '>')
                })
                .unwrap_or(rest.len());
            // A sentence's full stop is not part of the ARN.
            if rest[..end].ends_with('.') {
                end -= 1;
            }
            out.push_str("arn:(redacted)");
            i += end;
            continue;
        }
        if bytes[i].is_ascii_digit() && starts_word(i) {
            let run = rest.bytes().take_while(u8::is_ascii_digit).count();
            let alone = bytes
                .get(i + run)
                .is_none_or(|b| !b.is_ascii_alphanumeric());
            if run == 12 && alone {
                out.push_str("(account)");
            } else {
                out.push_str(&rest[..run]);
            }
            i += run;
            continue;
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_account_ids_are_redacted_and_nothing_else() {
        let text = "User: arn:aws:sts::123456789012:assumed-role/app/i-0abc is not authorized \
                    to perform: sagemaker:InvokeEndpoint on resource: \
                    arn:aws:sagemaker:eu-west-1:123456789012:endpoint/fraud. Account 123456789012, \
                    request 1234567890123 id 12345678901 (arn:aws-cn:s3:::b)";
        assert_eq!(
            redact_aws(text),
            "User: arn:(redacted) is not authorized \
                    to perform: sagemaker:InvokeEndpoint on resource: \
                    arn:(redacted). Account (account), \
                    request 1234567890123 id 12345678901 (arn:(redacted))"
        );
        assert_eq!(
            redact_aws("barn:x and café 000000000000"),
            "barn:x and café (account)"
        );
        assert_eq!(redact_aws(""), "");
    }

    #[test]
    fn redacted_errors_keep_their_code_and_request_id() {
        let error = InferenceError::AccessDenied {
            code: "AccessDeniedException".into(),
            message: "arn:aws:iam::123456789012:role/x may not call this".into(),
            request_id: Some("r-1".into()),
        };
        let redacted = error.clone().redacted();
        assert_eq!(redacted.sqlstate(), error.sqlstate());
        assert_eq!(redacted.request_id(), Some("r-1"));
        let shown = redacted
            .to_client("aws_sagemaker.invoke_endpoint", "fraud")
            .message;
        assert!(!shown.contains("123456789012"), "{shown}");
        assert!(
            shown.contains("arn:(redacted) may not call this"),
            "{shown}"
        );
        assert!(shown.contains("AccessDeniedException"), "{shown}");
    }
}
