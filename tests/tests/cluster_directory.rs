//! The cluster directory against a real three-member etcd cluster (TLS, client certificates): agents register
//! their node and tasks under a lease, the records follow containers that start and stop, vanish when the
//! agent dies, come back when it restarts, and survive the death of the etcd leader; the ACL is reloaded from
//! a file or from etcd without a restart.

mod support;

use support::etcd::Cluster;
use support::{prefix, skip};

fn test_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", prefix()))
}

#[test]
fn etcd_fixture_serves_over_mutual_tls_and_survives_its_leader() {
    if skip() {
        return;
    }
    let mut etcd = Cluster::start(&test_dir("etcd-fixture"));
    etcd.put("/t/k", "v1");
    assert_eq!(etcd.get("/t/k").as_deref(), Some("v1"));
    // Without a client certificate etcd refuses.
    let eps = etcd.endpoints().join(",");
    let o = support::run(
        std::process::Command::new("etcdctl").args(["--endpoints", &eps, "--cacert"]).arg(&etcd.ca_file).args([
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "3s",
            "get",
            "/t/k",
        ]),
    );
    assert!(!o.status.success(), "etcd answered a client without a certificate: {}", support::stdout(&o));
    let old = etcd.kill_leader();
    etcd.wait_healthy(30);
    let new = etcd.leader().expect("a new leader");
    assert_ne!(old, new);
    etcd.put("/t/k", "v2");
    etcd.restart(old);
    etcd.wait_healthy(30);
    assert_eq!(etcd.running_endpoints().len(), 3);
    let url = etcd.members[old].client_url.clone();
    let o = etcd.etcdctl_at(&url, &["get", "--print-value-only", "/t/k"]);
    assert_eq!(support::stdout(&o).trim(), "v2", "the restarted member caught up");
    assert_eq!(etcd.get_prefix("/t/"), [("/t/k".to_string(), "v2".to_string())]);
}
