//! What every server's TOML config file needs: read and parsed with unknown keys as errors, relative paths
//! resolved against the file's directory, durations like `"5s"` parsed with the key named in the error.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path} is not valid: {cause}")]
    Parse { path: PathBuf, cause: toml::de::Error },
    #[error("{path}: {key} is not a duration like \"5s\": {value}")]
    Duration { path: PathBuf, key: &'static str, value: String },
}

/// The file at `path`, parsed, and the directory its relative paths are relative to (canonical where it can be).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<(T, PathBuf), FileError> {
    let text = std::fs::read_to_string(path).map_err(|cause| FileError::Read { path: path.into(), cause })?;
    let value = toml::from_str(&text).map_err(|cause| FileError::Parse { path: path.into(), cause })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    Ok((value, base))
}

/// The duration `value` of `key` in the file at `path`.
pub fn duration(path: &Path, key: &'static str, value: &str) -> Result<Duration, FileError> {
    humantime::parse_duration(value).map_err(|_| FileError::Duration { path: path.into(), key, value: value.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        file: PathBuf,
        wait: String,
    }

    #[test]
    fn paths_durations_and_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("demo.toml");
        std::fs::write(&p, "file = \"a/b\"\nwait = \"1m 5s\"\n").unwrap();
        let (demo, base) = read::<Demo>(&p).unwrap();
        assert_eq!(base.join(&demo.file), dir.path().canonicalize().unwrap().join("a/b"));
        assert_eq!(duration(&p, "wait", &demo.wait).unwrap(), Duration::from_secs(65));
        let e = duration(&p, "wait", "soon").unwrap_err().to_string();
        assert!(e.ends_with("demo.toml: wait is not a duration like \"5s\": soon"), "{e}");
        std::fs::write(&p, "file = \"a\"\nwait = \"1s\"\nextra = 1\n").unwrap();
        assert!(matches!(read::<Demo>(&p), Err(FileError::Parse { .. })));
        assert!(matches!(read::<Demo>(&dir.path().join("none")), Err(FileError::Read { .. })));
    }
}
