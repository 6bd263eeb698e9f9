//! Content-addressed store of verified blobs and unpacked layers, filled by atomic renames with single-flight.

use crate::digest::{Digest, VerifyingReader};
use crate::unpack::{UnpackError, UnpackSummary};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Errors of the cache's own files.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the cache could not be read or written.
    #[error("cache I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A blob could not be stored (including one that did not match its digest).
    #[error("storing blob {digest}: {source}")]
    Blob {
        /// The blob's digest.
        digest: Digest,
        /// What went wrong.
        source: io::Error,
    },
    /// A layer could not be unpacked into the cache.
    #[error("unpacking layer {diff_id}: {source}")]
    Layer {
        /// The layer's diff-id.
        diff_id: Digest,
        /// Why.
        source: UnpackError,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// Per-key locks so concurrent requests for one digest do the work once; entries are dropped when unused.
#[derive(Default)]
struct Flights(Mutex<HashMap<Digest, Arc<Mutex<()>>>>);

impl Flights {
    fn run<T>(&self, key: Digest, f: impl FnOnce() -> T) -> T {
        let slot = {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(key).or_default())
        };
        let out = {
            // A panic in another flight leaves nothing half-done on disk (temp paths), so poisoning is harmless.
            let _guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            f()
        };
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only taken under the map lock, so a count of 2 (map + ours) means nobody else waits.
        if Arc::strong_count(&slot) == 2 {
            map.remove(&key);
        }
        out
    }
}

/// On-disk layout under `root`: `blobs/sha256/<hex>`, `layers/sha256/<hex>/` (by diff-id) and `tmp/` for
/// in-progress writes, which sits on the same filesystem so the final `rename` is atomic.
///
/// Each open cache is an owner, `owners/<name>`, a file it holds an exclusive `flock` on while open; its
/// temporaries are called `tmp/<name>~...`. Opening a cache removes the temporaries of owners nobody holds
/// (left by a crash or a kill), so a pull cut short leaves nothing behind past the next start, even with
/// other processes using the cache at the same time.
pub struct Cache {
    root: PathBuf,
    blob_flights: Flights,
    // Separate from blobs: an uncompressed layer's blob digest equals its diff-id, and fetching the blob
    // from inside a layer flight must not deadlock.
    layer_flights: Flights,
    owner: String,
    // Never read: holding it open keeps the lock that marks `owner` as alive.
    _owner_lock: File,
}

/// Prefix of an owner file being set up: it is locked before it gets its final name.
const CLAIMING: &str = ".claiming-";

/// Takes an exclusive `flock` on `f` without waiting; false if another open file description holds it.
fn try_lock(f: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether the owner file at `path` is held by a live cache.
fn held(path: &Path) -> io::Result<bool> {
    match File::open(path) {
        Ok(f) => try_lock(&f).map(|got| !got),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_any(path: &Path) -> Result<(), CacheError> {
    let res = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

/// Removes temporaries whose owner is not held, then the owner files nobody holds.
fn sweep(root: &Path) -> Result<(), CacheError> {
    let (tmp, owners) = (root.join("tmp"), root.join("owners"));
    let mut alive: HashMap<String, bool> = HashMap::new();
    for entry in fs::read_dir(&tmp).map_err(io_at(&tmp))? {
        let entry = entry.map_err(io_at(&tmp))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let live = match name.split_once('~') {
            Some((owner, _)) => match alive.get(owner) {
                Some(l) => *l,
                None => {
                    let p = owners.join(owner);
                    let l = held(&p).map_err(io_at(&p))?;
                    alive.insert(owner.to_string(), l);
                    l
                }
            },
            None => false,
        };
        if !live {
            remove_any(&entry.path())?;
        }
    }
    for entry in fs::read_dir(&owners).map_err(io_at(&owners))? {
        let entry = entry.map_err(io_at(&owners))?;
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(CLAIMING) && !held(&path).map_err(io_at(&path))? {
            remove_any(&path)?;
        }
    }
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Open (creating if needed) a cache rooted at `root`, removing temporaries no live cache holds.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_at(&root))?;
        // Root only: cached layers are what later sessions run, so no other user may reach (let alone change)
        // them. Set on every open so that a cache made by an older version is closed too.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_at(&root))?;
        }
        for sub in ["blobs/sha256", "layers/sha256", "layer-of-blob/sha256", "sources", "tmp", "owners"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        sweep(&root)?;
        let owner = format!("{}.{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
        let claiming = root.join("owners").join(format!("{CLAIMING}{owner}"));
        let lock = File::create(&claiming).map_err(io_at(&claiming))?;
        if !try_lock(&lock).map_err(io_at(&claiming))? {
            return Err(io_at(&claiming)(io::Error::other("owner file is locked by someone else")));
        }
        let path = root.join("owners").join(&owner);
        fs::rename(&claiming, &path).map_err(io_at(&path))?;
        Ok(Self { root, blob_flights: Flights::default(), layer_flights: Flights::default(), owner, _owner_lock: lock })
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    /// Whether the blob `digest` is stored (only verified blobs ever are).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where the layer with `diff_id` is (or would be) unpacked.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.algorithm()).join(diff_id.hex())
    }

    /// Whether the layer with `diff_id` is unpacked (only verified layers are published).
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// The diff-id that blob `blob` was verified to unpack to, if it ever was here. Layers are found through
    /// this, by the blob digest a manifest names, never by a config's diff-id alone: a config is whatever its
    /// author wrote, and naming another image's diff-id must not reach that image's layer.
    pub fn layer_of_blob(&self, blob: &Digest) -> Option<Digest> {
        let p = self.root.join("layer-of-blob").join(blob.algorithm()).join(blob.hex());
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    fn source_path(&self, source: &str, digest: &Digest) -> PathBuf {
        self.root.join("sources").join(Digest::of(source.as_bytes()).hex()).join(digest.hex())
    }

    /// Whether `digest` was fetched and verified from `source` (a registry and repository) before.
    pub fn source_has(&self, source: &str, digest: &Digest) -> bool {
        self.source_path(source, digest).is_file()
    }

    /// Notes that `source` served `digest` (verified): the cached copy may serve references to that source
    /// without asking it again.
    pub fn record_source(&self, source: &str, digest: &Digest) -> Result<(), CacheError> {
        let p = self.source_path(source, digest);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        match File::create_new(&p) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Store a blob from `reader`, verified against `digest` and `size` before it becomes visible.
    /// If the blob is already present the reader is not consumed.
    pub fn put_blob<R: Read>(&self, digest: &Digest, size: u64, reader: R) -> Result<PathBuf, CacheError> {
        self.ensure_blob(digest, size, || Ok(reader))
    }

    /// Like [`Cache::put_blob`], but `open` is called only when the blob is missing, at most once across
    /// concurrent callers for the same digest.
    pub fn ensure_blob<R: Read>(
        &self,
        digest: &Digest,
        size: u64,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<PathBuf, CacheError> {
        self.blob_flights.run(*digest, || {
            let dest = self.blob_path(digest);
            if dest.is_file() {
                return Ok(dest);
            }
            let tmp = self.temp_path(digest);
            let res = write_verified(&tmp, &dest, digest, size, open);
            if res.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            res.map(|()| dest)
        })
    }

    /// Produce the unpacked layer for `diff_id` if missing: `unpack` receives a not-yet-existing temp
    /// directory path (as [`crate::unpack::unpack_layer`] expects), which is renamed into place on success
    /// and removed on failure. Checking that the unpacked content matches `diff_id` is up to `unpack`.
    pub fn ensure_layer(
        &self,
        diff_id: &Digest,
        unpack: impl FnOnce(&Path) -> Result<UnpackSummary, UnpackError>,
    ) -> Result<PathBuf, CacheError> {
        self.layer_flights.run(*diff_id, || {
            let dest = self.layer_path(diff_id);
            if dest.is_dir() {
                return Ok(dest);
            }
            let tmp = self.temp_path(diff_id);
            let res = unpack(&tmp)
                .map_err(|source| CacheError::Layer { diff_id: *diff_id, source })
                .and_then(|_| publish(&tmp, &dest));
            if res.is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            res.map(|()| dest)
        })
    }

    /// A layer straight from its blob stream: `unpack` reads the blob bytes as they arrive (each byte is also
    /// written to a temp blob file and hashed on the way) and unpacks into a temp dir. Nothing is published
    /// unless the blob matched `blob` and `size` at its end and `unpack` succeeded; then the blob and the layer
    /// are renamed into place, and the blob is noted as unpacking to `diff_id` (see [`Cache::layer_of_blob`]):
    /// `unpack` must have checked the unpacked content against `diff_id`.
    ///
    /// A layer already unpacked under `diff_id` does not short-cut this: the blob is still read and unpacked
    /// (the copy is then dropped), since only that proves this blob is that layer.
    pub fn ensure_layer_streaming<R: Read>(
        &self,
        blob: &Digest,
        size: u64,
        diff_id: &Digest,
        src: R,
        unpack: impl FnOnce(&mut dyn Read, &Path) -> Result<UnpackSummary, UnpackError>,
    ) -> Result<PathBuf, CacheError> {
        self.layer_flights.run(*diff_id, || {
            let dest = self.layer_path(diff_id);
            let (tmp_blob, tmp_dir) = (self.temp_path(blob), self.temp_path(diff_id));
            let res = (|| {
                let file = File::create_new(&tmp_blob).map_err(io_at(&tmp_blob))?;
                let mut tee = Tee { inner: VerifyingReader::new(src, *blob, size), file };
                let layer_err = |source| CacheError::Layer { diff_id: *diff_id, source };
                unpack(&mut tee, &tmp_dir).map_err(layer_err)?;
                // Whatever follows the archive (compression trailer, padding) still counts for the digest.
                io::copy(&mut tee, &mut io::sink()).map_err(|e| layer_err(UnpackError::Archive(e)))?;
                tee.file.sync_all().map_err(io_at(&tmp_blob))?;
                publish(&tmp_blob, &self.blob_path(blob))?;
                publish(&tmp_dir, &dest)?;
                self.note_layer_of_blob(blob, diff_id)
            })();
            if res.is_err() {
                let _ = fs::remove_file(&tmp_blob);
                let _ = fs::remove_dir_all(&tmp_dir);
            }
            res.map(|()| dest)
        })
    }

    fn note_layer_of_blob(&self, blob: &Digest, diff_id: &Digest) -> Result<(), CacheError> {
        let dest = self.root.join("layer-of-blob").join(blob.algorithm()).join(blob.hex());
        let tmp = self.temp_path(blob);
        fs::write(&tmp, diff_id.to_string()).map_err(io_at(&tmp))?;
        publish(&tmp, &dest)
    }

    fn temp_path(&self, digest: &Digest) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}~{}.{n}", self.owner, digest.hex()))
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Temporaries still here belong to writes that failed; the lock goes with the descriptor.
        let prefix = format!("{}~", self.owner);
        if let Ok(rd) = fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
                let _ = remove_any(&e.path());
            }
        }
        let _ = fs::remove_file(self.root.join("owners").join(&self.owner));
    }
}

/// Copies every byte read into `file`.
struct Tee<R> {
    inner: R,
    file: File,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(&mut self.file, &buf[..n])?;
        Ok(n)
    }
}

fn write_verified<R: Read>(
    tmp: &Path,
    dest: &Path,
    digest: &Digest,
    size: u64,
    open: impl FnOnce() -> io::Result<R>,
) -> Result<(), CacheError> {
    let blob_err = |source| CacheError::Blob { digest: *digest, source };
    let mut file = File::create_new(tmp).map_err(io_at(tmp))?;
    let mut reader = VerifyingReader::new(open().map_err(blob_err)?, *digest, size);
    io::copy(&mut reader, &mut file).map_err(blob_err)?;
    // Data must be durable before the name is, or a crash could leave a complete-looking truncated blob.
    file.sync_all().map_err(io_at(tmp))?;
    drop(file);
    publish(tmp, dest)
}

/// Rename into place and make the rename durable. Losing a race to another process is fine: the
/// content is addressed by digest, so whichever copy won is equivalent.
fn publish(tmp: &Path, dest: &Path) -> Result<(), CacheError> {
    match fs::rename(tmp, dest) {
        Ok(()) => {}
        Err(e) if dest.exists() && matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            let _ = fs::remove_dir_all(tmp);
            return Ok(());
        }
        Err(e) => return Err(io_at(dest)(e)),
    }
    if let Some(parent) = dest.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_at(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::{unpack_layer, UnpackOptions};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;
    use std::time::Duration;

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn layout_and_put_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path().join("c")).unwrap();
        let data = b"some blob".to_vec();
        let d = Digest::of(&data);
        assert!(!cache.has_blob(&d));
        let p = cache.put_blob(&d, data.len() as u64, &data[..]).unwrap();
        assert_eq!(p, tmp.path().join("c/blobs/sha256").join(d.hex()));
        assert_eq!(p, cache.blob_path(&d));
        assert!(cache.has_blob(&d));
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(count(&cache.root().join("tmp")), 0);
        // Present already: the reader is never touched.
        struct Boom;
        impl Read for Boom {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("reader consumed for a cached blob")
            }
        }
        cache.put_blob(&d, data.len() as u64, Boom).unwrap();
    }

    #[test]
    fn failed_verification_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let d = Digest::of(b"expected");
        let cases: [(&[u8], u64); 3] = [(b"tampered", 8), (b"expected-and-more", 8), (b"expect", 8)];
        for (data, size) in cases {
            let err = cache.put_blob(&d, size, data).unwrap_err();
            match err {
                CacheError::Blob { source, .. } => {
                    assert_eq!(source.kind(), io::ErrorKind::InvalidData)
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(!cache.has_blob(&d));
            assert_eq!(count(&tmp.path().join("blobs/sha256")), 0);
            assert_eq!(count(&tmp.path().join("tmp")), 0, "temp file left behind");
        }
        // A failing source is cleaned up the same way.
        let err = cache.ensure_blob(&d, 8, || Err::<&[u8], _>(io::Error::other("network down"))).unwrap_err();
        assert!(err.to_string().contains("network down"), "{err}");
        assert_eq!(count(&cache.root().join("tmp")), 0);
    }

    #[test]
    fn single_flight_per_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let data = vec![42u8; 100_000];
        let d = Digest::of(&data);
        let calls = AtomicUsize::new(0);
        let barrier = Barrier::new(16);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    barrier.wait();
                    let p = cache
                        .ensure_blob(&d, data.len() as u64, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(&data[..])
                        })
                        .unwrap();
                    assert_eq!(fs::read(p).unwrap(), data);
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.blob_flights.0.lock().unwrap().is_empty(), "flight entries not released");
    }

    #[test]
    fn different_digests_do_not_serialise() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let barrier = Barrier::new(2);
        // Each producer waits for the other to start; with a shared lock this would deadlock.
        std::thread::scope(|s| {
            for i in 0..2u8 {
                let (cache, barrier) = (&cache, &barrier);
                s.spawn(move || {
                    let data = vec![i; 10];
                    cache
                        .ensure_blob(&Digest::of(&data), 10, || {
                            barrier.wait();
                            Ok(io::Cursor::new(data.clone()))
                        })
                        .unwrap();
                });
            }
        });
    }

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("hello").unwrap();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn ensure_layer_publishes_or_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let tar = layer_tar();
        let diff_id = Digest::of(&tar);

        let bad = b"not a tar at all, just some bytes that are long enough to fail".repeat(20);
        let err = cache.ensure_layer(&diff_id, |dir| unpack_layer(&bad[..], dir, &UnpackOptions::default()));
        assert!(matches!(err, Err(CacheError::Layer { .. })), "{err:?}");
        assert!(!cache.has_layer(&diff_id));
        assert_eq!(count(&cache.root().join("tmp")), 0);

        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let p = cache
                .ensure_layer(&diff_id, |dir| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    unpack_layer(&tar[..], dir, &UnpackOptions::default())
                })
                .unwrap();
            assert_eq!(fs::read(p.join("hello")).unwrap(), b"hi");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.has_layer(&diff_id));
        assert_eq!(count(&cache.root().join("tmp")), 0);
    }

    #[test]
    fn streaming_layer_publishes_only_verified_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let tar = layer_tar();
        let (blob, diff_id) = (Digest::of(&tar), Digest::of(&tar));
        let unpack = |rd: &mut dyn Read, dir: &Path| unpack_layer(rd, dir, &UnpackOptions::default());
        // The bytes unpack fine but are not what the digest promised: nothing may be published.
        let mut tampered = tar.clone();
        tampered.extend_from_slice(&[0u8; 512]);
        let wrong = Digest::of(b"something else");
        let err = cache.ensure_layer_streaming(&wrong, tar.len() as u64, &diff_id, &tampered[..], unpack);
        assert!(matches!(err, Err(CacheError::Layer { .. })), "{err:?}");
        assert!(!cache.has_layer(&diff_id) && !cache.has_blob(&wrong));
        assert_eq!(count(&cache.root().join("tmp")), 0);
        // Verified: blob and layer both land.
        let p = cache.ensure_layer_streaming(&blob, tar.len() as u64, &diff_id, &tar[..], unpack).unwrap();
        assert_eq!(fs::read(p.join("hello")).unwrap(), b"hi");
        assert_eq!(fs::read(cache.blob_path(&blob)).unwrap(), tar);
        assert_eq!(count(&cache.root().join("tmp")), 0);
    }

    #[test]
    fn a_cached_layer_is_reached_only_through_a_blob_verified_to_be_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let tar = layer_tar();
        let (blob, diff_id) = (Digest::of(&tar), Digest::of(&tar));
        // What the config's diff-id is checked against, as the puller does.
        let checked = |want: Digest| {
            move |rd: &mut dyn Read, dir: &Path| {
                let s = unpack_layer(rd, dir, &UnpackOptions::default())?;
                if s.diff_id != want {
                    return Err(UnpackError::DiffIdMismatch { expected: want, actual: s.diff_id });
                }
                Ok(s)
            }
        };
        cache.ensure_layer_streaming(&blob, tar.len() as u64, &diff_id, &tar[..], checked(diff_id)).unwrap();
        assert_eq!(cache.layer_of_blob(&blob), Some(diff_id));
        // Other bytes claiming that diff-id: the layer being there already proves nothing about them.
        let mut other = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("other").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        other.append(&h, &b""[..]).unwrap();
        let other = other.into_inner().unwrap();
        let other_blob = Digest::of(&other);
        let err = cache.ensure_layer_streaming(&other_blob, other.len() as u64, &diff_id, &other[..], checked(diff_id));
        assert!(matches!(err, Err(CacheError::Layer { source: UnpackError::DiffIdMismatch { .. }, .. })), "{err:?}");
        assert_eq!(cache.layer_of_blob(&other_blob), None);
        // Provenance is per source.
        cache.record_source("reg/a", &blob).unwrap();
        assert!(cache.source_has("reg/a", &blob) && !cache.source_has("reg/b", &blob));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn open_removes_temporaries_that_no_open_cache_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Cache::open(tmp.path()).unwrap();
        let live = first.temp_path(&Digest::of(b"x"));
        fs::write(&live, b"in progress").unwrap();
        // What a killed process leaves: its owner file (unlocked now), a half-written layer, and a stray file.
        fs::write(tmp.path().join("owners/4242.0"), b"").unwrap();
        fs::create_dir_all(tmp.path().join("tmp/4242.0~abc.0/etc")).unwrap();
        fs::write(tmp.path().join("tmp/half"), b"x").unwrap();
        let second = Cache::open(tmp.path()).unwrap();
        let names = |d: &str| {
            let mut v: Vec<_> = fs::read_dir(tmp.path().join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("tmp"), vec![live.file_name().unwrap().to_string_lossy().into_owned()]);
        let mut owners = vec![first.owner.clone(), second.owner.clone()];
        owners.sort();
        assert_eq!(names("owners"), owners);
        drop(second);
        assert_eq!(names("owners"), vec![first.owner.clone()]);
        drop(first);
        assert_eq!(count(&tmp.path().join("tmp")), 0, "a cache's own temporaries outlive it");
        assert_eq!(count(&tmp.path().join("owners")), 0);
    }
}
