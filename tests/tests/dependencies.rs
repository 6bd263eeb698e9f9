//! The locked dependency tree: no crate with a known open advisory, and no crate that needs a newer Rust than
//! the workspace's `rust-version`. Needs no root; `cargo-audit` cannot reach its database everywhere, so the
//! advisories that concern this tree are listed here.

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `(major, minor, patch)` of "1.88" or "1.88.0" (pre-release and build suffixes ignored).
fn version(v: &str) -> (u64, u64, u64) {
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut it = core.split('.').map(|p| p.parse::<u64>().unwrap_or_else(|_| panic!("version {v:?}")));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// `(name, version)` of every package in Cargo.lock.
fn locked() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace().join("Cargo.lock")).expect("Cargo.lock");
    let mut out = Vec::new();
    for block in text.split("[[package]]").skip(1) {
        let field =
            |k: &str| block.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().trim_matches('"').to_string());
        if let (Some(n), Some(v)) = (field("name = "), field("version = ")) {
            out.push((n, v));
        }
    }
    out
}

/// An advisory: crate, first affected version (`None`: all before the fix), first fixed version (`None`: no
/// fix), id.
type Advisory = (&'static str, Option<&'static str>, Option<&'static str>, &'static str);

/// Advisories that concern crates of this tree or crates it could plausibly pull in again.
const ADVISORIES: &[Advisory] = &[
    // Marvin attack: timing side channel in RSA decryption; no fixed release.
    ("rsa", None, None, "RUSTSEC-2023-0071"),
    // Potential unaligned read; unmaintained.
    ("atty", None, None, "RUSTSEC-2021-0145"),
    // Some AES functions may panic when overflow checking is enabled.
    ("ring", None, Some("0.17.12"), "RUSTSEC-2025-0009"),
    // Punycode labels accepted that should not be (host name confusion).
    ("idna", None, Some("1.0.0"), "RUSTSEC-2024-0421"),
    // Network-reachable panic in `Acceptor::accept`.
    ("rustls", Some("0.23.13"), Some("0.23.18"), "RUSTSEC-2024-0399"),
];

/// The advisory of `ADVISORIES` that applies to this crate version, if any.
fn advisory(name: &str, v: &str) -> Option<&'static str> {
    ADVISORIES
        .iter()
        .find(|(a, from, fixed, _)| {
            *a == name && from.is_none_or(|f| version(v) >= version(f)) && fixed.is_none_or(|f| version(v) < version(f))
        })
        .map(|(_, _, _, id)| *id)
}

#[test]
fn the_advisory_matcher_matches_affected_versions_only() {
    assert_eq!(advisory("rsa", "0.9.10"), Some("RUSTSEC-2023-0071"));
    assert_eq!(advisory("ring", "0.17.11"), Some("RUSTSEC-2025-0009"));
    assert_eq!(advisory("ring", "0.17.12"), None);
    assert_eq!(advisory("rustls", "0.23.12"), None);
    assert_eq!(advisory("rustls", "0.23.17"), Some("RUSTSEC-2024-0399"));
    assert_eq!(advisory("rustls", "0.23.18"), None);
    assert_eq!(advisory("rsa-like", "0.1.0"), None);
}

#[test]
fn no_locked_crate_has_a_known_open_advisory() {
    let lock = locked();
    assert!(lock.iter().any(|(n, _)| n == "ring"), "Cargo.lock was read");
    let hits: Vec<String> =
        lock.iter().filter_map(|(name, v)| advisory(name, v).map(|id| format!("{name} {v} ({id})"))).collect();
    assert!(hits.is_empty(), "Cargo.lock holds crates with open advisories: {hits:?}");
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_declared() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let o = Command::new(cargo)
        .current_dir(workspace())
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", &target])
        .output()
        .expect("running cargo metadata");
    assert!(o.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let members: Vec<&str> = m["workspace_members"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let resolved: Vec<&str> =
        m["resolve"]["nodes"].as_array().unwrap().iter().filter_map(|n| n["id"].as_str()).collect();
    let packages = m["packages"].as_array().unwrap();
    let declared: Vec<&str> = packages
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().unwrap_or("")))
        .map(|p| p["rust_version"].as_str().expect("every workspace crate declares rust-version"))
        .collect();
    let msrv = declared.iter().map(|v| version(v)).min().unwrap();
    let mut newer: Vec<String> = packages
        .iter()
        .filter(|p| resolved.contains(&p["id"].as_str().unwrap_or("")))
        .filter_map(|p| Some((p["name"].as_str()?, p["version"].as_str()?, p["rust_version"].as_str()?)))
        .filter(|(_, _, rv)| version(rv) > msrv)
        .map(|(n, v, rv)| format!("{n} {v} needs {rv}"))
        .collect();
    newer.sort();
    assert!(newer.is_empty(), "the workspace declares rust-version {msrv:?}, but: {newer:?}");
}
