//! `dcos`: `dcos task list` and `dcos task exec` against dcos-exec agents.

// Nothing a user, a container, a registry or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod config;
mod session;
mod terminal;

use clap::{Parser, Subcommand};
use client::Failure;
use dcos_exec_proto::{exit, ExecRequest};

#[derive(Parser)]
#[command(name = "dcos", version, about = "Run commands inside running tasks' containers")]
struct Cli {
    /// Agent URL (else DCOS_URL, else core.dcos_url in the config file).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Bearer token (else DCOS_ACS_TOKEN, else core.dcos_acs_token). Prefer the variable: flags show in `ps`.
    #[arg(long = "acs-token", global = true)]
    acs_token: Option<String>,
    /// CA bundle path, `true` (system roots) or `false` (no verification) (else DCOS_SSL_VERIFY, else core.ssl_verify).
    #[arg(long = "ssl-verify", global = true)]
    ssl_verify: Option<String>,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Tasks and what to do with them.
    #[command(subcommand)]
    Task(TaskCmd),
}

#[derive(Subcommand)]
enum TaskCmd {
    /// List the tasks you may see.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a task's container.
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal inside the container.
    #[arg(short, long)]
    tty: bool,
    /// Run as USER[:GROUP] (name or id, resolved in the container).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Set an environment variable (KEY=VAL); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// Run CMD from this OCI image (`[registry/]repo[:tag][@digest]` or `oci:PATH[:TAG]`), inside the task's
    /// namespaces, with the task's root filesystem at /target.
    #[arg(long, value_name = "IMAGE")]
    debug_image: Option<String>,
    /// When to pull the debug image: always, if-not-present, never.
    #[arg(long, value_name = "POLICY", requires = "debug_image")]
    pull_policy: Option<String>,
    /// Give the debug process a capability beyond the task's (e.g. SYS_PTRACE); repeatable.
    #[arg(long, value_name = "CAP", requires = "debug_image")]
    cap_add: Vec<String>,
    /// Task id (or container id).
    task: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dcos: cannot start: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("dcos: {}", f.message);
            f.exit
        }
    };
    // exit() rather than returning: the stdin reader thread may still sit in read(2).
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    let settings = config::resolve(cli.url, cli.acs_token, cli.ssl_verify)
        .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    let agent = client::Agent::new(&settings)?;
    match cli.cmd {
        Top::Task(TaskCmd::List { json }) => {
            let tasks = agent.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks).unwrap_or_default());
            } else {
                println!("{:<24} {:<24} {:<6} {:<8} {:>8} {:>8}", "ID", "CONTAINER", "RUNTIME", "STATE", "PID", "AGE");
                for t in tasks {
                    println!(
                        "{:<24} {:<24} {:<6} {:<8} {:>8} {:>8}",
                        t.id,
                        t.container,
                        t.runtime,
                        t.state,
                        t.pid,
                        age(t.age_secs)
                    );
                }
            }
            Ok(0)
        }
        Top::Task(TaskCmd::Exec(a)) => exec(&agent, a).await,
    }
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

async fn exec(agent: &client::Agent, a: ExecArgs) -> Result<i32, Failure> {
    for e in &a.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(Failure::new(exit::USAGE, format!("-e {e:?}: expected KEY=VAL")));
        }
    }
    if a.tty && a.interactive && !terminal::is_tty(0) {
        return Err(Failure::new(exit::FAILED, "the input device is not a TTY (drop -t, or run from a terminal)"));
    }
    let req = ExecRequest {
        command: a.command,
        stdin: a.interactive,
        tty: a.tty,
        user: a.user,
        workdir: a.workdir,
        env: a.env,
        size: if a.tty { terminal::size() } else { None },
        debug_image: a.debug_image,
        pull_policy: a.pull_policy,
        cap_add: a.cap_add,
    };
    let ws = agent.exec(&a.task, &req).await?;
    // Raw mode only once the session exists, so refusals print on a normal terminal; restored on every path.
    let mut raw = if a.tty && a.interactive { terminal::RawMode::enter().ok() } else { None };
    let r = session::run(ws, a.interactive, a.tty).await;
    if let Some(r) = raw.as_mut() {
        r.restore();
    }
    r
}
