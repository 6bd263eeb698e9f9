//! `-e KEY[=VAL]` and `--env-file FILE`, as `docker exec` reads them.

use crate::failure::Failure;
use dcos_exec_proto::exit;
use std::path::PathBuf;

/// One entry: `KEY=VAL` as given, or `KEY` alone, which takes the local value (and is left out when the
/// variable is unset here, as docker does).
fn entry(
    raw: &str,
    local: &impl Fn(&str) -> Option<String>,
    whence: &str,
) -> Result<Option<(String, String)>, Failure> {
    let (key, val) = match raw.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (raw, None),
    };
    if key.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            format!("{whence}: {raw:?} has no variable name (expected KEY or KEY=VAL)"),
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(Failure::new(exit::USAGE, format!("{whence}: variable name {key:?} contains whitespace")));
    }
    Ok(val.or_else(|| local(key)).map(|v| (key.to_string(), v)))
}

/// The variables to send: every `--env-file` in order, then every `-e`, so a later one wins.
pub fn collect(
    files: &[PathBuf],
    flags: &[String],
    local: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Failure::new(exit::USAGE, format!("--env-file {}: {e}", f.display())))?;
        for (n, line) in text.lines().enumerate() {
            // Docker's rules: leading whitespace dropped, blank lines and `#` lines skipped, no quoting.
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let whence = format!("--env-file {} line {}", f.display(), n + 1);
            out.extend(entry(line, &local, &whence)?);
        }
    }
    for e in flags {
        out.extend(entry(e, &local, "-e")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_alone_take_the_local_value_and_flags_come_last() {
        let dir = std::env::temp_dir().join(format!("dcos-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(&f, "# comment\n\n  A=1\nB\nUNSET\nC=x=y\nD=\"q\"\n").unwrap();
        let local = |k: &str| (k == "B" || k == "E").then(|| format!("local-{k}"));
        let got = collect(std::slice::from_ref(&f), &["A=2".into(), "E".into(), "F".into()], local).unwrap();
        let want = [("A", "1"), ("B", "local-B"), ("C", "x=y"), ("D", "\"q\""), ("A", "2"), ("E", "local-E")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(collect(&[], &["=x".into()], |_| None).unwrap_err().exit, exit::USAGE);
        std::fs::write(&f, "BAD KEY=1\n").unwrap();
        let e = collect(&[f], &[], |_| None).unwrap_err();
        assert!(e.message.contains("line 1") && e.message.contains("whitespace"), "{}", e.message);
        assert!(collect(&[dir.join("missing")], &[], |_| None).unwrap_err().message.contains("--env-file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
