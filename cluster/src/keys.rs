//! The etcd key layout. Under a prefix (default [`DEFAULT_PREFIX`]):
//!
//! - `{prefix}/nodes/{node}`: the node's [`crate::NodeRecord`] as JSON, under the agent's lease;
//! - `{prefix}/tasks/{node}/{container}`: one [`crate::TaskRecord`] per container, under the same lease;
//! - `{prefix}/acl`: the ACL's TOML text, for agents and gateways configured with `acl = "etcd"`.
//!
//! One key per node and per task keeps every write small, and a node's tasks share a prefix so that an agent
//! can list (and clean up) exactly its own. Node names and container ids are path components: `/` and `%`
//! in them are percent-encoded so that no name can reach into another node's keys.

/// The prefix every key lives under unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/dcos-exec/v1";

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `{prefix}/nodes/{node}`.
    Node(String),
    /// `{prefix}/tasks/{node}/{container}`.
    Task {
        /// The node the task runs on.
        node: String,
        /// The container id.
        container: String,
    },
    /// `{prefix}/acl`.
    Acl,
}

/// The keys of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout under `prefix` (a trailing `/` is ignored; an empty prefix means keys start with `/nodes`).
    pub fn new(prefix: &str) -> Layout {
        Layout { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// The prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}/`: the range of everything a gateway watches.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `{prefix}/nodes/{node}`.
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{}", self.prefix, encode(node))
    }

    /// `{prefix}/nodes/`.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `{prefix}/tasks/{node}/{container}`.
    pub fn task(&self, node: &str, container: &str) -> String {
        format!("{}/tasks/{}/{}", self.prefix, encode(node), encode(container))
    }

    /// `{prefix}/tasks/{node}/`: the range of one node's tasks.
    pub fn node_tasks(&self, node: &str) -> String {
        format!("{}/tasks/{}/", self.prefix, encode(node))
    }

    /// `{prefix}/tasks/`.
    pub fn tasks(&self) -> String {
        format!("{}/tasks/", self.prefix)
    }

    /// `{prefix}/acl`.
    pub fn acl(&self) -> String {
        format!("{}/acl", self.prefix)
    }

    /// What `key` names, or None for a key outside the layout (other tools may share the prefix).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if rest == "acl" {
            return Some(Key::Acl);
        }
        if let Some(node) = rest.strip_prefix("nodes/") {
            return (!node.is_empty() && !node.contains('/')).then(|| decode(node)).flatten().map(Key::Node);
        }
        let (node, container) = rest.strip_prefix("tasks/")?.split_once('/')?;
        if node.is_empty() || container.is_empty() || container.contains('/') {
            return None;
        }
        Some(Key::Task { node: decode(node)?, container: decode(container)? })
    }
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::new(DEFAULT_PREFIX)
    }
}

/// The end of the range of keys that start with `prefix` (etcd's "prefix" range end).
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

fn encode(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for c in component.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

fn decode(component: &str) -> Option<String> {
    let mut out = String::with_capacity(component.len());
    let mut rest = component;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" | "2f" => '/',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let l = Layout::default();
        assert_eq!(l.node("host-1"), "/dcos-exec/v1/nodes/host-1");
        assert_eq!(l.task("host-1", "c0ffee"), "/dcos-exec/v1/tasks/host-1/c0ffee");
        assert_eq!(l.node_tasks("host-1"), "/dcos-exec/v1/tasks/host-1/");
        assert_eq!(l.acl(), "/dcos-exec/v1/acl");
        assert_eq!(l.root(), "/dcos-exec/v1/");
        assert_eq!(Layout::new("/x/").node("n"), "/x/nodes/n");
    }

    #[test]
    fn keys_parse_back_and_foreign_keys_are_ignored() {
        let l = Layout::new("/p");
        assert_eq!(l.parse(l.node("n1").as_bytes()), Some(Key::Node("n1".into())));
        assert_eq!(
            l.parse(l.task("n1", "c1").as_bytes()),
            Some(Key::Task { node: "n1".into(), container: "c1".into() })
        );
        assert_eq!(l.parse(b"/p/acl"), Some(Key::Acl));
        for foreign in [
            "/q/nodes/n",
            "/p/nodes/",
            "/p/nodes/a/b",
            "/p/tasks/n",
            "/p/tasks/n/",
            "/p/tasks//c",
            "/p/other",
            "/pnodes/n",
            "/p/tasks/n/c/d",
        ] {
            assert_eq!(l.parse(foreign.as_bytes()), None, "{foreign}");
        }
        assert_eq!(l.parse(&[b'/', b'p', b'/', 0xff]), None);
    }

    #[test]
    fn names_with_slashes_cannot_reach_other_keys() {
        let l = Layout::default();
        // A node named "a/tasks" or a container id "../x" stays one component.
        let k = l.task("evil/../n2", "c/d%");
        assert_eq!(k, "/dcos-exec/v1/tasks/evil%2F..%2Fn2/c%2Fd%25");
        assert!(k.starts_with(&l.node_tasks("evil/../n2")));
        assert!(!k.starts_with(&l.node_tasks("evil")));
        assert_eq!(l.parse(k.as_bytes()), Some(Key::Task { node: "evil/../n2".into(), container: "c/d%".into() }));
        assert_eq!(l.parse(l.node("a/b").as_bytes()), Some(Key::Node("a/b".into())));
        assert_eq!(l.parse(b"/dcos-exec/v1/nodes/bad%zz"), None);
    }

    #[test]
    fn range_ends_cover_exactly_the_prefix() {
        assert_eq!(range_end(b"/p/"), b"/p0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }
}
