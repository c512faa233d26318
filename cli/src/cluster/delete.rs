//! `zeroscale delete`: removes a Function; garbage collection removes its Deployment,
//! Services and pods.

use std::io::Write;

use kube::api::DeleteParams;

use super::connect::Cluster;
use super::{Error, FUNCTIONS, Result, Target};

/// `zeroscale delete`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Example:
  zeroscale delete hello -n team")]
pub struct Args {
    /// The Function to delete.
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

/// Deletes the Function; a missing one is reported with the names that come close.
pub async fn run(cluster: &Cluster, name: &str, out: &mut dyn Write) -> Result<()> {
    match cluster
        .functions()
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => writeln!(
            out,
            "Function {name} deleted from namespace {}",
            cluster.namespace
        )
        .map_err(Error::Output),
        Err(source) => {
            let error = Error::api("delete", FUNCTIONS, Some(&cluster.namespace), source);
            if error.is_not_found() {
                // Names the near misses.
                cluster.function(name).await?;
            }
            Err(error)
        }
    }
}
