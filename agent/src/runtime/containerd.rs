//! containerd and Kubernetes names, from what containerd and the CRI write for every container they start: the
//! bundle path (`.../io.containerd.runtime.v2.task/NAMESPACE/ID`) and the OCI annotations of its `config.json`
//! (the CRI's `io.kubernetes.cri.*`, CRI-O's `io.kubernetes.*`), the same file the exec reads; and what only
//! containerd's metadata holds (nerdctl's `nerdctl/name` label), from its gRPC API (`containerd-client`).
//!
//! Annotations are written by whoever creates the container, and any user of containerd's API may create one in
//! any namespace with any annotation (`ctr run --annotation`). So Kubernetes' annotations are believed only where
//! Kubernetes' runtime alone puts its containers: containerd's CRI namespace ([`CRI_NAMESPACE`]) for the CRI's,
//! the state roots configured as CRI-O's (`cri_o_roots`) for CRI-O's. Anywhere else they name nothing and hide
//! nothing: the container is an ordinary one of its runtime.

use super::docker::EngineError;
use super::stopped::Engine;
use super::{Container, State};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const V2_TASKS: &str = "io.containerd.runtime.v2.task";
/// Docker's containerd namespace: its names come from the engine (see `docker`).
const DOCKER_NAMESPACE: &str = "moby";
/// The containerd namespace where containerd's CRI plugin puts every pod container (fixed in containerd).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The containerd namespace of a bundle, if containerd's v2 shim made it.
pub fn namespace(bundle: &Path) -> Option<&str> {
    let ns = bundle.parent()?;
    if ns.parent()?.file_name()? != V2_TASKS {
        return None;
    }
    ns.file_name()?.to_str()
}

/// A Kubernetes container as the CRI (containerd's plugin or CRI-O) annotated it.
#[derive(Debug, PartialEq, Eq)]
pub enum Kube {
    /// The pod's sandbox (pause or infra) container: not a task.
    Sandbox,
    App {
        namespace: String,
        pod: String,
        container: String,
    },
}

/// What containerd's CRI plugin's annotations say, if any. Only for containers of [`CRI_NAMESPACE`].
pub fn cri(a: &HashMap<String, String>) -> Option<Kube> {
    let get = |k: &str| a.get(k).cloned();
    let kind = a.get("io.kubernetes.cri.container-type")?;
    if kind == "sandbox" {
        return Some(Kube::Sandbox);
    }
    Some(Kube::App {
        namespace: get("io.kubernetes.cri.sandbox-namespace")?,
        pod: get("io.kubernetes.cri.sandbox-name")?,
        container: get("io.kubernetes.cri.container-name")?,
    })
}

/// What CRI-O's annotations say, if any. Only for containers of a state root configured as CRI-O's.
pub fn cri_o(a: &HashMap<String, String>) -> Option<Kube> {
    let get = |k: &str| a.get(k).cloned();
    if a.get("io.kubernetes.cri-o.ContainerType").is_some_and(|t| t == "sandbox") {
        return Some(Kube::Sandbox);
    }
    let container = get("io.kubernetes.container.name")?;
    if container == "POD" {
        return Some(Kube::Sandbox);
    }
    Some(Kube::App { namespace: get("io.kubernetes.pod.namespace")?, pod: get("io.kubernetes.pod.name")?, container })
}

/// Where a container found in a state root came from, as far as naming it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    /// Its task id is the value of its bundle's `task_id_annotation`.
    pub annotated: bool,
    /// It was found in a state root configured as CRI-O's (`cri_o_roots`).
    pub cri_o: bool,
}

/// Names the containers of containerd and of Kubernetes pods in `all` from their bundles' paths and annotations
/// (`annotations` reads them), and drops pod sandboxes. `origins` tells, for each container of `all`, whether its
/// task id came from `task_id_annotation` and whether it was found in a CRI-O root.
///
/// - containerd: task id `NAMESPACE/ID`, or `NAMESPACE/VALUE` with a `task_id_annotation` (so that a user of one
///   namespace cannot take a task id that looks like another namespace's); name a `nerdctl/name` annotation if
///   there is one (the label comes through the API: [`merge`]).
/// - Kubernetes, from the CRI's annotations in [`CRI_NAMESPACE`] or CRI-O's in a CRI-O root: task id
///   `NAMESPACE/POD/CONTAINER` (the annotation's value as is with a `task_id_annotation`); name `NAMESPACE/POD`
///   while it is the pod's only application container that is not stopped.
pub fn name_all(all: &mut Vec<Container>, annotations: impl Fn(&Path) -> HashMap<String, String>, origins: &[Origin]) {
    let mut pods: HashMap<String, usize> = HashMap::new();
    let mut pod_of: Vec<Option<String>> = Vec::with_capacity(all.len());
    let mut sandboxes = Vec::new();
    for (i, c) in all.iter_mut().enumerate() {
        let origin = origins.get(i).copied().unwrap_or_default();
        let mut pod = None;
        let ns = namespace(&c.bundle).map(String::from);
        if ns.as_deref() == Some(DOCKER_NAMESPACE) {
            pod_of.push(None);
            continue;
        }
        let a = annotations(&c.bundle);
        let kube = match ns.as_deref() {
            Some(CRI_NAMESPACE) => cri(&a),
            Some(_) => None,
            None if origin.cri_o => cri_o(&a),
            None => None,
        };
        match kube {
            Some(Kube::Sandbox) => sandboxes.push(i),
            Some(Kube::App { namespace, pod: p, container }) => {
                let key = format!("{namespace}/{p}");
                if !origin.annotated {
                    c.task_id = format!("{key}/{container}");
                }
                c.runtime = if ns.is_some() { "containerd" } else { "cri-o" };
                if c.state != State::Stopped {
                    *pods.entry(key.clone()).or_default() += 1;
                }
                pod = Some(key);
            }
            None => {
                if let Some(ns) = ns {
                    if !origin.annotated {
                        c.task_id = format!("{ns}/{}", c.id);
                    } else if ns != CRI_NAMESPACE {
                        c.task_id = format!("{ns}/{}", c.task_id);
                    }
                    c.runtime = "containerd";
                    c.name = a.get("nerdctl/name").cloned();
                }
            }
        }
        pod_of.push(pod);
    }
    for (c, pod) in all.iter_mut().zip(pod_of) {
        if let Some(p) = pod {
            if c.state != State::Stopped && pods.get(&p) == Some(&1) {
                c.name = Some(p);
            }
        }
    }
    for i in sandboxes.into_iter().rev() {
        all.remove(i);
    }
}

/// One container as containerd's API lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub namespace: String,
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Its task, if it has one: running (or paused, created), or stopped with this exit status.
    pub task: Option<TaskState>,
}

/// A containerd task's state, as far as listing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Live,
    Stopped(i32),
}

/// Every container of every namespace of the containerd on `socket`, with its labels (where nerdctl keeps a
/// container's name), through containerd's gRPC API.
pub async fn containers(socket: &Path, timeout: Duration) -> Result<Vec<Listed>, EngineError> {
    match tokio::time::timeout(timeout, ask(socket)).await {
        Ok(r) => r,
        Err(_) => Err(EngineError::Timeout(socket.into(), timeout)),
    }
}

async fn ask(socket: &Path) -> Result<Vec<Listed>, EngineError> {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::namespaces_client::NamespacesClient;
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::{ListContainersRequest, ListNamespacesRequest, ListTasksRequest};
    use containerd_client::tonic::{metadata::MetadataValue, Request};
    let http = |e: &dyn std::fmt::Display| EngineError::Http(socket.into(), e.to_string());
    let channel = containerd_client::connect(socket).await.map_err(|e| http(&e))?;
    let namespaces = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|e| http(&e))?
        .into_inner()
        .namespaces;
    let mut out = Vec::new();
    let mut client = ContainersClient::new(channel.clone());
    let mut tasks = TasksClient::new(channel);
    for ns in namespaces {
        // containerd scopes every call to the namespace named in this header.
        let Ok(value) = MetadataValue::try_from(ns.name.as_str()) else { continue };
        let mut req = Request::new(ListContainersRequest::default());
        req.metadata_mut().insert("containerd-namespace", value.clone());
        let listed = client.list(req).await.map_err(|e| http(&e))?.into_inner().containers;
        let mut req = Request::new(ListTasksRequest::default());
        req.metadata_mut().insert("containerd-namespace", value);
        let tasks: HashMap<String, TaskState> = tasks
            .list(req)
            .await
            .map_err(|e| http(&e))?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| {
                // `STOPPED` in containerd's task status enum; its exit status is a u32 of the wait status' code.
                let state = if t.status == containerd_client::types::v1::Status::Stopped as i32 {
                    TaskState::Stopped(i32::try_from(t.exit_status).unwrap_or(i32::MAX))
                } else {
                    TaskState::Live
                };
                (t.id, state)
            })
            .collect();
        out.extend(listed.into_iter().map(|c| Listed {
            task: tasks.get(&c.id).copied(),
            namespace: ns.name.clone(),
            id: c.id,
            labels: c.labels,
        }));
    }
    Ok(out)
}

/// Adds what containerd's API (on `socket`) knows (nerdctl's name, Compose's labels, a stopped task's exit status)
/// to its containers found in the state roots, matched by namespace and id; names already given by the CRI
/// annotations stay. Containers without a task (`ctr run` deletes it when the process ends) are added as stopped
/// tasks: the debug sandbox gets their files from containerd. Docker's (namespace `moby`) and the CRI's (labelled
/// `io.cri-containerd.kind` in [`CRI_NAMESPACE`]; that label elsewhere hides nothing) are left to Docker and to
/// the pods' listing.
pub fn merge(all: &mut Vec<Container>, listed: Vec<Listed>, socket: &Path) {
    let mut by_key: HashMap<(String, String), Listed> =
        listed.into_iter().map(|l| ((l.namespace.clone(), l.id.clone()), l)).collect();
    for c in all.iter_mut() {
        let Some(ns) = namespace(&c.bundle) else { continue };
        let Some(l) = by_key.remove(&(ns.to_string(), c.id.clone())) else { continue };
        if c.name.is_none() {
            c.name = l.labels.get("nerdctl/name").cloned();
        }
        c.service = c.service.take().or_else(|| l.labels.get("com.docker.compose.service").cloned());
        c.project = c.project.take().or_else(|| l.labels.get("com.docker.compose.project").cloned());
        if let (State::Stopped, Some(TaskState::Stopped(code))) = (c.state, l.task) {
            c.exit_code = Some(code);
        }
        if ns != DOCKER_NAMESPACE {
            c.engine = Some(Engine::Containerd { socket: socket.into(), namespace: ns.to_string() });
        }
    }
    let mut rest: Vec<Listed> = by_key
        .into_values()
        .filter(|l| l.namespace != DOCKER_NAMESPACE)
        .filter(|l| !(l.namespace == CRI_NAMESPACE && l.labels.contains_key("io.cri-containerd.kind")))
        .filter(|l| !matches!(l.task, Some(TaskState::Live)))
        .collect();
    rest.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    for l in rest {
        all.push(Container {
            task_id: format!("{}/{}", l.namespace, l.id),
            name: l.labels.get("nerdctl/name").cloned(),
            service: l.labels.get("com.docker.compose.service").cloned(),
            project: l.labels.get("com.docker.compose.project").cloned(),
            exit_code: match l.task {
                Some(TaskState::Stopped(code)) => Some(code),
                _ => None,
            },
            runtime: "containerd",
            state: State::Stopped,
            engine: Some(Engine::Containerd { socket: socket.into(), namespace: l.namespace }),
            id: l.id,
            ..Container::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn cri(kind: &str, pod: &str, name: &str) -> HashMap<String, String> {
        ann(&[
            ("io.kubernetes.cri.container-type", kind),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-name", pod),
            ("io.kubernetes.cri.container-name", name),
        ])
    }

    fn task(ns: &str, id: &str) -> Container {
        Container {
            id: id.into(),
            task_id: id.into(),
            bundle: format!("/run/containerd/{V2_TASKS}/{ns}/{id}").into(),
            runtime: "runc",
            state: State::Running,
            ..Container::default()
        }
    }

    /// A runc container whose bundle containerd did not make (runc itself, CRI-O, podman).
    fn bare(id: &str) -> Container {
        Container { bundle: format!("/srv/bundles/{id}").into(), ..task("x", id) }
    }

    fn crio(kind: &str, pod: &str, name: &str) -> HashMap<String, String> {
        ann(&[
            ("io.kubernetes.container.name", name),
            ("io.kubernetes.pod.name", pod),
            ("io.kubernetes.pod.namespace", "data"),
            ("io.kubernetes.cri-o.ContainerType", kind),
        ])
    }

    /// (container id, task id, name, runtime) of each container `name_all` leaves.
    fn named(
        mut all: Vec<Container>,
        annotations: impl Fn(&Path) -> HashMap<String, String>,
        origins: &[Origin],
    ) -> Vec<(String, String, Option<String>, &'static str)> {
        name_all(&mut all, annotations, origins);
        all.into_iter().map(|c| (c.id, c.task_id, c.name, c.runtime)).collect()
    }

    fn row(
        id: &str,
        task: &str,
        name: Option<&str>,
        runtime: &'static str,
    ) -> (String, String, Option<String>, &'static str) {
        (id.into(), task.into(), name.map(String::from), runtime)
    }

    #[test]
    fn namespaces_pods_and_sandboxes() {
        let all = vec![
            task("default", "plain"),
            task("default", "nerd"),
            task("moby", "7fee"),
            task("k8s.io", "pause1"),
            task("k8s.io", "solo"),
            task("k8s.io", "pause2"),
            task("k8s.io", "front"),
            task("k8s.io", "sidecar"),
            bare("crio"),
            bare("crio-pause"),
            bare("bare"),
        ];
        let annotations = |b: &Path| match b.file_name().and_then(|n| n.to_str()) {
            Some("nerd") => ann(&[("nerdctl/name", "web")]),
            Some("pause1") | Some("pause2") => cri("sandbox", "x", ""),
            Some("solo") => cri("container", "checkout-7d9f", "app"),
            Some("front") => cri("container", "cart-55aa", "front"),
            Some("sidecar") => cri("container", "cart-55aa", "envoy"),
            Some("crio") => crio("container", "db-0", "db"),
            Some("crio-pause") => crio("sandbox", "db-0", "POD"),
            _ => HashMap::new(),
        };
        // The two CRI-O containers come from a CRI-O root.
        let mut origins = vec![Origin::default(); all.len()];
        origins[8].cri_o = true;
        origins[9].cri_o = true;
        assert_eq!(
            named(all, annotations, &origins),
            [
                row("plain", "default/plain", None, "containerd"),
                row("nerd", "default/nerd", Some("web"), "containerd"),
                row("7fee", "7fee", None, "runc"),
                row("solo", "shop/checkout-7d9f/app", Some("shop/checkout-7d9f"), "containerd"),
                row("front", "shop/cart-55aa/front", None, "containerd"),
                row("sidecar", "shop/cart-55aa/envoy", None, "containerd"),
                row("crio", "data/db-0/db", Some("data/db-0"), "cri-o"),
                row("bare", "bare", None, "runc"),
            ]
        );
    }

    /// Anyone who may create a container in some containerd namespace writes its annotations (`ctr -n dev run
    /// --annotation ...`), and anyone who starts a runc container outside CRI-O's root writes CRI-O's: neither
    /// takes a pod's name, makes a pod's name ambiguous, or hides as a sandbox.
    #[test]
    fn kubernetes_annotations_outside_the_cri_namespace_and_cri_o_roots_are_not_believed() {
        let all = vec![
            task("k8s.io", "real"),
            task("dev", "spoof"),
            task("dev", "hidden"),
            task("dev", "crio-in-ctd"),
            task("k8s.io", "crio-in-cri"),
            bare("crio-elsewhere"),
            bare("crio-pause-elsewhere"),
        ];
        let annotations = |b: &Path| match b.file_name().and_then(|n| n.to_str()) {
            Some("real") | Some("spoof") => cri("container", "payments-abc", "app"),
            Some("hidden") => cri("sandbox", "payments-abc", ""),
            Some("crio-pause-elsewhere") => crio("sandbox", "db-0", "POD"),
            _ => crio("container", "db-0", "db"),
        };
        // Even a CRI-O root does not make CRI-O's annotations on a containerd bundle believed.
        let origins = [Origin { annotated: false, cri_o: true }; 7];
        let mut origins = origins.to_vec();
        origins[5].cri_o = false;
        origins[6].cri_o = false;
        assert_eq!(
            named(all, annotations, &origins),
            [
                row("real", "shop/payments-abc/app", Some("shop/payments-abc"), "containerd"),
                row("spoof", "dev/spoof", None, "containerd"),
                row("hidden", "dev/hidden", None, "containerd"),
                row("crio-in-ctd", "dev/crio-in-ctd", None, "containerd"),
                row("crio-in-cri", "k8s.io/crio-in-cri", None, "containerd"),
                row("crio-elsewhere", "crio-elsewhere", None, "runc"),
                row("crio-pause-elsewhere", "crio-pause-elsewhere", None, "runc"),
            ]
        );
    }

    /// A `task_id_annotation` names a containerd container within its namespace, except in the CRI's, where only
    /// the CRI creates containers; runc's, crun's and CRI-O's have no namespace and keep the value as it is.
    #[test]
    fn annotated_task_ids_keep_their_containerd_namespace() {
        let with_value = |mut c: Container, v: &str| {
            c.task_id = v.into();
            c
        };
        let all = vec![
            with_value(task("dev", "a"), "prod/web"),
            with_value(task("dev", "b"), "web"),
            with_value(task("k8s.io", "pod"), "checkout"),
            with_value(task("k8s.io", "c"), "cri-web"),
            with_value(task("moby", "7fee"), "docker-web"),
            with_value(bare("r"), "runc-web"),
            with_value(bare("crio"), "crio-web"),
            task("dev", "plain"),
        ];
        let annotations = |b: &Path| match b.file_name().and_then(|n| n.to_str()) {
            Some("pod") => cri("container", "checkout-7d9f", "app"),
            Some("crio") => crio("container", "db-0", "db"),
            _ => HashMap::new(),
        };
        let mut origins = vec![Origin { annotated: true, cri_o: false }; 8];
        origins[6].cri_o = true;
        origins[7].annotated = false;
        assert_eq!(
            named(all, annotations, &origins),
            [
                row("a", "dev/prod/web", None, "containerd"),
                row("b", "dev/web", None, "containerd"),
                row("pod", "checkout", Some("shop/checkout-7d9f"), "containerd"),
                row("c", "cri-web", None, "containerd"),
                row("7fee", "docker-web", None, "runc"),
                row("r", "runc-web", None, "runc"),
                row("crio", "crio-web", Some("data/db-0"), "cri-o"),
                row("plain", "dev/plain", None, "containerd"),
            ]
        );
    }

    #[test]
    fn labels_from_the_api_name_containers_of_the_same_namespace_and_id() {
        let c = |ns: &str, id: &str| Container {
            id: id.into(),
            task_id: format!("{ns}/{id}"),
            bundle: format!("/run/containerd/{V2_TASKS}/{ns}/{id}").into(),
            ..Container::default()
        };
        let mut all = vec![c("default", "a"), c("other", "a"), c("default", "b")];
        all[2].name = Some("shop/pod".into());
        let labels = |name: &str| {
            ann(&[("nerdctl/name", name), ("com.docker.compose.service", "web"), ("com.docker.compose.project", "p")])
        };
        let live = Some(TaskState::Live);
        let listed = vec![
            Listed { namespace: "default".into(), id: "a".into(), labels: labels("web-1"), task: live },
            Listed { namespace: "default".into(), id: "b".into(), labels: labels("ignored"), task: live },
            // No task: `ctr run` deleted it when the process ended. Stopped with a status: `ctr run -d`.
            Listed { namespace: "default".into(), id: "gone".into(), labels: labels("old"), task: None },
            Listed { namespace: "x".into(), id: "dead".into(), labels: labels("d"), task: Some(TaskState::Stopped(3)) },
            // Docker's, the CRI's and running ones outside the state roots are not added.
            Listed { namespace: "moby".into(), id: "m".into(), labels: HashMap::new(), task: None },
            Listed {
                namespace: "k8s.io".into(),
                id: "p".into(),
                labels: ann(&[("io.cri-containerd.kind", "sandbox")]),
                task: None,
            },
            // The CRI's label outside the CRI's namespace hides nothing.
            Listed {
                namespace: "x".into(),
                id: "fake-cri".into(),
                labels: ann(&[("io.cri-containerd.kind", "sandbox")]),
                task: None,
            },
            Listed { namespace: "default".into(), id: "elsewhere".into(), labels: HashMap::new(), task: live },
        ];
        merge(&mut all, listed, Path::new("/run/c.sock"));
        let got: Vec<_> = all.iter().map(|c| (c.name.as_deref(), c.service.as_deref())).collect();
        assert_eq!(
            got,
            [
                (Some("web-1"), Some("web")),
                (None, None),
                (Some("shop/pod"), Some("web")),
                (Some("old"), Some("web")),
                (Some("d"), Some("web")),
                (None, None)
            ]
        );
        let added: Vec<_> = all[3..].iter().map(|c| (c.task_id.as_str(), c.state, c.exit_code)).collect();
        assert_eq!(
            added,
            [
                ("default/gone", State::Stopped, None),
                ("x/dead", State::Stopped, Some(3)),
                ("x/fake-cri", State::Stopped, None)
            ]
        );
        assert_eq!(all[4].engine, Some(Engine::Containerd { socket: "/run/c.sock".into(), namespace: "x".into() }));
    }
}
