//! Several hosts on one machine (network namespaces, see support/hosts.rs), each with its own agent and runc
//! containers, driven through the real `dcos` binary.

mod support;

use std::process::Command;
use support::hosts::Net;
use support::{bin, run, skip, stderr, stdout, ContainerOpts};

/// A `dcos` command aimed at `url` with the CA and token given.
fn dcos(url: &str, ca: &std::path::Path, token: &str) -> Command {
    let mut c = Command::new(bin("dcos"));
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DCOS_URL", url)
        .env("DCOS_SSL_VERIFY", ca)
        .env("DCOS_ACS_TOKEN", token)
        .stdin(std::process::Stdio::null());
    c
}

/// The fixture itself: hosts reach nothing but the bridge, each agent sees only its own host's containers, and
/// a container shares its host's network.
#[test]
fn hosts_are_separate_machines() {
    if skip() {
        return;
    }
    let net = Net::create(2);
    for h in &net.hosts {
        h.init_agent(|t| t);
        h.start_agent();
        h.start_container(&format!("{}-{}-c", support::prefix(), h.name), &ContainerOpts::default());
    }
    for h in &net.hosts {
        let ca = h.agent_dir().join("ca.crt");
        let token = std::fs::read_to_string(h.agent_dir().join("admin.token")).unwrap();
        let o = run(dcos(&h.url(), &ca, token.trim()).args(["task", "list"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let list = stdout(&o);
        assert!(list.contains(&format!("-{}-c", h.name)), "{list}");
        for other in net.hosts.iter().filter(|o| o.name != h.name) {
            assert!(!list.contains(&format!("-{}-c", other.name)), "{list}");
        }
        let id = format!("{}-{}-c", support::prefix(), h.name);
        let o = run(dcos(&h.url(), &ca, token.trim()).args(["task", "exec", &id, "ip", "-o", "-4", "addr"]));
        assert!(stdout(&o).contains(&format!("inet {}/24", h.ip)), "{}{}", stdout(&o), stderr(&o));
    }
    // A host cut off the network is unreachable from the root namespace, and back when the link is up.
    let h = &net.hosts[0];
    h.set_link(false);
    let addr = std::net::SocketAddr::from((h.ip, support::hosts::AGENT_PORT));
    assert!(std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_err());
    h.set_link(true);
    assert!(support::eventually(5, || std::net::TcpStream::connect_timeout(
        &addr,
        std::time::Duration::from_millis(500)
    )
    .is_ok()));
}
