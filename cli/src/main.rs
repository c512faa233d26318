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
    /// Check Function manifests (files, or directories of .yaml files) without a cluster.
    ///
    /// Checks what `kubectl apply` and the operator would refuse: YAML syntax (with file,
    /// line and column), fields the Function schema does not have (strict field
    /// validation: `spec.scalling: unknown field`), field types, a missing
    /// metadata.name, and the operator's rules on values (replica bounds, durations,
    /// cron schedules, time zones, ...). Documents of other kinds are skipped. Exits 1
    /// if any Function is invalid.
    #[command(after_help = "Examples:\n  \
        zeroscale validate examples/            # every .yaml file in the folder\n  \
        zeroscale validate hello.yaml users.yaml")]
    Validate {
        /// Manifest files, or directories of .yaml files (not recursive).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run Function manifests locally, no cluster needed.
    ///
    /// The real activator and autoscaler in one process, each replica a local process
    /// (its command from the zeroscale.dev/local-command annotation). Manifests are
    /// reloaded when saved; a manifest that does not parse is reported and the others
    /// keep running. Stops on Ctrl-C or SIGTERM, after draining requests.
    #[command(after_help = "Examples:\n  \
        zeroscale dev examples/                 # then: curl http://hello.default.localhost:8080/\n  \
        zeroscale dev --listen 127.0.0.1:9000 hello.yaml")]
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
