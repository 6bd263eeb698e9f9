//! `dcos`: `dcos task list` and `dcos task exec` against dcos-exec agents, `dcos auth login|logout` at the
//! organisation's identity provider.

// Nothing a user, a container, a registry or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod client;
mod config;
mod session;
mod terminal;

use clap::{Parser, Subcommand};
use client::Failure;
use dcos_exec_proto::{exit, ExecRequest, TaskInfo};

#[derive(Parser)]
#[command(
    name = "dcos",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DCOS_EXEC_REVISION"), ")"),
    about = "Run commands inside running tasks' containers")]
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
    /// Sign in to the organisation's identity provider (OpenID Connect).
    #[command(subcommand)]
    Auth(AuthCmd),
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Get a token with the device flow and keep it (with its refresh token) in dcos.toml.
    Login(LoginArgs),
    /// Forget the stored token and refresh token.
    Logout,
}

#[derive(clap::Args)]
struct LoginArgs {
    /// Issuer URL (else issuer in the [auth] table of dcos.toml).
    #[arg(long)]
    issuer: Option<String>,
    /// OAuth client id of the CLI at the issuer (else [auth] client_id).
    #[arg(long)]
    client_id: Option<String>,
    /// PEM CA file for the issuer's TLS (else [auth] ca_file, else the system's roots).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Scopes to ask for (else [auth] scope, else "openid profile email groups offline_access").
    #[arg(long)]
    scope: Option<String>,
}

#[derive(Subcommand)]
enum TaskCmd {
    /// List the running tasks you may see.
    List(ListArgs),
    /// Run a command inside a task's container.
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only tasks whose id or name contains PATTERN, or whose container id starts with it.
    pattern: Option<String>,
    /// Include stopped containers (with their exit status where the runtime records it).
    #[arg(short, long)]
    all: bool,
    /// Print task ids only, one per line.
    #[arg(short, long, conflicts_with = "json")]
    quiet: bool,
    /// Print JSON (every field) instead of a table.
    #[arg(long)]
    json: bool,
    /// Do not shorten 64-hex container ids to 12 characters.
    #[arg(long)]
    no_trunc: bool,
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
    /// Task id, container id or name; else a unique prefix of one of them or a unique part of a task id or name.
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
    let cmd = match cli.cmd {
        Top::Auth(AuthCmd::Login(a)) => {
            let a = auth::LoginArgs { issuer: a.issuer, client_id: a.client_id, ca_file: a.ca_file, scope: a.scope };
            return auth::login(a).await;
        }
        Top::Auth(AuthCmd::Logout) => return auth::logout(),
        Top::Task(t) => t,
    };
    // Flag, then DCOS_ACS_TOKEN, then the token of `dcos auth login` (refreshed if expired), then core.dcos_acs_token.
    let token = match cli.acs_token {
        Some(t) => Some(t),
        None if std::env::var("DCOS_ACS_TOKEN").is_ok_and(|v| !v.is_empty()) => None,
        None => auth::current_token().await?,
    };
    let settings =
        config::resolve(cli.url, token, cli.ssl_verify).map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    let agent = client::Agent::new(&settings)?;
    match cmd {
        TaskCmd::List(a) => {
            let tasks: Vec<TaskInfo> =
                agent.list().await?.into_iter().filter(|t| (a.all || t.state != "stopped") && matches(t, &a)).collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tasks).unwrap_or_default());
            } else if a.quiet {
                for t in &tasks {
                    println!("{}", t.id);
                }
            } else {
                print!("{}", table(&tasks, a.no_trunc));
            }
            Ok(0)
        }
        TaskCmd::Exec(a) => exec(&agent, a).await,
    }
}

/// `PATTERN` of `dcos task list`: part of a task id or name, or the start of a container id.
fn matches(t: &TaskInfo, a: &ListArgs) -> bool {
    let Some(p) = a.pattern.as_deref() else { return true };
    let bare = p.strip_prefix('/').unwrap_or(p);
    t.container.starts_with(p) || t.id.contains(p) || t.name.as_deref().is_some_and(|n| n.contains(bare))
}

/// Docker's short form of a 64-hex id.
fn short(id: &str, no_trunc: bool) -> &str {
    if !no_trunc && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..12]
    } else {
        id
    }
}

/// The task table, each column as wide as its widest cell.
fn table(tasks: &[TaskInfo], no_trunc: bool) -> String {
    let mut rows = vec![["ID", "NAME", "CONTAINER", "RUNTIME", "STATE", "PID", "AGE"].map(String::from)];
    for t in tasks {
        let stopped = t.state == "stopped";
        rows.push([
            short(&t.id, no_trunc).to_string(),
            t.name.clone().unwrap_or_else(|| "-".into()),
            short(&t.container, no_trunc).to_string(),
            t.runtime.clone(),
            match t.exit_code {
                Some(c) if stopped => format!("{} ({c})", t.state),
                _ => t.state.clone(),
            },
            if stopped { "-".into() } else { t.pid.to_string() },
            if stopped { "-".into() } else { age(t.age_secs) },
        ]);
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(width).enumerate() {
            // PID and AGE are numbers: right-aligned.
            let cell = if i >= 5 { format!("{cell:>w$}") } else { format!("{cell:<w$}") };
            line.push_str(&cell);
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_keep_the_columns_aligned() {
        let long = "3f9c0a1b2c3d4e5f3f9c0a1b2c3d4e5f3f9c0a1b2c3d4e5f3f9c0a1b2c3d4e5f".to_string();
        let tasks = vec![
            TaskInfo {
                id: long.clone(),
                container: long.clone(),
                name: Some("web-1".into()),
                runtime: "runc".into(),
                state: "running".into(),
                pid: 4242,
                age_secs: 30,
                ..TaskInfo::default()
            },
            TaskInfo {
                id: "shop.checkout.with-a-rather-long-task-id".into(),
                container: "c1".into(),
                runtime: "crun".into(),
                state: "stopped".into(),
                exit_code: Some(137),
                ..TaskInfo::default()
            },
        ];
        for no_trunc in [false, true] {
            let t = table(&tasks, no_trunc);
            let lines: Vec<&str> = t.lines().collect();
            let col = |l: &str, word: &str| l.find(word).unwrap();
            assert_eq!(col(lines[0], "NAME"), col(lines[1], "web-1"), "{t}");
            assert_eq!(col(lines[0], "NAME"), col(lines[2], " -  ") + 1, "{t}");
            assert_eq!(col(lines[0], "RUNTIME"), col(lines[1], "runc"), "{t}");
            assert_eq!(col(lines[0], "RUNTIME"), col(lines[2], "crun"), "{t}");
            assert!(lines[2].contains("stopped (137)"), "{t}");
            assert_eq!(lines[1].contains(&long), no_trunc, "{t}");
            assert_eq!(lines[1].starts_with("3f9c0a1b2c3d "), !no_trunc, "{t}");
        }
    }
}
