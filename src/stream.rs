//! The byte streams a session runs over: a client on TCP, a Unix socket or TLS, and an upstream
//! on TCP or TLS. Enums rather than trait objects keep the relay's reads and writes statically
//! dispatched.
//!
//! A connection's socket (under the TLS layer, if any) can also be *direct*: taken out of the
//! tokio reactor and driven by the pass-through loop ([`crate::session::direct`]) from its own
//! epoll events. Its reads and writes are non-blocking system calls; `Pending` means "until the
//! loop's next event for it", and the task context is not used.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::io::poll_read_buf;

/// Implements tokio's I/O traits for an enum by delegating to each variant's stream.
macro_rules! delegate_io {
    ([$($generics:tt)*] $name:ty { $($variant:ident),* }) => {
        impl<$($generics)*> AsyncRead for $name {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)* }
            }
        }
        impl<$($generics)*> AsyncWrite for $name {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)* }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)* }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $(Self::$variant(s) => s.is_write_vectored(),)* }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)* }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)* }
            }
        }
    };
}

/// Turns TCP keepalive on for `socket` with `settings` (`None`: leaves it off). A peer that
/// vanished without closing (a crashed client host, a dropped NAT mapping) is then noticed after
/// about `idle + interval × count`, and its session ends instead of holding its backend.
pub fn set_keepalive(
    socket: &impl std::os::fd::AsFd,
    settings: Option<&crate::config::Keepalive>,
) -> io::Result<()> {
    let Some(settings) = settings else {
        return Ok(());
    };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(settings.idle)
        .with_interval(settings.interval)
        .with_retries(settings.count);
    socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive)
}

/// A connection's socket, in the tokio reactor or with the pass-through loop. TLS streams wrap
/// one too, so that a TLS session can change hands without its TLS state.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// With the pass-through loop.
    Direct(DirectSocket),
    /// Between owners, for an instant: all I/O fails.
    Detached(Detached),
}

delegate_io!([] Socket {
    Tcp,
    Unix,
    Direct,
    Detached
});

impl Socket {
    /// Takes the socket out of the tokio reactor for the pass-through loop.
    pub fn detach(&mut self) -> io::Result<()> {
        let plain = match std::mem::replace(self, Socket::Detached(Detached)) {
            Socket::Tcp(tcp) => Plain::Tcp(tcp.into_std()?),
            Socket::Unix(unix) => Plain::Unix(unix.into_std()?),
            Socket::Direct(direct) => direct.io,
            Socket::Detached(_) => return Err(detached()),
        };
        *self = Socket::Direct(DirectSocket::new(plain));
        Ok(())
    }

    /// Puts the socket back from the pass-through loop into the tokio reactor (in a runtime).
    pub fn attach(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Socket::Detached(Detached)) {
            Socket::Direct(direct) => match direct.io {
                Plain::Tcp(tcp) => Socket::Tcp(TcpStream::from_std(tcp)?),
                Plain::Unix(unix) => Socket::Unix(UnixStream::from_std(unix)?),
            },
            other => other,
        };
        Ok(())
    }
}

/// A connection after SSL negotiation: its socket, or TLS over it.
pub enum Stream<T> {
    Plain(Socket),
    Tls(Box<T>),
}

/// A client connection.
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<Socket>>;
/// A connection to the upstream database.
pub type UpstreamStream = Stream<tokio_rustls::client::TlsStream<Socket>>;

/// A TLS layer over a [`Socket`].
pub trait TlsOver: AsyncRead + AsyncWrite + Unpin {
    fn socket(&mut self) -> &mut Socket;
}

impl TlsOver for tokio_rustls::server::TlsStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut().0
    }
}

impl TlsOver for tokio_rustls::client::TlsStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut().0
    }
}

impl<T: TlsOver> Stream<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The socket under the TLS layer, if any.
    pub fn socket(&mut self) -> &mut Socket {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.socket(),
        }
    }

    /// Reads into the spare capacity of `buf`.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(Socket::Direct(direct)) => direct.poll_read_into(buf),
            other => poll_read_buf(Pin::new(other), cx, buf),
        }
    }
}

delegate_io!([T: TlsOver] Stream<T> { Plain, Tls });

/// A plain socket outside the tokio reactor (non-blocking, as tokio left it).
pub enum Plain {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl std::os::fd::AsFd for Plain {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Plain::Tcp(tcp) => tcp.as_fd(),
            Plain::Unix(unix) => unix.as_fd(),
        }
    }
}

impl Plain {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(tcp) => (&*tcp).write(buf),
            Plain::Unix(unix) => (&*unix).write(buf),
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Plain::Tcp(tcp) => (&*tcp).write_vectored(bufs),
            Plain::Unix(unix) => (&*unix).write_vectored(bufs),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(tcp) => (&*tcp).read(buf),
            Plain::Unix(unix) => (&*unix).read(buf),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Plain::Tcp(tcp) => tcp.shutdown(std::net::Shutdown::Write),
            Plain::Unix(unix) => unix.shutdown(std::net::Shutdown::Write),
        }
    }
}

/// A socket driven by the pass-through loop: its readiness comes from the loop's edge-triggered
/// events, as tokio's reactor keeps it for its own sockets, so that a socket known to be drained
/// is not asked again (no failed `recv` per wake-up).
pub struct DirectSocket {
    io: Plain,
    readable: bool,
    writable: bool,
    /// The peer hung up or the socket failed: reads go on until they say so.
    hung_up: bool,
}

impl DirectSocket {
    fn new(io: Plain) -> DirectSocket {
        // Whatever happened while nobody watched is found out by trying.
        DirectSocket {
            io,
            readable: true,
            writable: true,
            hung_up: false,
        }
    }

    pub fn plain(&self) -> &Plain {
        &self.io
    }

    /// Records an event of the loop's poll.
    pub fn on_event(&mut self, readable: bool, writable: bool, hung_up: bool) {
        self.readable |= readable || hung_up;
        self.writable |= writable || hung_up;
        self.hung_up |= hung_up;
    }

    /// Reads into the spare capacity of `buf` without zeroing it.
    fn poll_read_into(&mut self, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let room = buf.capacity() - buf.len();
        let n = ready!(self.poll_recv(room, |io| {
            socket2::SockRef::from(io).recv(buf.spare_capacity_mut())
        }))?;
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
        #[allow(unsafe_code)]
        unsafe {
            buf.advance_mut(n);
        }
        Poll::Ready(Ok(n))
    }

    /// One read of at most `room` bytes by `op`, keeping the readiness flag: a short read means
    /// the socket is drained (new data brings a new event).
    fn poll_recv(
        &mut self,
        room: usize,
        mut op: impl FnMut(&Plain) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if !self.readable {
            return Poll::Pending;
        }
        loop {
            match op(&self.io) {
                Ok(n) => {
                    if n < room && !self.hung_up {
                        self.readable = false;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = self.hung_up;
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_with<T>(&mut self, op: impl Fn(&Plain) -> io::Result<T>) -> Poll<io::Result<T>> {
        if !self.writable {
            return Poll::Pending;
        }
        loop {
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = self.hung_up;
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for DirectSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The TLS layer's reads (into its own, initialised buffer); the relay's plain reads go
        // through `poll_read_into`, which does not zero the buffer.
        let room = buf.remaining();
        let n = ready!(self
            .get_mut()
            .poll_recv(room, |io| io.read(buf.initialize_unfilled())))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DirectSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(|io| io.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(|io| io.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.shutdown())
    }
}

/// The placeholder while a socket changes hands.
pub struct Detached;

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is being handed over")
}

impl AsyncRead for Detached {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(detached()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(detached()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(detached()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(detached()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream as StdUnix;

    fn direct_pair() -> (DirectSocket, StdUnix) {
        let (ours, theirs) = StdUnix::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        (DirectSocket::new(Plain::Unix(ours)), theirs)
    }

    /// Readiness is kept as tokio keeps it: a short read means drained, and nothing is read
    /// again until the loop reports an event; a hang-up keeps reads going until they return 0.
    #[test]
    fn direct_socket_reads_only_after_events() {
        let (mut socket, mut peer) = direct_pair();
        let mut buf = BytesMut::with_capacity(64);
        assert!(
            socket.poll_read_into(&mut buf).is_pending(),
            "nothing sent yet"
        );
        peer.write_all(b"hello").expect("send");
        assert!(
            socket.poll_read_into(&mut buf).is_pending(),
            "not readable until an event says so"
        );
        socket.on_event(true, false, false);
        assert!(matches!(
            socket.poll_read_into(&mut buf),
            Poll::Ready(Ok(5))
        ));
        assert_eq!(&buf[..], b"hello");
        peer.write_all(b"more").expect("send");
        assert!(
            socket.poll_read_into(&mut buf).is_pending(),
            "a short read drained the socket"
        );
        socket.on_event(true, false, false);
        assert!(matches!(
            socket.poll_read_into(&mut buf),
            Poll::Ready(Ok(4))
        ));
        drop(peer);
        socket.on_event(false, false, true);
        assert!(matches!(
            socket.poll_read_into(&mut buf),
            Poll::Ready(Ok(0))
        ));
        assert!(matches!(
            socket.poll_read_into(&mut buf),
            Poll::Ready(Ok(0))
        ));
        assert_eq!(&buf[..], b"hellomore");
    }

    /// A full socket buffer makes writes Pending until a writable event.
    #[test]
    fn direct_socket_writes_until_the_peer_is_full() {
        let (mut socket, mut peer) = direct_pair();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0;
        while let Poll::Ready(n) = Pin::new(&mut socket).poll_write(&mut cx, &chunk) {
            written += n.expect("write");
            assert!(written < 64 << 20, "the socket buffer never filled");
        }
        assert!(
            Pin::new(&mut socket).poll_write(&mut cx, b"x").is_pending(),
            "stays Pending without an event"
        );
        let mut sink = vec![0u8; written];
        peer.read_exact(&mut sink).expect("drain");
        socket.on_event(false, true, false);
        assert!(matches!(
            Pin::new(&mut socket).poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
    }
}

#[cfg(test)]
mod keepalive_tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Keepalive;

    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let settings = Keepalive {
            idle: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            count: 5,
        };
        let socket = socket2::SockRef::from(&client);
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"));
        set_keepalive(&client, None).expect("off");
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"));
        set_keepalive(&client, Some(&settings)).expect("on");
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(socket.tcp_keepalive_time().expect("idle"), settings.idle);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            settings.interval
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("count"), 5);
    }
}
