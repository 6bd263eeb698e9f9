//! `dcos_exec`: run commands inside tasks' containers through a dcos-exec agent, from Rust.
//!
//! It is the session code of the `dcos` CLI as a library, for integration tests and CI pipelines that check a
//! running container: the same settings (`DCOS_URL`, `DCOS_ACS_TOKEN`, `DCOS_SSL_VERIFY`, `DCOS_PROFILE` and
//! `dcos.toml`, see [`config`]), the same TLS, the same wire protocol, and an API shaped like
//! [`std::process::Command`]:
//!
//! - [`Client::from_env`] or [`Client::new`] names an agent, a token and a TLS trust;
//! - [`Client::tasks`] lists the tasks the token may see;
//! - [`Client::exec`] runs a command and collects its [`Output`] (stdout, stderr, [`ExitStatus`]);
//! - [`Client::command`] returns a [`Command`] builder for stdin, environment, user, working directory,
//!   terminal and debug image, which runs with [`Command::output`] or streams with [`Command::spawn`]
//!   ([`Session`], [`Event`], [`Stdin`], [`Control`]);
//! - every failure is an [`Error`], one variant per kind of refusal of the agent (unknown task, denied, bad
//!   token, ...), plus TLS, unreachable agent and lost session; [`Error::exit_code`] is the CLI's exit code.
//!
//! A command that ran is `Ok` whatever its exit code, as with `std::process::Command::output`; a command that
//! could not run is an `Err`. A command may run as long as it likes: wrap a call in `tokio::time::timeout` to
//! bound it. What the client does bound is a silent or hostile agent: its answer's headers must come within
//! 45 s of the TLS handshake ([`Client::request_timeout`], `DCOS_REQUEST_TIMEOUT`), a session that hears
//! nothing from it, not even a ping, for 60 s is lost ([`Client::liveness_timeout`], `DCOS_LIVENESS_TIMEOUT`),
//! and a task list may hold at most 256 MiB (a refusal 64 KiB). Dropping
//! a [`Session`], or a future of [`Client::exec`] or [`Command::output`], closes the connection, and the agent
//! hangs up the process (`SIGHUP`, then `SIGKILL` after its `grace_period`).
//!
//! ```no_run
//! # async fn smoke() -> Result<(), dcos_exec::Error> {
//! use dcos_exec::{Client, Error};
//!
//! // DCOS_URL, DCOS_ACS_TOKEN and DCOS_SSL_VERIFY, as a CI job has them.
//! let client = Client::from_env()?;
//!
//! let out = client.exec("web-1", ["cat", "/etc/hostname"]).await?;
//! assert!(out.status.success(), "{}", out.stderr_text());
//!
//! // stdin, environment and working directory, as with `docker exec -i -e -w`.
//! let out = client
//!     .command("web-1", ["sh", "-c", "cd && pwd && sort"])
//!     .env("HOME", "/tmp")
//!     .stdin_bytes("b\na\n")
//!     .output()
//!     .await?;
//! assert_eq!(out.stdout_text(), "/tmp\na\nb\n");
//!
//! // Refusals are typed.
//! match client.exec("no-such-task", ["true"]).await {
//!     Err(Error::TaskNotFound(message)) => eprintln!("as expected: {message}"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Streaming, with a signal sent while output arrives:
//!
//! ```no_run
//! # async fn stream(client: dcos_exec::Client) -> Result<(), dcos_exec::Error> {
//! use dcos_exec::Event;
//!
//! let mut session = client.command("web-1", ["sh", "-c", "echo ready; sleep 60"]).spawn().await?;
//! let control = session.control();
//! while let Some(event) = session.next_event().await? {
//!     match event {
//!         Event::Stdout(bytes) if bytes.starts_with(b"ready") => control.signal("TERM"),
//!         Event::Exit(status) => assert_eq!(status.signal(), Some(15)),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The library uses tokio; call it from a tokio runtime (`#[tokio::test]` in tests), or use [`blocking`] from
//! plain code. It never prints.

// Public items say what they are: other crates and their authors build on them.
#![warn(missing_docs)]
// Library code returns errors rather than panicking, and leaves the process's stdout and stderr to its
// caller.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

pub mod blocking;
mod client;
pub mod config;
mod error;
mod exec;
mod tls;

pub use client::Client;
pub use config::{Origin, Settings, SslVerify, TlsOptions};
pub use dcos_exec_proto::{ErrorCode, Started, TaskInfo, TermSize};
pub use error::Error;
pub use exec::{Command, Control, Event, ExitStatus, Output, Session, Stdin};
pub use tls::client_config;
