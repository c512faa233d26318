//! A minimal HTTP/1.1 client on raw TCP for the cold-start, burst and memory scenarios:
//! one `GET /` per connection (`Connection: close`), timing the first byte of the
//! answer. Thousands of these run at once, so it keeps nothing but the bytes it reads.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An answered request.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub status: u16,
    /// When the first byte of the response arrived.
    pub first_byte: Instant,
    /// When the response was read to its end.
    pub done: Instant,
}

fn request(host: &str, target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zeroscale-bench\r\nConnection: close\r\n\r\n"
    )
}

/// Connects to `addr` and sends one request for `host`, without reading the answer.
pub async fn send(addr: SocketAddr, host: &str) -> anyhow::Result<TcpStream> {
    send_to(addr, host, "/").await
}

/// [`send`] of `GET target`.
async fn send_to(addr: SocketAddr, host: &str, target: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    stream
        .write_all(request(host, target).as_bytes())
        .await
        .context("sending the request")?;
    Ok(stream)
}

/// Reads the answer to the request sent on `stream`, to the end.
pub async fn read_answer(mut stream: TcpStream) -> anyhow::Result<Answer> {
    let mut buffer = Vec::with_capacity(512);
    let read = stream.read_buf(&mut buffer).await.context("reading")?;
    let first_byte = Instant::now();
    if read == 0 {
        bail!("the connection closed without an answer");
    }
    while stream.read_buf(&mut buffer).await.context("reading")? > 0 {}
    let done = Instant::now();
    let status = buffer
        .get(9..12)
        .filter(|_| buffer.starts_with(b"HTTP/1."))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .with_context(|| {
            format!(
                "not an HTTP answer: {:?}",
                String::from_utf8_lossy(&buffer[..buffer.len().min(64)])
            )
        })?;
    Ok(Answer {
        status,
        first_byte,
        done,
    })
}

/// `GET /` from `host` at `addr`.
pub async fn get(addr: SocketAddr, host: &str) -> anyhow::Result<Answer> {
    get_target(addr, host, "/").await
}

/// `GET target` from `host` at `addr`.
pub async fn get_target(addr: SocketAddr, host: &str, target: &str) -> anyhow::Result<Answer> {
    read_answer(send_to(addr, host, target).await?).await
}
