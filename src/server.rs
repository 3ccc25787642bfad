//! Listeners, the accept loop, the connection limit and graceful drain.
//!
//! `Server::bind` opens the TCP listener (and the Unix socket if configured); `Server::run`
//! accepts until its shutdown token is cancelled, then stops accepting, lets sessions finish
//! (idle ones close at once with FATAL 57P01) and, after `drain_timeout`, terminates the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backends::Backends;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::enrich::{Executor, ExecutorConfig};
use crate::error::ConfigError;
use crate::session::direct::Loops;
use crate::session::{self, SessionContext};
use crate::stream::{ClientStream, Socket};
use crate::upstream::Upstream;

/// Time sessions get to write their goodbye after the drain timeout, before the server returns.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not listen on {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
    #[error("could not start the pass-through loop: {0}")]
    Loop(std::io::Error),
}

pub struct Server {
    tcp: TcpListener,
    admin: Option<(TcpListener, Arc<crate::metrics::admin::Admin>)>,
    unix: Option<(UnixListener, PathBuf)>,
    ctx: Arc<SessionContext>,
    limit: Arc<Semaphore>,
}

impl Server {
    /// Validates TLS material and opens the listeners. `listen` may use port 0. ML work runs on
    /// `ml_runtime`, apart from the sessions' relaying (`None`: on the caller's runtime).
    pub async fn bind(config: Config, ml_runtime: Option<Handle>) -> Result<Server, StartError> {
        let backends = crate::backends::aws(&config.inference, None).await;
        Self::open(config, backends, ml_runtime).await
    }

    /// Like [`Server::bind`] on the caller's runtime, with the remote inference backends given
    /// (tests, embedding); the embedded ones the configuration names still go in front of them.
    pub async fn bind_with(config: Config, backends: Backends) -> Result<Server, StartError> {
        Self::open(config, backends, None).await
    }

    async fn open(
        config: Config,
        backends: Backends,
        ml_runtime: Option<Handle>,
    ) -> Result<Server, StartError> {
        let backends = crate::backends::with_local(backends, &config.inference)?;
        let executor = Executor::new(
            backends,
            ExecutorConfig {
                default_batch_rows: config.inference.default_batch_rows,
                max_concurrent_calls: config.inference.max_concurrent_calls,
                max_concurrent_calls_per_endpoint: config
                    .inference
                    .max_concurrent_calls_per_endpoint,
                comprehend_truncate: config.inference.comprehend_truncate,
                redact_errors: config.inference.redact_aws_errors,
                max_inference_rows: config.inference.max_inference_rows,
                rate_limits: config.inference.rate_limits.clone(),
                cache_bytes: config.inference.cache_bytes,
                cache_ttl: config.inference.cache_ttl,
                fleet: config.inference.fleet.clone(),
                runtime: ml_runtime,
            },
        );
        let tls = crate::tls::server_config(&config)?.map(TlsAcceptor::from);
        let upstream = Upstream::new(&config)?;
        let tcp = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                what: config.listen.to_string(),
                source,
            })?;
        let port = tcp
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(config.listen.port());
        let unix = match &config.unix_socket_dir {
            Some(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                // A socket file left by a previous run that did not shut down cleanly.
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).map_err(|source| StartError::Listen {
                    what: path.display().to_string(),
                    source,
                })?;
                Some((listener, path))
            }
            None => None,
        };
        let limit = Arc::new(Semaphore::new(config.max_client_connections));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let direct = match config.direct_relay {
            true => Some(
                Loops::start(config.loop_threads(cpus), config.relay_sched_batch)
                    .map_err(StartError::Loop)?,
            ),
            false => None,
        };
        let memory = crate::enrich::budget::MemoryBudget::new(config.max_ml_memory);
        let prepared = crate::enrich::budget::MemoryBudget::plain(config.max_prepared_memory);
        let draining = CancellationToken::new();
        let admin = match config.admin_listen {
            Some(addr) => {
                let metrics = crate::metrics::install().map_err(|reason| StartError::Listen {
                    what: format!("{addr} (metrics recorder: {reason})"),
                    source: std::io::Error::other(reason.clone()),
                })?;
                let listener = crate::metrics::admin::bind(addr).await.map_err(|source| {
                    StartError::Listen {
                        what: format!("admin {addr}"),
                        source,
                    }
                })?;
                let probed = Arc::clone(&upstream);
                let probe: crate::metrics::admin::Probe = Arc::new(move || {
                    let upstream = Arc::clone(&probed);
                    Box::pin(async move { upstream.probe().await })
                });
                let (held, kept) = (Arc::clone(&memory), Arc::clone(&prepared));
                let sample = Box::new(move || {
                    crate::metrics::ml_bytes_held(
                        held.in_use(),
                        held.memos().in_use(),
                        kept.in_use(),
                    )
                });
                let admin =
                    crate::metrics::admin::Admin::new(metrics, sample, draining.clone(), probe);
                Some((listener, admin))
            }
            None => None,
        };
        Ok(Server {
            tcp,
            admin,
            unix,
            limit,
            ctx: Arc::new(SessionContext {
                config,
                upstream,
                tls,
                cancels: CancelRegistry::new(),
                executor,
                memory,
                prepared,
                draining,
                terminate: CancellationToken::new(),
                direct,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.ctx.config.listen)
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Accepts sessions until `shutdown` is cancelled, then drains.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let sessions = TaskTracker::new();
        // The admin endpoints answer until the drain is over (readiness says "draining").
        let admin_stop = CancellationToken::new();
        let admin = self.admin.take().map(|(listener, admin)| {
            tokio::spawn(crate::metrics::admin::serve(
                listener,
                admin,
                admin_stop.clone(),
            ))
        });
        info!(
            listen = %self.local_addr(),
            unix = ?self.unix.as_ref().map(|(_, p)| p.display().to_string()),
            upstream = %self.ctx.config.upstream,
            "pgenrich accepting connections"
        );
        let mut next_id: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                tcp = self.tcp.accept() => tcp.map(|(stream, peer)| {
                    // Small request/response messages dominate; Nagle would delay each one.
                    let _ = stream.set_nodelay(true);
                    if let Err(error) = crate::stream::set_keepalive(&stream, self.ctx.config.keepalive.as_ref()) {
                        warn!(%error, "cannot set TCP keepalive on a client connection");
                    }
                    (ClientStream::Plain(Socket::Tcp(stream)), peer.to_string())
                }),
                unix = accept_unix(&self.unix) => unix.map(|stream| (ClientStream::Plain(Socket::Unix(stream)), "unix".to_owned())),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            next_id += 1;
            let permit = Arc::clone(&self.limit).try_acquire_owned().ok();
            match permit {
                Some(_) => crate::metrics::session_opened(),
                None => crate::metrics::session_refused(),
            }
            let span = tracing::info_span!(
                "session",
                session_id = next_id,
                %peer,
                user = tracing::field::Empty,
                database = tracing::field::Empty,
            );
            let ctx = Arc::clone(&self.ctx);
            sessions.spawn(async move {
                session::run(ctx, stream, permit.is_some(), span).await;
                drop(permit);
            });
        }
        drop(self.tcp);
        if let Some((listener, path)) = self.unix {
            drop(listener);
            let _ = std::fs::remove_file(path);
        }
        sessions.close();
        info!(
            sessions = sessions.len(),
            "shutting down: draining sessions"
        );
        self.ctx.draining.cancel();
        let drain = self.ctx.config.drain_timeout;
        if tokio::time::timeout(drain, sessions.wait()).await.is_err() {
            warn!(
                sessions = sessions.len(),
                "drain timeout: terminating remaining sessions"
            );
            self.ctx.terminate.cancel();
            let _ = tokio::time::timeout(TERMINATE_GRACE, sessions.wait()).await;
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        info!("pgenrich stopped");
    }
}

async fn accept_unix(
    unix: &Option<(UnixListener, PathBuf)>,
) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some((listener, _)) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}
