//! Steps 3 and 4 of an exec request: resolve the task to its container, then check the ACL against what it
//! resolved to. A caller with no grant on the name learns nothing about whether it exists.

use crate::api::parse::ExecParams;
use crate::api::Refusal;
use crate::runtime::{Container, RuntimeError};
use dcos_exec_access::acl::{Acl, Principal, Target};
use dcos_exec_access::auth::Claims;
use dcos_exec_access::judge::Refused;
use dcos_exec_images::reference::ImageRef;
use dcos_exec_proto::ErrorCode;

pub use dcos_exec_access::judge::Denied;

/// A `--cap-add` capability that is not on the agent's `cap_add_allowed` list (the others amount to root on the
/// host). Decided by the agent's configuration, before the ACL.
#[derive(Debug, thiserror::Error)]
#[error("--cap-add {cap} is not allowed by this agent (cap_add_allowed: {allowed})")]
pub struct CapNotAllowed {
    pub cap: String,
    pub allowed: String,
}

impl CapNotAllowed {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Forbidden
    }
}

/// Checks `--cap-add` against the allowlist (capability names, with or without `CAP_`).
pub fn cap_add(p: &ExecParams, allowed: &[String]) -> Result<(), CapNotAllowed> {
    use dcos_exec_container::caps;
    let ok = caps::parse_names(allowed).unwrap_or_default();
    match p.cap_add.iter().find(|c| !ok.contains(c)) {
        None => Ok(()),
        Some(c) => Err(CapNotAllowed {
            cap: caps::name(*c),
            allowed: ok.iter().map(|c| caps::name(*c)).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// A `--cap-add` capability that reaches the host through a namespace the container shares with it: with the
/// host's pid namespace `SYS_PTRACE` opens `/proc/PID/root` and the memory of every process of the host (the
/// agent's included); with the host's network namespace `NET_ADMIN` and `NET_RAW` administer and sniff the host's
/// network. Allowed on other containers: there they reach only the container.
#[derive(Debug, thiserror::Error)]
#[error(
    "--cap-add {cap} is refused on this container: it shares the host's {namespace} namespace, where {cap} would \
     reach the host itself"
)]
pub struct CapReachesHost {
    pub cap: String,
    pub namespace: &'static str,
}

impl CapReachesHost {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Forbidden
    }
}

/// Capabilities that act on every object of one namespace, and that namespace.
const CAPS_BY_NAMESPACE: [(u32, &str); 3] = [(19, "pid"), (12, "net"), (13, "net")];

/// Whether the running init `pid` is in this agent's own `kind` namespace, and in its user namespace (a
/// capability given in a user namespace of the container's own does not act on the host's objects). A namespace
/// that cannot be read counts as shared: the check then refuses rather than guesses.
fn shares_host_namespace(pid: i32, kind: &str) -> bool {
    let same = |k: &str| match (
        std::fs::metadata(format!("/proc/{pid}/ns/{k}")),
        std::fs::metadata(format!("/proc/self/ns/{k}")),
    ) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        }
        _ => true,
    };
    same("user") && same(kind)
}

/// Checks `--cap-add` against the namespaces the resolved container shares with the host (the helper gives the
/// capabilities in the container's namespaces; a stopped container's sandbox has fresh ones).
pub fn cap_add_on(p: &ExecParams, c: &Container) -> Result<(), CapReachesHost> {
    use dcos_exec_container::caps;
    if c.state == crate::runtime::State::Stopped {
        return Ok(());
    }
    for cap in &p.cap_add {
        if let Some((_, ns)) = CAPS_BY_NAMESPACE.iter().find(|(n, _)| n == cap) {
            if shares_host_namespace(c.pid, ns) {
                return Err(CapReachesHost { cap: caps::name(*cap), namespace: ns });
            }
        }
    }
    Ok(())
}

/// Why a debug image cannot be judged or used. No message names anything but the path as the user wrote it
/// (lexically normalised): what a path resolves to on the agent's host is not the user's to learn.
#[derive(Debug, thiserror::Error)]
pub enum ImageRefusal {
    #[error("--debug-image: OCI layout path {0} must be absolute")]
    RelativeLayout(String),
    #[error("--debug-image: OCI layout path {0} is under /proc, /sys or /dev")]
    SystemLayout(String),
    /// Told only to those the ACL allows the image.
    #[error("{0}: the path goes through a symlink; name the layout's real directory")]
    NotRealLayout(String),
    /// Told only to those the ACL allows the image.
    #[error("{0}")]
    Layout(String),
}

impl ImageRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageRefusal::RelativeLayout(_) | ImageRefusal::SystemLayout(_) => ErrorCode::BadRequest,
            ImageRefusal::NotRealLayout(_) => ErrorCode::Forbidden,
            ImageRefusal::Layout(_) => ErrorCode::ImageFailed,
        }
    }
}

/// Puts the debug image in the form that the ACL judges, from its text alone, before anything on disk is
/// touched: an `oci:` path must be absolute, is put in lexical normal form (no `.`, `..` or `//`), and may not be
/// under `/proc`, `/sys` or `/dev` (where paths like `/proc/self/cwd` lead to whatever the agent's host has).
/// The layout is opened only once the ACL allowed it ([`open_layout`]).
pub fn judge_image(p: &mut ExecParams) -> Result<(), ImageRefusal> {
    let Some(r @ ImageRef::Layout { path, .. }) = &p.image else { return Ok(()) };
    if !path.is_absolute() {
        return Err(ImageRefusal::RelativeLayout(path.display().to_string()));
    }
    let normal = r.lexically_normal();
    if let ImageRef::Layout { path, .. } = &normal {
        if ["/proc", "/sys", "/dev"].iter().any(|d| path.starts_with(d)) {
            return Err(ImageRefusal::SystemLayout(path.display().to_string()));
        }
    }
    p.image = Some(normal);
    Ok(())
}

/// Opens the `oci:` layout the ACL allowed (see [`judge_image`]), once: it is read through that handle
/// afterwards, so a path swapped after this point changes nothing. A layout whose real path is not the one
/// judged (a symlink on the way) is refused rather than judged again by where it leads.
pub fn open_layout(p: &mut ExecParams) -> Result<(), ImageRefusal> {
    let Some(r @ ImageRef::Layout { path, .. }) = &p.image else { return Ok(()) };
    let judged = r.to_string();
    let opened = r.open_layout().map_err(|e| {
        // The system's words only: an error of our own may carry the resolved path.
        let why = match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
            None => e.kind().to_string(),
        };
        ImageRefusal::Layout(format!("{judged}: {why}"))
    })?;
    match &opened {
        ImageRef::Layout { path: real, .. } if real == path => {
            p.image = Some(opened);
            Ok(())
        }
        _ => Err(ImageRefusal::NotRealLayout(judged)),
    }
}

/// Every name the ACL judges a resolved container by.
pub fn target(c: &Container) -> Target<'_> {
    Target {
        task_id: &c.task_id,
        container_id: &c.id,
        name: c.name.as_deref().map(|n| n.trim_start_matches('/')),
        name_unknown: c.name_unknown,
    }
}

/// Whether a debug session on a stopped container may write to the container's files (ACL action
/// `debug:write`, for the request's image). Without it the sandbox mounts them read-only.
pub fn may_write(acl: &Acl, claims: &Claims, p: &ExecParams, c: &Container) -> bool {
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let image = p.image.as_ref().map(|r| r.to_string());
    image.is_some() && acl.allows_target(&who, &target(c), "debug:write", image.as_deref())
}

/// Resolves the task among the containers the caller may run this request's main action on, then authorizes
/// the whole request on the container it resolved to (see [`dcos_exec_access::judge::exec`]).
pub fn exec(
    acl: &Acl,
    resolve: impl FnOnce(&str, &dyn Fn(&Container) -> bool) -> Result<Container, RuntimeError>,
    claims: &Claims,
    p: &ExecParams,
) -> Result<Container, Refusal> {
    dcos_exec_access::judge::exec(acl, target, resolve, claims, p).map_err(|r| match r {
        Refused::Denied(d) => d.into(),
        Refused::Resolve(e) => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::State;
    use dcos_exec_access::judge::actions;
    use dcos_exec_proto::ExecRequest;

    const ACL: &str = r#"
[[rule]]
subjects = ["user:alice"]
tasks = ["web-*"]
actions = ["exec"]

[[rule]]
subjects = ["user:sre"]
tasks = ["*"]
actions = ["*"]

[[rule]]
effect = "deny"
subjects = ["user:sre"]
tasks = ["web-*"]
actions = ["exec:tty"]
"#;

    fn claims(user: &str) -> Claims {
        Claims { sub: user.into(), groups: vec![], iss: "i".into(), aud: "a".into(), iat: 0, nbf: 0, exp: 0 }
    }

    fn params(task: &str, req: serde_json::Value) -> ExecParams {
        let request: ExecRequest = serde_json::from_value(req).unwrap();
        ExecParams {
            task: task.into(),
            cap_add: dcos_exec_container::caps::parse_names(&request.cap_add).unwrap_or_default(),
            request,
            image: None,
            pull_policy: Default::default(),
            ws_key: http::HeaderValue::from_static("k"),
        }
    }

    #[test]
    fn cap_add_outside_the_allowlist_is_refused_before_the_acl() {
        let allowed = ["SYS_PTRACE".to_string(), "NET_ADMIN".into(), "NET_RAW".into()];
        let ok = params("t", serde_json::json!({"command": ["sh"], "cap_add": ["sys_ptrace"]}));
        assert!(cap_add(&ok, &allowed).is_ok());
        for host_root in ["SYS_ADMIN", "MKNOD", "DAC_READ_SEARCH", "SYS_MODULE"] {
            let p = params("t", serde_json::json!({"command": ["sh"], "cap_add": ["SYS_PTRACE", host_root]}));
            let e = cap_add(&p, &allowed).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Forbidden);
            let msg = e.to_string();
            assert!(msg.contains(host_root) && msg.contains("SYS_PTRACE, NET_ADMIN, NET_RAW"), "{msg}");
        }
    }

    /// One container, task `web-1`, container `c0ffee`, Docker name `/front`, found the way the agent does.
    fn web1(name: &str, visible: &dyn Fn(&Container) -> bool) -> Result<Container, RuntimeError> {
        let c = Container {
            id: "c0ffee".into(),
            task_id: "web-1".into(),
            name: Some("/front".into()),
            runtime: "runc",
            pid: 1,
            start_time: 1,
            bundle: "/nonexistent".into(),
            state: State::Running,
            ..Container::default()
        };
        let all: Vec<Container> = [c].into_iter().filter(|c| visible(c)).collect();
        match crate::runtime::names::pick(&all, name) {
            crate::runtime::names::Pick::One(i) => Ok(all[i].clone()),
            _ => Err(RuntimeError::NotFound(name.into())),
        }
    }

    #[test]
    fn actions_follow_the_request() {
        let r: ExecRequest = serde_json::from_value(
            serde_json::json!({"command": ["sh"], "stdin": true, "tty": true, "user": "0", "cap_add": ["X"]}),
        )
        .unwrap();
        assert_eq!(actions(&r, true), ["debug", "debug:caps", "exec:stdin", "exec:tty", "exec:user"]);
        assert_eq!(actions(&ExecRequest { command: vec!["sh".into()], ..Default::default() }, false), ["exec"]);
    }

    #[test]
    fn refusals_name_the_action_and_hide_missing_tasks() {
        let acl = Acl::parse(ACL).unwrap();
        let sh = serde_json::json!({"command": ["sh"]});
        assert_eq!(exec(&acl, web1, &claims("alice"), &params("web-1", sh.clone())).unwrap().id, "c0ffee");
        let r =
            exec(&acl, web1, &claims("alice"), &params("web-1", serde_json::json!({"command": ["sh"], "tty": true})))
                .unwrap_err();
        assert_eq!(r.code, ErrorCode::Forbidden);
        assert_eq!(r.message, r#"user "alice" may not exec:tty on task "web-1""#);
        // No grant on the name: forbidden, whether or not it exists.
        assert_eq!(
            exec(&acl, web1, &claims("alice"), &params("db-9", sh.clone())).unwrap_err().code,
            ErrorCode::Forbidden
        );
        // A grant on the name: the truth.
        assert_eq!(
            exec(&acl, web1, &claims("alice"), &params("web-9", sh.clone())).unwrap_err().code,
            ErrorCode::TaskNotFound
        );
        // A deny rule on the task id holds when the container is named by its id.
        let tty = serde_json::json!({"command": ["sh"], "tty": true});
        assert!(exec(&acl, web1, &claims("sre"), &params("c0ffee", sh)).is_ok());
        assert_eq!(
            exec(&acl, web1, &claims("sre"), &params("c0ffee", tty.clone())).unwrap_err().code,
            ErrorCode::Forbidden
        );
        // ... and when it is named by its runtime name, a prefix or a substring of any of them.
        for name in ["front", "/front", "fro", "c0f", "eb-"] {
            assert_eq!(
                exec(&acl, web1, &claims("sre"), &params(name, tty.clone())).unwrap_err().code,
                ErrorCode::Forbidden,
                "{name}"
            );
        }
    }

    #[test]
    fn a_deny_on_the_name_holds_through_the_id_and_the_task_id() {
        let acl = Acl::parse(
            "[[rule]]\nsubjects=['*']\ntasks=['**']\nactions=['exec']\n\n\
             [[rule]]\neffect='deny'\nsubjects=['user:bob']\ntasks=['front']\nactions=['exec']\n",
        )
        .unwrap();
        let sh = serde_json::json!({"command": ["sh"]});
        for name in ["front", "/front", "c0ffee", "c0f", "web-1", "web"] {
            assert_eq!(exec(&acl, web1, &claims("ann"), &params(name, sh.clone())).unwrap().id, "c0ffee", "{name}");
            let e = exec(&acl, web1, &claims("bob"), &params(name, sh.clone())).unwrap_err();
            assert!(matches!(e.code, ErrorCode::Forbidden | ErrorCode::TaskNotFound), "{name}: {e:?}");
        }
        // While Docker does not answer the name is unknown: bob's deny could be about it, so it holds; ann,
        // with no deny rule, is not affected.
        let unnamed =
            |t: &str, v: &dyn Fn(&Container) -> bool| {
                web1(t, &|c: &Container| v(&Container { name: None, name_unknown: true, ..c.clone() }))
                    .map(|c| Container { name: None, name_unknown: true, ..c })
            };
        for name in ["c0ffee", "web-1"] {
            assert_eq!(exec(&acl, unnamed, &claims("ann"), &params(name, sh.clone())).unwrap().id, "c0ffee");
            assert!(exec(&acl, unnamed, &claims("bob"), &params(name, sh.clone())).is_err(), "{name}");
        }
        // An allow rule written for the runtime name grants it.
        let by_name = Acl::parse("[[rule]]\nsubjects=['*']\ntasks=['front']\nactions=['exec']\n").unwrap();
        assert_eq!(exec(&by_name, web1, &claims("ann"), &params("c0f", sh)).unwrap().id, "c0ffee");
    }

    /// The spellings of a path into a denied directory that once slipped past the ACL, on real directories: each
    /// is judged by its text, and one that resolves elsewhere is refused when opened, without naming where.
    #[test]
    fn oci_layouts_are_judged_by_their_lexical_path_and_must_be_real() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = std::fs::canonicalize(tmp.path()).unwrap().join("srv");
        for d in ["corpus/good-busybox", "extra/x", "tools/gdb"] {
            std::fs::create_dir_all(srv.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(srv.join("extra/x"), srv.join("corpus/good-link")).unwrap();
        let s = srv.display();
        let acl = Acl::parse(&format!(
            "[[rule]]\nsubjects=['*']\ntasks=['*']\nactions=['debug']\nimages=['oci:{s}/corpus/good-*', 'oci:{s}/extra/*']\n\n\
             [[rule]]\neffect='deny'\nsubjects=['*']\ntasks=['*']\nactions=['debug']\nimages=['oci:{s}/extra/*']\n"
        ))
        .unwrap();
        let who = Principal { user: "u", groups: &[] };
        let judge = |spelling: &str| {
            let mut p = params("t", serde_json::json!({"command": ["sh"]}));
            p.image = Some(ImageRef::parse(spelling).unwrap());
            judge_image(&mut p).unwrap();
            let r = p.image.clone().unwrap();
            let allowed = acl.allows_container(&who, "t", "t", "debug", Some(&r.to_string()));
            (allowed, r.to_string(), allowed.then(|| open_layout(&mut p)))
        };
        for spelling in [
            format!("oci:{s}//extra/x"),
            format!("oci:{s}/./extra/x"),
            format!("oci:{s}/corpus/../extra/x"),
            format!("oci:{s}/corpus/good-busybox/../../extra/x"),
            format!("oci:{s}/extra/x"),
        ] {
            let (allowed, judged, _) = judge(&spelling);
            assert!(!allowed, "{spelling} was allowed as {judged}");
            assert_eq!(judged, format!("oci:{s}/extra/x"), "{spelling}");
        }
        // Allowed by its text, a symlink into the denied directory: refused, naming only what was written.
        let (allowed, judged, opened) = judge(&format!("oci:{s}/corpus/good-link"));
        let err = opened.unwrap().unwrap_err();
        assert!(allowed && judged == format!("oci:{s}/corpus/good-link"));
        assert_eq!(err.code(), ErrorCode::Forbidden);
        assert!(!err.to_string().contains("extra"), "{err}");
        let (allowed, judged, opened) = judge(&format!("oci:{s}/corpus/good-busybox:v1"));
        assert!(allowed && judged == format!("oci:{s}/corpus/good-busybox:v1"), "{judged}");
        assert!(opened.unwrap().is_ok());
        // A path that does not exist fails only once allowed.
        let (allowed, _, opened) = judge(&format!("oci:{s}/corpus/good-gone"));
        let err = opened.unwrap().unwrap_err();
        assert!(allowed && err.code() == ErrorCode::ImageFailed && err.to_string().contains("No such file"), "{err}");
        for (spelling, code) in [
            ("oci:srv/x", ErrorCode::BadRequest),
            ("oci:/proc/self/cwd", ErrorCode::BadRequest),
            ("oci:/tmp/x/../../proc/1/root", ErrorCode::BadRequest),
            ("oci:/sys/fs", ErrorCode::BadRequest),
            ("oci:/dev/shm/x", ErrorCode::BadRequest),
        ] {
            let mut p = params("t", serde_json::json!({"command": ["sh"]}));
            p.image = Some(ImageRef::parse(spelling).unwrap());
            assert_eq!(judge_image(&mut p).unwrap_err().code(), code, "{spelling}");
        }
    }
}
