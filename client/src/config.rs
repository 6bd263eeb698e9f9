//! Where a client finds the agent URL, the token and the TLS trust: explicit values (the CLI's flags), then
//! the selected profile of `dcos.toml`, then the `DCOS_*` variables, then `[core]` of `dcos.toml`.
//!
//! The file is `$XDG_CONFIG_HOME/dcos/dcos.toml`, else `~/.config/dcos/dcos.toml` (`[core]` as the DC/OS CLI
//! has it). A profile is a `[profiles.NAME]` table with the same keys as `[core]`, selected by name
//! (`--profile`, else `DCOS_PROFILE`). Unknown keys are errors, so a typo never silently falls back to a default.
//! A relative CA path in the file (`ssl_verify`) is relative to the file's directory, wherever `dcos` runs.
//!
//! Two variables tune how long the client waits ([`Timeouts`]): `DCOS_REQUEST_TIMEOUT`, the seconds an agent may
//! take to answer a request once TLS is up (default 45: longer than a gateway's 30 s wait for the agent behind
//! it, so that the gateway's more precise refusal arrives first), and `DCOS_LIVENESS_TIMEOUT`, the seconds a
//! session may hear nothing at all from the agent (no output, no ping) before it counts as lost (default 60:
//! three of the agent's 20 s ping intervals).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the agent's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslVerify {
    /// The system's trusted roots.
    System,
    /// A PEM bundle of CA certificates.
    CaFile(PathBuf),
    /// No verification (`DCOS_SSL_VERIFY=false`): for experiments only.
    Off,
}

impl SslVerify {
    /// Parses a `DCOS_SSL_VERIFY` value: `true`/`false` (and their usual spellings) or a path to a CA bundle.
    pub fn parse(v: &str) -> SslVerify {
        match v.trim() {
            "false" | "False" | "0" | "no" => SslVerify::Off,
            "" | "true" | "True" | "1" | "yes" => SslVerify::System,
            path => SslVerify::CaFile(PathBuf::from(path)),
        }
    }
}

/// Where one setting came from, so that errors can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Given by the caller (the CLI's flag `--NAME`).
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A key of the config file: `[core]` or `[profiles.NAME]`.
    File {
        /// The file.
        path: PathBuf,
        /// The table and key, such as `profiles.prod.ssl_verify`.
        key: String,
    },
    /// Nothing set it: the default.
    Default,
    /// Set by the program through the library's API ([`TlsOptions::ca_file`] and the like).
    Api,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag --{name}"),
            Origin::Env(name) => write!(f, "variable {name}"),
            Origin::File { path, key } => write!(f, "key {key} in {}", path.display()),
            Origin::Default => write!(f, "the default"),
            Origin::Api => write!(f, "set by the program"),
        }
    }
}

/// How to trust the agent's TLS certificate, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The trust.
    pub verify: SslVerify,
    /// Where `verify` was set (named in TLS errors).
    pub origin: Origin,
}

impl TlsOptions {
    /// Trust the CA certificates of a PEM bundle.
    pub fn ca_file(path: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions { verify: SslVerify::CaFile(path.into()), origin: Origin::Api }
    }

    /// Trust the system's roots.
    pub fn system() -> TlsOptions {
        TlsOptions { verify: SslVerify::System, origin: Origin::Api }
    }

    /// No verification at all: anyone on the path can read the token and the session.
    pub fn insecure() -> TlsOptions {
        TlsOptions { verify: SslVerify::Off, origin: Origin::Api }
    }
}

/// How long a client waits for an agent that stopped answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the end of the TLS handshake to the response headers of a request (a task list, the exec upgrade);
    /// also the longest pause while a body arrives.
    pub request: Duration,
    /// The longest a session may hear nothing from the agent, not even a ping (the agent pings every 20 s).
    pub liveness: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { request: Duration::from_secs(45), liveness: Duration::from_secs(60) }
    }
}

/// Resolved settings: what [`crate::Client::from_settings`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent's `https://` URL.
    pub url: String,
    /// Where `url` was set (named in errors about it).
    pub url_origin: Origin,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Where `token` was set (named when it is malformed).
    pub token_origin: Origin,
    /// The TLS trust.
    pub tls: TlsOptions,
    /// The config file that was consulted (whether or not it exists), for messages.
    pub config_file: Option<PathBuf>,
    /// The profile in use, if any.
    pub profile: Option<String>,
    /// How long to wait for a silent agent (`DCOS_REQUEST_TIMEOUT`, `DCOS_LIVENESS_TIMEOUT`).
    pub timeouts: Timeouts,
}

/// Values given explicitly (the CLI's flags); each wins over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--url`.
    pub url: Option<String>,
    /// `--acs-token`.
    pub token: Option<String>,
    /// `--ssl-verify`.
    pub ssl_verify: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    core: Section,
    #[serde(default)]
    profiles: BTreeMap<String, Section>,
    /// `dcos auth login`'s table: read and written by the CLI's login, not here.
    #[serde(default)]
    #[allow(dead_code)]
    auth: Option<toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    dcos_url: Option<String>,
    dcos_acs_token: Option<String>,
    ssl_verify: Option<String>,
}

/// Errors resolving settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No URL anywhere.
    #[error("no agent URL: set the DCOS_URL variable, pass the --url flag, or set dcos_url under [core] in {0}")]
    NoUrl(String),
    /// The config file cannot be read or parsed (unknown keys included).
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with the line and the key.
        message: String,
    },
    /// The selected profile is not in the file.
    #[error("profile {name:?} (from the {origin}) is not in {path}; it has: {known}")]
    NoProfile {
        /// The profile asked for.
        name: String,
        /// Where it was asked for.
        origin: Origin,
        /// The config file.
        path: String,
        /// The profiles the file has.
        known: String,
    },
    /// A variable holds a value of the wrong form.
    #[error("variable {name}={value:?}: {why}")]
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        why: &'static str,
    },
}

/// The config file path: `$XDG_CONFIG_HOME/dcos/dcos.toml`, else `~/.config/dcos/dcos.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dcos").join("dcos.toml"))
}

fn load(path: &Path) -> Result<File, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str::<File>(&text).map_err(|e| {
        // One line: toml's own Display draws the source snippet over several.
        let line =
            e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1);
        err(match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_string(),
        })
    })
}

/// Resolves the settings from `over`, the environment and the config file.
pub fn resolve(over: Overrides) -> Result<Settings, ConfigError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let path = config_path();
    let file = match &path {
        Some(p) if p.exists() => load(p)?,
        _ => File::default(),
    };
    let shown = || path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "dcos.toml".into());
    let (profile_name, profile_origin) = match (over.profile, env("DCOS_PROFILE")) {
        (Some(p), _) => (Some(p), Origin::Flag("profile")),
        (None, Some(p)) => (Some(p), Origin::Env("DCOS_PROFILE")),
        (None, None) => (None, Origin::Default),
    };
    let profile = match &profile_name {
        Some(name) => Some(file.profiles.get(name).cloned().ok_or_else(|| ConfigError::NoProfile {
            name: name.clone(),
            origin: profile_origin,
            path: shown(),
            known: if file.profiles.is_empty() {
                "no [profiles.NAME] table".into()
            } else {
                file.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })?),
        None => None,
    };
    let file_origin =
        |table: &str, key: &str| Origin::File { path: path.clone().unwrap_or_default(), key: format!("{table}.{key}") };
    let profile_table = profile_name.as_ref().map(|n| format!("profiles.{n}")).unwrap_or_default();
    // One setting: the flag, then the profile, then the variable, then [core].
    let pick = |flag: Option<String>,
                flag_name: &'static str,
                get: fn(&Section) -> Option<String>,
                var: &'static str,
                key: &str|
     -> Option<(String, Origin)> {
        flag.map(|v| (v, Origin::Flag(flag_name)))
            .or_else(|| profile.as_ref().and_then(get).map(|v| (v, file_origin(&profile_table, key))))
            .or_else(|| env(var).map(|v| (v, Origin::Env(var))))
            .or_else(|| get(&file.core).map(|v| (v, file_origin("core", key))))
    };
    let (url, url_origin) = pick(over.url, "url", |s| s.dcos_url.clone(), "DCOS_URL", "dcos_url")
        .ok_or_else(|| ConfigError::NoUrl(shown()))?;
    // A token is a secret of the cluster it was written for: [core]'s is not sent to a profile that names a URL
    // of its own (another cluster, whose agent could replay it against [core]'s).
    let foreign =
        profile.as_ref().and_then(|p| p.dcos_url.as_ref()).is_some_and(|u| file.core.dcos_url.as_ref() != Some(u));
    let (token, token_origin) =
        match pick(over.token, "acs-token", |s| s.dcos_acs_token.clone(), "DCOS_ACS_TOKEN", "dcos_acs_token") {
            Some((_, Origin::File { key, .. })) if foreign && key.starts_with("core.") => (None, Origin::Default),
            Some((t, o)) if !t.trim().is_empty() => (Some(t.trim().to_string()), o),
            _ => (None, Origin::Default),
        };
    let tls = match pick(over.ssl_verify, "ssl-verify", |s| s.ssl_verify.clone(), "DCOS_SSL_VERIFY", "ssl_verify") {
        Some((v, origin)) => {
            let verify = match (SslVerify::parse(&v), &origin) {
                // A path written in the file means a file next to it, not one in whatever directory dcos runs in.
                (SslVerify::CaFile(p), Origin::File { path, .. }) => SslVerify::CaFile(beside(path, &p)),
                (v, _) => v,
            };
            TlsOptions { verify, origin }
        }
        None => TlsOptions { verify: SslVerify::System, origin: Origin::Default },
    };
    let timeouts = Timeouts {
        request: seconds("DCOS_REQUEST_TIMEOUT")?.unwrap_or(Timeouts::default().request),
        liveness: seconds("DCOS_LIVENESS_TIMEOUT")?.unwrap_or(Timeouts::default().liveness),
    };
    Ok(Settings { url, url_origin, token, token_origin, tls, config_file: path, profile: profile_name, timeouts })
}

/// `p` as written in the config file `file`: a relative path is relative to the file's directory.
pub fn beside(file: &Path, p: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// A variable holding a positive number of seconds (fractions allowed), if set.
fn seconds(name: &'static str) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = std::env::var(name).ok().filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map(Some)
        .ok_or(ConfigError::BadVariable { name, value, why: "expected a positive number of seconds" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_verify_values() {
        assert_eq!(SslVerify::parse("false"), SslVerify::Off);
        assert_eq!(SslVerify::parse("true"), SslVerify::System);
        assert_eq!(SslVerify::parse("/etc/ca.pem"), SslVerify::CaFile("/etc/ca.pem".into()));
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        // One variable per case: tests of this module run in threads of one process.
        let var = "DCOS_LIVENESS_TIMEOUT";
        for (value, want) in
            [("2.5", Some(Duration::from_millis(2500))), ("", None), (" 3 ", Some(Duration::from_secs(3)))]
        {
            std::env::set_var(var, value);
            assert_eq!(seconds(var).unwrap(), want, "{value:?}");
        }
        for bad in ["0", "-1", "ten", "NaN", "inf", "1e30"] {
            std::env::set_var(var, bad);
            let e = seconds(var).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("positive number of seconds"), "{bad}: {e}");
        }
        std::env::remove_var(var);
    }

    #[test]
    fn relative_paths_in_the_file_are_beside_it() {
        let f = Path::new("/home/u/.config/dcos/dcos.toml");
        assert_eq!(beside(f, Path::new("ca.pem")), PathBuf::from("/home/u/.config/dcos/ca.pem"));
        assert_eq!(beside(f, Path::new("../x/ca.pem")), PathBuf::from("/home/u/.config/dcos/../x/ca.pem"));
        assert_eq!(beside(f, Path::new("/etc/ca.pem")), PathBuf::from("/etc/ca.pem"));
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let dir = std::env::temp_dir().join(format!("dcos-exec-client-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("dcos.toml");
        std::fs::write(&p, "[core]\ndcos_url = \"https://a\"\n\n[profiles.b]\ndcos_ur = \"https://b\"\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("dcos_ur"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::write(&p, "[core]\ndcos_url = \"https://a\"\n[marathon]\nurl = 1\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("marathon"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
