//! Image references: `[registry[:port]/]repo[:tag][@digest]` with Docker Hub normalisation, or `oci:PATH[:TAG]`.
//!
//! Parsed here rather than with `oci_spec::distribution::Reference`, which normalises `busybox` the same way but
//! not `registry-1.docker.io` (only `index.docker.io` becomes `docker.io`), accepts `sha384`/`sha512` digests that
//! the cache cannot address, and reports errors without the part at fault.

use crate::digest::{Digest, DigestError};
use crate::layout::LayoutDir;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The registry of references without one (`busybox` is `docker.io/library/busybox`).
pub const DOCKER_HUB: &str = "docker.io";
/// The tag of references with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Errors from parsing an image reference; each carries the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing at all.
    #[error("empty image reference")]
    Empty,
    /// Whitespace or control characters anywhere.
    #[error("image reference {0:?} contains whitespace or control characters")]
    BadCharacter(String),
    /// A registry part that is not `host[:port]`.
    #[error("invalid registry {0:?}: expected host[:port]")]
    BadRegistry(String),
    /// A repository outside the distribution spec's grammar.
    #[error("invalid repository {0:?}: components must be lowercase [a-z0-9] separated by '.', '_', '__' or '-'")]
    BadRepository(String),
    /// A repository name beyond the distribution spec's length.
    #[error("repository {0:?} is longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    /// A tag outside the distribution spec's grammar.
    #[error("invalid tag {0:?}: expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    BadTag(String),
    /// An `@digest` that is not a sha256 digest.
    #[error("invalid digest in image reference: {0}")]
    BadDigest(#[from] DigestError),
    /// `oci:` with no path after it.
    #[error("oci: reference {0:?} has an empty layout path")]
    EmptyLayoutPath(String),
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An image in a registry. `tag` is `latest` when neither tag nor digest was given.
    Registry {
        /// `host[:port]`; [`DOCKER_HUB`] when none was given.
        registry: String,
        /// The repository, with `library/` for Docker Hub's official images.
        repository: String,
        /// The tag, if any.
        tag: Option<String>,
        /// The manifest digest, if pinned; it wins over the tag.
        digest: Option<Digest>,
    },
    /// An OCI image layout directory on local disk; `dir` is set once it was opened (see
    /// [`ImageRef::open_layout`]), and then `path` is the real path of what was opened.
    Layout {
        /// The layout's directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick from its index, if given.
        tag: Option<String>,
        /// The directory, once opened.
        dir: Option<LayoutDir>,
    },
}

impl ImageRef {
    /// Parses and normalises `s`: a registry reference, or `oci:PATH[:TAG]`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::BadCharacter(s.to_string()));
        }
        match s.strip_prefix("oci:") {
            Some(rest) => parse_layout(s, rest),
            None => parse_registry(s),
        }
    }
}

impl ImageRef {
    /// For an `oci:` reference, opens its layout directory and returns the reference naming it by the real path
    /// of what was opened (absolute; no `.`, `..` or `//`; no symlinks), holding it open so that the pull reads
    /// that directory whatever happens to the path afterwards. Other references come back unchanged.
    pub fn open_layout(&self) -> std::io::Result<ImageRef> {
        match self {
            ImageRef::Layout { path, tag, .. } => {
                let dir = LayoutDir::open(path)?;
                Ok(ImageRef::Layout { path: dir.path().to_path_buf(), tag: tag.clone(), dir: Some(dir) })
            }
            other => Ok(other.clone()),
        }
    }

    /// The reference with an `oci:` path in lexical normal form (see [`crate::layout::lexically_normal`]), for
    /// judging a layout that could not be opened.
    pub fn lexically_normal(&self) -> ImageRef {
        match self {
            ImageRef::Layout { path, tag, .. } => {
                ImageRef::Layout { path: crate::layout::lexically_normal(path), tag: tag.clone(), dir: None }
            }
            other => other.clone(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry { registry, repository, tag, digest } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
            ImageRef::Layout { path, tag, .. } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_layout(whole: &str, rest: &str) -> Result<ImageRef, ReferenceError> {
    // The tag is whatever follows the last ':' provided it contains no '/', so paths with colons in directory
    // names still work; a trailing part that is not a valid tag is an error rather than silently part of the path.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => {
            validate_tag(tag)?;
            (path, Some(tag.to_string()))
        }
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err(ReferenceError::EmptyLayoutPath(whole.to_string()));
    }
    Ok(ImageRef::Layout { path: PathBuf::from(path), tag, dir: None })
}

fn parse_registry(s: &str) -> Result<ImageRef, ReferenceError> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            let tag = &name_tag[i + 1..];
            validate_tag(tag)?;
            (&name_tag[..i], Some(tag.to_string()))
        }
        None => (name_tag, None),
    };
    if name.is_empty() {
        return Err(ReferenceError::BadRepository(s.to_string()));
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost") =>
        {
            (canonical_registry(first)?, rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => registry,
    };
    let repository =
        if registry == DOCKER_HUB && !repository.contains('/') { format!("library/{repository}") } else { repository };
    validate_repository(&repository)?;

    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (tag, _) => tag,
    };
    Ok(ImageRef::Registry { registry, repository, tag, digest })
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadTag(tag.to_string()))
    }
}

/// `host[:port]` in the one spelling the ACL judges and the audit log records: the host as the URL standard parses
/// it (what the HTTP client connects to), so `LOCALHOST`, `127.1`, `2130706433`, `0x7f000001` and `127.000.0.1`
/// are all `localhost` or `127.0.0.1`, IPv6 in its compressed form in brackets, and the port as a plain number.
/// Otherwise one registry has many spellings and a deny rule catches only the one it names.
pub fn canonical_registry(reg: &str) -> Result<String, ReferenceError> {
    let bad = || ReferenceError::BadRegistry(reg.to_string());
    // The port follows the last ':' outside an IPv6 address's brackets.
    let (host, port) = match reg.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && (!h.starts_with('[') || h.ends_with(']')) => (h, Some(p)),
        _ => (reg, None),
    };
    let port = match port {
        Some(p) if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) => return Err(bad()),
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        None => None,
    };
    let host = match url::Host::parse(host).map_err(|_| bad())? {
        url::Host::Domain(d) => {
            validate_host(&d).map_err(|_| bad())?;
            d
        }
        ip => ip.to_string(),
    };
    Ok(match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

fn validate_host(host: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::BadRegistry(host.to_string());
    // Hostname labels: alphanumerics and inner '-'; this also covers dotted IPv4 addresses.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), ReferenceError> {
    if repo.len() > MAX_NAME_LEN {
        return Err(ReferenceError::NameTooLong(repo.to_string()));
    }
    if repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ReferenceError::BadRepository(repo.to_string()))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn reg(s: &str) -> (String, String, Option<String>, Option<Digest>) {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Registry { registry, repository, tag, digest } => (registry, repository, tag, digest),
            other => panic!("expected registry ref, got {other:?}"),
        }
    }

    #[test]
    fn registry_hosts_have_one_spelling() {
        for (typed, canonical) in [
            ("LOCALHOST:45998", "localhost:45998"),
            ("LocalHost:45998", "localhost:45998"),
            ("127.1:45998", "127.0.0.1:45998"),
            ("2130706433:45998", "127.0.0.1:45998"),
            ("0x7f000001:45998", "127.0.0.1:45998"),
            ("0177.0.0.1:45998", "127.0.0.1:45998"),
            ("127.000.000.001:45998", "127.0.0.1:45998"),
            ("127.0.0.1:045998", ""),
            ("127.0.0.1:04599", "127.0.0.1:4599"),
            ("[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"),
            ("[::FFFF:127.0.0.1]:5000", "[::ffff:7f00:1]:5000"),
            ("Registry.Example.COM", "registry.example.com"),
            ("INDEX.DOCKER.IO", "docker.io"),
        ] {
            let got = ImageRef::parse(&format!("{typed}/tools/dangerous:v1"));
            if canonical.is_empty() {
                assert!(matches!(got, Err(ReferenceError::BadRegistry(_))), "{typed}: {got:?}");
                continue;
            }
            let want = if canonical == "docker.io" {
                "docker.io/tools/dangerous:v1".to_string()
            } else {
                format!("{canonical}/tools/dangerous:v1")
            };
            assert_eq!(got.unwrap().to_string(), want, "{typed}");
        }
        for bad in ["exa_mple.com:5000", "-x.com", "[::1:5000", "1.2.3.4.5.6:5000", "256.0.0.1:1"] {
            assert!(ImageRef::parse(&format!("{bad}/x")).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_hub_official_image() {
        let (r, repo, tag, d) = reg("busybox");
        assert_eq!(
            (r.as_str(), repo.as_str(), tag.as_deref(), d),
            ("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(ImageRef::parse("busybox").unwrap().to_string(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn docker_hub_user_image_with_tag() {
        let (r, repo, tag, _) = reg("user/app:1.2.3");
        assert_eq!((r.as_str(), repo.as_str(), tag.as_deref()), ("docker.io", "user/app", Some("1.2.3")));
        assert_eq!(ImageRef::parse("user/app").unwrap().to_string(), "docker.io/user/app:latest");
    }

    #[test]
    fn docker_hub_aliases_normalised() {
        assert_eq!(ImageRef::parse("index.docker.io/busybox").unwrap().to_string(), "docker.io/library/busybox:latest");
        assert_eq!(ImageRef::parse("docker.io/library/alpine:3").unwrap().to_string(), "docker.io/library/alpine:3");
        assert_eq!(ImageRef::parse("docker.io/alpine").unwrap().to_string(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn registry_detection() {
        let (r, repo, tag, _) = reg("quay.io/org/tool:v1");
        assert_eq!((r.as_str(), repo.as_str(), tag.as_deref()), ("quay.io", "org/tool", Some("v1")));
        let (r, repo, tag, _) = reg("localhost:5000/tool");
        assert_eq!((r.as_str(), repo.as_str(), tag.as_deref()), ("localhost:5000", "tool", Some("latest")));
        let (r, repo, _, _) = reg("localhost/tool");
        assert_eq!((r.as_str(), repo.as_str()), ("localhost", "tool"));
        let (r, repo, tag, _) = reg("registry:5000/a/b/c:t");
        assert_eq!((r.as_str(), repo.as_str(), tag.as_deref()), ("registry:5000", "a/b/c", Some("t")));
        let (r, _, _, _) = reg("10.0.0.1:443/x");
        assert_eq!(r, "10.0.0.1:443");
        // No dot, colon or localhost: a Docker Hub namespace, not a registry.
        let (r, repo, _, _) = reg("myregistry/x");
        assert_eq!((r.as_str(), repo.as_str()), ("docker.io", "myregistry/x"));
    }

    #[test]
    fn digest_only_has_no_default_tag() {
        let (r, repo, tag, d) = reg(&format!("busybox@{D}"));
        assert_eq!((r.as_str(), repo.as_str(), tag), ("docker.io", "library/busybox", None));
        assert_eq!(d.unwrap().to_string(), D);
        assert_eq!(
            ImageRef::parse(&format!("busybox@{D}")).unwrap().to_string(),
            format!("docker.io/library/busybox@{D}")
        );
    }

    #[test]
    fn tag_and_digest() {
        let s = format!("ghcr.io/o/r:v2@{D}");
        let (_, _, tag, d) = reg(&s);
        assert_eq!(tag.as_deref(), Some("v2"));
        assert!(d.is_some());
        assert_eq!(ImageRef::parse(&s).unwrap().to_string(), s);
    }

    #[test]
    fn display_roundtrips() {
        for s in ["busybox", "user/app:x", "quay.io:8443/a/b:c_d.e-f", "oci:/var/lib/img:v1", "oci:./layout"] {
            let r = ImageRef::parse(s).unwrap();
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{s}");
        }
    }

    #[test]
    fn repository_separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a0/b1/c2", "x"] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["a___b", "a..b", "-a", "a-", "_a", "a/", "/a", "a//b", "a.-b", "Busybox", "user/App"] {
            assert!(
                matches!(ImageRef::parse(bad), Err(ReferenceError::BadRepository(_))),
                "{bad}: {:?}",
                ImageRef::parse(bad)
            );
        }
    }

    #[test]
    fn bad_tags() {
        let long = format!("busybox:{}", "a".repeat(129));
        for bad in ["busybox:", "busybox:.x", "busybox:-x", "busybox:a+b", long.as_str()] {
            assert!(
                matches!(ImageRef::parse(bad), Err(ReferenceError::BadTag(_))),
                "{bad}: {:?}",
                ImageRef::parse(bad)
            );
        }
        let max = format!("busybox:_{}", "a".repeat(127));
        assert!(ImageRef::parse(&max).is_ok());
    }

    #[test]
    fn bad_digests() {
        assert!(matches!(
            ImageRef::parse("busybox@sha256:abc"),
            Err(ReferenceError::BadDigest(DigestError::BadHex(_)))
        ));
        assert!(matches!(ImageRef::parse("busybox@md5:abc"), Err(ReferenceError::BadDigest(_))));
        assert!(matches!(ImageRef::parse("busybox@"), Err(ReferenceError::BadDigest(_))));
        assert!(ImageRef::parse(&format!("busybox@{D}@{D}")).is_err());
    }

    #[test]
    fn bad_registries() {
        for bad in ["exa_mple.com/x", "host:port/x", "host:99999/x", "-a.com/x", "a..com/x", ":5000/x"] {
            assert!(
                matches!(ImageRef::parse(bad), Err(ReferenceError::BadRegistry(_))),
                "{bad}: {:?}",
                ImageRef::parse(bad)
            );
        }
    }

    #[test]
    fn empty_and_garbage() {
        assert_eq!(ImageRef::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(ImageRef::parse("bus box"), Err(ReferenceError::BadCharacter(_))));
        assert!(matches!(ImageRef::parse("a\nb"), Err(ReferenceError::BadCharacter(_))));
        assert!(ImageRef::parse(":tag").is_err());
        assert!(ImageRef::parse("@").is_err());
        let long = "a".repeat(256);
        assert!(matches!(ImageRef::parse(&long), Err(ReferenceError::NameTooLong(_))));
    }

    #[test]
    fn oci_layout() {
        assert_eq!(
            ImageRef::parse("oci:/var/lib/images/tools").unwrap(),
            ImageRef::Layout { path: "/var/lib/images/tools".into(), tag: None, dir: None }
        );
        assert_eq!(
            ImageRef::parse("oci:./tools:v1.0").unwrap(),
            ImageRef::Layout { path: "./tools".into(), tag: Some("v1.0".into()), dir: None }
        );
        // A colon inside a directory name is part of the path.
        assert_eq!(
            ImageRef::parse("oci:/a:b/c").unwrap(),
            ImageRef::Layout { path: "/a:b/c".into(), tag: None, dir: None }
        );
        assert_eq!(ImageRef::parse("oci:/x:t").unwrap().to_string(), "oci:/x:t");
        assert!(matches!(ImageRef::parse("oci:"), Err(ReferenceError::EmptyLayoutPath(_))));
        assert!(matches!(ImageRef::parse("oci::tag"), Err(ReferenceError::EmptyLayoutPath(_))));
        assert!(matches!(ImageRef::parse("oci:/x:bad+tag"), Err(ReferenceError::BadTag(_))));
    }
}
