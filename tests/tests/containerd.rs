//! containerd containers as tasks, end to end: a real `containerd` (its own root, state and socket, the CRI plugin
//! off), an image imported with `ctr images import` from an OCI archive written here (no network), containers
//! started with `ctr run`, and the real agent and `dcos` CLI. One containerd per test binary, stopped at exit.
//!
//! The Kubernetes test here gives `ctr run` the annotations that containerd's CRI plugin writes into every pod
//! container's `config.json`, with CRI-O's too in the unit tests; `cri.rs` runs real pods through the CRI
//! service itself.

#[path = "support/containerd.rs"]
mod ctd;
#[path = "support/registry.rs"]
mod registry;
mod support;

use ctd::{ctr, ctr_ok, Containerd};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use support::*;

/// `*` never crosses `/`: containerd's tasks (`NAMESPACE/ID`) and pods (`NAMESPACE/POD/CONTAINER`) need `**`.
const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["**"]
actions = ["*"]

[[rule]]
subjects = ["user:shopper"]
tasks = ["shop/*"]
actions = ["list", "exec"]
"#;

/// The containerd of this test binary, with the image its containers run.
struct Daemon {
    c: Containerd,
    image: String,
}

struct CtdWorld {
    c: Daemon,
    agent: Agent,
}

fn start_containerd(dir: &Path) -> Daemon {
    let c = ctd::start(dir, &format!("{}-ns", prefix()), None);
    let image = format!("docker.io/library/{}bb:1", prefix());
    ctd::import_busybox(&c, &dir.join("layout"), &image);
    Daemon { c, image }
}

static WORLD: OnceLock<CtdWorld> = OnceLock::new();

fn world() -> &'static CtdWorld {
    WORLD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let root = std::env::temp_dir().join(format!("{}-containerd", prefix()));
            let c = start_containerd(&root);
            let runtimes = format!(
                "runc_roots = [\"{}\"]\ncrun_roots = []\ndocker_sockets = []\n\
                 containerd_sockets = [\"{}\"]",
                c.c.runc_root.display(),
                c.c.sock.display()
            );
            let agent = Agent::start_with_runtimes(&root.join("agent"), "", &runtimes, ACL);
            agent.kill_at_exit();
            tx.send(CtdWorld { c, agent }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("containerd world set-up failed (see the panic above)")
    })
}

/// `ctr run -d` of the test image as `id`, with OCI annotations.
fn ctr_run(w: &CtdWorld, id: &str, annotations: &[(&str, &str)]) {
    ctr_run_with(w, id, "--annotation", annotations)
}

/// `ctr run -d` of the test image as `id`, with containerd labels.
fn ctr_run_labelled(w: &CtdWorld, id: &str, labels: &[(&str, &str)]) {
    ctr_run_with(w, id, "--label", labels)
}

fn ctr_run_with(w: &CtdWorld, id: &str, flag: &str, pairs: &[(&str, &str)]) {
    let mut a: Vec<String> = ["run", "-d", "--snapshotter", "native"].map(String::from).to_vec();
    for (k, v) in pairs {
        a.push(flag.into());
        a.push(format!("{k}={v}"));
    }
    a.extend([w.c.image.clone(), id.into(), "sleep".into(), "100000".into()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ctr_ok(&w.c.c, &a);
}

fn remove(w: &CtdWorld, id: &str) {
    let _ = ctr(&w.c.c, &["tasks", "kill", "-s", "KILL", id]);
    let _ = ctr(&w.c.c, &["tasks", "rm", "-f", id]);
    let _ = ctr(&w.c.c, &["containers", "rm", id]);
}

#[test]
fn containerd_containers_are_tasks_as_namespace_slash_id() {
    if skip() {
        return;
    }
    let w = world();
    let id = format!("{}-plain", prefix());
    let nerd_name = format!("{}-web", prefix());
    // nerdctl keeps a container's name in this containerd label, which only containerd's API gives.
    ctr_run_labelled(w, &id, &[("nerdctl/name", &nerd_name), ("com.docker.compose.service", "web")]);
    let task = format!("{}/{id}", w.c.c.ns);
    let o = run(w.agent.dcos().args(["task", "list", "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let row = rows.iter().find(|t| t["container"] == id.as_str()).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((row["id"].as_str(), row["runtime"].as_str()), (Some(task.as_str()), Some("containerd")));
    assert_eq!((row["name"].as_str(), row["service"].as_str()), (Some(nerd_name.as_str()), Some("web")));
    for name in [task.clone(), id.clone(), format!("{}/{}", w.c.c.ns, &id[..id.len() - 2]), nerd_name.clone()] {
        let o = w.agent.sh(&name, "echo in; cat /proc/1/cmdline | tr '\\0' ' '");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), "in\nsleep 100000 ".into()), "{name}: {}", stderr(&o));
    }
    // containerd's API answers: GET /v1/runtimes counts its containers.
    let o = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(w.agent.dir.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", w.agent.admin_token)])
        .arg(format!("{}/v1/runtimes", w.agent.url)));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stdout(&o)));
    let ctd = v.iter().find(|r| r["runtime"] == "containerd").unwrap();
    assert_eq!(ctd["status"], "ok", "{v:?}");
    assert!(ctd["containers"].as_u64().unwrap() >= 1, "{v:?}");
    remove(w, &id);
}

#[test]
fn pod_containers_are_tasks_as_namespace_pod_container_and_sandboxes_are_not() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let cri = |kind: &'static str, pod: String, name: &'static str| {
        vec![
            ("io.kubernetes.cri.container-type", kind.to_string()),
            ("io.kubernetes.cri.sandbox-namespace", "shop".into()),
            ("io.kubernetes.cri.sandbox-name", pod),
            ("io.kubernetes.cri.container-name", name.to_string()),
        ]
    };
    let solo = format!("checkout-{p}");
    let duo = format!("cart-{p}");
    let started = [
        (format!("{p}-pause-a"), cri("sandbox", solo.clone(), "")),
        (format!("{p}-app"), cri("container", solo.clone(), "app")),
        (format!("{p}-pause-b"), cri("sandbox", duo.clone(), "")),
        (format!("{p}-front"), cri("container", duo.clone(), "front")),
        (format!("{p}-envoy"), cri("container", duo.clone(), "envoy")),
    ];
    for (id, ann) in &started {
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ctr_run(w, id, &ann);
    }
    let o = run(w.agent.dcos().args(["task", "list", "--json", "shop/"]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut ids: Vec<(&str, Option<&str>)> =
        rows.iter().map(|t| (t["id"].as_str().unwrap(), t["name"].as_str())).collect();
    ids.sort();
    let solo_name = format!("shop/{solo}");
    assert_eq!(
        ids,
        [
            (format!("shop/{duo}/envoy").as_str(), None),
            (format!("shop/{duo}/front").as_str(), None),
            (format!("shop/{solo}/app").as_str(), Some(solo_name.as_str())),
        ],
        "pause containers are not tasks"
    );
    // A pod with one application container is a task by its pod name; one with two is ambiguous.
    let o = w.agent.sh(&format!("shop/{solo}"), "echo app");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "app\n".into()), "{}", stderr(&o));
    let o = w.agent.sh(&format!("shop/{duo}"), "true");
    assert_eq!(o.status.code(), Some(123), "{}", stderr(&o));
    assert!(stderr(&o).contains("front") && stderr(&o).contains("envoy"), "{}", stderr(&o));
    assert_eq!(w.agent.sh(&format!("shop/{duo}/envoy"), "true").status.code(), Some(0));
    // `*` stays within one level: `shop/*` grants the pod by its name, not its containers' task ids.
    let shopper = w.agent.token("shopper", &[], "1h");
    let as_shopper = |task: &str| run(w.agent.dcos_as(&shopper).args(["task", "exec", task, "true"])).status.code();
    assert_eq!(as_shopper(&format!("shop/{solo}")), Some(0));
    assert_eq!(as_shopper(&format!("shop/{duo}/envoy")), Some(118));
    for (id, _) in &started {
        remove(w, id);
    }
}
