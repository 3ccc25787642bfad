//! Bodies of the extended-protocol requests pgenrich sends under its own names.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::frontend;
use crate::session::rows::message;

/// A Parse body declaring the parameter types `types`.
pub fn parse_body(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + sql.len() + 4 + 4 * types.len());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for oid in types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    body
}

/// A name as a cstring.
pub fn named_body(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body
}

/// A Describe or Close body.
pub fn named(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&named_body(name));
    body
}

/// An Execute body: `rows` more rows of `portal` (0: all).
pub fn execute_body(portal: &str, rows: usize) -> Vec<u8> {
    let mut body = named_body(portal);
    body.extend_from_slice(&(rows.min(i32::MAX as usize) as i32).to_be_bytes());
    body
}

/// `requests` followed by a Flush, so that the upstream answers them now.
pub fn flushed(requests: Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(requests.len() + 5);
    out.put_slice(&requests);
    out.put_slice(&message(b'H', &[]));
    out.freeze()
}

/// Execute `portal` for `rows` more rows (0: all), then Flush.
pub fn execute(portal: &str, rows: usize) -> Bytes {
    flushed(message(frontend::EXECUTE, &execute_body(portal, rows)))
}

/// The stand-in Execute that makes the upstream fail (and skip to Sync) where pgenrich failed.
pub fn standin() -> Bytes {
    crate::protocol::standin_execute()
}
