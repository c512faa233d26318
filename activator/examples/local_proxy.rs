//! A local activator in front of a tiny upstream, for quick measurements without a
//! cluster: `cargo run --release -p zeroscale-activator --example local_proxy`, then
//! compare `wrk http://<upstream>/` with `wrk -H 'Host: hello.default' http://<activator>/`.
//! The Function `hello.default` has one ready pod, the upstream; Ctrl-C stops both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use zeroscale_activator::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_activator::wake::Wake;
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::{Function, FunctionSpec};

/// The upstream's pod is always ready, so nothing ever needs waking.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self, _: &FunctionKey) {}
}

async fn upstream(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upstream_listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let upstream_addr = upstream_listener.local_addr()?;
    tokio::spawn(upstream(upstream_listener));

    let metrics = Metrics::new()?;
    let functions = Arc::new(Functions::new(Domains::default(), metrics.clone()));
    let mut function = Function::new("hello", FunctionSpec::with_image("local"));
    function.metadata.namespace = Some("default".into());
    functions.apply(&function);
    functions.set_endpoints(
        &FunctionKey::new("default", "hello"),
        EndpointSet::new(vec![PodEndpoint {
            addr: upstream_addr,
            pod: None,
            state: EndpointState::Ready,
            protocol: PodProtocol::Http1,
        }]),
    );
    let activator = Arc::new(Activator::new(
        functions,
        Forwarder::new(&ForwarderConfig::default()),
        Arc::new(NoWake),
        ProbeConfig::default(),
        metrics,
    ));
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!("upstream  http://{upstream_addr}/");
    println!(
        "activator http://{}/  (Host: hello.default)",
        listener.local_addr()?
    );
    server::serve(
        listener,
        Listener::Cluster,
        activator,
        ServerLimits::default(),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    Ok(())
}
