//! A TCP proxy that makes a local S3 server behave like one across a
//! network: each connection carries at most `rate` bytes per second each
//! way, and the first byte of each response waits `delay` (the round trip
//! and the server's time to first byte a client sees on S3). HTTP/1.1
//! clients send one request at a time on a connection, so "a response is
//! due" is "the client sent bytes since the server last answered".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Clone, Copy)]
pub struct Link {
    /// Bytes per second, each way, per connection.
    pub rate: u64,
    /// Before the first byte of each response.
    pub delay: Duration,
}

/// Listens on a free loopback port and relays every connection to
/// `upstream` over `link`; returns the port. Runs until the runtime stops.
pub async fn start(upstream: SocketAddr, link: Link) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = relay(client, upstream, link).await;
            });
        }
    });
    Ok(port)
}

async fn relay(client: TcpStream, upstream: SocketAddr, link: Link) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let due = Arc::new(AtomicBool::new(false));
    let requests = pump(
        from_client,
        to_server,
        link.rate,
        Side::Request(due.clone()),
    );
    let responses = pump(
        from_server,
        to_client,
        link.rate,
        Side::Response(due, link.delay),
    );
    let _ = tokio::join!(requests, responses);
    Ok(())
}

enum Side {
    /// Client to server: bytes sent make a response due.
    Request(Arc<AtomicBool>),
    /// Server to client: the first bytes of a due response wait.
    Response(Arc<AtomicBool>, Duration),
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rate: u64,
    side: Side,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut next = Instant::now();
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        match &side {
            Side::Request(due) => due.store(true, Ordering::Release),
            Side::Response(due, delay) => {
                if due.swap(false, Ordering::AcqRel) {
                    tokio::time::sleep(*delay).await;
                }
            }
        }
        to.write_all(&buffer[..n]).await?;
        // Paid after sending: a chunk goes at once, and the next waits
        // until the link would have carried this one.
        next = next.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(next).await;
    }
}
