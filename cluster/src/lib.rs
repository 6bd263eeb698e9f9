//! The cluster directory of dcos-exec, kept in etcd. Agents register (a [`registrar::Registrar`] keeps the
//! node record and the task records under a lease), gateways read (a [`directory::Directory`] holds a watched
//! in-memory snapshot of all of them). The key layout is in [`keys`], the records in [`record`]. The ACL can
//! live in etcd too ([`acl`]), signed by the operator ([`signed`]), watched and reloaded on change.

// Nothing the network or etcd's content controls may panic the process.
// Public items say what they are: the gateway and the agent build on them.
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

pub mod acl;
pub mod config;
pub mod connect;
pub mod directory;
pub mod error;
pub mod identity;
pub mod keys;
pub mod record;
pub mod registrar;
pub mod signed;

pub use config::EtcdConfig;
pub use directory::{Directory, Indexed, Snapshot};
pub use error::{ClusterError, DirectoryError};
pub use keys::DEFAULT_PREFIX;
pub use record::{NodeRecord, TaskRecord};
pub use registrar::Registrar;
