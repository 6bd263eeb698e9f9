//! How a name typed by a user picks a container, the DC/OS way: an exact id or name, else a unique prefix, else a
//! unique substring. Each step looks at all containers; the first step with any match decides, and more than
//! one match there is an ambiguity, never a guess. The agent picks among its containers, the gateway among the
//! directory's tasks of every node, with this same code.
//!
//! Exact container ids, task ids and names are one step, not three in order: whoever can start a container
//! chooses its name (Docker), its id (`ctr run`) or its namespace (containerd), so a container named like
//! another's id, or a containerd namespace named like a Kubernetes namespace, would otherwise take over the
//! sessions meant for the other. Likewise a query of four or more hex digits that is the start of an engine's
//! 64-hex container id (the short id `docker ps` and `dcos task list` print) counts in that step: a container
//! named after another's short id makes the short id ambiguous rather than taking its sessions.

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

/// The steps of a pick, in order: the first one with a (visible) match decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Exact,
    Prefix,
    Substring,
}

const STEPS: [Step; 3] = [Step::Exact, Step::Prefix, Step::Substring];

/// The fewest hex digits of a query that make it a short id: shorter ones are usual names (`db`, `abc`).
const SHORT_ID_MIN: usize = 4;

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A query that may be a short container id.
fn short_id(query: &str) -> bool {
    query.len() >= SHORT_ID_MIN && is_hex(query)
}

/// An id an engine generated (Docker, containerd's CRI, runc under them): 64 lowercase hex digits.
fn engine_id(id: &str) -> bool {
    id.len() == 64 && is_hex(id)
}

/// Whether `c` matches `query` (`q`: the query without a leading `/`) at `step`. The one definition of the
/// rules; [`Index`] answers the first two steps from sorted lists and must agree with this (tested).
fn matches<C: Named>(step: Step, c: &C, query: &str, q: &str) -> bool {
    let name = c.name().map(bare);
    match step {
        Step::Exact => {
            c.container_id() == query
                || c.task_id() == query
                || name == Some(q)
                || (short_id(query) && engine_id(c.container_id()) && c.container_id().starts_with(query))
        }
        Step::Prefix => {
            c.container_id().starts_with(query)
                || c.task_id().starts_with(query)
                || name.is_some_and(|n| n.starts_with(q))
        }
        // Container ids are hex: a substring of one names nothing.
        Step::Substring => {
            (c.task_id() != c.container_id() && c.task_id().contains(query)) || name.is_some_and(|n| n.contains(q))
        }
    }
}

/// Walks the steps: `hits(step)` gives the step's matches (ascending indices), of which only those
/// `visible` count. Visibility is asked only of a step's matches, so a lookup judges a handful of candidates
/// rather than every task, and answers exactly as if the invisible ones had been removed first.
fn decide(query: &str, mut hits: impl FnMut(Step) -> Vec<usize>, mut visible: impl FnMut(usize) -> bool) -> Pick {
    if query.is_empty() {
        return Pick::None;
    }
    // A hidden row that matched an earlier step is not judged again.
    let mut hidden = std::collections::HashSet::new();
    for step in STEPS {
        let seen: Vec<usize> =
            hits(step).into_iter().filter(|&i| !hidden.contains(&i) && (visible(i) || !hidden.insert(i))).collect();
        match seen.len() {
            0 => continue,
            1 => return Pick::One(seen[0]),
            _ => return Pick::Many(seen),
        }
    }
    Pick::None
}

/// Picks the container `query` names among `all`: an exact container id, task id or name (or a short id of an
/// engine's container id), then prefixes of any of them, then substrings of task ids and names.
pub fn pick<C: Named>(all: &[C], query: &str) -> Pick {
    let q = bare(query);
    let scan = |step| all.iter().enumerate().filter(|(_, c)| matches(step, *c, query, q)).map(|(i, _)| i).collect();
    decide(query, scan, |_| true)
}

/// The names of a fixed set of containers, sorted once so that a pick costs a few binary searches instead of
/// a pass over all of them (the gateway's directory holds 100 000 tasks). It holds indices only: the strings
/// stay in the slice it was built over, which every [`Index::pick`] must be given again, unchanged.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Every indexed row, ascending (the substring step scans these).
    rows: Vec<u32>,
    by_container: Vec<u32>,
    by_task: Vec<u32>,
    /// Rows with a name, by the name without its leading `/`.
    by_name: Vec<u32>,
    /// The task ids that differ from their container id, and the names without their `/`, each ended by a NUL:
    /// the substring step searches these texts with a vectorised search instead of comparing row by row.
    ids: Text,
    names: Text,
}

/// Strings of many rows end to end, each ended by a NUL, and where each starts.
#[derive(Debug, Clone, Default)]
struct Text {
    bytes: Vec<u8>,
    /// (offset of the string's first byte, its row), ascending.
    starts: Vec<(usize, u32)>,
}

impl Text {
    fn push(&mut self, row: u32, s: &str) {
        self.starts.push((self.bytes.len(), row));
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
    }

    /// The rows whose string contains `needle` (which holds no NUL, so a match never spans two strings).
    fn rows_containing(&self, needle: &str) -> Vec<usize> {
        if needle.is_empty() {
            return self.starts.iter().map(|&(_, row)| row as usize).collect();
        }
        memchr::memmem::find_iter(&self.bytes, needle.as_bytes())
            .filter_map(|at| {
                let k = self.starts.partition_point(|&(start, _)| start <= at).checked_sub(1)?;
                self.starts.get(k).map(|&(_, row)| row as usize)
            })
            .collect()
    }
}

/// The rows of `sorted` (sorted by `key`) whose key equals `k` (`exact`) or starts with it.
fn range<'a, C: Named + 'a>(
    all: &'a [C],
    sorted: &'a [u32],
    key: impl Fn(&'a C) -> &'a str + 'a,
    k: &'a str,
    exact: bool,
) -> impl Iterator<Item = usize> + 'a {
    let at = move |i: &u32| key(&all[*i as usize]);
    let start = sorted.partition_point(|i| at(i) < k);
    sorted[start..]
        .iter()
        .take_while(move |i| if exact { at(i) == k } else { at(i).starts_with(k) })
        .map(|&i| i as usize)
}

impl Index {
    /// Indexes the rows of `all` that are `included` (the others never match). Indices past `u32::MAX` are
    /// not indexed.
    pub fn build<C: Named>(all: &[C], included: impl Fn(&C) -> bool) -> Index {
        let rows: Vec<u32> =
            all.iter().enumerate().filter(|(_, c)| included(c)).filter_map(|(i, _)| u32::try_from(i).ok()).collect();
        let c = |i: &u32| &all[*i as usize];
        let mut by_container = rows.clone();
        by_container.sort_by(|a, b| c(a).container_id().cmp(c(b).container_id()));
        let mut by_task = rows.clone();
        by_task.sort_by(|a, b| c(a).task_id().cmp(c(b).task_id()));
        let mut by_name: Vec<u32> = rows.iter().copied().filter(|i| c(i).name().is_some()).collect();
        by_name.sort_by_key(|i| c(i).name().map(bare));
        let (mut ids, mut names) = (Text::default(), Text::default());
        for &i in &rows {
            if c(&i).task_id() != c(&i).container_id() {
                ids.push(i, c(&i).task_id());
            }
            if let Some(n) = c(&i).name() {
                names.push(i, bare(n));
            }
        }
        Index { rows, by_container, by_task, by_name, ids, names }
    }

    /// The number of indexed rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// What [`pick`] would answer for `query` over the indexed rows of `all` that are `visible`; indices are
    /// those of `all`. `visible` is asked only about the matches of the steps up to the deciding one.
    pub fn pick<C: Named>(&self, all: &[C], query: &str, visible: impl FnMut(usize) -> bool) -> Pick {
        let q = bare(query);
        fn cid<C: Named>(c: &C) -> &str {
            c.container_id()
        }
        fn tid<C: Named>(c: &C) -> &str {
            c.task_id()
        }
        fn name<C: Named>(c: &C) -> &str {
            c.name().map(bare).unwrap_or_default()
        }
        let hits = |step| -> Vec<usize> {
            let mut h: Vec<usize> = match step {
                Step::Exact => {
                    let short = short_id(query).then(|| {
                        range(all, &self.by_container, cid, query, false).filter(|&i| engine_id(all[i].container_id()))
                    });
                    range(all, &self.by_container, cid, query, true)
                        .chain(range(all, &self.by_task, tid, query, true))
                        .chain(range(all, &self.by_name, name, q, true))
                        .chain(short.into_iter().flatten())
                        .collect()
                }
                Step::Prefix => range(all, &self.by_container, cid, query, false)
                    .chain(range(all, &self.by_task, tid, query, false))
                    .chain(range(all, &self.by_name, name, q, false))
                    .collect(),
                // A NUL ends each string of the texts: a query holding one is compared row by row.
                Step::Substring if query.contains('\0') => {
                    self.rows.iter().map(|&i| i as usize).filter(|&i| matches(step, &all[i], query, q)).collect()
                }
                Step::Substring => [self.ids.rows_containing(query), self.names.rows_containing(q)].concat(),
            };
            h.sort_unstable();
            h.dedup();
            h
        };
        decide(query, hits, visible)
    }
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
        // Whoever starts a container chooses its name, id or namespace: an exact match of one container never
        // wins over another's, and a name that is another engine container's short id does not take its place.
        let docker = |k: u8| format!("{:02x}", k).repeat(32);
        let hijack = vec![
            c(&docker(0xa6), &docker(0xa6), Some("/victim-db")),
            c(&docker(0x67), &docker(0x67), Some(&format!("/{}", &docker(0xa6)[..12]))),
            c("payments-abc", "prod/payments-abc", None),
            c(&docker(0x11), "prod/payments-abc/app", Some("prod/payments-abc")),
            c(&docker(0x22), &docker(0x22), Some("/db")),
            c(&docker(0xdb), &docker(0xdb), None),
        ];
        assert_eq!(pick(&hijack, &docker(0xa6)[..12]), Pick::Many(vec![0, 1]), "a name like a short id");
        assert_eq!(pick(&hijack, &docker(0xa6)[..4]), Pick::One(0), "the name is longer: a prefix, a later step");
        assert_eq!(pick(&hijack, &docker(0xa6)), Pick::One(0), "the full id is still one");
        assert_eq!(pick(&hijack, "victim-db"), Pick::One(0));
        assert_eq!(pick(&hijack, "prod/payments-abc"), Pick::Many(vec![2, 3]), "a task id like a pod's name");
        assert_eq!(pick(&hijack, "db"), Pick::One(4), "names shorter than a short id are names");
        assert_eq!(pick(&hijack, "dbdb"), Pick::One(5));
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

    /// A small deterministic generator (xorshift): reproducible cases without a dependency.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
        /// A word of 1 to `max` letters of `alphabet`.
        fn word(&mut self, alphabet: &[u8], max: usize) -> String {
            let len = 1 + self.below(max);
            (0..len).map(|_| alphabet[self.below(alphabet.len())] as char).collect()
        }
    }

    /// Tasks with few distinct letters, so that names share prefixes, collide exactly, contain each other,
    /// and some task ids are their container ids, some names are other tasks' ids.
    fn generated(g: &mut Gen, n: usize) -> Vec<TaskInfo> {
        let mut all = Vec::new();
        for k in 0..n {
            let container = match g.below(3) {
                // An engine's 64-hex id, sharing its first digits with others, and short ids as names below.
                0 => format!("{:0<64}", format!("{}{k:x}", g.word(b"0123456789abcdef", 3))),
                _ => format!("{}{k:x}", g.word(b"0123456789abcdef", 3)),
            };
            let id = match g.below(4) {
                0 => container.clone(),
                1 => format!("shop.{}", g.word(b"abc.", 4)),
                2 => g.word(b"abc", 3),
                _ => format!("{}.{}", g.word(b"ab", 2), g.below(5)),
            };
            let name = match g.below(5) {
                0 => None,
                1 => Some(format!("/{}", g.word(b"abc-", 4))),
                2 => Some(g.word(b"ab", 3)),
                3 => Some(container[..(1 + g.below(6)).min(container.len())].to_string()),
                _ => Some(id.clone()),
            };
            all.push(c(&container, &id, name.as_deref()));
        }
        all
    }

    fn queries(g: &mut Gen, all: &[TaskInfo]) -> Vec<String> {
        let mut qs = vec![
            "".to_string(),
            "/".into(),
            "zz".into(),
            ".".into(),
            "shop.".into(),
            "a".into(),
            "\0".into(),
            "a\0".into(),
        ];
        for _ in 0..40 {
            let t = &all[g.below(all.len())];
            let whole = match g.below(3) {
                0 => t.container.clone(),
                1 => t.id.clone(),
                _ => t.name.clone().unwrap_or_else(|| t.id.clone()),
            };
            let cut = g.below(whole.len() + 1);
            let from = g.below(cut + 1);
            qs.push(whole.clone());
            qs.push(whole[..cut].to_string());
            qs.push(whole[from..cut].to_string());
            qs.push(format!("/{}", &whole[from..]));
        }
        qs
    }

    /// Maps a pick over a filtered list back to indices of the full one.
    fn lift(p: Pick, kept: &[usize]) -> Pick {
        match p {
            Pick::One(i) => Pick::One(kept[i]),
            Pick::Many(v) => Pick::Many(v.into_iter().map(|i| kept[i]).collect()),
            Pick::None => Pick::None,
        }
    }

    #[test]
    fn the_index_answers_as_the_linear_pick_over_what_is_visible() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for round in 0..60 {
            let n = 1 + g.below(if round % 3 == 0 { 8 } else { 120 });
            let all = generated(&mut g, n);
            // Some rows are not indexed at all (a node gone), some hidden from the caller by the ACL.
            let included: Vec<bool> = (0..all.len()).map(|_| g.below(10) != 0).collect();
            let hidden: Vec<bool> = (0..all.len()).map(|_| g.below(3) == 0).collect();
            let index = Index::build(&all, |t| included[all.iter().position(|x| std::ptr::eq(x, t)).unwrap()]);
            let kept: Vec<usize> = (0..all.len()).filter(|&i| included[i] && !hidden[i]).collect();
            let visible_rows: Vec<TaskInfo> = kept.iter().map(|&i| all[i].clone()).collect();
            for q in queries(&mut g, &all) {
                let linear = lift(pick(&visible_rows, &q), &kept);
                let mut asked = Vec::new();
                let indexed = index.pick(&all, &q, |i| {
                    assert!(included[i], "asked about a row that is not indexed");
                    asked.push(i);
                    !hidden[i]
                });
                assert_eq!(indexed, linear, "query {q:?} over {all:?}");
                // Hidden rows are asked about only when they match a step the deciding one or earlier.
                let mut uniq = asked.clone();
                uniq.sort();
                uniq.dedup();
                assert_eq!(uniq.len(), asked.len(), "a row asked about twice for {q:?}");
                checked += 1;
            }
        }
        assert!(checked > 5000, "{checked}");
    }

    #[test]
    fn a_lookup_among_100_000_asks_about_a_handful() {
        let all: Vec<TaskInfo> = (0..100_000)
            .map(|k| c(&format!("{k:064x}"), &format!("svc{}.task-{k}", k % 1000), Some(&format!("/n{k}"))))
            .collect();
        let index = Index::build(&all, |_| true);
        let ask = |q: &str| {
            let mut count = 0;
            let p = index.pick(&all, q, |_| {
                count += 1;
                true
            });
            (p, count)
        };
        assert_eq!(ask("svc7.task-77007"), (Pick::One(77_007), 1));
        assert_eq!(ask("/n4242"), (Pick::One(4242), 1));
        assert_eq!(ask(&format!("{:064x}", 99_999)), (Pick::One(99_999), 1));
        // A unique prefix of a task id, and a substring (the scan compares strings; only matches are judged).
        assert_eq!(ask("svc501.task-550"), (Pick::One(5501), 1));
        assert_eq!(ask("task-99998"), (Pick::One(99_998), 1));
        assert_eq!(ask("nothing-like-it"), (Pick::None, 0));
    }
}
