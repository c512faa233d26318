//! The upstream every scenario forwards to: a minimal hyper HTTP/1.1 server answering
//! `hello` to anything. For the warm path it runs as its own process
//! (`serve-upstream`), so its CPU time is apart from the proxies'; for cold starts and
//! bursts a [`Pod`] in the bench process stands for a starting pod: its port is bound at
//! once (an address the EndpointSlice can list) and it starts listening only later.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The body every upstream answers with.
pub const BODY: &[u8] = b"hello\n";

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

/// Serves one keep-alive connection.
async fn serve_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
        .await;
}

/// Accepts and serves connections until dropped; connections end with it.
async fn accept_loop(listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// `serve-upstream`: listens on 127.0.0.1, prints `listening <addr>`, serves until its
/// stdin closes.
pub async fn run_process() -> anyhow::Result<()> {
    let listener = bind_listener()?;
    println!("listening {}", listener.local_addr()?);
    tokio::spawn(accept_loop(listener));
    exit_when_stdin_closes().await;
    Ok(())
}

fn bind_listener() -> anyhow::Result<TcpListener> {
    zeroscale_activator::server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("binding the upstream")
}

/// Resolves when the parent closes this process's stdin (or dies).
pub async fn exit_when_stdin_closes() {
    let (closed, wait) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = closed.send(());
    });
    let _ = wait.await;
}

/// A starting pod: its address is taken from the start, connections to it are refused
/// until [`Pod::listen`], as a container's are before its server binds.
pub struct Pod {
    pub addr: SocketAddr,
    socket: Option<TcpSocket>,
    server: Option<JoinHandle<()>>,
}

impl Pod {
    pub fn reserve() -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4().context("socket")?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("binding a pod port")?;
        let addr = socket.local_addr()?;
        Ok(Self {
            addr,
            socket: Some(socket),
            server: None,
        })
    }

    /// Starts listening and serving; returns the instant the port began to accept.
    pub fn listen(&mut self) -> anyhow::Result<Instant> {
        let socket = self.socket.take().context("the pod listens already")?;
        let listener = socket.listen(4096).context("listening")?;
        let listening = Instant::now();
        self.server = Some(tokio::spawn(accept_loop(listener)));
        Ok(listening)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
