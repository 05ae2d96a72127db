//! The listening socket: how accepted connections are set up before HTTP sees them.
//!
//! What a chat server needs that poem's plain TCP listener does not do cheaply:
//!
//! - **Room for a reconnect storm.** When a node drains, its clients all reconnect
//!   through the load balancer within a second or two. Rust's and tokio's listeners ask
//!   the kernel for an accept queue of 128; past it, the kernel drops the handshake and
//!   the client retries a second later. The queue here is [`LISTEN_BACKLOG`].
//! - **No Nagle.** A chat server writes many small frames; with Nagle's algorithm on, a
//!   frame written while an earlier one is unacknowledged waits for the client's delayed
//!   ACK (40 ms on Linux). Every connection gets `TCP_NODELAY`.
//! - **An idle limit that costs one timer.** A connection on which nothing is read or
//!   written for [`IdleTimeout`]'s limit (a half-open client, one that never finishes its
//!   request) fails with `TimedOut`, so it cannot hold a slot forever. Poem's own idle
//!   timeout spawns a task per connection and takes a lock on every read and write; here
//!   activity is one clock read, and the single timer is re-armed only when it fires.
//!   WebSocket sessions stay well inside the limit: the server pings every 25 s.
//! - **A limit on slow requests (slowloris).** The idle limit alone lets a client hold a
//!   connection forever by trickling a request one byte at a time. Until a connection
//!   is upgraded to a WebSocket, a client still sending [`IdleTimeout`]'s request limit
//!   after it began a request the server has not answered is cut off: a request head or
//!   body that takes that long is an attack or a link too slow to chat on. Only reads
//!   that bring bytes are judged, so a handler that takes long to answer a request that
//!   arrived whole is never cut off.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    http::uri::Scheme,
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
    time::{Instant, Sleep},
};

/// Accepts TCP connections with Nagle's algorithm off, an idle limit and a request
/// limit.
pub struct ChatAcceptor {
    inner: TcpAcceptor,
    idle_limit: Duration,
    request_limit: Duration,
}

/// Connections the kernel completes and holds for the accept loop (capped by the
/// kernel's `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with an accept queue of [`LISTEN_BACKLOG`] (also what
/// `natter-bench baseline-server` listens with, so the ceiling gets the same queue).
pub fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted node rebinds at once, whatever its old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl ChatAcceptor {
    /// Listens on `addr` (see [`listen`]).
    pub fn bind(
        addr: SocketAddr,
        idle_limit: Duration,
        request_limit: Duration,
    ) -> io::Result<Self> {
        let inner = TcpAcceptor::from_tokio(listen(addr)?)?;
        Ok(Self {
            inner,
            idle_limit,
            request_limit,
        })
    }
}

impl Acceptor for ChatAcceptor {
    type Io = IdleTimeout<TcpStream>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, scheme) = self.inner.accept().await?;
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot turn Nagle off for a connection");
        }
        Ok((
            IdleTimeout::new(stream, self.idle_limit).with_request_limit(self.request_limit),
            local,
            remote,
            scheme,
        ))
    }
}

/// An IO stream that fails with `TimedOut` when it has been waiting to read or write
/// and nothing went either way for `limit`, or when (before a WebSocket upgrade) the
/// client is still sending `request_limit` after it began a request that has not been
/// answered.
pub struct IdleTimeout<T> {
    io: T,
    limit: Duration,
    last_activity: Instant,
    /// Fires at the earliest moment the limit could have been reached; checked then
    /// against `last_activity` and re-armed if there was activity since.
    timer: Pin<Box<Sleep>>,
    request_limit: Option<Duration>,
    /// When the client began sending what the server has not yet answered.
    unanswered_since: Option<Instant>,
    /// The server answered `101 Switching Protocols`: WebSocket frames follow, which
    /// the session bounds itself (frame size, pings), so `request_limit` no longer
    /// applies.
    upgraded: bool,
}

/// The start of the response that hands a connection over to the WebSocket session.
const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

impl<T> IdleTimeout<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            limit,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
            request_limit: None,
            unanswered_since: None,
            upgraded: false,
        }
    }

    pub fn with_request_limit(mut self, limit: Duration) -> Self {
        self.request_limit = Some(limit);
        self
    }

    /// Bytes arrived: `Err(TimedOut)` if they continue a request begun longer than
    /// `request_limit` ago.
    fn on_bytes_read(&mut self) -> io::Result<()> {
        let Some(limit) = self.request_limit.filter(|_| !self.upgraded) else {
            return Ok(());
        };
        let now = Instant::now();
        match self.unanswered_since {
            None => self.unanswered_since = Some(now),
            Some(since) if now.duration_since(since) > limit => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request sent too slowly",
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Bytes were written: whatever the client sent is being answered.
    fn on_bytes_written(&mut self, first: &[u8]) {
        self.unanswered_since = None;
        if first.starts_with(SWITCHING_PROTOCOLS) {
            self.upgraded = true;
        }
    }

    /// Called when the inner stream would block: `Ready(Err)` once the limit passed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.limit;
            if Instant::now() >= deadline {
                return Poll::Ready(io::ErrorKind::TimedOut.into());
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Passes an inner result through, noting activity or checking the limit.
    fn track<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.on_bytes_read()?;
        }
        this.track(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.on_bytes_written(buf);
        }
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            this.on_bytes_written(first);
        }
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_burst_of_connects_far_past_the_default_backlog_completes_before_any_accept() {
        // Past a full accept queue the kernel drops handshakes, so with the default of
        // 128 these connects would wait for retransmits that never find room.
        const BURST: usize = 600;
        let acceptor = ChatAcceptor::bind("127.0.0.1:0".parse().unwrap(), LIMIT, LIMIT).unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let connects = futures_util::future::try_join_all(
            (0..BURST)
                .map(|_| tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))),
        )
        .await
        .expect("every connect completes while nothing accepts");
        assert!(connects.iter().all(Result::is_ok));
        drop(acceptor);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_traffic_times_out_at_the_limit() {
        let (server, _client) = duplex(64);
        let mut server = IdleTimeout::new(server, LIMIT);
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_moves_the_limit() {
        let (server, mut client) = duplex(64);
        let mut server = IdleTimeout::new(server, LIMIT);
        let started = Instant::now();
        let traffic = async {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_secs(50)).await;
            client
        };
        let mut buf = [0u8; 8];
        // The read is answered at 50 s; the client goes quiet until 100 s.
        let (read, _client) = tokio::join!(server.read(&mut buf), traffic);
        assert_eq!(read.unwrap(), 1);
        // Writing is activity too: at 150 s, so the limit now runs from there.
        tokio::time::sleep(Duration::from_secs(50)).await;
        server.write_all(b"y").await.unwrap();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(150) + LIMIT);
    }

    const REQUEST_LIMIT: Duration = Duration::from_secs(10);

    /// Reads `chunks` times, a second apart; the first error ends it.
    async fn trickle(
        server: &mut IdleTimeout<tokio::io::DuplexStream>,
        chunks: usize,
    ) -> io::Result<()> {
        let mut buf = [0u8; 64];
        for _ in 0..chunks {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(server.read(&mut buf).await? > 0);
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_trickled_past_the_request_limit_is_cut_off() {
        let (server, mut client) = duplex(1024);
        let mut server = IdleTimeout::new(server, LIMIT).with_request_limit(REQUEST_LIMIT);
        let sender = tokio::spawn(async move {
            for _ in 0..30 {
                if client.write_all(b"X").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let err = trickle(&mut server, 30).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= REQUEST_LIMIT + Duration::from_secs(2));
        drop(server);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn answers_restart_the_request_limit_and_an_upgrade_ends_it() {
        let (server, mut client) = duplex(1024);
        let mut server = IdleTimeout::new(server, LIMIT).with_request_limit(REQUEST_LIMIT);
        let mut buf = [0u8; 64];
        // Requests answered within the limit, over 30 s: never cut off.
        for _ in 0..3 {
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            tokio::time::sleep(REQUEST_LIMIT - Duration::from_secs(1)).await;
            client.write_all(b"\r\n").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            assert!(client.read(&mut buf).await.unwrap() > 0);
        }
        // After a 101, WebSocket frames may come as slowly as they like.
        client
            .write_all(b"GET /v1/ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        server
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        assert!(client.read(&mut buf).await.unwrap() > 0);
        for _ in 0..3 {
            client.write_all(b"x").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            tokio::time::sleep(REQUEST_LIMIT * 2).await;
        }
    }
}
