//! The ACL kept in etcd at `{prefix}/acl` (a document signed by the operator, see [`crate::signed`]), watched
//! and put in force on every change, for agents and gateways configured with `acl = "etcd"`.
//!
//! A new version whose signature does not verify under the configured ACL-signing key (written by anyone who
//! holds an etcd client certificate but not that key), that is older than the one in force, or that does not
//! parse is refused, logged as an error, and the ACL in force stays. A deleted key puts the empty ACL
//! in force (which refuses everything): removing the rules never leaves the old grants standing. Until the
//! key is first read, the empty ACL is in force.

use crate::config::EtcdConfig;
use crate::connect::{member_failed, Failover};
use crate::error::ClusterError;
use crate::keys::Layout;
use crate::signed::{AclKey, SignedAclError};
use dcos_exec_access::acl::{Acl, Shared};
use etcd_client::{EventType, WatchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// What `acl = "etcd"` names in a config.
pub const ETCD_SOURCE: &str = "etcd";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(500);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const SILENT: Duration = Duration::from_secs(3);

/// The task that feeds a shared ACL from etcd (stopped on drop).
pub struct EtcdAcl {
    shared: Arc<Shared>,
    loaded: tokio::sync::watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for EtcdAcl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdAcl {
    /// The shared ACL a process starts with before etcd is read: empty, so every request is refused.
    pub fn empty(prefix: &str) -> Arc<Shared> {
        Arc::new(Shared::new(Acl::default(), format!("etcd {}", Layout::new(prefix).acl())))
    }

    /// Watches `{prefix}/acl` and puts every valid version in force in `shared`. Needs a tokio runtime.
    /// Only documents signed with the private half of `key` are put in force.
    pub fn spawn(etcd: EtcdConfig, prefix: &str, key: AclKey, shared: Arc<Shared>) -> EtcdAcl {
        let (loaded_tx, loaded) = tokio::sync::watch::channel(false);
        let reader = Reader { shared: shared.clone(), key, issued: 0 };
        let task = tokio::spawn(watch_loop(etcd, Layout::new(prefix), reader, loaded_tx));
        EtcdAcl { shared, loaded, task }
    }

    /// The ACL it feeds.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits at most `limit` for the first read of the key; false when it did not happen in time.
    pub async fn loaded(&self, limit: Duration) -> bool {
        let mut rx = self.loaded.clone();
        tokio::time::timeout(limit, rx.wait_for(|l| *l)).await.is_ok_and(|r| r.is_ok())
    }
}

/// What checks a new version and puts it in force.
struct Reader {
    shared: Arc<Shared>,
    key: AclKey,
    /// The issue time of the document in force: an older one is a replay.
    issued: u64,
}

async fn watch_loop(etcd: EtcdConfig, layout: Layout, mut reader: Reader, loaded: tokio::sync::watch::Sender<bool>) {
    // The last version put in force, so that reading again after a reconnect reloads only what changed.
    let mut last: Option<Option<Vec<u8>>> = None;
    let mut client: Option<Failover> = None;
    let mut last_error = String::new();
    loop {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Failover::new(&etcd).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    note(&mut last_error, &e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        if let Err(e) = get_and_watch(c, &layout, &mut reader, &loaded, &mut last).await {
            if member_failed(&e) {
                c.next();
            }
            note(&mut last_error, &e);
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn note(last: &mut String, e: &ClusterError) {
    let msg = e.to_string();
    if *last != msg {
        tracing::warn!("watching the ACL in etcd: {msg}; the ACL in force stays");
    }
    *last = msg;
}

fn put_in_force(reader: &mut Reader, value: Option<&[u8]>) {
    let shared = &reader.shared;
    match value {
        Some(v) => match reader.key.verify(v) {
            Ok(doc) if doc.issued < reader.issued => {
                let e = SignedAclError::Replayed { issued: doc.issued, in_force: reader.issued };
                tracing::error!(origin = shared.origin(), "ACL in etcd refused: {e}; the ACL in force stays");
            }
            Ok(doc) => {
                if shared.reload(&doc.acl).is_ok() {
                    reader.issued = doc.issued;
                }
            }
            Err(e) => tracing::error!(origin = shared.origin(), "ACL in etcd refused: {e}; the ACL in force stays"),
        },
        None => {
            tracing::warn!(origin = shared.origin(), "the ACL key is absent: every request is refused");
            shared.replace(Acl::default());
        }
    }
}

async fn get_and_watch(
    c: &mut Failover,
    layout: &Layout,
    reader: &mut Reader,
    loaded: &tokio::sync::watch::Sender<bool>,
    last: &mut Option<Option<Vec<u8>>>,
) -> Result<(), ClusterError> {
    let key = layout.acl();
    let resp = c
        .run(REQUEST_TIMEOUT, |mut cl| {
            let key = key.clone();
            async move { cl.get(key, None).await }
        })
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let current = resp.kvs().first().map(|kv| kv.value().to_vec());
    if last.as_ref() != Some(&current) {
        put_in_force(reader, current.as_deref());
        *last = Some(current);
    }
    loaded.send_replace(true);
    let opts = WatchOptions::new().with_start_revision(revision + 1).with_progress_notify();
    let mut stream = c
        .run(REQUEST_TIMEOUT, |mut cl| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { cl.watch(key, Some(opts)).await }
        })
        .await?;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(r) = msg? else { return Err(ClusterError::Config("the watch stream ended".into())) };
                heard = Instant::now();
                if r.canceled() || r.compact_revision() > 0 {
                    return Err(ClusterError::Config("the ACL watch was cancelled; reading again".into()));
                }
                for e in r.events() {
                    let value = match e.event_type() {
                        EventType::Put => e.kv().map(|kv| kv.value().to_vec()),
                        EventType::Delete => None,
                    };
                    if last.as_ref() != Some(&value) {
                        put_in_force(reader, value.as_deref());
                        *last = Some(value);
                    }
                }
            }
            _ = progress.tick() => {
                if heard.elapsed() > SILENT {
                    return Err(ClusterError::Timeout(SILENT));
                }
                stream.request_progress().await?;
            }
        }
    }
}

/// Signs `text` with the ACL-signing key (`private_pem`, PKCS#8) and writes it as the ACL in etcd (`acl push`);
/// refuses text that does not parse, so that nothing this writes can be refused by the readers.
pub async fn publish(etcd: &EtcdConfig, prefix: &str, private_pem: &[u8], text: &str) -> Result<(), PublishError> {
    Acl::parse(text).map_err(PublishError::Acl)?;
    let doc = crate::signed::sign(private_pem, text, crate::record::unix_now()).map_err(PublishError::Sign)?;
    let mut c = Failover::new(etcd).await?;
    let key = Layout::new(prefix).acl();
    c.run(REQUEST_TIMEOUT, |mut cl| {
        let (key, text) = (key.clone(), doc.clone());
        async move { cl.put(key, text, None).await }
    })
    .await?;
    Ok(())
}

/// Why [`publish`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The text is not a valid ACL.
    #[error(transparent)]
    Acl(dcos_exec_access::acl::AclError),
    /// The signing key cannot be used.
    #[error(transparent)]
    Sign(SignedAclError),
    /// etcd could not be written.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}
