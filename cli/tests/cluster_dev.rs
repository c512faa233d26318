//! `list`, `describe` and `invoke` end to end against a real `zeroscale dev` started by
//! the test, found through the state file it writes: the example hello function as a
//! local process, starting at zero so the first invoke is a cold start.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const ZEROSCALE: &str = env!("CARGO_BIN_EXE_zeroscale");

/// A running `zeroscale dev` whose state file is `state`.
struct Dev {
    child: Child,
    dir: PathBuf,
    state: PathBuf,
}

impl Dev {
    async fn start(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zeroscale-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let manifest = format!(
            "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata:\n  name: hello\n  annotations:\n    zeroscale.dev/local-command: 'python3 -u {EXAMPLES}/hello/server.py'\nspec:\n  image: zeroscale/hello:dev\n  readinessPath: /healthz\n  terminationGracePeriodSeconds: 5\n  scaling: {{minReplicas: 0, initialReplicas: 0}}\n"
        );
        std::fs::write(dir.join("hello.yaml"), manifest).expect("write manifest");
        let state = dir.join("state.json");
        let child = Command::new(ZEROSCALE)
            .arg("dev")
            .arg(dir.join("hello.yaml"))
            .args(["--listen", "127.0.0.1:0", "--autoscaler-tick", "200ms"])
            .env("ZEROSCALE_DEV_STATE", &state)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("zeroscale dev starts");
        let dev = Self { child, dir, state };
        // The state file is written once every listener is bound; nothing else signals it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dev.state.exists() {
            assert!(Instant::now() < deadline, "no state file within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dev
    }

    /// Runs `zeroscale ARGS` against this `zeroscale dev`.
    async fn cli(&self, args: &[&str]) -> Output {
        let run = Command::new(ZEROSCALE)
            .args(args)
            .env("ZEROSCALE_DEV_STATE", &self.state)
            .env("KUBECONFIG", self.dir.join("no-kubeconfig"))
            .output();
        timeout(Duration::from_secs(60), run)
            .await
            .expect("the command ends within 60 s")
            .expect("the command runs")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output) -> bool {
    output.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_describe_and_invoke_work_against_a_running_dev() {
    let mut dev = Dev::start("loop").await;

    let listed = dev.cli(&["list", "--dev"]).await;
    assert!(succeeded(&listed), "list failed: {}", stderr(&listed));
    let table = stdout(&listed);
    let row = table
        .lines()
        .find(|line| line.contains(" hello "))
        .unwrap_or_else(|| panic!("no hello row in:\n{table}"));
    assert!(
        row.contains("True ScaledToZero") && row.contains(" 0/0 "),
        "{row}"
    );

    let invoked = dev.cli(&["invoke", "hello", "--dev", "-v"]).await;
    assert!(succeeded(&invoked), "invoke failed: {}", stderr(&invoked));
    assert!(
        stdout(&invoked).starts_with("hello from "),
        "{}",
        stdout(&invoked)
    );
    assert!(
        stderr(&invoked).contains("* cold start: the Function was at zero; answered after "),
        "{}",
        stderr(&invoked)
    );

    // The activator answers as soon as its own probe reaches the new replica; the
    // runtime's count of ready replicas follows at its next probe, so look until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let described = dev.cli(&["describe", "hello", "--dev"]).await;
        assert!(
            succeeded(&described),
            "describe failed: {}",
            stderr(&described)
        );
        let page = stdout(&described);
        if page.contains("Replicas:    1 ready / 1 desired")
            || tokio::time::Instant::now() > deadline
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("Replicas:    1 ready / 1 desired"), "{page}");
    assert!(page.contains("Cold starts:   1 (p50 "), "{page}");

    let missing = dev.cli(&["describe", "helo", "--dev"]).await;
    assert!(!succeeded(&missing));
    assert_eq!(
        stderr(&missing),
        "zeroscale: Function helo not found in namespace default; did you mean hello?\n"
    );

    // On exit the state file goes, so a later `--dev` does not find a dead one.
    let pid = dev.child.id().expect("running");
    kill(
        Pid::from_raw(i32::try_from(pid).expect("pid fits")),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    timeout(Duration::from_secs(30), dev.child.wait())
        .await
        .expect("zeroscale dev stops within 30 s")
        .expect("exit status");
    assert!(!Path::new(&dev.state).exists(), "state file left behind");
    let gone = dev.cli(&["list", "--dev"]).await;
    assert!(!succeeded(&gone));
    assert!(
        stderr(&gone).contains("no running `zeroscale dev` found"),
        "{}",
        stderr(&gone)
    );
}
