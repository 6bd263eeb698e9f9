//! Every refusal before a process starts: tokens, ACL, unknown task, TLS, unreachable agent. Each gets one
//! clear line and its own exit code, and nothing runs.

mod support;

use base64::Engine;
use std::process::Command;
use support::*;

fn exec_as(w: &World, token: &str, extra: &[&str], task: &str) -> (Option<i32>, String, String) {
    let mut args = vec!["task", "exec"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[task, "sh", "-c", "echo ran"]);
    let o = run(w.agent.dcos_as(token).args(&args));
    (o.status.code(), stdout(&o), stderr(&o))
}

fn one_line(err: &str) {
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("dcos: "), "{err:?}");
}

#[test]
fn missing_malformed_and_foreign_tokens_are_unauthenticated() {
    if skip() {
        return;
    }
    let w = world();
    for (token, want) in [("", "no bearer token"), ("not-a-jwt", "malformed")] {
        let (code, out, err) = exec_as(w, token, &[], &w.main_task);
        assert_eq!(code, Some(117), "{err}");
        assert!(out.is_empty());
        assert!(err.contains(want), "{err}");
        one_line(&err);
    }
    // A token minted by another agent's key.
    let other = std::env::temp_dir().join(format!("{}-other", prefix()));
    let _ = std::fs::remove_dir_all(&other);
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--dir"]).arg(&other));
    assert!(o.status.success());
    let foreign = std::fs::read_to_string(other.join("admin.token")).unwrap();
    let (code, _, err) = exec_as(w, foreign.trim(), &[], &w.main_task);
    assert_eq!(code, Some(117));
    assert!(err.contains("signature"), "{err}");
    // The other agent's CA does not vouch for this agent: a TLS failure.
    let o = run(w.agent.dcos().env("DCOS_SSL_VERIFY", other.join("ca.crt")).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116), "{}", stderr(&o));
    one_line(&stderr(&o));
    let _ = std::fs::remove_dir_all(&other);
}

/// A compact JWT with `alg: EdDSA`, signed with an Ed25519 PKCS#8 PEM key (as the agent's `token` does).
fn sign_eddsa(key_pem: &[u8], claims: &serde_json::Value) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap();
    let unsigned = forge(r#"{"alg":"EdDSA","typ":"JWT"}"#, claims, "");
    let sig = key.sign(unsigned.trim_end_matches('.').as_bytes());
    format!("{unsigned}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn forge(header: &str, claims: &serde_json::Value, sig: &str) -> String {
    let b = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.{}", b(header.as_bytes()), b(claims.to_string().as_bytes()), sig)
}

#[test]
fn expired_future_none_and_hs256_tokens_are_refused() {
    if skip() {
        return;
    }
    let w = world();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = std::fs::read(w.agent.dir.join("token-signing.key")).unwrap();
    let sign = |exp: u64, nbf: u64| {
        let claims = serde_json::json!({"sub": "admin", "groups": [], "iss": "dcos-exec-agent", "aud": "dcos-exec",
            "iat": now, "nbf": nbf, "exp": exp});
        sign_eddsa(&key, &claims)
    };
    let (code, _, err) = exec_as(w, &sign(now - 3600, now - 7200), &[], &w.main_task);
    assert_eq!(code, Some(117));
    assert!(err.contains("expired"), "{err}");
    let (code, _, err) = exec_as(w, &sign(now + 7200, now + 3600), &[], &w.main_task);
    assert_eq!(code, Some(117));
    assert!(err.contains("not valid yet"), "{err}");
    let claims =
        serde_json::json!({"sub": "admin", "iss": "dcos-exec-agent", "aud": "dcos-exec", "nbf": 0, "exp": now + 3600});
    let none = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, "");
    assert_eq!(exec_as(w, &none, &[], &w.main_task).0, Some(117));
    let pubkey = std::fs::read(w.agent.dir.join("token-signing.pub")).unwrap();
    // HS256 keyed with the agent's public key PEM: the classic algorithm confusion.
    let unsigned = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, "");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pubkey),
        unsigned.trim_end_matches('.').as_bytes(),
    );
    let hs = format!("{unsigned}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let (code, _, err) = exec_as(w, &hs, &[], &w.main_task);
    assert_eq!(code, Some(117));
    assert!(err.contains("algorithm"), "{err}");
}

/// Tokens signed with the agent's own key, so only the claims or the header can refuse them: one for another
/// issuer, for another audience (one string, or an array without ours), with a `crit` header the agent does not
/// understand, without a subject or an expiry. A service that shares the signing key must not lend its tokens.
#[test]
fn tokens_of_the_right_signer_for_another_issuer_or_audience_are_refused() {
    if skip() {
        return;
    }
    let w = world();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = std::fs::read(w.agent.dir.join("token-signing.key")).unwrap();
    let good = serde_json::json!({"sub": "admin", "iss": "dcos-exec-agent", "aud": "dcos-exec", "nbf": now - 10,
        "exp": now + 3600});
    // The control: the same claims signed the same way are accepted.
    let (code, _, err) = exec_as(w, &sign_eddsa(&key, &good), &[], &w.main_task);
    assert_eq!(code, Some(0), "{err}");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let cases = [
        (with("iss", "another-issuer".into()), "unknown issuer"),
        (with("aud", "dcos-exec-gateway".into()), "wrong audience"),
        (with("aud", serde_json::json!(["dcos-exec-gateway", "dcos-exec2"])), "wrong audience"),
        (with("aud", serde_json::json!([])), "wrong audience"),
        (with("sub", "".into()), "empty subject"),
        (with("exp", serde_json::Value::Null), "missing"),
        (with("aud", serde_json::Value::Null), "missing"),
    ];
    for (claims, want) in &cases {
        let (code, out, err) = exec_as(w, &sign_eddsa(&key, claims), &[], &w.main_task);
        assert_eq!(code, Some(117), "{claims}: {err}");
        assert!(out.is_empty() && err.contains(want), "{claims}: {err}");
        one_line(&err);
    }
    // A critical header extension, correctly signed.
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap();
    let unsigned = forge(r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, &good, "");
    let sig = pair.sign(unsigned.trim_end_matches('.').as_bytes());
    let crit = format!("{unsigned}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let (code, _, err) = exec_as(w, &crit, &[], &w.main_task);
    assert_eq!(code, Some(117), "{err}");
    assert!(err.contains("critical"), "{err}");
}

#[test]
fn acl_denies_by_default_per_action_and_per_task() {
    if skip() {
        return;
    }
    let w = world();
    let alice = w.agent.token("alice", &[], "1h");
    // alice may exec on web-* tasks ...
    let (code, out, err) = exec_as(w, &alice, &[], &w.main_task);
    assert_eq!((code, out.as_str()), (Some(0), "ran\n"), "{err}");
    // ... but not with stdin, a tty or another user, and not on other tasks.
    for extra in [&["-i"][..], &["-t"][..], &["-u", "app"][..]] {
        let (code, out, err) = exec_as(w, &alice, extra, &w.main_task);
        assert_eq!(code, Some(118), "{extra:?}: {err}");
        assert!(out.is_empty());
        one_line(&err);
    }
    let (code, _, err) = exec_as(w, &alice, &[], &w.app.id);
    assert_eq!(code, Some(118), "{err}");
    // A deny rule wins even for someone in a granted group; an unknown user gets nothing.
    let mallory = w.agent.token("mallory", &["ops"], "1h");
    assert_eq!(exec_as(w, &mallory, &[], &w.main_task).0, Some(118));
    let ops = w.agent.token("olga", &["ops"], "1h");
    assert_eq!(exec_as(w, &ops, &["-i"], &w.app.id).0, Some(0));
    let eve = w.agent.token("eve", &[], "1h");
    assert_eq!(exec_as(w, &eve, &[], &w.main_task).0, Some(118));
    // A deny rule written for the task id also holds when the container is named by its id.
    let sre = w.agent.token("sre", &[], "1h");
    assert_eq!(exec_as(w, &sre, &[], &w.main.id).0, Some(0));
    let (code, _, err) = exec_as(w, &sre, &["-t"], &w.main.id);
    assert_eq!(code, Some(118), "{err}");
    assert_eq!(exec_as(w, &sre, &["-t"], &w.main_task).0, Some(118));
    // Someone without any grant on a name cannot tell a missing task from a forbidden one.
    assert_eq!(exec_as(w, &alice, &[], "no-such-task").0, Some(118));
    assert_eq!(exec_as(w, &alice, &[], "web-missing").0, Some(119));
    // The list is filtered by the same ACL.
    let o = run(w.agent.dcos_as(&alice).args(["task", "list", "--json"]));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v.iter().map(|t| t["id"].as_str().unwrap()).collect();
    // Other test processes on the host may run web-* tasks of their own: alice sees those, and nothing else.
    assert!(ids.contains(&w.main_task.as_str()) && ids.iter().all(|i| i.starts_with("web-")), "{ids:?}");
    // Every denial is audited, with who and why.
    let recs = w.agent.audit();
    assert!(recs.iter().any(|r| r["event"] == "denied"
        && r["user"] == "alice"
        && r["code"] == "forbidden"
        && r["reason"].as_str().unwrap().contains("exec:stdin")));
    assert!(recs.iter().any(|r| r["event"] == "denied" && r["user"] == "mallory"));
}

#[test]
fn unknown_task_unreachable_agent_and_bad_config_have_their_own_codes() {
    if skip() {
        return;
    }
    let w = world();
    let (code, _, err) = exec_as(w, &w.agent.admin_token, &[], "no-such-task");
    assert_eq!(code, Some(119));
    assert!(err.contains("no-such-task"), "{err}");
    one_line(&err);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = run(w.agent.dcos().env("DCOS_URL", format!("https://127.0.0.1:{port}")).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(115), "{}", stderr(&o));
    one_line(&stderr(&o));
    let o = run(w.agent.dcos().env_remove("DCOS_URL").args(["task", "list"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("DCOS_URL"));
    let o = run(w.agent.dcos().args(["task", "exec", &w.main_task]));
    assert_eq!(o.status.code(), Some(2), "usage error");
}

#[test]
fn stopped_container_is_refused_and_a_dying_one_ends_the_session() {
    if skip() {
        return;
    }
    let w = world();
    let doomed = Container::start(&w.root, &format!("{}-doomed", prefix()), &ContainerOpts::default());
    let mut child = w
        .agent
        .dcos()
        .args(["task", "exec", &doomed.id, "sh", "-c", "echo up; sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    doomed.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(120), "{}", stderr(&out));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    assert!(
        eventually(30, || run(w.agent.dcos().args(["task", "exec", &doomed.id, "true"])).status.code() == Some(120))
    );
    let o = run(w.agent.dcos().args(["task", "exec", &doomed.id, "true"]));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
}

/// `dcos task exec TASK sh -c SCRIPT` left running once it printed its first three bytes.
fn long_session(agent: &Agent, token: &str, task: &str, script: &str) -> std::process::Child {
    let mut c = agent
        .dcos_as(token)
        .args(["task", "exec", task, "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(c.stdout.as_mut().unwrap(), &mut buf).unwrap();
    c
}

#[test]
fn sessions_per_user_are_capped() {
    if skip() {
        return;
    }
    let w = world();
    // An agent of its own (it sees the same runc containers), so other tests' sessions do not count.
    let root = std::env::temp_dir().join(format!("{}-peruser", prefix()));
    let agent = Agent::start_with(&root.join("agent"), "max_sessions_per_user = 2");
    let admin = agent.admin_token.clone();
    let mut first = long_session(&agent, &admin, &w.main.id, "echo up; sleep 5151");
    let mut second = long_session(&agent, &admin, &w.main.id, "echo up; sleep 5151");
    let third = run(agent.dcos().args(["task", "exec", &w.main.id, "echo", "ran"]));
    let err = stderr(&third);
    assert_eq!(third.status.code(), Some(118), "{err}");
    assert!(stdout(&third).is_empty(), "nothing ran");
    assert!(err.contains("max_sessions_per_user") && err.contains('2'), "{err}");
    one_line(&err);
    assert!(agent.audit().iter().any(|r| r["event"] == "denied"
        && r["user"] == "admin"
        && r["code"] == "forbidden"
        && r["reason"].as_str().unwrap().contains("max_sessions_per_user")));
    // Another user is not affected.
    let olga = agent.token("olga", &["ops"], "1h");
    let o = run(agent.dcos_as(&olga).args(["task", "exec", &w.main.id, "echo", "ran"]));
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "ran\n"), "{}", stderr(&o));
    // A session that ends frees its slot.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(eventually(30, || run(agent.dcos().args(["task", "exec", &w.main.id, "true"])).status.success()));
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// True when the agent closed `c` without a word (read gives EOF or a reset) within `wait`, well short of the
/// 10 s a connection that stays silent is given for its TLS handshake.
fn closed_within(c: &mut std::net::TcpStream, wait: std::time::Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match std::io::Read::read(c, &mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn connections_not_yet_authenticated_are_capped() {
    if skip() {
        return;
    }
    let w = world();
    let root = std::env::temp_dir().join(format!("{}-unauth", prefix()));
    let agent = Agent::start_with(&root.join("agent"), "max_unauthenticated = 3");
    let addr = agent.url.trim_start_matches("https://").to_string();
    // Authenticated connections (two live sessions) do not count against the cap.
    let admin = agent.admin_token.clone();
    let mut sessions: Vec<_> =
        (0..2).map(|_| long_session(&agent, &admin, &w.main.id, "echo up; sleep 5252")).collect();
    // Three connections that never say anything fill it: each is still open.
    let mut idle: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    for c in &mut idle {
        assert!(!closed_within(c, std::time::Duration::from_millis(500)), "a connection under the cap stays open");
    }
    // The next one is closed at once, and a real client cannot get through either.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    // Closed at accept; 8 s is slack for a loaded machine and still short of the 10 s handshake timeout, which
    // would close it anyway.
    assert!(closed_within(&mut extra, std::time::Duration::from_secs(8)), "a connection over the cap is closed");
    let o = run(agent.dcos().args(["task", "list"]));
    assert_eq!(o.status.code(), Some(116), "closed before the TLS handshake: {}", stderr(&o));
    // Sessions already running are not disturbed, and the refusals are logged.
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    assert!(log.contains("max_unauthenticated"), "{log}");
    // Once the idle connections go, clients get through again.
    drop(idle);
    assert!(eventually(30, || run(agent.dcos().args(["task", "list"])).status.success()));
    for s in &mut sessions {
        s.kill().unwrap();
        s.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `dcos ARGS` with a deadline: a hang is a failure, not a stuck test.
fn run_within(mut cmd: Command, secs: u64) -> Option<std::process::Output> {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    if !eventually(secs, || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn a_paused_container_is_refused_and_nothing_runs_at_the_unpause() {
    if skip() {
        return;
    }
    let w = world();
    let c = Container::start(&w.root, &format!("{}-paused", prefix()), &ContainerOpts::default());
    assert!(run(Command::new("runc").args(["pause", &c.id])).status.success(), "runc pause");
    // The list says so, as `docker ps` does.
    let list = stdout(&run(w.agent.dcos().args(["task", "list", "--json"])));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let row = rows.iter().find(|r| r["container"] == c.id.as_str()).expect("the paused container is listed");
    assert_eq!(row["state"], "paused", "{row}");
    let o = run_within(
        {
            let mut cmd = w.agent.dcos();
            cmd.args(["task", "exec", &c.id, "sh", "-c", "touch /ran"]);
            cmd
        },
        30,
    );
    let resumed = run(Command::new("runc").args(["resume", &c.id])).status.success();
    let o = o.expect("exec into a paused container answers instead of hanging");
    assert!(resumed, "runc resume");
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    one_line(&stderr(&o));
    let want = format!("container {} is paused, unpause it first", c.id);
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!c.rootfs().join("ran").exists(), "the refused command ran after the unpause");
    // Resumed, it is an ordinary container again.
    let o = run(w.agent.dcos().args(["task", "exec", &c.id, "true"]));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_container_at_its_pids_limit_says_so() {
    if skip() {
        return;
    }
    let w = world();
    let opts = ContainerOpts {
        tweak: Some(|cfg| cfg["linux"]["resources"]["pids"] = serde_json::json!({"limit": 16})),
        ..Default::default()
    };
    let c = Container::start(&w.root, &format!("{}-pidsmax", prefix()), &opts);
    // runc's own exec processes pass through the cgroup too, so the filler
    // starts under a roomy limit and the limit is lowered to what is left.
    c.runc_exec_detached(&["sh", "-c", "sleep 100000 & sleep 100000 & exec sleep 100000"]);
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", c.init_pid())).unwrap();
    // The pids controller's directory: cgroup v1 names it, v2 is unified.
    let v1 = cg.lines().find_map(|l| l.split_once(":pids:").map(|(_, p)| format!("/sys/fs/cgroup/pids{p}")));
    let v2 = cg.lines().find_map(|l| l.strip_prefix("0::").map(|p| format!("/sys/fs/cgroup{p}")));
    let current = std::path::PathBuf::from(v1.or(v2).unwrap()).join("pids.current");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&current).unwrap().trim() != "4" {
        assert!(std::time::Instant::now() < deadline, "the filler did not settle at 4 pids");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let up = run(Command::new("runc").args(["update", "--pids-limit", "4", &c.id]));
    assert!(up.status.success(), "{}", stderr(&up));
    let o = run(w.agent.dcos().args(["task", "exec", &c.id, "echo", "hi"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    one_line(&err);
    assert!(err.contains("pids limit") && !err.contains("gone"), "{err}");
}

#[test]
fn a_nul_byte_in_the_command_is_a_bad_request() {
    if skip() {
        return;
    }
    let w = world();
    let c = dcos_exec::blocking::Client::new(
        &w.agent.url,
        Some(w.agent.admin_token.clone()),
        dcos_exec::TlsOptions::ca_file(w.agent.dir.join("ca.crt")),
    )
    .unwrap();
    let e = c.exec(&w.main_task, ["id\0x"]).unwrap_err();
    assert_eq!(e.code(), Some(dcos_exec_proto::ErrorCode::BadRequest), "{e:?}");
    assert_eq!(e.exit_code(), 125, "{e:?}");
}
