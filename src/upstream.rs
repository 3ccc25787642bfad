//! Connections to the upstream database: resolution, TCP, SSL negotiation per the configured mode,
//! and cancel requests sent to the exact server address a session is connected to (a cluster
//! endpoint may resolve to several hosts; a cancel must reach the one running the query).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, UpstreamTlsMode};
use crate::error::{ConfigError, SessionError};
use crate::protocol::startup::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};
use crate::stream::{Socket, UpstreamStream};

/// How to reach the upstream; cheap to share between sessions.
pub struct Upstream {
    address: String,
    mode: UpstreamTlsMode,
    connector: Option<TlsConnector>,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
    keepalive: Option<crate::config::Keepalive>,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Arc<Upstream>, ConfigError> {
        Ok(Arc::new(Upstream {
            address: config.upstream.clone(),
            mode: config.upstream_tls_mode,
            connector: crate::tls::upstream_config(config)?.map(TlsConnector::from),
            server_name: crate::tls::upstream_server_name(config)?,
            connect_timeout: config.upstream_connect_timeout,
            keepalive: config.keepalive,
        }))
    }

    fn connect_error(&self, reason: impl ToString) -> SessionError {
        SessionError::UpstreamConnect {
            upstream: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    /// Whether the database accepts TCP connections (readiness): no startup, no authentication.
    pub async fn probe(&self) -> Result<(), String> {
        let timeout = self.connect_timeout.min(Duration::from_secs(2));
        match tokio::time::timeout(timeout, TcpStream::connect(self.address.as_str())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("upstream {}: {e}", self.address)),
            Err(_) => Err(format!(
                "upstream {}: no connection within {timeout:?}",
                self.address
            )),
        }
    }

    /// Opens a session connection: resolves the name, connects to the first address that
    /// answers, and negotiates TLS. Returns the stream and the address it reached.
    pub async fn connect(&self) -> Result<(UpstreamStream, SocketAddr), SessionError> {
        tokio::time::timeout(self.connect_timeout, self.connect_inner(None))
            .await
            .map_err(|_| {
                self.connect_error(format!("timed out after {:?}", self.connect_timeout))
            })?
    }

    async fn connect_inner(
        &self,
        at: Option<SocketAddr>,
    ) -> Result<(UpstreamStream, SocketAddr), SessionError> {
        let tcp = match at {
            Some(addr) => TcpStream::connect(addr)
                .await
                .map_err(|e| self.connect_error(e))?,
            None => TcpStream::connect(self.address.as_str())
                .await
                .map_err(|e| self.connect_error(e))?,
        };
        let peer = tcp.peer_addr().map_err(|e| self.connect_error(e))?;
        // Small request/response messages dominate; Nagle would add latency to every one.
        tcp.set_nodelay(true).map_err(|e| self.connect_error(e))?;
        crate::stream::set_keepalive(&tcp, self.keepalive.as_ref())
            .map_err(|e| self.connect_error(e))?;
        let stream = self.negotiate_tls(tcp).await?;
        Ok((stream, peer))
    }

    async fn negotiate_tls(&self, mut tcp: TcpStream) -> Result<UpstreamStream, SessionError> {
        let Some(connector) = &self.connector else {
            return Ok(UpstreamStream::Plain(Socket::Tcp(tcp)));
        };
        let mut request = BytesMut::with_capacity(8);
        request.put_u32(8);
        request.put_u32(SSL_REQUEST_CODE);
        tcp.write_all(&request)
            .await
            .map_err(|e| self.connect_error(e))?;
        let answer = tcp.read_u8().await.map_err(|e| self.connect_error(e))?;
        match answer {
            b'S' => {
                let tls = connector
                    .connect(self.server_name.clone(), Socket::Tcp(tcp))
                    .await
                    .map_err(|e| self.connect_error(format!("TLS handshake: {e}")))?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
            b'N' if self.mode == UpstreamTlsMode::Prefer => {
                Ok(UpstreamStream::Plain(Socket::Tcp(tcp)))
            }
            b'N' => Err(self.connect_error("the server does not support TLS")),
            other => {
                Err(self.connect_error(format!("unexpected answer {other:#04x} to SSLRequest")))
            }
        }
    }

    /// Sends a CancelRequest for upstream backend `pid`/`secret` to `addr`. PostgreSQL never
    /// answers a cancel request, so success means "delivered".
    pub async fn cancel(
        &self,
        addr: SocketAddr,
        pid: i32,
        secret: &[u8],
    ) -> Result<(), SessionError> {
        let attempt = async {
            let (mut stream, _) = self.connect_inner(Some(addr)).await?;
            let mut packet = BytesMut::with_capacity(12 + secret.len());
            packet.put_u32((12 + secret.len()) as u32);
            packet.put_u32(CANCEL_REQUEST_CODE);
            packet.put_i32(pid);
            packet.put_slice(secret);
            stream
                .write_all(&packet)
                .await
                .map_err(SessionError::UpstreamIo)?;
            stream.flush().await.map_err(SessionError::UpstreamIo)?;
            // Wait for the server to close, so the cancel is processed before we return.
            let mut sink = [0u8; 64];
            let _ = stream.read(&mut sink).await;
            Ok(())
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| self.connect_error("cancel request timed out"))?
    }
}
