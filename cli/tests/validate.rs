//! `zeroscale validate` against real files.

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

#[test]
fn invalid_manifest_fails_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("zeroscale-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n  image: x\n  scaling: {minReplicas: 3, maxReplicas: 1}\n",
    )
    .expect("write manifest");
    let output = zeroscale()
        .arg("validate")
        .arg(&path)
        .output()
        .expect("runs");
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("spec.scaling.minReplicas"), "{stderr}");
}
