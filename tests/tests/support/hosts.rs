//! Several hosts on this machine: one network namespace per host, joined to a bridge in the root namespace by a
//! veth pair, each with its own address in a subnet private to this test process, its own runc state root and
//! containers, and its own agent listening on its own address. The root namespace (where the tests, etcd and
//! the gateways run) reaches every host through the bridge, and the hosts reach the root namespace at the
//! bridge's address (`Net::root_ip`).
//!
//! Processes enter a host with `nsenter --net=/run/netns/NS`, not `ip netns exec`: the latter also unshares the
//! mount namespace and mounts a fresh /sys over the host's, which hides /sys/fs/cgroup from runc and the agent.
//!
//! Names, for the k-th network of test process `pid`: network namespaces `dcx<pid>-n<k>-<host>`, the bridge
//! `dxb<pid>-<k>`, root-side veths `dxv<pid>-<k>-<i>` (interface names have at most 15 bytes), all removed when
//! the test process exits, also after a panic (`at_exit`), and those of dead test processes at the next start.

use super::{at_exit, bin, prefix, prepare_bundle, run, ContainerOpts};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port every host's agent listens on (each host has a network namespace of its own).
pub const AGENT_PORT: u16 = 7443;

/// The bridge, the subnet and the hosts on it.
pub struct Net {
    pub bridge: String,
    /// The first three bytes of the /24 subnet; the bridge is `.1`, host `i` (from 0) is `.(10 + i)`.
    pub subnet: [u8; 3],
    pub hosts: Vec<Host>,
    /// Where the hosts' directories live.
    pub dir: PathBuf,
}

/// One host: a network namespace with its own address, runc state root, containers and agent.
pub struct Host {
    /// The node name (`h1`, `h2`, ...).
    pub name: String,
    pub netns: String,
    /// The root-side end of the veth pair: down cuts the host off the network.
    pub veth: String,
    pub ip: Ipv4Addr,
    /// The host's directory: runc state root, bundles, agent set-up.
    pub dir: PathBuf,
    pub runc_root: PathBuf,
    agent: Slot,
}

fn sh(cmd: &str) -> Output {
    run(Command::new("sh").arg("-c").arg(cmd))
}

fn must(cmd: &str) {
    let o = sh(cmd);
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Removes namespaces, bridges and runc roots that test processes which no longer run left behind.
fn remove_stale() {
    let alive = |pid: &str| pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("dcx").and_then(|r| r.split('-').next()) else { continue };
            if !alive(pid) {
                let _ = sh(&format!("ip netns pids {name} | xargs -r kill -9; ip netns del {name}"));
            }
        }
    }
    let links = sh("ip -o link show type bridge");
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let Some(name) = l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if let Some(pid) = name.strip_prefix("dxb").and_then(|r| r.split('-').next()) {
            if !alive(pid) {
                let _ = sh(&format!("ip link del {name}"));
            }
        }
    }
}

/// A /24 under 10.0.0.0/8 that no interface of this machine uses, chosen from the process id so that
/// concurrent test processes pick different ones.
fn free_subnet() -> [u8; 3] {
    // Each line of both listings starts with, or has after a space, the addresses in use.
    let used = format!("\n{}", String::from_utf8_lossy(&sh("ip -4 -o addr; ip -4 route").stdout)).replace('\n', "\n ");
    let start = std::process::id() % (120 * 256);
    for k in 0..(120 * 256) {
        let n = (start + k) % (120 * 256);
        let s = [10, u8::try_from(100 + n / 256).unwrap(), u8::try_from(n % 256).unwrap()];
        if !used.contains(&format!(" {}.{}.{}.", s[0], s[1], s[2])) {
            return s;
        }
    }
    panic!("no free /24 under 10.100.0.0/14");
}

impl Net {
    /// A bridge and `n` hosts named `h1`..`hN`, each in its own network namespace, up and reachable.
    pub fn create(n: usize) -> Net {
        // One at a time, so that two networks of this process never pick the same subnet; `k` tells them apart.
        static CREATING: Mutex<u32> = Mutex::new(0);
        let mut count = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let k = *count;
        *count += 1;
        remove_stale();
        let p = format!("{}-n{k}", prefix());
        let pid = std::process::id();
        let bridge = format!("dxb{pid}-{k}");
        let subnet = free_subnet();
        let [a, b, c] = subnet;
        let dir = std::env::temp_dir().join(format!("{p}-hosts"));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let bridge = bridge.clone();
            at_exit(move || {
                let _ = Command::new("ip").args(["link", "del", &bridge]).output();
            });
        }
        must(&format!(
            "ip link add {bridge} type bridge && ip addr add {a}.{b}.{c}.1/24 dev {bridge} && ip link set {bridge} up"
        ));
        let hosts = (0..n)
            .map(|i| {
                let name = format!("h{}", i + 1);
                let netns = format!("{p}-{name}");
                let veth = format!("dxv{pid}-{k}-{i}");
                let ip = Ipv4Addr::new(a, b, c, u8::try_from(10 + i).unwrap());
                let hdir = dir.join(&name);
                let runc_root = hdir.join("runc");
                std::fs::create_dir_all(&runc_root).unwrap();
                let agent = Slot::default();
                {
                    let (netns, runc_root, agent) = (netns.clone(), runc_root.clone(), agent.clone());
                    at_exit(move || {
                        agent.kill();
                        // Containers first (their processes hold the namespace's network otherwise), then
                        // whatever else still runs in the namespace, then the namespace and with it the veth pair.
                        if let Ok(o) = Command::new("runc").arg("--root").arg(&runc_root).args(["list", "-q"]).output()
                        {
                            for id in String::from_utf8_lossy(&o.stdout).lines() {
                                let _ = Command::new("runc")
                                    .arg("--root")
                                    .arg(&runc_root)
                                    .args(["delete", "-f", id])
                                    .output();
                            }
                        }
                        let _ = Command::new("sh")
                            .arg("-c")
                            .arg(format!("ip netns pids {netns} | xargs -r kill -9; ip netns del {netns}"))
                            .output();
                    });
                }
                must(&format!(
                    "ip netns add {netns} && ip link add {veth} type veth peer name eth0 netns {netns} && \
                     ip link set {veth} master {bridge} up && \
                     ip -n {netns} addr add {ip}/24 dev eth0 && ip -n {netns} link set eth0 up && \
                     ip -n {netns} link set lo up && ip -n {netns} route add default via {a}.{b}.{c}.1"
                ));
                Host { name, netns, veth, ip, dir: hdir, runc_root, agent }
            })
            .collect();
        Net { bridge, subnet, hosts, dir }
    }

    /// The root namespace's address on the bridge: where hosts reach etcd and anything else of the root.
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }
}

/// The `[runtimes]` of a host's agent: only its own runc state root.
fn runtimes(runc_root: &Path) -> String {
    format!(
        "[runtimes]\nrunc_roots = [\"{}\"]\ncrun_roots = []\ndocker_sockets = []\ncontainerd_sockets = []\n",
        runc_root.display()
    )
}

impl Host {
    /// `nsenter --net=<this host> PROGRAM`: the program runs in this host's network, everything else shared.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--").arg(program);
        c
    }

    /// `runc --root <this host's root>` in this host's network.
    pub fn runc(&self) -> Command {
        let mut c = self.command("runc");
        c.arg("--root").arg(&self.runc_root);
        c
    }

    /// Starts a busybox container on this host, in the host's network (its spec has no network namespace of
    /// its own), under this host's runc root. Deleted at exit with the host.
    pub fn start_container(&self, id: &str, o: &ContainerOpts) -> String {
        let bundle = prepare_bundle("runc", &self.dir, id, o);
        let cfg_path = bundle.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let err_path = self.dir.join(format!("{id}.runc-err"));
        let st = self
            .runc()
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "runc run {id} on {}: {}",
            self.name,
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        id.to_string()
    }

    /// The pid (in the root pid namespace) of a container's init.
    pub fn init_pid(&self, id: &str) -> i32 {
        let o = run(self.runc().args(["state", id]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("runc state");
        i32::try_from(v["pid"].as_i64().expect("pid")).unwrap()
    }

    pub fn delete_container(&self, id: &str) {
        let _ = run(self.runc().args(["delete", "-f", id]));
    }

    /// The agent's directory.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    /// The URL under which this host's agent is reached.
    pub fn url(&self) -> String {
        format!("https://{}:{AGENT_PORT}", self.ip)
    }

    /// `dcos-exec-agent init` for this host's address into [`Host::agent_dir`], then the configuration: only
    /// this host's runc root, `edit` applied to the text (to share token keys, set an ACL, add `[cluster]`).
    /// Does not start it.
    pub fn init_agent(&self, edit: impl FnOnce(String) -> String) {
        let dir = self.agent_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let o = run(Command::new(bin("dcos-exec-agent"))
            .args(["init", "--listen", &format!("{}:{AGENT_PORT}", self.ip), "--dir"])
            .arg(&dir));
        assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
        let cfg = dir.join("agent.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let at = text.find("\n[runtimes]").expect("init writes [runtimes]");
        let text = format!(
            "{}\ngrace_period = \"1s\"\ntask_id_annotation = \"io.dcos.task-id\"\n\n{}",
            text[..at].replace("grace_period = \"5s\"\n", ""),
            runtimes(&self.runc_root)
        );
        std::fs::write(&cfg, edit(text)).unwrap();
    }

    /// Starts (or restarts) the agent initialised by [`Host::init_agent`] in this host's network and waits until
    /// it accepts connections from the root namespace. Killed at exit.
    pub fn start_agent(&self) {
        assert!(self.agent.pid().is_none(), "the agent of {} runs already", self.name);
        let dir = self.agent_dir();
        let mut cmd = self.command(bin("dcos-exec-agent"));
        cmd.args(["run", "--config"]).arg(dir.join("agent.toml")).env("DCOS_EXEC_LOG", "debug");
        // nsenter execs the agent in place, which keeps the parent-death signal.
        self.agent.put(spawn_logged(cmd, &dir.join("agent.log")));
        let addr = std::net::SocketAddr::from((self.ip, AGENT_PORT));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = self.agent.0.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!("the agent of {} exited with {st}: {}", self.name, self.agent_log_tail());
            }
            assert!(Instant::now() < deadline, "the agent of {} did not listen on {addr}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the agent's log, for assertion messages.
    pub fn agent_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.agent_dir().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<i32> {
        self.agent.pid()
    }

    /// SIGKILL to the agent (no goodbye to etcd: its lease runs out), reaped.
    pub fn kill_agent(&self) {
        self.agent.kill();
    }

    /// Cuts the host off the network (the root-side veth down) or puts it back.
    pub fn set_link(&self, up: bool) {
        must(&format!("ip link set {} {}", self.veth, if up { "up" } else { "down" }));
    }

    /// The agent's audit records.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.agent_dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Binds `ip:0` to learn a free port there.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A child process kept in a slot that the exit hook empties (kill and reap) unless the test did.
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<Child>>>);

impl Slot {
    fn new_killed_at_exit() -> Slot {
        let s = Slot::default();
        let c = s.clone();
        at_exit(move || c.kill());
        s
    }
    fn put(&self, child: Child) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    }
    fn kill(&self) {
        if let Some(mut c) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn pid(&self) -> Option<i32> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| i32::try_from(c.id()).unwrap())
    }
}

/// Spawns `cmd` with its stderr appended to `log`, dying with the thread that started it.
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: prctl in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// A cluster CA and the certificates it signs, made with openssl: agents' server certificates (SAN: their
/// address), the gateways' server certificate for users and their client certificate for agents.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = dir.join("ca.crt");
        let o = run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", "/CN=dcos-exec test cluster CA", "-keyout"])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&ca)
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]));
        assert!(o.status.success(), "openssl CA: {}", String::from_utf8_lossy(&o.stderr));
        Pki { dir: dir.into(), ca }
    }

    /// A certificate `name.crt`/`name.key` for `sans` (`IP:1.2.3.4`, `DNS:localhost`) and `usage`
    /// (`serverAuth` or `clientAuth`).
    pub fn issue(&self, name: &str, sans: &[String], usage: &str) -> (PathBuf, PathBuf) {
        let (crt, key, csr, ext) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        let o = run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        assert!(o.status.success(), "openssl req: {}", String::from_utf8_lossy(&o.stderr));
        let mut text =
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n");
        if !sans.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, text).unwrap();
        let o = run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(self.dir.join("ca.key"))
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&crt));
        assert!(o.status.success(), "openssl x509: {}", String::from_utf8_lossy(&o.stderr));
        (crt, key)
    }
}

/// A gateway in the root namespace.
pub struct Gateway {
    pub dir: PathBuf,
    pub url: String,
    pub port: u16,
    slot: Slot,
}

impl Gateway {
    /// Writes `gateway.toml` (`config` is its text, `{listen}` replaced) and starts it; waits until it listens.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port_on(Ipv4Addr::LOCALHOST);
        std::fs::write(dir.join("gateway.toml"), config.replace("{listen}", &format!("127.0.0.1:{port}"))).unwrap();
        let g = Gateway {
            dir: dir.into(),
            url: format!("https://127.0.0.1:{port}"),
            port,
            slot: Slot::new_killed_at_exit(),
        };
        g.restart();
        g
    }

    /// Starts the gateway (again) with its configuration.
    pub fn restart(&self) {
        let mut cmd = Command::new(bin("dcos-exec-gateway"));
        cmd.args(["run", "--config"]).arg(self.dir.join("gateway.toml")).env("DCOS_EXEC_LOG", "debug");
        self.slot.put(spawn_logged(cmd, &self.dir.join("gateway.log")));
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen on {addr}: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&self) {
        self.slot.kill();
    }

    pub fn pid(&self) -> Option<i32> {
        self.slot.pid()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The lease TTL of the test agents: short, so that a dead agent leaves the directory quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// A whole cluster on this machine: hosts with agents and containers, a three-member etcd (support/etcd.rs,
/// mutual TLS) serving on the bridge too, a cluster CA, one token key for all, and gateways in the root
/// namespace.
pub struct Cluster {
    pub net: Net,
    /// Serves the hosts on the bridge's address, the gateways on loopback.
    pub etcd: Mutex<super::etcd::Cluster>,
    pub pki: Pki,
    pub gateways: Vec<Gateway>,
    pub admin_token: String,
    /// The shared token signing key's directory (`token-signing.key`, `token-signing.pub`).
    pub keys: PathBuf,
}

/// How a test cluster differs from the default.
pub struct ClusterOpts {
    pub hosts: usize,
    pub gateways: usize,
    /// The gateways' ACL.
    pub acl: &'static str,
    /// The ACL of each agent, by host name (default: the gateways').
    pub agent_acl: fn(&str) -> &'static str,
    /// Extra top-level keys of gateway.toml.
    pub gateway_extra: &'static str,
}

impl Default for ClusterOpts {
    fn default() -> ClusterOpts {
        ClusterOpts { hosts: 3, gateways: 1, acl: super::ACL, agent_acl: |_| super::ACL, gateway_extra: "" }
    }
}

impl Cluster {
    pub fn start(o: &ClusterOpts) -> Cluster {
        let net = Net::create(o.hosts);
        let etcd = super::etcd::Cluster::start_with(
            &net.dir.join("etcd"),
            &super::etcd::Options { members: 3, extra_client_ips: vec![net.root_ip().into()] },
        );
        let etcd_hosts =
            etcd.config_toml_for(&etcd.endpoints_on(net.root_ip().into()), &etcd.client_cert, &etcd.client_key);
        let pki = Pki::new(&net.dir.join("pki"));
        let keys = net.dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        for (i, h) in net.hosts.iter().enumerate() {
            // With the node's identity, as `init cluster` issues it: gateways relay only to the record's node.
            let sans = [format!("IP:{}", h.ip), format!("URI:urn:dcos-exec:node:{}", h.name)];
            let (crt, key) = pki.issue(&format!("agent-{}", h.name), &sans, "serverAuth");
            let acl = (o.agent_acl)(&h.name);
            h.init_agent(|text| {
                let mut text: String = text
                    .lines()
                    .filter(|l| {
                        !["tls_cert", "tls_key", "token_public_key", "token_private_key"]
                            .iter()
                            .any(|k| l.starts_with(&format!("{k} =")))
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                let at = text.find("\n[runtimes]").unwrap();
                text.insert_str(
                    at,
                    &format!(
                        "\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntoken_public_key = \"{}\"\ntoken_private_key = \"{}\"\n",
                        crt.display(),
                        key.display(),
                        keys.join("token-signing.pub").display(),
                        keys.join("token-signing.key").display()
                    ),
                );
                text.push_str(&format!(
                    "\n[cluster]\nnode = \"{}\"\nurl = \"{}\"\ngateway_ca = \"{}\"\nlease_ttl = \"{}s\"\n\
                     labels = {{ rack = \"r{}\" }}\n\n[cluster.etcd]\n{etcd_hosts}\n",
                    h.name,
                    h.url(),
                    pki.ca.display(),
                    LEASE_TTL.as_secs(),
                    i % 2
                ));
                text
            });
            if i == 0 {
                for f in ["token-signing.pub", "token-signing.key"] {
                    std::fs::copy(h.agent_dir().join(f), keys.join(f)).unwrap();
                }
            }
            std::fs::write(h.agent_dir().join("acl.toml"), acl).unwrap();
            h.start_agent();
        }
        let (gcrt, gkey) = pki.issue("gateway", &["IP:127.0.0.1".into(), "DNS:localhost".into()], "serverAuth");
        let (ccrt, ckey) = pki.issue("gateway-client", &[], "clientAuth");
        let gateways = (0..o.gateways)
            .map(|i| {
                let dir = net.dir.join(format!("gateway{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("acl.toml"), o.acl).unwrap();
                let config = format!(
                    "listen = \"{{listen}}\"\n{}\ntls_cert = \"{}\"\ntls_key = \"{}\"\ncluster_ca = \"{}\"\n\
                     client_cert = \"{}\"\nclient_key = \"{}\"\ntoken_public_key = \"{}\"\nacl = \"acl.toml\"\n\
                     audit_log = \"audit.log\"\n\n[etcd]\n{}\n",
                    o.gateway_extra,
                    gcrt.display(),
                    gkey.display(),
                    pki.ca.display(),
                    ccrt.display(),
                    ckey.display(),
                    keys.join("token-signing.pub").display(),
                    etcd.config_toml()
                );
                Gateway::start(&dir, &config)
            })
            .collect();
        let mut c = Cluster { net, etcd: Mutex::new(etcd), pki, gateways, admin_token: String::new(), keys };
        c.admin_token = c.token("admin", &[]);
        c
    }

    /// A token for `user` in `groups`, valid for an hour, signed with the cluster's key.
    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        let mut c = Command::new(bin("dcos-exec-agent"));
        c.args(["token", "--config"]).arg(self.net.hosts[0].agent_dir().join("agent.toml"));
        c.args(["--user", user, "--ttl", "1h"]);
        for g in groups {
            c.args(["--group", g]);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "token: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// `dcos` aimed at gateway `g` with `token`.
    pub fn dcos_via(&self, g: usize, token: &str) -> Command {
        let mut c = Command::new(bin("dcos"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.net.dir)
            .env("DCOS_URL", &self.gateways[g].url)
            .env("DCOS_SSL_VERIFY", &self.pki.ca)
            .env("DCOS_ACS_TOKEN", token)
            .stdin(Stdio::null());
        c
    }

    /// `dcos` aimed at the first gateway as the admin.
    pub fn dcos(&self) -> Command {
        self.dcos_via(0, &self.admin_token)
    }

    /// `dcos` aimed straight at a host's agent (no gateway) with `token`.
    pub fn dcos_direct(&self, host: &Host, token: &str) -> Command {
        let mut c = self.dcos();
        c.env("DCOS_URL", host.url()).env("DCOS_ACS_TOKEN", token);
        c
    }

    /// Waits until the first gateway's `dcos task list` shows every one of `ids` (true) or none (false).
    pub fn wait_listed(&self, ids: &[&str], listed: bool, secs: u64) -> bool {
        self.wait_listed_via(0, ids, listed, secs)
    }

    /// [`Cluster::wait_listed`] through gateway `g`: each gateway follows etcd on its own watch.
    pub fn wait_listed_via(&self, g: usize, ids: &[&str], listed: bool, secs: u64) -> bool {
        super::eventually(secs, || {
            let o = run(self.dcos_via(g, &self.admin_token).args(["task", "list"]));
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            ids.iter().all(|id| out.contains(id) == listed)
        })
    }
}
