//! End to end through the real `zeroscale dev` binary: manifests in a temporary folder,
//! the example functions as local processes, requests over loopback. Every test bounds
//! its waits and stops what it started.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// A running `zeroscale dev` and what it printed.
struct Dev {
    child: Child,
    pid: i32,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
}

/// A manifest for an example function, with the test's scaling settings.
fn manifest(name: &str, command: &str, spec: &str) -> String {
    format!(
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\n  annotations:\n    zeroscale.dev/local-command: '{command}'\nspec:\n  image: zeroscale/{name}:dev\n  terminationGracePeriodSeconds: 5\n{spec}"
    )
}

fn hello_command() -> String {
    format!("python3 -u {EXAMPLES}/hello/server.py")
}

impl Dev {
    /// Writes `manifests` (file name, content) to a fresh folder and starts
    /// `zeroscale dev` on it with a fast autoscaler tick.
    async fn start(test: &str, manifests: &[(&str, String)]) -> Self {
        Self::start_with(test, manifests, &[]).await
    }

    /// [`Dev::start`], with more command-line arguments.
    async fn start_with(test: &str, manifests: &[(&str, String)], args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("zeroscale-dev-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (file, content) in manifests {
            std::fs::write(dir.join(file), content).expect("write manifest");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeroscale"))
            .arg("dev")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--autoscaler-tick", "200ms", "--reload-period", "200ms"])
            .args(["--drain-period", "10s"])
            .args(args)
            // A state file of the test's own, never the user's.
            .env("ZEROSCALE_DEV_STATE", dir.with_extension("state.json"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("zeroscale dev starts");
        let pid = i32::try_from(child.id().expect("running")).expect("pid fits");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Self {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            seen: Vec::new(),
            dir,
        };
        let line = dev
            .wait_for("the listening address", Duration::from_secs(30), |line| {
                line.contains("listening on http://")
            })
            .await;
        let address = line
            .rsplit("http://")
            .next()
            .expect("address follows")
            .trim();
        dev.addr = address.parse().expect("a socket address");
        dev
    }

    /// The line containing `text` that dev printed before it said it listens (dev is
    /// ready, its local NATS server included, when it says so).
    fn printed_before_listening(&self, text: &str) -> String {
        self.seen
            .iter()
            .find(|line| line.contains(text))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no line with {text:?} before the listening address; output:\n{}",
                    self.seen.join("\n")
                )
            })
    }

    /// Waits until a printed line satisfies `matches`, and returns it.
    async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "zeroscale dev exited before {what}; output:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "no {what} within {within:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The processes `zeroscale dev` started that are still running.
    fn replicas(&self) -> Vec<i32> {
        children(self.pid)
    }

    /// Waits (bounded) until the number of running replicas satisfies `wanted`; a
    /// process start or exit has no other signal to wait on.
    async fn wait_for_replicas(&self, wanted: impl Fn(usize) -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        while !wanted(self.replicas().len()) {
            assert!(
                Instant::now() < deadline,
                "{} replicas after {within:?}",
                self.replicas().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        get(self.addr, host, path).await
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal zeroscale dev");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SIGKILL: `setpriv --pdeathsig` takes the replicas with it.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pids of the processes whose parent is `parent`, but for the local NATS server that
/// `zeroscale dev` starts when `nats-server` is installed (see [`nats_servers`]).
fn children(parent: i32) -> Vec<i32> {
    processes(parent)
        .into_iter()
        .filter(|pid| !is_nats_server(*pid))
        .collect()
}

/// The local NATS servers that `zeroscale dev` runs, a child of `parent`.
fn nats_servers(parent: i32) -> Vec<i32> {
    processes(parent)
        .into_iter()
        .filter(|pid| is_nats_server(*pid))
        .collect()
}

/// Whether `zeroscale dev` finds a `nats-server` to start: on PATH, or in /usr/sbin.
fn nats_installed() -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join("nats-server").is_file())
}

fn is_nats_server(pid: i32) -> bool {
    // By its command line, not its name: until it execs, a child started through
    // setpriv is named after setpriv (or zeroscale), with nats-server among its arguments.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg.ends_with(b"nats-server"))
    })
}

/// Pids of every live process whose parent is `parent`.
fn processes(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces) in parentheses.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let (state, ppid) = (fields.first()?, fields.get(1)?.parse::<i32>().ok()?);
            (ppid == parent && *state != "Z").then_some(pid)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// One HTTP/1.1 request on its own connection: status and body.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    get_with(addr, host, path, "").await
}

/// [`get`] with `headers` (each line ending in CRLF) added to the request.
async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| "no answer within 60 s".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_from_zero_answers_and_starts_one_process() {
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0}\n";
    let mut dev = Dev::start(
        "cold",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    assert!(
        dev.replicas().is_empty(),
        "at zero before the first request"
    );

    let (status, body) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from"), "{body}");
    dev.wait_for("the wake", Duration::from_secs(5), |l| {
        l.contains("hello: 0 -> 1 (wake)")
    })
    .await;
    assert_eq!(dev.replicas().len(), 1);

    // The public-domain form routes too, as the README shows.
    let (status, _) = dev
        .get("hello.default.localhost:8080", "/")
        .await
        .expect("answers");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_at_zero_all_answer() {
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0, maxReplicas: 3, containerConcurrency: 20}\n";
    let dev = Dev::start(
        "burst",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    let addr = dev.addr;
    let requests: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async move { get(addr, "hello.default", "/").await }))
        .collect();
    let mut failures = Vec::new();
    for request in requests {
        match request.await.expect("task") {
            Ok((200, _)) => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_scales_out_then_idle_scales_to_zero() {
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0, maxReplicas: 3, target: 1, stableWindow: 6s, scaleToZeroGracePeriod: 2s}\n";
    let mut dev = Dev::start(
        "scale",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    let running = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let loopers: Vec<_> = (0..6)
        .map(|_| {
            let (running, answered, addr) = (Arc::clone(&running), Arc::clone(&answered), dev.addr);
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    if let Ok((200, _)) = get(addr, "hello.default", "/?sleep=0.1").await {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    dev.wait_for(
        "a scale-out past one replica",
        Duration::from_secs(30),
        |l| {
            l.starts_with(char::is_numeric)
                && l.contains(" hello: ")
                && l.split(" -> ")
                    .nth(1)
                    .and_then(|to| to.split(' ').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    > Some(1)
        },
    )
    .await;
    dev.wait_for_replicas(|n| n >= 2, Duration::from_secs(10))
        .await;
    running.store(false, Ordering::Relaxed);
    for looper in loopers {
        looper.await.expect("looper");
    }
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "the load was answered"
    );
    dev.wait_for("the scale to zero", Duration::from_secs(40), |l| {
        l.contains(" -> 0 (idle 2s)")
    })
    .await;
    dev.wait_for_replicas(|n| n == 0, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_holds_requests_until_it_listens() {
    let spec = "  readinessPath: /healthz\n  env: [{name: STARTUP_DELAY_SECONDS, value: \"1\"}]\n  scaling: {initialReplicas: 0}\n";
    let command = format!("python3 -u {EXAMPLES}/slow-start/server.py");
    let dev = Dev::start(
        "slow",
        &[("slow.yaml", manifest("slow-start", &command, spec))],
    )
    .await;
    let started = Instant::now();
    let held: Vec<_> = (0..5)
        .map(|_| {
            let addr = dev.addr;
            tokio::spawn(async move { get(addr, "slow-start.default", "/").await })
        })
        .collect();
    for request in held {
        let (status, body) = request.await.expect("task").expect("answers");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("slow-start"), "{body}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered only once the process listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_replaced_and_only_its_requests_fail() {
    let spec = "  readinessPath: /healthz\n  scaling: {minReplicas: 2, maxReplicas: 2}\n";
    let mut dev = Dev::start(
        "kill",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    for _ in 0..2 {
        dev.wait_for("a ready replica", Duration::from_secs(15), |l| {
            l.contains("] ready on ")
        })
        .await;
    }
    let before: HashSet<i32> = dev.replicas().into_iter().collect();
    assert_eq!(before.len(), 2);

    let running = Arc::new(AtomicBool::new(true));
    let loopers = 4;
    let tasks: Vec<_> = (0..loopers)
        .map(|_| {
            let (running, addr) = (Arc::clone(&running), dev.addr);
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while running.load(Ordering::Relaxed) {
                    match get(addr, "hello.default", "/?sleep=0.05").await {
                        Ok((200, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let victim = *before.iter().next().expect("two replicas");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a replica");
    dev.wait_for("the replacement", Duration::from_secs(10), |l| {
        l.contains("exited unexpectedly")
    })
    .await;
    dev.wait_for(
        "the replacement to be ready",
        Duration::from_secs(15),
        |l| l.contains("] ready on "),
    )
    .await;
    // Keep the load on the replacement for a moment.
    let mut after_count = 0;
    while after_count < 20 {
        if let Ok((200, _)) = dev.get("hello.default", "/").await {
            after_count += 1;
        }
    }
    running.store(false, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in tasks {
        let (o, f) = task.await.expect("looper");
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 0);
    // Each looper has at most one request in flight, so at most that many were on the
    // killed process; requests not yet sent to it are retried on the other replica.
    assert!(
        failed.len() <= loopers,
        "{} failed (of {}): {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(failed.iter().all(|f| f.contains("502")), "{failed:?}");
    let after: HashSet<i32> = dev.replicas().into_iter().collect();
    assert_eq!(after.len(), 2, "replaced");
    assert!(!after.contains(&victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_fails_held_requests_fast() {
    let missing = manifest(
        "missing",
        "no-such-command-for-zeroscale --port 1",
        "  scaling: {initialReplicas: 0}\n",
    );
    let crashing = manifest(
        "crashing",
        "sh -c \"echo boom: missing config >&2; exit 3\"",
        "  scaling: {initialReplicas: 0}\n",
    );
    let dev = Dev::start(
        "fail",
        &[("missing.yaml", missing), ("crashing.yaml", crashing)],
    )
    .await;
    for (host, reason) in [
        ("missing.default", "no-such-command-for-zeroscale"),
        ("crashing.default", "boom: missing config"),
    ] {
        let started = Instant::now();
        let (status, body) = dev.get(host, "/").await.expect("answers");
        assert_eq!(status, 503, "{host}: {body}");
        assert!(body.contains(reason), "{host}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{host} failed fast, not at the 60 s queue deadline"
        );
    }
    assert!(dev.replicas().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_held_requests_and_leaves_no_process() {
    let spec = "  readinessPath: /healthz\n  env: [{name: STARTUP_DELAY_SECONDS, value: \"1\"}]\n  scaling: {initialReplicas: 0}\n";
    let command = format!("python3 -u {EXAMPLES}/slow-start/server.py");
    let mut dev = Dev::start(
        "term",
        &[("slow.yaml", manifest("slow-start", &command, spec))],
    )
    .await;
    let addr = dev.addr;
    let held = tokio::spawn(async move { get(addr, "slow-start.default", "/").await });
    dev.wait_for("the wake", Duration::from_secs(10), |l| {
        l.contains("slow-start: 0 -> 1 (wake)")
    })
    .await;
    dev.wait_for_replicas(|n| n == 1, Duration::from_secs(5))
        .await;
    let replicas = dev.replicas();

    dev.signal(Signal::SIGTERM);
    let (status, body) = held
        .await
        .expect("task")
        .expect("the held request is answered");
    assert_eq!(status, 200, "{body}");
    let exit = timeout(Duration::from_secs(30), dev.child.wait())
        .await
        .expect("exits after draining")
        .expect("status");
    assert!(exit.success(), "{exit}");
    assert!(
        replicas.iter().all(|&pid| !alive(pid)),
        "no replica outlives it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_zeroscale_dev_takes_its_processes_with_it() {
    if !Path::new("/usr/bin/setpriv").exists() && !Path::new("/bin/setpriv").exists() {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    }
    let spec = "  readinessPath: /healthz\n";
    let mut dev = Dev::start(
        "sigkill",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    dev.wait_for("a ready replica", Duration::from_secs(15), |l| {
        l.contains("] ready on ")
    })
    .await;
    let replicas = dev.replicas();
    assert_eq!(replicas.len(), 1);
    dev.signal(Signal::SIGKILL);
    let _ = dev.child.wait().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "replica {replicas:?} outlived zeroscale dev"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_manifest_is_reloaded_and_a_removed_one_stops_its_function() {
    let spec = "  readinessPath: /healthz\n";
    let mut dev = Dev::start(
        "reload",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    dev.wait_for("a ready replica", Duration::from_secs(15), |l| {
        l.contains("] ready on ")
    })
    .await;
    let changed = "  readinessPath: /healthz\n  env: [{name: GREETING, value: changed}]\n";
    std::fs::write(
        dev.dir.join("hello.yaml"),
        manifest("hello", &hello_command(), changed),
    )
    .expect("edit");
    dev.wait_for("the reload", Duration::from_secs(10), |l| {
        l.contains("default/hello: reloaded")
    })
    .await;
    dev.wait_for("the restarted replica", Duration::from_secs(15), |l| {
        l.contains("] ready on ")
    })
    .await;
    let (status, _) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 200);

    std::fs::remove_file(dev.dir.join("hello.yaml")).expect("remove");
    dev.wait_for("the removal", Duration::from_secs(10), |l| {
        l.contains("manifest removed")
    })
    .await;
    dev.wait_for_replicas(|n| n == 0, Duration::from_secs(10))
        .await;
    let (status, body) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_host_and_path_prefix_as_in_a_cluster() {
    let spec =
        "  readinessPath: /healthz\n  routing: {hosts: [api.example.test], pathPrefix: /api}\n";
    let mut dev = Dev::start(
        "routing",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    dev.wait_for("the printed URL", Duration::from_secs(5), |l| {
        l.contains("http://hello.default.localhost:") && l.contains("/api")
    })
    .await;
    for host in [
        "api.example.test",
        "hello.default",
        "hello.default.svc.cluster.local",
    ] {
        let (status, body) = dev.get(host, "/api/users").await.expect("answers");
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, body) = dev.get("hello.default", "/other").await.expect("answers");
    assert_eq!(status, 404, "outside the prefix: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_yaml_is_reported_with_its_place_and_the_other_functions_keep_serving() {
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0}\n";
    let fixed = manifest("fixed", &hello_command(), spec);
    let broken = fixed.replace("spec:\n", "spec: [\n");
    let mut dev = Dev::start(
        "broken",
        &[
            ("hello.yaml", manifest("hello", &hello_command(), spec)),
            ("fixed.yaml", broken.clone()),
        ],
    )
    .await;
    let report = dev
        .wait_for("the broken file", Duration::from_secs(10), |l| {
            l.contains("fixed.yaml:")
        })
        .await;
    let (_, place) = report.split_once("fixed.yaml:").expect("names the file");
    let mut numbers = place.splitn(3, ':');
    let line: u32 = numbers.next().and_then(|n| n.parse().ok()).expect("a line");
    let column: u32 = numbers
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a column");
    assert!(line >= 7 && column >= 1, "{report}");
    assert!(report.ends_with("not served until it is fixed"), "{report}");
    let (status, body) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 200, "the other Function serves: {body}");

    std::fs::write(dev.dir.join("fixed.yaml"), &fixed).expect("fix");
    dev.wait_for("the fixed Function's URL", Duration::from_secs(10), |l| {
        l.contains("fixed.default: http://")
    })
    .await;
    let (status, body) = dev.get("fixed.default", "/").await.expect("answers");
    assert_eq!(status, 200, "{body}");

    // Broken again, with something more to read so the size changes: the last good
    // version keeps serving, and says so.
    std::fs::write(dev.dir.join("fixed.yaml"), broken + "# again\n").expect("break");
    dev.wait_for("the broken file again", Duration::from_secs(10), |l| {
        l.contains("fixed.yaml:") && l.contains("keeping the last good version of default/fixed")
    })
    .await;
    let (status, body) = dev.get("fixed.default", "/").await.expect("answers");
    assert_eq!(status, 200, "{body}");
    let never = "keeping the last good version";
    let first = dev.seen.iter().position(|l| l.contains(never));
    assert_eq!(first, Some(dev.seen.len() - 1), "{:#?}", dev.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_cannot_start_gets_its_reason_instead_of_a_url() {
    let missing = manifest("missing", "no-such-command-for-zeroscale", "");
    let crashing = manifest(
        "crashing",
        "sh -c \"echo boom: missing config >&2; exit 3\"",
        "",
    );
    let hello = manifest("hello", &hello_command(), "  readinessPath: /healthz\n");
    let mut dev = Dev::start(
        "reasons",
        &[
            ("missing.yaml", missing),
            ("crashing.yaml", crashing),
            ("hello.yaml", hello),
        ],
    )
    .await;
    let mut waiting = vec![
        "missing: cannot start",
        "crashing: cannot start",
        "hello.default: http://",
    ];
    while !waiting.is_empty() {
        let line = dev
            .wait_for(
                "every Function's reason or URL",
                Duration::from_secs(20),
                |l| waiting.iter().any(|w| l.contains(w)),
            )
            .await;
        waiting.retain(|w| !line.contains(w));
    }
    let reasons = dev.seen.join("\n");
    assert!(
        reasons.contains("no-such-command-for-zeroscale"),
        "{reasons}"
    );
    assert!(reasons.contains("boom: missing config"), "{reasons}");
    assert!(
        !reasons.contains("missing.default: http") && !reasons.contains("crashing.default: http"),
        "{reasons}"
    );
    let ready = dev
        .seen
        .iter()
        .position(|l| l.contains("hello[0] ready on"));
    let url = dev
        .seen
        .iter()
        .position(|l| l.contains("hello.default: http://"));
    assert!(ready < url, "the URL once it is ready: {reasons}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_example_says_redis_is_optional_when_none_runs() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let spec = format!(
        "  readinessPath: /healthz\n  env: [{{name: REDIS_URL, value: \"redis://127.0.0.1:{closed}\"}}]\n"
    );
    let command = format!("python3 -u {EXAMPLES}/users/server.py");
    let mut dev = Dev::start(
        "users",
        &[("users.yaml", manifest("users", &command, &spec))],
    )
    .await;
    let line = dev
        .wait_for("the store report", Duration::from_secs(15), |l| {
            l.starts_with("users[0] | user store")
        })
        .await;
    assert!(line.contains("expected"), "{line}");
    assert!(line.contains("optional"), "{line}");
}

/// A Function for usage tests: `/fail` answers 500, `/slow` answers after 200 ms, any
/// other path at once.
const FLAKY: &str = r#"
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.2)
        status = 500 if self.path.startswith("/fail") else 200
        self.send_response(status)
        self.send_header("Content-Length", "3")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// `zeroscale usage` against `dev`, with `args`.
async fn usage(dev: &Dev, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_zeroscale"))
        .arg("usage")
        .args(args)
        .env("ZEROSCALE_DEV_STATE", dev.dir.with_extension("state.json"))
        .output()
        .await
        .expect("zeroscale usage runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_known_traffic_exactly_and_its_seconds_within_tolerance() {
    let spec =
        "  resources: {requests: {cpu: 500m, memory: 256Mi}}\n  scaling: {initialReplicas: 0}\n";
    let dev = Dev::start(
        "usage",
        &[
            ("flaky.py", FLAKY.to_owned()),
            ("flaky.yaml", manifest("flaky", "python3 -u flaky.py", spec)),
        ],
    )
    .await;
    // One cold start (a slow request), then 9 quick, 3 failing and 2 more slow ones.
    let mut sent = vec!["/slow"];
    sent.extend(["/"; 9]);
    sent.extend(["/fail"; 3]);
    sent.extend(["/slow"; 2]);
    for path in &sent {
        dev.get("flaky.default", path).await.expect("answers");
    }

    // The autoscaler tick (200 ms) carries the activator's counters into the meter.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let json = usage(&dev, &["flaky", "-o", "json"]).await;
        let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let counted = &report["functions"][0]["invocations"];
        if counted["success"].as_u64().unwrap_or(0) + counted["functionError"].as_u64().unwrap_or(0)
            == 15
        {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "usage never counted 15 requests: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let flaky = &report["functions"][0];
    let number = |value: &serde_json::Value| value.as_f64().expect("a number");
    assert_eq!(flaky["invocations"]["success"], 12, "{flaky}");
    assert_eq!(flaky["invocations"]["functionError"], 3, "{flaky}");
    assert_eq!(flaky["invocations"]["refused"], 0, "{flaky}");
    assert_eq!(flaky["coldStarts"], 1, "{flaky}");
    // Seconds: three 200 ms requests plus at most 100 ms of overhead per request.
    let execution = number(&flaky["executionSeconds"]);
    assert!((0.6..2.1).contains(&execution), "{flaky}");
    let cold = number(&flaky["coldStartSeconds"]);
    assert!(cold > 0.0 && cold < 30.0, "{flaky}");
    let busy = number(&flaky["replicaSeconds"]["busy"]);
    let idle = number(&flaky["replicaSeconds"]["idle"]);
    // A pod turns busy a moment before its permit is handed out.
    assert!(busy <= execution + 0.01, "{flaky}");
    // Reserved: replica-seconds times the pod's requests.
    let replica_seconds = busy + idle;
    assert!(replica_seconds > 0.0, "{flaky}");
    let vcpu = number(&flaky["reserved"]["vcpuSeconds"]);
    let gib = number(&flaky["reserved"]["gibSeconds"]);
    assert!((vcpu - replica_seconds * 0.5).abs() < 1e-6, "{flaky}");
    assert!((gib - replica_seconds * 0.25).abs() < 1e-6, "{flaky}");

    let table = usage(&dev, &[]).await;
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("flaky "))
        .unwrap_or_else(|| panic!("a row for flaky in:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..4], ["12", "3", "0"], "{table}");
    assert_eq!(row[5], "1", "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_server_installed_dev_runs_a_local_jetstream_and_stops_it_on_exit() {
    assert!(
        nats_installed(),
        "this test needs nats-server: run hack/install-tools.sh (or apt-get install nats-server)"
    );
    let mut dev = Dev::start("nats", &[]).await;
    let line = dev.printed_before_listening("local NATS JetStream at nats://");
    let address: SocketAddr = line
        .split("nats://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address follows")
        .parse()
        .expect("a socket address");
    let store = PathBuf::from(
        line.rsplit_once("(store in ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .expect("the store folder is named"),
    );
    assert!(store.is_dir(), "the store is a temporary folder");
    let servers = nats_servers(dev.pid);
    assert_eq!(
        servers.len(),
        1,
        "one nats-server, a child of zeroscale dev"
    );
    TcpStream::connect(address)
        .await
        .expect("the server accepts connections");

    dev.signal(Signal::SIGTERM);
    let status = timeout(Duration::from_secs(30), dev.child.wait())
        .await
        .expect("zeroscale dev stops")
        .expect("exit status");
    assert!(status.success(), "{status}");
    assert!(
        !alive(servers[0]),
        "nats-server is stopped with zeroscale dev"
    );
    assert!(!store.exists(), "its store is removed");
}

/// One HTTP/1.1 request with extra header lines (`Name: value\r\n` each) on its own
/// connection: status, head and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream
            .write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("sends");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("reads");
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, head.to_owned(), body.to_owned())
    };
    timeout(Duration::from_secs(60), exchange)
        .await
        .expect("an answer within 60 s")
}

/// Sends `head` (a whole HTTP/1.1 request head with `Connection: close`) on its own
/// connection and returns the response as text.
async fn exchange(addr: SocketAddr, head: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("response");
        String::from_utf8_lossy(&response).into_owned()
    };
    timeout(Duration::from_secs(60), exchange)
        .await
        .expect("an answer within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_server_installed_an_async_call_is_accepted_with_202_and_delivered() {
    assert!(
        nats_installed(),
        "this test needs nats-server: run hack/install-tools.sh (or apt-get install nats-server)"
    );
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0}\n";
    let dev = Dev::start(
        "async",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
    )
    .await;
    dev.printed_before_listening("local NATS JetStream at nats://");

    // Until dev's NATS client has connected, just after start, a call is refused with
    // 503, never accepted and lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (head, body) = loop {
        let (status, head, body) = request(
            dev.addr,
            "POST",
            "hello.default",
            "/jobs",
            "Prefer: respond-async\r\n",
        )
        .await;
        if status == 202 {
            break (head, body);
        }
        assert_eq!(status, 503, "{head}\n{body}");
        assert!(Instant::now() < deadline, "never accepted: {head}\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(head.contains(" 202 "), "{head}\n{body}");
    let location = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .expect("a Location header");
    assert!(location.starts_with("/.zeroscale/calls/"), "{location}");

    // Delivered through the activator: it wakes the Function and succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = request(dev.addr, "GET", "hello.default", &location, "").await;
        if status == 200 && body.contains("\"succeeded\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within 60 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dev.replicas().len(), 1, "the call woke the Function");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_at_zero_starts_nothing_and_a_burst_over_the_limit_gets_429() {
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0}\n  requests:\n    rateLimit: {requestsPerSecond: 0.01, burst: 2}\n  routing:\n    cors: {allowOrigins: ['https://app.example.com']}\n";
    let mut dev = Dev::start_with(
        "gateway",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
        &["--access-log"],
    )
    .await;

    let preflight = exchange(
        dev.addr,
        "OPTIONS / HTTP/1.1\r\nHost: hello.default\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(preflight.starts_with("http/1.1 204"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: https://app.example.com"),
        "{preflight}"
    );
    assert!(dev.replicas().is_empty(), "a preflight wakes nothing");

    for _ in 0..2 {
        let (status, body) = dev.get("hello.default", "/").await.expect("answers");
        assert_eq!(status, 200, "{body}");
    }
    let refused = exchange(
        dev.addr,
        "GET /?q=secret HTTP/1.1\r\nHost: hello.default\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(refused.starts_with("http/1.1 429"), "{refused}");
    assert!(refused.contains("\r\nretry-after: "), "{refused}");
    assert!(
        refused.contains("\r\nratelimit-policy: \"function\";q=2;"),
        "{refused}"
    );
    assert!(
        refused.contains("\r\nratelimit: \"function\";r=0;t="),
        "{refused}"
    );

    let line = dev
        .wait_for("an access log line", Duration::from_secs(10), |line| {
            line.starts_with('{') && line.contains("\"status\":200")
        })
        .await;
    assert!(line.contains("\"function\":\"default/hello\""), "{line}");
    assert!(!line.contains("secret"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_request_reach_the_otlp_endpoint() {
    // A minimal OTLP/HTTP receiver: each post's request text, answered with 200.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", receiver.local_addr().expect("address"));
    let (posted, mut posts) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = receiver.accept().await {
            let posted = posted.clone();
            tokio::spawn(async move {
                let mut text = Vec::new();
                let mut buffer = [0u8; 8192];
                // Until the whole body (Content-Length) is in.
                let complete = |text: &[u8]| {
                    let text = String::from_utf8_lossy(text).to_ascii_lowercase();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        return false;
                    };
                    head.lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .and_then(|length| length.trim().parse::<usize>().ok())
                        .is_some_and(|length| body.len() >= length)
                };
                while !complete(&text) {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => text.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                let _ = posted.send(String::from_utf8_lossy(&text).into_owned());
            });
        }
    });
    let spec = "  readinessPath: /healthz\n";
    let dev = Dev::start_with(
        "spans",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
        &["--otlp-endpoint", &endpoint],
    )
    .await;
    let (status, body) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 200, "{body}");
    let post = timeout(Duration::from_secs(30), posts.recv())
        .await
        .expect("spans within 30 s")
        .expect("a post");
    assert!(post.starts_with("POST /v1/traces "), "{post}");
    assert!(
        post.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{post}"
    );
    assert!(post.contains("\"name\":\"request\""), "{post}");
    assert!(post.contains("default/hello"), "{post}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_the_secrets_folder_admit_callers_and_refused_ones_never_wake() {
    // Read before the listener serves its first request.
    let secrets =
        std::env::temp_dir().join(format!("zeroscale-dev-secrets-{}", std::process::id()));
    std::fs::create_dir_all(secrets.join("hello-keys")).expect("secret dir");
    std::fs::write(secrets.join("hello-keys/alice"), "s3cret\n").expect("key");
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0}\n  auth:\n    apiKeys:\n      secretRef: {name: hello-keys}\n";
    let dev = Dev::start_with(
        "apikeys",
        &[("hello.yaml", manifest("hello", &hello_command(), spec))],
        &["--secrets-dir", &secrets.to_string_lossy()],
    )
    .await;

    let (status, _) = dev.get("hello.default", "/").await.expect("answers");
    assert_eq!(status, 401, "no key");
    let wrong = "Authorization: Bearer nope\r\n";
    let (status, _) = get_with(dev.addr, "hello.default", "/", wrong)
        .await
        .expect("answers");
    assert_eq!(status, 401, "a key not in the folder");
    assert!(
        dev.replicas().is_empty(),
        "a refused request woke the Function"
    );

    let right = "Authorization: Bearer s3cret\r\n";
    let (status, body) = get_with(dev.addr, "hello.default", "/", right)
        .await
        .expect("answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from"), "{body}");
    let _ = std::fs::remove_dir_all(&secrets);
}

/// A JWKS document served on 127.0.0.1:0 to every connection, and a token signed by its
/// one Ed25519 key (`kid` "dev") for issuer `https://issuer.test`, audience `hello`.
async fn jwks_and_token() -> (String, String) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    let document = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"dev","x":"{x}"}}]}}"#);
    let exp = jiff::Timestamp::now().as_second() + 300;
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"dev"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"https://issuer.test","aud":"hello","sub":"alice","exp":{exp}}}"#
        ))
    );
    let token = format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()))
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/jwks.json",
        listener.local_addr().expect("address")
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_checked_against_a_local_jwks_url_admits_the_caller() {
    let (url, token) = jwks_and_token().await;
    let spec = format!(
        "  readinessPath: /healthz\n  scaling: {{initialReplicas: 0}}\n  auth:\n    jwt:\n      issuer: https://issuer.test\n      audiences: [hello]\n      jwksUrl: {url}\n"
    );
    let dev = Dev::start(
        "jwt",
        &[("hello.yaml", manifest("hello", &hello_command(), &spec))],
    )
    .await;

    let (status, _) = get_with(
        dev.addr,
        "hello.default",
        "/",
        "Authorization: Bearer e30.e30.e30\r\n",
    )
    .await
    .expect("answers");
    assert_eq!(status, 401, "a token that is no token");
    assert!(
        dev.replicas().is_empty(),
        "a refused request woke the Function"
    );

    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (status, body) = get_with(dev.addr, "hello.default", "/", &bearer)
        .await
        .expect("answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_server_installed_a_queue_backlog_scales_its_function_out_from_zero() {
    assert!(
        nats_installed(),
        "this test needs nats-server: run hack/install-tools.sh (or apt-get install nats-server)"
    );
    // Each message keeps a replica busy for 2 s, so the 6 published wait long enough
    // for the autoscaler to see them: 2 per replica asks for 3 replicas.
    let spec = "  readinessPath: /healthz\n  scaling: {initialReplicas: 0, maxReplicas: 10}\n  triggers:\n    queues:\n    - {name: orders, stream: ORDERS, subject: 'orders.>', path: '/?sleep=2', target: 2}\n";
    let mut dev = Dev::start(
        "backlog",
        &[("orders.yaml", manifest("orders", &hello_command(), spec))],
    )
    .await;
    let line = dev.printed_before_listening("local NATS JetStream at nats://");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("nats://"))
        .expect("the URL follows")
        .to_owned();
    assert!(dev.replicas().is_empty(), "at zero before any message");

    // The stream is the user's; the trigger's consumer is created once it exists.
    let jetstream = async_nats::jetstream::new(
        async_nats::connect(&url)
            .await
            .expect("connects to dev's NATS"),
    );
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream created");
    for n in 0..6 {
        jetstream
            .publish(format!("orders.{n}"), "order".into())
            .await
            .expect("published")
            .await
            .expect("stored");
    }
    dev.wait_for(
        "a scale-out for the backlog",
        Duration::from_secs(30),
        |line| line.contains("orders: ") && line.ends_with("-> 3 (queue backlog)"),
    )
    .await;
    dev.wait_for_replicas(|replicas| replicas == 3, Duration::from_secs(30))
        .await;
}
