//! The termination signal is caught from the moment it is asked for, not from its
//! first poll: a SIGTERM that arrives while a binary is still starting must start a
//! drain, not kill the process with its accepted requests. Its own test binary, since
//! it signals the whole process.

use std::time::Duration;

use zeroscale_admin::process::termination_signal;

#[tokio::test]
async fn a_sigterm_before_the_first_poll_is_caught_and_reported() {
    let terminated = termination_signal().expect("signal handlers install");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -TERM: {sent}");
    tokio::time::timeout(Duration::from_secs(10), terminated)
        .await
        .expect("the SIGTERM sent before the first poll resolves the future");
}
