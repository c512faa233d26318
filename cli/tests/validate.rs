//! `zeroscale validate` against real files, and what `--help` says.

use std::process::Command;

fn zeroscale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zeroscale"))
}

#[test]
fn examples_directory_is_valid() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let output = zeroscale()
        .args(["validate", examples])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Function hello is valid"));
}

/// Runs `zeroscale validate` on one manifest with `content`, checks that it refuses the
/// manifest (exit code 1), and returns what it printed on stderr.
fn refused(test: &str, content: &str) -> String {
    let dir =
        std::env::temp_dir().join(format!("zeroscale-validate-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fn.yaml");
    std::fs::write(&path, content).expect("write manifest");
    let output = zeroscale()
        .arg("validate")
        .arg(&path)
        .output()
        .expect("runs");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn invalid_manifest_fails_naming_the_field() {
    let stderr = refused(
        "bad",
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n  image: x\n  scaling: {minReplicas: 3, maxReplicas: 1}\n",
    );
    assert!(stderr.contains("spec.scaling.minReplicas"), "{stderr}");
}

#[test]
fn unknown_fields_are_refused_naming_their_path_at_every_level() {
    let stderr = refused(
        "unknown",
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: typo}\nspec:\n  image: x\n  scalling: {minReplicas: 1}\n  env: [{name: A, vaule: b}]\n  volumes: [{name: v, emptyDir: {}}]\n",
    );
    assert!(stderr.contains("spec.scalling: unknown field"), "{stderr}");
    assert!(
        stderr.contains("spec.env[0].vaule: unknown field"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("volumes"),
        "volumes take any field: {stderr}"
    );
}

#[test]
fn broken_yaml_names_the_file_line_and_column() {
    let stderr = refused(
        "broken",
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata:\n  name: broken\nspec:\n  image: [x\n",
    );
    let (location, _) = stderr
        .split_once(": not valid YAML")
        .unwrap_or_else(|| panic!("no YAML error: {stderr}"));
    let mut parts = location.rsplitn(3, ':');
    let column: u32 = parts.next().and_then(|c| c.parse().ok()).expect("column");
    let line: u32 = parts.next().and_then(|l| l.parse().ok()).expect("line");
    assert!(
        parts.next().is_some_and(|file| file.ends_with("fn.yaml")),
        "{stderr}"
    );
    assert!(line >= 6 && column >= 1, "{stderr}");
}

#[test]
fn validate_help_says_what_it_checks_with_an_example() {
    let output = zeroscale()
        .args(["validate", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("unknown field"), "{help}");
    assert!(help.contains("line and column"), "{help}");
    assert!(help.contains("zeroscale validate examples/"), "{help}");
}

#[test]
fn dev_help_shows_an_example_and_no_empty_environment_value() {
    let output = zeroscale()
        .args(["dev", "--help"])
        .env_remove("ZEROSCALE_LISTEN")
        .env_remove("ZEROSCALE_ADMIN_LISTEN")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("zeroscale dev examples/"), "{help}");
    assert!(!help.contains("=]"), "{help}");
    assert!(help.contains("[env: ZEROSCALE_LISTEN]"), "{help}");
}
