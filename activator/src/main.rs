//! `zeroscale-activator`: the data plane that routes, holds and forwards requests to
//! Functions. This binary is a placeholder until the activator lands (issue #4).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "zeroscale-activator",
    version,
    about = "The zeroscale data plane (not yet implemented)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("the activator is not implemented yet")
}
