//! Processes the benchmark starts and what it reads about them: the bench re-executes
//! itself for the activator and the upstream (so each has its own CPU time and memory in
//! `/proc`), and reads CPU seconds from `/proc/<pid>/stat` and memory from
//! `/proc/<pid>/status`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest a child may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A copy of this binary running one of its hidden server subcommands.
pub struct SelfChild {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub stdin: ChildStdin,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

/// Starts `current_exe() args...` and waits for its `listening <addr>` line. The child
/// is killed when the handle is dropped, and exits by itself when its stdin closes.
pub async fn spawn_self(args: &[String]) -> anyhow::Result<SelfChild> {
    spawn_self_under(&[], args).await
}

/// [`spawn_self`] run by `wrapper` (e.g. `valgrind --tool=callgrind`) when not empty.
pub async fn spawn_self_under(wrapper: &[String], args: &[String]) -> anyhow::Result<SelfChild> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting zeroscale-bench {}", args.join(" ")))?;
    let pid = child.id().context("the child has a pid")?;
    let stdin = child.stdin.take().context("the child's stdin is piped")?;
    let stdout = child.stdout.take().context("the child's stdout is piped")?;
    let mut stdout = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
        .await
        .with_context(|| format!("{} did not start in time", args.join(" ")))??
        .with_context(|| format!("{} exited before listening", args.join(" ")))?;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("unexpected first line from {}: {line}", args.join(" ")))?;
    Ok(SelfChild {
        child,
        pid,
        addr,
        stdin,
        stdout,
    })
}

/// Ticks of CPU time per second (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, which is in parentheses and
/// may hold spaces: the process state first, then its parent.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU seconds `pid` has used (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let fields = stat_fields(pid)?;
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .context("short stat")?
            .parse::<f64>()
            .context("stat field")
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// CPU seconds of all of `pids` together.
pub fn cpu_seconds_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub rss_kib: u64,
    /// The peak so far (`VmHWM`).
    pub peak_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let number = line.trim().trim_end_matches("kB").trim();
        number
            .parse()
            .with_context(|| format!("{name} of {pid}: {number}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Processes whose parent is `pid` (nginx's workers).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            stat_fields(candidate)
                .ok()
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Sends `signal` (e.g. `TERM`) to `pid`, a process this bench started.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// A free port on 127.0.0.1 (for programs that must be told their port).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts connections at `addr`.
pub async fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listens at {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("cpu") >= 0.0);
        let memory = memory(pid).expect("memory");
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
    }
}
