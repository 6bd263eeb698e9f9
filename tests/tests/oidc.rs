//! Tokens of an organisation's identity provider: a real OpenID Connect issuer (authlib, over TLS) started by
//! the test, a real agent configured with `[[oidc]]`, real runc containers and the real `dcos` binary, from
//! `dcos auth login` (device flow) to exec, key rotation, refresh, and the forgeries that must fail.

mod support;

use base64::Engine;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::oidc::Issuer;
use support::*;

const AUDIENCE: &str = "dcos-cli";

const OIDC_ACL: &str = r#"
[[rule]]
subjects = ["user:alice@example.com"]
tasks = ["oidc-*"]
actions = ["list", "exec"]

[[rule]]
subjects = ["group:idp:ops"]
tasks = ["*"]
actions = ["list", "exec", "exec:stdin"]

# A group of the agent's own tokens: an issuer's group of the same name arrives as `idp:admins` and never
# matches it.
[[rule]]
subjects = ["group:admins"]
tasks = ["*"]
actions = ["*"]
"#;

struct Fixture {
    root: PathBuf,
    issuer: Issuer,
    /// A second issuer that the agent does not trust.
    other: Issuer,
    agent: Agent,
    task: String,
    _container: Container,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        // As `world()`: started from a thread that lives as long as the process (parent-death signals).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let p = prefix();
            let root = std::env::temp_dir().join(format!("{p}-oidc"));
            std::fs::create_dir_all(&root).unwrap();
            let task = format!("oidc-{p}");
            let container = Container::start(
                &root,
                &format!("{p}-oidc"),
                &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.clone())], ..Default::default() },
            );
            let issuer = Issuer::start(&root.join("issuer"));
            let other = Issuer::start(&root.join("other-issuer"));
            // Periodic refresh far away: rotation below must work through the refresh on an unknown kid.
            let table = issuer.agent_table(AUDIENCE, "1h", "1s");
            let agent = Agent::start_with_acl(&root.join("agent"), &format!("oidc = [{table}]"), OIDC_ACL);
            agent.kill_at_exit();
            tx.send(Fixture { root, issuer, other, agent, task, _container: container }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("OIDC fixture set-up failed (see the panic above)")
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `dcos task exec TASK EXTRA... sh -c 'echo ran'` with `token`: (exit code, stdout, stderr).
fn exec_as(agent: &Agent, token: &str, extra: &[&str], task: &str) -> (Option<i32>, String, String) {
    let mut args = vec!["task", "exec"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[task, "sh", "-c", "echo ran"]);
    let o = run(agent.dcos_as(token).args(&args));
    (o.status.code(), stdout(&o), stderr(&o))
}

fn assert_ran(r: (Option<i32>, String, String)) {
    assert_eq!((r.0, r.1.as_str()), (Some(0), "ran\n"), "{}", r.2);
}

/// Refused as unauthenticated (exit 117), on one line that says `why`.
fn assert_refused(r: (Option<i32>, String, String), why: &str) {
    assert_eq!(r.0, Some(117), "expected a refusal ({why}); stderr: {}", r.2);
    assert!(r.1.is_empty(), "nothing ran: {}", r.1);
    assert!(r.2.contains(why), "expected {why:?} in {:?}", r.2);
    assert_eq!(r.2.lines().count(), 1, "{:?}", r.2);
}

fn alice() -> serde_json::Value {
    json!({"sub": "u-1001", "email": "alice@example.com", "groups": [], "aud": AUDIENCE})
}

#[test]
fn exec_with_a_token_of_each_algorithm() {
    if skip() {
        return;
    }
    let f = fixture();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let t = f.issuer.mint(alg, alice());
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').next().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg);
        assert_ran(exec_as(&f.agent, &t, &[], &f.task));
    }
    // The audit trail names the mapped user (the email claim), not the issuer's opaque subject.
    let audit = f.agent.audit();
    assert!(audit.iter().any(|r| r["user"] == "alice@example.com"), "{audit:?}");
    assert!(!audit.iter().any(|r| r["user"] == "u-1001"), "{audit:?}");
    // A token without a kid is checked against the issuer's keys of its algorithm.
    let t = f.issuer.mint_with(json!({"alg": "ES256", "claims": alice(), "omit_kid": true}));
    assert_ran(exec_as(&f.agent, &t, &[], &f.task));
}

#[test]
fn acl_sees_the_mapped_user_and_prefixed_groups() {
    if skip() {
        return;
    }
    let f = fixture();
    let alice = f.issuer.mint("RS256", alice());
    // alice may exec on oidc-* tasks, but not with stdin.
    assert_ran(exec_as(&f.agent, &alice, &[], &f.task));
    let (code, out, err) = exec_as(&f.agent, &alice, &["-i"], &f.task);
    assert_eq!((code, out.as_str()), (Some(118), ""), "{err}");
    // bob is in the issuer's group ops, which is `idp:ops` to the ACL: stdin allowed.
    let bob =
        f.issuer.mint("ES256", json!({"sub": "u-2", "email": "bob@example.com", "groups": ["ops"], "aud": AUDIENCE}));
    let o = run(f.agent.dcos_as(&bob).args(["task", "exec", "-i", &f.task, "cat"]).stdin(Stdio::null()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The issuer's `admins` is `idp:admins`: the local group `admins` grants it nothing.
    let dave = f
        .issuer
        .mint("EdDSA", json!({"sub": "u-3", "email": "dave@example.com", "groups": ["admins"], "aud": AUDIENCE}));
    let (code, _, err) = exec_as(&f.agent, &dave, &[], &f.task);
    assert_eq!(code, Some(118), "{err}");
    // The user is the email claim: a `sub` that looks like alice grants nothing.
    let eve = f.issuer.mint("RS256", json!({"sub": "alice@example.com", "email": "eve@example.com", "aud": AUDIENCE}));
    let (code, _, err) = exec_as(&f.agent, &eve, &[], &f.task);
    assert_eq!(code, Some(118), "{err}");
    // An email the issuer has not verified is not alice's.
    let unverified = f
        .issuer
        .mint("RS256", json!({"sub": "u-5", "email": "alice@example.com", "email_verified": false, "aud": AUDIENCE}));
    assert_refused(exec_as(&f.agent, &unverified, &[], &f.task), "not verified");
    // Without the user claim the token is no one's.
    let nobody = f.issuer.mint("RS256", json!({"sub": "u-4", "aud": AUDIENCE}));
    assert_refused(exec_as(&f.agent, &nobody, &[], &f.task), "user claim");
}

#[test]
fn rotated_keys_verify_without_a_restart_and_removed_keys_stop() {
    if skip() {
        return;
    }
    let f = fixture();
    // Its own issuer and agent: a rotation of the shared issuer's key would make the other tests' new tokens
    // name a kid their agent may not fetch again within `min_refresh_interval`.
    let issuer = Issuer::start(&f.root.join("rotating-issuer"));
    let table = issuer.agent_table(AUDIENCE, "1h", "1s");
    let agent = Agent::start_with_acl(&f.root.join("rotating-agent"), &format!("oidc = [{table}]"), OIDC_ACL);
    let pid = agent.pid();
    let old_kid = issuer.current_kid("RS256");
    let old = issuer.mint("RS256", alice());
    assert_ran(exec_as(&agent, &old, &[], &f.task));
    // The issuer rotates: a token of the new key names a kid the agent has not seen, so it fetches the JWKS
    // again (the periodic refresh is an hour away).
    std::thread::sleep(Duration::from_millis(1100)); // past min_refresh_interval of the first fetch
    let new_kid = issuer.admin("/admin/rotate", json!({"alg": "RS256"}))["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let new = issuer.mint("RS256", alice());
    assert_ran(exec_as(&agent, &new, &[], &f.task));
    // Both keys are published for now: the old token still works.
    assert_ran(exec_as(&agent, &old, &[], &f.task));
    // The issuer removes the old key; the next fetch (here caused by yet another new key) drops it.
    issuer.admin("/admin/retire", json!({"kid": old_kid}));
    std::thread::sleep(Duration::from_millis(1100)); // past min_refresh_interval
    issuer.admin("/admin/rotate", json!({"alg": "RS256"}));
    assert_ran(exec_as(&agent, &issuer.mint("RS256", alice()), &[], &f.task));
    assert_refused(exec_as(&agent, &old, &[], &f.task), "unknown key");
    assert_ran(exec_as(&agent, &new, &[], &f.task));
    assert_eq!(agent.pid(), pid, "no restart");
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn keys_are_refreshed_periodically() {
    if skip() {
        return;
    }
    let f = fixture();
    // Its own issuer and agent: retiring keys here must not disturb the other tests.
    let issuer = Issuer::start(&f.root.join("periodic-issuer"));
    let table = issuer.agent_table(AUDIENCE, "1s", "1h");
    let agent = Agent::start_with_acl(&f.root.join("periodic-agent"), &format!("oidc = [{table}]"), OIDC_ACL);
    let old_kid = issuer.current_kid("EdDSA");
    let old = issuer.mint("EdDSA", alice());
    assert_ran(exec_as(&agent, &old, &[], &f.task));
    issuer.admin("/admin/rotate", json!({"alg": "EdDSA"}));
    issuer.admin("/admin/retire", json!({"kid": old_kid}));
    // No token asks for a new kid (and an unknown kid may refresh only once an hour): only the periodic
    // refresh can drop the retired key, and pick up the new one.
    assert!(
        eventually(30, || exec_as(&agent, &old, &[], &f.task).0 == Some(117)),
        "a retired key still verifies after the refresh interval"
    );
    assert_refused(exec_as(&agent, &old, &[], &f.task), "unknown key");
    assert_ran(exec_as(&agent, &issuer.mint("EdDSA", alice()), &[], &f.task));
}

#[test]
fn expired_not_yet_valid_and_wrong_audience_tokens_are_refused() {
    if skip() {
        return;
    }
    let f = fixture();
    let n = now();
    let mut c = alice();
    c["exp"] = json!(n - 3600);
    c["iat"] = json!(n - 7200);
    assert_refused(exec_as(&f.agent, &f.issuer.mint("RS256", c), &[], &f.task), "token expired");
    let mut c = alice();
    c["nbf"] = json!(n + 3600);
    assert_refused(exec_as(&f.agent, &f.issuer.mint("ES256", c), &[], &f.task), "not valid yet");
    let mut c = alice();
    c["aud"] = json!("another-client");
    assert_refused(exec_as(&f.agent, &f.issuer.mint("EdDSA", c), &[], &f.task), "wrong audience");
    let mut c = alice();
    c["aud"] = json!(["another-client", AUDIENCE]);
    assert_ran(exec_as(&f.agent, &f.issuer.mint("EdDSA", c), &[], &f.task));
    let t = f.issuer.mint_with(json!({"alg": "RS256", "claims": alice(), "omit": ["aud"]}));
    assert_refused(exec_as(&f.agent, &t, &[], &f.task), "wrong audience");
    let t = f.issuer.mint_with(json!({"alg": "RS256", "claims": alice(), "omit": ["exp"]}));
    assert_refused(exec_as(&f.agent, &t, &[], &f.task), "missing");
}

#[test]
fn tokens_of_another_issuer_are_refused() {
    if skip() {
        return;
    }
    let f = fixture();
    // A well-formed token of an issuer the agent does not trust.
    let foreign = f.other.mint("RS256", alice());
    assert_refused(exec_as(&f.agent, &foreign, &[], &f.task), "unknown issuer");
    // The other issuer claims to be ours: its key is not in our issuer's JWKS.
    let mut c = alice();
    c["iss"] = json!(f.issuer.url);
    let claimed = f.other.mint("RS256", c.clone());
    assert_refused(exec_as(&f.agent, &claimed, &[], &f.task), "unknown key");
    // ... and names our issuer's kid: the signature does not verify.
    let kid = f.issuer.current_kid("RS256");
    let t = f.other.mint_with(json!({"alg": "RS256", "claims": c, "header_kid": kid}));
    assert_refused(exec_as(&f.agent, &t, &[], &f.task), "signature does not verify");
    // A trusted issuer's token is accepted only by its exact `iss`: a trailing slash is another issuer.
    let mut c = alice();
    c["iss"] = json!(format!("{}/", f.issuer.url));
    assert_refused(exec_as(&f.agent, &f.issuer.mint("RS256", c), &[], &f.task), "unknown issuer");
    // The agent's own tokens keep working next to the issuer's, and their groups are the unprefixed ones.
    let carol = f.agent.token("carol", &["admins"], "1h");
    assert_ran(exec_as(&f.agent, &carol, &["-i"], &f.task));
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn alg_none_hs256_with_the_public_key_and_alg_swaps_are_refused() {
    if skip() {
        return;
    }
    let f = fixture();
    let kid = f.issuer.current_kid("RS256");
    let claims = b64(json!({"iss": f.issuer.url, "sub": "u-1", "email": "alice@example.com", "aud": AUDIENCE,
        "iat": now(), "exp": now() + 600})
    .to_string()
    .as_bytes());
    // alg none, naming a real key.
    let none = format!("{}.{claims}.", b64(json!({"alg": "none", "kid": kid}).to_string().as_bytes()));
    assert_refused(exec_as(&f.agent, &none, &[], &f.task), "algorithm not accepted");
    // HS256 keyed with what the attacker has: the RSA public key, as PEM and as its JWK.
    let pem = f.issuer.get(&format!("/admin/public.pem?kid={kid}"));
    let jwk = f.issuer.get(&format!("/admin/jwks-entry?kid={kid}"));
    for secret in [pem.as_bytes(), jwk.as_bytes()] {
        let input =
            format!("{}.{claims}", b64(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string().as_bytes()));
        let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), input.as_bytes());
        let hs = format!("{input}.{}", b64(mac.as_ref()));
        assert_refused(exec_as(&f.agent, &hs, &[], &f.task), "algorithm not accepted");
    }
    // A valid ES256 signature of the issuer presented under the kid of its RSA key: the key decides the
    // algorithm, so it is refused rather than checked with another algorithm.
    let swapped = f.issuer.mint_with(json!({"alg": "ES256", "claims": alice(), "header_kid": kid}));
    assert_refused(exec_as(&f.agent, &swapped, &[], &f.task), "algorithm does not match");
    // A signed token whose claims were changed afterwards.
    let good = f.issuer.mint("RS256", alice());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = alice();
    c["email"] = json!("root@example.com");
    c["iss"] = json!(f.issuer.url);
    c["exp"] = json!(now() + 600);
    let tampered_claims = b64(c.to_string().as_bytes());
    parts[1] = &tampered_claims;
    assert_refused(exec_as(&f.agent, &parts.join("."), &[], &f.task), "signature does not verify");
}

/// `dcos` as a user with only a config directory: no DCOS_ACS_TOKEN.
fn dcos_at_home(agent: &Agent, home: &Path) -> Command {
    let mut c = Command::new(bin("dcos"));
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("DCOS_URL", &agent.url)
        .env("DCOS_SSL_VERIFY", agent.dir.join("ca.crt"))
        .stdin(Stdio::null());
    c
}

fn stored(home: &Path) -> (String, toml_value::Table) {
    let path = home.join(".config/dcos/dcos.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    (text.clone(), toml_value::parse(&text))
}

/// Just enough TOML reading for the `[auth]` table the CLI writes (key = "string" or key = integer).
mod toml_value {
    pub type Table = std::collections::BTreeMap<String, String>;
    pub fn parse(text: &str) -> Table {
        let mut out = Table::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                out.insert(format!("{section}.{}", k.trim()), v.trim().trim_matches('"').to_string());
            }
        }
        out
    }
}

#[test]
fn device_login_exec_refresh_login_required_and_logout() {
    if skip() {
        return;
    }
    let f = fixture();
    let home = f.root.join("home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join(".config/dcos")).unwrap();
    // A setting of the user's that the login must keep.
    std::fs::write(home.join(".config/dcos/dcos.toml"), "# mine\n[core]\nssl_verify = \"true\"\n").unwrap();
    // Short-lived tokens, and the first poll is told to slow down: the CLI must wait 5 s longer from then on.
    // 25 s: the exec below must come before the CLI's 5 s expiry margin even on a loaded machine.
    f.issuer.admin("/admin/settings", json!({"token_ttl": 25, "slow_down_first": true}));
    let before = f.issuer.admin("/admin/settings", json!({}));
    assert_eq!(before["ok"], true);

    // Until the user approves, the CLI keeps polling.
    let (st, out) = device_login(f, &home, Duration::from_secs(2), |code| {
        f.issuer.approve(code, "u-1001", "alice@example.com", &["ops"])
    });
    assert!(st.success(), "{out}");
    assert!(out.contains("Logged in"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&f.issuer.get("/admin/stats")).unwrap();
    assert!(stats["slow_down_sent"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["too_fast"], 0, "the CLI polled faster than the interval: {stats}");

    // The token is stored with its expiry and refresh token, only for the user, next to the user's settings.
    let path = home.join(".config/dcos/dcos.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let (text, t) = stored(&home);
    assert!(text.starts_with("# mine\n") && t["core.ssl_verify"] == "true", "{text}");
    assert_eq!(t["auth.issuer"], f.issuer.url);
    assert!(!t["auth.refresh_token"].is_empty(), "{text}");
    let expires_at: u64 = t["auth.expires_at"].parse().unwrap();
    assert!(expires_at > now() && expires_at <= now() + 26, "{text}");
    let token1 = t["auth.token"].clone();

    // exec with the stored token: the user is the email claim, the group ops grants stdin.
    let o = run(dcos_at_home(&f.agent, &home).args(["task", "exec", "-i", &f.task, "sh", "-c", "echo ran"]));
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "ran\n"), "{}", stderr(&o));
    let refreshed = |i: &Issuer| {
        serde_json::from_str::<serde_json::Value>(&i.get("/admin/stats")).unwrap()["refreshed"].as_u64().unwrap()
    };
    assert_eq!(refreshed(&f.issuer), 0);

    // Once the token has expired the CLI refreshes it with the refresh token, stores the new one, and execs.
    let expired_file = {
        while now() + 5 < expires_at + 1 {
            std::thread::sleep(Duration::from_millis(500));
        }
        std::fs::read_to_string(&path).unwrap()
    };
    // Three at once (as a CI job might start them): one refreshes, the others use what it stored.
    let children: Vec<_> = (0..3)
        .map(|_| {
            dcos_at_home(&f.agent, &home)
                .args(["task", "exec", &f.task, "sh", "-c", "echo ran"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "ran\n"), "{}", stderr(&o));
    }
    assert_eq!(refreshed(&f.issuer), 1);
    let (_, t2) = stored(&home);
    assert_ne!(t2["auth.token"], token1);
    assert_ne!(t2["auth.refresh_token"], t["auth.refresh_token"], "the issuer rotated the refresh token");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // The expired token with a refresh token that was used up: the CLI says a login is needed.
    std::fs::write(&path, expired_file).unwrap();
    let o = run(dcos_at_home(&f.agent, &home).args(["task", "exec", &f.task, "sh", "-c", "echo ran"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    assert!(stderr(&o).contains("login required") && stderr(&o).contains("run 'dcos auth login'"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    // ... and again without asking the issuer (the useless refresh token is gone).
    let o = run(dcos_at_home(&f.agent, &home).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    assert!(stderr(&o).contains("login required"), "{}", stderr(&o));

    // logout forgets the token; the issuer settings stay.
    let o = run(dcos_at_home(&f.agent, &home).args(["auth", "logout"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (text, t) = stored(&home);
    assert!(!t.contains_key("auth.token") && !t.contains_key("auth.refresh_token"), "{text}");
    assert_eq!(t["auth.client_id"], "dcos-cli");
    let o = run(dcos_at_home(&f.agent, &home).args(["task", "list"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    assert!(stderr(&o).contains("no bearer token"), "{}", stderr(&o));
    f.issuer.admin("/admin/settings", json!({"token_ttl": 300, "slow_down_first": false}));

    // With use_token = "access_token" the access token is sent (its `aud` holds the client id too).
    let text = std::fs::read_to_string(&path).unwrap().replace("[auth]\n", "[auth]\nuse_token = \"access_token\"\n");
    std::fs::write(&path, text).unwrap();
    let (st, out) =
        device_login(f, &home, Duration::ZERO, |code| f.issuer.approve(code, "u-1001", "alice@example.com", &[]));
    assert!(st.success(), "{out}");
    let (_, t) = stored(&home);
    let claims = t["auth.token"].split('.').nth(1).unwrap().to_string();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["aud"], json!([AUDIENCE, "dcos-exec"]), "{claims}");
    let o = run(dcos_at_home(&f.agent, &home).args(["task", "exec", &f.task, "sh", "-c", "echo ran"]));
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "ran\n"), "{}", stderr(&o));
}

/// `dcos auth login` against the fixture's issuer; after `wait` (the CLI must still be polling then), `approve`
/// gets the user code the CLI printed. Returns its exit status and everything it wrote to stderr.
fn device_login(
    f: &Fixture,
    home: &Path,
    wait: Duration,
    approve: impl FnOnce(&str),
) -> (std::process::ExitStatus, String) {
    let mut login = dcos_at_home(&f.agent, home);
    login
        .args(["auth", "login", "--issuer", &f.issuer.url, "--client-id", "dcos-cli", "--ca-file"])
        .arg(f.issuer.ca())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains(&format!("{}/device", f.issuer.url)) && first.contains("enter the code"), "{first}");
    let code = first.trim().rsplit(' ').next().unwrap().to_string();
    std::thread::sleep(wait);
    assert!(child.try_wait().unwrap().is_none(), "login ended before approval");
    approve(&code);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    (child.wait().unwrap(), format!("{first}{rest}"))
}

#[test]
fn login_denied_by_the_user_fails_clearly() {
    if skip() {
        return;
    }
    let f = fixture();
    let home = f.root.join("home-denied");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let mut login = dcos_at_home(&f.agent, &home);
    login
        .args(["auth", "login", "--issuer", &f.other.url, "--client-id", "dcos-cli", "--ca-file"])
        .arg(f.other.ca())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let code = first.trim().rsplit(' ').next().unwrap().to_string();
    f.other.admin("/device/approve", json!({"user_code": code, "deny": true}));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(117), "{rest}");
    assert!(rest.contains("denied"), "{rest}");
    assert!(
        !home.join(".config/dcos/dcos.toml").exists()
            || !std::fs::read_to_string(home.join(".config/dcos/dcos.toml")).unwrap().contains("token =")
    );
    // An unknown client is refused by the issuer at once.
    let o = run(dcos_at_home(&f.agent, &home)
        .args(["auth", "login", "--issuer", &f.other.url, "--client-id", "not-registered", "--ca-file"])
        .arg(f.other.ca()));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid_client"), "{}", stderr(&o));
    // The issuer's certificate is checked: without its CA the login fails on TLS.
    let o =
        run(dcos_at_home(&f.agent, &home).args(["auth", "login", "--issuer", &f.other.url, "--client-id", "dcos-cli"]));
    assert_eq!(o.status.code(), Some(116), "{}", stderr(&o));
}

#[test]
fn an_unreachable_issuer_at_start_is_a_warning_not_a_failure() {
    if skip() {
        return;
    }
    let f = fixture();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let table =
        format!("{{ issuer = \"https://127.0.0.1:{port}\", audience = \"{AUDIENCE}\", user_claim = \"email\" }}");
    let agent = Agent::start_with_acl(&f.root.join("unreachable-agent"), &format!("oidc = [{table}]"), OIDC_ACL);
    assert!(
        eventually(30, || std::fs::read_to_string(agent.dir.join("agent.log"))
            .unwrap_or_default()
            .contains("unreachable at start")),
        "{}",
        std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default()
    );
    // The agent's own tokens work.
    let o = run(agent.dcos().args(["task", "list", "-q"]));
    assert!(o.status.success(), "{}", stderr(&o));
    // A token naming the unreachable issuer is refused, saying why.
    let mut c = alice();
    c["iss"] = json!(format!("https://127.0.0.1:{port}"));
    let t = f.other.mint("RS256", c);
    assert_refused(exec_as(&agent, &t, &[], &f.task), "could not be fetched");
    // Again at once (within the rate limit of fetches): still the reason, not "unknown key".
    assert_refused(exec_as(&agent, &t, &[], &f.task), "could not be fetched");
}

/// How often the issuer served its JWKS, from its request log.
fn jwks_fetches(i: &Issuer) -> usize {
    std::fs::read_to_string(i.dir.join("issuer.log")).unwrap().matches("\"GET /jwks ").count()
}

#[test]
fn made_up_kids_do_not_make_the_agent_hammer_the_issuer() {
    if skip() {
        return;
    }
    let f = fixture();
    let issuer = Issuer::start(&f.root.join("flood-issuer"));
    let table = issuer.agent_table(AUDIENCE, "1h", "1h");
    let agent = Agent::start_with_acl(&f.root.join("flood-agent"), &format!("oidc = [{table}]"), OIDC_ACL);
    assert!(eventually(30, || jwks_fetches(&issuer) == 1), "the agent fetches the keys at start");
    // Tokens of the issuer's own key under kids it never published: each is an unknown kid.
    for i in 0..12 {
        let t = issuer.mint_with(json!({"alg": "RS256", "claims": alice(), "header_kid": format!("made-up-{i}")}));
        assert_refused(exec_as(&agent, &t, &[], &f.task), "unknown key");
    }
    // One fetch for the first unknown kid, none for the rest (min_refresh_interval).
    assert_eq!(jwks_fetches(&issuer), 2);
    // A real token still works (its kid was fetched at start).
    assert_ran(exec_as(&agent, &issuer.mint("RS256", alice()), &[], &f.task));
}

#[test]
fn the_issuers_certificate_and_discovery_document_are_checked() {
    if skip() {
        return;
    }
    let f = fixture();
    // The right URL with the wrong CA (a man in the middle serving its own keys would look like this), and the
    // same server under another name (its certificate covers `localhost`) whose discovery document names
    // another issuer.
    let localhost = f.issuer.url.replace("127.0.0.1", "localhost");
    let tables = format!(
        "oidc = [{{ issuer = \"{}\", audience = \"{AUDIENCE}\", ca_file = \"{}\", user_claim = \"email\" }}, \
         {{ issuer = \"{localhost}\", audience = \"{AUDIENCE}\", ca_file = \"{}\", user_claim = \"email\" }}]",
        f.issuer.url,
        f.other.ca().display(),
        f.issuer.ca().display()
    );
    let agent = Agent::start_with_acl(&f.root.join("checked-agent"), &tables, OIDC_ACL);
    let t = f.issuer.mint("RS256", alice());
    let (code, _, err) = exec_as(&agent, &t, &[], &f.task);
    assert_eq!(code, Some(117), "{err}");
    assert!(err.contains("could not be fetched") && err.contains("TLS"), "{err}");
    let mut c = alice();
    c["iss"] = json!(localhost);
    let t = f.issuer.mint("RS256", c);
    let (code, _, err) = exec_as(&agent, &t, &[], &f.task);
    assert_eq!(code, Some(117), "{err}");
    assert!(err.contains("could not be fetched") && err.contains("names issuer"), "{err}");
}

#[test]
fn configurations_that_cannot_work_stop_the_agent_saying_why() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.root.join("bad-config");
    let _ = std::fs::remove_dir_all(&dir);
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--listen", "127.0.0.1:0", "--dir"]).arg(&dir));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = dir.join("agent.toml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    let table = |issuer: &str| format!("\n[[oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n");
    let cases = [
        // The agent's own issuer claimed by an OIDC table: one of the two would never be used.
        (
            base.replace("issuer = \"dcos-exec-agent\"", "issuer = \"https://idp.example\"")
                + &table("https://idp.example"),
            "also the agent's own issuer",
        ),
        (base.clone() + &table("https://idp.example") + &table("https://idp.example"), "configured twice"),
        (base.clone() + &table("http://idp.example"), "must be an https URL"),
        (base.clone() + &table("https://idp.example") + "ca_file = \"missing.pem\"\n", "missing.pem"),
    ];
    for (text, want) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let o = run(Command::new(bin("dcos-exec-agent")).args(["run", "--config"]).arg(&cfg));
        assert!(!o.status.success(), "{text}");
        assert!(stderr(&o).contains(want), "want {want:?}: {}", stderr(&o));
    }
}

/// The attack: an issuer answers the device authorization with terminal escapes and a bidi override in the
/// user code and URIs, and `expires_in = 2^64-1` (which panicked the CLI with an overflow, exit 101). The CLI
/// prints them escaped, bounds the wait, and the login still works.
#[test]
fn a_hostile_device_authorization_is_escaped_and_bounded() {
    if skip() {
        return;
    }
    let f = fixture();
    let home = f.root.join("home-hostile");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let mut login = dcos_at_home(&f.agent, &home);
    login
        .args([
            "auth",
            "login",
            "--issuer",
            &f.issuer.url,
            "--client-id",
            "dcos-cli",
            "--scope",
            "hostile",
            "--ca-file",
        ])
        .arg(f.issuer.ca())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    err.read_line(&mut first).unwrap();
    err.read_line(&mut second).unwrap();
    for line in [&first, &second] {
        assert!(
            !line
                .trim_end_matches('\n')
                .chars()
                .any(|c| c.is_control() || ('\u{2066}'..='\u{2069}').contains(&c) || c == '\u{202e}'),
            "raw control or bidi characters: {line:?}"
        );
    }
    assert!(first.contains("\\u{1b}[2J") && first.contains("\\u{1b}]0;owned\\u{7}\\u{202e}"), "{first:?}");
    assert!(second.contains("\\u{2066}\\n"), "{second:?}");
    // The real code is what precedes the escapes.
    let code = first.trim().rsplit(' ').next().unwrap().split('\\').next().unwrap().to_string();
    f.issuer.approve(&code, "u-1002", "bob@example.com", &[]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let st = wait_within(&mut child, 60, "login with a hostile issuer");
    assert!(st.success(), "{first}{second}{rest}");
    assert!(rest.contains("Logged in"), "{rest}");
    let _ = std::fs::remove_dir_all(&home);
}
