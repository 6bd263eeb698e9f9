//! How operators watch a real agent: `/metrics` after real sessions, refusals and debug-image pulls (the counters
//! move by exactly what happened), who may scrape it, `/readyz` before and after the runtimes were read, JSON
//! log lines with the refusals and sessions in them and never a token, no colour in a log file, and `--version`
//! naming the git revision of the build.

#[path = "support/registry.rs"]
mod registry;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use support::*;

/// The admin may do anything with any image; `scraper` may only read metrics; `alice` may only list.
const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
subjects = ["user:scraper"]
tasks = ["*"]
actions = ["metrics"]

[[rule]]
subjects = ["user:alice"]
tasks = ["*"]
actions = ["list"]

[[rule]]
effect = "deny"
subjects = ["user:mallory"]
tasks = ["*"]
actions = ["*"]
"#;

/// Only runc's default root (where the test containers are), no engines to wait for.
const RUNTIMES: &str = "runc_roots = [\"/run/runc\"]\ncrun_roots = []\ndocker_sockets = []\ncontainerd_sockets = []\n";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `GET path` over plain HTTP/1.1: (status, body); status 0 and the error when nothing answers.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// `GET path` on the agent's HTTPS API with `token` (none if empty), through curl: (status, body).
fn https_get(agent: &Agent, path: &str, token: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "--cacert"]).arg(agent.dir.join("ca.crt"));
    if !token.is_empty() {
        // From a file, so that the token is not on curl's command line.
        let h = agent.dir.join(format!("header-{}", std::process::id()));
        std::fs::write(&h, format!("Authorization: Bearer {token}\n")).unwrap();
        c.arg("-H").arg(format!("@{}", h.display()));
    }
    let o = run(c.arg(format!("{}{path}", agent.url)));
    assert!(o.status.success(), "curl: {}", stderr(&o));
    let out = stdout(&o);
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_string())
}

/// The samples of an OpenMetrics page: `name{labels}` to value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// How far each sample moved from `before` to `after` (absent counts as 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// What the build scripts put into `--version`: HEAD's short revision, or `unknown` without git or a checkout.
fn head_revision() -> String {
    if let Some(r) = std::env::var("DCOS_EXEC_REVISION").ok().filter(|r| !r.is_empty()) {
        return r;
    }
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| stdout(&o).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

#[test]
fn metrics_count_real_sessions_refusals_and_pulls_and_the_json_log_records_them_without_tokens() {
    if skip() {
        return;
    }
    remove_stale_containers();
    let p = prefix();
    let root = std::env::temp_dir().join(format!("{p}-obs"));
    std::fs::create_dir_all(&root).unwrap();
    let task = format!("web-{p}-obs");
    let c = Container::start(
        &root,
        &format!("{p}-obs"),
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.clone())], ..Default::default() },
    );
    let metrics_addr = free_addr();
    // Everything the agent and its libraries log, down to trace, must be free of tokens.
    let agent = Agent::start_logging(
        &root.join("agent"),
        &format!("log_format = \"json\"\nmetrics_listen = \"{metrics_addr}\""),
        Some(RUNTIMES),
        ACL,
        "trace",
    );
    let layout = root.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);

    let (status, page) = http_get(&metrics_addr, "/metrics");
    assert_eq!(status, 200, "{page}");
    let before = samples(&page);

    // Three sessions that run: output on stdout and stderr, stdin, a non-zero exit.
    let o = agent.sh(&task, "printf hello; printf err >&2");
    assert_eq!((o.status.code(), stdout(&o), stderr(&o)), (Some(0), "hello".into(), "err".into()));
    let o = run_with_input(agent.dcos().args(["task", "exec", "-i", &task, "sh", "-c", "cat; printf e2 >&2"]), b"abcd");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "abcd".into()), "{}", stderr(&o));
    assert_eq!(agent.sh(&task, "exit 3").status.code(), Some(3));
    // One that fails to start.
    let o = run(agent.dcos().args(["task", "exec", &task, "no-such-command"]));
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    // Refused: denied by the ACL, a token this agent never signed, no token at all.
    let mallory = agent.token("mallory", &[], "1h");
    let o = run(agent.dcos_as(&mallory).args(["task", "exec", &task, "true"]));
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    let flip = if agent.admin_token.ends_with('A') { 'Q' } else { 'A' };
    let forged = format!("{}{flip}", &agent.admin_token[..agent.admin_token.len() - 1]);
    let o = run(agent.dcos_as(&forged).args(["task", "exec", &task, "true"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    // No token at all: `dcos` refuses that itself, so the request goes straight to the agent.
    let (status, body) = https_get(&agent, &format!("/v1/tasks/{task}/exec"), "");
    assert_eq!(status, 401, "{body}");
    // Debug images: pulled, then from the cache, then a tag the layout does not have.
    let debug = |tag: &str, policy: &str| {
        let img = format!("oci:{}:{tag}", layout.display());
        run(agent.dcos().args(["task", "exec", "--debug-image", &img, "--pull-policy", policy, &task, "echo", "dbg"]))
    };
    let o = debug("v1", "always");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "dbg\n".into()), "{}", stderr(&o));
    let o = debug("v1", "if-not-present");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "dbg\n".into()), "{}", stderr(&o));
    let o = debug("nope", "always");
    assert_eq!(o.status.code(), Some(122), "{}", stderr(&o));

    // A client killed mid-session: active while it runs, then lost (its process hung up).
    let mut gone = agent
        .dcos()
        .args(["task", "exec", &task, "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let active =
        |want: f64| samples(&http_get(&metrics_addr, "/metrics").1).get("dcos_exec_sessions_active") == Some(&want);
    assert!(eventually(30, || active(1.0)), "the session never showed as active");
    gone.kill().unwrap();
    gone.wait().unwrap();
    assert!(eventually(30, || active(0.0)), "the lost session still counts as active");

    // Who may scrape on the API port: a token granted `metrics`; not one without it, not none.
    let scraper = agent.token("scraper", &[], "1h");
    let alice = agent.token("alice", &[], "1h");
    let (status, body) = https_get(&agent, "/metrics", &alice);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    let (status, body) = https_get(&agent, "/metrics", "");
    assert_eq!(status, 401, "{body}");
    let (status, api_page) = https_get(&agent, "/metrics", &scraper);
    assert_eq!(status, 200, "{api_page}");
    assert!(api_page.contains("dcos_exec_sessions_total"), "{api_page}");

    // The image cache's size is measured after a session that changed the cache has ended, off its path.
    let layer = registry::busybox_layer().len() as f64;
    let cached = || samples(&http_get(&metrics_addr, "/metrics").1).get("dcos_exec_image_cache_bytes").copied();
    assert!(eventually(30, || cached().is_some_and(|b| b > layer)), "cache size never measured: {:?}", cached());
    let (status, page) = http_get(&metrics_addr, "/metrics");
    assert_eq!(status, 200);
    let after = samples(&page);
    let d = |k: &str| delta(&before, &after, k);
    // exec: 3 exited + 1 command_not_found + 1 lost; debug: 2 exited + 1 image_failed.
    assert_eq!(d(r#"dcos_exec_sessions_total{outcome="exited"}"#), 5.0, "{page}");
    assert_eq!(d(r#"dcos_exec_sessions_total{outcome="failed"}"#), 2.0, "{page}");
    assert_eq!(d(r#"dcos_exec_session_errors_total{code="command_not_found"}"#), 1.0, "{page}");
    assert_eq!(d(r#"dcos_exec_session_errors_total{code="image_failed"}"#), 1.0, "{page}");
    assert_eq!(d(r#"dcos_exec_sessions_total{outcome="refused"}"#), 3.0, "{page}");
    assert_eq!(d(r#"dcos_exec_sessions_total{outcome="lost"}"#), 1.0, "{page}");
    assert_eq!(d(r#"dcos_exec_sessions_total{outcome="signaled"}"#), 0.0, "a hung-up session is lost: {page}");
    // Exec refusals, then alice's and the token-less scrape of /metrics.
    assert_eq!(d(r#"dcos_exec_denials_total{code="forbidden"}"#), 2.0, "{page}");
    assert_eq!(d(r#"dcos_exec_denials_total{code="unauthenticated"}"#), 3.0, "{page}");
    assert_eq!(after.get("dcos_exec_sessions_active"), Some(&0.0), "{page}");
    // Every session whose process ran was timed from the upgrade to the start.
    assert_eq!(d(r#"dcos_exec_session_start_seconds_count{kind="exec"}"#), 4.0, "{page}");
    assert_eq!(d(r#"dcos_exec_session_start_seconds_count{kind="debug"}"#), 2.0, "{page}");
    let inf = r#"dcos_exec_session_start_seconds_bucket{le="+Inf",kind="exec"}"#;
    assert_eq!(d(inf), 4.0, "{page}");
    assert!(d(r#"dcos_exec_session_start_seconds_sum{kind="exec"}"#) > 0.0, "{page}");
    // Bytes: "abcd" in; "hello" "err", "abcd" "e2", "dbg\n" twice out. The audit log agrees.
    assert_eq!(d("dcos_exec_stdin_bytes_total"), 4.0, "{page}");
    assert_eq!(d("dcos_exec_output_bytes_total"), 22.0, "{page}");
    let ends: Vec<_> = agent.audit().into_iter().filter(|r| r["event"] == "session_end").collect();
    let audited: u64 = ends.iter().map(|r| r["bytes_out"].as_u64().unwrap()).sum();
    assert_eq!(audited, 22, "{ends:?}");
    assert_eq!(d(r#"dcos_exec_image_pulls_total{result="pulled"}"#), 1.0, "{page}");
    assert_eq!(d(r#"dcos_exec_image_pulls_total{result="cached"}"#), 1.0, "{page}");
    assert_eq!(d(r#"dcos_exec_image_pulls_total{result="failed"}"#), 1.0, "{page}");
    let cache = after["dcos_exec_image_cache_bytes"];
    assert!(cache > registry::busybox_layer().len() as f64, "the unpacked busybox is in the cache: {page}");
    assert!(page.contains("dcos_exec_build_info{component=\"agent\""), "{page}");
    if std::env::var_os("DCOS_EXEC_E2E_BIN_DIR").is_none() {
        let want = format!("revision=\"{}\"", head_revision());
        assert!(page.contains(&want), "{want} (HEAD; rebuild after committing): {page}");
    }
    // Nothing on the unauthenticated page names a task, container or user.
    for name in [task.as_str(), c.id.as_str(), "mallory", "admin", "alice"] {
        assert!(!page.contains(name), "{name} on the metrics page: {page}");
    }
    assert_eq!(samples(&api_page).keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    let (status, body) = http_get(&metrics_addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&metrics_addr, "/v1/tasks");
    assert_eq!(status, 404, "only the monitoring endpoints on metrics_listen: {body}");

    // The log: JSON lines, the refusals and sessions in them, no token, no colour.
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    let lines = json_lines(&log);
    let refused = lines
        .iter()
        .find(|l| l["message"] == "refused" && l["user"] == "mallory")
        .unwrap_or_else(|| panic!("no refusal of mallory in the log:\n{log}"));
    assert_eq!(refused["level"], "INFO", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["task"], task.as_str(), "{refused}");
    assert!(refused["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{refused}");
    assert!(lines.iter().any(|l| l["message"] == "refused" && l["code"] == "unauthenticated"), "{log}");
    let start = lines
        .iter()
        .find(|l| l["message"] == "session start" && l["task"] == task.as_str())
        .unwrap_or_else(|| panic!("no session start in the log:\n{log}"));
    assert_eq!((start["level"].as_str(), start["user"].as_str()), (Some("INFO"), Some("admin")), "{start}");
    let session = start["session"].as_str().unwrap();
    let end = lines
        .iter()
        .find(|l| l["message"] == "session end" && l["session"] == session)
        .unwrap_or_else(|| panic!("no end of session {session} in the log:\n{log}"));
    assert_eq!((end["outcome"].as_str(), end["exit_code"].as_i64()), (Some("exited"), Some(0)), "{end}");
    assert_eq!((end["bytes_out"].as_u64(), end["level"].as_str()), (Some(8), Some("INFO")), "{end}");
    assert!(
        lines.iter().any(|l| l["message"] == "session end" && l["error"] == "command_not_found"),
        "the failed start is logged with its code:\n{log}"
    );
    let targets: std::collections::BTreeSet<_> =
        lines.iter().filter(|l| l["level"] == "TRACE").filter_map(|l| l["target"].as_str()).collect();
    assert!(targets.iter().any(|t| t.starts_with("rustls")), "the libraries' trace lines are in the log: {targets:?}");
    for (what, secret) in
        [("admin", &agent.admin_token), ("mallory", &mallory), ("forged", &forged), ("scraper", &scraper)]
    {
        // Any long piece of a token would do to replay or study it.
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(secret.as_str()) && !log.contains(sig), "the {what} token is in the log");
    }
    // Refusal reasons may say "no bearer token"; a header or its value is something else.
    let lower = log.to_ascii_lowercase();
    for header in ["bearer ey", "authorization:", "authorization\":"] {
        assert!(!lower.contains(header), "an Authorization header is in the log ({header})");
    }
    assert!(lower.contains("no bearer token"), "the token-less refusal is logged with its reason");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
}

#[test]
fn readyz_is_false_until_the_runtimes_were_read_and_healthz_is_liveness() {
    if skip() {
        return;
    }
    let root = std::env::temp_dir().join(format!("{}-ready", prefix()));
    std::fs::create_dir_all(&root).unwrap();
    // A Docker socket that takes the agent's question and does not answer until the test lets it go.
    let sock = root.join("stalled.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let metrics_addr = free_addr();
    let runtimes = format!(
        "runc_roots = [\"{}\"]\ncrun_roots = []\ndocker_sockets = [\"{}\"]\ncontainerd_sockets = []\napi_timeout = \"300s\"\n",
        root.join("no-runc").display(),
        sock.display()
    );
    let agent = Agent::start_with_runtimes(
        &root.join("agent"),
        &format!("metrics_listen = \"{metrics_addr}\""),
        &runtimes,
        ACL,
    );
    // The agent asks at start; while the question is open it is alive but not ready.
    let (question, _) = listener.accept().unwrap();
    for (status, body) in [https_get(&agent, "/readyz", ""), http_get(&metrics_addr, "/readyz")] {
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((v["ready"].as_bool(), v["runtimes_read"].as_bool()), (Some(false), Some(false)), "{body}");
    }
    assert_eq!(https_get(&agent, "/healthz", "").0, 200);
    assert_eq!(http_get(&metrics_addr, "/healthz").0, 200);
    // Hanging up answers the question (with an error: an unreachable engine never blocks readiness for good).
    drop(question);
    assert!(eventually(30, || http_get(&metrics_addr, "/readyz").0 == 200), "never ready");
    let (status, body) = https_get(&agent, "/readyz", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"], true);
    // A log in a file (the default text format) carries no colour codes.
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    assert!(log.contains("runtimes read: ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log}");
}

#[test]
fn version_of_both_binaries_names_the_git_revision_of_head() {
    let want = head_revision();
    for (name, shown) in [("dcos-exec-agent", "dcos-exec-agent"), ("dcos", "dcos")] {
        let o = run(Command::new(bin(name)).arg("--version"));
        assert!(o.status.success(), "{name} --version: {}", stderr(&o));
        let out = stdout(&o);
        let version = env!("CARGO_PKG_VERSION");
        assert!(out.starts_with(&format!("{shown} {version} (")), "{out}");
        if std::env::var_os("DCOS_EXEC_E2E_BIN_DIR").is_none() {
            assert_eq!(
                out.trim(),
                format!("{shown} {version} ({want})"),
                "{name} was built at another revision than HEAD's: `cargo build --workspace` after committing"
            );
        }
    }
}

#[test]
fn a_build_outside_a_git_checkout_says_unknown() {
    // The build script's fallback, run as cargo runs it but from a directory that is no checkout.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/build.rs");
    let dir = std::env::temp_dir().join(format!("{}-nogit", prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("build-script");
    let o = run(Command::new("rustc").args(["--edition", "2021", "-o"]).arg(&exe).arg(&script));
    assert!(o.status.success(), "rustc: {}", stderr(&o));
    let o =
        run(Command::new(&exe).current_dir(&dir).env("GIT_CEILING_DIRECTORIES", &dir).env_remove("DCOS_EXEC_REVISION"));
    assert!(o.status.success(), "the build script failed: {}", stderr(&o));
    assert!(stdout(&o).contains("cargo:rustc-env=DCOS_EXEC_REVISION=unknown"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn on_sigterm_readyz_turns_false_and_hung_up_sessions_end_as_shutdown() {
    if skip() {
        return;
    }
    remove_stale_containers();
    let p = prefix();
    let root = std::env::temp_dir().join(format!("{p}-obsdown"));
    std::fs::create_dir_all(&root).unwrap();
    let task = format!("web-{p}-obsdown");
    let _c = Container::start(
        &root,
        &format!("{p}-obsdown"),
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.clone())], ..Default::default() },
    );
    let metrics_addr = free_addr();
    // The session's process ignores the hang-up and outlives the shutdown: the agent ends it as shut down.
    let mut agent = Agent::start_with_runtimes(
        &root.join("agent"),
        &format!(
            "log_format = \"json\"\nmetrics_listen = \"{metrics_addr}\"\nshutdown_grace = \"10s\"\ngrace_period = \"60s\""
        ),
        RUNTIMES,
        ACL,
    );
    assert!(eventually(30, || http_get(&metrics_addr, "/readyz").0 == 200), "never ready");
    let mut session = agent
        .dcos()
        .args(["task", "exec", &task, "sh", "-c", "trap '' HUP; echo up; exec sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 3];
    session.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"up\n");
    // SAFETY: kill(2) on the agent this test started.
    assert_eq!(unsafe { libc::kill(agent.pid(), libc::SIGTERM) }, 0);
    // Once the signal is handled, and while it waits for the session, the agent is alive but not ready.
    let log = || std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
    // Up to half of shutdown_grace (10 s): the checks below must still find the agent waiting for the session.
    assert!(eventually(5, || http_get(&metrics_addr, "/readyz").0 == 503), "not 503 after SIGTERM:\n{}", log());
    let (status, body) = http_get(&metrics_addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["ready"].as_bool(), v["shutting_down"].as_bool()), (Some(false), Some(true)), "{body}");
    assert_eq!(http_get(&metrics_addr, "/healthz").0, 200);
    let (status, page) = http_get(&metrics_addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(samples(&page).get("dcos_exec_sessions_active"), Some(&1.0), "{page}");
    let out = session.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", String::from_utf8_lossy(&out.stderr));
    agent.child.wait().unwrap();
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    let end = json_lines(&log)
        .into_iter()
        .find(|l| l["message"] == "session end" && l["task"] == task.as_str())
        .unwrap_or_else(|| panic!("no session end in the log:\n{log}"));
    assert_eq!((end["outcome"].as_str(), end["error"].as_str()), (Some("shutdown"), Some("internal")), "{end}");
}
