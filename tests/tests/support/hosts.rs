//! Several hosts on this machine: one network namespace per host, joined to a bridge in the root namespace by a
//! veth pair, each with its own address in a subnet private to this test process, its own runc state root and
//! containers, and its own agent listening on its own address. The root namespace (where the tests, etcd and
//! the gateways run) reaches every host through the bridge, and the hosts reach the root namespace at the
//! bridge's address (`Net::root_ip`).
//!
//! Processes enter a host with `nsenter --net=/run/netns/NS`, not `ip netns exec`: the latter also unshares the
//! mount namespace and mounts a fresh /sys over the host's, which hides /sys/fs/cgroup from runc and the agent.
//!
//! Names: network namespaces `dcx<pid>-<host>`, the bridge `dxb<pid>`, root-side veths `dxv<pid>-<i>` (interface
//! names have at most 15 bytes), all removed when the test process exits, also after a panic (`at_exit`), and
//! those of dead test processes at the next start.

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
    agent: Arc<Mutex<Option<Child>>>,
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
        if let Some(pid) = name.strip_prefix("dxb") {
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
        remove_stale();
        let p = prefix();
        let pid = std::process::id();
        let bridge = format!("dxb{pid}");
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
                let veth = format!("dxv{pid}-{i}");
                let ip = Ipv4Addr::new(a, b, c, u8::try_from(10 + i).unwrap());
                let hdir = dir.join(&name);
                let runc_root = hdir.join("runc");
                std::fs::create_dir_all(&runc_root).unwrap();
                let agent: Arc<Mutex<Option<Child>>> = Arc::default();
                {
                    let (netns, runc_root, agent) = (netns.clone(), runc_root.clone(), agent.clone());
                    at_exit(move || {
                        if let Some(mut c) = agent.lock().unwrap_or_else(|e| e.into_inner()).take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
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
        let mut slot = self.agent.lock().unwrap();
        assert!(slot.is_none(), "the agent of {} runs already", self.name);
        let dir = self.agent_dir();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
        let mut cmd = self.command(bin("dcos-exec-agent"));
        cmd.args(["run", "--config"])
            .arg(dir.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("DCOS_EXEC_LOG", "debug");
        // SAFETY: prctl in the child before exec (nsenter execs the agent in place, which keeps the signal).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        *slot = Some(cmd.spawn().expect("starting the agent"));
        drop(slot);
        let addr = std::net::SocketAddr::from((self.ip, AGENT_PORT));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(st) = self.agent.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
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
        self.agent.lock().unwrap().as_ref().map(|c| i32::try_from(c.id()).unwrap())
    }

    /// SIGKILL to the agent (no goodbye to etcd: its lease runs out), reaped.
    pub fn kill_agent(&self) {
        if let Some(mut c) = self.agent.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
