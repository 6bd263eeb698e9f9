//! Access control: rules of subjects × task patterns × actions, deny by default, deny rules win.
//!
//! Task and image patterns are globs in which `*`, `?` and `[...]` never match `/`; `**` as a whole path
//! component matches any number of components. So `web-*` matches `web-1` but not `web-1/x`, and
//! `oci:/srv/tools/*` matches `oci:/srv/tools/gdb` but not `oci:/srv/tools/gdb/../../secret` (which is
//! canonicalized before matching anyway) nor `oci:/srv/tools/x/y`.

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;
use std::path::Path;

/// Actions a rule can grant.
pub const ACTIONS: &[&str] =
    &["list", "exec", "exec:stdin", "exec:tty", "exec:user", "debug", "debug:caps", "debug:write", "metrics"];

/// Errors loading an ACL file.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("ACL {path} is not valid: {cause}")]
    Parse { path: String, cause: toml::de::Error },
    #[error("ACL rule {rule}: {message}")]
    Rule { rule: usize, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default = "allow")]
    effect: String,
    subjects: Vec<String>,
    tasks: Vec<String>,
    actions: Vec<String>,
    /// Debug images (normalised references) the `debug` action is granted or denied for.
    #[serde(default)]
    images: Vec<String>,
}

/// A task or image pattern: `*` stays within one `/`-separated level.
fn pattern(p: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(p).literal_separator(true).build().map(|g| g.compile_matcher())
}

fn allow() -> String {
    "allow".into()
}

#[derive(Debug)]
enum Subject {
    Any,
    User(String),
    Group(String),
}

#[derive(Debug)]
struct Rule {
    deny: bool,
    subjects: Vec<Subject>,
    tasks: Vec<GlobMatcher>,
    actions: Vec<String>,
    images: Vec<GlobMatcher>,
}

/// A parsed ACL.
#[derive(Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// Who is asking.
pub struct Principal<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
}

/// What a rule's `tasks` patterns are matched against: every name of one resolved container.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub task_id: &'a str,
    pub container_id: &'a str,
    /// The runtime's name for it (Docker's container name, nerdctl's `nerdctl/name`), if any.
    pub name: Option<&'a str>,
    /// The container may have a name that could not be learnt (its engine did not answer): every deny rule
    /// for the subject and action applies, since one may have been written for that name.
    pub name_unknown: bool,
}

impl Acl {
    /// Loads and validates an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| AclError::Read { path: path.display().to_string(), cause })?;
        Acl::parse(&text).map_err(|e| match e {
            AclError::Parse { cause, .. } => AclError::Parse { path: path.display().to_string(), cause },
            other => other,
        })
    }

    /// Parses ACL TOML text.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let file: AclFile = toml::from_str(text).map_err(|cause| AclError::Parse { path: String::new(), cause })?;
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            let n = i + 1;
            let bad = |message: String| AclError::Rule { rule: n, message };
            let deny = match r.effect.as_str() {
                "allow" => false,
                "deny" => true,
                other => return Err(bad(format!("effect must be allow or deny, not {other:?}"))),
            };
            let subjects = r
                .subjects
                .iter()
                .map(|s| match s.split_once(':') {
                    _ if s == "*" => Ok(Subject::Any),
                    Some(("user", u)) if !u.is_empty() => Ok(Subject::User(u.into())),
                    Some(("group", g)) if !g.is_empty() => Ok(Subject::Group(g.into())),
                    _ => Err(bad(format!("subject {s:?} must be user:NAME, group:NAME or *"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tasks = r
                .tasks
                .iter()
                .map(|t| pattern(t).map_err(|e| bad(format!("task pattern {t:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            for a in &r.actions {
                if a != "*" && !ACTIONS.contains(&a.as_str()) {
                    return Err(bad(format!("unknown action {a:?} (known: *, {})", ACTIONS.join(", "))));
                }
            }
            if subjects.is_empty() || tasks.is_empty() || r.actions.is_empty() {
                return Err(bad("subjects, tasks and actions must not be empty".into()));
            }
            let images = r
                .images
                .iter()
                .map(|t| pattern(t).map_err(|e| bad(format!("image pattern {t:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule { deny, subjects, tasks, actions: r.actions, images });
        }
        Ok(Acl { rules })
    }

    /// True when some allow rule and no deny rule match `who` doing `action` on `task`.
    #[cfg(test)]
    fn allows(&self, who: &Principal<'_>, task: &str, action: &str) -> bool {
        self.allows_image(who, task, action, None)
    }

    /// Like [`Acl::allows`], for an action that concerns a debug image (normalised reference): an allow rule
    /// must list a matching pattern in `images`; a deny rule applies when it lists none or a matching one.
    #[cfg(test)]
    fn allows_image(&self, who: &Principal<'_>, task: &str, action: &str, image: Option<&str>) -> bool {
        self.allows_container(who, task, task, action, image)
    }

    /// True when an allow rule grants `who` the `action` on some tasks, and no deny rule takes it away on every
    /// task (`*` or `**`). For what concerns the host rather than one task (`GET /v1/runtimes`).
    pub fn grants_somewhere(&self, who: &Principal<'_>, action: &str) -> bool {
        let mut allowed = false;
        for r in &self.rules {
            let subject = r.subjects.iter().any(|s| match s {
                Subject::Any => true,
                Subject::User(u) => u == who.user,
                Subject::Group(g) => who.groups.iter().any(|x| x == g),
            });
            if !(subject && r.actions.iter().any(|a| a == "*" || a == action)) {
                continue;
            }
            if r.deny && r.tasks.iter().any(|m| matches!(m.glob().glob(), "*" | "**")) {
                return false;
            }
            allowed |= !r.deny && !r.tasks.is_empty();
        }
        allowed
    }

    /// The decision for a resolved container known only by its task id and container id.
    pub fn allows_container(
        &self,
        who: &Principal<'_>,
        task_id: &str,
        container_id: &str,
        action: &str,
        image: Option<&str>,
    ) -> bool {
        self.allows_target(who, &Target { task_id, container_id, name: None, name_unknown: false }, action, image)
    }

    /// The decision for a resolved container: allow rules are matched against its task id and its runtime
    /// name, deny rules against its task id, its container id and its name, so naming a container by id or by
    /// name never slips past a deny rule written for another of its names.
    pub fn allows_target(&self, who: &Principal<'_>, t: &Target<'_>, action: &str, image: Option<&str>) -> bool {
        let Target { task_id, container_id, name, name_unknown } = *t;
        let mut allowed = false;
        for r in &self.rules {
            let subject = r.subjects.iter().any(|s| match s {
                Subject::Any => true,
                Subject::User(u) => u == who.user,
                Subject::Group(g) => who.groups.iter().any(|x| x == g),
            });
            let image_ok = match image {
                None => true,
                Some(i) if r.deny => r.images.is_empty() || r.images.iter().any(|m| m.is_match(i)),
                Some(i) => r.images.iter().any(|m| m.is_match(i)),
            };
            let action_ok = r.actions.iter().any(|a| a == "*" || a == action);
            if !(subject && image_ok && action_ok) {
                continue;
            }
            let by_name = |m: &GlobMatcher| name.is_some_and(|n| m.is_match(n));
            if r.deny {
                if name_unknown || r.tasks.iter().any(|m| m.is_match(task_id) || m.is_match(container_id) || by_name(m))
                {
                    return false;
                }
            } else {
                allowed |= r.tasks.iter().any(|m| m.is_match(task_id) || by_name(m));
            }
        }
        allowed
    }
}

/// The ACL in force, replaced as a whole when its source changes (a file, or etcd), without a restart.
/// Readers take [`Shared::current`] once per request and judge the whole request by that one ACL. A
/// replacement that does not parse is refused: the ACL in force stays, so a broken edit never opens access.
#[derive(Debug)]
pub struct Shared {
    current: std::sync::RwLock<std::sync::Arc<Acl>>,
    /// Where it comes from, for log lines.
    origin: String,
}

impl Shared {
    /// Starts with `acl`, loaded from `origin` (a path or `etcd`).
    pub fn new(acl: Acl, origin: impl Into<String>) -> Shared {
        Shared { current: std::sync::RwLock::new(std::sync::Arc::new(acl)), origin: origin.into() }
    }

    /// The ACL in force.
    pub fn current(&self) -> std::sync::Arc<Acl> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the ACL comes from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Puts `acl` in force.
    pub fn replace(&self, acl: Acl) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(acl);
    }

    /// Parses `text` and puts it in force; when it does not parse, logs why, keeps the ACL in force and
    /// returns the error.
    pub fn reload(&self, text: &str) -> Result<(), AclError> {
        match Acl::parse(text) {
            Ok(acl) => {
                let rules = acl.rules.len();
                self.replace(acl);
                tracing::info!(origin = %self.origin, rules, "ACL reloaded");
                Ok(())
            }
            Err(e) => {
                let e = match e {
                    AclError::Parse { cause, .. } => AclError::Parse { path: self.origin.clone(), cause },
                    other => other,
                };
                tracing::error!(origin = %self.origin, "ACL not reloaded, the one in force stays: {e}");
                Err(e)
            }
        }
    }

    /// Loads the ACL file at `path` and reloads it whenever its content changes, checking every `every` (a
    /// thread that ends when the returned [`Shared`] is dropped). Editors and config managers that write in
    /// place may be read half-way: that version fails to parse and is refused, and the complete one is read
    /// at the next check.
    pub fn watch_file(path: &Path, every: std::time::Duration) -> Result<std::sync::Arc<Shared>, AclError> {
        let text = std::fs::read(path).map_err(|cause| AclError::Read { path: path.display().to_string(), cause })?;
        let acl = Acl::parse(&String::from_utf8_lossy(&text)).map_err(|e| match e {
            AclError::Parse { cause, .. } => AclError::Parse { path: path.display().to_string(), cause },
            other => other,
        })?;
        let shared = std::sync::Arc::new(Shared::new(acl, path.display().to_string()));
        let weak = std::sync::Arc::downgrade(&shared);
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("acl-reload".into()).spawn(move || {
            let mut last = text;
            // A new content is loaded only once two polls in a row read it: a file caught in the middle of an
            // in-place write can parse (cut between two rules, it would lose the deny rules after the cut).
            let mut seen: Option<Vec<u8>> = None;
            let mut unreadable = false;
            loop {
                std::thread::sleep(every);
                let Some(shared) = weak.upgrade() else { return };
                match std::fs::read(&path) {
                    Ok(now) => {
                        unreadable = false;
                        if now == last {
                            seen = None;
                        } else if seen.as_ref() == Some(&now) {
                            let _ = shared.reload(&String::from_utf8_lossy(&now));
                            last = now;
                            seen = None;
                        } else {
                            seen = Some(now);
                        }
                    }
                    Err(e) => {
                        if !unreadable {
                            tracing::error!(path = %path.display(), "ACL file unreadable, the one in force stays: {e}");
                        }
                        unreadable = true;
                    }
                }
            }
        });
        spawned.map_err(|cause| AclError::Read { path: "(reload thread)".into(), cause })?;
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = r#"
[[rule]]
subjects = ["group:sre"]
tasks = ["*"]
actions = ["*"]

[[rule]]
subjects = ["user:alice"]
tasks = ["web-*"]
actions = ["list", "exec"]

[[rule]]
effect = "deny"
subjects = ["user:bob"]
tasks = ["db-*"]
actions = ["*"]
"#;

    #[test]
    fn deny_by_default_grants_and_deny_wins() {
        let acl = Acl::parse(ACL).unwrap();
        let alice = Principal { user: "alice", groups: &[] };
        assert!(acl.allows(&alice, "web-1", "exec"));
        assert!(!acl.allows(&alice, "web-1", "exec:tty"));
        assert!(!acl.allows(&alice, "db-1", "exec"));
        let sre = ["sre".to_string()];
        let bob = Principal { user: "bob", groups: &sre };
        assert!(acl.allows(&bob, "web-1", "exec:user"));
        assert!(!acl.allows(&bob, "db-1", "list"));
        let nobody = Principal { user: "eve", groups: &[] };
        assert!(!acl.allows(&nobody, "web-1", "list"));
        assert!(acl.allows(&alice, "web-2", "exec") && !acl.allows(&alice, "web-2", "exec:stdin"));
        assert!(!Acl::default().allows(&alice, "web-1", "list"));
    }

    #[test]
    fn debug_needs_an_image_pattern_and_deny_rules_can_name_images() {
        let acl = Acl::parse(
            r#"
[[rule]]
subjects = ["user:dev"]
tasks = ["*"]
actions = ["exec", "debug"]
images = ["registry.local:5000/tools/*"]

[[rule]]
subjects = ["user:root"]
tasks = ["*"]
actions = ["*"]

[[rule]]
effect = "deny"
subjects = ["*"]
tasks = ["*"]
actions = ["debug"]
images = ["**/evil*"]
"#,
        )
        .unwrap();
        let dev = Principal { user: "dev", groups: &[] };
        assert!(acl.allows_image(&dev, "t", "debug", Some("registry.local:5000/tools/busybox:1")));
        assert!(!acl.allows_image(&dev, "t", "debug", Some("docker.io/library/busybox:latest")));
        assert!(!acl.allows_image(&dev, "t", "debug:caps", Some("registry.local:5000/tools/busybox:1")));
        // A rule without images grants no image, even with actions = ["*"].
        let root = Principal { user: "root", groups: &[] };
        assert!(!acl.allows_image(&root, "t", "debug", Some("docker.io/library/busybox:latest")));
        assert!(acl.allows(&root, "t", "exec"));
        assert!(!acl.allows_image(&dev, "t", "debug", Some("registry.local:5000/tools/evil:1")));
    }

    #[test]
    fn deny_rules_also_match_the_container_id() {
        let acl = Acl::parse(
            "[[rule]]\nsubjects=['*']\ntasks=['*']\nactions=['*']\n\n\
             [[rule]]\neffect='deny'\nsubjects=['*']\ntasks=['db-*']\nactions=['exec:tty']\n",
        )
        .unwrap();
        let who = Principal { user: "sre", groups: &[] };
        // The task db-1 runs in container 3f9c: asking by container id must not dodge the deny rule.
        assert!(!acl.allows_container(&who, "db-1", "3f9c", "exec:tty", None));
        assert!(acl.allows_container(&who, "db-1", "3f9c", "exec", None));
        // And allow rules are about task ids: a deny on the container id pattern works too.
        assert!(!acl.allows_container(&who, "web-1", "db-x", "exec:tty", None));
    }

    #[test]
    fn host_wide_listing_needs_a_list_grant_not_denied_everywhere() {
        let acl = Acl::parse(
            "[[rule]]\nsubjects=['user:a','user:b','user:m']\ntasks=['web-*']\nactions=['list']\n\n\
             [[rule]]\nsubjects=['user:x']\ntasks=['*']\nactions=['exec']\n\n\
             [[rule]]\neffect='deny'\nsubjects=['user:b']\ntasks=['web-1']\nactions=['list']\n\n\
             [[rule]]\neffect='deny'\nsubjects=['user:m']\ntasks=['**']\nactions=['*']\n",
        )
        .unwrap();
        let p = |user| Principal { user, groups: &[] };
        assert!(acl.grants_somewhere(&p("a"), "list"));
        assert!(acl.grants_somewhere(&p("b"), "list"), "a deny on one task leaves the others");
        assert!(!acl.grants_somewhere(&p("m"), "list"), "denied everywhere");
        assert!(!acl.grants_somewhere(&p("x"), "list"), "exec is not list");
        assert!(!acl.grants_somewhere(&p("nobody"), "list"));
    }

    #[test]
    fn a_star_stays_within_one_level_and_two_stars_cross_levels() {
        let acl = Acl::parse(
            r#"
[[rule]]
subjects = ["user:a"]
tasks = ["web-*", "batch/**"]
actions = ["exec", "debug"]
images = ["registry.local:5000/tools/*", "oci:/srv/tools/**", "oci:/srv/corpus/good-*"]

[[rule]]
effect = "deny"
subjects = ["*"]
tasks = ["**"]
actions = ["debug"]
images = ["oci:/srv/extra/*"]
"#,
        )
        .unwrap();
        let a = Principal { user: "a", groups: &[] };
        assert!(acl.allows(&a, "web-1", "exec"));
        assert!(!acl.allows(&a, "web-1/x", "exec"), "* crossed a /");
        assert!(acl.allows(&a, "batch/x/y", "exec"));
        let img = |i: &str| acl.allows_image(&a, "web-1", "debug", Some(i));
        assert!(img("registry.local:5000/tools/busybox:1"));
        assert!(!img("registry.local:5000/tools/x/busybox:1"), "* crossed a /");
        assert!(img("oci:/srv/tools/gdb"));
        assert!(img("oci:/srv/tools/a/b/c:v1"));
        assert!(img("oci:/srv/corpus/good-busybox"));
        assert!(!img("oci:/srv/corpus/good-busybox/x"));
        // The deny rule catches the canonical spelling; the others never reach the ACL (see server.rs).
        assert!(!img("oci:/srv/extra/x"));
        // An allow rule's `**` with no deny rule still grants the whole subtree.
        let any = Acl::parse("[[rule]]\nsubjects=['*']\ntasks=['*']\nactions=['debug']\nimages=['**']\n").unwrap();
        assert!(any.allows_image(&a, "t", "debug", Some("docker.io/library/busybox:latest")));
        // The README's examples.
        let m = |p: &str, name: &str| pattern(p).unwrap().is_match(name);
        assert!(m("**/evil*", "evil") && m("**/evil*", "r.example/x/evil:1"));
        let digest = format!("registry.local:5000/tools/busybox@sha256:{}", "a".repeat(64));
        assert!(m("registry.local:5000/tools/*", &digest));
        assert!(m("registry.local:5000/tools/**", "registry.local:5000/tools/x/gdb:1"));
        assert!(!m("registry.local:5000/tools/**", "registry.local:5000/other/busybox:1"));
        assert!(m("docker.io/library/*", "docker.io/library/busybox:latest"));
        assert!(!m("docker.io/library/*", "docker.io/user/app:1"));
        assert!(m("oci:/srv/tools/*", "oci:/srv/tools/gdb:v1") && !m("oci:/srv/tools/*", "oci:/srv/tools/x/gdb"));
        assert!(!m("web-*", "api-web-1") && m("db-{1,2}", "db-2"));
        let star = Acl::parse("[[rule]]\nsubjects=['*']\ntasks=['*']\nactions=['debug']\nimages=['*']\n").unwrap();
        assert!(!star.allows_image(&a, "t", "debug", Some("docker.io/library/busybox:latest")));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(Acl::parse("[[rule]]\nsubjects=['alice']\ntasks=['*']\nactions=['exec']").is_err());
        assert!(Acl::parse("[[rule]]\nsubjects=['user:a']\ntasks=['*']\nactions=['rm']").is_err());
        assert!(Acl::parse("[[rule]]\neffect='maybe'\nsubjects=['user:a']\ntasks=['*']\nactions=['exec']").is_err());
    }

    #[test]
    fn a_shared_acl_reloads_its_file_and_keeps_the_old_one_when_the_new_one_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.toml");
        let grant = |u: &str| format!("[[rule]]\nsubjects=['user:{u}']\ntasks=['*']\nactions=['exec']\n");
        std::fs::write(&path, grant("a")).unwrap();
        let shared = Shared::watch_file(&path, std::time::Duration::from_millis(20)).unwrap();
        let allows = |u: &str| shared.current().allows(&Principal { user: u, groups: &[] }, "t", "exec");
        let eventually = |f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !f() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            f()
        };
        assert!(allows("a") && !allows("b"));
        std::fs::write(&path, grant("b")).unwrap();
        assert!(eventually(&|| allows("b")), "the new file was not loaded");
        assert!(!allows("a"));
        // A broken edit: the ACL in force stays (b allowed, a still refused), long after it was seen.
        std::fs::write(&path, "[[rule]]\nsubjects=['user:a']\ntasks=['*']\nactions=['explode']\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(allows("b") && !allows("a"));
        std::fs::write(&path, "this is not toml [").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(allows("b") && !allows("a"));
        // The file disappears: still the old ACL; it comes back fixed: reloaded.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(allows("b"));
        std::fs::write(&path, grant("a")).unwrap();
        assert!(eventually(&|| allows("a") && !allows("b")));
        assert!(shared.reload("nope").is_err());
        assert!(allows("a"));
        assert!(Shared::watch_file(&dir.path().join("missing"), std::time::Duration::from_secs(1)).is_err());
    }
}
