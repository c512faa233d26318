//! The entry of the cluster commands: an async runtime, manifests read the way
//! `zeroscale validate` reads them, and errors printed for people.

use std::path::Path;
use std::process::ExitCode;

use zeroscale_api::Function;
use zeroscale_cli::cluster::{self, Command, Error};

use crate::manifest;

/// Runs one cluster command to completion.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cluster::run(command, &load)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zeroscale: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The Functions of the manifests `path` names, as `zeroscale validate` reads them.
fn load(path: &Path) -> cluster::Result<Vec<Function>> {
    let manifest_error = |error: crate::error::Error| Error::Manifest {
        path: path.to_owned(),
        reason: error.to_string(),
    };
    let mut functions = Vec::new();
    for file in manifest::files(path).map_err(manifest_error)? {
        functions.extend(manifest::load(&file).map_err(manifest_error)?.functions);
    }
    Ok(functions)
}
