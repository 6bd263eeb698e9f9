//! `dcos-exec-agent`: the per-host agent. `init` sets up keys and config, `run` serves, `token` mints tokens.

// Nothing a user, a container, a registry or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod cluster;
mod config;
mod exec;
mod init;
mod init_cluster;
mod limits;
mod runtime;
mod server;
mod session;
mod shutdown;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dcos_exec_access::auth;
use std::path::PathBuf;

/// The version and the git revision it was built from, as `--version` and `dcos_exec_build_info` show them.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DCOS_EXEC_REVISION"), ")");
/// The git revision alone (`unknown` outside a git checkout).
pub const REVISION: &str = env!("DCOS_EXEC_REVISION");

#[derive(Parser)]
#[command(
    name = "dcos-exec-agent",
    version = VERSION,
    about = "Per-host agent of dcos-exec: authenticated exec into containers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a CA, server certificate, token key pair, agent.toml, acl.toml and an admin token into DIR.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Init {
        /// `cluster`: a whole cluster's CA, certificates and configs (see `init cluster --help`).
        #[command(subcommand)]
        what: Option<InitCmd>,
        /// Directory to write the set-up into (created if missing).
        #[arg(long, required = true)]
        dir: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: String,
        /// Name of the admin user the ACL grants everything.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Lifetime of the admin token.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Overwrite an existing set-up.
        #[arg(long)]
        force: bool,
    },
    /// Serve the exec API.
    Run {
        /// The agent configuration (agent.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the debug-image cache: pull, list, rm, prune.
    Images {
        /// The agent configuration (agent.toml), for its [images] table.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: ImagesCmd,
    },
    /// Mint a token for a user (needs token_private_key in the config).
    Token {
        /// The agent configuration (agent.toml), for token_private_key, issuer and audience.
        #[arg(long)]
        config: PathBuf,
        /// The user (`sub` claim), as ACL subjects name it (`user:NAME`).
        #[arg(long)]
        user: String,
        /// A group of the user (`groups` claim, `group:NAME` in the ACL); repeatable.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Manage the ACL kept in etcd (`acl = "etcd"`).
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// Write the man pages of dcos-exec-agent (dcos-exec-agent.1, dcos-exec-agent-run.1, ...) into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum InitCmd {
    /// Write a cluster's CAs, certificates, token keys, gateway.toml and one agent.toml per agent into DIR.
    Cluster {
        /// Directory to write the cluster's set-up into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Host name or address of the gateway (in its server certificate and the printed DCOS_URL).
        #[arg(long)]
        gateway: String,
        /// Port the gateway listens on.
        #[arg(long, default_value_t = 7443)]
        gateway_port: u16,
        /// An agent, as NAME=https://HOST:PORT (how gateways reach it); repeatable.
        #[arg(long = "agent", value_name = "NAME=URL", required = true)]
        agents: Vec<String>,
        /// Client URL of an etcd member; repeatable.
        #[arg(long = "etcd", value_name = "URL", required = true)]
        etcd: Vec<String>,
        /// Name of the admin user the ACL grants everything.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Lifetime of the admin token.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Overwrite an existing set-up.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AclCmd {
    /// Sign FILE (an ACL in TOML) with the ACL-signing key and write it to `{prefix}/acl` in the cluster's etcd,
    /// where every agent and gateway with `acl = "etcd"` puts it in force.
    Push {
        /// The ACL-signing private key (`pki/acl-signing.key` of `init cluster`).
        #[arg(long)]
        key: PathBuf,
        /// An agent configuration (agent.toml) whose [cluster] names the etcd and the prefix.
        #[arg(long)]
        config: PathBuf,
        /// The ACL to push (TOML, as acl.toml).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Pull (and verify and unpack) an image into the cache.
    Pull {
        /// Image reference: `[registry/]repo[:tag][@digest]` or `oci:PATH[:TAG]`.
        image: String,
        /// always, if-not-present or never.
        #[arg(long, default_value = "always")]
        pull_policy: String,
    },
    /// List cached images.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget a cached image (its content goes with the next prune).
    Rm {
        /// Image reference, as pulled.
        image: String,
    },
    /// Remove blobs and layers no cached image needs.
    Prune,
}

fn main() {
    // The exec helper is this binary run from a sealed memfd; it must not start a runtime or parse flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == exec::HELPER_ARG) {
        dcos_exec_container::helper::main();
    }
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("dcos-exec-agent: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, leaving out a cause that the text before already says (library errors
/// such as an image's "refusing layer entry ..." include their cause in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init {
            what: Some(InitCmd::Cluster { dir, gateway, gateway_port, agents, etcd, admin, ttl, force }),
            ..
        } => {
            let o = init_cluster::ClusterOptions {
                dir: &dir,
                gateway: &gateway,
                gateway_port,
                agents: &agents,
                etcd: &etcd,
                admin: &admin,
                ttl,
                force,
            };
            print!("{}", init_cluster::init_cluster(&o)?);
            Ok(())
        }
        Cmd::Init { what: None, dir, listen, admin, ttl, force } => {
            let dir = dir.context("--dir is required")?;
            let lines = init::init(&init::InitOptions { dir: &dir, listen: &listen, admin: &admin, ttl, force })?;
            print!("{lines}");
            Ok(())
        }
        Cmd::Token { config, user, groups, ttl } => {
            let cfg = config::AgentConfig::load(&config)?;
            let key_path = cfg.file.token_private_key.with_context(|| {
                format!(
                    "{} has no token_private_key: set it to the Ed25519 key that signs tokens (init writes \
                     token-signing.key), on a host that mints tokens",
                    config.display()
                )
            })?;
            let key = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            let t = auth::mint(&key, &cfg.file.issuer, &cfg.file.audience, &user, &groups, ttl)?;
            println!("{t}");
            Ok(())
        }
        Cmd::Acl { cmd: AclCmd::Push { key, config, file } } => {
            let cfg = config::AgentConfig::load(&config)?;
            let c = cfg.cluster.context("the configuration has no [cluster] section naming the etcd")?;
            let pem = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(dcos_exec_cluster::acl::publish(&c.file.etcd, &c.file.prefix, &pem, &text))
                .with_context(|| format!("pushing {}", file.display()))?;
            eprintln!("{} signed and written to {}/acl", file.display(), c.file.prefix.trim_end_matches('/'));
            Ok(())
        }
        Cmd::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        Cmd::Images { config, cmd } => {
            let cfg = config::AgentConfig::load(&config)?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let puller = server::puller(&cfg.file.images)?;
            images_cmd(&puller, cmd)
        }
        Cmd::Run { config } => {
            let cfg = config::AgentConfig::load(&config)?;
            dcos_exec_server::logging::init(cfg.file.log_format);
            tracing::info!(version = VERSION, "dcos-exec-agent starting");
            match limits::raise_nofile() {
                Ok((soft, hard)) if soft < hard => tracing::info!("open files limit raised from {soft} to {hard}"),
                Ok(_) => {}
                Err(e) => tracing::warn!("raising the open files limit: {e}"),
            }
            // One crypto provider for every TLS client in the process (the registry client finds it here).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let agent = server::Agent::new(cfg)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let served = rt.block_on(server::serve(agent));
            // A pull's blocking unpack may still run; the shutdown grace is over, so do not wait for it.
            rt.shutdown_background();
            served
        }
    }
}

fn images_cmd(puller: &dcos_exec_images::pull::Puller, cmd: ImagesCmd) -> Result<()> {
    use dcos_exec_images::reference::ImageRef;
    match cmd {
        ImagesCmd::Pull { image, pull_policy } => {
            let r = ImageRef::parse(&image)?;
            let policy = pull_policy.parse().map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let progress = |line: String| eprintln!("{line}");
            let img = rt.block_on(puller.pull(&r, policy, &progress))?;
            println!("{} {}", img.reference, img.digest);
        }
        ImagesCmd::List { json } => {
            let list = puller.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<60} {:<20} {:>10}", "REFERENCE", "MANIFEST", "SIZE");
                for i in list {
                    let short = i.manifest.get(..19).unwrap_or(&i.manifest);
                    println!("{:<60} {:<20} {:>9.1}M", i.reference, short, i.size as f64 / 1048576.0);
                }
            }
        }
        ImagesCmd::Rm { image } => {
            let r = ImageRef::parse(&image)?;
            if !puller.remove(&r) {
                anyhow::bail!("{r} is not cached");
            }
        }
        ImagesCmd::Prune => {
            let p = puller.prune();
            println!("removed {} blobs and {} layers, {:.1} MiB", p.blobs, p.layers, p.bytes as f64 / 1048576.0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument and subcommand, at every level, with its path, that has no help text.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path} {}", a.get_id()));
            }
        }
        for s in cmd.get_subcommands() {
            let p = format!("{path} {}", s.get_name());
            if s.get_about().is_none() && s.get_long_about().is_none() {
                out.push(p.clone());
            }
            undocumented(s, &p, out);
        }
    }

    #[test]
    fn every_argument_has_help() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "dcos-exec-agent", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
