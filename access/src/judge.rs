//! Which ACL actions a request needs, and the judgement of a request on the task it resolves to. The agent
//! resolves among its containers and the gateway among the directory's tasks; both judge with this code, so a
//! request refused at one hop is refused at the other.

use crate::acl::{Acl, Principal, Target};
use crate::auth::Claims;
use crate::request::ExecParams;
use dcos_exec_proto::{ErrorCode, ExecRequest};

/// The ACL does not grant `action`.
#[derive(Debug, thiserror::Error)]
#[error("user {user:?} may not {} on task {task:?}", self.what())]
pub struct Denied {
    pub user: String,
    pub action: String,
    /// The image, for the `debug` actions.
    pub image: Option<String>,
    pub task: String,
}

impl Denied {
    fn what(&self) -> String {
        match (&self.image, self.action.starts_with("debug")) {
            (Some(i), true) => format!("{} with image {i}", self.action),
            _ => self.action.clone(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        ErrorCode::Forbidden
    }
}

/// Every ACL action a request needs. A debug session needs `debug` for its image instead of `exec`; the
/// stdin, tty and user modifiers are the same for both.
pub fn actions(r: &ExecRequest, debug: bool) -> Vec<&'static str> {
    let mut actions = vec![if debug { "debug" } else { "exec" }];
    if !r.cap_add.is_empty() {
        actions.push("debug:caps");
    }
    if r.stdin {
        actions.push("exec:stdin");
    }
    if r.tty {
        actions.push("exec:tty");
    }
    if r.user.is_some() {
        actions.push("exec:user");
    }
    actions
}

/// The first action of `p` that the ACL refuses `who` on this target, as a refusal.
pub fn check(acl: &Acl, who: &Principal<'_>, p: &ExecParams, t: &Target<'_>) -> Result<(), Denied> {
    let image = p.image.as_ref().map(|r| r.to_string());
    match actions(&p.request, image.is_some()).into_iter().find(|a| !acl.allows_target(who, t, a, image.as_deref())) {
        None => Ok(()),
        Some(a) => Err(Denied { user: who.user.to_string(), action: a.into(), image, task: p.task.clone() }),
    }
}

/// Why [`exec`] refused: the ACL, or the resolution (not found, ambiguous, ...).
#[derive(Debug)]
pub enum Refused<E> {
    Denied(Denied),
    Resolve(E),
}

/// Resolves the task among the tasks the caller may run this request's main action on (`exec`, or `debug`
/// with its image), then authorizes the whole request on the task it resolved to: a container id or a name
/// must not dodge a deny rule written for another of its names, and tasks the caller may not use neither
/// match a prefix nor make one ambiguous (nor show up in the list of candidates). Whether a task exists is
/// told only to those with a grant on the name they typed.
pub fn exec<T, E>(
    acl: &Acl,
    target: impl for<'a> Fn(&'a T) -> Target<'a>,
    resolve: impl FnOnce(&str, &dyn Fn(&T) -> bool) -> Result<T, E>,
    claims: &Claims,
    p: &ExecParams,
) -> Result<T, Refused<E>> {
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let image = p.image.as_ref().map(|r| r.to_string());
    let main = if image.is_some() { "debug" } else { "exec" };
    let visible = |c: &T| acl.allows_target(&who, &target(c), main, image.as_deref());
    match resolve(&p.task, &visible) {
        Ok(c) => {
            check(acl, &who, p, &target(&c)).map_err(Refused::Denied)?;
            Ok(c)
        }
        Err(e) => {
            let named = Target { task_id: &p.task, container_id: &p.task, name: None, name_unknown: false };
            check(acl, &who, p, &named).map_err(Refused::Denied)?;
            Err(Refused::Resolve(e))
        }
    }
}
