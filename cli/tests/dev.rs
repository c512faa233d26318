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

    /// [`Dev::start`] with `args` added to the command line.
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

/// Pids of the processes whose parent is `parent`.
fn children(parent: i32) -> Vec<i32> {
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
