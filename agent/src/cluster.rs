//! The agent's part in a cluster (`[cluster]`): it registers its node and its tasks in etcd, where gateways
//! find them, and with `acl = "etcd"` takes its ACL from there. Without `[cluster]` nothing here runs.

use crate::config::AclSource;
use crate::server::Agent;
use dcos_exec_cluster::acl::EtcdAcl;
use dcos_exec_cluster::registrar::{Options, Registrar};
use dcos_exec_cluster::NodeRecord;
use std::sync::Arc;

/// What runs for the cluster while the agent serves.
pub struct Membership {
    registrar: Option<Registrar>,
    acl: Option<EtcdAcl>,
}

impl Membership {
    /// Starts watching the ACL in etcd (waiting a dial timeout for its first read) when the config says so, and
    /// the registration of the node and its tasks.
    pub async fn start(agent: &Arc<Agent>) -> Membership {
        let Some(c) = agent.cfg.cluster.as_ref() else {
            return Membership { registrar: None, acl: None };
        };
        let etcd = c.file.etcd.clone();
        let acl = if let (AclSource::Etcd, Some(key)) = (&agent.cfg.acl, &agent.acl_key) {
            let w = EtcdAcl::spawn(etcd.clone(), &c.file.prefix, key.clone(), agent.acl.clone());
            if !w.loaded(etcd.dial_timeout).await {
                tracing::warn!("the ACL is not read from etcd yet: every request is refused until it is");
            }
            Some(w)
        } else {
            None
        };
        let node = NodeRecord {
            name: c.node.clone(),
            url: c.url.clone(),
            labels: c.file.labels.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: dcos_exec_cluster::record::unix_now(),
        };
        tracing::info!(node = %c.node, url = %c.url, endpoints = ?etcd.endpoints, "joining the cluster directory");
        if let Err(why) = own_identity(&agent.cfg.file.tls_cert, &c.node) {
            tracing::warn!("gateways will not relay sessions to this agent: {why}");
        }
        // The same list `GET /v1/tasks` serves, unfiltered. A weak reference: the registration must not keep
        // the agent alive.
        let weak = Arc::downgrade(agent);
        let tasks = Arc::new(move || -> futures_util::future::BoxFuture<'static, Vec<dcos_exec_proto::TaskInfo>> {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(a) => a.discovery.list().await.into_iter().map(crate::api::task_info).collect(),
                    None => Vec::new(),
                }
            })
        });
        let options = Options { prefix: c.file.prefix.clone(), ttl: c.lease_ttl, ..Options::default() };
        let registrar = Registrar::spawn_with(etcd, node, options, tasks);
        Membership { registrar: Some(registrar), acl }
    }

    /// Leaves the directory (the lease is revoked, so the node and its tasks go at once).
    pub async fn stop(self) {
        if let Some(r) = self.registrar {
            r.stop().await;
        }
        drop(self.acl);
    }
}

/// Whether the agent's own server certificate names its node, as gateways require before relaying to it.
fn own_identity(cert: &std::path::Path, node: &str) -> Result<(), String> {
    let certs = dcos_exec_server::tls::load_certs(cert).map_err(|e| e.to_string())?;
    let leaf = certs.first().ok_or_else(|| format!("{} holds no certificate", cert.display()))?;
    dcos_exec_cluster::identity::check(leaf.as_ref(), node)
        .map_err(|why| format!("tls_cert {} does not name node {node}: {why}", cert.display()))
}
