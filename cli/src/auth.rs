//! `dcos auth login` and `dcos auth logout`: a token from the organisation's OpenID Connect issuer through the
//! OAuth 2.0 device authorization grant (RFC 8628), kept in the `[auth]` table of `dcos.toml` (mode 0600) with
//! its expiry and refresh token, and refreshed with that refresh token once it has expired. The token belongs to
//! the profile it was obtained in (`[auth] profile`; none: the default settings) and is never sent to the URL of
//! another profile.

use crate::failure::Failure;
use dcos_exec::{SslVerify, TlsOptions};
use dcos_exec_proto::exit;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stored token this close to its expiry is refreshed before use.
const EXPIRY_MARGIN: u64 = 5;
const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
const DEFAULT_SCOPE: &str = "openid profile email groups offline_access";
/// The longest wait for a sign-in an issuer can ask for (`expires_in` of the device authorization).
const MAX_SIGN_IN: u64 = 3600;
/// The longest pause between polls an issuer can ask for (`interval`, raised by `slow_down`).
const MAX_INTERVAL: u64 = 60;

/// `[auth]` of dcos.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Issuer URL (https).
    pub issuer: Option<String>,
    /// OAuth client id registered with the issuer for the CLI.
    pub client_id: Option<String>,
    /// PEM CA file for the issuer's TLS; the system's roots when absent. Relative to dcos.toml's directory.
    pub ca_file: Option<PathBuf>,
    /// Scopes asked for.
    pub scope: Option<String>,
    /// Which token of the answer is sent to agents: `id_token` (default) or `access_token`.
    pub use_token: Option<String>,
    /// The stored token, its expiry (Unix seconds) and refresh token, written by `dcos auth login`.
    pub token: Option<String>,
    pub expires_at: Option<u64>,
    pub refresh_token: Option<String>,
    /// The profile the token was obtained in (`dcos --profile NAME auth login`); absent: the default settings.
    pub profile: Option<String>,
}

#[derive(Deserialize, Default)]
struct FileAuth {
    #[serde(default)]
    auth: AuthSection,
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure::new(exit::FAILED, msg)
}

fn login_required(msg: impl std::fmt::Display) -> Failure {
    Failure::new(exit::UNAUTHENTICATED, format!("login required: {msg}; run 'dcos auth login'"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn config_file() -> Result<PathBuf, Failure> {
    dcos_exec::config::config_path().ok_or_else(|| fail("no config file location: set HOME or XDG_CONFIG_HOME"))
}

fn read_text(path: &Path) -> Result<String, Failure> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(fail(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The `[auth]` table of the config file (empty when there is none).
pub fn stored() -> Result<AuthSection, Failure> {
    let path = config_file()?;
    let text = read_text(&path)?;
    let f: FileAuth =
        toml::from_str(&text).map_err(|e| fail(format!("config file {}: {}", path.display(), e.message())))?;
    Ok(f.auth)
}

/// Sets (`Some`) or removes (`None`) keys of `[auth]`, keeping the rest of the file as it was, and writes it
/// with mode 0600 (it holds credentials) through a rename, so a crash never leaves half a file.
fn update(changes: &[(&str, Option<toml_edit::Item>)]) -> Result<PathBuf, Failure> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = config_file()?;
    let text = read_text(&path)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e| fail(format!("config file {}: {e}", path.display())))?;
    let table = doc
        .entry("auth")
        .or_insert_with(toml_edit::table)
        .as_table_mut()
        .ok_or_else(|| fail(format!("config file {}: `auth` is not a table", path.display())))?;
    for (k, v) in changes {
        match v {
            Some(item) => {
                table.insert(k, item.clone());
            }
            None => {
                table.remove(k);
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".dcos.toml.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(doc.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

fn s(v: &str) -> Option<toml_edit::Item> {
    Some(toml_edit::value(v))
}

/// Options of `dcos auth login`; what is not given comes from `[auth]`.
pub struct LoginArgs {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub scope: Option<String>,
    /// The profile selected for the login (`--profile`, else `DCOS_PROFILE`): the only one the token is sent for.
    pub profile: Option<String>,
}

/// The issuer's endpoints, from its discovery document.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_expires_in() -> u64 {
    600
}
fn default_interval() -> u64 {
    5
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    id_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The issuer, as `[auth]` and the flags name it.
struct Issuer {
    url: String,
    client_id: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Issuer {
    fn new(url: String, client_id: String, ca_file: Option<&Path>) -> Result<Issuer, Failure> {
        if !url.starts_with("https://") {
            return Err(fail(format!("issuer {url:?} must be an https URL")));
        }
        let verify = ca_file.map(|p| SslVerify::CaFile(p.into())).unwrap_or(SslVerify::System);
        Ok(Issuer {
            url,
            client_id,
            tls: Arc::new(dcos_exec::client_config(&TlsOptions { verify, origin: dcos_exec::Origin::Api })?),
        })
    }

    async fn discover(&self) -> Result<Discovery, Failure> {
        let url = format!("{}/.well-known/openid-configuration", self.url.trim_end_matches('/'));
        let (status, body) = request(&self.tls, &url, None).await?;
        if status != 200 {
            return Err(fail(format!("issuer discovery {url}: HTTP {status}")));
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| fail(format!("issuer discovery {url}: {e}")))?;
        if d.issuer != self.url {
            return Err(fail(format!("issuer discovery {url} names another issuer: {:?}", d.issuer)));
        }
        Ok(d)
    }

    /// POSTs a form to the token endpoint: the tokens, or the OAuth error code and description.
    async fn token(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<Result<TokenAnswer, OAuthError>, Failure> {
        let (status, body) = request(&self.tls, endpoint, Some(form)).await?;
        if status == 200 {
            return serde_json::from_slice(&body)
                .map(Ok)
                .map_err(|e| fail(format!("token endpoint {endpoint}: bad answer: {e}")));
        }
        serde_json::from_slice::<OAuthError>(&body)
            .map(Err)
            .map_err(|_| fail(format!("token endpoint {endpoint}: HTTP {status}")))
    }
}

/// The `application/x-www-form-urlencoded` body of `form`.
fn form_body(form: &[(&str, &str)]) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    form.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, SET),
                percent_encoding::utf8_percent_encode(v, SET)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One HTTPS request (GET, or POST of a form), bounded in time and size.
async fn request(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    form: Option<&[(&str, &str)]>,
) -> Result<(u16, Vec<u8>), Failure> {
    tokio::time::timeout(Duration::from_secs(20), request_inner(tls, url, form))
        .await
        .map_err(|_| Failure::new(exit::UNREACHABLE, format!("{url}: timed out")))?
}

async fn request_inner(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    form: Option<&[(&str, &str)]>,
) -> Result<(u16, Vec<u8>), Failure> {
    let uri: http::Uri = url.parse().map_err(|_| fail(format!("{url:?} is not a URL")))?;
    if uri.scheme_str() != Some("https") {
        return Err(fail(format!("{url}: only https is accepted")));
    }
    let host = uri.host().ok_or_else(|| fail(format!("{url}: no host")))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name =
        rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| fail(format!("{url}: bad host name")))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Failure::new(exit::UNREACHABLE, format!("cannot reach the issuer at {url}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| {
        Failure::new(exit::TLS, format!("TLS with the issuer at {url} failed: {e} (CA: [auth] ca_file or --ca-file)"))
    })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| fail(format!("{url}: {e}")))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json");
    let req = match form {
        Some(f) => req
            .method(http::Method::POST)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form_body(f)))),
        None => req.method(http::Method::GET).body(Full::new(Bytes::new())),
    }
    .map_err(|e| fail(format!("{url}: {e}")))?;
    let resp = send.send_request(req).await.map_err(|e| fail(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| fail(format!("{url}: reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// `exp` of a JWT, read without verifying (only to know when to refresh; the agent verifies).
fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_u64()
}

/// Picks the configured token of an answer and stores it with its expiry and refresh token.
fn store(answer: TokenAnswer, use_token: &str, old_refresh: Option<&str>) -> Result<(String, u64), Failure> {
    let token = match use_token {
        "access_token" => answer.access_token,
        _ => answer.id_token,
    }
    .ok_or_else(|| fail(format!("the issuer's answer holds no {use_token}")))?;
    let expires_at = jwt_exp(&token).or(answer.expires_in.map(|s| now().saturating_add(s))).unwrap_or(0);
    let refresh = answer.refresh_token.as_deref().or(old_refresh);
    update(&[
        ("token", s(&token)),
        ("expires_at", Some(toml_edit::value(i64::try_from(expires_at).unwrap_or(i64::MAX)))),
        ("refresh_token", refresh.and_then(s)),
    ])?;
    Ok((token, expires_at))
}

fn use_token(a: &AuthSection) -> Result<&str, Failure> {
    match a.use_token.as_deref().unwrap_or("id_token") {
        t @ ("id_token" | "access_token") => Ok(t),
        other => Err(fail(format!("[auth] use_token must be id_token or access_token, not {other:?}"))),
    }
}

/// The issuer's `expires_in` and `interval`, bounded: a huge number must neither overflow nor make the CLI
/// wait for ever. The longest wait for the sign-in, and the seconds between polls.
fn bounded(expires_in: u64, interval: u64) -> (Duration, u64) {
    (Duration::from_secs(expires_in.clamp(1, MAX_SIGN_IN)), interval.clamp(1, MAX_INTERVAL))
}

/// The interval after a `slow_down` (RFC 8628 3.5: 5 s longer), bounded.
fn slower(interval: u64) -> u64 {
    interval.saturating_add(5).min(MAX_INTERVAL)
}

/// `dcos auth login`: the device flow, start to end.
pub async fn login(args: LoginArgs) -> Result<i32, Failure> {
    let cfg = stored()?;
    let use_token = use_token(&cfg)?.to_string();
    let url = args.issuer.or(cfg.issuer).ok_or_else(|| {
        Failure::new(exit::USAGE, "no issuer: pass --issuer URL or set issuer in the [auth] table of dcos.toml")
    })?;
    let client_id = args.client_id.or(cfg.client_id).ok_or_else(|| {
        Failure::new(exit::USAGE, "no client id: pass --client-id ID or set client_id in the [auth] table of dcos.toml")
    })?;
    // A --ca-file path is relative to where dcos runs; one from the file, to the file. Stored absolute, so that
    // later refreshes find it from any directory.
    let config = config_file()?;
    let ca_file = match args.ca_file {
        Some(p) => Some(std::path::absolute(&p).map_err(|e| fail(format!("--ca-file {}: {e}", p.display())))?),
        None => cfg.ca_file.map(|p| dcos_exec::config::beside(&config, &p)),
    };
    let scope = args.scope.or(cfg.scope).unwrap_or_else(|| DEFAULT_SCOPE.into());
    let issuer = Issuer::new(url, client_id, ca_file.as_deref())?;
    let d = issuer.discover().await?;
    let device_endpoint = d
        .device_authorization_endpoint
        .ok_or_else(|| fail(format!("issuer {} offers no device authorization endpoint", issuer.url)))?;
    let (status, body) =
        request(&issuer.tls, &device_endpoint, Some(&[("client_id", &issuer.client_id), ("scope", &scope)])).await?;
    if status != 200 {
        let why =
            serde_json::from_slice::<OAuthError>(&body).map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(Failure::new(exit::UNAUTHENTICATED, format!("the issuer refused the device authorization: {why}")));
    }
    let da: DeviceAuthorization =
        serde_json::from_slice(&body).map_err(|e| fail(format!("device authorization answer: {e}")))?;
    // The issuer's words go to the terminal: never its control characters.
    let shown = crate::failure::printable;
    eprintln!("To sign in, open {} and enter the code {}", shown(&da.verification_uri), shown(&da.user_code));
    if let Some(c) = &da.verification_uri_complete {
        eprintln!("(or open {})", shown(c));
    }
    eprintln!("Waiting for the sign-in to be approved...");

    let (sign_in, mut interval) = bounded(da.expires_in, da.interval);
    let start = tokio::time::Instant::now();
    let deadline = start.checked_add(sign_in).unwrap_or(start);
    let answer = loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline {
            return Err(login_required("the sign-in code expired before it was approved"));
        }
        let form =
            [("grant_type", GRANT_DEVICE_CODE), ("device_code", &da.device_code), ("client_id", &issuer.client_id)];
        match issuer.token(&d.token_endpoint, &form).await? {
            Ok(t) => break t,
            Err(e) => match e.error.as_str() {
                "authorization_pending" => {}
                // RFC 8628 3.5: every later poll waits 5 s longer.
                "slow_down" => interval = slower(interval),
                "access_denied" => return Err(Failure::new(exit::UNAUTHENTICATED, "sign-in was denied")),
                "expired_token" => return Err(login_required("the sign-in code expired before it was approved")),
                other => {
                    let desc = e.error_description.map(|d| format!(": {d}")).unwrap_or_default();
                    return Err(Failure::new(exit::UNAUTHENTICATED, format!("sign-in failed: {other}{desc}")));
                }
            },
        }
    };
    update(&[
        ("issuer", s(&issuer.url)),
        ("client_id", s(&issuer.client_id)),
        ("ca_file", ca_file.as_deref().and_then(|p| p.to_str()).and_then(s)),
        ("profile", args.profile.as_deref().and_then(s)),
    ])?;
    let (_, expires_at) = store(answer, &use_token, None)?;
    let path = config_file()?;
    let whose = match &args.profile {
        Some(p) => format!("profile {}", shown(p)),
        None => "the default settings (no profile)".into(),
    };
    eprintln!(
        "Logged in; the token is stored in {} for {whose} and expires in {}s",
        path.display(),
        expires_at.saturating_sub(now())
    );
    Ok(0)
}

/// `dcos auth logout`: forgets the stored token and refresh token (the issuer settings stay).
pub fn logout() -> Result<i32, Failure> {
    let had = stored()?.token.is_some();
    let path = update(&[("token", None), ("expires_at", None), ("refresh_token", None)])?;
    eprintln!("{} {}", if had { "Logged out: removed the token from" } else { "No stored token in" }, path.display());
    Ok(0)
}

/// Holds an exclusive lock on `dcos.toml`'s lock file: one `dcos` at a time refreshes, so parallel runs (a CI job
/// starting several) do not spend the same single-use refresh token twice.
fn lock() -> Result<nix::fcntl::Flock<std::fs::File>, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_file()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let lock_path = dir.join(".dcos.toml.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(format!("cannot lock {}: {e}", lock_path.display())))
}

/// The stored token when it is not (about to be) expired.
fn fresh(a: &AuthSection) -> Option<String> {
    let expires_at = a.expires_at.unwrap_or(u64::MAX);
    a.token.clone().filter(|_| now() + EXPIRY_MARGIN < expires_at)
}

/// Puts the token of `dcos auth login` into resolved settings when it belongs there: it was obtained in the
/// selected profile (or, both without a profile, for the default settings), and neither the `--acs-token`
/// flag, the profile's own `dcos_acs_token` nor `DCOS_ACS_TOKEN` set a token. It comes before `[core]`'s
/// `dcos_acs_token`. Another profile's URL never gets it.
pub async fn apply_login(settings: &mut dcos_exec::Settings) -> Result<(), Failure> {
    use dcos_exec::Origin;
    let weaker = match &settings.token_origin {
        Origin::Default => true,
        Origin::File { key, .. } => key.starts_with("core."),
        _ => false,
    };
    if !weaker {
        return Ok(());
    }
    if let Some(t) = current_token(settings.profile.as_deref()).await? {
        settings.token = Some(t);
        settings.token_origin = Origin::File { path: config_file()?, key: "auth.token".into() };
    } else if settings.token.is_none() && dcos_exec::config::config_path().is_some() {
        // A login made for another profile: say so, rather than only that there is no token.
        let a = stored()?;
        if a.token.is_some() {
            let name = |p: &Option<String>| match p {
                Some(p) => format!("profile {}", crate::failure::printable(p)),
                None => "the default settings (no profile)".into(),
            };
            let flag = settings.profile.as_ref().map(|p| format!(" --profile {p}")).unwrap_or_default();
            return Err(Failure::new(
                exit::UNAUTHENTICATED,
                format!(
                    "no bearer token for {}: the token of 'dcos auth login' belongs to {} and is never sent to \
                     another profile's agent; run 'dcos{flag} auth login', or set the profile's dcos_acs_token",
                    name(&settings.profile),
                    name(&a.profile)
                ),
            ));
        }
    }
    Ok(())
}

/// The token `dcos auth login` stored for `profile`, refreshed first when it has expired; `None` without a
/// login, or when the login was made in another profile.
async fn current_token(profile: Option<&str>) -> Result<Option<String>, Failure> {
    if dcos_exec::config::config_path().is_none() {
        return Ok(None);
    }
    let a = stored()?;
    if a.token.is_none() || a.profile.as_deref() != profile {
        return Ok(None);
    }
    if let Some(t) = fresh(&a) {
        return Ok(Some(t));
    }
    let _lock = lock()?;
    // Another `dcos` may have refreshed while this one waited for the lock.
    let a = stored()?;
    if let Some(t) = fresh(&a) {
        return Ok(Some(t));
    }
    let expires_at = a.expires_at.unwrap_or(0);
    let Some(refresh) = a.refresh_token.clone() else {
        return Err(login_required(format!(
            "the stored token expired at {expires_at} (Unix time) and there is no refresh token"
        )));
    };
    let (Some(url), Some(client_id)) = (a.issuer.clone(), a.client_id.clone()) else {
        return Err(login_required("the stored token expired and [auth] names no issuer or client_id"));
    };
    let use_token = use_token(&a)?.to_string();
    let config = config_file()?;
    let ca_file = a.ca_file.as_deref().map(|p| dcos_exec::config::beside(&config, p));
    let issuer = Issuer::new(url, client_id, ca_file.as_deref())?;
    let refreshing = |f: Failure| Failure::new(f.exit, format!("refreshing the expired token: {}", f.message));
    let d = issuer.discover().await.map_err(refreshing)?;
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", &issuer.client_id)];
    match issuer.token(&d.token_endpoint, &form).await.map_err(refreshing)? {
        Ok(answer) => Ok(Some(store(answer, &use_token, Some(&refresh))?.0)),
        Err(e) => {
            // A refresh token the issuer calls invalid (used, revoked, expired) is useless: drop it, so the next
            // run says the same at once. Other errors may pass; keep it for them.
            if e.error == "invalid_grant" {
                update(&[("refresh_token", None)])?;
            }
            Err(login_required(format!("the stored token expired and the issuer refused to refresh it ({})", e.error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_escaped_and_exp_is_read() {
        assert_eq!(form_body(&[("a b", "x&y=z"), ("c", "ü")]), "a%20b=x%26y%3Dz&c=%C3%BC");
        let payload = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, br#"{"exp":42}"#);
        assert_eq!(jwt_exp(&format!("h.{payload}.s")), Some(42));
        assert_eq!(jwt_exp("garbage"), None);
    }

    #[test]
    fn the_issuers_numbers_are_bounded() {
        assert_eq!(bounded(u64::MAX, u64::MAX), (Duration::from_secs(MAX_SIGN_IN), MAX_INTERVAL));
        assert_eq!(bounded(0, 0), (Duration::from_secs(1), 1));
        assert_eq!(bounded(600, 5), (Duration::from_secs(600), 5));
        assert_eq!(slower(5), 10);
        assert_eq!(slower(58), MAX_INTERVAL);
        assert_eq!(slower(u64::MAX), MAX_INTERVAL);
    }
}
