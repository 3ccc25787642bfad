//! The packets a client may send before the regular message flow: SSLRequest, GSSENCRequest,
//! CancelRequest and StartupMessage. They have no type byte, only a length and a code.

use bytes::Bytes;

use super::split_cstr;

/// PostgreSQL refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// One decoded pre-session packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: Bytes,
    },
    /// A StartupMessage; `raw` is the whole packet, relayed to the upstream unchanged.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
        raw: Bytes,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    BadLength(usize),
    UnsupportedProtocol { major: u16, minor: u16 },
    Malformed(&'static str),
}

/// Validates the length word of a startup packet (which counts itself).
pub fn check_length(len: u32) -> Result<usize, StartupError> {
    let len = len as usize;
    if (8..=MAX_STARTUP_PACKET).contains(&len) {
        Ok(len)
    } else {
        Err(StartupError::BadLength(len))
    }
}

/// Decodes a whole startup packet (length word included).
pub fn decode(raw: Bytes) -> Result<StartupPacket, StartupError> {
    if raw.len() < 8 {
        return Err(StartupError::BadLength(raw.len()));
    }
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let body = &raw[8..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if body.len() < 8 {
                return Err(StartupError::Malformed("cancel request too short"));
            }
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            Ok(StartupPacket::Cancel {
                pid,
                secret: raw.slice(12..),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let params = parameters(body).ok_or(StartupError::Malformed(
                "invalid startup packet layout: expected terminator as last byte",
            ))?;
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
                raw,
            })
        }
    }
}

/// Name/value pairs of a StartupMessage body, ending with an empty name.
fn parameters(mut body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        let (name, rest) = split_cstr(body)?;
        if name.is_empty() {
            return rest.is_empty().then_some(params);
        }
        let (value, rest) = split_cstr(rest)?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        body = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Bytes {
        let mut raw = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&code.to_be_bytes());
        raw.extend_from_slice(body);
        Bytes::from(raw)
    }

    #[test]
    fn decodes_each_packet_kind() {
        assert_eq!(
            decode(packet(SSL_REQUEST_CODE, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode(packet(GSSENC_REQUEST_CODE, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        let cancel = decode(packet(CANCEL_REQUEST_CODE, b"\0\0\0\x07abcd")).expect("cancel");
        assert_eq!(
            cancel,
            StartupPacket::Cancel {
                pid: 7,
                secret: Bytes::from_static(b"abcd")
            }
        );
        let raw = packet(196_608, b"user\0alice\0database\0db\0\0");
        match decode(raw.clone()).expect("startup") {
            StartupPacket::Startup {
                major,
                minor,
                params,
                raw: r,
            } => {
                assert_eq!((major, minor), (3, 0));
                assert_eq!(params[0], ("user".into(), "alice".into()));
                assert_eq!(params[1], ("database".into(), "db".into()));
                assert_eq!(r, raw);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_other_protocols_and_bad_layouts() {
        assert_eq!(
            decode(packet(0x0002_0000, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert!(matches!(
            decode(packet(196_608, b"user\0alice")),
            Err(StartupError::Malformed(_))
        ));
        assert!(matches!(
            decode(packet(CANCEL_REQUEST_CODE, b"\0\0")),
            Err(StartupError::Malformed(_))
        ));
        assert_eq!(check_length(4), Err(StartupError::BadLength(4)));
        assert_eq!(check_length(20_000), Err(StartupError::BadLength(20_000)));
        assert_eq!(check_length(8), Ok(8));
    }
}
