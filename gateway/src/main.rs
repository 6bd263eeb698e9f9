//! `dcos-exec-gateway`: one URL for a whole dcos-exec cluster. `run` serves the agent's API for every node's
//! tasks, from the cluster directory in etcd, and relays each session to the agent that owns its task.

// Nothing a user, an agent or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod config;
mod relay;
mod resolve;
mod server;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The version and the git revision it was built from, as `--version` and `dcos_exec_build_info` show them.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DCOS_EXEC_REVISION"), ")");
/// The git revision alone (`unknown` outside a git checkout).
pub const REVISION: &str = env!("DCOS_EXEC_REVISION");

#[derive(Parser)]
#[command(name = "dcos-exec-gateway", version = VERSION, about = "Gateway of a dcos-exec cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the cluster's API.
    Run {
        /// The gateway's configuration file (gateway.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("dcos-exec-gateway: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = config::GatewayConfig::load(&config)?;
            dcos_exec_server::logging::init(cfg.file.log_format);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async {
                let gw = server::Gateway::new(cfg).await?;
                server::serve(gw).await
            })
        }
    }
}
