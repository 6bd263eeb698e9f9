//! The agent side: keeps this node's record and its task records in etcd under a lease.
//!
//! A lease is granted with the configured TTL and kept alive every TTL/3 (by its own task, so that a slow task
//! listing never delays a keep-alive). Every `sync_every` the agent's task list is compared with what was last
//! written, ages aside, and only what changed is written or deleted, in transactions of a bounded size. When the
//! lease is lost (it expired while etcd was unreachable, or was revoked) a new one is granted and everything is
//! written again, and task keys a former incarnation of this node left behind are deleted. Requests go to any
//! member that answers, so the death of the etcd leader costs at most an election.

use crate::config::EtcdConfig;
use crate::connect::{member_failed, Failover};
use crate::error::ClusterError;
use crate::keys::{Key, Layout, DEFAULT_PREFIX};
use crate::record::{unix_now, NodeRecord, TaskRecord};
use dcos_exec_proto::TaskInfo;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What the registrar calls to learn the node's tasks: the agent's unfiltered task list.
pub type TaskSource = Arc<dyn Fn() -> BoxFuture<'static, Vec<TaskInfo>> + Send + Sync>;

/// Operations per transaction: etcd refuses more than 128 by default (`--max-txn-ops`).
const TXN_OPS: usize = 100;
/// Retry pace while etcd cannot be reached.
const RETRY: Duration = Duration::from_millis(500);
/// Failures shorter than this (an election after the leader died) are retried quietly; longer ones are
/// reported as a lost etcd.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// How the registrar works; [`Options::default`] is the contract's behaviour.
#[derive(Debug, Clone)]
pub struct Options {
    /// Key prefix (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Lease TTL: how long the records outlive an agent that died (default 10 s).
    pub ttl: Duration,
    /// How often the task list is compared with etcd (default 500 ms).
    pub sync_every: Duration,
    /// Deadline of one etcd request.
    pub request_timeout: Duration,
}

/// Ten seconds: an agent that died disappears within that.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

impl Default for Options {
    fn default() -> Options {
        Options {
            prefix: DEFAULT_PREFIX.into(),
            ttl: DEFAULT_TTL,
            sync_every: Duration::from_millis(500),
            request_timeout: Duration::from_secs(3),
        }
    }
}

/// Where the registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not yet registered.
    Connecting,
    /// The node and its tasks are in etcd under this lease, and the last write succeeded.
    Registered {
        /// The lease id.
        lease: i64,
    },
    /// etcd cannot be reached or refused; the registrar keeps retrying.
    Lost {
        /// The last error.
        reason: String,
    },
}

/// A running registration; dropping it stops the registration (the records stay until the lease expires),
/// [`Registrar::stop`] removes them at once.
pub struct Registrar {
    status: watch::Receiver<Status>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

impl Registrar {
    /// Registers `node` in etcd and keeps its tasks (from `tasks`) in sync, under a lease of `ttl`, with the
    /// default prefix. Needs a tokio runtime.
    pub fn spawn<F>(etcd: EtcdConfig, node: NodeRecord, ttl: Duration, tasks: F) -> Registrar
    where
        F: Fn() -> BoxFuture<'static, Vec<TaskInfo>> + Send + Sync + 'static,
    {
        Registrar::spawn_with(etcd, node, Options { ttl, ..Options::default() }, Arc::new(tasks))
    }

    /// [`Registrar::spawn`] with every option.
    pub fn spawn_with(etcd: EtcdConfig, node: NodeRecord, options: Options, tasks: TaskSource) -> Registrar {
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (stop_tx, stop_rx) = oneshot::channel();
        let worker = Worker {
            layout: Layout::new(&options.prefix),
            etcd,
            node,
            options,
            tasks,
            status: status_tx,
            written: BTreeMap::new(),
            failing_since: None,
        };
        let task = tokio::spawn(worker.run(stop_rx));
        Registrar { status, stop: Some(stop_tx), task }
    }

    /// Where the registration stands now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`Registrar::status`].
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops and revokes the lease, so the node and its tasks leave the directory now rather than when the
    /// lease would expire. Gives up after a few seconds when etcd does not answer.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
            }
        }
        self.task.abort();
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A granted lease and the task that keeps it alive.
struct Lease {
    id: i64,
    /// Set to the reason once etcd says the lease is gone.
    expired: watch::Receiver<Option<String>>,
    keeper: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

struct Worker {
    layout: Layout,
    etcd: EtcdConfig,
    node: NodeRecord,
    options: Options,
    tasks: TaskSource,
    status: watch::Sender<Status>,
    /// What this registrar believes etcd holds for its tasks, by container id.
    written: BTreeMap<String, TaskRecord>,
    /// Since when requests fail.
    failing_since: Option<std::time::Instant>,
}

impl Worker {
    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut client: Option<Failover> = None;
        let mut lease: Option<Lease> = None;
        let mut tick = tokio::time::interval(self.options.sync_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = &mut stop => {
                    if let (Some(c), Some(l)) = (client.as_mut(), lease.as_ref()) {
                        let id = l.id;
                        match c.run(self.options.request_timeout, |mut cl| async move { cl.lease_revoke(id).await }).await {
                            Ok(_) => tracing::info!(node = %self.node.name, "left the cluster directory (lease revoked)"),
                            Err(e) => tracing::warn!(node = %self.node.name, "revoking the lease: {e}"),
                        }
                    }
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let c = match client.as_mut() {
                Some(c) => c,
                None => match Failover::new(&self.etcd).await {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        self.lost(&e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            if let Some(reason) = lease.as_ref().and_then(|l| l.expired.borrow().clone()) {
                tracing::warn!(node = %self.node.name, "{reason}: registering again");
                lease = None;
            }
            let result = match lease.as_ref() {
                None => match self.register(c).await {
                    Ok(l) => {
                        let id = l.id;
                        lease = Some(l);
                        self.registered(id);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Some(l) => {
                    let id = l.id;
                    self.sync(c, id).await.map(|()| self.registered(id))
                }
            };
            match result {
                Err(e @ ClusterError::LeaseLost(_)) => {
                    // etcd answers, the lease is gone: the next tick registers everything under a new one.
                    tracing::warn!(node = %self.node.name, "{e}: registering again");
                    lease = None;
                }
                Err(e @ ClusterError::NodeTaken { .. }) => {
                    let reason = e.to_string();
                    let before = self.status.send_replace(Status::Lost { reason: reason.clone() });
                    if before != (Status::Lost { reason: reason.clone() }) {
                        tracing::error!(node = %self.node.name, "not registered: {reason}; retrying");
                    }
                }
                Err(e) => self.lost(&e),
                Ok(()) => {}
            }
        }
    }

    /// Grants a lease and writes the node and all its tasks under it, deleting task keys of this node that
    /// are not among them (left by an earlier run of the agent).
    async fn register(&mut self, c: &mut Failover) -> Result<Lease, ClusterError> {
        let t = self.options.request_timeout;
        let ttl = i64::try_from(self.options.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let key = self.layout.node(&self.node.name);
        // Two agents with one node name would delete each other's tasks: a record of this name that another
        // agent (another URL) keeps alive is left alone until its lease ends. The same URL is this agent,
        // restarted before its old lease expired.
        let seen = c
            .run(t, |mut cl| {
                let key = key.clone();
                async move { cl.get(key, None).await }
            })
            .await?;
        let seen_revision = match seen.kvs().first() {
            None => 0,
            Some(kv) => {
                let other = serde_json::from_slice::<NodeRecord>(kv.value()).map(|r| r.url).unwrap_or_default();
                if other != self.node.url && kv.lease() != 0 {
                    return Err(ClusterError::NodeTaken { node: self.node.name.clone(), url: other });
                }
                kv.mod_revision()
            }
        };
        let id = c.run(t, |mut cl| async move { cl.lease_grant(ttl, None).await }).await?.id();
        let node = serde_json::to_vec(&self.node).map_err(|cause| ClusterError::Record { key: key.clone(), cause })?;
        let claimed = c
            .run(t, |mut cl| {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen_revision)])
                    .and_then([TxnOp::put(key.clone(), node.clone(), Some(PutOptions::new().with_lease(id)))]);
                async move { cl.txn(txn).await }
            })
            .await?;
        if !claimed.succeeded() {
            // Written by someone else meanwhile: look again at the next tick (the unused lease just expires).
            return Err(ClusterError::NodeTaken { node: self.node.name.clone(), url: "another agent".into() });
        }
        let now = unix_now();
        let current: BTreeMap<String, TaskRecord> = (self.tasks)()
            .await
            .into_iter()
            .map(|task| (task.container.clone(), TaskRecord::new(&self.node.name, task, now)))
            .collect();
        let mine = self.layout.node_tasks(&self.node.name);
        let existing = c
            .run(t, |mut cl| {
                let mine = mine.clone();
                async move { cl.get(mine, Some(GetOptions::new().with_prefix().with_keys_only())).await }
            })
            .await?;
        let mut ops = Vec::new();
        for kv in existing.kvs() {
            if let Some(Key::Task { container, .. }) = self.layout.parse(kv.key()) {
                if !current.contains_key(&container) {
                    ops.push(TxnOp::delete(kv.key().to_vec(), None));
                }
            }
        }
        for (container, r) in &current {
            ops.push(self.put_op(container, r, id)?);
        }
        self.commit(c, ops, id).await?;
        self.written = current;
        Ok(Lease::keep_alive(c.clone(), id, self.options.ttl, self.node.name.clone()))
    }

    /// Writes what changed since the last sync.
    async fn sync(&mut self, c: &mut Failover, lease: i64) -> Result<(), ClusterError> {
        let now = unix_now();
        let current: BTreeMap<String, TaskRecord> = (self.tasks)()
            .await
            .into_iter()
            .map(|task| (task.container.clone(), TaskRecord::new(&self.node.name, task, now)))
            .collect();
        let mut ops = Vec::new();
        let mut changed = Vec::new();
        for (container, r) in &current {
            if !self.written.get(container).is_some_and(|w| w.same_as(r)) {
                ops.push(self.put_op(container, r, lease)?);
                changed.push(container.clone());
            }
        }
        let gone: Vec<String> = self.written.keys().filter(|k| !current.contains_key(*k)).cloned().collect();
        for container in &gone {
            ops.push(TxnOp::delete(self.layout.task(&self.node.name, container), None::<DeleteOptions>));
        }
        if ops.is_empty() {
            return Ok(());
        }
        tracing::debug!(node = %self.node.name, changed = changed.len(), gone = gone.len(), "syncing tasks to etcd");
        self.commit(c, ops, lease).await?;
        for container in changed {
            if let Some(r) = current.get(&container) {
                self.written.insert(container, r.clone());
            }
        }
        for container in gone {
            self.written.remove(&container);
        }
        Ok(())
    }

    fn put_op(&self, container: &str, r: &TaskRecord, lease: i64) -> Result<TxnOp, ClusterError> {
        let key = self.layout.task(&self.node.name, container);
        let value = serde_json::to_vec(r).map_err(|cause| ClusterError::Record { key: key.clone(), cause })?;
        Ok(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))))
    }

    /// Applies `ops` in transactions of at most [`TXN_OPS`]; a put under a lease etcd no longer has is
    /// [`ClusterError::LeaseLost`].
    async fn commit(&self, c: &mut Failover, mut ops: Vec<TxnOp>, lease: i64) -> Result<(), ClusterError> {
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(TXN_OPS));
            let txn = Txn::new().and_then(std::mem::replace(&mut ops, rest));
            let sent = c.run(self.options.request_timeout, |mut cl| {
                let txn = txn.clone();
                async move { cl.txn(txn).await }
            });
            match sent.await {
                Ok(_) => {}
                Err(ClusterError::Etcd(etcd_client::Error::GRpcStatus(s)))
                    if s.message().contains("requested lease not found") =>
                {
                    return Err(ClusterError::LeaseLost(lease));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn registered(&mut self, lease: i64) {
        self.failing_since = None;
        let now = Status::Registered { lease };
        let before = self.status.send_replace(now.clone());
        match before {
            Status::Registered { lease: old } if old == lease => {}
            Status::Connecting => tracing::info!(
                node = %self.node.name, lease = format_args!("{lease:x}"), tasks = self.written.len(),
                "registered in the cluster directory"
            ),
            Status::Registered { .. } => tracing::info!(
                node = %self.node.name, lease = format_args!("{lease:x}"), tasks = self.written.len(),
                "registered again in the cluster directory under a new lease"
            ),
            Status::Lost { .. } => tracing::info!(
                node = %self.node.name, lease = format_args!("{lease:x}"), tasks = self.written.len(),
                "etcd is back: registered in the cluster directory"
            ),
        }
    }

    fn lost(&mut self, e: &ClusterError) {
        let since = *self.failing_since.get_or_insert_with(std::time::Instant::now);
        let registered = matches!(*self.status.borrow(), Status::Registered { .. });
        if registered && since.elapsed() < LOST_AFTER && !matches!(e, ClusterError::LeaseLost(_)) {
            tracing::debug!(node = %self.node.name, "etcd request failed, retrying: {e}");
            return;
        }
        let reason = e.to_string();
        let before = self.status.send_replace(Status::Lost { reason: reason.clone() });
        if !matches!(before, Status::Lost { .. }) {
            tracing::warn!(node = %self.node.name, "lost etcd: {reason}; retrying");
        } else {
            tracing::debug!(node = %self.node.name, "etcd still unavailable: {reason}");
        }
    }
}

impl Lease {
    /// Starts keeping lease `id` alive every `ttl`/3 over its own stream, reopened (on whichever member
    /// answers) when it breaks.
    fn keep_alive(client: Failover, id: i64, ttl: Duration, node: String) -> Lease {
        let (tx, expired) = watch::channel(None);
        let keeper = tokio::spawn(keep_alive(client, id, ttl, node, tx));
        Lease { id, expired, keeper }
    }
}

async fn keep_alive(
    mut members: Failover,
    id: i64,
    ttl: Duration,
    node: String,
    expired: watch::Sender<Option<String>>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut stream = None;
    let mut failing = false;
    loop {
        let result: Result<i64, ClusterError> = async {
            let (keeper, responses) = match stream.as_mut() {
                Some(s) => s,
                None => {
                    let s = members.run(every, |mut cl| async move { cl.lease_keep_alive(id).await }).await?;
                    stream.insert(s)
                }
            };
            crate::connect::within(every, keeper.keep_alive()).await?;
            match crate::connect::within(every, responses.message()).await? {
                Some(r) => Ok(r.ttl()),
                None => Err(ClusterError::Config("keep-alive stream closed".into())),
            }
        }
        .await;
        match result {
            Ok(left) if left <= 0 => {
                let _ = expired.send(Some(format!("lease {id:x} expired")));
                return;
            }
            Ok(_) => {
                if failing {
                    tracing::info!(%node, "lease keep-alive works again");
                }
                failing = false;
                tokio::time::sleep(every).await;
            }
            // The lease expired while etcd was out of reach (a partition longer than the TTL): every member
            // answers the same, so the lease is gone, not the member; the caller grants a new one.
            Err(e) if lease_gone(&e) => {
                let _ = expired.send(Some(format!("lease {id:x} expired: {e}")));
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%node, endpoint = members.endpoint(), "lease keep-alive: {e}; retrying");
                }
                failing = true;
                if stream.take().is_some() && member_failed(&e) {
                    // The stream's member failed: reopen it on the next one.
                    members.next();
                }
                tokio::time::sleep(RETRY.min(every)).await;
            }
        }
    }
}

/// True when etcd says the lease does not exist (any more).
fn lease_gone(e: &ClusterError) -> bool {
    match e {
        ClusterError::Etcd(etcd_client::Error::LeaseKeepAliveError(m)) => m.contains("not found"),
        ClusterError::Etcd(etcd_client::Error::GRpcStatus(s)) => s.code() == tonic::Code::NotFound,
        _ => false,
    }
}
