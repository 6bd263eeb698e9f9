//! Where the CLI finds the agent URL, the token and the TLS trust: flags, then `DCOS_*` variables, then the
//! config file `$XDG_CONFIG_HOME/dcos/dcos.toml` (section `[core]`, as the DC/OS CLI has it).

use serde::Deserialize;
use std::path::PathBuf;

/// How the server certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslVerify {
    /// The system's trusted roots.
    System,
    /// A PEM bundle of CA certificates.
    CaFile(PathBuf),
    /// No verification (`DCOS_SSL_VERIFY=false`): for experiments only.
    Off,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub ssl_verify: SslVerify,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    core: Core,
}

#[derive(Debug, Default, Deserialize)]
struct Core {
    dcos_url: Option<String>,
    dcos_acs_token: Option<String>,
    ssl_verify: Option<String>,
}

/// The config file path: `$XDG_CONFIG_HOME/dcos/dcos.toml`, else `~/.config/dcos/dcos.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dcos").join("dcos.toml"))
}

fn parse_verify(v: &str) -> SslVerify {
    match v.trim() {
        "false" | "False" | "0" | "no" => SslVerify::Off,
        "" | "true" | "True" | "1" | "yes" => SslVerify::System,
        path => SslVerify::CaFile(PathBuf::from(path)),
    }
}

/// Errors resolving settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no agent URL: set DCOS_URL, pass --url, or set core.dcos_url in {0}")]
    NoUrl(String),
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// Merges flags, environment and file, in that order of precedence.
pub fn resolve(url: Option<String>, token: Option<String>, verify: Option<String>) -> Result<Settings, ConfigError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let path = config_path();
    let file = match &path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError::File { path: p.display().to_string(), message: e.to_string() })?;
            toml::from_str::<File>(&text)
                .map_err(|e| ConfigError::File { path: p.display().to_string(), message: e.message().to_string() })?
        }
        _ => File::default(),
    };
    let url = url
        .or_else(|| env("DCOS_URL"))
        .or(file.core.dcos_url)
        .ok_or_else(|| ConfigError::NoUrl(path.map(|p| p.display().to_string()).unwrap_or_default()))?;
    let token = token.or_else(|| env("DCOS_ACS_TOKEN")).or(file.core.dcos_acs_token).map(|t| t.trim().to_string());
    let verify = verify.or_else(|| env("DCOS_SSL_VERIFY")).or(file.core.ssl_verify);
    Ok(Settings { url, token, ssl_verify: verify.as_deref().map(parse_verify).unwrap_or(SslVerify::System) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_verify_values() {
        assert_eq!(parse_verify("false"), SslVerify::Off);
        assert_eq!(parse_verify("true"), SslVerify::System);
        assert_eq!(parse_verify("/etc/ca.pem"), SslVerify::CaFile("/etc/ca.pem".into()));
    }
}
