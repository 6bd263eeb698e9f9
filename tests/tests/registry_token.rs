//! Registries as they are in the wild: a real `docker-registry` configured for bearer-token auth (`auth: token:
//! realm/service/issuer/rootcertbundle`), with the token service that its `WWW-Authenticate: Bearer realm=...`
//! challenge names started by the test (`support/token_service.py`: HTTPS, JWTs signed with the key whose
//! certificate is the registry's `rootcertbundle`). The agent pulls anonymously where the token service grants an
//! anonymous pull scope, with its credentials where it does not, and names the refusal otherwise.

#[path = "support/registry.rs"]
mod registry;
mod support;

use registry::{start_agent, start_shell_less, wait_for_port, Pki, DEBUG_ACL, REGISTRY_PASSWORD, REGISTRY_USER};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::*;

const SERVICE: &str = "dcos-e2e-registry";
const ISSUER: &str = "dcos-e2e-token-issuer";

/// Kills the child when the thread that spawned it dies, and at exit.
fn spawn_dying(cmd: &mut Command) -> Child {
    // SAFETY: prctl in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn")
}

struct TokenRegistry {
    host: String,
    log: PathBuf,
    _children: Vec<Child>,
}

/// The token service and the registry that trusts it, both over TLS with `pki`'s server certificate.
fn start(dir: &Path, pki: &Pki) -> TokenRegistry {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (key, cert) = (dir.join("token.key"), dir.join("token.crt"));
    let o = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dcos-e2e-token"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(o.status.success(), "{}", stderr(&o));
    let log = dir.join("tokens.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/token_service.py");
    let mut tokens = spawn_dying(
        Command::new("python3")
            .arg(script)
            .args([&key, &cert, &pki.dir.join("server.crt"), &pki.dir.join("server.key"), &log])
            .args([REGISTRY_USER, REGISTRY_PASSWORD, ISSUER])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("token_service.err")).unwrap()),
    );
    let mut line = String::new();
    std::io::BufReader::new(tokens.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let token_port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("token service said {line:?}"));
    let port = registry::free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: dcos-exec-e2e\n  tls:\n    certificate: {crt}\n    key: {tkey}\n\
         auth:\n  token:\n    realm: https://127.0.0.1:{token_port}/token\n    service: {SERVICE}\n\
         \x20   issuer: {ISSUER}\n    rootcertbundle: {cert}\n",
        data = dir.join("data").display(),
        crt = pki.dir.join("server.crt").display(),
        tkey = pki.dir.join("server.key").display(),
        cert = cert.display(),
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let reg = spawn_dying(
        Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap()),
    );
    let host = format!("127.0.0.1:{port}");
    wait_for_port(&host, 20);
    TokenRegistry { host, log, _children: vec![tokens, reg] }
}

/// Pushes the OCI layout's `v1` as `repo:latest` with the credentials, through the token flow (skopeo, a second
/// client of the same token service).
fn push(r: &TokenRegistry, pki: &Pki, layout: &Path, repo: &str) {
    let o = run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")])
        .arg("--dest-cert-dir")
        .arg(pki.cert_dir())
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/{repo}:latest", r.host)));
    assert!(o.status.success(), "skopeo push of {repo}: {}", stderr(&o));
}

fn tokens(r: &TokenRegistry) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&r.log).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn bearer_tokens_anonymous_scope_then_credentials() {
    if skip() {
        return;
    }
    let root = std::env::temp_dir().join(format!("{}-token", prefix()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let pki = Pki::create(&root.join("pki"));
    let r = start(&root.join("registry"), &pki);
    let layout = root.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    push(&r, &pki, &layout, "public/bb");
    push(&r, &pki, &layout, "private/bb");
    let target = start_shell_less(&root, &format!("{}-tok", prefix()));
    let ca = format!("[images]\nca_files = [\"{}\"]\n", pki.ca().display());
    let creds = |password: &str| {
        format!(
            "{ca}\n[images.credentials.\"{}\"]\nusername = \"{REGISTRY_USER}\"\npassword = \"{password}\"\n",
            r.host
        )
    };
    let anonymous = start_agent(&root.join("agent-anon"), &ca, DEBUG_ACL);
    let with_creds = start_agent(&root.join("agent-creds"), &creds(REGISTRY_PASSWORD), DEBUG_ACL);
    let wrong = start_agent(&root.join("agent-wrong"), &creds("not-it"), DEBUG_ACL);
    let debug = |agent: &Agent, repo: &str| {
        let image = format!("{}/{repo}:latest", r.host);
        run(agent.dcos().args(["task", "exec", "--debug-image", &image, &target.id, "sh", "-c", "echo pulled"]))
    };
    // Anonymous: the token service grants pull on public/ only.
    let o = debug(&anonymous, "public/bb");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "pulled\n"), "{}", stderr(&o));
    let o = debug(&anonymous, "private/bb");
    assert_eq!(o.status.code(), Some(122), "{}", stderr(&o));
    assert!(stderr(&o).contains("refused the credentials"), "{}", stderr(&o));
    // With credentials: a token for the private repository.
    let o = debug(&with_creds, "private/bb");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "pulled\n"), "{}", stderr(&o));
    // Wrong credentials: the token service refuses them, the pull fails with the registry named.
    let o = debug(&wrong, "private/bb");
    assert_eq!(o.status.code(), Some(122), "{}", stderr(&o));
    assert!(stderr(&o).contains(&r.host), "{}", stderr(&o));
    // What the token service saw: each agent asked for its repository's pull scope, for this registry's service,
    // anonymously or as the user.
    let seen = tokens(&r);
    let asked = |account: serde_json::Value, repo: &str| {
        seen.iter().any(|t| {
            t["account"] == account
                && t["service"] == SERVICE
                && t["scope"].as_array().is_some_and(|s| s.iter().any(|x| x == &format!("repository:{repo}:pull")))
        })
    };
    assert!(asked(serde_json::Value::Null, "public/bb"), "{seen:?}");
    assert!(asked(serde_json::Value::Null, "private/bb"), "{seen:?}");
    assert!(asked(REGISTRY_USER.into(), "private/bb"), "{seen:?}");
    assert!(asked("refused".into(), "private/bb"), "{seen:?}");
}
