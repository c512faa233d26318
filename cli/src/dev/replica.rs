//! One replica of a Function as a local process: started with `PORT` set and its output
//! prefixed, probed until it is ready, stopped with SIGTERM and, after the grace period,
//! SIGKILL. Everything that happens to it is reported to its supervisor as an [`Event`].

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use zeroscale_activator::endpoints::PodProtocol;
use zeroscale_activator::probe::probe;

use super::console;

/// How to start a Function's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program, resolved to a path that exists.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Working directory: the manifest's folder.
    pub dir: PathBuf,
    /// The manifest's literal environment; `PORT` is added per replica.
    pub env: Vec<(String, String)>,
}

/// What a replica needs besides its launch: identity for output, probing, shutdown.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub launch: Arc<Launch>,
    /// Probed by HTTP GET when set and the replica speaks HTTP/1.1, else by TCP
    /// connect, as the activator probes pods.
    pub readiness_path: Option<String>,
    pub protocol: PodProtocol,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
    /// When set, the process is started through `setpriv --pdeathsig KILL`, so it dies
    /// with `zeroscale dev` even when that is killed with no chance to clean up.
    pub setpriv: Option<PathBuf>,
}

/// What happened to a replica.
#[derive(Debug)]
pub enum Event {
    /// It passed its readiness check, `after` its start.
    Ready { after: Duration },
    /// The process is gone: how it ended and its last line of output.
    Exited { status: String, last_line: String },
}

/// How often a starting replica is probed, and the longest one probe may take.
const PROBE_PERIOD: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A running replica: its identity, address and the way to stop it.
#[derive(Debug)]
pub struct Replica {
    /// Unique among all replicas this `zeroscale dev` started; tags its events.
    pub id: u64,
    /// Its number among the Function's replicas, as shown in output (`hello[0]`).
    pub slot: usize,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Replica {
    /// Starts the process (`label` prefixes its output) and a task that watches it and
    /// reports on `events` until it exits.
    pub fn start(
        id: u64,
        slot: usize,
        label: &str,
        config: &ReplicaConfig,
        events: mpsc::Sender<(u64, Event)>,
    ) -> std::io::Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let launch = &config.launch;
        let mut command = match &config.setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command
                    .args(["--pdeathsig", "KILL", "--"])
                    .arg(&launch.program);
                command
            }
            None => Command::new(&launch.program),
        };
        command
            .args(&launch.args)
            .current_dir(&launch.dir)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches `zeroscale dev`
            // only, which then stops replicas in order.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let prefix = format!("{label}[{slot}]");
        let last_line = Arc::new(Mutex::new(String::new()));
        let mut relays = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            relays.push(tokio::spawn(relay(
                stdout,
                prefix.clone(),
                Arc::clone(&last_line),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            relays.push(tokio::spawn(relay(stderr, prefix, Arc::clone(&last_line))));
        }
        let (stop, stopped) = oneshot::channel();
        let watched = Watched {
            child,
            addr,
            readiness_path: config.readiness_path.clone(),
            protocol: config.protocol,
            grace: config.grace,
            output: Output { relays, last_line },
        };
        tokio::spawn(watched.watch(stopped, Reporter { id, events }));
        Ok(Self {
            id,
            slot,
            addr,
            stop: Some(stop),
        })
    }

    /// Asks the replica to stop: SIGTERM now, SIGKILL after the grace period. Its
    /// `Exited` event follows.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether [`Replica::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.is_none()
    }
}

/// A port nothing listens on now. Another process could take it before the replica
/// binds; the replica then fails to start and is replaced.
pub(super) fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Prints each line of `output` under `prefix` and remembers the last one.
async fn relay(output: impl AsyncRead + Unpin, prefix: String, last_line: Arc<Mutex<String>>) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                console::output(&prefix, text);
                if !text.is_empty() {
                    *last_line.lock().unwrap_or_else(PoisonError::into_inner) = text.to_owned();
                }
            }
        }
    }
}

/// The tasks relaying a process's output, and the last line they saw.
struct Output {
    relays: Vec<tokio::task::JoinHandle<()>>,
    last_line: Arc<Mutex<String>>,
}

/// How long the output of an exited process may take to drain (a process it left
/// behind could hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// A started process and what watching it needs.
struct Watched {
    child: Child,
    addr: SocketAddr,
    readiness_path: Option<String>,
    protocol: PodProtocol,
    grace: Duration,
    output: Output,
}

/// Where a replica's events go, tagged with its id.
struct Reporter {
    id: u64,
    events: mpsc::Sender<(u64, Event)>,
}

impl Reporter {
    async fn report(&self, event: Event) {
        let _ = self.events.send((self.id, event)).await;
    }
}

impl Watched {
    /// Watches the process until it exits: probes it until ready, stops it when asked
    /// (or when the supervisor is gone and `stopped` fails).
    async fn watch(mut self, mut stopped: oneshot::Receiver<()>, reporter: Reporter) {
        let started = Instant::now();
        let mut ready = false;
        let mut probes = tokio::time::interval(PROBE_PERIOD);
        let status = loop {
            tokio::select! {
                status = self.child.wait() => break describe(status),
                _ = &mut stopped => break terminate(&mut self.child, self.grace).await,
                _ = probes.tick(), if !ready => {
                    let path = self.readiness_path.as_deref();
                    if probe(self.addr, self.protocol, path, PROBE_TIMEOUT).await {
                        ready = true;
                        reporter.report(Event::Ready { after: started.elapsed() }).await;
                    }
                }
            }
        };
        // Its last words are often why it exited: read them to the end first.
        let _ = tokio::time::timeout(OUTPUT_DRAIN, join_all(self.output.relays)).await;
        let last_line = self
            .output
            .last_line
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        reporter.report(Event::Exited { status, last_line }).await;
    }
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// SIGTERM, then SIGKILL if the process outlives `grace`; returns how it ended.
pub(super) async fn terminate(child: &mut Child, grace: Duration) -> String {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return describe(status);
        }
    }
    let _ = child.start_kill();
    describe(child.wait().await)
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown status: {error}"),
    }
}
