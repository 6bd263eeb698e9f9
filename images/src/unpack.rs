//! Safe unpacking of one OCI layer tar stream into a fresh directory, converting whiteouts to overlay form.
//!
//! Every directory below `dest` is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the
//! layer root's fd (on kernels without openat2, component by component with `O_NOFOLLOW`), and every final
//! name is created with a `*at` call that does not follow symlinks, so no entry can write outside `dest`.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use xattr::FileExt as _;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Knobs for [`unpack_layer`]; the defaults are the safe choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Create character/block devices and fifos instead of refusing them.
    pub allow_devices: bool,
    /// Keep setuid/setgid bits and file capabilities (`security.capability`) instead of stripping them: the
    /// operator's choice to let images carry privilege (ping's `cap_net_raw`, sudo's setuid bit).
    pub keep_setid: bool,
    /// What one layer and one image may take.
    pub limits: Limits,
}

/// Budgets that bound what an image can make the unpacker write. Named as the `[images]` keys of the agent's
/// configuration, so that an error names the key to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one layer as unpacked (its uncompressed tar stream, and the file content written).
    pub max_layer_bytes: u64,
    /// Bytes of all layers unpacked by one pull, together.
    pub max_image_bytes: u64,
    /// Tar entries of one layer.
    pub max_entries: u64,
    /// Bytes of an entry's path or link target.
    pub max_path_len: u64,
    /// Components of an entry's path.
    pub max_depth: u64,
    /// Layers of one image, checked on the manifest before any blob is fetched (each is a lower directory of
    /// the session's overlay, and a descriptor while it is mounted).
    pub max_layers: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 4 << 30,
            max_image_bytes: 8 << 30,
            max_entries: 500_000,
            max_path_len: 4096,
            max_depth: 128,
            max_layers: 128,
        }
    }
}

/// A budget of [`Limits`] ran out: which one (its configuration key), its value and how far the image got.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image budget exceeded: {limit} = {max}, but {what} {amount}")]
pub struct BudgetExceeded {
    /// The `[images]` configuration key, such as `max_layer_bytes`.
    pub limit: &'static str,
    /// Its value.
    pub max: u64,
    /// The amount that crossed the limit (bytes so far, entries so far, a path's length or depth).
    pub amount: u64,
    what: &'static str,
}

impl BudgetExceeded {
    /// The budget error somewhere in `e`'s chain of causes.
    fn find(e: &io::Error) -> Option<BudgetExceeded> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|x| x as _);
        while let Some(err) = cur {
            if let Some(b) = err.downcast_ref::<BudgetExceeded>() {
                return Some(b.clone());
            }
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if let Some(b) = BudgetExceeded::find(io) {
                    return Some(b);
                }
            }
            cur = err.source();
        }
        None
    }
}

impl BudgetExceeded {
    /// `amount` (described by `what`, e.g. "the layer's blob declares") crossed `limit` = `max`.
    pub fn new(limit: &'static str, max: u64, what: &'static str, amount: u64) -> BudgetExceeded {
        BudgetExceeded { limit, max, amount, what }
    }
}

fn over(limit: &'static str, max: u64, what: &'static str, amount: u64) -> Result<(), BudgetExceeded> {
    if amount > max {
        Err(BudgetExceeded { limit, max, amount, what })
    } else {
        Ok(())
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Tar entries processed (including whiteouts and opaque markers).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// sha256 of the uncompressed layer (its diff-id), to check against the image config.
    pub diff_id: Digest,
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    /// A path from `/`: it would name a host file.
    #[error("absolute path")]
    AbsolutePath,
    /// A `..` component: it could climb out of the layer.
    #[error("path contains a '..' component")]
    ParentTraversal,
    /// A NUL byte, which no file name can hold.
    #[error("path contains a NUL byte")]
    NulByte,
    /// No file name (only `.` components), other than the root directory entry.
    #[error("entry has no file name")]
    NoName,
    /// A component on the way is a symlink or not a directory: writing through it could leave the
    /// layer.
    #[error("parent component {0:?} is a symlink or not a directory")]
    ParentNotDirectory(String),
    /// A hardlink to something outside the layer (absolute, `..`, or through a symlink).
    #[error("hardlink target {0:?} is outside the layer")]
    HardlinkOutside(String),
    /// A hardlink to an entry not (yet) in the layer.
    #[error("hardlink target {0:?} has not been extracted")]
    HardlinkMissing(String),
    /// A hardlink to a directory.
    #[error("hardlink target {0:?} is a directory")]
    HardlinkToDirectory(String),
    /// A symlink or hardlink entry without its target.
    #[error("link entry has no target")]
    MissingLinkTarget,
    /// A device node or fifo, without `allow_devices`.
    #[error("device nodes and fifos are not allowed")]
    Device,
    /// A whiteout of nothing, `.` or `..`.
    #[error("invalid whiteout name")]
    BadWhiteout,
    /// An overlayfs xattr (`trusted.overlay.*`, `user.overlay.*`): only the unpacker may set those.
    #[error("xattr {0:?} is reserved for overlayfs")]
    ReservedXattr(String),
    /// A non-directory entry where a directory already is.
    #[error("would replace existing directory with a non-directory")]
    ReplacesDirectory,
    /// An entry type that has no place in a layer.
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(tar::EntryType),
    /// A header field that does not parse or is out of range.
    #[error("invalid header field: {0}")]
    BadHeader(String),
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The destination already has something in it.
    #[error("destination {0} exists and is not an empty directory")]
    DestNotFresh(PathBuf),
    /// The destination could not be created or opened.
    #[error("cannot prepare destination {path}: {source}")]
    Dest {
        /// The destination.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The stream is not a (compressed) tar archive, or broke off.
    #[error("reading layer archive: {0}")]
    Archive(io::Error),
    /// An entry was refused: the layer tried something it may not.
    #[error("refusing layer entry {entry:?}: {reason}")]
    Refused {
        /// The entry's path as in the archive.
        entry: String,
        /// Why.
        reason: RefuseReason,
    },
    /// An entry could not be written.
    #[error("unpacking layer entry {entry:?}: {source}")]
    Entry {
        /// The entry's path as in the archive.
        entry: String,
        /// What the system said.
        source: io::Error,
    },
    /// The uncompressed layer is not the one the image config lists.
    #[error("layer content is {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The config's diff-id.
        expected: Digest,
        /// The content's.
        actual: Digest,
    },
    /// A budget of [`Limits`] ran out.
    #[error(transparent)]
    Budget(#[from] BudgetExceeded),
    /// A GNU long-name or long-link, or PAX, entry larger than its bound (the tar reader would hold it in memory).
    #[error(transparent)]
    ExtensionTooLarge(#[from] ExtensionTooLarge),
}

/// A tar entry that only describes the next one (GNU `L`/`K`, PAX `x`/`g`) declared more bytes than may be held in
/// memory; refused before any of it is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing layer: a {kind} entry of {size} bytes (at most {max})")]
pub struct ExtensionTooLarge {
    /// "GNU long name", "GNU long link name", "PAX header" or "PAX global header".
    pub kind: &'static str,
    /// The size its header declares.
    pub size: u64,
    /// The bound.
    pub max: u64,
}

/// Bytes a GNU long name or long link entry may have: far beyond any `max_path_len` worth setting.
pub const MAX_LONG_NAME: u64 = 64 << 10;
/// Bytes a PAX header entry may have: room for paths and for xattrs (`SCHILY.xattr.*`, each at most 64 KiB on
/// Linux) together.
pub const MAX_PAX_HEADER: u64 = 1 << 20;

impl UnpackError {
    /// `e` as a budget error if a budget check caused it (the check runs inside readers, so it arrives as I/O),
    /// else as what `other` makes of it.
    fn from_io(e: io::Error, other: impl FnOnce(io::Error) -> UnpackError) -> UnpackError {
        if let Some(x) = e.get_ref().and_then(|x| x.downcast_ref::<ExtensionTooLarge>()) {
            return UnpackError::ExtensionTooLarge(x.clone());
        }
        match BudgetExceeded::find(&e) {
            Some(b) => UnpackError::Budget(b),
            None => other(e),
        }
    }
}

/// Unpack one layer stream (plain, gzip or zstd, detected by magic bytes) into `dest`, which must not exist
/// or be an empty directory. On error `dest` may be partially populated; callers unpack into a temporary
/// directory and discard it on failure.
pub fn unpack_layer<R: Read>(stream: R, dest: &Path, opts: &UnpackOptions) -> Result<UnpackSummary, UnpackError> {
    unpack_layer_of_image(stream, dest, opts, &AtomicU64::new(0))
}

/// [`unpack_layer`] for one layer of an image whose layers share `max_image_bytes`: `image_bytes` counts the
/// uncompressed bytes of all of them (they may unpack concurrently).
pub fn unpack_layer_of_image<R: Read>(
    stream: R,
    dest: &Path,
    opts: &UnpackOptions,
    image_bytes: &AtomicU64,
) -> Result<UnpackSummary, UnpackError> {
    unpack_with(stream, dest, opts, image_bytes, Resolver::detect())
}

fn unpack_with<R: Read>(
    stream: R,
    dest: &Path,
    opts: &UnpackOptions,
    image_bytes: &AtomicU64,
    resolver: Resolver,
) -> Result<UnpackSummary, UnpackError> {
    let root = prepare_dest(dest)?;
    let archive_err = |e| UnpackError::from_io(e, UnpackError::Archive);
    let reader = HashingReader {
        inner: decompress(stream).map_err(archive_err)?,
        hasher: Sha256::new(),
        n: 0,
        limits: opts.limits,
        image_bytes,
    };
    let mut archive = tar::Archive::new(ExtensionGuard::new(reader));
    let mut u = Unpacker {
        root,
        opts: *opts,
        resolver,
        is_root: is_root(),
        deferred_dirs: Vec::new(),
        summary: UnpackSummary { entries: 0, bytes: 0, diff_id: Digest::from_bytes([0; 32]) },
    };
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        over("max_entries", opts.limits.max_entries, "the layer has at least", u.summary.entries + 1)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        u.entry(&mut entry, &name)?;
        u.summary.entries += 1;
    }
    u.finish_dirs()?;
    // The diff-id covers the whole uncompressed stream, padding after the end-of-archive blocks included (and
    // the stream's budget bounds how much of that there can be).
    let mut rest = archive.into_inner().inner;
    io::copy(&mut rest, &mut io::sink()).map_err(archive_err)?;
    u.summary.diff_id = Digest::from_bytes(rest.hasher.finalize().into());
    Ok(u.summary)
}

/// Hashes what the tar reader consumes: the uncompressed layer, whose sha256 is the diff-id. It also enforces
/// the byte budgets on that stream, so a decompression bomb stops at the limit, not at the end of the disk.
struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    n: u64,
    limits: Limits,
    image_bytes: &'a AtomicU64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        let image = self.image_bytes.fetch_add(k as u64, Ordering::Relaxed) + k as u64;
        over("max_layer_bytes", self.limits.max_layer_bytes, "the layer unpacks to at least", self.n)
            .and_then(|()| over("max_image_bytes", self.limits.max_image_bytes, "the image unpacks to at least", image))
            .map_err(io::Error::other)?;
        self.hasher.update(&buf[..k]);
        Ok(k)
    }
}

/// Follows the tar stream's headers on its way to the tar reader and refuses a GNU long-name or long-link entry
/// over [`MAX_LONG_NAME`], or a PAX one over [`MAX_PAX_HEADER`], before its body is read: the tar crate reads such
/// entries whole into memory before `max_path_len` can be checked, so a 1 MB gzip layer could make it allocate a
/// gigabyte per name. It parses headers as the tar crate does (its own header type; a PAX `size` overrides the
/// next entry's; GNU sparse extension blocks; the first zero block ends the archive).
struct ExtensionGuard<R> {
    inner: R,
    header: [u8; 512],
    /// Bytes of `header` filled so far.
    filled: usize,
    state: GuardState,
    /// The body of the PAX header being read (with its size), to learn a `size` it sets for the next entry.
    pax: Option<(Vec<u8>, u64)>,
    /// The size the last PAX header set for the next entry.
    pax_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuardState {
    Header,
    /// GNU sparse extension blocks to read, then `body` bytes (rounded up to blocks).
    SparseExt {
        body: u64,
    },
    /// Bytes of an entry's body (padding included) still to pass.
    Body {
        left: u64,
    },
    /// After the end of the archive: the rest only counts for the diff-id.
    Done,
}

impl<R> ExtensionGuard<R> {
    fn new(inner: R) -> Self {
        ExtensionGuard { inner, header: [0; 512], filled: 0, state: GuardState::Header, pax: None, pax_size: None }
    }

    /// Takes the header now complete in `self.header`.
    fn on_header(&mut self) -> io::Result<()> {
        if self.header.iter().all(|&b| b == 0) {
            self.state = GuardState::Done;
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&self.header);
        let kind = h.entry_type();
        let bound = match kind {
            tar::EntryType::GNULongName => Some(("GNU long name", MAX_LONG_NAME)),
            tar::EntryType::GNULongLink => Some(("GNU long link name", MAX_LONG_NAME)),
            tar::EntryType::XHeader => Some(("PAX header", MAX_PAX_HEADER)),
            tar::EntryType::XGlobalHeader => Some(("PAX global header", MAX_PAX_HEADER)),
            _ => None,
        };
        // A bad size field is the tar reader's to report.
        let declared = h.entry_size().unwrap_or(0);
        let size = match bound {
            Some((kind, max)) if declared > max => {
                return Err(io::Error::other(ExtensionTooLarge { kind, size: declared, max }));
            }
            Some(_) => declared,
            None => self.pax_size.unwrap_or(declared),
        };
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let held_by_tar = recognized
            && matches!(kind, tar::EntryType::GNULongName | tar::EntryType::GNULongLink | tar::EntryType::XHeader);
        if !held_by_tar {
            // The tar reader hands this entry out, and forgets the PAX header with it.
            self.pax_size = None;
        }
        self.pax = (recognized && kind == tar::EntryType::XHeader).then(|| (Vec::new(), size));
        let body = size.div_ceil(512).saturating_mul(512);
        let sparse_ext = kind == tar::EntryType::GNUSparse && h.as_gnu().is_some_and(|g| g.is_extended());
        self.state = if sparse_ext { GuardState::SparseExt { body } } else { GuardState::Body { left: body } };
        if body == 0 && !sparse_ext {
            self.end_of_body();
        }
        Ok(())
    }

    fn end_of_body(&mut self) {
        if let Some((mut pax, len)) = self.pax.take() {
            pax.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            let size = tar::PaxExtensions::new(&pax)
                .flatten()
                .find(|e| e.key_bytes() == b"size")
                .and_then(|e| e.value().ok().and_then(|v| v.parse::<u64>().ok()));
            self.pax_size = size;
        }
        self.state = GuardState::Header;
    }

    /// Follows `data`, which just passed through.
    fn follow(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.state {
                GuardState::Done => return Ok(()),
                GuardState::Header | GuardState::SparseExt { .. } => {
                    let k = (512 - self.filled).min(data.len());
                    self.header[self.filled..self.filled + k].copy_from_slice(&data[..k]);
                    self.filled += k;
                    data = &data[k..];
                    if self.filled < 512 {
                        continue;
                    }
                    self.filled = 0;
                    match self.state {
                        GuardState::SparseExt { body } => {
                            // `isextended` of a GNU sparse extension block, after its 21 sparse entries.
                            if self.header[504] == 0 {
                                self.state = GuardState::Body { left: body };
                                if body == 0 {
                                    self.end_of_body();
                                }
                            }
                        }
                        _ => self.on_header()?,
                    }
                }
                GuardState::Body { left } => {
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    if let Some((pax, _)) = &mut self.pax {
                        pax.extend_from_slice(&data[..k]);
                    }
                    data = &data[k..];
                    let left = left - k as u64;
                    self.state = GuardState::Body { left };
                    if left == 0 {
                        self.end_of_body();
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for ExtensionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

fn prepare_dest(dest: &Path) -> Result<File, UnpackError> {
    let dest_err = |source| UnpackError::Dest { path: dest.to_path_buf(), source };
    match std::fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(dest).map_err(dest_err)?;
            if !md.is_dir() || std::fs::read_dir(dest).map_err(dest_err)?.next().is_some() {
                return Err(UnpackError::DestNotFresh(dest.to_path_buf()));
            }
        }
        Err(e) => return Err(dest_err(e)),
    }
    let c = CString::new(dest.as_os_str().as_bytes()).map_err(|e| dest_err(e.into()))?;
    open_dir_raw(libc::AT_FDCWD, &c).map_err(dest_err)
}

/// Wrap the stream in the decompressor its magic bytes call for.
fn decompress<'a, R: Read + 'a>(mut stream: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match stream.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let joined = head.chain(stream);
    Ok(if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(joined))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(joined)?)
    } else {
        Box::new(joined)
    })
}

/// Metadata applied after an entry's object exists.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: libc::timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct DeferredDir {
    components: Vec<CString>,
    mode: u32,
    mtime: libc::timespec,
}

/// How directories below the layer root are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: the kernel resolves a whole path and refuses any
    /// symlink in it and anything that would leave the root.
    Openat2,
    /// Kernels without openat2 (before 5.6, or a seccomp filter that hides it): one component at a time from
    /// directory fds with `O_NOFOLLOW`.
    Walk,
}

impl Resolver {
    /// [`Resolver::Openat2`] if the kernel has it, probed once per process.
    fn detect() -> Resolver {
        static HAS_OPENAT2: OnceLock<bool> = OnceLock::new();
        let has = *HAS_OPENAT2.get_or_init(|| {
            let probe = rustix::fs::openat2(
                rustix::fs::CWD,
                ".",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::BENEATH,
            );
            // Opening "." beneath itself cannot be refused on its merits: ENOSYS means no openat2, and EPERM is
            // how older container seccomp profiles answer a syscall they do not know.
            !matches!(probe, Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM))
        });
        if has {
            Resolver::Openat2
        } else {
            Resolver::Walk
        }
    }
}

struct Unpacker {
    root: File,
    opts: UnpackOptions,
    resolver: Resolver,
    is_root: bool,
    /// Directory modes and mtimes are applied last: children would bump the mtime, and a read-only mode
    /// would block creating them.
    deferred_dirs: Vec<DeferredDir>,
    summary: UnpackSummary,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<(), UnpackError> {
        let refuse = |reason| UnpackError::Refused { entry: name.to_string(), reason };
        let io_err = |source| UnpackError::Entry { entry: name.to_string(), source };

        let kind = entry.header().entry_type();
        let limits = self.opts.limits;
        let path_len = entry.path_bytes().len() as u64;
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len() as u64);
        over("max_path_len", limits.max_path_len, "an entry's path or link target has", path_len.max(link_len))?;
        let components = split_path(&entry.path_bytes()).map_err(refuse)?;
        over("max_depth", limits.max_depth, "an entry's path has a depth of", components.len() as u64)?;
        let meta = self.read_meta(entry).map_err(refuse)?;

        // The root entry ("./") only carries metadata for dest itself.
        if components.is_empty() {
            if kind != tar::EntryType::Directory {
                return Err(refuse(RefuseReason::NoName));
            }
            self.apply_owner_xattrs(&self.root, c".", &meta).map_err(io_err)?;
            self.deferred_dirs.push(DeferredDir { components, mode: meta.mode, mtime: meta.mtime });
            return Ok(());
        }

        let (last, parents) = components.split_last().ok_or_else(|| refuse(RefuseReason::NoName))?;
        let parent = self.resolve(parents, true).map_err(|e| map_resolve(e, name))?;
        let last_bytes = last.as_bytes();

        if last_bytes == OPAQUE_MARKER {
            return set_xattr_fd(&parent, OVERLAY_OPAQUE_XATTR, b"y").map_err(io_err);
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh..wh.*` other than the opaque marker is aufs bookkeeping with no overlay meaning.
            if hidden.starts_with(WHITEOUT_PREFIX) {
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse(RefuseReason::BadWhiteout));
            }
            let target = CString::new(hidden).map_err(|_| refuse(RefuseReason::NulByte))?;
            self.clear_slot(&parent, &target, false).map_err(|e| e.into_unpack(name))?;
            return mknod_at(&parent, &target, libc::S_IFCHR, libc::makedev(0, 0)).map_err(io_err);
        }

        let is_dir = kind == tar::EntryType::Directory;
        let existing_dir = self.clear_slot(&parent, last, is_dir).map_err(|e| e.into_unpack(name))?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let file = create_file_at(&parent, last).map_err(io_err)?;
                // Counted as written too: a sparse entry can write more than the stream carries.
                let mut out = BudgetWriter { file, written: self.summary.bytes, max: limits.max_layer_bytes };
                io::copy(entry, &mut out).map_err(|e| UnpackError::from_io(e, io_err))?;
                self.summary.bytes = out.written;
                drop(out);
                self.apply_all(&parent, last, &meta, true).map_err(io_err)?;
            }
            tar::EntryType::Directory => {
                if !existing_dir {
                    mkdir_at(&parent, last, 0o700).map_err(io_err)?;
                }
                self.apply_owner_xattrs(&parent, last, &meta).map_err(io_err)?;
                self.deferred_dirs.push(DeferredDir {
                    components: components.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse(RefuseReason::MissingLinkTarget))?;
                let target = CString::new(target.into_owned()).map_err(|_| refuse(RefuseReason::NulByte))?;
                // SAFETY: both strings are valid NUL-terminated C strings and the dir fd is open.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), last.as_ptr()) }).map_err(io_err)?;
                self.apply_all(&parent, last, &meta, false).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse(RefuseReason::MissingLinkTarget))?;
                self.hardlink(&parent, last, &target).map_err(|e| e.into_unpack(name))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !self.opts.allow_devices {
                    return Err(refuse(RefuseReason::Device));
                }
                let (fmt, dev) = match kind {
                    tar::EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let h = entry.header();
                        let bad = |e: io::Error| refuse(RefuseReason::BadHeader(e.to_string()));
                        let major = h.device_major().map_err(bad)?.unwrap_or(0);
                        let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                        let fmt = if kind == tar::EntryType::Char { libc::S_IFCHR } else { libc::S_IFBLK };
                        (fmt, libc::makedev(major, minor))
                    }
                };
                mknod_at(&parent, last, fmt, dev).map_err(io_err)?;
                self.apply_all(&parent, last, &meta, true).map_err(io_err)?;
            }
            other => return Err(refuse(RefuseReason::UnsupportedType(other))),
        }
        Ok(())
    }

    fn read_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, RefuseReason> {
        let h = entry.header();
        let bad = |e: io::Error| RefuseReason::BadHeader(e.to_string());
        let id = |v: u64| u32::try_from(v).map_err(|_| RefuseReason::BadHeader(format!("id {v} out of range")));
        let mut uid = id(h.uid().map_err(bad)?)?;
        let mut gid = id(h.gid().map_err(bad)?)?;
        let mut mode = h.mode().map_err(bad)? & 0o7777;
        if !self.opts.keep_setid {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
        let secs = h.mtime().map_err(bad)?;
        let mut mtime =
            libc::timespec { tv_sec: libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX), tv_nsec: 0 };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                if let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    // Overlay metadata (redirects, metacopy, opaque) from an image could make overlayfs look
                    // outside the layer, so only this code may set it.
                    if attr.starts_with("trusted.overlay.") || attr.starts_with("user.overlay.") {
                        return Err(RefuseReason::ReservedXattr(attr.to_string()));
                    }
                    if xattr_kept(attr, self.opts.keep_setid) {
                        xattrs.push((attr.to_string(), value.to_vec()));
                    }
                } else if key == "uid" || key == "gid" {
                    let v = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                        .ok_or_else(|| RefuseReason::BadHeader(format!("pax {key}")))?;
                    if key == "uid" {
                        uid = v;
                    } else {
                        gid = v;
                    }
                } else if key == "mtime" {
                    if let Some(t) = std::str::from_utf8(value).ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                }
            }
        }
        Ok(Meta { uid, gid, mode, mtime, xattrs })
    }

    /// Open the directory at `components` below root, creating missing ones (0755) when `create`.
    fn resolve(&self, components: &[CString], create: bool) -> Result<File, ResolveError> {
        if self.resolver == Resolver::Openat2 && !components.is_empty() {
            let path = CString::new(components.iter().map(|c| c.to_bytes()).collect::<Vec<_>>().join(&b'/'))
                .map_err(|e| ResolveError::Io(e.into()))?;
            match open_dir_beneath(&self.root, &path) {
                Ok(f) => return Ok(f),
                // Missing directories are created, and a refusal is named by its component, one step at a time
                // below (each step still through openat2).
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)) => {}
                Err(e) => return Err(ResolveError::Io(e)),
            }
        }
        let mut cur = self.root.try_clone().map_err(ResolveError::Io)?;
        for c in components {
            let next = match self.open_dir_at(&cur, c) {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    match mkdir_at(&cur, c, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(ResolveError::Io(e)),
                    }
                    self.open_dir_at(&cur, c).map_err(|e| classify_open(e, c))?
                }
                Err(e) => return Err(classify_open(e, c)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Open the directory `name` (one component) in `parent`, never through a symlink.
    fn open_dir_at(&self, parent: &File, name: &CStr) -> io::Result<File> {
        match self.resolver {
            Resolver::Openat2 => open_dir_beneath(parent, name),
            Resolver::Walk => open_dir_raw(parent.as_raw_fd(), name),
        }
    }

    /// Make room for a new entry called `name`: a prior non-directory is unlinked (later entries win).
    /// Returns true when a directory already exists and the new entry is a directory too.
    fn clear_slot(&self, parent: &File, name: &CStr, new_is_dir: bool) -> Result<bool, EntryFail> {
        let st = match fstat_at(parent, name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(EntryFail::Io(e)),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return if new_is_dir { Ok(true) } else { Err(EntryFail::Refused(RefuseReason::ReplacesDirectory)) };
        }
        // SAFETY: valid dir fd and NUL-terminated name; unlinkat without AT_REMOVEDIR never follows symlinks.
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) }).map_err(EntryFail::Io)?;
        Ok(false)
    }

    fn hardlink(&self, parent: &File, name: &CStr, target: &[u8]) -> Result<(), EntryFail> {
        let shown = || String::from_utf8_lossy(target).into_owned();
        let comps = match split_path(target) {
            Ok(c) => c,
            Err(RefuseReason::AbsolutePath | RefuseReason::ParentTraversal) => {
                return Err(EntryFail::Refused(RefuseReason::HardlinkOutside(shown())))
            }
            Err(r) => return Err(EntryFail::Refused(r)),
        };
        let (tname, tparents) =
            comps.split_last().ok_or_else(|| EntryFail::Refused(RefuseReason::HardlinkOutside(shown())))?;
        let tparent = match self.resolve(tparents, false) {
            Ok(f) => f,
            Err(ResolveError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(EntryFail::Refused(RefuseReason::HardlinkMissing(shown())))
            }
            Err(ResolveError::Io(e)) => return Err(EntryFail::Io(e)),
            Err(ResolveError::NotDir(_)) => return Err(EntryFail::Refused(RefuseReason::HardlinkOutside(shown()))),
        };
        match fstat_at(&tparent, tname) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(EntryFail::Refused(RefuseReason::HardlinkToDirectory(shown())))
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(EntryFail::Refused(RefuseReason::HardlinkMissing(shown())))
            }
            Err(e) => return Err(EntryFail::Io(e)),
        }
        // The link shares the target's inode, whose metadata was already applied, so none is set here.
        // SAFETY: valid dir fds and NUL-terminated names; flags 0 links a symlink itself rather than following it.
        cvt(unsafe { libc::linkat(tparent.as_raw_fd(), tname.as_ptr(), parent.as_raw_fd(), name.as_ptr(), 0) })
            .map_err(EntryFail::Io)
    }

    /// Owner, mode (unless a symlink), xattrs, then mtime. chown comes first because it clears setid bits
    /// and file capabilities.
    fn apply_all(&self, parent: &File, name: &CStr, meta: &Meta, chmod: bool) -> io::Result<()> {
        self.apply_owner_xattrs(parent, name, meta)?;
        if chmod {
            // SAFETY: valid dir fd and NUL-terminated name of a non-symlink this code just created.
            cvt(unsafe { libc::fchmodat(parent.as_raw_fd(), name.as_ptr(), meta.mode, 0) })?;
        }
        set_times_at(parent, name, meta.mtime)
    }

    fn apply_owner_xattrs(&self, parent: &File, name: &CStr, meta: &Meta) -> io::Result<()> {
        // Without root, ownership cannot be preserved; the files stay owned by the caller.
        if self.is_root {
            // SAFETY: valid dir fd and NUL-terminated name; AT_SYMLINK_NOFOLLOW changes a symlink itself.
            cvt(unsafe {
                libc::fchownat(parent.as_raw_fd(), name.as_ptr(), meta.uid, meta.gid, libc::AT_SYMLINK_NOFOLLOW)
            })?;
        }
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        // The magic link resolves to the already-open directory, and xattr::set does not follow the final name.
        let path =
            PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(OsStr::from_bytes(name.to_bytes()));
        for (key, value) in &meta.xattrs {
            match xattr::set(&path, key, value) {
                Ok(()) => {}
                Err(e) if !self.is_root && matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("setting xattr {key}: {e}"))),
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.deferred_dirs);
        for d in dirs.iter().rev() {
            let shown = d.components.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
            let io_err = |source| UnpackError::Entry { entry: shown.clone(), source };
            let (parent, name) = match d.components.split_last() {
                Some((last, parents)) => {
                    (self.resolve(parents, false).map_err(|e| map_resolve(e, &shown))?, last.as_c_str())
                }
                None => (self.root.try_clone().map_err(io_err)?, c"."),
            };
            // SAFETY: valid dir fd and NUL-terminated name; the entry is a directory created or checked above.
            cvt(unsafe { libc::fchmodat(parent.as_raw_fd(), name.as_ptr(), d.mode, 0) }).map_err(io_err)?;
            set_times_at(&parent, name, d.mtime).map_err(io_err)?;
        }
        Ok(())
    }
}

enum ResolveError {
    NotDir(String),
    Io(io::Error),
}

enum EntryFail {
    Refused(RefuseReason),
    Io(io::Error),
}

impl EntryFail {
    fn into_unpack(self, entry: &str) -> UnpackError {
        match self {
            EntryFail::Refused(reason) => UnpackError::Refused { entry: entry.to_string(), reason },
            EntryFail::Io(source) => UnpackError::Entry { entry: entry.to_string(), source },
        }
    }
}

fn map_resolve(e: ResolveError, entry: &str) -> UnpackError {
    match e {
        ResolveError::NotDir(c) => {
            UnpackError::Refused { entry: entry.to_string(), reason: RefuseReason::ParentNotDirectory(c) }
        }
        ResolveError::Io(source) => UnpackError::Entry { entry: entry.to_string(), source },
    }
}

fn classify_open(e: io::Error, c: &CStr) -> ResolveError {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => ResolveError::NotDir(c.to_string_lossy().into_owned()),
        _ => ResolveError::Io(e),
    }
}

/// Whether an xattr from a layer is written. Only `user.*` and POSIX ACLs, and file capabilities with
/// `keep_setid`: the other namespaces carry privilege (`security.capability` gives file capabilities,
/// `security.selinux`/`SMACK64EXEC` pick a label, IMA/EVM signatures vouch for a file, `trusted.*` is what
/// root-only tools such as overlayfs trust), and a debug image must grant nothing by itself.
fn xattr_kept(name: &str, keep_setid: bool) -> bool {
    name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
        || (keep_setid && name == "security.capability")
}

/// Writes file content while counting it against `max_layer_bytes`, refusing before the write that would cross.
struct BudgetWriter {
    file: File,
    written: u64,
    max: u64,
}

impl io::Write for BudgetWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        over("max_layer_bytes", self.max, "the layer unpacks to at least", self.written + buf.len() as u64)
            .map_err(io::Error::other)?;
        let k = self.file.write(buf)?;
        self.written += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Split an archive path into normal components; `.` and empty components are dropped.
fn split_path(p: &[u8]) -> Result<Vec<CString>, RefuseReason> {
    if p.first() == Some(&b'/') {
        return Err(RefuseReason::AbsolutePath);
    }
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(RefuseReason::ParentTraversal),
            c => out.push(CString::new(c).map_err(|_| RefuseReason::NulByte)?),
        }
    }
    Ok(out)
}

/// PAX time: decimal seconds with an optional fraction.
fn parse_pax_time(s: &str) -> Option<libc::timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec = secs.parse::<libc::time_t>().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tv_nsec = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse::<libc::c_long>().ok()? };
    // Negative times with fractions are rare enough to round to the whole second.
    Some(libc::timespec { tv_sec, tv_nsec: if tv_sec < 0 { 0 } else { tv_nsec } })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_dir_raw(dirfd: libc::c_int, name: &CStr) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: name is NUL-terminated; dirfd is AT_FDCWD or an open directory fd.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Open the directory at relative `path` below `dir`: the kernel refuses a symlink in any component (ELOOP)
/// and any step out of `dir`.
fn open_dir_beneath(dir: &File, path: &CStr) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(dir, path, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS)?;
    Ok(File::from(fd))
}

fn create_file_at(parent: &File, name: &CStr) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid dir fd and NUL-terminated name; O_EXCL|O_NOFOLLOW never opens an existing file or symlink.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn mkdir_at(parent: &File, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid dir fd and NUL-terminated name; mkdirat does not follow a symlink at the final name.
    cvt(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) })
}

fn mknod_at(parent: &File, name: &CStr, fmt: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid dir fd and NUL-terminated name; mknodat never follows a symlink at the final name.
    cvt(unsafe { libc::mknodat(parent.as_raw_fd(), name.as_ptr(), fmt | 0o600, dev) })
}

fn fstat_at(parent: &File, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, NUL-terminated name and a writable stat buffer.
    cvt(unsafe { libc::fstatat(parent.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn set_times_at(parent: &File, name: &CStr, mtime: libc::timespec) -> io::Result<()> {
    let times = [mtime, mtime];
    // SAFETY: valid dir fd, NUL-terminated name and a two-element timespec array.
    cvt(unsafe { libc::utimensat(parent.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

fn set_xattr_fd(dir: &File, key: &str, value: &[u8]) -> io::Result<()> {
    dir.set_xattr(key, value).map_err(|e| io::Error::new(e.kind(), format!("setting xattr {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use tar::{EntryType, Header};

    /// Builds archives with raw header bytes so names the tar builder would reject can be written.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn add(&mut self, kind: EntryType, path: &str, link: &str, data: &[u8], mode: u32, mtime: u64) -> &mut Self {
            let mut h = Header::new_ustar();
            h.set_entry_type(kind);
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
            self.add(EntryType::Regular, path, "", data, mode, 1_600_000_000)
        }

        fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
            self.add(EntryType::Directory, path, "", b"", mode, 1_500_000_000)
        }

        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.add(EntryType::Symlink, path, target, b"", 0o777, 1_400_000_000)
        }

        fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.add(EntryType::Link, path, target, b"", 0o644, 1_400_000_000)
        }

        /// A PAX extended header applying to the next entry.
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut body = Vec::new();
            for (k, v) in records {
                let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                body.extend_from_slice(format!("{len} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            self.add(EntryType::XHeader, "PaxHeaders/x", "", &body, 0o644, 0)
        }

        fn bytes(&mut self) -> Vec<u8> {
            self.0.get_mut().clone().into_iter().chain(std::iter::repeat_n(0, 1024)).collect()
        }
    }

    struct Env {
        _tmp: tempfile::TempDir,
        dest: PathBuf,
        sentinel: PathBuf,
        base: PathBuf,
    }

    fn env() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let sentinel = base.join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        Env { dest: base.join("dest"), sentinel, base, _tmp: tmp }
    }

    impl Env {
        fn unpack(&self, data: &[u8], opts: UnpackOptions) -> Result<UnpackSummary, UnpackError> {
            unpack_layer(data, &self.dest, &opts)
        }

        fn unpack_by(&self, data: &[u8], resolver: Resolver) -> Result<UnpackSummary, UnpackError> {
            unpack_with(data, &self.dest, &UnpackOptions::default(), &AtomicU64::new(0), resolver)
        }

        /// Nothing may appear next to dest or in the sibling sentinel dir.
        fn assert_contained(&self) {
            assert_eq!(fs::read_dir(&self.sentinel).unwrap().count(), 0, "sentinel dir was written to");
            let mut names: Vec<_> = fs::read_dir(&self.base).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            let allowed: Vec<&OsStr> = vec![OsStr::new("dest"), OsStr::new("sentinel")];
            assert!(names.iter().all(|n| allowed.contains(&n.as_os_str())), "escaped: {names:?}");
        }
    }

    fn root() -> bool {
        is_root()
    }

    fn assert_refused(res: Result<UnpackSummary, UnpackError>, entry: &str) -> RefuseReason {
        match res {
            Err(UnpackError::Refused { entry: e, reason }) => {
                assert_eq!(e, entry);
                let msg = UnpackError::Refused { entry: e, reason: reason.clone() }.to_string();
                assert!(msg.contains(entry), "{msg}");
                reason
            }
            other => panic!("expected refusal of {entry:?}, got {other:?}"),
        }
    }

    fn sample() -> Vec<u8> {
        Tar::new()
            .dir("./", 0o755)
            .dir("a/", 0o750)
            .file("a/f", b"hello", 0o640)
            .symlink("a/s", "f")
            .hardlink("a/h", "a/f")
            .file("b/c/g", b"implicit parents", 0o600)
            .add(EntryType::Regular, "a/old", "", b"x", 0o644, 1_234_567_890)
            .bytes()
    }

    fn check_sample(d: &Path) {
        let f = d.join("a/f");
        assert_eq!(fs::read(&f).unwrap(), b"hello");
        let md = fs::metadata(&f).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        assert_eq!(md.mtime(), 1_600_000_000);
        assert_eq!(md.nlink(), 2);
        assert_eq!(fs::metadata(d.join("a/h")).unwrap().ino(), md.ino());
        assert_eq!(fs::read_link(d.join("a/s")).unwrap(), Path::new("f"));
        assert_eq!(fs::symlink_metadata(d.join("a/s")).unwrap().mtime(), 1_400_000_000);
        let a = fs::metadata(d.join("a")).unwrap();
        assert_eq!(a.permissions().mode() & 0o7777, 0o750);
        assert_eq!(a.mtime(), 1_500_000_000, "dir mtime must survive children being written");
        assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read(d.join("b/c/g")).unwrap(), b"implicit parents");
        assert_eq!(fs::metadata(d.join("b/c")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(d.join("a/old")).unwrap().mtime(), 1_234_567_890);
    }

    #[test]
    fn unpacks_plain_layer() {
        let e = env();
        let tar = sample();
        let s = e.unpack(&tar, UnpackOptions::default()).unwrap();
        assert_eq!((s.entries, s.bytes), (7, 5 + 16 + 1));
        assert_eq!(s.diff_id, Digest::of(&tar), "diff-id is the sha256 of the uncompressed tar");
        check_sample(&e.dest);
        if root() {
            assert_eq!(fs::metadata(e.dest.join("a/f")).unwrap().uid(), 0);
        }
        e.assert_contained();
    }

    #[test]
    fn unpacks_gzip_and_zstd_by_magic() {
        let plain = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for data in [gz, zst] {
            let e = env();
            e.unpack(&data, UnpackOptions::default()).unwrap();
            check_sample(&e.dest);
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones_without_following_symlinks() {
        let e = env();
        let target = e.sentinel.join("f");
        let data = Tar::new().symlink("s", target.to_str().unwrap()).file("s", b"mine", 0o644).bytes();
        e.unpack(&data, UnpackOptions::default()).unwrap();
        assert!(fs::symlink_metadata(e.dest.join("s")).unwrap().is_file());
        assert_eq!(fs::read(e.dest.join("s")).unwrap(), b"mine");
        e.assert_contained();
    }

    #[test]
    fn setid_bits_stripped_unless_kept() {
        let data = Tar::new().file("suid", b"x", 0o4755).file("sgid", b"x", 0o2711).dir("d", 0o3775).bytes();
        let e = env();
        e.unpack(&data, UnpackOptions::default()).unwrap();
        let mode = |p: &str| fs::metadata(e.dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("sgid"), 0o711);
        assert_eq!(mode("d"), 0o1775, "sticky bit is kept");

        let e2 = env();
        e2.unpack(&data, UnpackOptions { keep_setid: true, ..Default::default() }).unwrap();
        let mode = |p: &str| fs::metadata(e2.dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o4755);
        assert_eq!(mode("sgid"), 0o2711);
        assert_eq!(mode("d"), 0o3775);
    }

    #[test]
    fn owners_xattrs_and_pax_mtime_kept() {
        let data = Tar::new()
            .pax(&[("uid", b"1234"), ("gid", b"5678"), ("SCHILY.xattr.user.test", b"v1"), ("mtime", b"1700000000.5")])
            .file("f", b"x", 0o644)
            .pax(&[("uid", b"4321")])
            .symlink("l", "f")
            .bytes();
        let e = env();
        e.unpack(&data, UnpackOptions::default()).unwrap();
        let md = fs::metadata(e.dest.join("f")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 500_000_000));
        if root() {
            assert_eq!((md.uid(), md.gid()), (1234, 5678));
            assert_eq!(fs::symlink_metadata(e.dest.join("l")).unwrap().uid(), 4321);
            assert_eq!(xattr::get(e.dest.join("f"), "user.test").unwrap().as_deref(), Some(&b"v1"[..]));
        }
    }

    /// cap_setuid+ep as `setcap` writes it (VFS_CAP_REVISION_2, permitted bit 7, effective).
    const CAP_SETUID_EP: &[u8] = &[0x01, 0, 0, 0x02, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn privilege_carrying_xattrs_are_dropped() {
        let data = Tar::new()
            .pax(&[
                ("SCHILY.xattr.security.capability", CAP_SETUID_EP),
                ("SCHILY.xattr.security.selinux", b"system_u:object_r:unconfined_exec_t:s0"),
                ("SCHILY.xattr.security.ima", b"\x03\x02"),
                ("SCHILY.xattr.trusted.test", b"v1"),
                ("SCHILY.xattr.user.kept", b"v2"),
            ])
            .file("tool", b"#!/bin/sh\n", 0o755)
            .bytes();
        let e = env();
        e.unpack(&data, UnpackOptions::default()).unwrap();
        let f = e.dest.join("tool");
        let names: Vec<String> = xattr::list(&f)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("user."))
            .collect();
        assert!(names.is_empty(), "privileged xattrs written: {names:?}");
        assert_eq!(xattr::get(&f, "security.capability").unwrap(), None);
        // keep_setid is the operator's choice to let images carry privilege: then the capability is written
        // (which also shows that the check above could see one), the other privileged xattrs still are not.
        if root() {
            let e = env();
            e.unpack(&data, UnpackOptions { keep_setid: true, ..Default::default() }).unwrap();
            let f = e.dest.join("tool");
            assert_eq!(xattr::get(&f, "security.capability").unwrap().as_deref(), Some(CAP_SETUID_EP));
            assert_eq!(xattr::get(&f, "security.selinux").unwrap(), None);
            assert_eq!(xattr::get(&f, "trusted.test").unwrap(), None);
        }
    }

    fn budget(res: Result<UnpackSummary, UnpackError>, limit: &str) -> BudgetExceeded {
        match res {
            Err(UnpackError::Budget(b)) => {
                assert_eq!(b.limit, limit, "{b}");
                assert!(b.amount > b.max, "{b}");
                let msg = b.to_string();
                assert!(msg.contains(limit) && msg.contains(&b.amount.to_string()), "{msg}");
                b
            }
            other => panic!("expected a {limit} budget error, got {other:?}"),
        }
    }

    /// Counts what the unpacker pulled from the (compressed) source.
    struct Counting<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n as u64);
            Ok(n)
        }
    }

    /// A GNU header of `kind` declaring `declared` bytes, followed by `sent` bytes of `x`: what the tar reader
    /// would buffer whole.
    fn extension_layer(kind: EntryType, declared: u64, sent: usize) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(declared);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend(vec![b'x'; sent]);
        out
    }

    #[test]
    fn oversized_long_name_and_pax_entries_are_refused_before_they_are_read() {
        let e = env();
        for (kind, max) in [
            (EntryType::GNULongName, MAX_LONG_NAME),
            (EntryType::GNULongLink, MAX_LONG_NAME),
            (EntryType::XHeader, MAX_PAX_HEADER),
            (EntryType::XGlobalHeader, MAX_PAX_HEADER),
        ] {
            let _ = fs::remove_dir_all(&e.dest);
            // 1 GiB declared, 1 MiB sent: refused at the header, with a typed error.
            let layer = extension_layer(kind, 1 << 30, 1 << 20);
            let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
            match unpack_layer(Counting(&layer[..], read.clone()), &e.dest, &UnpackOptions::default()) {
                Err(UnpackError::ExtensionTooLarge(x)) => {
                    assert_eq!((x.size, x.max), (1 << 30, max), "{kind:?}");
                    assert!(x.to_string().contains(&format!("of {} bytes (at most {max})", 1u64 << 30)), "{x}");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            assert!(read.get() < 64 << 10, "{kind:?}: {} bytes read before the refusal", read.get());
        }
        // The same behind gzip (the attack: 1 MB of gzip, 1 GiB of name).
        let _ = fs::remove_dir_all(&e.dest);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&extension_layer(EntryType::GNULongName, 1 << 30, 1 << 20)).unwrap();
        let r = unpack_layer(&gz.finish().unwrap()[..], &e.dest, &UnpackOptions::default());
        assert!(matches!(r, Err(UnpackError::ExtensionTooLarge(_))), "{r:?}");
        // One byte over the bound is refused, the bound itself is not (the name is then too long for max_path_len).
        let _ = fs::remove_dir_all(&e.dest);
        let r = unpack_layer(
            &extension_layer(EntryType::GNULongName, MAX_LONG_NAME + 1, 0)[..],
            &e.dest,
            &UnpackOptions::default(),
        );
        assert!(matches!(r, Err(UnpackError::ExtensionTooLarge(_))), "{r:?}");
        let _ = fs::remove_dir_all(&e.dest);
        let r = unpack_layer(
            &extension_layer(EntryType::GNULongName, MAX_LONG_NAME, 0)[..],
            &e.dest,
            &UnpackOptions::default(),
        );
        assert!(!matches!(r, Err(UnpackError::ExtensionTooLarge(_))), "{r:?}");
    }

    #[test]
    fn long_names_and_pax_sizes_still_unpack_behind_the_guard_which_keeps_in_step() {
        let e = env();
        // The builder writes GNU long-name and long-link entries for these.
        let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let header = |kind: EntryType, size: u64, mode: u32| {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        b.append_data(&mut header(EntryType::Directory, 0, 0o755), "d".repeat(150), &b""[..]).unwrap();
        b.append_data(&mut header(EntryType::Regular, 3, 0o644), &long, &b"abc"[..]).unwrap();
        b.append_link(&mut header(EntryType::Symlink, 0, 0o777), "link", "t".repeat(200)).unwrap();
        let mut data = b.into_inner().unwrap();
        // A PAX header whose size (600) overrides the next header's (0): the guard must follow the 600 bytes.
        let mut t = Tar::new();
        t.pax(&[("size", b"600")]);
        let mut h = Header::new_ustar();
        h.set_path("paxsized").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut tail = t.0.get_ref().clone();
        tail.extend_from_slice(h.as_bytes());
        tail.extend(vec![b'p'; 600]);
        tail.extend(vec![0; 1024 - 600]);
        let mut after = Tar::new();
        after.file("after", b"after", 0o644);
        tail.extend(after.bytes());
        data.truncate(data.len() - 1024);
        data.extend(tail);
        e.unpack(&data, UnpackOptions::default()).unwrap();
        assert_eq!(fs::read(e.dest.join(&long)).unwrap(), b"abc");
        assert_eq!(fs::read_link(e.dest.join("link")).unwrap(), Path::new(&"t".repeat(200)));
        assert_eq!(fs::read(e.dest.join("paxsized")).unwrap(), vec![b'p'; 600]);
        assert_eq!(fs::read(e.dest.join("after")).unwrap(), b"after");
        // In step after the PAX-sized entry: an oversized long name behind it is still seen as a header.
        let at = data.len() - after.bytes().len();
        let mut stepped = data[..at].to_vec();
        stepped.extend(extension_layer(EntryType::GNULongName, 1 << 30, 0));
        let _ = fs::remove_dir_all(&e.dest);
        let r = e.unpack(&stepped, UnpackOptions::default());
        assert!(matches!(r, Err(UnpackError::ExtensionTooLarge(_))), "{r:?}");
    }

    fn gzip_of_zero_file(size: u64) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut h = Header::new_gnu();
        h.set_path("zeros").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let k = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            gz.write_all(&chunk[..k]).unwrap();
            left -= k as u64;
        }
        gz.write_all(&[0u8; 1024]).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn decompression_bomb_stops_at_max_layer_bytes() {
        let bomb = gzip_of_zero_file(256 << 20);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let e = env();
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let limits = Limits { max_layer_bytes: 4 << 20, ..Limits::default() };
        let res =
            unpack_layer(Counting(&bomb[..], read.clone()), &e.dest, &UnpackOptions { limits, ..Default::default() });
        let b = budget(res, "max_layer_bytes");
        assert_eq!(b.max, 4 << 20);
        // Stopped at once: a fraction of the compressed stream was read and little more than the budget written.
        assert!(read.get() < bomb.len() as u64 / 4, "read {} of {}", read.get(), bomb.len());
        let written = fs::metadata(e.dest.join("zeros")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= 4 << 20, "{written}");
        // Zeros after the end of the archive are hashed (they count for the diff-id), and bounded the same way.
        let mut padded = Tar::new().file("f", b"x", 0o644).bytes();
        padded.extend(std::iter::repeat_n(0u8, 8 << 20));
        let e = env();
        budget(e.unpack(&padded, UnpackOptions { limits, ..Default::default() }), "max_layer_bytes");
    }

    #[test]
    fn image_budget_is_shared_by_the_layers_of_one_image() {
        let layer = Tar::new().file("f", &[1u8; 300_000], 0o644).bytes();
        let limits = Limits { max_image_bytes: 800_000, ..Limits::default() };
        let opts = UnpackOptions { limits, ..Default::default() };
        let used = AtomicU64::new(0);
        let tmp = tempfile::tempdir().unwrap();
        unpack_layer_of_image(&layer[..], &tmp.path().join("a"), &opts, &used).unwrap();
        unpack_layer_of_image(&layer[..], &tmp.path().join("b"), &opts, &used).unwrap();
        let res = unpack_layer_of_image(&layer[..], &tmp.path().join("c"), &opts, &used);
        assert_eq!(budget(res, "max_image_bytes").max, 800_000);
        // Each layer alone is fine.
        unpack_layer(&layer[..], &tmp.path().join("d"), &opts).unwrap();
    }

    #[test]
    fn entry_count_path_length_and_depth_are_bounded() {
        let limits = Limits { max_entries: 3, max_path_len: 40, max_depth: 4, ..Limits::default() };
        let opts = UnpackOptions { limits, ..Default::default() };
        let mut t = Tar::new();
        for i in 0..4 {
            t.file(&format!("f{i}"), b"x", 0o644);
        }
        let e = env();
        assert_eq!(budget(e.unpack(&t.bytes(), opts), "max_entries").amount, 4);
        let e = env();
        let long = "a".repeat(41);
        assert_eq!(budget(e.unpack(&Tar::new().file(&long, b"x", 0o644).bytes(), opts), "max_path_len").amount, 41);
        let e = env();
        let link = Tar::new().symlink("l", &"b/".repeat(30)).bytes();
        assert_eq!(budget(e.unpack(&link, opts), "max_path_len").amount, 60);
        let e = env();
        let deep = Tar::new().file("a/b/c/d/e", b"x", 0o644).bytes();
        assert_eq!(budget(e.unpack(&deep, opts), "max_depth").amount, 5);
        // At the limits exactly: fine.
        let e = env();
        let ok = Tar::new().file("a/b/c/d", b"x", 0o644).file(&"a".repeat(40), b"x", 0o644).bytes();
        e.unpack(&ok, opts).unwrap();
    }

    #[test]
    fn overlay_xattrs_from_the_archive_are_refused() {
        let data = Tar::new().pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")]).file("f", b"x", 0o644).bytes();
        let e = env();
        let r = assert_refused(e.unpack(&data, UnpackOptions::default()), "f");
        assert_eq!(r, RefuseReason::ReservedXattr("trusted.overlay.redirect".into()));
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        if !root() {
            return; // mknod and trusted.* xattrs need root
        }
        let data = Tar::new()
            .file(".wh.gone", b"", 0o644)
            .dir("d", 0o755)
            .file("d/.wh..wh..opq", b"", 0o644)
            .file("d/keep", b"k", 0o644)
            .file(".wh..wh.plnk", b"", 0o644)
            .bytes();
        let e = env();
        let s = e.unpack(&data, UnpackOptions::default()).unwrap();
        assert_eq!(s.entries, 5);
        let md = fs::symlink_metadata(e.dest.join("gone")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), 0);
        assert!(!e.dest.join(".wh.gone").exists());
        assert_eq!(xattr::get(e.dest.join("d"), OVERLAY_OPAQUE_XATTR).unwrap().as_deref(), Some(&b"y"[..]));
        assert!(!e.dest.join("d/.wh..wh..opq").exists());
        assert!(!e.dest.join(".wh..wh.plnk").exists());
        assert!(!e.dest.join(".wh.plnk").exists());
        assert_eq!(fs::read(e.dest.join("d/keep")).unwrap(), b"k");
    }

    #[test]
    fn bad_whiteout_names_refused() {
        for name in [".wh..", ".wh...", "x/.wh."] {
            let e = env();
            let data = Tar::new().file(name, b"", 0o644).bytes();
            assert!(matches!(
                e.unpack(&data, UnpackOptions::default()),
                Err(UnpackError::Refused { reason: RefuseReason::BadWhiteout | RefuseReason::ParentTraversal, .. })
            ));
            e.assert_contained();
        }
    }

    #[test]
    fn refuses_absolute_paths() {
        let e = env();
        let evil = e.sentinel.join("evil");
        let data = Tar::new().file(evil.to_str().unwrap(), b"pwned", 0o644).bytes();
        assert_eq!(
            assert_refused(e.unpack(&data, UnpackOptions::default()), evil.to_str().unwrap()),
            RefuseReason::AbsolutePath
        );
        e.assert_contained();
    }

    #[test]
    fn refuses_dotdot() {
        for name in ["../escape", "a/../../escape", "a/..", "../sentinel/evil"] {
            let e = env();
            let data = Tar::new().dir("a", 0o755).file(name, b"pwned", 0o644).bytes();
            assert_eq!(assert_refused(e.unpack(&data, UnpackOptions::default()), name), RefuseReason::ParentTraversal);
            e.assert_contained();
        }
    }

    /// Every kind of entry whose parent is a symlink out of the layer (absolute, relative, through a
    /// directory) is refused by name, through `resolver`, and nothing lands outside dest.
    fn refuses_entries_through_symlinks(resolver: Resolver) {
        let cases = [
            ("file", "link/evil"),
            ("dir", "link/evil"),
            ("symlink", "link/evil"),
            ("hardlink", "link/evil"),
            ("whiteout", "link/.wh.x"),
            ("opaque", "link/.wh..wh..opq"),
        ];
        for (what, entry) in cases {
            for target in ["ABS", "../sentinel", "a/../../sentinel"] {
                let e = env();
                let target =
                    if target == "ABS" { e.sentinel.to_str().unwrap().to_string() } else { target.to_string() };
                let mut t = Tar::new();
                t.dir("a", 0o755).file("a/f", b"x", 0o644).symlink("link", &target);
                match what {
                    "dir" => t.dir(entry, 0o755),
                    "symlink" => t.symlink(entry, "/etc/passwd"),
                    "hardlink" => t.hardlink(entry, "a/f"),
                    _ => t.file(entry, b"pwned", 0o644),
                };
                let r = assert_refused(e.unpack_by(&t.bytes(), resolver), entry);
                assert_eq!(r, RefuseReason::ParentNotDirectory("link".into()), "{what} via {target} ({resolver:?})");
                e.assert_contained();
            }
        }
        // A symlink deeper down, below directories that resolve fine.
        let e = env();
        let data =
            Tar::new().dir("a/b", 0o755).symlink("a/b/c", "../../../sentinel").file("a/b/c/d/e", b"x", 0o644).bytes();
        let r = assert_refused(e.unpack_by(&data, resolver), "a/b/c/d/e");
        assert_eq!(r, RefuseReason::ParentNotDirectory("c".into()), "{resolver:?}");
        e.assert_contained();
    }

    #[test]
    fn refuses_writing_through_symlinks() {
        refuses_entries_through_symlinks(Resolver::detect());
    }

    #[test]
    fn openat2_refuses_a_through_symlink_entry() {
        if Resolver::detect() != Resolver::Openat2 {
            eprintln!("skipped: this kernel has no openat2");
            return;
        }
        // The kernel itself refuses the symlinked parent, whole path or single component.
        let e = env();
        fs::create_dir_all(e.dest.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&e.sentinel, e.dest.join("a/link")).unwrap();
        let root = File::open(&e.dest).unwrap();
        fs::create_dir(e.sentinel.join("x")).unwrap();
        // A symlink in the middle of the path is ELOOP; as the last component (O_NOFOLLOW | O_DIRECTORY), ENOTDIR.
        for (path, errno) in [(c"a/link/x", libc::ELOOP), (c"a/link", libc::ENOTDIR), (c"a/b/../link", libc::ENOTDIR)] {
            let err = open_dir_beneath(&root, path).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(errno), "{path:?}");
        }
        fs::remove_dir(e.sentinel.join("x")).unwrap();
        assert!(open_dir_beneath(&root, c"a/b").is_ok());
        // And the unpacker's openat2 path turns that into a refusal naming the entry and the component.
        refuses_entries_through_symlinks(Resolver::Openat2);
        let e = env();
        let data = Tar::new().dir("a/b/c", 0o755).file("a/b/c/f", b"deep", 0o644).file("x/y/z", b"new", 0o644).bytes();
        e.unpack_by(&data, Resolver::Openat2).unwrap();
        assert_eq!(fs::read(e.dest.join("a/b/c/f")).unwrap(), b"deep");
        assert_eq!(fs::read(e.dest.join("x/y/z")).unwrap(), b"new");
    }

    #[test]
    fn component_walk_refuses_the_same_entries() {
        refuses_entries_through_symlinks(Resolver::Walk);
        let e = env();
        e.unpack_by(&sample(), Resolver::Walk).unwrap();
        check_sample(&e.dest);
    }

    #[test]
    fn refuses_nested_symlink_parent() {
        let e = env();
        let data = Tar::new()
            .dir("a/b", 0o755)
            .symlink("a/b/c", "../../../sentinel")
            .file("a/b/c/d/e", b"pwned", 0o644)
            .bytes();
        let r = assert_refused(e.unpack(&data, UnpackOptions::default()), "a/b/c/d/e");
        assert_eq!(r, RefuseReason::ParentNotDirectory("c".into()));
        e.assert_contained();
    }

    #[test]
    fn refuses_file_as_parent() {
        let e = env();
        let data = Tar::new().file("f", b"x", 0o644).file("f/g", b"x", 0o644).bytes();
        assert_eq!(
            assert_refused(e.unpack(&data, UnpackOptions::default()), "f/g"),
            RefuseReason::ParentNotDirectory("f".into())
        );
    }

    #[test]
    fn refuses_bad_hardlinks() {
        let cases = [
            ("/etc/passwd", RefuseReason::HardlinkOutside("/etc/passwd".into())),
            ("../sentinel/x", RefuseReason::HardlinkOutside("../sentinel/x".into())),
            ("nope", RefuseReason::HardlinkMissing("nope".into())),
            ("later", RefuseReason::HardlinkMissing("later".into())),
            ("missing/dir", RefuseReason::HardlinkMissing("missing/dir".into())),
            ("d", RefuseReason::HardlinkToDirectory("d".into())),
            ("link/x", RefuseReason::HardlinkOutside("link/x".into())),
        ];
        for (target, want) in cases {
            let e = env();
            fs::write(e.sentinel.join("x"), b"secret").unwrap();
            let data = Tar::new()
                .dir("d", 0o755)
                .symlink("link", "../sentinel")
                .hardlink("h", target)
                .file("later", b"x", 0o644)
                .bytes();
            assert_eq!(assert_refused(e.unpack(&data, UnpackOptions::default()), "h"), want, "{target}");
            assert!(!e.dest.join("h").exists());
            fs::remove_file(e.sentinel.join("x")).unwrap();
            e.assert_contained();
        }
    }

    #[test]
    fn hardlink_to_symlink_links_the_symlink_itself() {
        let e = env();
        let data = Tar::new().symlink("s", "../sentinel").hardlink("h", "s").bytes();
        e.unpack(&data, UnpackOptions::default()).unwrap();
        assert!(fs::symlink_metadata(e.dest.join("h")).unwrap().file_type().is_symlink());
        e.assert_contained();
    }

    #[test]
    fn devices_and_fifos_refused_unless_allowed() {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            let e = env();
            let data = Tar::new().add(kind, "dev", "", b"", 0o600, 0).bytes();
            assert_eq!(assert_refused(e.unpack(&data, UnpackOptions::default()), "dev"), RefuseReason::Device);
            assert!(!e.dest.join("dev").exists());
        }
        let e = env();
        let data = Tar::new().add(EntryType::Fifo, "p", "", b"", 0o640, 1_000).bytes();
        e.unpack(&data, UnpackOptions { allow_devices: true, ..Default::default() }).unwrap();
        let md = fs::symlink_metadata(e.dest.join("p")).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        if root() {
            let e = env();
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::Char);
            h.set_path("null").unwrap();
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(0);
            h.set_cksum();
            let mut t = Tar::new();
            t.0.append(&h, &b""[..]).unwrap();
            e.unpack(&t.bytes(), UnpackOptions { allow_devices: true, ..Default::default() }).unwrap();
            let md = fs::symlink_metadata(e.dest.join("null")).unwrap();
            assert!(md.file_type().is_char_device());
            assert_eq!(md.rdev(), libc::makedev(1, 3));
        }
    }

    #[test]
    fn refuses_non_fresh_dest() {
        let e = env();
        fs::create_dir(&e.dest).unwrap();
        fs::write(e.dest.join("x"), b"").unwrap();
        assert!(matches!(e.unpack(&sample(), UnpackOptions::default()), Err(UnpackError::DestNotFresh(_))));
        let e = env();
        std::os::unix::fs::symlink(&e.sentinel, &e.dest).unwrap();
        assert!(matches!(e.unpack(&sample(), UnpackOptions::default()), Err(UnpackError::DestNotFresh(_))));
        e.assert_contained();
    }

    #[test]
    fn empty_existing_dest_is_fine() {
        let e = env();
        fs::create_dir(&e.dest).unwrap();
        e.unpack(&sample(), UnpackOptions::default()).unwrap();
        check_sample(&e.dest);
    }

    #[test]
    fn corrupt_stream_is_an_archive_error() {
        let e = env();
        let mut data = vec![0x1f, 0x8b];
        data.extend_from_slice(b"not really gzip");
        assert!(matches!(e.unpack(&data, UnpackOptions::default()), Err(UnpackError::Archive(_))));
    }

    #[test]
    fn pax_time_parsing() {
        let t = parse_pax_time("12.000000001").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 1));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        assert!(parse_pax_time("x").is_none());
        assert!(parse_pax_time("1.2x").is_none());
    }
}
