//! A throw-away Redis server (the distribution's `redis-server`), started once per test binary
//! on two free loopback ports — plain, and TLS with the certificate of the test PostgreSQL
//! (`localhost`, signed by the test CA) — without persistence; the watchdog stops it with this
//! process. Tests share it and keep apart by key prefix ([`Redis::prefix`]).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub struct Redis {
    pub port: u16,
    pub tls_port: u16,
}

/// The shared Redis server, started on first use.
pub fn redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(start_redis)
}

fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let candidate = PathBuf::from(dir).join("redis-server");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "redis-server not found. Install it with `apt-get install -y redis-server` (or point \
         REDIS_SERVER at the binary)."
    )
}

// The server and its watchdog outlive every test by design (see spawn_postgres).
#[allow(clippy::zombie_processes)]
fn start_redis() -> Redis {
    let dir = tempfile::Builder::new()
        .prefix("pgenrich-redis-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let (port, tls_port) = (super::free_port(), super::free_port());
    let tls = &super::postgres().tls;
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_owned();
    let log = std::fs::File::create(dir.join("redis.log")).expect("log");
    let child = Command::new(server_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--dir", dir.to_str().expect("utf8")])
        .args([
            "--tls-port",
            &tls_port.to_string(),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--tls-cert-file", &path(&tls.server_cert)])
        .args(["--tls-key-file", &path(&tls.server_key)])
        .args(["--tls-ca-cert-file", &path(&tls.ca_cert)])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start redis-server");
    super::watchdog_with(child.id(), "TERM", &dir);
    let redis = Redis { port, tls_port };
    for _ in 0..100 {
        if redis.ping() {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    panic!("redis-server did not answer PING; its log:\n{log}");
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A key prefix no other test uses.
    pub fn prefix(test: &str) -> String {
        format!("pgenrich-test:{test}:{}:", std::process::id())
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// A connection for checks and set-up.
    pub async fn connect(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }
}
