//! Pulls: resolves a reference (registry or OCI layout) to a platform manifest, verifies and caches every blob,
//! unpacks layers, and remembers which manifest a reference resolved to.

use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::unpack::{unpack_layer, UnpackError, UnpackOptions};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_MANIFEST: u64 = 4 << 20;
const MAX_CONFIG: u64 = 16 << 20;
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "if-not-present" | "" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            o => Err(format!("pull policy {o:?} is not always, if-not-present or never")),
        }
    }
}

/// Why an image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("registry {registry} refused the credentials (401)")]
    Unauthorized { registry: String },
    #[error("{reference} not found")]
    NotFound { reference: String },
    #[error("{what} of {reference} does not match its digest: {message}")]
    Verify { reference: String, what: String, message: String },
    #[error("{reference}: {message}")]
    Malformed { reference: String, message: String },
    #[error("{reference} has no image for {platform}")]
    NoPlatform { reference: String, platform: String },
    #[error("{reference} is not cached and the pull policy is never")]
    NotCached { reference: String },
    #[error("OCI layout {path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{reference}: {source}")]
    Cache { reference: String, source: Box<CacheError> },
}

/// Credentials for one registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra trusted CA certificates (PEM).
    pub ca_pems: Vec<Vec<u8>>,
    /// Credentials by registry.
    pub credentials: HashMap<String, Credentials>,
    /// A Docker-style `config.json` whose `auths` add credentials.
    pub docker_config: Option<PathBuf>,
    /// Unpack options (device nodes, setid bits).
    pub unpack: UnpackOptions,
}

/// A verified, unpacked image ready to mount.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalised reference.
    pub reference: String,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Unpacked layer dirs, bottom layer first.
    pub layers: Vec<PathBuf>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// Receives human-readable progress lines.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Pulls images into a cache.
pub struct Puller {
    cache: Arc<Cache>,
    client: oci_client::Client,
    opts: RegistryOptions,
}

fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

fn parse_docker_config(path: &Path) -> HashMap<String, Credentials> {
    use base64::Engine;
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read(path) else { return out };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else { return out };
    if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
        for (host, entry) in auths {
            let decoded = entry
                .get("auth")
                .and_then(|a| a.as_str())
                .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                .and_then(|b| String::from_utf8(b).ok());
            if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                let host = host.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
                let host = host.split('/').next().unwrap_or(host);
                out.insert(host.to_string(), Credentials { username: u.into(), password: p.into() });
            }
        }
    }
    out
}

impl Puller {
    pub fn new(cache: Arc<Cache>, mut opts: RegistryOptions) -> Puller {
        if let Some(p) = &opts.docker_config {
            for (k, v) in parse_docker_config(p) {
                opts.credentials.entry(k).or_insert(v);
            }
        }
        let cfg = oci_client::client::ClientConfig {
            protocol: if opts.insecure.is_empty() {
                oci_client::client::ClientProtocol::Https
            } else {
                oci_client::client::ClientProtocol::HttpsExcept(opts.insecure.clone())
            },
            extra_root_certificates: opts
                .ca_pems
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // We pick the platform ourselves so that "none fits" is a clear error.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Puller { cache, client: oci_client::Client::new(cfg), opts }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Makes `r` ready under `policy`: from the cache when possible, else from its source.
    pub async fn pull(
        &self,
        r: &ImageRef,
        policy: PullPolicy,
        progress: Progress<'_>,
    ) -> Result<PulledImage, PullError> {
        let name = r.to_string();
        if policy != PullPolicy::Always {
            if let Some(img) = self.cached(r) {
                return Ok(img);
            }
            if policy == PullPolicy::Never {
                return Err(PullError::NotCached { reference: name });
            }
        }
        let src = match r {
            ImageRef::Registry { .. } => Source::Registry(self.reference(r)?),
            ImageRef::Layout { path, .. } => Source::Layout(path.clone()),
        };
        progress(format!("resolving {name}"));
        let (manifest_digest, manifest) = self.resolve_manifest(&src, r).await?;
        let cfg_desc = manifest.config();
        let cfg_digest = to_digest(cfg_desc.digest().to_string(), &name)?;
        if cfg_desc.size() > MAX_CONFIG {
            return Err(malformed(&name, "image config is too large"));
        }
        self.fetch_blob(&src, &name, &cfg_digest, cfg_desc.size(), progress).await?;
        let config = self.read_config(&cfg_digest, &name)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(malformed(&name, "layer count of manifest and config differ"));
        }
        let jobs = manifest.layers().iter().zip(diff_ids.iter()).map(|(l, d)| {
            let src = &src;
            let name = &name;
            async move {
                let blob = to_digest(l.digest().to_string(), name)?;
                let diff_id = to_digest(d.clone(), name)?;
                if self.cache.has_layer(&diff_id) {
                    progress(format!("layer {} cached", short(&blob)));
                    return Ok(self.cache.layer_path(&diff_id));
                }
                let path = match src {
                    // From a registry, layers unpack while they download; nothing is published unverified.
                    Source::Registry(reference) => {
                        self.stream_layer(reference, name, blob, l.size(), diff_id, progress).await?
                    }
                    Source::Layout(_) => {
                        self.fetch_blob(src, name, &blob, l.size(), progress).await?;
                        self.unpack(&blob, diff_id, name).await?
                    }
                };
                progress(format!("layer {} unpacked", short(&blob)));
                Ok::<_, PullError>(path)
            }
        });
        let layers = futures_util::future::try_join_all(jobs).await?;
        self.remember(r, &manifest_digest);
        Ok(PulledImage {
            reference: name,
            digest: manifest_digest,
            layers,
            env: config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default(),
            working_dir: config.config().as_ref().and_then(|c| c.working_dir().clone()).filter(|w| !w.is_empty()),
        })
    }

    fn reference(&self, r: &ImageRef) -> Result<oci_client::Reference, PullError> {
        let ImageRef::Registry { registry, repository, tag, digest } = r else {
            return Err(malformed(&r.to_string(), "not a registry reference"));
        };
        Ok(match (tag, digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(registry.clone(), repository.clone(), d.to_string()),
            (Some(t), None) => oci_client::Reference::with_tag(registry.clone(), repository.clone(), t.clone()),
            (None, None) => oci_client::Reference::with_tag(registry.clone(), repository.clone(), "latest".into()),
        })
    }

    fn auth(&self, r: &oci_client::Reference) -> oci_client::secrets::RegistryAuth {
        match self.opts.credentials.get(r.registry()) {
            Some(c) => oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        }
    }

    fn registry_error(&self, r: &oci_client::Reference, e: oci_client::errors::OciDistributionError) -> PullError {
        use oci_client::errors::OciDistributionError as E;
        let registry = r.registry().to_string();
        match &e {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => PullError::Unauthorized { registry },
            E::ImageManifestNotFoundError(_) => PullError::NotFound { reference: r.whole() },
            E::ServerError { code: 404, .. } => PullError::NotFound { reference: r.whole() },
            E::ServerError { code: 401, .. } => PullError::Unauthorized { registry },
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| format!("{:?}", x.code).contains("Unknown")) =>
            {
                PullError::NotFound { reference: r.whole() }
            }
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| format!("{:?}", x.code).contains("Unauthorized")) =>
            {
                PullError::Unauthorized { registry }
            }
            _ => PullError::Registry { registry, message: one_line(&e) },
        }
    }

    /// The raw manifest (or index) at `r`, and its verified digest.
    async fn fetch_manifest(
        &self,
        src: &Source,
        r: &ImageRef,
        at: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let name = r.to_string();
        let (raw, want) = match src {
            Source::Registry(reference) => {
                let reference = match at {
                    Some(d) => oci_client::Reference::with_digest(
                        reference.registry().into(),
                        reference.repository().into(),
                        d.to_string(),
                    ),
                    None => reference.clone(),
                };
                let (bytes, _) = self
                    .client
                    .pull_manifest_raw(&reference, &self.auth(&reference), MANIFEST_TYPES)
                    .await
                    .map_err(|e| self.registry_error(&reference, e))?;
                let want = match (at, r) {
                    (Some(d), _) => Some(*d),
                    (None, ImageRef::Registry { digest, .. }) => *digest,
                    _ => None,
                };
                (bytes.to_vec(), want)
            }
            Source::Layout(path) => {
                let tag = match r {
                    ImageRef::Layout { tag, .. } => tag.clone(),
                    _ => None,
                };
                let d = match at {
                    Some(d) => *d,
                    None => layout_entry(path, tag.as_deref())?,
                };
                (read_layout_blob(path, &d, MAX_MANIFEST)?, Some(d))
            }
        };
        if raw.len() as u64 > MAX_MANIFEST {
            return Err(malformed(&name, "manifest is too large"));
        }
        let got = Digest::of(&raw);
        if let Some(w) = want {
            if got != w {
                return Err(PullError::Verify {
                    reference: name,
                    what: "manifest".into(),
                    message: format!("expected {w}, got {got}"),
                });
            }
        }
        Ok((raw, got))
    }

    async fn resolve_manifest(&self, src: &Source, r: &ImageRef) -> Result<(Digest, ImageManifest), PullError> {
        let name = r.to_string();
        let (raw, digest) = self.fetch_manifest(src, r, None).await?;
        let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| malformed(&name, &e.to_string()))?;
        let is_index = v.get("manifests").is_some();
        let (raw, digest) = if is_index {
            // Kept too, so that a reference by the index digest resolves from the cache next time.
            self.cache
                .put_blob(&digest, raw.len() as u64, &raw[..])
                .map_err(|source| PullError::Cache { reference: name.clone(), source: Box::new(source) })?;
            let index = ImageIndex::from_reader(&raw[..]).map_err(|e| malformed(&name, &e.to_string()))?;
            let (os, arch) = host_platform();
            let pick = index.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
            });
            let Some(m) = pick else {
                return Err(PullError::NoPlatform { reference: name, platform: format!("{os}/{arch}") });
            };
            let d = to_digest(m.digest().to_string(), &name)?;
            self.fetch_manifest(src, r, Some(&d)).await?
        } else {
            (raw, digest)
        };
        // Keep the verified manifest: a later pull by digest needs no round trip.
        self.cache
            .put_blob(&digest, raw.len() as u64, &raw[..])
            .map_err(|source| PullError::Cache { reference: name.clone(), source: Box::new(source) })?;
        let m = ImageManifest::from_reader(&raw[..]).map_err(|e| malformed(&name, &e.to_string()))?;
        Ok((digest, m))
    }

    /// Stores blob `d` in the cache, verified against digest and size, unless it is there already.
    async fn fetch_blob(
        &self,
        src: &Source,
        name: &str,
        d: &Digest,
        size: u64,
        progress: Progress<'_>,
    ) -> Result<(), PullError> {
        if self.cache.has_blob(d) {
            return Ok(());
        }
        match src {
            Source::Layout(path) => {
                let file = path.join("blobs").join(d.algorithm()).join(d.hex());
                self.cache
                    .ensure_blob(d, size, || std::fs::File::open(&file))
                    .map_err(|e| verify_or_cache(name, d, e))?;
            }
            Source::Registry(reference) => {
                let (cache, d2) = (self.cache.clone(), *d);
                self.with_registry_blob(reference, *d, size, progress, move |r| cache.put_blob(&d2, size, r))
                    .await?
                    .map_err(|e| verify_or_cache(name, d, e))?;
            }
        }
        Ok(())
    }

    /// Streams blob `d` from the registry into `job`, which runs on a blocking thread with a reader over the bytes
    /// as they arrive, while progress is reported by bytes received.
    async fn with_registry_blob<T: Send + 'static>(
        &self,
        reference: &oci_client::Reference,
        d: Digest,
        size: u64,
        progress: Progress<'_>,
        job: impl FnOnce(Box<dyn Read + Send>) -> T + Send + 'static,
    ) -> Result<T, PullError> {
        use futures_util::TryStreamExt;
        let desc =
            oci_client::manifest::OciDescriptor { digest: d.to_string(), size: size as i64, ..Default::default() };
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth(reference)).await;
        let stream =
            self.client.pull_blob_stream(reference, &desc).await.map_err(|e| self.registry_error(reference, e))?;
        let reader = tokio_util::io::StreamReader::new(stream.stream.map_err(std::io::Error::other));
        let label = short(&d);
        let report = |done: u64| progress(format!("layer {label} {} / {}", human(done), human(size)));
        report(0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let task = tokio::task::spawn_blocking(move || {
            job(Box::new(Counted { inner: tokio_util::io::SyncIoBridge::new(reader), n: 0, last: 0, tx }))
        });
        let mut task = std::pin::pin!(task);
        let res = loop {
            tokio::select! {
                r = &mut task => break r,
                Some(done) = rx.recv() => report(done),
            }
        };
        res.map_err(|e| PullError::Registry { registry: reference.registry().into(), message: e.to_string() })
    }

    /// Downloads layer `blob` and unpacks it as the bytes arrive (see [`Cache::ensure_layer_streaming`]).
    async fn stream_layer(
        &self,
        reference: &oci_client::Reference,
        name: &str,
        blob: Digest,
        size: u64,
        diff_id: Digest,
        progress: Progress<'_>,
    ) -> Result<PathBuf, PullError> {
        let cache = self.cache.clone();
        let opts = self.opts.unpack;
        let res = self
            .with_registry_blob(reference, blob, size, progress, move |r| {
                cache
                    .ensure_layer_streaming(&blob, size, &diff_id, r, |rd, tmp| unpack_checked(rd, tmp, &opts, diff_id))
            })
            .await?;
        res.map_err(|e| match &e {
            CacheError::Layer { source: UnpackError::Archive(io), .. }
                if io.kind() == std::io::ErrorKind::InvalidData || io.to_string().contains("digest") =>
            {
                PullError::Verify { reference: name.into(), what: format!("layer {blob}"), message: one_line(io) }
            }
            _ => PullError::Cache { reference: name.into(), source: Box::new(e) },
        })
    }

    fn read_config(&self, d: &Digest, name: &str) -> Result<ImageConfiguration, PullError> {
        let f = std::fs::File::open(self.cache.blob_path(d)).map_err(|e| malformed(name, &e.to_string()))?;
        ImageConfiguration::from_reader(f.take(MAX_CONFIG)).map_err(|e| malformed(name, &format!("image config: {e}")))
    }

    async fn unpack(&self, blob: &Digest, diff_id: Digest, name: &str) -> Result<PathBuf, PullError> {
        let cache = self.cache.clone();
        let blob_path = cache.blob_path(blob);
        let opts = self.opts.unpack;
        let r = tokio::task::spawn_blocking(move || {
            cache.ensure_layer(&diff_id, |tmp| {
                let f = std::fs::File::open(&blob_path).map_err(UnpackError::Archive)?;
                unpack_checked(&mut std::io::BufReader::with_capacity(1 << 20, f), tmp, &opts, diff_id)
            })
        })
        .await
        .map_err(|e| malformed(name, &e.to_string()))?;
        r.map_err(|source| PullError::Cache { reference: name.into(), source: Box::new(source) })
    }

    fn ref_file(&self, r: &ImageRef) -> PathBuf {
        self.cache.root().join("refs").join(Digest::of(r.to_string().as_bytes()).hex())
    }

    fn remember(&self, r: &ImageRef, manifest: &Digest) {
        let p = self.ref_file(r);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension("tmp");
        let rec = RefRecord { reference: r.to_string(), manifest: manifest.to_string() };
        if serde_json::to_vec(&rec).is_ok_and(|b| std::fs::write(&tmp, b).is_ok()) {
            let _ = std::fs::rename(&tmp, &p);
        }
    }

    /// The image from the cache alone: a reference by digest, or one pulled before, whose blobs and layers are all there.
    fn cached(&self, r: &ImageRef) -> Option<PulledImage> {
        let manifest_digest = match r {
            ImageRef::Registry { digest: Some(d), .. } => *d,
            _ => read_ref(&self.ref_file(r))?.manifest.parse().ok()?,
        };
        let raw = std::fs::read(self.cache.blob_path(&manifest_digest)).ok()?;
        if Digest::of(&raw) != manifest_digest {
            return None;
        }
        let raw = if serde_json::from_slice::<serde_json::Value>(&raw).ok()?.get("manifests").is_some() {
            // A cached index: follow it to the platform manifest.
            let index = ImageIndex::from_reader(&raw[..]).ok()?;
            let (os, arch) = host_platform();
            let m = index.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
            })?;
            std::fs::read(self.cache.blob_path(&m.digest().to_string().parse().ok()?)).ok()?
        } else {
            raw
        };
        let m = ImageManifest::from_reader(&raw[..]).ok()?;
        let cfg_digest: Digest = m.config().digest().to_string().parse().ok()?;
        let config = self.read_config(&cfg_digest, "").ok()?;
        let mut layers = Vec::new();
        for d in config.rootfs().diff_ids() {
            let d: Digest = d.parse().ok()?;
            if !self.cache.has_layer(&d) {
                return None;
            }
            layers.push(self.cache.layer_path(&d));
        }
        Some(PulledImage {
            reference: r.to_string(),
            digest: Digest::of(&raw),
            layers,
            env: config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default(),
            working_dir: config.config().as_ref().and_then(|c| c.working_dir().clone()).filter(|w| !w.is_empty()),
        })
    }
}

/// What `refs/<sha256 of the reference>` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct RefRecord {
    reference: String,
    manifest: String,
}

fn read_ref(p: &Path) -> Option<RefRecord> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// One cached image, for `images list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedImage {
    pub reference: String,
    pub manifest: String,
    /// Bytes of its blobs in the cache (compressed layers, config, manifest).
    pub size: u64,
}

/// What `prune` removed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Pruned {
    pub blobs: u64,
    pub layers: u64,
    pub bytes: u64,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
}

impl Puller {
    fn refs(&self) -> Vec<(PathBuf, RefRecord)> {
        let Ok(rd) = std::fs::read_dir(self.cache.root().join("refs")) else { return Vec::new() };
        rd.flatten()
            .filter(|e| e.path().extension().is_none())
            .filter_map(|e| read_ref(&e.path()).map(|r| (e.path(), r)))
            .collect()
    }

    /// Blob digests and diff-ids an image record needs (manifest, config, layers).
    fn needs(&self, manifest: &str) -> (Vec<Digest>, Vec<Digest>) {
        let (mut blobs, mut layers) = (Vec::new(), Vec::new());
        let Ok(d) = manifest.parse::<Digest>() else { return (blobs, layers) };
        blobs.push(d);
        let Ok(raw) = std::fs::read(self.cache.blob_path(&d)) else { return (blobs, layers) };
        let Ok(m) = ImageManifest::from_reader(&raw[..]) else { return (blobs, layers) };
        blobs.extend(m.layers().iter().filter_map(|l| l.digest().to_string().parse::<Digest>().ok()));
        if let Ok(c) = m.config().digest().to_string().parse::<Digest>() {
            blobs.push(c);
            if let Ok(cfg) = self.read_config(&c, "") {
                layers.extend(cfg.rootfs().diff_ids().iter().filter_map(|x| x.parse::<Digest>().ok()));
            }
        }
        (blobs, layers)
    }

    /// The images the cache holds by reference.
    pub fn list(&self) -> Vec<CachedImage> {
        let mut out: Vec<_> = self
            .refs()
            .into_iter()
            .map(|(_, r)| {
                let size = self.needs(&r.manifest).0.iter().map(|b| dir_size(&self.cache.blob_path(b))).sum();
                CachedImage { reference: r.reference, manifest: r.manifest, size }
            })
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        out
    }

    /// Forgets a reference (its content goes with the next `prune`). False if it was not cached.
    pub fn remove(&self, r: &ImageRef) -> bool {
        std::fs::remove_file(self.ref_file(r)).is_ok()
    }

    /// Total bytes in the cache.
    pub fn size(&self) -> u64 {
        dir_size(self.cache.root())
    }

    /// Removes blobs and unpacked layers that no cached reference needs. Not to be run while a pull is under
    /// way in another process (the agent runs it between pulls of its own).
    pub fn prune(&self) -> Pruned {
        let mut keep_blobs = std::collections::HashSet::new();
        let mut keep_layers = std::collections::HashSet::new();
        for (_, r) in self.refs() {
            let (b, l) = self.needs(&r.manifest);
            keep_blobs.extend(b.into_iter().map(|d| d.hex()));
            keep_layers.extend(l.into_iter().map(|d| d.hex()));
        }
        let mut out = Pruned::default();
        for (kind, keep) in [("blobs", &keep_blobs), ("layers", &keep_layers)] {
            let dir = self.cache.root().join(kind).join("sha256");
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let size = dir_size(&e.path());
                let gone =
                    if kind == "blobs" { std::fs::remove_file(e.path()) } else { std::fs::remove_dir_all(e.path()) };
                if gone.is_ok() {
                    out.bytes += size;
                    if kind == "blobs" {
                        out.blobs += 1;
                    } else {
                        out.layers += 1;
                    }
                }
            }
        }
        out
    }
}

enum Source {
    Registry(oci_client::Reference),
    Layout(PathBuf),
}

/// Counts bytes for progress without a report per read.
struct Counted<R> {
    inner: R,
    n: u64,
    last: u64,
    tx: tokio::sync::mpsc::UnboundedSender<u64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n - self.last >= 4 << 20 || (k == 0 && self.n != self.last) {
            self.last = self.n;
            let _ = self.tx.send(self.n);
        }
        Ok(k)
    }
}

/// Unpacks a layer and checks it against the diff-id the image config names.
fn unpack_checked(
    rd: &mut dyn Read,
    tmp: &Path,
    opts: &UnpackOptions,
    diff_id: Digest,
) -> Result<crate::unpack::UnpackSummary, UnpackError> {
    let s = unpack_layer(rd, tmp, opts)?;
    if s.diff_id != diff_id {
        return Err(UnpackError::DiffIdMismatch { expected: diff_id, actual: s.diff_id });
    }
    Ok(s)
}

fn layout_entry(path: &Path, tag: Option<&str>) -> Result<Digest, PullError> {
    let lay = |message: String| PullError::Layout { path: path.into(), message };
    let f = std::fs::File::open(path.join("index.json")).map_err(|e| lay(format!("index.json: {e}")))?;
    let index = ImageIndex::from_reader(f.take(MAX_MANIFEST)).map_err(|e| lay(format!("index.json: {e}")))?;
    let ms = index.manifests();
    let hit = match tag {
        Some(t) => ms.iter().find(|m| {
            m.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).is_some_and(|n| n == t)
        }),
        None if ms.len() == 1 => ms.first(),
        None => return Err(lay(format!("{} images in the layout: name one with oci:PATH:TAG", ms.len()))),
    };
    let m = hit.ok_or_else(|| lay(format!("no image tagged {:?}", tag.unwrap_or(""))))?;
    m.digest().to_string().parse().map_err(|_| lay(format!("bad digest {}", m.digest())))
}

fn read_layout_blob(path: &Path, d: &Digest, max: u64) -> Result<Vec<u8>, PullError> {
    let p = path.join("blobs").join(d.algorithm()).join(d.hex());
    let f = std::fs::File::open(&p)
        .map_err(|e| PullError::Layout { path: path.into(), message: format!("blob {d}: {e}") })?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PullError::Layout { path: path.into(), message: e.to_string() })?;
    Ok(buf)
}

fn to_digest(s: String, name: &str) -> Result<Digest, PullError> {
    s.parse().map_err(|_| malformed(name, &format!("unsupported digest {s}")))
}

fn malformed(name: &str, message: &str) -> PullError {
    PullError::Malformed { reference: name.into(), message: message.into() }
}

fn verify_or_cache(name: &str, d: &Digest, e: CacheError) -> PullError {
    match &e {
        CacheError::Blob { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            PullError::Verify { reference: name.into(), what: format!("blob {d}"), message: source.to_string() }
        }
        _ => PullError::Cache { reference: name.into(), source: Box::new(e) },
    }
}

/// The error and its causes on one line ("error sending request: ...: Connection refused"), each cause once.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let text = text.lines().next().unwrap_or_default().to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

fn human(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}
