//! The byte streams a session runs over: a client on TCP, a Unix socket or TLS, and an upstream
//! on TCP or TLS. Enums rather than trait objects keep the relay's reads and writes statically
//! dispatched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

macro_rules! delegate_io {
    ($name:ident { $($variant:ident),* }) => {
        impl AsyncRead for $name {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_read(cx, buf),)* }
            }
        }
        impl AsyncWrite for $name {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_write(cx, buf),)* }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)* }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($name::$variant(s) => s.is_write_vectored(),)* }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_flush(cx),)* }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_shutdown(cx),)* }
            }
        }
    };
}

/// A client connection after SSL negotiation.
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

delegate_io!(ClientStream { Tcp, Unix, Tls });

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

/// A connection to the upstream database after SSL negotiation.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

delegate_io!(UpstreamStream { Tcp, Tls });
