//! Every cluster command's `--help` ends with an example, and `completion` prints a
//! script each shell can load.

use std::process::Command;

const ZEROSCALE: &str = env!("CARGO_BIN_EXE_zeroscale");

fn run(args: &[&str]) -> String {
    let output = Command::new(ZEROSCALE)
        .args(args)
        .output()
        .expect("zeroscale runs");
    assert!(output.status.success(), "zeroscale {args:?} failed");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn every_cluster_command_help_shows_an_example() {
    for command in [
        "deploy",
        "list",
        "describe",
        "invoke",
        "logs",
        "delete",
        "completion",
    ] {
        let help = run(&[command, "--help"]);
        let example = help
            .split_once("Example")
            .unwrap_or_else(|| panic!("{command} --help has no example:\n{help}"))
            .1;
        assert!(
            example.contains(&format!("zeroscale {command} ")),
            "{command}'s example does not run it:\n{help}"
        );
    }
}

#[test]
fn completion_scripts_name_the_commands_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _zeroscale"),
        ("zsh", "#compdef zeroscale"),
        ("fish", "complete -c zeroscale"),
    ] {
        let script = run(&["completion", shell]);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        assert!(script.contains("invoke"), "{shell}: no invoke command");
    }
}
