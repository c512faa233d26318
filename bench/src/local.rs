//! Local mode through the real `zeroscale dev` binary and the `hello` example (a Python
//! process): the cold start from zero as a user sees it (first byte after the request,
//! process start included), and the autoscaler's answer to a load step (time to the
//! scale-up decision, and until the wanted replicas are ready).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client;
use crate::report::{Row, Section, median, percentile};

/// What the local scenario runs.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Cold starts of hello from zero.
    pub cold_runs: usize,
    /// Concurrent clients of the load step; with a target of one request per replica,
    /// also the replicas the step should end at.
    pub step_clients: usize,
}

const SECTION: &str = "local";
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

pub async fn run(config: &LocalConfig, dir: &Path) -> anyhow::Result<Section> {
    let zeroscale = zeroscale_binary().await?;
    let cold = cold_starts(&zeroscale, dir, config.cold_runs).await?;
    let step = load_step(&zeroscale, dir, config.step_clients).await?;

    let ms = |v: f64| format!("{v:.0} ms");
    let first_byte_p50 = median(&cold.first_byte_ms);
    let ready_p50 = median(&cold.ready_ms);
    let rows = vec![
        Row::info(
            SECTION,
            &format!(
                "hello from zero, first byte, p50 ({} runs)",
                cold.first_byte_ms.len()
            ),
            ms(first_byte_p50),
        ),
        Row::info(
            SECTION,
            "hello from zero, first byte, p95",
            ms(percentile(&cold.first_byte_ms, 95.0)),
        ),
        Row::info(
            SECTION,
            "of which python3 start to ready, p50",
            ms(ready_p50),
        ),
        Row::info(
            SECTION,
            &format!(
                "load step 0 -> {} clients: first scale-up decision",
                config.step_clients
            ),
            ms(step.decision_ms),
        ),
        Row::info(
            SECTION,
            &format!("load step: {} replicas ready", step.replicas),
            ms(step.ready_ms),
        ),
    ];
    Ok(Section {
        name: SECTION,
        data: json!({
            "cold_start_first_byte_ms": cold.first_byte_ms,
            "cold_start_process_ready_ms": cold.ready_ms,
            "load_step": {
                "clients": config.step_clients,
                "decision_ms": step.decision_ms,
                "replicas": step.replicas,
                "ready_ms": step.ready_ms,
            },
        }),
        rows,
        hard_errors: cold.errors,
    })
}

/// The `zeroscale` binary built next to this one, built first when missing.
async fn zeroscale_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()
        .context("finding the bench's own path")?
        .with_file_name("zeroscale");
    if !path.is_file() {
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.args(["build", "-q", "-p", "zeroscale-cli"]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let status = cargo.status().await.context("running cargo build")?;
        if !status.success() || !path.is_file() {
            bail!(
                "no {}: build it with cargo build --release -p zeroscale-cli",
                path.display()
            );
        }
    }
    Ok(path)
}

/// A running `zeroscale dev` and its output lines, each stamped when read.
struct Dev {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Dev {
    async fn start(zeroscale: &Path, manifest: &Path, tick: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(zeroscale)
            .arg("dev")
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--autoscaler-tick", tick])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting zeroscale dev")?;
        let stdout = child.stdout.take().context("zeroscale dev's stdout")?;
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if sender.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        let mut dev = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let (_, line) = dev.wait_for(|l| l.contains("listening on http://")).await?;
        dev.addr = line
            .rsplit("http://")
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .context("zeroscale dev's address")?;
        Ok(dev)
    }

    /// The next line matching `wanted`, and when it was printed (within 60 s).
    async fn wait_for(
        &mut self,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((at, line))) if wanted(&line) => return Ok((at, line)),
                Ok(Some(_)) => {}
                Ok(None) => bail!("zeroscale dev exited"),
                Err(_) => bail!("zeroscale dev printed nothing expected within 60 s"),
            }
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn write_manifest(dir: &Path, file: &str, scaling: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    let text = format!(
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata:\n  name: hello\n  annotations:\n    zeroscale.dev/local-command: 'python3 -u {EXAMPLES}/hello/server.py'\nspec:\n  image: zeroscale/hello:dev\n  readinessPath: /healthz\n  scaling: {scaling}\n"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

struct ColdStarts {
    first_byte_ms: Vec<f64>,
    ready_ms: Vec<f64>,
    errors: Vec<String>,
}

/// Requests hello at zero `runs` times, waiting for it to be back at zero (no process)
/// between runs.
async fn cold_starts(zeroscale: &Path, dir: &Path, runs: usize) -> anyhow::Result<ColdStarts> {
    let manifest = write_manifest(
        dir,
        "cold.yaml",
        "{initialReplicas: 0, scaleToZeroGracePeriod: 1s}",
    )?;
    let mut dev = Dev::start(zeroscale, &manifest, "100ms").await?;
    let mut cold = ColdStarts {
        first_byte_ms: Vec::new(),
        ready_ms: Vec::new(),
        errors: Vec::new(),
    };
    for run in 0..runs {
        let sent = Instant::now();
        let answer = client::get(dev.addr, "hello.default").await;
        match answer {
            Ok(answer) if answer.status == 200 => cold
                .first_byte_ms
                .push((answer.first_byte - sent).as_secs_f64() * 1000.0),
            Ok(answer) => cold
                .errors
                .push(format!("cold start {run}: status {}", answer.status)),
            Err(error) => cold.errors.push(format!("cold start {run}: {error:#}")),
        }
        let (_, ready) = dev.wait_for(|l| l.contains("hello[0] ready on")).await?;
        if let Some(ms) = ready
            .rsplit("after ")
            .next()
            .and_then(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
        {
            cold.ready_ms.push(ms);
        }
        dev.wait_for(|l| l.contains("hello[0] stopped")).await?;
    }
    dev.stop().await;
    Ok(cold)
}

struct LoadStep {
    decision_ms: f64,
    replicas: usize,
    ready_ms: f64,
}

/// One warm replica, then `clients` requests in flight at all times (each answered
/// after 500 ms); target one per replica, at most `clients` replicas.
async fn load_step(zeroscale: &Path, dir: &Path, clients: usize) -> anyhow::Result<LoadStep> {
    let manifest = write_manifest(
        dir,
        "step.yaml",
        &format!("{{minReplicas: 1, maxReplicas: {clients}, target: 1}}"),
    )?;
    let mut dev = Dev::start(zeroscale, &manifest, "1s").await?;
    dev.wait_for(|l| l.contains("hello[0] ready on")).await?;

    let running = Arc::new(AtomicBool::new(true));
    let step = Instant::now();
    let loopers: Vec<_> = (0..clients)
        .map(|_| {
            let (running, addr) = (Arc::clone(&running), dev.addr);
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let _ = client::get_target(addr, "hello.default", "/?sleep=0.5").await;
                }
            })
        })
        .collect();
    let (decided, _) = dev.wait_for(|l| l.contains("hello: 1 -> ")).await?;
    let mut ready = 1;
    let mut last_ready = decided;
    while ready < clients {
        let (at, _) = dev.wait_for(|l| l.contains("] ready on")).await?;
        ready += 1;
        last_ready = at;
    }
    running.store(false, Ordering::Relaxed);
    for looper in loopers {
        let _ = looper.await;
    }
    dev.stop().await;
    Ok(LoadStep {
        decision_ms: (decided - step).as_secs_f64() * 1000.0,
        replicas: clients,
        ready_ms: (last_ready - step).as_secs_f64() * 1000.0,
    })
}
