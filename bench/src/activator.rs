//! The activator under test, in its own process: `serve-activator` builds the real
//! request path from the library (as `activator/src/main.rs` does, with the same tokio
//! runtime, minus the Kubernetes watches) and takes the control plane's part from the
//! bench over stdin/stdout, one line each way:
//!
//! - in: `fn <name> <maxQueuedRequests> <maxQueueWait>`, `fns <prefix> <count>`,
//!   `ready <name> <addr>`, `starting <name> <addr>`, `zero <name>`, `queued <name>`,
//!   `ratelimit <name> <requestsPerSecond>`;
//! - out: `listening <addr>` once, `ok` or `queued <n>` per command, `error <why>`, and
//!   `wake <namespace>/<name>` whenever the activator asks for a Function to be woken.
//!
//! Functions live in namespace `bench`, so Function `hello` answers on `hello.bench`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeroscale_activator::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::gateway::Gateway;
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::otlp::SpanExporter;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_activator::wake::Wake;
use zeroscale_api::gateway::RateLimit;
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::{Function, FunctionSpec};

use crate::auth;
use crate::procs::{self, SelfChild};
use crate::upstream::Pod;

/// The namespace of every bench Function.
pub const NAMESPACE: &str = "bench";
/// The Function the warm path is served by.
pub const WARM_FUNCTION: &str = "hello";

/// The Host header that routes to Function `name`.
pub fn host(name: &str) -> String {
    format!("{name}.{NAMESPACE}")
}

/// How the activator's listener runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// tokio's default multi-threaded runtime, as `activator/src/main.rs` ran before it
    /// moved to per-core listeners; kept for comparison.
    MultiThread,
    /// One single-threaded runtime per core (`server::serve_per_core`), as
    /// `activator/src/main.rs` runs.
    PerCore,
}

/// Reports wakes on stdout, where the bench plays the operator.
struct PrintWake;

impl Wake for PrintWake {
    fn wake(&self, function: &FunctionKey) {
        println!("wake {function}");
    }
}

/// `serve-activator`: the activator with `probe_period` (0 = off), and, with
/// `upstream`, the warm Function with a ready pod at each of those addresses.
pub async fn run_process(
    upstream: Vec<SocketAddr>,
    probe_period: Duration,
    runtime: Runtime,
    otlp_endpoint: Option<http::Uri>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let functions = Arc::new(Functions::new(Domains::default(), metrics.clone()));
    if !upstream.is_empty() {
        functions.apply(&function(WARM_FUNCTION, None, None));
        set(&functions, WARM_FUNCTION, &upstream, EndpointState::Ready);
        // The same pods behind API-key and JWT auth (crate::auth).
        let keyed = auth::with_api_key(
            function(auth::API_KEY_FUNCTION, None, None),
            functions.auth(),
        );
        functions.apply(&keyed);
        functions.apply(&auth::with_jwt(function(auth::JWT_FUNCTION, None, None))?);
        for name in [auth::API_KEY_FUNCTION, auth::JWT_FUNCTION] {
            set(&functions, name, &upstream, EndpointState::Ready);
        }
    }
    let activator = Arc::new(
        Activator::new(
            Arc::clone(&functions),
            Forwarder::new(&ForwarderConfig::default()),
            Arc::new(PrintWake),
            ProbeConfig {
                period: probe_period,
                ..ProbeConfig::default()
            },
            metrics.clone(),
        )
        .with_gateway(Gateway {
            spans: otlp_endpoint
                .as_ref()
                .map(|endpoint| SpanExporter::start(endpoint, metrics.dropped_spans.clone()))
                .transpose()?,
            ..Gateway::default()
        }),
    );
    // As main.rs does: the autoscaler's load sampling runs alongside.
    tokio::spawn(server::sample_load(
        Arc::clone(&functions),
        Duration::from_millis(100),
        std::future::pending(),
    ));
    let addr = match runtime {
        Runtime::MultiThread => {
            let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let addr = listener.local_addr()?;
            tokio::spawn(server::serve(
                listener,
                Listener::Cluster,
                activator,
                ServerLimits::default(),
                std::future::pending(),
            ));
            addr
        }
        Runtime::PerCore => {
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            let server = server::serve_per_core(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                threads,
                Listener::Cluster,
                activator,
                ServerLimits::default(),
                std::future::pending::<()>,
            )?;
            let addr = server.local_addr;
            tokio::spawn(server.finished());
            addr
        }
    };
    println!("listening {addr}");

    // Blocking stdin on a thread of its own; the parent closing it ends the process.
    let (lines, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        match command(&functions, &line) {
            Ok(reply) => println!("{reply}"),
            Err(error) => println!("error {error:#}"),
        }
    }
    // The listener threads serve until the process ends, which is now: returning would
    // wait for them in the runtime's shutdown.
    std::process::exit(0)
}

fn command(functions: &Functions, line: &str) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["fn", name, max_queued, max_queue_wait] => {
            functions.apply(&function(
                name,
                Some(max_queued.parse().context("maxQueuedRequests")?),
                Some(max_queue_wait),
            ));
        }
        ["fns", prefix, count] => {
            // As a list arrives from the API server: the routing tables are built once.
            for n in 0..count.parse::<usize>().context("count")? {
                functions.apply_listed(&function(&format!("{prefix}-{n}"), None, None));
            }
            functions.finish_list([]);
        }
        ["ready", name, addr] => set(functions, name, &[addr.parse()?], EndpointState::Ready),
        ["starting", name, addr] => {
            set(functions, name, &[addr.parse()?], EndpointState::NotReady);
        }
        ["zero", name] => {
            functions.set_endpoints(&FunctionKey::new(NAMESPACE, *name), EndpointSet::default());
        }
        ["ratelimit", name, rate] => {
            let mut limited = function(name, None, None);
            limited.spec.requests.rate_limit = Some(RateLimit {
                requests_per_second: Some(rate.parse().context("requestsPerSecond")?),
                ..RateLimit::default()
            });
            functions.apply(&limited);
        }
        ["queued", name] => {
            let queued = functions
                .route(Listener::Cluster, &host(name), "/")
                .map(|state| state.capacity.queued())
                .unwrap_or(0);
            return Ok(format!("queued {queued}"));
        }
        _ => bail!("unknown command: {line}"),
    }
    Ok("ok".to_owned())
}

fn function(name: &str, max_queued: Option<i32>, max_queue_wait: Option<&str>) -> Function {
    let mut function = Function::new(name, FunctionSpec::with_image("bench"));
    function.metadata.namespace = Some(NAMESPACE.into());
    if let Some(max_queued) = max_queued {
        function.spec.requests.max_queued_requests = max_queued;
    }
    if let Some(wait) = max_queue_wait {
        function.spec.requests.max_queue_wait = wait.into();
        // The whole request may take as long as it may wait.
        function.spec.requests.timeout = wait.into();
    }
    function
}

fn set(functions: &Functions, name: &str, addrs: &[SocketAddr], state: EndpointState) {
    let pods = addrs.iter().map(|&addr| PodEndpoint {
        addr,
        pod: None,
        state,
        protocol: PodProtocol::Http1,
    });
    functions.set_endpoints(
        &FunctionKey::new(NAMESPACE, name),
        EndpointSet::new(pods.collect()),
    );
}

/// The bench's side of a `serve-activator` process: it sends commands and hears wakes.
pub struct ActivatorProcess {
    /// Killed on drop.
    child: Child,
    pid: u32,
    addr: SocketAddr,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<String>,
    /// Each wake asked for, with the instant the bench heard of it.
    pub wakes: mpsc::UnboundedReceiver<(String, Instant)>,
}

impl ActivatorProcess {
    /// Starts an activator probing starting pods every `probe_period` (zero: off), with
    /// the warm Function ready at `upstream` when given.
    pub async fn start(
        upstream: Option<SocketAddr>,
        probe_period: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(upstream, probe_period, Runtime::PerCore).await
    }

    /// [`ActivatorProcess::start`] with its listener on `runtime`.
    pub async fn start_with(
        upstream: Option<SocketAddr>,
        probe_period: Duration,
        runtime: Runtime,
    ) -> anyhow::Result<Self> {
        Self::start_under(&[], upstream, probe_period, runtime, &[]).await
    }

    /// [`ActivatorProcess::start_with`] with more `serve-activator` arguments.
    pub async fn start_with_args(
        upstream: Option<SocketAddr>,
        probe_period: Duration,
        runtime: Runtime,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_under(&[], upstream, probe_period, runtime, extra).await
    }

    /// [`ActivatorProcess::start_with_args`] run by `wrapper` (e.g. valgrind) when not
    /// empty.
    pub async fn start_under(
        wrapper: &[String],
        upstream: Option<SocketAddr>,
        probe_period: Duration,
        runtime: Runtime,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "serve-activator".to_owned(),
            "--probe-period-ms".to_owned(),
            probe_period.as_millis().to_string(),
        ];
        if runtime == Runtime::MultiThread {
            args.extend(["--runtime".to_owned(), "multi-thread".to_owned()]);
        }
        if let Some(upstream) = upstream {
            args.extend(["--upstream".to_owned(), upstream.to_string()]);
        }
        args.extend_from_slice(extra);
        let SelfChild {
            child,
            pid,
            addr,
            stdin,
            mut stdout,
        } = procs::spawn_self_under(wrapper, &args).await?;
        let (reply, replies) = mpsc::unbounded_channel();
        let (wake, wakes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let now = Instant::now();
                match line.strip_prefix("wake ") {
                    Some(function) => {
                        let _ = wake.send((function.to_owned(), now));
                    }
                    None => {
                        let _ = reply.send(line);
                    }
                }
            }
        });
        Ok(Self {
            child,
            pid,
            addr,
            stdin,
            replies,
            wakes,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the activator's stdin, which ends it, and waits up to `within` for it to
    /// exit (a wrapper such as valgrind writes its results then).
    pub async fn finish(self, within: Duration) -> anyhow::Result<()> {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let status = tokio::time::timeout(within, child.wait())
            .await
            .context("the activator did not exit")?
            .context("waiting for the activator")?;
        if !status.success() {
            bail!("the activator exited with {status}");
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one command and returns its reply.
    pub async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.command_within(line, Duration::from_secs(60)).await
    }

    /// [`ActivatorProcess::command`], waiting up to `within` for the reply.
    pub async fn command_within(&mut self, line: &str, within: Duration) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .context("writing to the activator")?;
        let reply = tokio::time::timeout(within, self.replies.recv())
            .await
            .with_context(|| format!("the activator did not answer {line}"))?
            .context("the activator exited")?;
        if let Some(error) = reply.strip_prefix("error ") {
            bail!("activator: {error}");
        }
        Ok(reply)
    }

    /// Requests waiting at Function `name`.
    pub async fn queued(&mut self, name: &str) -> anyhow::Result<usize> {
        let reply = self.command(&format!("queued {name}")).await?;
        reply
            .strip_prefix("queued ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected reply {reply}"))
    }

    /// The next wake, within `within`.
    pub async fn next_wake(&mut self, within: Duration) -> anyhow::Result<(String, Instant)> {
        tokio::time::timeout(within, self.wakes.recv())
            .await
            .context("no wake came")?
            .context("the activator exited")
    }

    /// Plays `pod` starting for Function `name` once requests wake it: listed as
    /// starting at the wake, listening `delay` after it, and Ready at the first kubelet
    /// probe (every `kubelet_period` from the wake) after that. The caller marks it
    /// ready at [`PodStart::kubelet_ready`].
    pub async fn start_pod(
        &mut self,
        name: &str,
        pod: &mut Pod,
        delay: Duration,
        kubelet_period: Duration,
    ) -> anyhow::Result<PodStart> {
        let (_, woke) = self.next_wake(Duration::from_secs(10)).await?;
        self.command(&format!("starting {name} {}", pod.addr))
            .await?;
        tokio::time::sleep_until(woke + delay).await;
        let listening = pod.listen()?;
        let mut kubelet_ready = woke;
        while kubelet_ready < listening {
            kubelet_ready += kubelet_period;
        }
        Ok(PodStart {
            woke,
            listening,
            kubelet_ready,
        })
    }
}

/// When a simulated pod start ([`ActivatorProcess::start_pod`]) happened.
pub struct PodStart {
    pub woke: Instant,
    pub listening: Instant,
    pub kubelet_ready: Instant,
}
