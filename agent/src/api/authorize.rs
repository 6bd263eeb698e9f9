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

/// Why a debug image cannot be judged or used.
#[derive(Debug, thiserror::Error)]
pub enum ImageRefusal {
    #[error("--debug-image: OCI layout path {0} must be absolute")]
    RelativeLayout(String),
    /// Told only to those the ACL allows the image.
    #[error("{0}")]
    Layout(String),
}

impl ImageRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageRefusal::RelativeLayout(_) => ErrorCode::BadRequest,
            ImageRefusal::Layout(_) => ErrorCode::ImageFailed,
        }
    }
}

/// Puts the debug image in the form that the ACL judges and the pull uses. An `oci:` layout is opened here,
/// once: it is judged by the real path of the directory that was opened (absolute, no `.`, `..`, `//` or
/// symlinks) and read through that handle afterwards, so a path swapped after this point changes nothing. A
/// layout that cannot be opened is judged by its lexical normal form, and the reason comes back, to be told
/// only to those the ACL allows. A relative layout path names nothing the user chose: refused.
pub fn judge_image(p: &mut ExecParams) -> Result<Option<ImageRefusal>, ImageRefusal> {
    let Some(r @ ImageRef::Layout { path, .. }) = &p.image else { return Ok(None) };
    if !path.is_absolute() {
        return Err(ImageRefusal::RelativeLayout(path.display().to_string()));
    }
    let (judged, failure) = match r.open_layout() {
        Ok(opened) => (opened, None),
        Err(e) => {
            let normal = r.lexically_normal();
            let msg = format!("{normal}: {e}");
            (normal, Some(ImageRefusal::Layout(msg)))
        }
    };
    p.image = Some(judged);
    Ok(failure)
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

    /// The spellings of a path into a denied directory that once slipped past the ACL, on real directories.
    #[test]
    fn oci_layouts_are_judged_by_their_real_path() {
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
            let failure = judge_image(&mut p).unwrap();
            let r = p.image.unwrap();
            (acl.allows_container(&who, "t", "t", "debug", Some(&r.to_string())), r.to_string(), failure)
        };
        for spelling in [
            format!("oci:{s}//extra/x"),
            format!("oci:{s}/./extra/x"),
            format!("oci:{s}/corpus/../extra/x"),
            format!("oci:{s}/corpus/good-busybox/../../extra/x"),
            format!("oci:{s}/corpus/good-link"),
            format!("oci:{s}/extra/x"),
        ] {
            let (allowed, judged, failure) = judge(&spelling);
            assert!(!allowed, "{spelling} was allowed as {judged}");
            assert_eq!(judged, format!("oci:{s}/extra/x"), "{spelling}");
            assert!(failure.is_none());
        }
        let (allowed, judged, _) = judge(&format!("oci:{s}/corpus/good-busybox:v1"));
        assert!(allowed && judged == format!("oci:{s}/corpus/good-busybox:v1"), "{judged}");
        // A path that does not exist is judged by its lexical form and fails only once allowed.
        let (allowed, judged, failure) = judge(&format!("oci:{s}/corpus/good-gone/../../extra/y"));
        assert!(!allowed && judged == format!("oci:{s}/extra/y") && failure.is_some(), "{judged}");
        let (allowed, _, failure) = judge(&format!("oci:{s}/corpus/good-gone"));
        assert!(
            allowed
                && failure
                    .is_some_and(|f| f.code() == ErrorCode::ImageFailed && f.to_string().contains("No such file"))
        );
        let mut rel = params("t", serde_json::json!({"command": ["sh"]}));
        rel.image = Some(ImageRef::parse("oci:srv/x").unwrap());
        assert_eq!(judge_image(&mut rel).unwrap_err().code(), ErrorCode::BadRequest, "relative paths are refused");
    }
}
