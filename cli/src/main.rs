//! `dcos`: `dcos task list` and `dcos task exec` against dcos-exec agents and gateways, `dcos node list`, and
//! `dcos auth login|logout` at the organisation's identity provider. The sessions themselves are the `dcos_exec`
//! library's; this binary adds the command line, the terminal, the tables and the login.

// Nothing a user, a container, a registry or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod env;
mod failure;
mod generate;
mod session;
mod terminal;

use clap::{CommandFactory, Parser, Subcommand};
use dcos_exec::Client;
use dcos_exec_proto::{exit, TaskInfo};
use failure::Failure;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "dcos",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DCOS_EXEC_REVISION"), ")"),
    about = "Run commands inside running tasks' containers")]
struct Cli {
    /// Agent URL (else the profile's dcos_url, else the DCOS_URL variable, else dcos_url under [core] in dcos.toml).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Bearer token (else the profile's, else the DCOS_ACS_TOKEN variable, else [core]). Prefer the variable: flags show in `ps`.
    #[arg(long = "acs-token", global = true, value_name = "TOKEN")]
    acs_token: Option<String>,
    /// CA bundle path, `true` (system roots) or `false` (no verification) (else the profile's, else the DCOS_SSL_VERIFY variable, else [core]).
    #[arg(long = "ssl-verify", global = true, value_name = "CA_FILE|true|false")]
    ssl_verify: Option<String>,
    /// Use the [profiles.NAME] table of dcos.toml (else the DCOS_PROFILE variable).
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Print a shell completion script (bash: `source <(dcos completion bash)`).
    #[command(display_order = 90)]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages of dcos (dcos.1, dcos-task-exec.1, ...) into DIR.
    #[command(display_order = 91)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    /// Tasks and what to do with them.
    #[command(subcommand)]
    Task(TaskCmd),
    /// The nodes of a cluster (through a gateway).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Sign in to the organisation's identity provider (OpenID Connect).
    #[command(subcommand)]
    Auth(AuthCmd),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List the nodes registered in the cluster directory.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    /// Only tasks on this node (through a gateway).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
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
    /// Set an environment variable; KEY alone passes this shell's value of KEY (unset: left out); repeatable.
    #[arg(short, long = "env", value_name = "KEY[=VAL]")]
    env: Vec<String>,
    /// Read variables from FILE: KEY=VAL or KEY lines, `#` comments (docker's format); -e wins over it.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
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
    // Generated from the clap definitions: no agent, no settings.
    let generated = match &cli.cmd {
        Top::Completion { shell } => Some(generate::completion(Cli::command(), *shell)),
        Top::Man { dir } => Some(generate::man_pages(Cli::command(), dir)),
        _ => None,
    };
    if let Some(r) = generated {
        std::process::exit(r.map_or_else(|f| f.report(), |()| 0));
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dcos: cannot start: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => f.report(),
    };
    // exit() rather than returning: the stdin reader thread may still sit in read(2).
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    let cmd = match cli.cmd {
        Top::Auth(AuthCmd::Login(a)) => {
            // The login is kept for the profile it was made in (none: the default settings).
            let profile = cli.profile.or_else(|| std::env::var("DCOS_PROFILE").ok().filter(|p| !p.is_empty()));
            let a = auth::LoginArgs {
                issuer: a.issuer,
                client_id: a.client_id,
                ca_file: a.ca_file,
                scope: a.scope,
                profile,
            };
            return auth::login(a).await;
        }
        Top::Auth(AuthCmd::Logout) => return auth::logout(),
        cmd => cmd,
    };
    let over = dcos_exec::config::Overrides {
        url: cli.url,
        token: cli.acs_token,
        ssl_verify: cli.ssl_verify,
        profile: cli.profile,
    };
    let mut settings = dcos_exec::config::resolve(over)?;
    auth::apply_login(&mut settings).await?;
    let agent = Client::from_settings(&settings)?;
    if agent.verification_off() {
        eprintln!("dcos: warning: TLS verification is off (false from the {})", settings.tls.origin);
    }
    match cmd {
        // Handled in main.
        Top::Completion { .. } | Top::Man { .. } | Top::Auth(_) => Ok(0),
        Top::Task(TaskCmd::List(a)) => {
            let listed = match &a.node {
                Some(n) => agent.tasks_of(n).await,
                None => agent.tasks().await,
            };
            let tasks = warn_if_stale(&agent, listed)?;
            let tasks: Vec<TaskInfo> =
                tasks.into_iter().filter(|t| (a.all || t.state != "stopped") && matches(t, &a)).collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tasks).unwrap_or_default());
            } else if a.quiet {
                for t in &tasks {
                    println!("{}", failure::printable(&t.id));
                }
            } else {
                // Through a gateway, the NODE column is there even when no row is.
                print!("{}", table(&tasks, a.no_trunc, agent.served_by_gateway()));
            }
            Ok(0)
        }
        Top::Task(TaskCmd::Exec(a)) => exec(&agent, a).await,
        Top::Node(NodeCmd::List { json }) => {
            let nodes = warn_if_stale(&agent, agent.nodes().await)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes).unwrap_or_default());
            } else {
                print!("{}", node_table(&nodes));
            }
            Ok(0)
        }
    }
}

/// A gateway answering from a stale cluster directory (etcd unreachable) says so: one line on stderr, refusal
/// or not, since the answer may be out of date.
fn warn_if_stale<T>(agent: &Client, r: Result<T, dcos_exec::Error>) -> Result<T, dcos_exec::Error> {
    if let Some(secs) = agent.stale_directory() {
        eprintln!("dcos: warning: the cluster directory is stale ({secs}s since etcd last answered the gateway)");
    }
    r
}

/// The node table of `dcos node list`.
fn node_table(nodes: &[dcos_exec_proto::NodeInfo]) -> String {
    let mut rows = vec![["NAME", "URL", "STATE", "TASKS", "LABELS"].map(String::from).to_vec()];
    for n in nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = if labels.is_empty() { "-".into() } else { labels.join(",") };
        rows.push(vec![n.name.clone(), n.url.clone(), n.state.clone(), n.tasks.to_string(), labels]);
    }
    columns(&rows, &[3])
}

/// Rows as columns as wide as their widest cell; `right` lists the right-aligned (numeric) columns.
fn columns(rows: &[Vec<String>], right: &[usize]) -> String {
    // Cells are what servers and containers said: never raw control characters on the terminal.
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| failure::printable(c)).collect()).collect();
    let rows = &rows;
    let mut width = vec![0usize; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(&width).enumerate() {
            let w = *w;
            let cell = if right.contains(&i) { format!("{cell:>w$}") } else { format!("{cell:<w$}") };
            line.push_str(&cell);
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `PATTERN` of `dcos task list`: part of a task id or name, or the start of a container id.
fn matches(t: &TaskInfo, a: &ListArgs) -> bool {
    if a.node.as_ref().is_some_and(|n| t.node.as_ref() != Some(n)) {
        return false;
    }
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
fn table(tasks: &[TaskInfo], no_trunc: bool, gateway: bool) -> String {
    // Rows from a gateway name their node.
    let nodes = gateway || tasks.iter().any(|t| t.node.is_some());
    let mut head = ["ID", "NAME", "CONTAINER", "RUNTIME", "STATE", "PID", "AGE"].map(String::from).to_vec();
    if nodes {
        head.insert(0, "NODE".into());
    }
    let mut rows = vec![head];
    for t in tasks {
        let stopped = t.state == "stopped";
        let mut row = vec![
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
        ];
        if nodes {
            row.insert(0, t.node.clone().unwrap_or_else(|| "-".into()));
        }
        rows.push(row);
    }
    // PID and AGE are numbers: right-aligned.
    let off = usize::from(nodes);
    columns(&rows, &[5 + off, 6 + off])
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

async fn exec(agent: &Client, a: ExecArgs) -> Result<i32, Failure> {
    let env = env::collect(&a.env_file, &a.env, |k| std::env::var(k).ok())?;
    if a.tty && a.interactive && !terminal::is_tty(0) {
        return Err(Failure::new(
            exit::FAILED,
            "the input device is not a TTY: drop the -t flag, or run dcos from a terminal",
        ));
    }
    let mut cmd = agent.command(&a.task, a.command).interactive(a.interactive).envs(env);
    if a.tty {
        cmd = cmd.tty(terminal::size());
    }
    if let Some(u) = a.user {
        cmd = cmd.user(u);
    }
    if let Some(w) = a.workdir {
        cmd = cmd.workdir(w);
    }
    if let Some(i) = a.debug_image {
        cmd = cmd.debug_image(i);
    }
    if let Some(p) = a.pull_policy {
        cmd = cmd.pull_policy(p);
    }
    for c in a.cap_add {
        cmd = cmd.cap_add(c);
    }
    let s = warn_if_stale(agent, cmd.spawn().await)?;
    // Raw mode only once the session exists, so refusals print on a normal terminal; restored on every path.
    let mut raw = if a.tty && a.interactive { terminal::RawMode::enter().ok() } else { None };
    let r = session::run(s, a.tty).await;
    if let Some(r) = raw.as_mut() {
        r.restore();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "dcos", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

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
            let t = table(&tasks, no_trunc, false);
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

    #[test]
    fn gateway_rows_get_a_node_column_and_filter() {
        let t = |node: &str, id: &str| TaskInfo {
            id: id.into(),
            container: format!("c-{id}"),
            runtime: "runc".into(),
            state: "running".into(),
            pid: 7,
            node: Some(node.into()),
            ..TaskInfo::default()
        };
        let tasks = vec![t("node-a", "web.1"), t("node-bb", "web.2")];
        let out = table(&tasks, false, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE     ID"), "{out}");
        // A gateway's empty list keeps its NODE column.
        assert!(table(&[], false, true).starts_with("NODE  ID"), "{}", table(&[], false, true));
        assert!(lines[2].starts_with("node-bb  web.2"), "{out}");
        let args = ListArgs {
            pattern: None,
            all: false,
            quiet: false,
            json: false,
            no_trunc: false,
            node: Some("node-a".into()),
        };
        let picked: Vec<&str> = tasks.iter().filter(|x| matches(x, &args)).map(|x| x.id.as_str()).collect();
        assert_eq!(picked, ["web.1"]);
        let nodes = vec![dcos_exec_proto::NodeInfo {
            name: "node-a".into(),
            url: "https://10.0.0.1:7443".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            state: "ready".into(),
            tasks: 12,
        }];
        assert_eq!(
            node_table(&nodes),
            "NAME    URL                    STATE  TASKS  LABELS\nnode-a  https://10.0.0.1:7443  ready     12  zone=a\n"
        );
    }

    /// Task ids and names come from containers' configs: the table shows their control characters escaped,
    /// with columns still aligned, never raw.
    #[test]
    fn control_characters_from_the_server_are_escaped() {
        let tasks = vec![
            TaskInfo {
                id: "web\n2026 INFO forged\u{1b}[2J".into(),
                name: Some("n\u{9b}31m".into()),
                container: "c1".into(),
                runtime: "runc".into(),
                state: "running".into(),
                ..TaskInfo::default()
            },
            TaskInfo {
                id: "db".into(),
                container: "c2".into(),
                runtime: "runc".into(),
                state: "running".into(),
                ..TaskInfo::default()
            },
        ];
        let out = table(&tasks, false, false);
        assert!(!out.trim_end().chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.contains("web\\n2026 INFO forged\\u{1b}[2J"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].find("NAME"), lines[2].find("-  "), "{out}");
        assert_eq!(failure::printable("a\u{7}b\tc"), "a\\u{7}b\\tc");
        // A right-to-left override, a zero-width space or a line separator makes a name read as another.
        assert_eq!(failure::printable("web\u{202e}1.exe\u{200b}\u{2028}x"), "web\\u{202e}1.exe\\u{200b}\\u{2028}x");
        let t = TaskInfo { id: "evil\u{2066}a\u{feff}".into(), ..tasks[1].clone() };
        let out = table(&[t], false, false);
        assert!(out.contains("evil\\u{2066}a\\u{feff}"), "{out}");
    }
}
