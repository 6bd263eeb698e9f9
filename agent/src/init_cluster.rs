//! `dcos-exec-agent init cluster`: everything a cluster needs, made on one machine and then copied to each
//! host: a cluster CA (agents', gateways' and etcd members' server certificates, etcd client certificates), a
//! separate gateway CA (the gateways' client certificates, the only ones an agent accepts relayed sessions
//! from), the token key pair, and `gateway.toml` and one `agent.toml` per agent.
//!
//! ```text
//! DIR/pki/              cluster-ca.{crt,key} gateway-ca.{crt,key} token-signing.{key,pub} acl-signing.{key,pub}
//!                       (stays with the operator)
//! DIR/gateway/          gateway.toml acl.toml server.* client.* etcd-client.* ca.crt token-signing.pub acl-signing.pub
//! DIR/agents/NAME/      agent.toml acl.toml server.* etcd-client.* ca.crt gateway-ca.crt token-signing.pub
//!                       acl-signing.pub
//! DIR/etcd/             ca.crt and MEMBER.{crt,key} for each --etcd URL (server and peer certificate)
//! DIR/admin.token
//! ```
//!
//! The two CAs are kept apart on purpose: an etcd client certificate (also a TLS client certificate) must not
//! be able to pose as a gateway. Every host holds an etcd client certificate, so what etcd holds is only
//! trusted where it is checked: the ACL in etcd must be signed with the ACL-signing key (`acl push`), and each
//! agent's server certificate names its node (`urn:dcos-exec:node:NAME`), which gateways check before they
//! relay a session to the URL of a node record.

use crate::config::AgentConfig;
use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Options of `init cluster`.
pub struct ClusterOptions<'a> {
    pub dir: &'a Path,
    /// The gateways' host name or address (users and agents reach it there).
    pub gateway: &'a str,
    /// Port the gateway listens on.
    pub gateway_port: u16,
    /// `NAME=URL` of each agent: the URL gateways reach it under.
    pub agents: &'a [String],
    /// Client URLs of the etcd members.
    pub etcd: &'a [String],
    pub admin: &'a str,
    pub ttl: Duration,
    pub force: bool,
}

fn validity(p: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(300)).into();
    p.not_after = (now + lifetime).into();
}

fn ca(cn: &str) -> Result<(rcgen::Certificate, Issuer<'static, KeyPair>, KeyPair)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    validity(&mut p, crate::init::CA_LIFETIME);
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    let copy = KeyPair::from_pem(&key.serialize_pem())?;
    Ok((cert, Issuer::new(p, copy), key))
}

/// A leaf certificate for `cn` with `sans` (and the identity of `node`, for an agent), for the given purposes.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    node: Option<&str>,
    purposes: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String)> {
    let mut p = CertificateParams::new(sans)?;
    if let Some(node) = node {
        let uri = dcos_exec_cluster::identity::node_uri(node);
        p.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = purposes;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut p, crate::init::SERVER_LIFETIME);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// [`crate::init::write`], creating the file's directory first.
fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    crate::init::write(path, data, mode)
}

fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> Result<()> {
    write(&dir.join(format!("{name}.crt")), pair.0.as_bytes(), 0o644)?;
    write(&dir.join(format!("{name}.key")), pair.1.as_bytes(), 0o600)
}

/// The host of a URL, without brackets.
fn host_of(url: &str) -> Result<String> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url:?} must start with https://");
    }
    let host = uri.host().with_context(|| format!("{url:?} has no host"))?;
    Ok(host.trim_matches(['[', ']']).to_string())
}

/// The subject alternative names of a server certificate for `host`.
fn sans(host: &str) -> Vec<String> {
    let mut s = vec![host.to_string()];
    for extra in ["localhost", "127.0.0.1"] {
        if !s.iter().any(|x| x == extra) {
            s.push(extra.to_string());
        }
    }
    s
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn etcd_table(header: &str, endpoints: &[String]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| toml_str(e)).collect();
    format!(
        "[{header}]\nendpoints = [{}]\nca_file = \"ca.crt\"\ncert_file = \"etcd-client.crt\"\nkey_file = \"etcd-client.key\"\n",
        eps.join(", ")
    )
}

/// Writes the cluster's set-up and returns the shell lines that point the CLI at the gateway.
pub fn init_cluster(o: &ClusterOptions<'_>) -> Result<String> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    if o.agents.is_empty() {
        bail!("name at least one agent: --agent NAME=https://HOST:PORT");
    }
    if o.etcd.is_empty() {
        bail!("name the etcd members: --etcd https://HOST:2379 (repeated)");
    }
    let mut agents = Vec::new();
    for a in o.agents {
        let (name, url) = a.split_once('=').with_context(|| format!("--agent {a:?}: expected NAME=URL"))?;
        if name.is_empty() || name.contains(['/', ' ']) {
            bail!("--agent {a:?}: the node name must be non-empty, without '/' or spaces");
        }
        agents.push((name.to_string(), url.to_string(), host_of(url)?));
    }
    std::fs::create_dir_all(o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let dir = std::fs::canonicalize(o.dir)?;
    if dir.join("gateway/gateway.toml").exists() && !o.force {
        bail!("{} already holds a cluster set-up (use --force to overwrite)", dir.display());
    }
    let pki = dir.join("pki");
    let (cluster_ca, cluster, cluster_key) = ca("dcos-exec cluster CA")?;
    let (gateway_ca, gateways, gateway_key) = ca("dcos-exec gateway CA")?;
    let token_key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    write(&pki.join("cluster-ca.crt"), cluster_ca.pem().as_bytes(), 0o644)?;
    write(&pki.join("cluster-ca.key"), cluster_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.join("gateway-ca.crt"), gateway_ca.pem().as_bytes(), 0o644)?;
    write(&pki.join("gateway-ca.key"), gateway_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.join("token-signing.key"), token_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.join("token-signing.pub"), token_key.public_key_pem().as_bytes(), 0o644)?;
    // Signs the ACL kept in etcd (`acl push`); only its public half leaves the operator.
    let acl_key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    write(&pki.join("acl-signing.key"), acl_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.join("acl-signing.pub"), acl_key.public_key_pem().as_bytes(), 0o644)?;
    let acl = format!(
        "# Deny by default; each [[rule]] grants (or, with effect = \"deny\", refuses) actions.\n\
         [[rule]]\nsubjects = [\"user:{}\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n",
        o.admin
    );
    let common = |d: &Path| -> Result<()> {
        write(&d.join("ca.crt"), cluster_ca.pem().as_bytes(), 0o644)?;
        write(&d.join("token-signing.pub"), token_key.public_key_pem().as_bytes(), 0o644)?;
        write(&d.join("acl-signing.pub"), acl_key.public_key_pem().as_bytes(), 0o644)?;
        write(&d.join("acl.toml"), acl.as_bytes(), 0o644)?;
        write_pair(d, "etcd-client", &leaf(&cluster, "etcd client", Vec::new(), None, vec![ClientAuth])?)
    };

    // The gateway: a server certificate for users, a client certificate of the gateway CA for agents.
    let gw = dir.join("gateway");
    common(&gw)?;
    write_pair(&gw, "server", &leaf(&cluster, "dcos-exec gateway", sans(o.gateway), None, vec![ServerAuth])?)?;
    write_pair(&gw, "client", &leaf(&gateways, "dcos-exec gateway", Vec::new(), None, vec![ClientAuth])?)?;
    let gateway_toml = format!(
        "# dcos-exec gateway configuration; every key is documented in the README.\n\
         listen = \"0.0.0.0:{}\"\ntls_cert = \"server.crt\"\ntls_key = \"server.key\"\ncluster_ca = \"ca.crt\"\n\
         client_cert = \"client.crt\"\nclient_key = \"client.key\"\ntoken_public_key = \"token-signing.pub\"\n\
         acl = \"acl.toml\"\nacl_key = \"acl-signing.pub\"\naudit_log = \"audit.log\"\nmax_stale = \"30s\"\nconnect_timeout = \"3s\"\n\n{}",
        o.gateway_port,
        etcd_table("etcd", o.etcd)
    );
    write(&gw.join("gateway.toml"), gateway_toml.as_bytes(), 0o644)?;

    // Each agent: its server certificate for the host gateways reach it under, the gateway CA to trust.
    for (name, url, host) in &agents {
        let d = dir.join("agents").join(name);
        common(&d)?;
        write(&d.join("gateway-ca.crt"), gateway_ca.pem().as_bytes(), 0o644)?;
        let server = leaf(&cluster, &format!("dcos-exec agent {name}"), sans(host), Some(name), vec![ServerAuth])?;
        write_pair(&d, "server", &server)?;
        let port = url.parse::<http::Uri>().ok().and_then(|u| u.port_u16()).unwrap_or(443);
        let cfg = AgentConfig::generated(format!("0.0.0.0:{port}"), None);
        let mut text = String::from("# dcos-exec agent configuration; every key is documented in the README.\n");
        text.push_str(&toml::to_string_pretty(&cfg)?);
        text.push_str(&format!(
            "\n[cluster]\nnode = {}\nurl = {}\ngateway_ca = \"gateway-ca.crt\"\nacl_key = \"acl-signing.pub\"\n\n{}",
            toml_str(name),
            toml_str(url),
            etcd_table("cluster.etcd", o.etcd)
        ));
        write(&d.join("agent.toml"), text.as_bytes(), 0o644)?;
    }

    // etcd members: one server and peer certificate each, for the host of its client URL.
    let e = dir.join("etcd");
    write(&e.join("ca.crt"), cluster_ca.pem().as_bytes(), 0o644)?;
    for (i, url) in o.etcd.iter().enumerate() {
        let host = host_of(url)?;
        let pair = leaf(&cluster, &format!("etcd member {i}"), sans(&host), None, vec![ServerAuth, ClientAuth])?;
        write_pair(&e, &format!("member-{i}"), &pair)?;
    }

    let token = dcos_exec_access::auth::mint(
        token_key.serialize_pem().as_bytes(),
        "dcos-exec-agent",
        dcos_exec_proto::TOKEN_AUDIENCE,
        o.admin,
        &[],
        o.ttl,
    )?;
    write(&dir.join("admin.token"), token.as_bytes(), 0o600)?;
    let host = if o.gateway.contains(':') { format!("[{}]", o.gateway) } else { o.gateway.to_string() };
    Ok(format!(
        "export DCOS_URL=https://{host}:{}\nexport DCOS_SSL_VERIFY={}\nexport DCOS_ACS_TOKEN=\"$(cat {})\"\n",
        o.gateway_port,
        pki.join("cluster-ca.crt").display(),
        dir.join("admin.token").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_set_up_loads_and_keeps_the_gateway_ca_apart() {
        let dir = tempfile::tempdir().unwrap();
        let agents = ["a1=https://10.0.0.1:7443".to_string(), "a2=https://node2.example:8443".to_string()];
        let etcd = ["https://10.0.0.9:2379".to_string()];
        let o = ClusterOptions {
            dir: dir.path(),
            gateway: "gw.example",
            gateway_port: 7443,
            agents: &agents,
            etcd: &etcd,
            admin: "admin",
            ttl: Duration::from_secs(60),
            force: false,
        };
        let lines = init_cluster(&o).unwrap();
        assert!(lines.starts_with("export DCOS_URL=https://gw.example:7443\n"), "{lines}");
        for a in ["a1", "a2"] {
            let cfg = crate::config::AgentConfig::load(&dir.path().join("agents").join(a).join("agent.toml")).unwrap();
            let c = cfg.file.cluster.expect("[cluster]");
            assert!(c.gateway_ca.unwrap().ends_with("gateway-ca.crt"));
        }
        let a2 = std::fs::read_to_string(dir.path().join("agents/a2/agent.toml")).unwrap();
        assert!(a2.contains("listen = \"0.0.0.0:8443\"") && a2.contains("node = \"a2\""), "{a2}");
        let gw = std::fs::read_to_string(dir.path().join("gateway/gateway.toml")).unwrap();
        assert!(gw.contains("endpoints = [\"https://10.0.0.9:2379\"]"), "{gw}");
        // The gateway's client certificate is not signed by the cluster CA, and the CAs differ.
        let cluster = std::fs::read(dir.path().join("pki/cluster-ca.crt")).unwrap();
        let gateway = std::fs::read(dir.path().join("pki/gateway-ca.crt")).unwrap();
        assert_ne!(cluster, gateway);
        // Each agent's server certificate names its node; the gateway's names none.
        let uris = |path: &str| -> Vec<String> {
            let pem = std::fs::read(dir.path().join(path)).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            let cert = pem.parse_x509().unwrap();
            let san = cert.subject_alternative_name().unwrap().unwrap();
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(uris("agents/a1/server.crt"), ["urn:dcos-exec:node:a1"]);
        assert_eq!(uris("agents/a2/server.crt"), ["urn:dcos-exec:node:a2"]);
        assert!(uris("gateway/server.crt").is_empty());
        // The ACL-signing key stays with the operator; its public half is what agents and gateways check with.
        let signing = std::fs::read(dir.path().join("pki/acl-signing.key")).unwrap();
        let doc = dcos_exec_cluster::signed::sign(&signing, "[[rule]]\n", 1).unwrap();
        for p in ["gateway/acl-signing.pub", "agents/a1/acl-signing.pub"] {
            let key = dcos_exec_cluster::signed::AclKey::from_pem(&std::fs::read(dir.path().join(p)).unwrap()).unwrap();
            assert!(key.verify(doc.as_bytes()).is_ok(), "{p}");
        }
        assert!(!dir.path().join("gateway/acl-signing.key").exists());
        assert!(gw.contains("acl_key = \"acl-signing.pub\""), "{gw}");
        assert!(a2.contains("acl_key = \"acl-signing.pub\""), "{a2}");
        assert!(init_cluster(&o).is_err(), "a second init without --force");
        let bad = ["a1".to_string()];
        assert!(init_cluster(&ClusterOptions { agents: &bad, force: true, ..o }).is_err());
    }
}
