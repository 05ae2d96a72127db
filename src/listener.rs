//! The listening socket: how accepted connections are set up before HTTP sees them.
//!
//! Two things a chat server needs that poem's plain TCP acceptor does not do cheaply:
//!
//! - **No Nagle.** A chat server writes many small frames; with Nagle's algorithm on, a
//!   frame written while an earlier one is unacknowledged waits for the client's delayed
//!   ACK (40 ms on Linux). Every connection gets `TCP_NODELAY`.
//! - **An idle limit that costs one timer.** A connection on which nothing is read or
//!   written for [`IdleTimeout`]'s limit (a half-open client, one that never finishes its
//!   request) fails with `TimedOut`, so it cannot hold a slot forever. Poem's own idle
//!   timeout spawns a task per connection and takes a lock on every read and write; here
//!   activity is one clock read, and the single timer is re-armed only when it fires.
//!   WebSocket sessions stay well inside the limit: the server pings every 25 s.

use std::{
    io,
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
    net::TcpStream,
    time::{Instant, Sleep},
};

/// Accepts TCP connections with Nagle's algorithm off and an idle limit.
pub struct ChatAcceptor {
    inner: TcpAcceptor,
    idle_limit: Duration,
}

impl ChatAcceptor {
    pub fn new(inner: TcpAcceptor, idle_limit: Duration) -> Self {
        Self { inner, idle_limit }
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
            IdleTimeout::new(stream, self.idle_limit),
            local,
            remote,
            scheme,
        ))
    }
}

/// An IO stream that fails with `TimedOut` when it has been waiting to read or write
/// and nothing went either way for `limit`.
pub struct IdleTimeout<T> {
    io: T,
    limit: Duration,
    last_activity: Instant,
    /// Fires at the earliest moment the limit could have been reached; checked then
    /// against `last_activity` and re-armed if there was activity since.
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            limit,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
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
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
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
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
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
}
