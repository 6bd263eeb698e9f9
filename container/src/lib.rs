//! Joining a running container, the way `runc exec` does, without runc.
//!
//! The agent is a multithreaded tokio process, and `setns` into a mount or user namespace needs a single
//! thread, so every session runs the [`helper`]: a fresh process executed from a [`sealed`] copy of the agent
//! binary. The agent talks to it only through [`channel`]; everything the helper needs is plain data in a
//! [`spec::ExecSpec`], built from the container's `config.json` and the request by [`spec::build`].
//!
//! What the helper does, in modules named for it: [`procfs`] (reading `/proc/PID/stat` and `status`),
//! [`cgroup`] (joining the init's cgroups), [`user`] (users and groups from the container's files, with id
//! checks), [`resolve`] (opening container files inside its root, never outside), [`caps`], [`seccomp`],
//! [`lsm`] (AppArmor and SELinux), [`pty`] (a terminal from the container's own `/dev/ptmx`) and
//! [`debugroot`] (the `--debug-image` root). No tokio here: the helper is a plain single-threaded process.

// Public items say what they are: other crates and their authors build on them.
#![warn(missing_docs)]
// Library code returns errors rather than panicking, and leaves the process's stdout and stderr to its
// caller (in the helper they are the user's process's).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]
// Each step of joining a container is a security step: an ignored result (the terminal's fchown was one)
// is a step that silently did not happen.
#![warn(clippy::let_underscore_must_use)]

pub mod caps;
pub mod cgroup;
pub mod channel;
pub mod debugroot;
pub mod error;
pub mod helper;
pub mod lsm;
pub mod procfs;
pub mod pty;
pub mod resolve;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod user;

pub use error::StartError;
pub use spec::ExecSpec;
