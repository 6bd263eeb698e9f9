//! Users and groups: `-u USER[:GROUP]` and the container's own user, resolved in the container's
//! `/etc/passwd` and `/etc/group` the way `docker exec` and `runc exec` do, with every id checked.
//!
//! Ids are refused outside `0..=2147483647`: `setresuid(-1)` means "leave unchanged", so a uid of 4294967295
//! from anywhere would silently keep root.

use crate::error::StartError;

/// The largest uid or gid passed on.
pub const MAX_ID: u64 = i32::MAX as u64;

/// One line of `/etc/passwd`; ids kept wide so that out-of-range ones can be refused when chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The user name.
    pub name: String,
    /// The user id.
    pub uid: u64,
    /// The primary group id.
    pub gid: u64,
    /// The home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// The group name.
    pub name: String,
    /// The group id.
    pub gid: u64,
    /// User names listed as members.
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` text; malformed lines are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect());
            Some(GroupEntry { name: f.first()?.to_string(), gid: f.get(2)?.parse().ok()?, members: members? })
        })
        .collect()
}

/// The credentials a session runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups, in order, without duplicates.
    pub groups: Vec<u32>,
    /// The user's home from `/etc/passwd`, if the user has an entry.
    pub home: Option<String>,
}

/// Checks an id from `source`, for the error message.
pub fn check_id(kind: &str, value: u64, source: &str) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(id) if value <= MAX_ID => Ok(id),
        _ => Err(format!("{kind} {value} from {source} is out of range (0..={MAX_ID})")),
    }
}

fn parse_numeric(kind: &str, s: &str, source: &str) -> Option<Result<u32, String>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits that do not even fit in u64 are out of range too.
    Some(
        s.parse::<u64>()
            .map_err(|_| format!("{kind} {s} from {source} is out of range (0..={MAX_ID})"))
            .and_then(|v| check_id(kind, v, source)),
    )
}

/// Resolves the session's credentials.
///
/// - No `-u`: the container's uid, gid and additionalGids (checked).
/// - `-u USER`: USER by name or number; its gid from its passwd entry (0 without one) and its `/etc/group`
///   memberships, as `docker exec -u` does.
/// - `-u USER:GROUP`: that group and no `/etc/group` memberships, as runc and docker do.
///
/// The container's additionalGids are kept in every case, after the memberships (runc's order).
pub fn resolve(
    config: &crate::spec::ConfigUser,
    user_override: Option<&str>,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<Credentials, StartError> {
    let bad_container = StartError::BadContainer;
    let mut extra = Vec::new();
    for &g in &config.additional_gids {
        extra.push(check_id("additional gid", g.into(), "the container's config.json").map_err(bad_container)?);
    }
    let (uid, gid, mut groups, entry) = match user_override {
        None => {
            let uid = check_id("uid", config.uid.into(), "the container's config.json").map_err(bad_container)?;
            let gid = check_id("gid", config.gid.into(), "the container's config.json").map_err(bad_container)?;
            (uid, gid, Vec::new(), passwd.iter().find(|p| p.uid == u64::from(uid)))
        }
        Some(spec) => {
            let bad = StartError::BadRequest;
            let (user, grp) = match spec.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec, None),
            };
            if user.is_empty() {
                return Err(bad(format!("-u {spec:?}: empty user")));
            }
            let (uid, entry) = match parse_numeric("uid", user, "-u") {
                Some(n) => {
                    let uid = n.map_err(bad)?;
                    (uid, passwd.iter().find(|p| p.uid == u64::from(uid)))
                }
                None => {
                    let e = passwd
                        .iter()
                        .find(|p| p.name == user)
                        .ok_or_else(|| bad(format!("no user {user:?} in the container's /etc/passwd")))?;
                    let source = format!("the container's /etc/passwd entry for {user:?}");
                    (check_id("uid", e.uid, &source).map_err(bad)?, Some(e))
                }
            };
            let (gid, groups) = match grp {
                Some("") => return Err(bad(format!("-u {spec:?}: empty group"))),
                Some(g) => {
                    let gid = match parse_numeric("gid", g, "-u") {
                        Some(n) => n.map_err(bad)?,
                        None => {
                            let e = group
                                .iter()
                                .find(|e| e.name == g)
                                .ok_or_else(|| bad(format!("no group {g:?} in the container's /etc/group")))?;
                            check_id("gid", e.gid, &format!("the container's /etc/group entry for {g:?}"))
                                .map_err(bad)?
                        }
                    };
                    (gid, Vec::new())
                }
                None => {
                    let gid = match entry {
                        Some(e) => {
                            check_id("gid", e.gid, &format!("the container's /etc/passwd entry for {:?}", e.name))
                                .map_err(bad)?
                        }
                        None => 0,
                    };
                    let name = entry.map(|e| e.name.as_str()).unwrap_or("");
                    let mut member_of = Vec::new();
                    for e in group.iter().filter(|e| !name.is_empty() && e.members.iter().any(|m| m == name)) {
                        let source = format!("the container's /etc/group entry for {:?}", e.name);
                        member_of.push(check_id("gid", e.gid, &source).map_err(bad)?);
                    }
                    (gid, member_of)
                }
            };
            (uid, gid, groups, entry)
        }
    };
    for g in extra {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut seen = Vec::new();
    groups.retain(|g| {
        let fresh = !seen.contains(g);
        seen.push(*g);
        fresh
    });
    Ok(Credentials { uid, gid, groups, home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()) })
}

/// Sets `HOME` from the user's passwd entry when the environment has none or an empty one (runc's rule).
pub fn fill_home(env: &mut Vec<String>, home: Option<&str>) {
    if env.iter().any(|e| e.strip_prefix("HOME=").is_some_and(|v| !v.is_empty())) {
        return;
    }
    env.retain(|e| !e.starts_with("HOME="));
    env.push(format!("HOME={}", home.unwrap_or("/")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ConfigUser;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
                          evil:x:4294967295:0::/:/bin/sh\nbadgid:x:1001:4294967295::/:/bin/sh\nbroken\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nwheel:x:10:root,app\nevilg:x:4294967295:app2\n";

    fn r(cfg: &ConfigUser, o: Option<&str>) -> Result<Credentials, StartError> {
        resolve(cfg, o, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    fn cfg(uid: u32, gid: u32, add: &[u32]) -> ConfigUser {
        ConfigUser { uid, gid, additional_gids: add.to_vec() }
    }

    #[test]
    fn the_containers_user_is_used_as_configured() {
        let c = r(&cfg(1000, 1000, &[3000]), None).unwrap();
        assert_eq!((c.uid, c.gid, c.groups, c.home.as_deref()), (1000, 1000, vec![3000], Some("/home/app")));
    }

    #[test]
    fn dash_u_follows_docker_and_keeps_additional_gids() {
        let c = r(&cfg(0, 0, &[3000]), Some("app")).unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (1000, 1000, vec![2000, 10, 3000]));
        // A numeric user finds its entry too.
        assert_eq!(r(&cfg(0, 0, &[]), Some("1000")).unwrap().groups, vec![2000, 10]);
        // With a group: that group and no /etc/group memberships.
        let c = r(&cfg(0, 0, &[3000]), Some("1000:1000")).unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (1000, 1000, vec![3000]));
        assert_eq!(r(&cfg(0, 0, &[]), Some("app:wheel")).unwrap().gid, 10);
        // No entry: gid 0, no home.
        let c = r(&cfg(0, 0, &[]), Some("4242")).unwrap();
        assert_eq!((c.uid, c.gid, c.home), (4242, 0, None));
        assert!(matches!(r(&cfg(0, 0, &[]), Some("nobody")), Err(StartError::BadRequest(_))));
        assert!(matches!(r(&cfg(0, 0, &[]), Some("app:nogroup")), Err(StartError::BadRequest(_))));
        assert!(matches!(r(&cfg(0, 0, &[]), Some(":0")), Err(StartError::BadRequest(_))));
    }

    #[test]
    fn ids_out_of_range_are_refused_wherever_they_come_from() {
        let out_of_range = |res: Result<Credentials, StartError>| match res {
            Err(e @ (StartError::BadRequest(_) | StartError::BadContainer(_))) => {
                e.to_string().contains("out of range")
            }
            _ => false,
        };
        for spec in ["4294967295", "1000:4294967295", "4294967296", "2147483648", "99999999999999999999999", "evil"] {
            assert!(out_of_range(r(&cfg(0, 0, &[]), Some(spec))), "{spec}");
        }
        // A gid from passwd or group entries.
        assert!(out_of_range(r(&cfg(0, 0, &[]), Some("badgid"))));
        assert!(out_of_range(r(&cfg(0, 0, &[]), Some("app:evilg"))));
        // The container's own config.
        assert!(out_of_range(r(&cfg(u32::MAX, 0, &[]), None)));
        assert!(out_of_range(r(&cfg(0, u32::MAX, &[]), None)));
        assert!(out_of_range(r(&cfg(0, 0, &[u32::MAX]), None)));
        assert!(matches!(r(&cfg(u32::MAX, 0, &[]), None), Err(StartError::BadContainer(_))));
        // The largest valid id passes.
        assert_eq!(r(&cfg(0, 0, &[]), Some("2147483647:2147483647")).unwrap().uid, 2147483647);
    }

    #[test]
    fn home_is_filled_when_unset_or_empty() {
        let mut env = vec!["HOME=".to_string()];
        fill_home(&mut env, Some("/home/app"));
        assert_eq!(env, vec!["HOME=/home/app"]);
        let mut env = vec!["HOME=/x".to_string()];
        fill_home(&mut env, Some("/home/app"));
        assert_eq!(env, vec!["HOME=/x"]);
        let mut env = vec![];
        fill_home(&mut env, None);
        assert_eq!(env, vec!["HOME=/"]);
    }
}
