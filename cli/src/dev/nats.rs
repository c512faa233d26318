//! The NATS JetStream server that async calls and queue triggers need in `zeroscale
//! dev`: one the user names with `--nats-url`, or else a local `nats-server -js` on a
//! free loopback port with its store in a temporary folder, stopped (and its store
//! removed) when `zeroscale dev` stops. Without either, `zeroscale dev` runs without
//! async calls and says how to turn them on.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::replica::{free_port, terminate};
use super::{console, local};

/// The server's program name.
const PROGRAM: &str = "nats-server";

/// Where Debian installs `nats-server`, which is not on a normal user's PATH.
const DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// Longest a local server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a local server may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to say when no NATS server is at hand.
const HOW_TO_ENABLE: &str = "async calls and queue triggers are off: \
    nats-server is not on PATH. Install it (Debian/Ubuntu: apt-get install nats-server; \
    macOS: brew install nats-server) and restart, or pass --nats-url nats://HOST:4222";

/// The NATS server `zeroscale dev` uses.
pub(super) enum Nats {
    /// The user's own server, from `--nats-url`.
    External(String),
    /// A server `zeroscale dev` started.
    Local(Box<LocalNats>),
    /// None: async calls and queue triggers are off.
    Off,
}

impl Nats {
    /// The user's server when `url` names one; else a local server when `nats-server`
    /// is installed; else none. Says on the console which, and how to get one when none.
    pub(super) async fn start(url: Option<String>, setpriv: Option<&Path>) -> Self {
        if let Some(url) = url {
            console::event(format_args!(
                "async calls and queue triggers use NATS at {url}"
            ));
            return Nats::External(url);
        }
        let Some(program) = find_program() else {
            console::event(HOW_TO_ENABLE);
            return Nats::Off;
        };
        match LocalNats::start(&program, setpriv).await {
            Ok(local) => {
                console::event(format_args!(
                    "async calls and queue triggers use a local NATS JetStream at {} (store in {})",
                    local.url,
                    local.store.display()
                ));
                Nats::Local(Box::new(local))
            }
            Err(error) => {
                console::event(format_args!(
                    "async calls and queue triggers are off: {error}"
                ));
                Nats::Off
            }
        }
    }

    /// The server's URL, when there is one.
    pub(super) fn url(&self) -> Option<&str> {
        match self {
            Nats::External(url) => Some(url),
            Nats::Local(local) => Some(&local.url),
            Nats::Off => None,
        }
    }

    /// Stops a local server and removes its store; nothing to do otherwise.
    pub(super) async fn stop(self) {
        if let Nats::Local(local) = self {
            local.stop().await;
        }
    }
}

/// Why a local server could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("creating the NATS store folder {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finding a free port for NATS: {0}")]
    Port(std::io::Error),
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} exited ({status}) before accepting connections: {last_line}")]
    Exited {
        program: PathBuf,
        status: String,
        last_line: String,
    },
    #[error("{program} did not accept connections on {address} within {timeout:?}")]
    Timeout {
        program: PathBuf,
        address: SocketAddr,
        timeout: Duration,
    },
}

/// A `nats-server -js` that `zeroscale dev` runs.
pub(super) struct LocalNats {
    child: Child,
    url: String,
    store: PathBuf,
}

/// `nats-server` on PATH, or where Debian installs it.
fn find_program() -> Option<PathBuf> {
    local::resolve(PROGRAM, Path::new(".")).or_else(|| {
        let debian = PathBuf::from(DEBIAN_PATH);
        debian.is_file().then_some(debian)
    })
}

impl LocalNats {
    /// Starts `program` with JetStream on a free loopback port and waits until it
    /// accepts connections. Through `setpriv --pdeathsig KILL` when given, so the server
    /// dies with `zeroscale dev` even when that is killed.
    pub(super) async fn start(program: &Path, setpriv: Option<&Path>) -> Result<Self, StartError> {
        let port = free_port().map_err(StartError::Port)?;
        let store =
            std::env::temp_dir().join(format!("zeroscale-dev-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).map_err(|source| StartError::Store {
            path: store.clone(),
            source,
        })?;
        let mut command = match setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches `zeroscale dev` only, which stops the
            // server after draining the requests that may still use it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&store);
                return Err(StartError::Spawn {
                    program: program.to_owned(),
                    source,
                });
            }
        };
        let last_line = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let last_line = Arc::clone(&last_line);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    *last_line.lock().unwrap_or_else(PoisonError::into_inner) = line;
                }
            });
        }
        let mut nats = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match nats
            .wait_until_listening(program, address, &last_line)
            .await
        {
            Ok(()) => Ok(nats),
            Err(error) => {
                nats.stop().await;
                Err(error)
            }
        }
    }

    /// Polls `address` until the server accepts a connection; it has no other signal.
    async fn wait_until_listening(
        &mut self,
        program: &Path,
        address: SocketAddr,
        last_line: &Mutex<String>,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StartError::Exited {
                    program: program.to_owned(),
                    status: status.to_string(),
                    last_line: last_line
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                });
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    program: program.to_owned(),
                    address,
                    timeout: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, SIGKILL after a grace period, then removes the store.
    pub(super) async fn stop(mut self) {
        terminate(&mut self.child, STOP_GRACE).await;
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

impl Drop for LocalNats {
    /// Should `zeroscale dev` fail before it stops the server: `kill_on_drop` kills it,
    /// and its store goes too.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_server_accepts_connections_until_stopped_and_leaves_no_store() {
        let program = find_program().expect(
            "this test needs nats-server: run hack/install-tools.sh (or apt-get install nats-server)",
        );
        let nats = LocalNats::start(&program, None)
            .await
            .expect("nats-server starts");
        let address: SocketAddr = nats
            .url
            .trim_start_matches("nats://")
            .parse()
            .expect("a loopback address");
        let store = nats.store.clone();
        assert!(store.is_dir(), "the store is a temporary folder");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("the server accepts connections");
        let mut greeting = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut greeting)
            .await
            .expect("the server greets");
        assert_eq!(&greeting, b"INFO", "a NATS server answers");
        drop(stream);

        nats.stop().await;
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "the server is gone"
        );
        assert!(!store.exists(), "the store is removed");
    }

    #[tokio::test]
    async fn a_program_that_is_not_a_nats_server_is_reported_with_its_last_words() {
        let error = LocalNats::start(Path::new("/bin/false"), None)
            .await
            .err()
            .expect("false is no server");
        assert!(
            matches!(error, StartError::Exited { .. }),
            "unexpected {error}"
        );
    }
}
