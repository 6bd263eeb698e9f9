//! A real etcd cluster for the tests: three members (Debian's `etcd-server`) on loopback, on free ports, each
//! with its own data directory, speaking TLS with certificates of a CA made here, clients and peers
//! authenticated by certificate. Helpers find and kill the leader, stop and restart members, and wait for the
//! cluster to be healthy; `etcdctl` (Debian's `etcd-client`) reads and writes keys.
//!
//! ```ignore
//! let etcd = support::etcd::Cluster::start(&dir);
//! let table = etcd.config_toml(); // endpoints, ca_file, cert_file, key_file of a client certificate
//! etcd.kill_leader();
//! etcd.wait_healthy(30);
//! ```

#![allow(dead_code)]

use crate::support::{prefix, run, stderr, stdout};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How a cluster differs from the default (three members on 127.0.0.1 only).
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of members (1 to 7).
    pub members: usize,
    /// Addresses the members also serve clients on, besides 127.0.0.1 (e.g. the host side of veth pairs, so
    /// that agents in network namespaces reach etcd); they are in the server certificates too. Each must be
    /// assigned to an interface before [`Cluster::start_with`].
    pub extra_client_ips: Vec<IpAddr>,
}

impl Default for Options {
    fn default() -> Options {
        Options { members: 3, extra_client_ips: Vec::new() }
    }
}

/// One etcd member.
pub struct Member {
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub client_url: String,
    /// The client port (also on every extra address).
    pub client_port: u16,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }
}

/// A running etcd cluster, killed on drop (its directory is left for post-mortems; the test's clean-up removes
/// it with the rest of the test's prefix).
pub struct Cluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    /// PEM of the CA that signed every certificate here.
    pub ca_file: PathBuf,
    /// A client certificate and key etcd accepts.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn params(cn: &str, sans: Vec<String>) -> CertificateParams {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = std::time::SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(30 * 24 * 3600)).into();
    p
}

fn write_pair(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

impl Cluster {
    /// Three members on 127.0.0.1, their data and certificates under `dir` (emptied first); returns once
    /// every member is healthy and there is a leader. The members get `PR_SET_PDEATHSIG`: they die with the
    /// thread that started them, so a cluster kept in a static must be started from a thread that lives as
    /// long as the process (as `support::world` does for its agent).
    pub fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, &Options::default())
    }

    /// [`Cluster::start`] with options.
    pub fn start_with(dir: &Path, o: &Options) -> Cluster {
        assert!((1..=7).contains(&o.members), "1 to 7 members");
        // A port picked here can be taken by another test process before etcd binds it: try again on new ports.
        let mut last = String::new();
        for _ in 0..3 {
            let mut c = Cluster::launch(dir, o);
            if c.try_wait_healthy(Duration::from_secs(30)) {
                return c;
            }
            last = c.logs();
            c.kill_all();
        }
        panic!("etcd cluster did not become healthy in {}:\n{last}", dir.display());
    }

    fn launch(dir: &Path, o: &Options) -> Cluster {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let mut ca_params = params("dcos-exec test etcd CA", Vec::new());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_file = pki.join("ca.crt");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let ca = Issuer::new(ca_params, ca_key);
        // One server certificate for every member (also used as the peer client certificate).
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(o.extra_client_ips.iter().map(|ip| ip.to_string()));
        let server_key = KeyPair::generate().unwrap();
        let server = params("etcd member", sans).signed_by(&server_key, &ca).unwrap();
        let (server_cert, server_key) = write_pair(&pki, "server", &server, &server_key);
        let client_key = KeyPair::generate().unwrap();
        let client = params("dcos-exec test client", Vec::new()).signed_by(&client_key, &ca).unwrap();
        let (client_cert, client_key) = write_pair(&pki, "client", &client, &client_key);

        let names: Vec<String> = (0..o.members).map(|i| format!("m{i}")).collect();
        let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
        let initial = names
            .iter()
            .zip(&ports)
            .map(|(n, (_, p))| format!("{n}=https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("{}-{}", prefix(), dir.file_name().unwrap_or_default().to_string_lossy());
        let mut members = Vec::new();
        for (name, (cport, pport)) in names.iter().zip(&ports) {
            let data_dir = dir.join(name);
            let client_url = format!("https://127.0.0.1:{cport}");
            let peer_url = format!("https://127.0.0.1:{pport}");
            let mut client_urls = vec![client_url.clone()];
            client_urls.extend(o.extra_client_ips.iter().map(|ip| match ip {
                IpAddr::V4(v4) => format!("https://{v4}:{cport}"),
                IpAddr::V6(v6) => format!("https://[{v6}]:{cport}"),
            }));
            let p = |x: &Path| x.display().to_string();
            let args: Vec<String> = [
                "--name",
                name,
                "--data-dir",
                &p(&data_dir),
                "--listen-client-urls",
                &client_urls.join(","),
                "--advertise-client-urls",
                &client_urls.join(","),
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
                "--cert-file",
                &p(&server_cert),
                "--key-file",
                &p(&server_key),
                "--client-cert-auth",
                "--trusted-ca-file",
                &p(&ca_file),
                "--peer-cert-file",
                &p(&server_cert),
                "--peer-key-file",
                &p(&server_key),
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                &p(&ca_file),
                "--logger",
                "zap",
                // Quick elections keep leader-kill tests short; loopback heartbeats never take 50 ms.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut m = Member {
                name: name.clone(),
                client_url,
                client_port: *cport,
                peer_url,
                log: dir.join(format!("{name}.log")),
                data_dir,
                args,
                child: None,
            };
            spawn(&mut m);
            members.push(m);
        }
        Cluster { dir, members, ca_file, client_cert, client_key, ca }
    }

    /// Client URLs of every member (running or not), as an `EtcdConfig`'s `endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client URLs of every member on `ip` (one of [`Options::extra_client_ips`]).
    pub fn endpoints_on(&self, ip: IpAddr) -> Vec<String> {
        self.members
            .iter()
            .map(|m| match ip {
                IpAddr::V4(v4) => format!("https://{v4}:{}", m.client_port),
                IpAddr::V6(v6) => format!("https://[{v6}]:{}", m.client_port),
            })
            .collect()
    }

    /// The body of an `EtcdConfig` TOML table (`[cluster.etcd]` of an agent, `[etcd]` of a gateway) with the
    /// test client certificate.
    pub fn config_toml(&self) -> String {
        self.config_toml_for(&self.endpoints(), &self.client_cert, &self.client_key)
    }

    /// Like [`Cluster::config_toml`], with other endpoints and client credentials.
    pub fn config_toml_for(&self, endpoints: &[String], cert: &Path, key: &Path) -> String {
        let eps = endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
        format!(
            "endpoints = [{eps}]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\ndial_timeout = \"2s\"\n",
            self.ca_file.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        )
    }

    /// The `[cluster]` section of an agent named `node` registering in this etcd, with the test client
    /// certificate, for `support::Agent::start_with`; `extra` adds keys of the table (`lease_ttl = "3s"`,
    /// `url = "..."`, `labels = {...}`). Put `acl = "etcd"` before it to take the ACL from etcd.
    pub fn agent_section(&self, node: &str, extra: &str) -> String {
        format!("[cluster]\nnode = \"{node}\"\n{extra}\n[cluster.etcd]\n{}", self.config_toml())
    }

    /// Issues another client certificate of this cluster's CA: (certificate, key) under the cluster's `pki/`.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = params(name, Vec::new()).signed_by(&key, &self.ca).unwrap();
        write_pair(&self.dir.join("pki"), name, &cert, &key)
    }

    /// `etcdctl` with the client certificate against the running members (output checked by the caller).
    pub fn etcdctl(&mut self, args: &[&str]) -> Output {
        let eps = self.running_endpoints().join(",");
        self.etcdctl_at(&eps, args)
    }

    /// `etcdctl` against the given comma-separated endpoints.
    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        run(Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--cacert")
            .arg(&self.ca_file)
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key)
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null()))
    }

    fn etcdctl_ok(&mut self, args: &[&str]) -> Output {
        let o = self.etcdctl(args);
        assert!(o.status.success(), "etcdctl {args:?}: {}{}", stdout(&o), stderr(&o));
        o
    }

    /// Writes `key`.
    pub fn put(&mut self, key: &str, value: &str) {
        // `--` so that a value starting with `-` is not an option; etcdctl reads it as an argument.
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// Deletes `key`.
    pub fn del(&mut self, key: &str) {
        self.etcdctl_ok(&["del", "--", key]);
    }

    /// The value of `key`, if any.
    pub fn get(&mut self, key: &str) -> Option<String> {
        self.get_prefix_exact(key, false).into_iter().next().map(|(_, v)| v)
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&mut self, prefix: &str) -> Vec<(String, String)> {
        self.get_prefix_exact(prefix, true)
    }

    fn get_prefix_exact(&mut self, key: &str, prefix: bool) -> Vec<(String, String)> {
        let mut args = vec!["get", "-w", "json"];
        if prefix {
            args.push("--prefix");
        }
        args.extend(["--", key]);
        let o = self.etcdctl_ok(&args);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let b64 = |x: &serde_json::Value| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD.decode(x.as_str().unwrap_or_default()).unwrap();
            String::from_utf8(raw).unwrap()
        };
        v["kvs"]
            .as_array()
            .map(|a| a.iter().map(|kv| (b64(&kv["key"]), b64(&kv["value"]))).collect())
            .unwrap_or_default()
    }

    /// Client URLs of the members that run.
    pub fn running_endpoints(&mut self) -> Vec<String> {
        self.members.iter_mut().filter_map(|m| m.running().then(|| m.client_url.clone())).collect()
    }

    /// `endpoint status` of every running member: (member index, member id, leader id) of those answering.
    fn statuses(&mut self) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                continue;
            }
            let url = self.members[i].client_url.clone();
            let o = self.etcdctl_at(&url, &["endpoint", "status", "-w", "json"]);
            if !o.status.success() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else { continue };
            let s = &v[0]["Status"];
            if let (Some(id), Some(leader)) = (s["header"]["member_id"].as_u64(), s["leader"].as_u64()) {
                out.push((i, id, leader));
            }
        }
        out
    }

    /// The index of the leader, as a majority of the answering members see it.
    pub fn leader(&mut self) -> Option<usize> {
        let st = self.statuses();
        let leader =
            st.iter().map(|s| s.2).filter(|l| *l != 0).max_by_key(|l| st.iter().filter(|s| s.2 == *l).count())?;
        st.iter().find(|s| s.1 == leader).map(|s| s.0)
    }

    /// Waits for a leader and kills it with SIGKILL; its index.
    pub fn kill_leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.leader() {
                self.kill(i);
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to member `i` (and reaped).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to member `i`, waiting for it to exit (SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill on our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again (same name, ports and data directory) if it is not running.
    pub fn restart(&mut self, i: usize) {
        if !self.members[i].running() {
            spawn(&mut self.members[i]);
        }
    }

    /// SIGSTOP / SIGCONT to member `i`: a member that hangs without closing its connections.
    pub fn freeze(&mut self, i: usize, frozen: bool) {
        if let Some(pid) = self.members[i].pid() {
            // SAFETY: kill on our own child, not yet reaped.
            unsafe { libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) };
        }
    }

    /// Waits until every running member answers `endpoint health` and they agree on a leader.
    pub fn wait_healthy(&mut self, secs: u64) {
        assert!(self.try_wait_healthy(Duration::from_secs(secs)), "etcd did not become healthy:\n{}", self.logs());
    }

    fn try_wait_healthy(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let running = self.running_endpoints().len();
            if running == 0 {
                return false;
            }
            let st = self.statuses();
            if st.len() == running && st[0].2 != 0 && st.iter().all(|s| s.2 == st[0].2) {
                let eps = self.running_endpoints().join(",");
                if self.etcdctl_at(&eps, &["endpoint", "health"]).status.success() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} ({})\n", m.name, m.log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn spawn(m: &mut Member) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
    let mut cmd = Command::new("etcd");
    cmd.args(&m.args).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: prctl in the child before exec; the member dies with the test thread that started it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    m.child = Some(cmd.spawn().expect("etcd is installed (Debian's etcd-server)"));
}
