//! `hot-room --webhook`: a webhook on the hot room, delivered to a receiver in this
//! process that answers every request at once (`204`, HTTP/1.1 keep-alive) and counts
//! them, so the run shows what a webhook costs the send path and how fast one delivers.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// What the receiver has seen.
#[derive(Default)]
pub struct Received {
    pub requests: AtomicU64,
    /// When the first and the latest request arrived.
    pub span: Mutex<Option<(Instant, Instant)>>,
}

/// Starts the receiver on a free local port; returns its URL and its counts.
pub async fn start() -> Result<(String, Arc<Received>), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/hook",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let received = Arc::new(Received::default());
    let counts = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let _ = serve(stream, &counts).await;
            });
        }
    });
    Ok((url, received))
}

/// Answers each request on one connection with `204`, reading and discarding its body.
async fn serve(stream: tokio::net::TcpStream, counts: &Received) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
        let now = Instant::now();
        counts.requests.fetch_add(1, Ordering::Relaxed);
        {
            let mut span = counts.span.lock().expect("not poisoned");
            *span = Some(span.map_or((now, now), |(first, _)| (first, now)));
        }
        write
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}
