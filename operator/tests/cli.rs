//! The `zeroscale-operator` binary's command line: the run flags work after `run` and
//! without it, and unknown flags are still refused.

use std::process::{Command, Output};

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zeroscale-operator"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the operator binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the operator with `args` (ending in `--help`) and checks that it succeeds,
/// printing the help of the run flags.
fn assert_prints_the_run_help(args: &[&str]) {
    let output = operator(args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let help = text(&output.stdout);
    for flag in ["--leader-election", "--lease-namespace", "--admin-addr"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn run_accepts_the_run_flags_after_the_subcommand() {
    assert_prints_the_run_help(&["run", "--leader-election=false", "--help"]);
}

#[test]
fn the_run_flags_also_work_without_the_subcommand() {
    assert_prints_the_run_help(&["--leader-election=false", "--lease-name=other", "--help"]);
}

#[test]
fn unknown_flags_are_refused_in_both_forms() {
    for args in [&["run", "--no-such-flag"][..], &["--no-such-flag"][..]] {
        let output = operator(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("unexpected argument"), "{args:?}: {stderr}");
    }
}

#[test]
fn run_flags_before_a_subcommand_are_refused() {
    let output = operator(&["--leader-election=false", "run"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[test]
fn the_run_settings_from_the_environment_leave_the_subcommands_usable() {
    let output = Command::new(env!("CARGO_BIN_EXE_zeroscale-operator"))
        .arg("crd")
        .env("ZEROSCALE_LEASE_NAME", "other")
        .env("ZEROSCALE_LEADER_ELECTION", "false")
        .output()
        .expect("the operator binary runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("kind: CustomResourceDefinition"),
        "{}",
        text(&output.stdout)
    );
}
