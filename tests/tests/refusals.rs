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
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(&key).unwrap(),
        )
        .unwrap()
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
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&pubkey),
    )
    .unwrap();
    let (code, _, err) = exec_as(w, &hs, &[], &w.main_task);
    assert_eq!(code, Some(117));
    assert!(err.contains("algorithm"), "{err}");
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
    assert_eq!(v.iter().map(|t| t["id"].as_str().unwrap()).collect::<Vec<_>>(), vec![w.main_task.as_str()]);
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
        eventually(10, || run(w.agent.dcos().args(["task", "exec", &doomed.id, "true"])).status.code() == Some(120))
    );
    let o = run(w.agent.dcos().args(["task", "exec", &doomed.id, "true"]));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
}
