//! The packets a client sends before the message flow (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage): `check_length` and `decode` on arbitrary bytes, checked
//! against what the bytes say, and StartupMessages built from arbitrary parameters decoded back.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgenrich::protocol::startup::{
    check_length, decode, StartupError, StartupPacket, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET, SSL_REQUEST_CODE,
};

fuzz_target!(|data: &[u8]| {
    raw(data);
    let mut u = Unstructured::new(data);
    if let Ok(params) = Vec::<(String, String)>::arbitrary(&mut u) {
        round_trip(params, u.arbitrary().unwrap_or(0));
    }
});

fn raw(data: &[u8]) {
    if let Some(word) = data.first_chunk::<4>() {
        let len = u32::from_be_bytes(*word);
        match check_length(len) {
            Ok(n) => {
                assert_eq!(n, len as usize);
                assert!((8..=MAX_STARTUP_PACKET).contains(&n));
            }
            Err(StartupError::BadLength(n)) => {
                assert_eq!(n, len as usize);
                assert!(!(8..=MAX_STARTUP_PACKET).contains(&n));
            }
            Err(other) => panic!("check_length gave {other:?}"),
        }
    }
    let raw = Bytes::copy_from_slice(data);
    let decoded = decode(raw.clone());
    if data.len() < 8 {
        assert_eq!(decoded, Err(StartupError::BadLength(data.len())));
        return;
    }
    let code = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let body = &data[8..];
    match decoded {
        Ok(StartupPacket::SslRequest) => assert_eq!(code, SSL_REQUEST_CODE),
        Ok(StartupPacket::GssEncRequest) => assert_eq!(code, GSSENC_REQUEST_CODE),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            assert_eq!(code, CANCEL_REQUEST_CODE);
            assert_eq!(
                pid,
                i32::from_be_bytes([body[0], body[1], body[2], body[3]])
            );
            assert_eq!(&secret[..], &body[4..]);
        }
        Ok(StartupPacket::Startup {
            major,
            minor,
            params,
            raw: kept,
        }) => {
            assert_eq!((major, minor), (3, code as u16));
            assert_eq!(code >> 16, 3);
            assert_eq!(kept, raw, "the packet is relayed unchanged");
            // Valid UTF-8 parameters encode back to the body.
            if std::str::from_utf8(body).is_ok() {
                assert_eq!(encode_params(&params), body);
            }
            assert!(params.iter().all(|(name, _)| !name.is_empty()));
        }
        Err(StartupError::BadLength(_)) => panic!("a packet of 8 bytes or more has a bad length"),
        Err(StartupError::UnsupportedProtocol { major, minor }) => {
            assert!(![SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE].contains(&code));
            assert_ne!(major, 3);
            assert_eq!((u32::from(major) << 16) | u32::from(minor), code);
        }
        Err(StartupError::Malformed(_)) => {
            assert!(code == CANCEL_REQUEST_CODE || code >> 16 == 3);
        }
    }
}

fn encode_params(params: &[(String, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

/// A StartupMessage of protocol 3.`minor` with these parameters decodes to them.
fn round_trip(params: Vec<(String, String)>, minor: u16) {
    let params: Vec<(String, String)> = params
        .into_iter()
        .map(|(n, v)| (n.replace('\0', ""), v.replace('\0', "")))
        .filter(|(n, _)| !n.is_empty())
        .collect();
    let body = encode_params(&params);
    let mut packet = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&((3u32 << 16) | u32::from(minor)).to_be_bytes());
    packet.extend_from_slice(&body);
    match decode(Bytes::from(packet)) {
        Ok(StartupPacket::Startup {
            major,
            minor: m,
            params: decoded,
            ..
        }) => {
            assert_eq!((major, m), (3, minor));
            assert_eq!(decoded, params);
        }
        other => panic!("a well-formed StartupMessage decoded to {other:?}"),
    }
}
