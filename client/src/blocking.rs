//! The same client for code without an async runtime, such as plain `#[test]` functions.
//!
//! ```no_run
//! # fn smoke() -> Result<(), dcos_exec::Error> {
//! let client = dcos_exec::blocking::Client::from_env()?;
//! let out = client.exec("web-1", ["cat", "/etc/hostname"])?;
//! assert!(out.status.success());
//! let out = client.output(client.inner().command("web-1", ["sort"]).stdin_bytes("b\na\n"))?;
//! assert_eq!(out.stdout_text(), "a\nb\n");
//! # Ok(())
//! # }
//! ```
//!
//! Each call runs on a runtime of the client's own; calling one from inside an async runtime panics, as
//! `tokio::runtime::Runtime::block_on` does (use [`crate::Client`] there).

use crate::{Error, Output, TaskInfo, TlsOptions};

/// A [`crate::Client`] with a runtime of its own.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// [`crate::Client::from_env`], blocking.
    pub fn from_env() -> Result<Client, Error> {
        Client::wrap(crate::Client::from_env()?)
    }

    /// [`crate::Client::new`], blocking.
    pub fn new(url: &str, token: Option<String>, tls: TlsOptions) -> Result<Client, Error> {
        Client::wrap(crate::Client::new(url, token, tls)?)
    }

    /// Wraps an async client.
    pub fn wrap(inner: crate::Client) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)?;
        Ok(Client { inner, rt })
    }

    /// The async client, to build a [`crate::Command`] for [`Client::output`].
    pub fn inner(&self) -> &crate::Client {
        &self.inner
    }

    /// [`crate::Client::tasks`], blocking.
    pub fn tasks(&self) -> Result<Vec<TaskInfo>, Error> {
        self.rt.block_on(self.inner.tasks())
    }

    /// [`crate::Client::exec`], blocking.
    pub fn exec<I, S>(&self, task: &str, argv: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rt.block_on(self.inner.exec(task, argv))
    }

    /// Runs a command built with `self.inner().command(...)` and collects its output, blocking.
    pub fn output(&self, cmd: crate::Command<'_>) -> Result<Output, Error> {
        self.rt.block_on(cmd.output())
    }
}
