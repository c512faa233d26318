//! `zeroscale`: the user's command-line tool. `zeroscale validate` checks Function
//! manifests without a cluster, with the same rules the operator applies;
//! `zeroscale dev` runs them locally, scaling to zero, with no cluster at all.

mod cmd;
mod dev;
mod error;
mod manifest;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use zeroscale_admin::process::{self, LogFormat};

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
    /// Run Function manifests locally: the real activator and autoscaler, with each
    /// replica a local process (command from the zeroscale.dev/local-command annotation).
    Dev(dev::DevConfig),
    #[command(flatten)]
    Cluster(zeroscale_cli::cluster::Command),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(
        after_help = "Example:\n  zeroscale completion bash > ~/.local/share/bash-completion/completions/zeroscale"
    )]
    Completion { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    match command {
        Command::Validate { paths } => validate_all(&paths),
        Command::Cluster(command) => cmd::run(command),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "zeroscale",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Dev(config) => {
            // The activator's and autoscaler's warnings, on stderr; RUST_LOG shows more.
            process::init_tracing(LogFormat::Text, "warn");
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("starting the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dev::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("zeroscale dev: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate_all(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        let files = match manifest::files(path) {
            Ok(files) => files,
            Err(error) => {
                failed = true;
                eprintln!("{error}");
                continue;
            }
        };
        for file in files {
            let loaded = match manifest::load(&file) {
                Ok(loaded) => loaded,
                Err(error) => {
                    failed = true;
                    eprintln!("{error}");
                    continue;
                }
            };
            for function in loaded.functions {
                let name = function.metadata.name.clone().unwrap_or_default();
                match function.spec.validate() {
                    Ok(_) => println!("{}: Function {name} is valid", file.display()),
                    Err(error) => {
                        failed = true;
                        eprintln!("{}: Function {name}: {error}", file.display());
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
