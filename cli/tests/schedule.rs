//! Schedule triggers in `zeroscale dev`: a tick wakes a Function at zero through the
//! in-process activator. The test runs the schedulers' clock 60 times as fast (a
//! test-only environment variable), so a schedule of every minute ticks every second;
//! everything else, the HTTP call through the activator included, is the real path.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_wakes_a_function_at_zero_in_zeroscale_dev() {
    let dir = std::env::temp_dir().join(format!("zeroscale-dev-schedule-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let manifest = format!(
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata:\n  name: hello\n  annotations:\n    zeroscale.dev/local-command: 'python3 -u {EXAMPLES}/hello/server.py'\nspec:\n  image: zeroscale/hello:dev\n  terminationGracePeriodSeconds: 5\n  readinessPath: /healthz\n  scaling: {{initialReplicas: 0}}\n  triggers:\n    schedules:\n    - name: every-minute\n      cron: '* * * * *'\n      path: /report\n"
    );
    std::fs::write(dir.join("hello.yaml"), manifest).expect("write manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeroscale"))
        .arg("dev")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--reload-period", "200ms"])
        .env("ZEROSCALE_DEV_SCHEDULE_SPEED", "60")
        // A state file of the test's own, never the user's.
        .env("ZEROSCALE_DEV_STATE", dir.with_extension("state.json"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("zeroscale dev starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let (mut woken, mut answered) = (false, None);
    while answered.is_none() {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no answered tick ({other:?}); output:\n{}", seen.join("\n")),
        };
        seen.push(line.clone());
        woken |= line.contains("hello: 0 -> 1 (wake)");
        if line.contains("hello.default: schedule tick") && line.ends_with("-> 200") {
            answered = Some(line);
        }
    }
    let answered = answered.unwrap_or_default();
    assert!(
        woken,
        "the tick woke the Function from zero:\n{}",
        seen.join("\n")
    );
    assert!(answered.contains("POST /report"), "{answered}");
    assert!(
        answered.contains(":every-minute:"),
        "the ce-id names the trigger: {answered}"
    );
    let _ = child.start_kill();
    let _ = std::fs::remove_dir_all(&dir);
}
