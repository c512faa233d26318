//! The peers the bench runs: wrk and ab, the load generators, nginx, the reference
//! reverse proxy, and valgrind, which counts instructions. All come from apt (`bench/install-tools.sh`, which the bench runs itself
//! when they are missing and it may).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::procs;

const INSTALL_SCRIPT: &str = include_str!("../install-tools.sh");

fn nginx_binary() -> Option<PathBuf> {
    find_program("nginx").or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.exists().then_some(sbin)
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// Makes sure wrk, ab, valgrind and nginx are there: installs them with `install-tools.sh` when
/// `install` allows, else says how to.
pub fn ensure(install: bool) -> anyhow::Result<()> {
    let missing = || {
        let mut missing = Vec::new();
        for program in ["wrk", "ab", "valgrind"] {
            if find_program(program).is_none() {
                missing.push(program);
            }
        }
        if nginx_binary().is_none() {
            missing.push("nginx");
        }
        missing
    };
    if missing().is_empty() {
        return Ok(());
    }
    if !install {
        bail!(
            "missing {}: run bench/install-tools.sh (apt-get install wrk apache2-utils valgrind nginx-light)",
            missing().join(", ")
        );
    }
    eprintln!(
        "installing {} (bench/install-tools.sh)",
        missing().join(", ")
    );
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(INSTALL_SCRIPT)
        .status()
        .context("running install-tools.sh")?;
    if !status.success() || !missing().is_empty() {
        bail!(
            "could not install {}: run bench/install-tools.sh as root",
            missing().join(", ")
        );
    }
    Ok(())
}

/// First line a program prints about its version (`wrk -v`, `nginx -v`).
pub fn version(program: &str) -> String {
    let path = match program {
        "nginx" => nginx_binary(),
        _ => find_program(program),
    };
    let Some(path) = path else {
        return "missing".to_owned();
    };
    std::process::Command::new(path)
        .arg("-v")
        .output()
        .ok()
        .map(|out| {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// nginx as a plain keep-alive reverse proxy to one upstream, in the foreground, with
/// everything it writes in its own folder.
pub struct Nginx {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Nginx {
    pub async fn start(upstream: SocketAddr, workers: usize, dir: &Path) -> anyhow::Result<Self> {
        Self::start_under(&[], upstream, Some(workers), dir).await
    }

    /// [`Nginx::start`] run by `wrapper` (e.g. valgrind) when not empty; with `workers`
    /// `None`, one process serves without a master (what valgrind can follow).
    pub async fn start_under(
        wrapper: &[String],
        upstream: SocketAddr,
        workers: Option<usize>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let binary = nginx_binary().context("nginx is not installed")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = procs::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = config(upstream, addr, workers, dir);
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).context("writing nginx.conf")?;
        let error_log = dir.join("error.log");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let pid = child.id().context("nginx has a pid")?;
        let nginx = Self { child, pid, addr };
        if let Err(error) = procs::wait_listening(addr, Duration::from_secs(10)).await {
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            bail!("{error}; nginx error.log:\n{log}");
        }
        Ok(nginx)
    }

    /// The master and its workers, whose CPU time together is nginx's.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(procs::children_of(self.pid));
        pids
    }

    /// Stops nginx the way it expects (TERM to the master, which ends its workers).
    pub async fn stop(self) {
        let _ = self.stop_within(Duration::from_secs(5)).await;
    }

    /// [`Nginx::stop`], failing unless nginx exits within `within`.
    pub async fn stop_within(mut self, within: Duration) -> anyhow::Result<()> {
        procs::signal(self.pid, "TERM")?;
        tokio::time::timeout(within, self.child.wait())
            .await
            .context("nginx did not exit")?
            .context("waiting for nginx")?;
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A killed master would leave its workers running.
        if let Ok(None) = self.child.try_wait() {
            let _ = procs::signal(self.pid, "TERM");
        }
    }
}

/// The configuration: `worker_processes` as given (the activator's worker threads),
/// upstream keep-alive over HTTP/1.1 with `Connection` cleared, no access log, and the
/// same forwarding headers the activator sets.
fn config(upstream: SocketAddr, listen: SocketAddr, workers: Option<usize>, dir: &Path) -> String {
    let dir = dir.display();
    let (master, workers) = match workers {
        Some(workers) => ("on", workers),
        None => ("off", 1),
    };
    format!(
        r#"daemon off;
master_process {master};
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 10000;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream function {{
        server {upstream};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://function;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"#
    )
}

/// wrk's `done()` hook, printing what the `--latency` table rounds or leaves out
/// (p99.9) in microseconds on one line.
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ZEROSCALE_BENCH %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
"#;

/// Writes the wrk script into `dir`.
pub fn write_wrk_script(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("report.lua");
    std::fs::write(&path, WRK_SCRIPT).context("writing the wrk script")?;
    Ok(path)
}

/// One wrk run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WrkRun {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub errors: u64,
    pub non_2xx: u64,
}

/// Runs `wrk -t<threads> -c<connections> -d<duration> --latency` against `url` with
/// `Host: host`, and `header` (`Name: value`) when given.
pub async fn wrk(
    script: &Path,
    url: &str,
    host: &str,
    header: Option<&str>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkRun> {
    let threads = connections.clamp(1, 2);
    let mut command = Command::new("wrk");
    if let Some(header) = header {
        command.arg("-H").arg(header);
    }
    let output = command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(url)
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&stdout).with_context(|| format!("unexpected wrk output:\n{stdout}"))
}

fn parse_wrk(stdout: &str) -> anyhow::Result<WrkRun> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("ZEROSCALE_BENCH "))
        .context("no result line")?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("numbers")?;
    let [
        requests,
        micros,
        connect,
        read,
        write,
        status,
        timeout,
        p50,
        p99,
        p999,
        mean,
    ] = numbers[..]
    else {
        bail!("expected 11 numbers");
    };
    let seconds = micros / 1e6;
    Ok(WrkRun {
        requests: requests as u64,
        seconds,
        requests_per_second: if seconds > 0.0 {
            requests / seconds
        } else {
            0.0
        },
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
        mean_us: mean,
        errors: (connect + read + write + timeout) as u64,
        non_2xx: status as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_result_line_is_parsed() {
        let out =
            "Running 1s test\nZEROSCALE_BENCH 1000 2000000 0 1 0 2 0 150.0 900.5 1500.0 200.0\n";
        let run = parse_wrk(out).expect("parsed");
        assert_eq!(run.requests, 1000);
        assert_eq!(run.requests_per_second, 500.0);
        assert_eq!(run.p999_us, 1500.0);
        assert_eq!((run.errors, run.non_2xx), (1, 2));
    }

    #[test]
    fn nginx_config_keeps_upstream_connections_alive() {
        let config = config(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
            Some(2),
            Path::new("/tmp/x"),
        );
        assert!(config.contains("worker_processes 2;"));
        assert!(config.contains("proxy_http_version 1.1;"));
        assert!(config.contains("proxy_set_header Connection \"\";"));
        assert!(config.contains("keepalive 512;"));
    }
}
