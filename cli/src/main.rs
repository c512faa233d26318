//! `zeroscale`: the user's command-line tool. `zeroscale validate` checks Function
//! manifests without a cluster, with the same rules the operator applies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zeroscale_api::Function;

#[derive(Parser)]
#[command(
    name = "zeroscale",
    version,
    about = "Run HTTP functions that scale to zero"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Function manifests (files, or directories of .yaml files).
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    match command {
        Command::Validate { paths } => validate_all(&paths),
    }
}

fn validate_all(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match manifests(path) {
            Ok(files) => {
                for file in files {
                    match validate(&file) {
                        Ok(name) => println!("{}: Function {name} is valid", file.display()),
                        Err(error) => {
                            failed = true;
                            eprintln!("{}: {error:#}", file.display());
                        }
                    }
                }
            }
            Err(error) => {
                failed = true;
                eprintln!("{}: {error:#}", path.display());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The manifest files at `path`: the file itself, or the `.yaml`/`.yml` files in a directory.
fn manifests(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).context("reading the directory")? {
        let file = entry.context("reading the directory")?.path();
        if matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses and validates one manifest, returning the Function's name.
fn validate(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).context("reading the manifest")?;
    let function: Function = serde_saphyr::from_str(&text).context("not a Function manifest")?;
    function.spec.validate()?;
    Ok(function.metadata.name.unwrap_or_default())
}
