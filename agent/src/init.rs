//! `dcos-exec-agent init`: writes a CA, a server certificate, a token key pair, a config, an ACL and an admin token.

use crate::config::AgentConfig;
use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The CA outlives many server certificates: re-issuing the server certificate must not mean redistributing it.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A server certificate is re-issued (`init --force` or an operator's CA) well within this.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start a little in the past, so a client whose clock lags accepts a fresh one.
const BACKDATE: Duration = Duration::from_secs(300);

/// Sets the validity window `[now - BACKDATE, now + lifetime]`.
fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

/// Options of `init`.
pub struct InitOptions<'a> {
    pub dir: &'a Path,
    pub listen: &'a str,
    pub admin: &'a str,
    pub ttl: Duration,
    pub force: bool,
}

/// Writes `data` to `path` (created with `mode`, or truncated).
pub(crate) fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", path.display()))
}

/// Generates everything and returns the shell lines that configure the CLI.
pub fn init(o: &InitOptions<'_>) -> Result<String> {
    let dir = o.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    if dir.join("agent.toml").exists() && !o.force {
        bail!("{} already holds an agent.toml (use --force to overwrite)", dir.display());
    }
    let host = o.listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(o.listen).trim_matches(['[', ']']);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dcos-exec agent CA");
    ca_params.distinguished_name = dn;
    validity(&mut ca_params, CA_LIFETIME);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !host.is_empty() && host != "0.0.0.0" && host != "::" && !sans.iter().any(|s| s == host) {
        sans.push(host.to_string());
    }
    if let Ok(h) = nix::unistd::gethostname() {
        if let Some(h) = h.to_str().filter(|h| !h.is_empty() && !sans.iter().any(|s| s == h)) {
            sans.push(h.to_string());
        }
    }
    let mut srv_params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dcos-exec agent");
    srv_params.distinguished_name = dn;
    validity(&mut srv_params, SERVER_LIFETIME);
    let srv_key = KeyPair::generate()?;
    let srv_cert = srv_params.signed_by(&srv_key, &issuer)?;

    let token_key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;

    write(&dir.join("ca.crt"), ca_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join("server.crt"), srv_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("server.key"), srv_key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join("token-signing.key"), token_key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join("token-signing.pub"), token_key.public_key_pem().as_bytes(), 0o644)?;

    let cfg = AgentConfig::generated(o.listen.to_string(), Some("token-signing.key".into()));
    let mut text = String::from("# dcos-exec agent configuration; every key is documented in the README.\n");
    text.push_str(&toml::to_string_pretty(&cfg)?);
    write(&dir.join("agent.toml"), text.as_bytes(), 0o644)?;

    let acl = format!(
        "# Deny by default; each [[rule]] grants (or, with effect = \"deny\", refuses) actions.\n\
         [[rule]]\nsubjects = [\"user:{}\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n",
        o.admin
    );
    write(&dir.join("acl.toml"), acl.as_bytes(), 0o644)?;

    let token = dcos_exec_access::auth::mint(
        token_key.serialize_pem().as_bytes(),
        &cfg.issuer,
        &cfg.audience,
        o.admin,
        &[],
        o.ttl,
    )?;
    write(&dir.join("admin.token"), token.as_bytes(), 0o600)?;

    let url_host = if host.is_empty() || host == "0.0.0.0" || host == "::" { "localhost" } else { host };
    let url_host = if url_host.contains(':') { format!("[{url_host}]") } else { url_host.to_string() };
    let port = o.listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("7443");
    Ok(format!(
        "export DCOS_URL=https://{url_host}:{port}\nexport DCOS_SSL_VERIFY={}\nexport DCOS_ACS_TOKEN=\"$(cat {})\"\n",
        dir.join("ca.crt").display(),
        dir.join("admin.token").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity_of(pem_path: &Path) -> (i64, i64, bool) {
        let pem = std::fs::read(pem_path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp(), cert.is_ca())
    }

    #[test]
    fn certificates_have_bounded_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let now = i64::try_from(now).unwrap();
        let o = InitOptions {
            dir: dir.path(),
            listen: "127.0.0.1:7443",
            admin: "admin",
            ttl: Duration::from_secs(60),
            force: false,
        };
        init(&o).unwrap();
        let day = 24 * 3600;
        let (nb, na, ca) = validity_of(&dir.path().join("ca.crt"));
        assert!(ca);
        assert!((now - 600..=now).contains(&nb), "CA not_before {nb} vs now {now}");
        assert!(
            (na - now - i64::try_from(CA_LIFETIME.as_secs()).unwrap()).abs() < day,
            "CA valid for about 10 years: {}",
            na - now
        );
        let (nb, na, ca) = validity_of(&dir.path().join("server.crt"));
        assert!(!ca);
        assert!((now - 600..=now).contains(&nb), "server not_before {nb} vs now {now}");
        assert!(
            (na - now - i64::try_from(SERVER_LIFETIME.as_secs()).unwrap()).abs() < day,
            "server valid for about a year: {}",
            na - now
        );
    }
}
