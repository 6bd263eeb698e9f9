//! Attacks on the audit trail, the logs and the terminals of the people who read them: an audit log on a full
//! filesystem, a flood of unauthenticated requests with long paths, control characters in a request's field
//! names and in a container's task-id annotation, malformed WebSocket handshakes and requests refused before
//! authentication. Real agent, real runc containers, the real `dcos` binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::*;

/// A directory of its own for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-e2e-hostile", prefix())).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn port(agent: &Agent) -> u16 {
    agent.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Runs `support/raw_https.py`: raw requests over TLS to the agent; the answers (status line, body).
fn raw(agent: &Agent, requests: &[String], repeat: usize) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/raw_https.py");
    let job = serde_json::json!({
        "port": port(agent),
        "ca": agent.dir.join("ca.crt"),
        "requests": requests,
        "repeat": repeat,
    });
    let o = run_with_input(Command::new("python3").arg(script), job.to_string().as_bytes());
    assert!(o.status.success(), "raw_https.py: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `x-dcos-exec-request` of a JSON text, as the CLI encodes it.
fn request_header(json: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn agent_log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir.join("agent.log")).unwrap()
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let o =
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(at));
        assert!(o.status.success(), "mount: {}", stderr(&o));
        Tmpfs(at.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file of zeros until it is full.
fn fill(dir: &Path) -> PathBuf {
    let f = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4096"])
        .arg(format!("of={}", f.display()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    f
}

/// The audit trail fails closed: with the audit log's filesystem full, a session is refused and its command
/// never runs; a record torn by the failed write does not swallow the records written once there is room.
#[test]
fn a_full_audit_log_refuses_sessions_and_leaves_no_torn_record() {
    if skip() {
        return;
    }
    let d = dir("full");
    let fs = Tmpfs::mount(&d.join("auditfs"), "256k");
    let audit = fs.0.join("audit.log");
    let agent = Agent::start_with(&d.join("agent"), &format!("audit_log = {:?}", audit.display().to_string()));
    let p = prefix();
    let task = format!("web-full-{p}");
    let c = Container::start(
        &d,
        &format!("{p}-full"),
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.clone())], ..Default::default() },
    );
    let o = agent.sh(&task, "echo before");
    assert_eq!(stdout(&o), "before\n", "{}", stderr(&o));
    // A record whose length does not fit the rest of the log's last page: the failed write is a partial one.
    let long = "x".repeat(5000);
    let filler = fill(&fs.0);
    let marker = c.rootfs().join("tmp/ran");
    let o = agent.sh(&task, &format!("touch /tmp/ran # {long}"));
    assert_eq!(o.status.code(), Some(125), "refused: {} {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("audit log"), "{}", stderr(&o));
    assert!(!marker.exists(), "the session ran with no audit record");
    assert!(agent_log(&agent).lines().any(|l| l.contains("ERROR") && l.contains("audit log write failed")));

    std::fs::remove_file(filler).unwrap();
    let o = agent.sh(&task, "echo after");
    assert_eq!(stdout(&o), "after\n", "{}", stderr(&o));
    let text = std::fs::read_to_string(&audit).unwrap();
    for l in text.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "not a JSON record: {l:?}");
    }
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let after: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["command"][2].as_str() == Some("echo after")).collect();
    let events: Vec<&str> = after.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(events, ["session_start", "session_end"], "{text}");
    assert!(!text.contains("touch /tmp/ran"), "a start record of the refused session: {text}");
    drop(agent);
}

/// A peer with no token cannot fill the audit log: paths are cut to 256 bytes and unauthenticated refusals
/// are recorded at most 20 a second (the rest counted in `suppressed`).
#[test]
fn an_unauthenticated_flood_grows_the_audit_log_by_a_bounded_amount() {
    if skip() {
        return;
    }
    let d = dir("flood");
    let agent = Agent::start(&d.join("agent"));
    let audit = agent.dir.join("audit.log");
    let before = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let seg = "A".repeat(8_000);
    let started = std::time::Instant::now();
    let req = format!("GET /v1/tasks/{seg}/exec HTTP/1.1\r\nHost: x\r\n\r\n");
    let n = raw(&agent, &[req], 1500).as_u64().unwrap();
    let secs = started.elapsed().as_secs() + 1;
    assert!(n >= 1400, "only {n} requests answered");
    let grown = std::fs::metadata(&audit).unwrap().len() - before;
    eprintln!("{n} unauthenticated requests with 8 KB paths in {secs}s grew the audit log by {grown} bytes");
    // At most 20 records a second of under 1 KiB each, whatever the request rate and the path length; a run of
    // `secs` whole seconds touches at most `secs + 1` of the limiter's one-second windows.
    let windows = secs + 1;
    assert!(grown <= windows * 20 * 1024, "{n} requests in {secs}s grew the audit log by {grown} bytes");
    let denied: Vec<serde_json::Value> = agent.audit().into_iter().filter(|r| r["event"] == "denied").collect();
    assert!(!denied.is_empty());
    for r in &denied {
        let path = r["path"].as_str().unwrap();
        assert!(path.len() < 300 && path.contains("more bytes]"), "{path}");
    }
    // Every refusal is accounted for: recorded, or counted in a later record's `suppressed`. The last ones
    // counted are carried by the next refusal recorded.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    raw(&agent, &["GET /v1/tasks/x/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()], 0);
    let denied: Vec<serde_json::Value> = agent.audit().into_iter().filter(|r| r["event"] == "denied").collect();
    let suppressed: u64 = denied.iter().filter_map(|r| r["suppressed"].as_u64()).sum();
    assert_eq!(denied.len() as u64 + suppressed, n + 1, "records and counts");
    assert!(suppressed > 0);
    let log_lines = agent_log(&agent).lines().filter(|l| l.contains("refused")).count() as u64;
    assert!(log_lines <= windows * 20 + 1, "{log_lines} refused lines in the log");
}

/// A user with a valid token and no grant sends a field name with a newline: serde's error quotes it, the
/// refusal carries it, but no line of the log is forged and the client gets it escaped.
#[test]
fn a_newline_in_a_request_field_name_forges_no_log_line() {
    if skip() {
        return;
    }
    let d = dir("fieldname");
    let agent = Agent::start(&d.join("agent"));
    let bob = agent.token("bob", &[], "1h");
    let fake = "x\n2026-11-27T04:21:00.000000Z  INFO dcos_exec_agent::session: session start session=\"feedbeef\" user=\"admin\"\u{1b}[8m";
    let json = format!("{{\"command\":[\"id\"],{}:1}}", serde_json::to_string(fake).unwrap());
    let req = format!(
        "GET /v1/tasks/anything/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bob}\r\nx-dcos-exec-request: {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        request_header(&json)
    );
    let answers = raw(&agent, &[req], 0);
    let answer = answers[0].as_str().unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once('\n').unwrap().1).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("x\\n2026") && !message.chars().any(char::is_control), "{message:?}");
    let log = agent_log(&agent);
    assert!(log.contains("x\\\\n2026") || log.contains("x\\n2026"), "the refusal is logged: {log}");
    assert!(!log.lines().any(|l| l.starts_with("2026-11-27T04:21:00")), "a forged line: {log}");
    assert!(!log.contains('\u{1b}'), "an escape sequence in the log");
    let denied = agent.audit().into_iter().find(|r| r["event"] == "denied" && r["user"] == "bob").unwrap();
    assert!(!denied["reason"].as_str().unwrap().chars().any(char::is_control));
}

/// Container authors put a newline and terminal escapes in the task-id annotation: the agent does not use
/// such an id (the task is its container id), so neither the log, nor `dcos task list`, nor an ambiguity
/// refusal on a user's terminal ever carries them.
#[test]
fn control_characters_in_task_id_annotations_reach_no_log_and_no_terminal() {
    if skip() {
        return;
    }
    let d = dir("annotation");
    let agent = Agent::start(&d.join("agent"));
    let p = prefix();
    let forged = "\n2026-11-27T04:20:00.000000Z  INFO dcos_exec_agent::session: session end \u{1b}[2J\u{1b}[31mFORGED";
    let mk = |n: &str, t: String| {
        Container::start(
            &d,
            &format!("{p}-inj{n}"),
            &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), t)], ..Default::default() },
        )
    };
    let task = format!("web-q{p}");
    let _a = mk("1", format!("{task}{forged}"));
    let _b = mk("2", format!("{task}2{forged}"));
    let list = run(agent.dcos().args(["task", "list"]));
    assert!(list.status.success(), "{}", stderr(&list));
    let out = stdout(&list);
    assert!(out.contains(&format!("{p}-inj1")), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains("FORGED"), "{out:?}");
    assert!(!out.lines().any(|l| l.starts_with("2026-")), "{out:?}");
    let json = run(agent.dcos().args(["task", "list", "--json"]));
    let tasks: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let ours: Vec<&serde_json::Value> =
        tasks.as_array().unwrap().iter().filter(|t| t["container"].as_str().unwrap().starts_with(&p)).collect();
    assert!(!ours.is_empty() && ours.iter().all(|t| t["id"] == t["container"]), "{tasks}");

    let o = run(agent.dcos().args(["task", "exec", &task, "id"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(119), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.trim_end().chars().any(char::is_control), "{err:?}");
    let log = agent_log(&agent);
    assert!(!log.contains('\u{1b}') && !log.lines().any(|l| l.starts_with("2026-11-27T04:20:00")), "{log}");
}

/// The WebSocket opening handshake of RFC 6455 or nothing: a wrong or missing version, a `Connection` header
/// without `Upgrade`, HTTP/1.0 are refused and nothing runs; a request that is not a GET, or whose task id is
/// not percent-encoded UTF-8, is refused before authentication and still audited.
#[test]
fn malformed_handshakes_are_refused_and_early_refusals_audited() {
    if skip() {
        return;
    }
    let d = dir("handshake");
    let agent = Agent::start(&d.join("agent"));
    let p = prefix();
    let task = format!("web-hs-{p}");
    let c = Container::start(
        &d,
        &format!("{p}-hs"),
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.clone())], ..Default::default() },
    );
    let tok = &agent.admin_token;
    let body = request_header(r#"{"command":["touch","/tmp/ran"]}"#);
    let ask = |method: &str, path: &str, proto: &str, extra: &str| {
        format!(
            "{method} {path} {proto}\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nx-dcos-exec-request: {body}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let up = "Upgrade: websocket\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let exec = format!("/v1/tasks/{task}/exec");
    let cases = [
        (
            "version 8",
            ask("GET", &exec, "HTTP/1.1", &format!("{up}Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}")),
        ),
        ("no version", ask("GET", &exec, "HTTP/1.1", &format!("{up}Connection: Upgrade\r\n{key}"))),
        ("keep-alive", ask("GET", &exec, "HTTP/1.1", &format!("{up}Sec-WebSocket-Version: 13\r\n{key}"))),
        (
            "HTTP/1.0",
            ask("GET", &exec, "HTTP/1.0", &format!("{up}Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}")),
        ),
    ];
    let answers = raw(&agent, &cases.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), 0);
    for ((name, _), a) in cases.iter().zip(answers.as_array().unwrap()) {
        let a = a.as_str().unwrap();
        assert!(a.starts_with("HTTP/1.1 400") || a.starts_with("HTTP/1.0 400"), "{name}: {a}");
        assert!(a.contains("RFC 6455"), "{name}: {a}");
    }
    assert!(!c.rootfs().join("tmp/ran").exists(), "a malformed handshake ran a session");

    // The same request done right runs, so the refusals above are the handshake's.
    let good = ask("GET", &exec, "HTTP/1.1", &format!("{up}Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}"));
    let a = raw(&agent, &[good], 0);
    assert!(a[0].as_str().unwrap().starts_with("HTTP/1.1 101"), "{a}");

    let early =
        [ask("GET", "/v1/tasks/%ff/exec", "HTTP/1.1", ""), ask("POST", &exec, "HTTP/1.1", "Content-Length: 0\r\n")];
    let answers = raw(&agent, &early, 0);
    for a in answers.as_array().unwrap() {
        assert!(a.as_str().unwrap().starts_with("HTTP/1.1 400"), "{a}");
    }
    let denied: Vec<serde_json::Value> =
        agent.audit().into_iter().filter(|r| r["event"] == "denied" && r["code"] == "bad_request").collect();
    for path in ["/v1/tasks/%ff/exec", exec.as_str()] {
        assert!(
            denied.iter().any(|r| r["path"] == path && r["user"].is_null()),
            "no denied record of {path}: {denied:?}"
        );
    }
    assert!(denied.iter().any(|r| r["reason"].as_str().unwrap().contains("only GET")), "{denied:?}");
}

/// The attack: a user with only `exec` on one task sends commands of hundreds of kilobytes (a command that does
/// not exist costs the agent nothing to run), each recorded twice. Uncut, 100 sessions grow the audit log by
/// 40 MB and a loop fills the disk within hours, after which the audit trail, failing closed, refuses every
/// user. Each record keeps 4 KiB of the command and says how long it was and its SHA-256.
#[test]
fn huge_commands_cannot_fill_the_audit_log() {
    if skip() {
        return;
    }
    let w = world();
    let marker = format!("/no-such-{}", prefix());
    let big = "x".repeat(100_000);
    for _ in 0..5 {
        let o = run(w.agent.dcos().args(["task", "exec", &w.main.id, &marker, &big, &big]));
        assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    }
    let text = std::fs::read_to_string(w.agent.dir.join("audit.log")).unwrap();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&marker)).collect();
    assert_eq!(ours.len(), 10, "a start and an end record per session");
    for line in ours {
        assert!(line.len() < 8192, "a record of {} bytes", line.len());
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["command_bytes"], marker.len() + 200_000, "{}", &line[..200]);
        assert_eq!(r["command"][0], marker.as_str());
        assert_eq!(r["command_sha256"].as_str().map(str::len), Some(64));
    }
}
