//! Wire-format helpers over pgwire's message codec. No I/O here.
//!
//! The relay never decodes messages it does not have to: [`header`] reads the five-byte frame
//! header so the session can hop from message to message. Messages pgenrich itself sends are built
//! with pgwire's types ([`ErrorMessage`], [`ready_for_query`], ...). The few client messages the
//! proxy reads (Query and Parse text, the startup packet) are read with bounds-checked helpers
//! here, because pgwire's decoders assume well-formed input and would panic on a truncated body.

pub mod startup;

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::Message;

use crate::error::SqlState;

/// Frontend message types the relay treats specially.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
}

/// Backend message types the relay treats specially.
pub mod backend {
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const AUTHENTICATION: u8 = b'R';
}

/// Length of a frame header: type byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// A malformed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength(pub i32);

/// Reads a frame header at the start of `buf`: `Some(Ok((type, length)))` where `length` counts the
/// length field itself but not the type byte, `None` if fewer than five bytes are available.
pub fn header(buf: &[u8]) -> Option<Result<(u8, usize), BadLength>> {
    let head: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    Some(if len < 4 {
        Err(BadLength(len))
    } else {
        Ok((head[0], len as usize))
    })
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// The SQL text of a Query (`Q`) or Parse (`P`) message body (bytes after the header), or `None`
/// if the body is malformed (PostgreSQL then reports the protocol violation itself).
pub fn statement_text(kind: u8, body: &[u8]) -> Option<&[u8]> {
    match kind {
        frontend::QUERY => split_cstr(body).map(|(text, _)| text),
        frontend::PARSE => {
            let (_name, rest) = split_cstr(body)?;
            split_cstr(rest).map(|(text, _)| text)
        }
        _ => None,
    }
}

/// Encodes one message with pgwire. Encoding into a `BytesMut` only fails for messages beyond
/// pgwire's size limits, which the fixed-size messages pgenrich builds never reach.
fn encode<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.message_length() + 1);
    if let Err(error) = message.encode(&mut buf) {
        tracing::error!(%error, "could not encode a protocol message");
    }
    buf.freeze()
}

/// One message: type byte, length, body.
pub fn message(kind: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.freeze()
}

/// Name of the prepared statement / portal that stand-in messages refer to. It never exists, so
/// the upstream answers with an error exactly where PostgreSQL would have rejected the original
/// message, and pgenrich swaps that error for its own.
pub const STANDIN_NAME: &str = "pgenrich.rejected";

/// A stand-in Query: `EXECUTE` of the statement that never exists.
pub fn standin_query() -> Bytes {
    let mut text = format!("EXECUTE \"{STANDIN_NAME}\"").into_bytes();
    text.push(0);
    message(frontend::QUERY, &text)
}

/// A stand-in Execute of the portal that never exists (extended protocol).
pub fn standin_execute() -> Bytes {
    let mut body = STANDIN_NAME.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&0i32.to_be_bytes());
    message(frontend::EXECUTE, &body)
}

/// A ReadyForQuery message with the given transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Bytes {
    let status = TransactionStatus::try_from(status).unwrap_or(TransactionStatus::Idle);
    encode(&ReadyForQuery::new(status))
}

/// Severity of an error pgenrich reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse built by pgenrich (upstream errors are relayed as the bytes that arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorMessage {
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> Self {
        ErrorMessage {
            severity,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The wire encoding: an ErrorResponse with severity (localised and not), SQLSTATE, message
    /// and the optional detail and hint.
    pub fn encode(&self) -> Bytes {
        let severity = self.severity.as_str().to_owned();
        let mut fields = vec![
            (b'S', severity.clone()),
            (b'V', severity),
            (b'C', self.code.code().to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        encode(&ErrorResponse::new(fields))
    }
}

/// A NoticeResponse of severity `severity` (`NOTICE`, `WARNING`) and SQLSTATE `code`.
pub fn notice(severity: &str, code: &str, message: impl Into<String>) -> Bytes {
    encode(&NoticeResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.into()),
    ]))
}

/// SASL mechanism that binds authentication to the TLS certificate of the server.
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// Rewrites an AuthenticationSASL body (`R`, code 10) without `SCRAM-SHA-256-PLUS`; `None` for
/// any other authentication message, which then passes unchanged.
///
/// Channel binding ties SCRAM to the certificate of the TLS connection the client sees. Through
/// pgenrich that is never the upstream's connection, so a bound exchange cannot succeed, and libpq
/// refuses outright when the mechanism is offered over a connection that is not TLS at all (the
/// usual sidecar set-up: plain on loopback, TLS to the database). Offering only plain SCRAM keeps
/// password authentication end-to-end between client and database.
pub fn without_channel_binding(body: &[u8]) -> Option<Bytes> {
    let (code, mut rest) = body.split_first_chunk::<4>()?;
    if u32::from_be_bytes(*code) != 10 {
        return None;
    }
    let mut kept = BytesMut::with_capacity(body.len());
    kept.extend_from_slice(b"R\0\0\0\0");
    kept.extend_from_slice(code);
    let mut stripped = false;
    while let Some((mechanism, tail)) = split_cstr(rest) {
        rest = tail;
        if mechanism.is_empty() {
            break;
        }
        if mechanism == SCRAM_PLUS {
            stripped = true;
            continue;
        }
        kept.extend_from_slice(mechanism);
        kept.extend_from_slice(b"\0");
    }
    if !stripped {
        return None;
    }
    kept.extend_from_slice(b"\0");
    let len = (kept.len() - 1) as u32;
    kept[1..5].copy_from_slice(&len.to_be_bytes());
    Some(kept.freeze())
}

/// Reads the SQLSTATE and message fields of an ErrorResponse body (after the header).
pub fn error_fields(body: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, tail)) = split_cstr(tail) else {
            break;
        };
        match field {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
        rest = tail;
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_type_and_length() {
        assert_eq!(header(b"Q\0\0\0\x09SEL"), Some(Ok((b'Q', 9))));
        assert_eq!(header(b"Q\0\0\0"), None);
        assert_eq!(header(b"Q\0\0\0\x03"), Some(Err(BadLength(3))));
        assert_eq!(header(b"Q\xff\xff\xff\xff"), Some(Err(BadLength(-1))));
    }

    #[test]
    fn statement_text_of_query_and_parse() {
        assert_eq!(statement_text(b'Q', b"SELECT 1\0"), Some(&b"SELECT 1"[..]));
        assert_eq!(
            statement_text(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
            Some(&b"SELECT $1"[..])
        );
        assert_eq!(statement_text(b'P', b"s1\0SELECT"), None);
        assert_eq!(statement_text(b'Q', b""), None);
    }

    #[test]
    fn error_message_round_trips_through_field_reader() {
        let bytes = ErrorMessage::error(SqlState::FeatureNotSupported, "no ML yet")
            .with_hint("later")
            .encode();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len());
        let (code, message) = error_fields(&bytes[5..]);
        assert_eq!(code, Some(&b"0A000"[..]));
        assert_eq!(message, Some(&b"no ML yet"[..]));
    }

    #[test]
    fn channel_binding_is_removed_from_sasl_offers_only() {
        let offer = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let rewritten = without_channel_binding(offer).expect("rewritten");
        assert_eq!(&rewritten[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(
            without_channel_binding(b"\0\0\0\x0aSCRAM-SHA-256\0\0"),
            None
        );
        assert_eq!(
            without_channel_binding(b"\0\0\0\x05salt"),
            None,
            "md5 passes"
        );
        assert_eq!(without_channel_binding(b"\0\0"), None);
    }

    #[test]
    fn ready_for_query_encodes_status() {
        assert_eq!(&ready_for_query(b'T')[..], b"Z\0\0\0\x05T");
    }
}
