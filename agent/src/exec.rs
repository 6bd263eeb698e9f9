//! The agent's side of exec: turns a request and a resolved container into an [`ExecSpec`], starts the helper
//! (crate `dcos-exec-container`) and talks to it over its typed channel.

use crate::runtime::stopped::StoppedFiles;
use crate::runtime::Container;
use dcos_exec_container::channel::{self, Control, Event};
use dcos_exec_container::spec::{self, ExecSpec, Overrides};
use dcos_exec_proto::{ErrorCode, ExecRequest};
use std::os::fd::OwnedFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use dcos_exec_container::helper::HELPER_ARG;
pub use dcos_exec_container::sealed::SealedExe;

/// Errors before the helper runs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("reading {path}: {cause}")]
    Bundle { path: String, cause: String },
    #[error("{0}")]
    Spec(#[from] spec::SpecError),
    #[error("opening the debug image's layer {path}: {cause}")]
    Layer { path: String, cause: std::io::Error },
    #[error("the stopped container's files cannot be opened: {what}: {cause}")]
    Stopped { what: String, cause: std::io::Error },
    /// The sandbox of a stopped container has no user namespace: a container that had one (its root an
    /// unprivileged uid of the host) would run there as the host's root with its capabilities.
    #[error(
        "the stopped container ran in a user namespace of its own, which its debug sandbox cannot recreate: \
         its root and capabilities would be the host's; start the container to debug it"
    )]
    StoppedUserNamespace,
    #[error("starting the exec helper: {0}")]
    Spawn(#[from] std::io::Error),
}

impl ExecError {
    /// The wire's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ExecError::Bundle { .. }
            | ExecError::Spec(_)
            | ExecError::Layer { .. }
            | ExecError::Stopped { .. }
            | ExecError::StoppedUserNamespace => ErrorCode::StartFailed,
            ExecError::Spawn(_) => ErrorCode::Internal,
        }
    }
}

/// The helper's spec for this request, and the debug image's layer directories (top first), opened.
pub fn build_spec(
    c: &Container,
    req: &ExecRequest,
    grace_ms: u64,
    image: Option<&dcos_exec_images::pull::PulledImage>,
    cap_add: &[u32],
    writable: bool,
    engine_files: Option<StoppedFiles>,
) -> Result<(ExecSpec, Vec<OwnedFd>), ExecError> {
    let (config, engine_files) = match engine_files {
        Some(f) => (f.config.clone(), Some(f)),
        None => {
            let path = c.bundle.join("config.json");
            let config = oci_spec::runtime::Spec::load(&path)
                .map_err(|e| ExecError::Bundle { path: path.display().to_string(), cause: e.to_string() })?;
            (config, None)
        }
    };
    let mut layers = match image {
        Some(img) => img
            .layers
            .iter()
            .rev()
            .map(|p| {
                // O_PATH|O_DIRECTORY|O_NOFOLLOW: the cache's own directory, nothing a link points to.
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(p)
                    .map(OwnedFd::from)
                    .map_err(|cause| ExecError::Layer { path: p.display().to_string(), cause })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let debug_layers = image.map(|_| layers.len());
    // A stopped container has no init to join: its root and bind mounts go to the helper as descriptors.
    let stopped = match (image, c.state) {
        (Some(_), crate::runtime::State::Stopped) => {
            let hostname = config.hostname().clone();
            let (target, fds) = match engine_files {
                // From the engine (Docker, containerd), opened and checked by `runtime::stopped`.
                Some(f) => {
                    (spec::StoppedTarget { root: f.root, binds: f.binds, masks: f.masks, writable, hostname }, f.fds)
                }
                None => {
                    let (t, fds) = stopped_target(c, &config, writable)?;
                    (spec::StoppedTarget { hostname, ..t }, fds)
                }
            };
            layers.extend(fds);
            Some(target)
        }
        _ => None,
    };
    let o = Overrides {
        args: req.command.clone(),
        env: req.env.clone(),
        user: req.user.clone(),
        workdir: req.workdir.clone(),
        tty: req.tty,
        size: req.size,
        image_env: image.map(|i| i.env.clone()),
        image_workdir: image.and_then(|i| i.working_dir.clone()),
        cap_add: cap_add.to_vec(),
        debug_layers,
        stopped,
    };
    Ok((spec::build(&config, c.pid, c.start_time, &o, grace_ms)?, layers))
}

fn open_dir(p: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(p).map(OwnedFd::from)
}

/// Opens the directory at the absolute `p` with no symlink in any component (`openat2(RESOLVE_NO_SYMLINKS)`).
fn open_dir_no_symlinks(p: &std::path::Path) -> std::io::Result<OwnedFd> {
    let rel = p
        .strip_prefix("/")
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an absolute path"))?;
    let root = open_dir(std::path::Path::new("/"))?;
    if rel.as_os_str().is_empty() {
        return Ok(root);
    }
    let rel = rel.to_str().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"))?;
    dcos_exec_container::resolve::open_mount_point(&root, rel)
}

/// A stopped container's root filesystem (from `root.path`, relative to the bundle) and the bind mounts of its
/// `config.json` whose sources are directories, opened; its other mounts (other filesystem types, file binds,
/// sources reached through a symlink or gone) are masked, in the container's order.
fn stopped_target(
    c: &Container,
    config: &oci_spec::runtime::Spec,
    writable: bool,
) -> Result<(spec::StoppedTarget, Vec<OwnedFd>), ExecError> {
    // Checked before anything is opened: the sandbox's namespaces are the helper's fixed set, without a user
    // namespace, so the container's uid 0 and capabilities would be those of the host's root.
    let user_ns = config
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User));
    if user_ns {
        return Err(ExecError::StoppedUserNamespace);
    }
    let root_path = config.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
    let root_path = if root_path.is_absolute() { root_path } else { c.bundle.join(root_path) };
    let root = open_dir(&root_path)
        .map_err(|cause| ExecError::Stopped { what: format!("its root filesystem {}", root_path.display()), cause })?;
    let mut fds = vec![root];
    let (mut binds, mut masks) = (Vec::new(), Vec::new());
    for m in config.mounts().iter().flatten() {
        let opts = m.options().clone().unwrap_or_default();
        let destination = m.destination().display().to_string();
        // Without following any symlink: a container writes into its volumes, and a source below one of them
        // (reached through another of its mounts) may have been replaced by a link to the host's `/`.
        let opened = spec::StoppedBind::from_oci(&destination, m.typ().as_deref(), &opts)
            .and_then(|b| Some((b, open_dir_no_symlinks(m.source().as_ref()?).ok()?)));
        match opened {
            Some((bind, fd)) => {
                fds.push(fd);
                binds.push(bind);
            }
            // What the container's mount covered (a key under a /dev/null bind, a directory under a tmpfs) never
            // showed in it, and must not in the sandbox.
            None => masks.push(spec::StoppedMask { destination, after: binds.len() }),
        }
    }
    Ok((spec::StoppedTarget { binds, masks, writable, root: spec::StoppedRoot::Dir, hostname: None }, fds))
}

/// A running helper and the agent's ends of its channels.
pub struct Spawned {
    pub child: tokio::process::Child,
    /// Control frames; dropping it tells the helper the client is gone.
    pub ctrl: tokio::net::unix::pipe::Sender,
    /// Event frames.
    pub events: tokio::net::unix::pipe::Receiver,
    /// The agent's end of the console socket (terminal sessions).
    pub console: Option<OwnedFd>,
}

/// Starts the helper for `spec` and hands it the spec.
pub async fn spawn(exe: &SealedExe, spec: &ExecSpec, layers: Vec<OwnedFd>) -> Result<Spawned, ExecError> {
    let mut l = dcos_exec_container::helper::launch(&exe.path(), spec, layers)?;
    let mut cmd = tokio::process::Command::from(std::mem::replace(&mut l.command, std::process::Command::new("")));
    cmd.kill_on_drop(false);
    let child = cmd.spawn()?;
    l.spawned();
    let mut ctrl = tokio::net::unix::pipe::Sender::from_owned_fd(l.control)?;
    let events = tokio::net::unix::pipe::Receiver::from_owned_fd(l.events)?;
    ctrl.write_all(&channel::encode(&Control::Spec(Box::new(spec.clone())))).await?;
    Ok(Spawned { child, ctrl, events, console: l.console })
}

/// The helper's next event; `None` once it is gone (or spoke nonsense).
pub async fn next_event(r: &mut tokio::net::unix::pipe::Receiver) -> Option<Event> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; channel::body_len(header).ok()?];
    r.read_exact(&mut body).await.ok()?;
    match channel::decode(&body) {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::warn!("bad helper event: {e}");
            None
        }
    }
}

/// A signal for the helper to deliver.
pub fn signal_frame(n: i32) -> Vec<u8> {
    channel::encode(&Control::Signal(n))
}

/// Receives the pty master the helper sent over the console socket.
pub fn recv_master(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    dcos_exec_container::pty::recv_fd(sock.as_fd())
}
