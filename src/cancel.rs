//! Routing of CancelRequests. Clients receive a key minted by pgenrich (never the upstream's);
//! a cancel request carrying it is forwarded, with the upstream's own key, to the server address
//! the session is connected to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Where a session's queries run, for cancelling them.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Wakes the session so it stops ML work in progress.
    pub session: Arc<tokio::sync::Notify>,
    pub upstream_addr: SocketAddr,
    pub upstream_pid: i32,
    pub upstream_secret: Bytes,
}

#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, (Bytes, CancelTarget)>>,
}

impl CancelRegistry {
    pub fn new() -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry::default())
    }

    /// Mints a fresh client-facing key for `target`: a process id unique among live sessions and
    /// a random secret as long as the upstream's. The guard removes it when the session ends.
    pub fn register(
        self: &Arc<Self>,
        target: CancelTarget,
    ) -> Option<(CancelKeyGuard, i32, Bytes)> {
        let mut secret = vec![0u8; target.upstream_secret.len().max(4)];
        getrandom::fill(&mut secret).ok()?;
        let secret = Bytes::from(secret);
        let mut sessions = self.sessions.lock().ok()?;
        let pid = loop {
            let mut raw = [0u8; 4];
            getrandom::fill(&mut raw).ok()?;
            // Positive, like real process ids, so clients that print them are not confused.
            let pid = (i32::from_be_bytes(raw) & 0x7fff_ffff).max(1);
            if !sessions.contains_key(&pid) {
                break pid;
            }
        };
        sessions.insert(pid, (secret.clone(), target));
        Some((
            CancelKeyGuard {
                registry: Arc::clone(self),
                pid,
            },
            pid,
            secret,
        ))
    }

    /// The target for a client's cancel key, if the key is valid.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let sessions = self.sessions.lock().ok()?;
        let (expected, target) = sessions.get(&pid)?;
        constant_time_eq(expected, secret).then(|| target.clone())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Removes a session's key when the session ends.
pub struct CancelKeyGuard {
    registry: Arc<CancelRegistry>,
    pid: i32,
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            sessions.remove(&self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            session: Arc::new(tokio::sync::Notify::new()),
            upstream_addr: "127.0.0.1:5432".parse().expect("addr"),
            upstream_pid: 42,
            upstream_secret: Bytes::from_static(b"\x01\x02\x03\x04"),
        }
    }

    #[test]
    fn keys_route_only_with_the_right_secret_and_only_while_live() {
        let registry = CancelRegistry::new();
        let (guard, pid, secret) = registry.register(target()).expect("register");
        assert_eq!(secret.len(), 4);
        assert_ne!(
            &secret[..],
            b"\x01\x02\x03\x04",
            "the upstream secret is never handed out"
        );
        assert_eq!(
            registry.lookup(pid, &secret).map(|t| t.upstream_pid),
            Some(42)
        );
        assert!(registry.lookup(pid, b"\0\0\0\0").is_none() || &secret[..] == b"\0\0\0\0");
        assert!(registry.lookup(pid, &secret[..3]).is_none());
        drop(guard);
        assert!(registry.lookup(pid, &secret).is_none());
    }
}
