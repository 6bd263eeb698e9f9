//! How a name typed by a user picks a container, the DC/OS way: an exact id, else an exact name, else a unique
//! prefix, else a unique substring. Each step looks at all containers; the first step with any match decides,
//! and more than one match there is an ambiguity, never a guess. The agent picks among its containers, the
//! gateway among the directory's tasks of every node, with this same code.

/// The names a user may type for a task: its container id, its task id and the runtime's name.
pub trait Named {
    /// The runtime's container id (unique by construction).
    fn container_id(&self) -> &str;
    /// The task id (the bundle's annotation, else the container id).
    fn task_id(&self) -> &str;
    /// The runtime's own name, with or without Docker's leading `/`.
    fn name(&self) -> Option<&str>;
}

impl Named for dcos_exec_proto::TaskInfo {
    fn container_id(&self) -> &str {
        &self.container
    }
    fn task_id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// What a query picked among `all`.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    One(usize),
    None,
    /// Indices of the candidates of the deciding step.
    Many(Vec<usize>),
}

/// A Docker name without the leading `/` the Engine API gives it.
fn bare(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

/// Picks the container `query` names among `all`.
pub fn pick<C: Named>(all: &[C], query: &str) -> Pick {
    if query.is_empty() {
        return Pick::None;
    }
    let q = bare(query);
    fn name<C: Named>(c: &C) -> Option<&str> {
        c.name().map(bare)
    }
    // Exact container id (unique by construction), then exact task id, then exact name, then prefixes of any of
    // them, then substrings of task ids and names (container ids are hex: a substring of one names nothing).
    let steps: [&dyn Fn(&C) -> bool; 5] = [
        &|c| c.container_id() == query,
        &|c| c.task_id() == query,
        &|c| name(c) == Some(q),
        &|c| {
            c.container_id().starts_with(query)
                || c.task_id().starts_with(query)
                || name(c).is_some_and(|n| n.starts_with(q))
        },
        &|c| (c.task_id() != c.container_id() && c.task_id().contains(query)) || name(c).is_some_and(|n| n.contains(q)),
    ];
    for step in steps {
        let hits: Vec<usize> = all.iter().enumerate().filter(|(_, c)| step(c)).map(|(i, _)| i).collect();
        match hits.len() {
            0 => continue,
            1 => return Pick::One(hits[0]),
            _ => return Pick::Many(hits),
        }
    }
    Pick::None
}

/// `web-1 (name /web, container 3f9c0a1b2c3d)`: enough to tell candidates apart and type one of them.
pub fn describe<C: Named>(c: &C) -> String {
    let short: String = c.container_id().chars().take(12).collect();
    match c.name() {
        Some(n) if bare(n) != c.task_id() => format!("{} (name {}, container {short})", c.task_id(), bare(n)),
        _ if c.task_id() != c.container_id() => format!("{} (container {short})", c.task_id()),
        _ => c.container_id().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dcos_exec_proto::TaskInfo;

    fn c(id: &str, task: &str, name: Option<&str>) -> TaskInfo {
        TaskInfo { container: id.into(), id: task.into(), name: name.map(String::from), ..TaskInfo::default() }
    }

    #[test]
    fn ids_then_names_then_prefixes_then_substrings() {
        let all = vec![
            c("3f9c0a1b2c3d4e5f", "3f9c0a1b2c3d4e5f", Some("/web-1")),
            c("3f9c77aa00000000", "3f9c77aa00000000", Some("/web-2")),
            c("aa11", "shop.checkout.a1", None),
            c("bb22", "shop.cart.b2", None),
            // A name that is another container's id prefix: the exact name wins over the prefix.
            c("cc33", "cc33", Some("/3f9c")),
        ];
        assert_eq!(pick(&all, "3f9c0a1b2c3d4e5f"), Pick::One(0));
        assert_eq!(pick(&all, "web-1"), Pick::One(0));
        assert_eq!(pick(&all, "/web-2"), Pick::One(1));
        assert_eq!(pick(&all, "3f9c0a1b2c3d"), Pick::One(0), "docker's short id");
        assert_eq!(pick(&all, "3f9c"), Pick::One(4));
        assert_eq!(pick(&all, "3f9"), Pick::Many(vec![0, 1, 4]));
        assert_eq!(pick(&all, "web"), Pick::Many(vec![0, 1]));
        assert_eq!(pick(&all, "checkout"), Pick::One(2), "substring of a task id");
        assert_eq!(pick(&all, "shop."), Pick::Many(vec![2, 3]));
        assert_eq!(pick(&all, "0a1b"), Pick::None, "the middle of a hex id names nothing");
        assert_eq!(pick(&all, ""), Pick::None);
        assert_eq!(pick(&all, "zzz"), Pick::None);
        // An exact task id shared by two containers is ambiguous, not the first one found.
        let twins = vec![c("x1", "web.1", None), c("x2", "web.1", None)];
        assert_eq!(pick(&twins, "web.1"), Pick::Many(vec![0, 1]));
        assert_eq!(pick(&twins, "x2"), Pick::One(1));
    }

    #[test]
    fn candidates_are_described_by_what_can_be_typed() {
        assert_eq!(
            describe(&c("3f9c0a1b2c3d4e5f", "3f9c0a1b2c3d4e5f", Some("/web-1"))),
            "3f9c0a1b2c3d4e5f (name web-1, container 3f9c0a1b2c3d)"
        );
        assert_eq!(describe(&c("aa11", "shop.cart", None)), "shop.cart (container aa11)");
        assert_eq!(describe(&c("aa11", "aa11", None)), "aa11");
    }
}
