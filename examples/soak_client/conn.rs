//! One session's connection: opening it (with retries while the proxy or the database is down),
//! killing it the way a crashed client goes away, and naming errors.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::rng::Rng;
use crate::Ctx;

pub struct Conn {
    pub client: Client,
    task: JoinHandle<()>,
    /// The class of the error that ended the connection, when it ended with one.
    fatal: Arc<Mutex<Option<String>>>,
    /// A request got a FATAL error: the server is closing the connection, even if tokio-postgres
    /// has not seen the end yet (reusing it would count one more error, `closed`).
    doomed: bool,
}

/// Why an operation failed.
pub enum Failure {
    Pg(tokio_postgres::Error),
    /// No answer within `--op-timeout`.
    Timeout,
}

/// An error's class: the SQLSTATE when the server (PostgreSQL or pgenrich) sent one, otherwise
/// what tokio-postgres saw: `closed` (the connection ended under the request), `io:<kind>`,
/// `connect:<kind>`, `unexpected-message`, `decode`, `other`.
pub fn classify(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.code().code().to_owned();
    }
    let io_kind = std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(|io| format!("{:?}", io.kind()));
    let text = error.to_string();
    if text.starts_with("connection closed") {
        "closed".into()
    } else if text.starts_with("error communicating with the server") {
        format!("io:{}", io_kind.unwrap_or_else(|| "other".into()))
    } else if text.starts_with("error connecting to server") {
        format!("connect:{}", io_kind.unwrap_or_else(|| "other".into()))
    } else if text.starts_with("timeout") {
        "timeout".into()
    } else if text.starts_with("unexpected message") {
        "unexpected-message".into()
    } else if text.starts_with("error deserializing") || text.starts_with("error parsing") {
        "decode".into()
    } else {
        "other".into()
    }
}

impl Conn {
    pub async fn open(conn_str: &str) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conn_str, NoTls).await?;
        let fatal = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&fatal);
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(classify(&e));
            }
        });
        Ok(Conn {
            client,
            task,
            fatal,
            doomed: false,
        })
    }

    /// Closes the socket at once, without Terminate, the way a killed client process goes: the
    /// connection's task (which owns the socket) is aborted.
    pub fn kill(self) {
        self.task.abort();
    }

    pub fn is_closed(&self) -> bool {
        self.doomed || self.client.is_closed()
    }

    /// The class of an operation's failure. A request that only saw the connection close is
    /// given the error that closed it (e.g. a FATAL 57P01 that arrived while it waited).
    pub async fn classify(&mut self, failure: &Failure) -> String {
        let class = match failure {
            Failure::Timeout => return "timeout".into(),
            Failure::Pg(e) => {
                let fatal = e
                    .as_db_error()
                    .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
                self.doomed |= fatal;
                classify(e)
            }
        };
        if class != "closed" {
            return class;
        }
        if !self.task.is_finished() {
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut self.task).await;
        }
        let fatal = self
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        fatal.unwrap_or(class)
    }
}

/// Runs one request of an operation under the run's operation timeout.
pub async fn timed<T>(
    ctx: &Ctx,
    request: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(ctx.op_timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::Pg(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

/// Opens a connection, retrying with backoff (20 ms doubling to 1 s, jittered) while the proxy
/// or the database refuses; every refusal is counted as `connect_error.<role>.<class>`. `None`
/// once the run's deadline has passed.
pub async fn connect(ctx: &Ctx, role: &str, rng: &mut Rng) -> Option<Conn> {
    let mut backoff = Duration::from_millis(20);
    loop {
        if Instant::now() >= ctx.deadline {
            return None;
        }
        match tokio::time::timeout(ctx.op_timeout, Conn::open(&ctx.conn_str)).await {
            Ok(Ok(conn)) => {
                ctx.stats.inc(&format!("connects.{role}"));
                return Some(conn);
            }
            Ok(Err(e)) => ctx
                .stats
                .inc(&format!("connect_error.{role}.{}", classify(&e))),
            Err(_) => ctx.stats.inc(&format!("connect_error.{role}.timeout")),
        }
        tokio::time::sleep(backoff / 2 + rng.upto(backoff / 2)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
