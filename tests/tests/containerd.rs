//! containerd containers as tasks, end to end: a real `containerd` (its own root, state and socket, the CRI plugin
//! off), an image imported with `ctr images import` from an OCI archive written here (no network), containers
//! started with `ctr run`, and the real agent and `dcos` CLI. One containerd per test binary, stopped at exit.
//!
//! The Kubernetes tests here give `ctr run` the annotations that containerd's CRI plugin writes into every pod
//! container's `config.json`: in the CRI's namespace `k8s.io`, where they name pods, and in another one, where
//! anybody may write them and they name and hide nothing. CRI-O's are in the unit tests; `cri.rs` runs real
//! pods through the CRI service itself.

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
images = ["**"]

[[rule]]
subjects = ["user:ro"]
tasks = ["**"]
actions = ["list", "debug"]
images = ["**"]

[[rule]]
subjects = ["user:shopper"]
tasks = ["shop/*"]
actions = ["list", "exec"]
"#;

/// The containerd of this test binary, with the image its containers run.
struct Daemon {
    c: Containerd,
    /// The same containerd, with `ctr` in the CRI's namespace `k8s.io` (the CRI plugin itself is off).
    k8s: Containerd,
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
    let k8s = ctd::namespace(&c, ctd::CRI_NAMESPACE);
    ctd::import_busybox(&k8s, &dir.join("layout-k8s"), &image);
    Daemon { c, k8s, image }
}

static WORLD: OnceLock<CtdWorld> = OnceLock::new();

/// The agent's `[runtimes]`: this containerd's runc roots (of the test's namespace, and of the others, `k8s.io`
/// among them, which [`ctd::namespace`] keeps under its directory) and socket.
fn runtimes(d: &Daemon) -> String {
    format!(
        "runc_roots = [\"{}\", \"{}/runc/*\"]\ncrun_roots = []\ndocker_sockets = []\ncontainerd_sockets = [\"{}\"]\n\
         api_timeout = \"10s\"",
        d.c.runc_root.display(),
        d.c.dir.display(),
        d.c.sock.display()
    )
}

fn world() -> &'static CtdWorld {
    WORLD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let root = std::env::temp_dir().join(format!("{}-containerd", prefix()));
            let c = start_containerd(&root);
            let agent = Agent::start_with_runtimes(&root.join("agent"), "", &runtimes(&c), ACL);
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
    ctr_run_with(w, &w.c.c, id, "--annotation", annotations)
}

/// `ctr run -d` of the test image as `id`, with containerd labels.
fn ctr_run_labelled(w: &CtdWorld, id: &str, labels: &[(&str, &str)]) {
    ctr_run_with(w, &w.c.c, id, "--label", labels)
}

/// `ctr run -d` of the test image as `id` in the namespace of `c`, its runc state in `c.runc_root` and its
/// cgroup under the test namespace's, with `flag KEY=VALUE` for each pair and `MARK=ID` in its environment.
fn ctr_run_with(w: &CtdWorld, c: &Containerd, id: &str, flag: &str, pairs: &[(&str, &str)]) {
    let mut a: Vec<String> = ["run", "-d", "--snapshotter", "native"].map(String::from).to_vec();
    a.extend(ctd::runc_root_args(c));
    a.extend(["--cgroup".into(), format!("/{}/{id}", w.c.c.ns), "--env".into(), format!("MARK={id}")]);
    for (k, v) in pairs {
        a.push(flag.into());
        a.push(format!("{k}={v}"));
    }
    a.extend([w.c.image.clone(), id.into(), "sleep".into(), "100000".into()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ctr_ok(c, &a);
}

fn remove(w: &CtdWorld, id: &str) {
    remove_in(&w.c.c, id)
}

fn remove_in(c: &Containerd, id: &str) {
    let _ = ctr(c, &["tasks", "kill", "-s", "KILL", id]);
    let _ = ctr(c, &["tasks", "rm", "-f", id]);
    let _ = ctr(c, &["containers", "rm", id]);
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

/// Containers of the CRI's namespace `k8s.io` with the CRI's annotations, as containerd's CRI plugin starts them.
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
        ctr_run_with(w, &w.c.k8s, id, "--annotation", &ann);
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
        remove_in(&w.c.k8s, id);
    }
}

/// The CRI's annotations, as containerd's CRI plugin writes them for a pod `ns/pod`.
fn cri_annotations<'a>(kind: &'a str, ns: &'a str, pod: &'a str, name: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.sandbox-namespace", ns),
        ("io.kubernetes.cri.sandbox-name", pod),
        ("io.kubernetes.cri.container-name", name),
    ]
}

/// `dcos task list --all --json`'s rows as (task id, name, runtime, state), by container id.
fn rows_by_container(w: &CtdWorld) -> std::collections::HashMap<String, (String, Option<String>, String, String)> {
    let o = run(w.agent.dcos().args(["task", "list", "--all", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    rows.iter()
        .map(|t| {
            (s(&t["container"]), (s(&t["id"]), t["name"].as_str().map(String::from), s(&t["runtime"]), s(&t["state"])))
        })
        .collect()
}

/// The attack: a user of containerd's API, in a namespace of its own (`ctr -n dev run --annotation ...`), writes
/// the annotations of containerd's CRI plugin, to pass for a container of a pod of another namespace's team
/// (which would take its task id, make its names ambiguous and take its pod name away) or for a pod's sandbox
/// (which would hide its container from every list and exec, the admin's too). Outside the CRI's namespace they
/// are not believed: the containers are `NS/ID` like any other, listed and reachable, and the real pod keeps its
/// names. Nor does the CRI's label hide a container without a task there.
#[test]
fn cri_annotations_outside_the_cri_namespace_name_and_hide_nothing() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let dev = &w.c.c.ns;
    let pod = format!("payments-{p}");
    let (real, real_pause) = (format!("{p}-real"), format!("{p}-real-pause"));
    ctr_run_with(w, &w.c.k8s, &real_pause, "--annotation", &cri_annotations("sandbox", "prod", &pod, ""));
    ctr_run_with(w, &w.c.k8s, &real, "--annotation", &cri_annotations("container", "prod", &pod, "app"));
    let (spoof, hidden) = (format!("{p}-spoof"), format!("{p}-hidden"));
    ctr_run(w, &spoof, &cri_annotations("container", "prod", &pod, "app"));
    ctr_run(w, &hidden, &cri_annotations("sandbox", "prod", &pod, ""));
    // A container without a task, with the label the CRI puts on its own.
    let labelled = format!("{p}-labelled");
    let create = ["containers", "create", "--snapshotter", "native", "--label", "io.cri-containerd.kind=sandbox"];
    let mut a: Vec<&str> = create.to_vec();
    a.extend([w.c.image.as_str(), labelled.as_str(), "true"]);
    ctr_ok(&w.c.c, &a);

    let rows = rows_by_container(w);
    let row = |id: &str| rows.get(id).cloned().unwrap_or_else(|| panic!("{id} not listed: {rows:?}"));
    let s = String::from;
    let real_task = format!("prod/{pod}/app");
    assert_eq!(row(&real), (real_task.clone(), Some(format!("prod/{pod}")), s("containerd"), s("running")));
    assert!(!rows.contains_key(&real_pause), "the CRI namespace's sandbox is not a task: {rows:?}");
    for id in [&spoof, &hidden] {
        assert_eq!(row(id), (format!("{dev}/{id}"), None, s("containerd"), s("running")), "{id}");
    }
    assert_eq!(row(&labelled), (format!("{dev}/{labelled}"), None, s("containerd"), s("stopped")));
    // The real pod is reached by its pod name and its task id, not made ambiguous; each spoof by its own.
    for (task, mark) in [(format!("prod/{pod}"), &real), (real_task, &real), (format!("{dev}/{spoof}"), &spoof)] {
        let o = w.agent.sh(&task, "echo $MARK");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{mark}\n")), "{task}: {}", stderr(&o));
    }
    let o = w.agent.sh(&format!("{dev}/{hidden}"), "echo $MARK");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{hidden}\n")), "{}", stderr(&o));
    for id in [&real, &real_pause] {
        remove_in(&w.c.k8s, id);
    }
    for id in [&spoof, &hidden, &labelled] {
        remove(w, id);
    }
}

/// A `task_id_annotation` (the agents of these tests read `io.dcos.task-id`) on a container of a namespace other
/// than the CRI's names it within its namespace: `dev/VALUE`, so that a user of `dev` cannot take a task id that
/// looks like another namespace's, here the one of a task of `prod`. In the CRI's namespace the value is the
/// task id as it is.
#[test]
fn annotated_task_ids_keep_their_containerd_namespace() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let dev = &w.c.c.ns;
    let prod = ctd::namespace(&w.c.c, &format!("{p}-prod"));
    ctd::import_busybox(&prod, &w.c.c.dir.join("layout-prod"), &w.c.image);
    let (victim, thief, cri) = (format!("{p}-victim"), format!("{p}-thief"), format!("{p}-cri-tid"));
    let (victim_task, cri_task) = (format!("{}/{victim}", prod.ns), format!("{p}-cri-task"));
    ctr_run_with(w, &prod, &victim, "--annotation", &[]);
    ctr_run(w, &thief, &[("io.dcos.task-id", &victim_task)]);
    ctr_run_with(w, &w.c.k8s, &cri, "--annotation", &[("io.dcos.task-id", &cri_task)]);

    let rows = rows_by_container(w);
    let task_of = |id: &str| rows.get(id).map(|r| r.0.clone()).unwrap_or_else(|| panic!("{id} not listed: {rows:?}"));
    assert_eq!(task_of(&victim), victim_task);
    assert_eq!(task_of(&thief), format!("{dev}/{victim_task}"));
    assert_eq!(task_of(&cri), cri_task);
    for (task, mark) in [(&victim_task, &victim), (&format!("{dev}/{victim_task}"), &thief), (&cri_task, &cri)] {
        let o = w.agent.sh(task, "echo $MARK");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{mark}\n")), "{task}: {}", stderr(&o));
    }
    remove_in(&prod, &victim);
    remove(w, &thief);
    remove_in(&w.c.k8s, &cri);
}

/// What a debug session sees of a crashed container: its log in its root, its read-only bind mount of a host
/// directory; no network; and whether it may write to the container's root.
const PROBE: &str = "cat /target/tmp/app.log /target/host/note; ip -o link | wc -l; \
                     touch /target/tmp/written 2>/dev/null; echo touch=$?";

/// `ctr run` of a container that writes its log and exits 3, with a read-only bind of `host` at /host, on
/// `snapshotter`; `-d` leaves its task (stopped, with its exit status) for `ctr task rm`.
fn run_crashing(w: &CtdWorld, id: &str, snapshotter: &str, detach: bool, host: &Path) {
    let mount = format!("type=bind,src={},dst=/host,options=rbind:ro", host.display());
    let mut a = vec!["run", "--snapshotter", snapshotter, "--mount", &mount];
    if detach {
        a.push("-d");
    }
    a.extend([w.c.image.as_str(), id, "sh", "-c", "echo crashed > /tmp/app.log; exit 3"]);
    let o = ctr(&w.c.c, &a);
    assert_eq!(o.status.code(), Some(if detach { 0 } else { 3 }), "{}", stderr(&o));
}

/// Runs PROBE in a debug session on `task` as `user` (`admin` may write) and returns its lines.
fn probe(w: &CtdWorld, user: &str, task: &str, image: &str) -> Vec<String> {
    let token = w.agent.token(user, &[], "1h");
    let o = run(w.agent.dcos_as(&token).args(["task", "exec", "--debug-image", image, task, "sh", "-c", PROBE]));
    assert_eq!(o.status.code(), Some(0), "{task}: {}", stderr(&o));
    stdout(&o).lines().map(|l| l.trim().to_string()).collect()
}

/// Whether the container's own root (its snapshot, as containerd mounts it for a new task) holds `path`.
fn snapshot_has(w: &CtdWorld, id: &str, path: &str) -> bool {
    let dir = w.c.c.dir.join(format!("probe-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let o =
        ctr(&w.c.c, &["snapshots", "--snapshotter", &snapshotter_of(w, id), "mounts", &dir.display().to_string(), id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cmd = stdout(&o);
    let mounted = run(Command::new("sh").arg("-c").arg(&cmd));
    assert!(mounted.status.success(), "{cmd}: {}", stderr(&mounted));
    let has = dir.join(path.trim_start_matches('/')).exists();
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    has
}

fn snapshotter_of(w: &CtdWorld, id: &str) -> String {
    let info: serde_json::Value = serde_json::from_str(&ctr_ok(&w.c.c, &["containers", "info", id])).unwrap();
    info["Snapshotter"].as_str().unwrap().to_string()
}

/// A `ctr run` container that wrote a file and exited 3: listed with its exit status while its task is kept
/// (`-d`), and still listed once the task is deleted, when containerd keeps only its record (its OCI spec) and its
/// snapshot. Both times plain exec is refused and a debug session sees its files and its bind mount,
/// without network, read-only without `debug:write`; with it, the write lands in the container's snapshot. On the
/// `native` snapshotter (one directory) and on `overlayfs` (layers mounted afresh, the upper read-only for a
/// reader).
#[test]
fn a_crashed_containerd_container_is_debugged_in_a_sandbox_on_its_files() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let dir = w.c.c.dir.join("crashed");
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("note"), "from the host\n").unwrap();
    let layout = dir.join("debug-layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let want = |touch: &str| ["crashed", "from the host", "1", touch].map(String::from).to_vec();
    for (snapshotter, short) in [("native", "n"), ("overlayfs", "o")] {
        let id = format!("{p}-crash-{short}");
        let task = format!("{}/{id}", w.c.c.ns);
        // Its task kept: stopped, with its exit status.
        run_crashing(w, &id, snapshotter, true, &host);
        assert!(
            eventually(30, || ctr_ok(&w.c.c, &["tasks", "ls"])
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("STOPPED"))),
            "the container exits"
        );
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&run(w.agent.dcos().args(["task", "list", "--all", "--json", &id])).stdout).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0]["state"].as_str(), rows[0]["exit_code"].as_i64()), (Some("stopped"), Some(3)));
        assert_eq!(w.agent.sh(&task, "true").status.code(), Some(120));
        assert_eq!(probe(w, "ro", &task, &image), want("touch=1"), "{snapshotter}, task kept");
        // The task deleted: only containerd's record and snapshot are left.
        ctr_ok(&w.c.c, &["tasks", "rm", &id]);
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&run(w.agent.dcos().args(["task", "list", "--all", "--json", &id])).stdout).unwrap();
        assert_eq!((rows.len(), rows[0]["state"].as_str()), (1, Some("stopped")), "{rows:?}");
        assert_eq!(w.agent.sh(&task, "true").status.code(), Some(120));
        assert_eq!(probe(w, "ro", &task, &image), want("touch=1"), "{snapshotter}, task deleted");
        assert!(!snapshot_has(w, &id, "/tmp/written"));
        assert_eq!(probe(w, "admin", &task, &image), want("touch=0"), "{snapshotter}, with debug:write");
        assert!(snapshot_has(w, &id, "/tmp/written"), "{snapshotter}: the write is in the container's snapshot");
        let o = run(w.agent.dcos().args(["task", "exec", "--debug-image", &image, &task, "touch", "/target/host/x"]));
        assert_ne!(o.status.code(), Some(0), "the read-only bind mount stays read-only");
        assert!(!host.join("x").exists());
        // Removed: no task any more.
        ctr_ok(&w.c.c, &["containers", "rm", &id]);
        let o = run(w.agent.dcos().args(["task", "exec", "--debug-image", &image, &task, "true"]));
        assert_eq!(o.status.code(), Some(119), "{}", stderr(&o));
    }
    // `ctr run` without -d deletes the task itself when the process ends: the container is still debugged.
    let id = format!("{p}-crash-fg");
    run_crashing(w, &id, "overlayfs", false, &host);
    assert_eq!(probe(w, "ro", &format!("{}/{id}", w.c.c.ns), &image), want("touch=1"));
    remove(w, &id);
}

/// The container is removed (task and record) after the agent resolved it and while the debug image is pulled:
/// the session ends with a clear "removed" error and the exit code of a missing task.
#[test]
fn a_container_removed_before_its_debug_sandbox_starts_is_a_clear_error() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let dir = w.c.c.dir.join("gone");
    let pki = registry::Pki::create(&dir.join("pki"));
    let reg = registry::Registry::start_with(&dir.join("registry"), &pki, false, false);
    registry::write_layout(&dir.join("layout"), "v1", &[registry::busybox_layer()]);
    reg.push(&dir.join("layout"), "v1", "tools/bb", false);
    let (port, seen, release) = registry::gated_proxy(reg.host());
    let agent = Agent::start_with_runtimes(
        &dir.join("agent"),
        &format!("[images]\ninsecure_registries = [\"127.0.0.1:{port}\"]\n"),
        &runtimes(&w.c),
        ACL,
    );
    let id = format!("{p}-gone");
    run_crashing(w, &id, "native", false, &dir);
    let child = agent
        .dcos()
        .args(["task", "exec", "--debug-image", &format!("127.0.0.1:{port}/tools/bb:latest")])
        .args([&format!("{}/{id}", w.c.c.ns), "true"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    seen.recv_timeout(std::time::Duration::from_secs(30)).expect("the pull starts once the task is resolved");
    remove(w, &id);
    release.send(()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(119), "{err}");
    assert!(err.contains("was removed"), "{err}");
}
