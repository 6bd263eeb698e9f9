//! CLI conventions against the real binaries and a real agent: shell completion, man pages, `-e KEY` and
//! `--env-file`, `dcos.toml` (unknown keys, profiles), errors that say what to do, and the CI smoke script.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// A fresh directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-cli-{name}", prefix()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dcos` with only a config directory of its own: no DCOS_* variables.
fn bare_dcos(cfg_home: &Path) -> Command {
    let mut c = Command::new(bin("dcos"));
    c.env_clear().env("PATH", "/usr/bin:/bin").env("XDG_CONFIG_HOME", cfg_home).stdin(std::process::Stdio::null());
    c
}

fn write_config(cfg_home: &Path, text: &str) -> PathBuf {
    let p = cfg_home.join("dcos").join("dcos.toml");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn one_line(err: &str) {
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("dcos: "), "{err:?}");
}

#[test]
fn bash_completion_is_sourced_and_completes_task_exec() {
    // No agent needed, nor root.
    let dir = scratch("completion");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(Command::new(bin("dcos")).args(["completion", shell]));
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("exec") && stdout(&o).contains("env-file"), "{shell}: {}", stdout(&o));
        std::fs::write(dir.join(shell), &o.stdout).unwrap();
    }
    // Sourced under `set -eu` (an error in the script, or an unset variable it reads, fails the shell), then
    // asked what follows `dcos task ex` and `dcos task exec --e`, as bash asks on TAB.
    let script = r#"set -eu
        source "$1"
        complete -p dcos
        COMP_WORDS=(dcos task ex); COMP_CWORD=2; COMP_LINE="dcos task ex"; COMP_POINT=${#COMP_LINE}
        _dcos dcos ex task; echo "task: ${COMPREPLY[*]}"
        COMP_WORDS=(dcos task exec --e); COMP_CWORD=3; COMP_LINE="dcos task exec --e"; COMP_POINT=${#COMP_LINE}
        _dcos dcos --e exec; echo "exec: ${COMPREPLY[*]}"
        COMP_WORDS=(dcos ""); COMP_CWORD=1; COMP_LINE="dcos "; COMP_POINT=${#COMP_LINE}
        _dcos dcos "" dcos; echo "top: ${COMPREPLY[*]}""#;
    let o = run(Command::new("bash").arg("-c").arg(script).arg("bash").arg(dir.join("bash")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("-F _dcos dcos"), "{out}");
    assert!(out.contains("task: exec\n"), "{out}");
    assert!(out.contains("exec: --env --env-file\n"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("top: ") && l.contains("task") && l.contains("completion")), "{out}");
    // A shell that is not one of them is a usage error naming the choices.
    let o = run(Command::new(bin("dcos")).args(["completion", "tcsh"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bash") && stderr(&o).contains("fish"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_pages_of_both_binaries_render_with_man() {
    let dir = scratch("man");
    for (binary, pages) in [
        ("dcos", &["dcos.1", "dcos-task.1", "dcos-task-exec.1", "dcos-task-list.1"][..]),
        ("dcos-exec-agent", &["dcos-exec-agent.1", "dcos-exec-agent-run.1", "dcos-exec-agent-token.1"][..]),
    ] {
        let out = dir.join(binary);
        let o = run(Command::new(bin(binary)).arg("man").arg(&out));
        assert!(o.status.success(), "{binary} man: {}", stderr(&o));
        let mut written: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        written.sort();
        for page in pages {
            assert!(written.iter().any(|w| w == page), "{binary} man wrote {written:?}, not {page}");
        }
        // Every page, one per command and subcommand.
        for page in &written {
            // man -l renders a file with groff; warnings (bad roff) go to stderr.
            let o = run(Command::new("man").args(["-P", "cat", "-l"]).arg(out.join(page)).env("MANWIDTH", "100"));
            assert!(o.status.success(), "{page}: {}", stderr(&o));
            assert!(stderr(&o).is_empty(), "{page}: {}", stderr(&o));
            let text = stdout(&o);
            assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{page}: {text}");
            if page == "dcos-task-exec.1" {
                for want in ["--env-file", "--debug-image", "DCOS_SSL_VERIFY", "<TASK>"] {
                    assert!(text.contains(want), "{page} lacks {want}: {text}");
                }
            }
            if page == "dcos-exec-agent-token.1" {
                assert!(text.contains("--group <GROUP>") && text.contains("repeatable"), "{text}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn env_keys_alone_take_the_local_value_and_env_files_are_read() {
    if skip() {
        return;
    }
    let w = world();
    let dir = scratch("envfile");
    let file = dir.join("vars.env");
    std::fs::write(
        &file,
        "# the CI job's variables\nFROM_FILE=file value\n\n  OVERRIDDEN=from-file\nPASSED\nNOT_SET_HERE\n",
    )
    .unwrap();
    let o = run(w
        .agent
        .dcos()
        .env("LOCAL_ONLY", "local value")
        .env("PASSED", "passed through the file")
        .args(["task", "exec", "-e", "LOCAL_ONLY", "-e", "OVERRIDDEN=from-flag", "-e", "ALSO_UNSET"])
        .arg("--env-file")
        .arg(&file)
        .args([&w.main_task, "env"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let env = stdout(&o);
    for want in [
        "LOCAL_ONLY=local value\n",
        "FROM_FILE=file value\n",
        "OVERRIDDEN=from-flag\n",
        "PASSED=passed through the file\n",
    ] {
        assert!(env.contains(want), "{want:?} not in {env}");
    }
    // Unset locally: left out, as docker does (not set to an empty value).
    assert!(!env.contains("NOT_SET_HERE") && !env.contains("ALSO_UNSET"), "{env}");
    assert!(!env.contains("from-file"), "{env}");
    // A malformed file is a usage error naming the file and line, before anything runs.
    std::fs::write(&file, "GOOD=1\nBAD NAME=2\n").unwrap();
    let o = run(w.agent.dcos().args(["task", "exec", "--env-file"]).arg(&file).args([&w.main_task, "true"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 2") && stderr(&o).contains("BAD NAME"), "{}", stderr(&o));
    one_line(&stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_config_keys_are_errors_naming_the_key() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("unknown-key");
    let ca = w.agent.dir.join("ca.crt");
    let p = write_config(&home, &format!("[core]\ndcos_url = \"{}\"\nssl_verfy = \"{}\"\n", w.agent.url, ca.display()));
    let o = run(bare_dcos(&home).env("DCOS_ACS_TOKEN", &w.agent.admin_token).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    one_line(&err);
    assert!(err.contains("ssl_verfy") && err.contains("line 3") && err.contains(&p.display().to_string()), "{err}");
    // An unknown table too.
    write_config(&home, &format!("[core]\ndcos_url = \"{}\"\n[cluster]\nname = \"x\"\n", w.agent.url));
    let o = run(bare_dcos(&home).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("cluster"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn profiles_select_a_cluster_by_flag_or_variable() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("profiles");
    // [core] points at a port where nothing listens; the profile at the agent.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    write_config(
        &home,
        &format!(
            "[core]\ndcos_url = \"https://127.0.0.1:{dead}\"\n\n[profiles.staging]\ndcos_url = \"{}\"\n\
             dcos_acs_token = \"{}\"\nssl_verify = \"{}\"\n\n[profiles.other]\ndcos_url = \"https://127.0.0.1:{dead}\"\n",
            w.agent.url,
            w.agent.admin_token,
            w.agent.dir.join("ca.crt").display()
        ),
    );
    let list = |c: &mut Command| run(c.args(["task", "list", "-q"]));
    let o = list(bare_dcos(&home).env("DCOS_ACS_TOKEN", "x"));
    assert_eq!(o.status.code(), Some(115), "no profile: [core]: {}", stderr(&o));
    assert!(stderr(&o).contains("(the URL is from the key core.dcos_url in "), "{}", stderr(&o));
    for o in
        [list(bare_dcos(&home).args(["--profile", "staging"])), list(bare_dcos(&home).env("DCOS_PROFILE", "staging"))]
    {
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).lines().any(|l| l == w.main_task), "{}", stdout(&o));
    }
    // The flag wins over the variable, and a flag for a setting wins over the profile.
    let o = list(bare_dcos(&home).env("DCOS_PROFILE", "other").args(["--profile", "staging"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = list(bare_dcos(&home).args(["--profile", "staging", "--url", &format!("https://127.0.0.1:{dead}")]));
    assert_eq!(o.status.code(), Some(115), "{}", stderr(&o));
    assert!(stderr(&o).contains("(the URL is from the flag --url)"), "{}", stderr(&o));
    let o = list(bare_dcos(&home).env("DCOS_ACS_TOKEN", "x").args(["--profile", "other"]));
    assert!(stderr(&o).contains("key profiles.other.dcos_url in "), "{}", stderr(&o));
    // The profile wins over the DCOS_* variables (which often linger from another cluster).
    let o = list(bare_dcos(&home).env("DCOS_URL", format!("https://127.0.0.1:{dead}")).env("DCOS_PROFILE", "staging"));
    assert!(o.status.success(), "{}", stderr(&o));
    // An unknown profile names itself, where it came from, and the ones there are.
    let o = list(bare_dcos(&home).env("DCOS_PROFILE", "prod"));
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    one_line(&err);
    assert!(err.contains("\"prod\"") && err.contains("DCOS_PROFILE") && err.contains("other, staging"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn tls_and_token_errors_say_what_to_set() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("tls");
    // Another agent's CA: the handshake fails, and the message names the variable and the file it read.
    let other = home.join("other");
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--dir"]).arg(&other));
    assert!(o.status.success());
    let other_ca = other.join("ca.crt");
    let o = run(w.agent.dcos().env("DCOS_SSL_VERIFY", &other_ca).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116));
    let err = stderr(&o);
    one_line(&err);
    assert!(err.contains("DCOS_SSL_VERIFY") && err.contains(&format!("the CA file {}", other_ca.display())), "{err}");
    assert!(err.contains("variable DCOS_SSL_VERIFY"), "where it was set: {err}");
    // Set by the flag: the flag is named as where it came from.
    let o = run(w.agent.dcos().arg("--ssl-verify").arg(&other_ca).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116));
    assert!(stderr(&o).contains("flag --ssl-verify"), "{}", stderr(&o));
    // No CA configured: the system's roots do not know the agent's CA.
    let o = run(w.agent.dcos().env_remove("DCOS_SSL_VERIFY").args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116));
    assert!(stderr(&o).contains("system's trusted roots") && stderr(&o).contains("DCOS_SSL_VERIFY"), "{}", stderr(&o));
    // An unreadable CA file.
    let o = run(w.agent.dcos().env("DCOS_SSL_VERIFY", home.join("missing.crt")).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116));
    assert!(stderr(&o).contains("missing.crt"), "{}", stderr(&o));
    // Verification off: it works, with a warning that says where that was set.
    let o = run(w.agent.dcos().env("DCOS_SSL_VERIFY", "false").args(["task", "list", "-q"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "dcos: warning: TLS verification is off (false from the variable DCOS_SSL_VERIFY)\n");
    // No token anywhere: where a token is read from, without a round trip.
    let o = run(w.agent.dcos().env_remove("DCOS_ACS_TOKEN").env("XDG_CONFIG_HOME", &home).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(117));
    let err = stderr(&o);
    one_line(&err);
    for want in [
        "DCOS_ACS_TOKEN variable",
        "--acs-token flag",
        "dcos_acs_token",
        &home.join("dcos/dcos.toml").display().to_string(),
    ] {
        assert!(err.contains(want), "{want:?}: {err}");
    }
    // A URL that is not https names where it was set.
    let o = run(w.agent.dcos().env("DCOS_URL", w.agent.url.replace("https:", "http:")).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("must start with https://") && stderr(&o).contains("variable DCOS_URL"),
        "{}",
        stderr(&o)
    );
    // No URL anywhere.
    let o = run(bare_dcos(&home).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("DCOS_URL variable") && stderr(&o).contains("--url flag"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}

/// The CI example on a container made as `runc spec` makes it (read-only root, so /tmp is read-only).
#[test]
fn ci_smoke_check_runs_on_a_read_only_container_and_says_why_checks_fail() {
    if skip() {
        return;
    }
    let w = world();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci-smoke-check.sh");
    let dcos_dir = bin("dcos").parent().unwrap().to_path_buf();
    let sh = |task: &str, path: &str, dcos: Option<&Path>| {
        let mut c = Command::new("sh");
        c.env_clear()
            .env("PATH", path)
            .env("DCOS_URL", &w.agent.url)
            .env("DCOS_SSL_VERIFY", w.agent.dir.join("ca.crt"))
            .env("DCOS_ACS_TOKEN", &w.agent.admin_token)
            .arg(&script)
            .arg(task);
        if let Some(d) = dcos {
            c.env("DCOS", d);
        }
        run(&mut c)
    };
    // The read-only container, with dcos on PATH.
    let ro = w.ro.id.clone();
    let o = sh(&ro, &format!("{}:/usr/bin:/bin", dcos_dir.display()), None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().filter(|l| l.starts_with("ok   ")).count(), 4, "{out}");
    assert!(out.contains("ok   a scratch directory is writable"), "{out}");
    // dcos named by $DCOS, not on PATH.
    let o = sh(&w.main_task, "/usr/bin:/bin", Some(&bin("dcos")));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // An unknown task: every check fails, each saying why and that it never ran.
    let o = sh("no-such-task", "/usr/bin:/bin", Some(&bin("dcos")));
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert_eq!(out.lines().filter(|l| l.starts_with("FAIL ") && l.contains("(exit 119)")).count(), 4, "{out}");
    assert!(out.contains("no-such-task") && out.contains("the check did not run"), "{out}");
    // A check that runs and fails prints what the command said, and the other checks still run.
    let broken = Container::start(
        &w.root,
        &format!("{}-nopasswd", prefix()),
        &ContainerOpts {
            readonly: true,
            prepare: Some(|root| std::fs::write(root.join("etc/passwd"), "").unwrap()),
            ..Default::default()
        },
    );
    let o = sh(&broken.id, "/usr/bin:/bin", Some(&bin("dcos")));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("FAIL config is present (exit 1)\n     | /etc/passwd is missing or empty\n"), "{out}");
    assert!(!out.contains("did not run"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok   ")).count(), 3, "{out}");
    drop(broken);
    // dcos nowhere: copied away from the checkout's target/, with PATH without it.
    let dir = scratch("smoke");
    std::fs::copy(&script, dir.join("ci-smoke-check.sh")).unwrap();
    let o =
        run(Command::new("sh").env_clear().env("PATH", "/usr/bin:/bin").arg(dir.join("ci-smoke-check.sh")).arg("x"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("dcos not found") && stderr(&o).contains("DCOS="), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn minting_without_a_signing_key_says_which_key_to_set() {
    let dir = scratch("nokey");
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--dir"]).arg(&dir));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = dir.join("agent.toml");
    let text: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("token_private_key"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, text).unwrap();
    let o = run(Command::new(bin("dcos-exec-agent")).args(["token", "--user", "u", "--config"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&cfg.display().to_string()) && err.contains("set it to") && err.contains("token-signing.key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `support/peer.py` process: a TCP relay to the agent, or a hostile TLS server; killed on drop.
struct Peer {
    child: std::process::Child,
    port: u16,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/peer.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Peer { child, port: line.trim().parse().unwrap() }
    }

    /// Freezes the relay: the link to the agent neither delivers nor fails, like a dead router.
    fn freeze(&self) {
        // SAFETY: kill on our own child's pid.
        assert_eq!(unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), libc::SIGSTOP) }, 0);
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay to the shared agent, and `dcos task exec` of a long command through it, once the command runs.
fn exec_through_relay(extra_env: &[(&str, &str)]) -> (Peer, std::process::Child) {
    let (relay, child, _) = exec_script_through_relay("echo ready; sleep 120", extra_env);
    (relay, child)
}

/// [`exec_through_relay`] with `script` (which prints `ready` first); the rest of stdout arrives on the receiver
/// once dcos has closed it.
fn exec_script_through_relay(
    script: &str,
    extra_env: &[(&str, &str)],
) -> (Peer, std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let w = world();
    let agent_port = w.agent.url.rsplit(':').next().unwrap().to_string();
    let relay = Peer::start(&["relay", &agent_port]);
    let mut c = w.agent.dcos();
    c.env("DCOS_URL", relay.url()).args(["task", "exec", &w.main_task, "sh", "-c", script]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let mut child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let _ = tx.send(rest);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the command did not start");
    assert_eq!(line, "ready\n");
    (relay, child, rx)
}

fn child_stderr(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

/// The attack: the path to the agent freezes mid-session (a stopped relay: no data, no reset). The agent's
/// pings stop arriving, and after the liveness timeout (3 s here, by DCOS_LIVENESS_TIMEOUT) dcos ends with
/// `session lost` (121) instead of waiting for ever.
#[test]
fn a_session_on_a_frozen_link_is_lost_after_the_liveness_timeout() {
    if skip() {
        return;
    }
    let (relay, mut child) = exec_through_relay(&[("DCOS_LIVENESS_TIMEOUT", "3")]);
    relay.freeze();
    let t0 = std::time::Instant::now();
    let st = wait_within(&mut child, 30, "dcos on a frozen link");
    let err = child_stderr(&mut child);
    assert_eq!(st.code(), Some(121), "{err}");
    assert!(t0.elapsed() >= std::time::Duration::from_secs(2), "{:?}", t0.elapsed());
    one_line(&err);
    assert!(err.contains("connection to the agent lost") && err.contains("no ping"), "{err}");
}

/// The attack: with the link frozen and the default 60 s liveness timeout, Ctrl-C must not be ignored. The
/// first SIGINT is forwarded (and dcos waits for the agent); a second one after 3 s with nothing heard from
/// the agent ends dcos with `session lost`. The same for SIGTERM.
#[test]
fn a_second_interrupt_ends_dcos_when_the_link_is_dead() {
    if skip() {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (relay, mut child) = exec_through_relay(&[]);
        relay.freeze();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid, sig) };
        std::thread::sleep(std::time::Duration::from_millis(3500));
        assert!(child.try_wait().unwrap().is_none(), "the first signal only asks the agent");
        // SAFETY: as above.
        unsafe { libc::kill(pid, sig) };
        let st = wait_within(&mut child, 10, "dcos after a second signal on a frozen link");
        let err = child_stderr(&mut child);
        assert_eq!(st.code(), Some(121), "{err}");
        one_line(&err);
        let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        assert!(err.contains(&format!("no answer to {name}")), "{err}");
    }
}

/// No false alarm: on a live link, a second SIGINT 3.5 s after the first is forwarded like the first (the
/// agent answered the ping that followed it), and a command that ignores SIGINT runs to its end.
#[test]
fn a_second_interrupt_on_a_live_link_is_forwarded() {
    if skip() {
        return;
    }
    let (_relay, mut child, rest) =
        exec_script_through_relay("trap '' INT; echo ready; sleep 8; echo done", &[("DCOS_LIVENESS_TIMEOUT", "60")]);
    let pid = i32::try_from(child.id()).unwrap();
    for _ in 0..2 {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGINT) };
        std::thread::sleep(std::time::Duration::from_millis(3500));
    }
    let st = wait_within(&mut child, 30, "dcos of a command that ignores SIGINT");
    let out = rest.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    let err = child_stderr(&mut child);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(out, "done\n", "{err}");
}

/// Waits for `child` and returns its exit code and its peak resident memory in MiB.
fn wait_with_peak_rss(child: &mut std::process::Child, secs: u64) -> (Option<i32>, i64) {
    let pid = i32::try_from(child.id()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, with valid pointers; WNOHANG so a hang is caught by the deadline.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            return (code, ru.ru_maxrss / 1024);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The attack: an agent (or anything that holds a certificate the CLI trusts) answers `task list` with a body
/// that never ends, as a 200 and as a refusal. dcos stops at 256 MiB (64 KiB for a refusal) with one line and
/// exit 125, instead of growing until it aborts.
#[test]
fn an_endless_answer_is_cut_with_one_line() {
    if skip() {
        return;
    }
    let w = world();
    let (cert, key) = (w.agent.dir.join("server.crt"), w.agent.dir.join("server.key"));
    for (status, limit) in [("200 OK", "256 MiB"), ("403 Forbidden", "64 KiB")] {
        let peer = Peer::start(&["endless", status, cert.to_str().unwrap(), key.to_str().unwrap()]);
        let mut child = w
            .agent
            .dcos()
            .env("DCOS_URL", peer.url())
            .args(["task", "list"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (code, peak) = wait_with_peak_rss(&mut child, 120);
        let err = child_stderr(&mut child);
        assert_eq!(code, Some(125), "{status}: {err}");
        one_line(&err);
        assert!(err.contains(&format!("larger than {limit}")) && err.contains(&peer.url()), "{err}");
        // Bounded by the limit (the buffer, at most twice it while it grows), not by the stream.
        assert!(peak < 700, "{status}: peak RSS {peak} MiB");
    }
}

/// The attack: a peer accepts TLS and never answers. `task list` and the exec handshake give up after the
/// request timeout (2 s here, by DCOS_REQUEST_TIMEOUT) as unreachable (115), naming the URL, never the token.
#[test]
fn a_peer_that_never_answers_is_unreachable_after_the_request_timeout() {
    if skip() {
        return;
    }
    let w = world();
    let (cert, key) = (w.agent.dir.join("server.crt"), w.agent.dir.join("server.key"));
    let peer = Peer::start(&["silent", cert.to_str().unwrap(), key.to_str().unwrap()]);
    for args in [&["task", "list"][..], &["task", "exec", "web-1", "true"][..]] {
        let mut child = w
            .agent
            .dcos()
            .env("DCOS_URL", peer.url())
            .env("DCOS_REQUEST_TIMEOUT", "2")
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let st = wait_within(&mut child, 30, "dcos against a silent peer");
        let err = child_stderr(&mut child);
        assert_eq!(st.code(), Some(115), "{args:?}: {err}");
        one_line(&err);
        assert!(err.contains(&peer.url()) && err.contains("no answer") && err.contains("2s"), "{err}");
        assert!(!err.contains(&w.agent.admin_token), "{err}");
    }
}

/// The attack: `dcos auth login`'s token (the organisation's) was sent to every profile's agent, so a partner's
/// agent could replay it. Now a profile's own token wins, and the login token goes only to the profile that
/// logged in (or, logged in without a profile, to the default settings).
#[test]
fn the_login_token_stays_with_the_profile_that_logged_in() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("login-profile");
    let ca = w.agent.dir.join("ca.crt");
    // The "organisation" token is mallory's, whom the ACL denies everything: an exec that carries it fails
    // with 118, one with the partner's (admin) token runs.
    let org = w.agent.token("mallory", &[], "10m");
    let config = |auth_profile: &str| {
        format!(
            "[core]\ndcos_url = \"{url}\"\nssl_verify = \"{ca}\"\n\n[profiles.partner]\ndcos_url = \"{url}\"\n\
             dcos_acs_token = \"{partner}\"\n\n[profiles.bare]\ndcos_url = \"{url}\"\n\n[auth]\ntoken = \"{org}\"\n{auth_profile}",
            url = w.agent.url,
            ca = ca.display(),
            partner = w.agent.admin_token,
        )
    };
    let exec = |profile: Option<&str>| {
        let mut c = bare_dcos(&home);
        if let Some(p) = profile {
            c.args(["--profile", p]);
        }
        run(c.args(["task", "exec", &w.main_task, "true"]))
    };
    // Logged in without a profile.
    write_config(&home, &config(""));
    let o = exec(Some("partner"));
    assert!(o.status.success(), "the partner profile must use its own token: {}", stderr(&o));
    let o = exec(Some("bare"));
    assert_eq!(o.status.code(), Some(117), "another profile must not get the login token: {}", stderr(&o));
    one_line(&stderr(&o));
    assert!(
        stderr(&o).contains("no bearer token for profile bare: the token of 'dcos auth login' belongs to the default"),
        "{}",
        stderr(&o)
    );
    let o = exec(None);
    assert_eq!(o.status.code(), Some(118), "the default settings use the login token: {}", stderr(&o));
    // Logged in with --profile bare: only that profile gets it.
    write_config(&home, &config("profile = \"bare\"\n"));
    assert_eq!(exec(Some("bare")).status.code(), Some(118));
    assert_eq!(exec(None).status.code(), Some(117));
    assert!(exec(Some("partner")).status.success());
    // Logged in with --profile partner, which has its own token: the profile's token wins.
    write_config(&home, &config("profile = \"partner\"\n"));
    assert!(exec(Some("partner")).status.success());
    let _ = std::fs::remove_dir_all(&home);
}

/// The same leak through `[core]`: its `dcos_acs_token` was sent to a profile that names a URL of its own
/// (another cluster). It goes only where `[core]`'s own URL points: here `localhost` stands for the other
/// cluster (the agent's certificate names it too, so only the token decides the outcome).
#[test]
fn cores_token_is_not_sent_to_a_profile_with_another_url() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("core-token");
    let other = w.agent.url.replace("127.0.0.1", "localhost");
    write_config(
        &home,
        &format!(
            "[core]\ndcos_url = \"{url}\"\nssl_verify = \"{ca}\"\ndcos_acs_token = \"{token}\"\n\n\
             [profiles.same]\ndcos_url = \"{url}\"\n\n[profiles.other]\ndcos_url = \"{other}\"\n",
            url = w.agent.url,
            ca = w.agent.dir.join("ca.crt").display(),
            token = w.agent.admin_token,
        ),
    );
    let exec = |profile: &str| run(bare_dcos(&home).args(["--profile", profile, "task", "exec", &w.main_task, "true"]));
    let o = exec("same");
    assert!(o.status.success(), "[core]'s URL gets [core]'s token: {}", stderr(&o));
    let o = exec("other");
    assert_eq!(o.status.code(), Some(117), "another URL must not get [core]'s token: {}", stderr(&o));
    one_line(&stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}

/// A token with a line break (a pasted file) is named as malformed, with where it was read from, not as a
/// header the HTTP library cannot parse.
#[test]
fn a_malformed_token_names_where_it_came_from() {
    if skip() {
        return;
    }
    let w = world();
    let o = run(w.agent.dcos().env("DCOS_ACS_TOKEN", "eyJhbGciOi\nJFZERTQSJ9").args(["task", "list"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    one_line(&stderr(&o));
    assert!(stderr(&o).contains("token (variable DCOS_ACS_TOKEN) is malformed"), "{}", stderr(&o));
    let home = scratch("malformed-token");
    let p = write_config(&home, &format!("[core]\ndcos_acs_token = \"a\\u0001b\"\ndcos_url = \"{}\"\n", w.agent.url));
    let o =
        run(bare_dcos(&home).env("DCOS_SSL_VERIFY", w.agent.dir.join("ca.crt")).args(["task", "exec", "x", "true"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("key core.dcos_acs_token in {}", p.display())), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}

/// `ssl_verify = "ca.crt"` in dcos.toml means the file beside dcos.toml, wherever dcos runs.
#[test]
fn relative_ca_paths_in_the_config_file_are_beside_it() {
    if skip() {
        return;
    }
    let w = world();
    let home = scratch("relative-ca");
    let p = write_config(
        &home,
        &format!(
            "[core]\ndcos_url = \"{}\"\ndcos_acs_token = \"{}\"\nssl_verify = \"ca.crt\"\n",
            w.agent.url, w.agent.admin_token
        ),
    );
    std::fs::copy(w.agent.dir.join("ca.crt"), p.parent().unwrap().join("ca.crt")).unwrap();
    let o = run(bare_dcos(&home).current_dir("/").args(["task", "list", "-q"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l == w.main_task), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&home);
}

/// The attack: a task id (from a container's annotation, which its owner controls) with a right-to-left
/// override, a zero-width space and a line separator reads on a terminal as another name. `dcos task list`
/// shows them escaped, in the table and with `-q`.
#[test]
fn bidi_and_zero_width_characters_in_task_ids_are_escaped() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let id = format!("bidi-{p}\u{202e}txt.exe\u{200b}\u{2028}x");
    let _c = Container::start(
        &w.root,
        &format!("{p}-bidi"),
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), id)], ..Default::default() },
    );
    let hidden = |c: char| matches!(c, '\u{202e}' | '\u{200b}' | '\u{2028}');
    for args in [&["task", "list"][..], &["task", "list", "-q"][..]] {
        let o = run(w.agent.dcos().args(args).arg(format!("bidi-{p}")));
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(&format!("bidi-{p}\\u{{202e}}txt.exe\\u{{200b}}\\u{{2028}}x")), "{args:?}: {out}");
        assert!(!out.chars().any(hidden), "{args:?}: {out:?}");
    }
}
