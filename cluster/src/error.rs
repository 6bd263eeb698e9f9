//! Errors of the cluster crate.

use std::path::PathBuf;
use std::time::Duration;

/// Errors talking to etcd or reading its content.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A TLS file of the `etcd` table could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The `etcd` table is not usable (no endpoints, a certificate without its key, ...).
    #[error("etcd configuration: {0}")]
    Config(String),
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// An etcd request took longer than allowed.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// A record in etcd is not what this version writes.
    #[error("record {key} is not valid: {cause}")]
    Record {
        /// The key.
        key: String,
        /// Why.
        cause: serde_json::Error,
    },
    /// Another agent (at `url`) holds this node name.
    #[error("node name {node} is registered by another agent at {url}, whose lease is alive: two agents must not share a node name")]
    NodeTaken {
        /// The node name.
        node: String,
        /// The other agent's URL.
        url: String,
    },
    /// The agent's lease is gone (expired while etcd was unreachable, or revoked).
    #[error("lease {0:x} is gone")]
    LeaseLost(i64),
}

/// Why a gateway cannot answer from the directory. Maps to the wire code `cluster_unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// etcd has been unreachable for longer than `max_stale` (or was never reached): the last snapshot is too
    /// old to route by.
    #[error("the cluster directory is unavailable: {reason}")]
    Unavailable {
        /// How long the directory has been out of date, when it ever was up to date.
        stale_for: Option<Duration>,
        /// What went wrong last, for people.
        reason: String,
    },
}
