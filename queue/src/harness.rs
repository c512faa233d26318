//! A real `nats-server` with JetStream for tests: started on 127.0.0.1 with a free port
//! and a store in a fresh temporary folder, stopped and restarted on the same port and
//! store (to test a broker outage), and killed when dropped, even if the test panics.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a starting server has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server -js` child process.
#[derive(Debug)]
pub struct NatsServer {
    address: SocketAddr,
    store: PathBuf,
    child: Option<Child>,
}

/// Whether `nats-server` is on PATH.
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl NatsServer {
    /// Starts a server for a test. Fails the test, saying how to install it, when
    /// `nats-server` is not on PATH: `hack/install-tools.sh` installs it, and `.ci/run`
    /// runs that before the tests.
    pub fn for_test() -> Self {
        assert!(
            available(),
            "this test needs nats-server on PATH: run hack/install-tools.sh (or apt-get install nats-server)"
        );
        Self::start().unwrap_or_else(|error| panic!("nats-server did not start: {error}"))
    }

    /// Starts a server on a free loopback port with an empty store.
    pub fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(Error::StartServer)?
            .port();
        let store =
            std::env::temp_dir().join(format!("zeroscale-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).map_err(Error::StartServer)?;
        let mut server = Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            store,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.address)
    }

    /// Kills the server (SIGKILL: nothing is flushed that JetStream had not stored).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`NatsServer::stop`]) on the same port and store,
    /// and waits until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.address.port().to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::StartServer)?;
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect_timeout(&self.address, Duration::from_millis(100)).is_err() {
            if started.elapsed() > START_TIMEOUT {
                self.stop();
                return Err(Error::ServerNotReady {
                    address: self.address,
                    waited: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_accepts_after_start_refuses_when_stopped_and_accepts_after_restart() {
        let mut server = NatsServer::for_test();
        let address = server.address;
        assert!(TcpStream::connect(address).is_ok());
        server.stop();
        assert!(TcpStream::connect(address).is_err());
        server.restart().expect("restarts");
        assert!(TcpStream::connect(address).is_ok());
        assert_eq!(server.url(), format!("nats://{address}"));
    }
}
