//! The `dcos_exec` client library against a real agent and real containers: collected output and exit
//! status, the builder (stdin, env, user, workdir, tty), streaming with stdin and signals, the task list, and
//! one typed error per kind of refusal.

mod support;

use dcos_exec::{Client, Error, Event, TermSize, TlsOptions};
use support::*;

fn client(w: &World, token: Option<&str>) -> Client {
    Client::new(&w.agent.url, token.map(String::from), TlsOptions::ca_file(w.agent.dir.join("ca.crt"))).unwrap()
}

#[tokio::test]
async fn exec_collects_stdout_stderr_and_the_exit_status() {
    if skip() {
        return;
    }
    let w = world();
    let c = client(w, Some(&w.agent.admin_token));
    let out = c.exec(&w.main_task, ["sh", "-c", "echo out; echo err >&2; exit 3"]).await.unwrap();
    assert_eq!((out.stdout_text().as_str(), out.stderr_text().as_str()), ("out\n", "err\n"));
    assert_eq!(out.status.code(), Some(3));
    assert!(!out.status.success());
    assert_eq!(out.status.to_string(), "exit status: 3");
    let out = c.exec(&w.main_task, ["sh", "-c", "kill -KILL $$"]).await.unwrap();
    assert_eq!((out.status.code(), out.status.signal(), out.status.shell_code()), (None, Some(9), 137));
    let out = c.exec(&w.main_task, ["true"]).await.unwrap();
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    // Binary output arrives byte for byte.
    let out = c.exec(&w.main_task, ["sh", "-c", "printf '\\000\\377\\n'"]).await.unwrap();
    assert_eq!(out.stdout, [0, 255, b'\n']);
}

#[tokio::test]
async fn the_builder_sets_stdin_env_user_workdir_and_tty() {
    if skip() {
        return;
    }
    let w = world();
    let c = client(w, Some(&w.agent.admin_token));
    let out = c
        .command(&w.main_task, ["sh", "-c", "pwd; id -u; echo \"$GREETING $OTHER\"; sort"])
        .env("GREETING", "hello")
        .envs([("OTHER", "world")])
        .user("app")
        .workdir("/tmp")
        .stdin_bytes("b\na\n")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "/tmp\n1000\nhello world\na\nb\n");
    let out = c
        .command(&w.main_task, ["sh", "-c", "stty size; test -t 0 && echo tty"])
        .tty(Some(TermSize { width: 77, height: 11 }))
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "11 77\r\ntty\r\n");
    // Stdin larger than the agent's frames and the pipe's buffer, through `wc -c`.
    let big = vec![b'x'; 3 << 20];
    let out = c.command(&w.main_task, ["wc", "-c"]).stdin_bytes(big).output().await.unwrap();
    assert_eq!(out.stdout_text().trim(), (3 << 20).to_string());
}

#[tokio::test]
async fn a_session_streams_and_takes_stdin_and_signals() {
    if skip() {
        return;
    }
    let w = world();
    let c = client(w, Some(&w.agent.admin_token));
    let script = "echo ready; read line; echo \"got $line\"; exec sleep 60";
    let mut s = c.command(&w.main_task, ["sh", "-c", script]).interactive(true).spawn().await.unwrap();
    let stdin = s.stdin().expect("interactive sessions have stdin");
    assert!(s.stdin().is_none(), "taken once");
    let control = s.control();
    let (mut started, mut out) = (None, String::new());
    let status = loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(20), s.next_event()).await.unwrap().unwrap();
        match ev {
            Some(Event::Started(st)) => started = Some(st.pid),
            Some(Event::Stdout(b)) => {
                out.push_str(&String::from_utf8_lossy(&b));
                if out == "ready\n" {
                    stdin.write(b"hello\n").await.unwrap();
                } else if out == "ready\ngot hello\n" {
                    control.signal("TERM");
                }
            }
            Some(Event::Exit(st)) => break st,
            other => panic!("{other:?}"),
        }
    };
    assert!(started.is_some_and(|p| p > 1), "{started:?}");
    assert_eq!(out, "ready\ngot hello\n");
    assert_eq!(status.signal(), Some(15));
    assert!(s.next_event().await.unwrap().is_none(), "nothing after the exit");
    // Dropping the stdin writer closes the process's stdin, as with std's ChildStdin.
    let mut s = c.command(&w.main_task, ["cat"]).interactive(true).spawn().await.unwrap();
    let stdin = s.stdin().unwrap();
    stdin.write(b"last words").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), s.output()).await.unwrap().unwrap();
    assert_eq!((out.stdout_text().as_str(), out.status.code()), ("last words", Some(0)));
    // Interactive without input: EOF at once.
    let out = c.command(&w.main_task, ["cat"]).interactive(true).output().await.unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    // A dropped session (as by a timeout): the agent hangs up the process (the test agent's grace period is 1 s).
    let pidfile = format!("/tmp/lib-timeout-{}", std::process::id());
    let host_pidfile = w.main.rootfs().join(pidfile.trim_start_matches('/'));
    let _ = std::fs::remove_file(&host_pidfile);
    let script = format!("echo $$ > {pidfile}; exec sleep 60");
    // Dropped once the process has written its pid, however long starting it takes on a loaded machine.
    let written = async {
        for _ in 0..300 {
            if std::fs::read_to_string(&host_pidfile).is_ok_and(|p| p.ends_with('\n')) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    tokio::select! {
        r = c.exec(&w.main_task, ["sh", "-c", &script]) => panic!("sleep 60 ended before it was dropped: {r:?}"),
        written = written => assert!(written, "the session's process did not write its pid within 30 s"),
    }
    let pid = std::fs::read_to_string(&host_pidfile).unwrap();
    let alive = || w.main.runc_exec(&[], &["kill", "-0", pid.trim()]).status.success();
    // Waiting without blocking the runtime, which closes the dropped session's connection.
    let mut gone = false;
    for _ in 0..300 {
        gone = !alive();
        if gone {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the process {pid} outlived its dropped session");
    let _ = std::fs::remove_file(&host_pidfile);
}

#[tokio::test]
async fn tasks_lists_the_containers() {
    if skip() {
        return;
    }
    let w = world();
    let tasks = client(w, Some(&w.agent.admin_token)).tasks().await.unwrap();
    let main = tasks.iter().find(|t| t.id == w.main_task).expect("the main task is listed");
    assert_eq!((main.container.as_str(), main.state.as_str()), (w.main.id.as_str(), "running"));
}

#[tokio::test]
async fn refusals_are_typed_errors_with_their_exit_codes() {
    if skip() {
        return;
    }
    let w = world();
    let admin = client(w, Some(&w.agent.admin_token));
    let e = admin.exec("no-such-task", ["true"]).await.unwrap_err();
    assert!(matches!(&e, Error::TaskNotFound(m) if m.contains("no-such-task")), "{e:?}");
    assert_eq!((e.exit_code(), e.code()), (119, Some(dcos_exec::ErrorCode::TaskNotFound)));
    let e = admin.exec(&w.main_task, ["no-such-command"]).await.unwrap_err();
    assert!(matches!(e, Error::CommandNotFound(_)), "{e:?}");
    assert_eq!(e.exit_code(), 127);
    // Denied by the ACL: mallory everywhere; alice may exec in web-* but not read stdin.
    let mallory = client(w, Some(&w.agent.token("mallory", &[], "5m")));
    let e = mallory.exec(&w.main_task, ["true"]).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden(_)), "{e:?}");
    assert_eq!(e.exit_code(), 118);
    let alice = client(w, Some(&w.agent.token("alice", &[], "5m")));
    assert!(alice.exec(&w.main_task, ["true"]).await.unwrap().status.success());
    let e = alice.command(&w.main_task, ["cat"]).stdin_bytes("x").output().await.unwrap_err();
    assert!(matches!(&e, Error::Forbidden(m) if m.contains("exec:stdin")), "{e:?}");
    let e = mallory.tasks().await.map(|t| t.len());
    assert_eq!(e.unwrap(), 0, "mallory sees nothing");
    // Bad and missing tokens.
    let e = client(w, Some("not-a-jwt")).exec(&w.main_task, ["true"]).await.unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    assert_eq!(e.exit_code(), 117);
    let e = client(w, None).exec(&w.main_task, ["true"]).await.unwrap_err();
    assert!(matches!(e, Error::NoToken { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 117);
    // TLS: the system roots do not know the agent's CA; the error says what was trusted.
    let c = Client::new(&w.agent.url, Some(w.agent.admin_token.clone()), TlsOptions::system()).unwrap();
    let e = c.exec(&w.main_task, ["true"]).await.unwrap_err();
    assert!(matches!(&e, Error::Tls { trust, .. } if trust.contains("system")), "{e:?}");
    assert_eq!(e.exit_code(), 116);
    let e = Client::new(&w.agent.url, None, TlsOptions::ca_file(w.root.join("missing.crt"))).unwrap_err();
    assert!(matches!(&e, Error::Tls { message, .. } if message.contains("missing.crt")), "{e:?}");
    // Nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = Client::new(&format!("https://127.0.0.1:{port}"), Some("t".into()), TlsOptions::system()).unwrap();
    let e = c.tasks().await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 115);
    // A container killed under a running session: the session ends with its own error, not a hang.
    let victim = Container::start(&w.root, &format!("{}-lib-victim", prefix()), &ContainerOpts::default());
    let session = admin.command(&victim.id, ["sleep", "60"]).spawn().await.unwrap();
    let waiting = tokio::spawn(session.wait());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    victim.kill();
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.unwrap().unwrap();
    match r {
        Err(e) => assert!(matches!(e, Error::ContainerNotRunning(_)), "{e:?}"),
        Ok(st) => assert_eq!(st.signal(), Some(9), "killed with its container"),
    }
}

/// The blocking client, from a plain test.
#[test]
fn the_blocking_client_runs_without_a_runtime() {
    if skip() {
        return;
    }
    let w = world();
    let c = dcos_exec::blocking::Client::new(
        &w.agent.url,
        Some(w.agent.admin_token.clone()),
        TlsOptions::ca_file(w.agent.dir.join("ca.crt")),
    )
    .unwrap();
    let out = c.exec(&w.main_task, ["sh", "-c", "echo hi; exit 2"]).unwrap();
    assert_eq!((out.stdout_text().as_str(), out.status.code()), ("hi\n", Some(2)));
    let out = c.output(c.inner().command(&w.main_task, ["sort"]).stdin_bytes("b\na\n")).unwrap();
    assert_eq!(out.stdout_text(), "a\nb\n");
    assert!(c.tasks().unwrap().iter().any(|t| t.id == w.main_task));
    assert!(matches!(c.exec("no-such-task", ["true"]), Err(Error::TaskNotFound(_))));
}

/// A live agent answers the ping that follows each signal at once ([`dcos_exec::Session::last_heard`] moves
/// even when the process ignores the signal and prints nothing), and `next_event` stays cancel-safe while it
/// waits. Through a relay that then freezes, the same session ends with `SessionLost` after the liveness
/// timeout instead of waiting for ever.
#[tokio::test]
async fn a_signal_is_answered_by_a_live_agent_and_a_frozen_link_is_lost() {
    if skip() {
        return;
    }
    use std::time::{Duration, Instant};
    let w = world();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/peer.py");
    let port = w.agent.url.rsplit(':').next().unwrap();
    /// Killed (stopped or not) however the test ends.
    struct Relay(std::process::Child);
    impl Drop for Relay {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut relay = Relay(
        std::process::Command::new("python3")
            .arg(script)
            .args(["relay", port])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(relay.0.stdout.take().unwrap()), &mut line).unwrap();
    let url = format!("https://127.0.0.1:{}", line.trim());
    let c = Client::new(&url, Some(w.agent.admin_token.clone()), TlsOptions::ca_file(w.agent.dir.join("ca.crt")))
        .unwrap()
        .liveness_timeout(Duration::from_secs(3));
    let mut s = c.command(&w.main_task, ["sh", "-c", "trap '' INT; echo ready; sleep 60"]).spawn().await.unwrap();
    loop {
        match s.next_event().await.unwrap() {
            Some(Event::Stdout(b)) if b.starts_with(b"ready") => break,
            Some(_) => {}
            None => panic!("ended before it was ready"),
        }
    }
    let sent = Instant::now();
    s.control().signal("INT");
    // Nothing to read (the process ignores SIGINT): the wait is cancelled, yet the pong has been taken in.
    assert!(tokio::time::timeout(Duration::from_secs(1), s.next_event()).await.is_err());
    assert!(s.last_heard() > sent, "no answer from a live agent within 1 s of a signal");
    // SAFETY: kill on our own child's pid.
    assert_eq!(unsafe { libc::kill(i32::try_from(relay.0.id()).unwrap(), libc::SIGSTOP) }, 0);
    let frozen = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.next_event().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("the session must end on a frozen link")
    .unwrap_err();
    assert!(matches!(e, Error::SessionLost(_)), "{e:?}");
    assert!(frozen.elapsed() >= Duration::from_secs(1), "{:?}", frozen.elapsed());
}

/// The agent's side of the escaping: the audit record of a refused exec quotes the task name the client sent,
/// with its right-to-left override and zero-width space escaped (serde's JSON would carry them raw), so that
/// the audit log reads as what was asked.
#[tokio::test]
async fn the_agent_escapes_bidi_and_zero_width_characters_in_audit_records() {
    if skip() {
        return;
    }
    let w = world();
    let c = client(w, Some(&w.agent.admin_token));
    let name = format!("no-such-{}\u{202e}gpj.exe\u{200b}", prefix());
    let e = c.exec(&name, ["true"]).await.unwrap_err();
    assert!(matches!(e, Error::TaskNotFound(_)), "{e:?}");
    let text = std::fs::read_to_string(w.agent.dir.join("audit.log")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&format!("no-such-{}", prefix()))).collect();
    assert!(!lines.is_empty(), "no audit record of the refusal");
    for l in lines {
        assert!(!l.contains('\u{202e}') && !l.contains('\u{200b}'), "raw: {l}");
        assert!(l.contains("\\\\u{202e}gpj.exe\\\\u{200b}"), "{l}");
    }
}
