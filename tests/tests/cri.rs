//! Kubernetes pods as tasks, end to end, made the way a kubelet makes them: a real `containerd` with its CRI
//! plugin on (its own root, state, socket and runc root), a pause image (a static C program,
//! `support/pause.c`) and a busybox image imported from OCI archives written here (no network), pods on the
//! host network (so no CNI) created with `RunPodSandbox`, `CreateContainer` and `StartContainer` over the CRI
//! gRPC API (`k8s-cri`'s client, on containerd's socket), and the real agent and `dcos` CLI.
//!
//! The pods are stopped and removed through the CRI at the end of the test, and by a guard when it fails;
//! containerd is stopped, and its mounts and directories removed, when the test process exits.

#[path = "support/containerd.rs"]
mod ctd;
#[path = "support/registry.rs"]
mod registry;
mod support;

use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Response, Status};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The CRI plugin resolves these names in containerd's `k8s.io` namespace; `localhost/` makes it plain that
/// nothing is pulled.
const PAUSE_IMAGE: &str = "localhost/dcos-exec-test/pause:1";
const APP_IMAGE: &str = "localhost/dcos-exec-test/busybox:1";

/// `**`: pod containers are `NAMESPACE/POD/CONTAINER`.
const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["**"]
actions = ["*"]
"#;

/// A CRI client on containerd's socket, with the runtime that drives it.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let channel = rt.block_on(containerd_client::connect(sock)).expect("connecting to containerd's socket");
        Cri { rt, client: RuntimeServiceClient::new(channel) }
    }

    /// Runs one CRI call, bounded in time so that a hung containerd fails the test instead of blocking it.
    fn call<T, F>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let fut = f(self.client.clone());
        match self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), fut).await }) {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => panic!("CRI {what}: {e}"),
            Err(_) => panic!("CRI {what}: no answer in 60 s"),
        }
    }

    fn version(&self) -> cri::VersionResponse {
        self.call("Version", |mut c| async move { c.version(cri::VersionRequest::default()).await })
    }

    /// `RunPodSandbox`, then `CreateContainer` and `StartContainer` for each name in `containers`, as a kubelet
    /// does for a pod of Kubernetes namespace `ns`.
    fn run_pod(&self, ns: &str, name: &str, containers: &[&str]) -> Pod {
        let config = pod_config(ns, name);
        let sandbox = config.clone();
        let id = self
            .call("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(sandbox), ..Default::default() }).await
            })
            .pod_sandbox_id;
        let mut pod = Pod { id, containers: Vec::new() };
        for &cname in containers {
            let req = cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(container_config(cname)),
                sandbox_config: Some(config.clone()),
            };
            let cid = self.call("CreateContainer", |mut c| async move { c.create_container(req).await }).container_id;
            let start = cri::StartContainerRequest { container_id: cid.clone() };
            self.call("StartContainer", |mut c| async move { c.start_container(start).await });
            pod.containers.push((cname.to_string(), cid));
        }
        pod
    }

    /// The pid of the container's init process on the host, from the CRI's verbose container status.
    fn init_pid(&self, container_id: &str) -> i32 {
        let req = cri::ContainerStatusRequest { container_id: container_id.into(), verbose: true };
        let r = self.call("ContainerStatus", |mut c| async move { c.container_status(req).await });
        let state = r.status.as_ref().map(|s| s.state);
        assert_eq!(state, Some(i32::from(cri::ContainerState::ContainerRunning)), "{container_id}: {r:?}");
        let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
        i32::try_from(info["pid"].as_i64().unwrap()).unwrap()
    }

    /// `StopPodSandbox` (which stops its containers) and `RemovePodSandbox` (which removes them).
    fn remove_pod(&self, id: &str) {
        let stop = cri::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("StopPodSandbox", |mut c| async move { c.stop_pod_sandbox(stop).await });
        let rm = cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("RemovePodSandbox", |mut c| async move { c.remove_pod_sandbox(rm).await });
    }

    fn pod_count(&self) -> usize {
        self.call(
            "ListPodSandbox",
            |mut c| async move { c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await },
        )
        .items
        .len()
    }
}

struct Pod {
    id: String,
    /// (name, container id)
    containers: Vec<(String, String)>,
}

impl Pod {
    fn container(&self, name: &str) -> &str {
        &self.containers.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// Removes the pods still in it when dropped: the test removes them itself and empties it, so this only acts
/// when the test panicked on the way.
struct PodGuard<'a> {
    cri: &'a Cri,
    ids: Vec<String>,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cri.remove_pod(&id)));
        }
    }
}

/// Host network, IPC shared in the pod, and for each container a PID namespace of its own (a kubelet's default
/// without `shareProcessNamespace`).
fn namespaces(pid: cri::NamespaceMode) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node.into(),
        pid: pid.into(),
        ipc: cri::NamespaceMode::Pod.into(),
        ..Default::default()
    }
}

fn pod_config(ns: &str, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: ns.into(),
            attempt: 0,
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", cgroup_parent()),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(cri::NamespaceMode::Pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cgroup (in every hierarchy) that the pods' cgroups go under, as a kubelet's `kubepods`.
fn cgroup_parent() -> String {
    format!("{}-pods", prefix())
}

fn container_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: APP_IMAGE.into(), ..Default::default() }),
        command: vec!["sleep".into()],
        args: vec!["100000".into()],
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pause image: `support/pause.c` built static, as `/pause`, its entrypoint.
fn import_pause(c: &ctd::Containerd, dir: &Path) {
    let bin = dir.join("pause");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pause.c");
    let o = run(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(&bin).arg(&src));
    assert!(o.status.success(), "gcc -static {}: {}", src.display(), stderr(&o));
    let layer = registry::tar_layer(&[
        registry::Entry::file("pause", 0o755, &std::fs::read(&bin).unwrap()),
        registry::Entry::dir("dev/", 0o755),
        registry::Entry::dir("proc/", 0o755),
        registry::Entry::dir("sys/", 0o755),
        registry::Entry::dir("etc/", 0o755),
    ]);
    let layout = dir.join("pause-layout");
    let _ = std::fs::remove_dir_all(&layout);
    let desc = registry::put_image_with(&layout, "amd64", &[layer], serde_json::json!({"Entrypoint": ["/pause"]}));
    registry::tag_layout(&layout, PAUSE_IMAGE, &desc);
    ctd::import(c, &layout);
}

/// The annotations containerd's CRI plugin writes for a container of pod `ns/pod`.
fn cri_annotations<'a>(kind: &'a str, ns: &'a str, pod: &'a str, name: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.sandbox-namespace", ns),
        ("io.kubernetes.cri.sandbox-name", pod),
        ("io.kubernetes.cri.container-name", name),
    ]
}

/// `ctr run -d` of the app image as `id` in `c`'s namespace, with these OCI annotations, its runc state in
/// `c.runc_root` and its cgroup under the pods' parent (removed at exit).
fn ctr_run_annotated(c: &ctd::Containerd, id: &str, annotations: &[(&str, &str)]) {
    let mut a: Vec<String> = ["run", "-d", "--snapshotter", "native"].map(String::from).to_vec();
    a.extend(ctd::runc_root_args(c));
    a.extend(["--cgroup".into(), format!("/{}/{id}", cgroup_parent())]);
    for (k, v) in annotations {
        a.extend(["--annotation".into(), format!("{k}={v}")]);
    }
    a.extend([APP_IMAGE.into(), id.into(), "sleep".into(), "100000".into()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ctd::ctr_ok(c, &a);
}

/// The namespaces that [`PROBE`] prints, in its order.
const NAMESPACES: [&str; 6] = ["mnt", "pid", "uts", "ipc", "net", "cgroup"];
const PROBE: &str = "for n in mnt pid uts ipc net cgroup; do readlink /proc/self/ns/$n; done; \
                     cat /proc/sys/kernel/hostname /proc/self/cgroup; tr '\\0' ' ' < /proc/1/cmdline";

/// What [`PROBE`] prints when it runs in the container whose init is `pid`: its namespaces, its hostname, its
/// cgroups as seen from its cgroup namespace, and its init's command line.
fn expected_probe(pid: i32) -> String {
    let mut s = String::new();
    for n in NAMESPACES {
        s.push_str(&format!("{}\n", std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap().display()));
    }
    let pid = pid.to_string();
    let o = run(Command::new("nsenter")
        .args(["-t", &pid, "-u", "-C", "cat", "/proc/sys/kernel/hostname"])
        .arg(format!("/proc/{pid}/cgroup")));
    assert!(o.status.success(), "nsenter: {}", stderr(&o));
    s.push_str(&stdout(&o));
    s.push_str("sleep 100000 ");
    s
}

fn shop_rows(agent: &Agent, all: bool) -> Vec<serde_json::Value> {
    let mut cmd = agent.dcos();
    cmd.args(["task", "list", "--json"]);
    if all {
        cmd.arg("-a");
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "task list: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

/// containerd with the CRI plugin on and the two images imported, and an agent that reads its runc root and
/// socket. Started from a thread that lives as long as the process, so that containerd's parent-death signal
/// only fires when the test process ends, after the exit hook has stopped it and its containers.
fn start(root: &Path) -> (ctd::Containerd, Agent) {
    let root = root.to_path_buf();
    // Registered before containerd's hook, so it runs after that has removed the containers.
    let parent = cgroup_parent();
    at_exit(move || ctd::remove_cgroup(&parent));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let c = ctd::start(&root, ctd::CRI_NAMESPACE, Some(PAUSE_IMAGE));
        let plugins = ctd::ctr_ok(&c, &["plugins", "ls"]);
        // `TYPE ID PLATFORMS STATUS`: `io.containerd.grpc.v1 cri linux/amd64 ok`.
        let cri_ok = |l: &str| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[..2] == ["io.containerd.grpc.v1", "cri"] && f[3] == "ok"
        };
        assert!(plugins.lines().any(cri_ok), "the CRI plugin is not running: {plugins}");
        import_pause(&c, &root);
        ctd::import_busybox(&c, &root.join("app-layout"), APP_IMAGE);
        // The runc roots of every namespace: the CRI's `k8s.io`, and those of `ctd::namespace`.
        let runtimes = format!(
            "runc_roots = [\"{}/runc/*\"]\ncrun_roots = []\ndocker_sockets = []\ncontainerd_sockets = [\"{}\"]\napi_timeout = \"10s\"",
            c.dir.display(),
            c.sock.display()
        );
        let agent = Agent::start_with_runtimes(&root.join("agent"), "", &runtimes, ACL);
        tx.send((c, agent)).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("containerd or agent set-up failed (see the panic above)")
}

#[test]
fn pods_run_through_containerds_cri_service_are_tasks_by_pod_and_container() {
    if skip() {
        return;
    }
    let p = prefix();
    let root = std::env::temp_dir().join(format!("{p}-cri"));
    let (c, agent) = start(&root);
    let cri = Cri::connect(&c.sock);
    let v = cri.version();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("containerd", "v1"), "{v:?}");

    let mut guard = PodGuard { cri: &cri, ids: Vec::new() };
    let (solo_name, duo_name) = (format!("checkout-{p}"), format!("cart-{p}"));
    let solo = cri.run_pod("shop", &solo_name, &["app"]);
    guard.ids.push(solo.id.clone());
    let duo = cri.run_pod("shop", &duo_name, &["front", "envoy"]);
    guard.ids.push(duo.id.clone());
    let (app, front, envoy) =
        (format!("shop/{solo_name}/app"), format!("shop/{duo_name}/front"), format!("shop/{duo_name}/envoy"));

    // The CRI's own containers, pause containers among them, as the agent lists them: three tasks, named by
    // namespace, pod and container; the one-container pod's by its pod name too.
    for all in [false, true] {
        let rows = shop_rows(&agent, all);
        let mut got: Vec<(&str, &str, Option<&str>, &str)> = rows
            .iter()
            .filter(|t| t["id"].as_str().is_some_and(|i| i.starts_with("shop/")))
            .map(|t| {
                (
                    t["id"].as_str().unwrap(),
                    t["container"].as_str().unwrap(),
                    t["name"].as_str(),
                    t["runtime"].as_str().unwrap(),
                )
            })
            .collect();
        got.sort();
        let solo_task = format!("shop/{solo_name}");
        assert_eq!(
            got,
            [
                (envoy.as_str(), duo.container("envoy"), None, "containerd"),
                (front.as_str(), duo.container("front"), None, "containerd"),
                (app.as_str(), solo.container("app"), Some(solo_task.as_str()), "containerd"),
            ],
            "all={all}: {rows:?}"
        );
        for sandbox in [&solo.id, &duo.id] {
            assert!(
                rows.iter().all(|t| t["container"] != sandbox.as_str()),
                "pause container {sandbox} listed: {rows:?}"
            );
        }
    }
    let o = run(agent.dcos().args(["task", "list"]));
    let table = stdout(&o);
    for task in [&app, &front, &envoy] {
        assert!(table.lines().any(|l| l.starts_with(task.as_str())), "{task} missing: {table}");
    }
    for sandbox in [&solo.id, &duo.id] {
        assert!(!table.contains(&sandbox[..12]), "pause container {sandbox} listed: {table}");
    }

    // Exec by NAMESPACE/POD/CONTAINER, and by NAMESPACE/POD for the one-container pod, runs in that container:
    // its namespaces, hostname, cgroups and PID 1.
    let app_probe = expected_probe(cri.init_pid(solo.container("app")));
    for task in [app.clone(), format!("shop/{solo_name}")] {
        let o = agent.sh(&task, PROBE);
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), app_probe.clone()), "{task}: {}", stderr(&o));
    }
    let envoy_probe = expected_probe(cri.init_pid(duo.container("envoy")));
    let front_probe = expected_probe(cri.init_pid(duo.container("front")));
    assert_ne!(envoy_probe, front_probe, "two containers of one pod have PID and mount namespaces of their own");
    for (task, want) in [(&envoy, &envoy_probe), (&front, &front_probe)] {
        let o = agent.sh(task, PROBE);
        assert_eq!((o.status.code(), &stdout(&o)), (Some(0), want), "{task}: {}", stderr(&o));
    }
    // The two-container pod's name is ambiguous, and the message names both of its containers.
    let o = run(agent.dcos().args(["task", "exec", &format!("shop/{duo_name}"), "true"]));
    assert_eq!(o.status.code(), Some(123), "{}", stderr(&o));
    assert!(stderr(&o).contains(&front) && stderr(&o).contains(&envoy), "{}", stderr(&o));

    // A user of containerd's API writes the CRI's annotations on containers of a namespace of its own: one that
    // would pass for the one-container pod's `app`, one for a sandbox, which would hide it. Outside the CRI's
    // namespace they are ordinary containers, `NS/ID`, listed and reachable; the pod keeps its names.
    let dev = ctd::namespace(&c, &format!("{p}-dev"));
    ctd::import_busybox(&dev, &root.join("dev-layout"), APP_IMAGE);
    let (spoof, hidden) = (format!("{p}-spoof"), format!("{p}-hidden"));
    ctr_run_annotated(&dev, &spoof, &cri_annotations("container", "shop", &solo_name, "app"));
    ctr_run_annotated(&dev, &hidden, &cri_annotations("sandbox", "shop", &solo_name, ""));
    for all in [false, true] {
        let rows = shop_rows(&agent, all);
        let task_of = |id: &str| {
            let row = rows.iter().find(|t| t["container"] == id).unwrap_or_else(|| panic!("{id}: {rows:?}"));
            (row["id"].as_str().map(String::from), row["name"].as_str().map(String::from))
        };
        assert_eq!(task_of(solo.container("app")), (Some(app.clone()), Some(format!("shop/{solo_name}"))));
        for id in [&spoof, &hidden] {
            assert_eq!(task_of(id), (Some(format!("{}/{id}", dev.ns)), None), "all={all}");
        }
    }
    for task in [app.clone(), format!("shop/{solo_name}")] {
        let o = agent.sh(&task, PROBE);
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), app_probe.clone()), "{task}: {}", stderr(&o));
    }
    for id in [&spoof, &hidden] {
        let o = agent.sh(&format!("{}/{id}", dev.ns), "tr '\\0' ' ' < /proc/1/cmdline");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), "sleep 100000 ".into()), "{id}: {}", stderr(&o));
        for args in
            [&["tasks", "kill", "-s", "KILL", id.as_str()][..], &["tasks", "rm", "-f", id], &["containers", "rm", id]]
        {
            ctd::ctr_ok(&dev, args);
        }
    }

    // Stopped and removed through the CRI, the pods are gone from the list, and from containerd.
    for id in std::mem::take(&mut guard.ids) {
        cri.remove_pod(&id);
    }
    assert_eq!(cri.pod_count(), 0);
    let rows = shop_rows(&agent, true);
    assert!(rows.iter().all(|t| !t["id"].as_str().unwrap_or("").starts_with("shop/")), "{rows:?}");
    assert_eq!(ctd::ctr_ok(&c, &["containers", "ls", "-q"]), "");
}
