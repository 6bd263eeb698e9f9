//! Pulls: resolves a reference (registry or OCI layout) to a platform manifest, verifies and caches every blob,
//! unpacks layers within the configured budgets, and remembers which manifest a reference resolved to.
//!
//! Where the bytes come from is [`Source`]'s business alone (a registry or a layout directory held open by
//! descriptor); everything else (verification, single flight, budgets, caching) is the same for both.

use crate::cache::{Cache, CacheError};
use crate::digest::{Digest, VerifyError};
use crate::layout::LayoutDir;
use crate::reference::{ImageRef, DOCKER_HUB};
use crate::unpack::{unpack_layer_of_image, BudgetExceeded, UnpackError, UnpackOptions, UnpackSummary};
use dcos_exec_proto::ErrorCode;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

const MAX_MANIFEST: u64 = 4 << 20;
const MAX_CONFIG: u64 = 16 << 20;
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Ask the registry for the manifest every time (layers already cached are not downloaded again).
    Always,
    /// Use the cached image if there is one.
    #[default]
    IfNotPresent,
    /// Use only the cache; a missing image is an error.
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
    /// The registry could not be reached, answered with an error, or the transfer broke off.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry's host.
        registry: String,
        /// What happened, on one line.
        message: String,
    },
    /// The Docker credential helper that `credsStore` or `credHelpers` names failed or did not answer.
    #[error("registry {registry}: credential helper: {message}")]
    CredentialHelper {
        /// The registry's host.
        registry: String,
        /// What happened, on one line.
        message: String,
    },
    /// The registry wants other credentials, or some.
    #[error("registry {registry} refused the credentials (401)")]
    Unauthorized {
        /// The registry's host.
        registry: String,
    },
    /// No such repository, tag or manifest.
    #[error("{reference} not found")]
    NotFound {
        /// The reference as normalised.
        reference: String,
    },
    /// Bytes that do not match the digest or size they were fetched by.
    #[error("{what} of {reference} does not match its digest: {source}")]
    Verify {
        /// The reference as normalised.
        reference: String,
        /// Which part: the manifest, the config or a layer.
        what: String,
        /// How it did not match.
        source: VerifyError,
    },
    /// A manifest, index or config that is not what the OCI specs describe.
    #[error("{reference}: {message}")]
    Malformed {
        /// The reference (or blob) concerned.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// An index without a manifest for the host's platform.
    #[error("{reference} has no image for {platform}")]
    NoPlatform {
        /// The reference as normalised.
        reference: String,
        /// The host's `os/architecture`.
        platform: String,
    },
    /// [`PullPolicy::Never`] and the image is not in the cache.
    #[error("{reference} is not cached and the pull policy is never")]
    NotCached {
        /// The reference as normalised.
        reference: String,
    },
    /// An OCI layout directory that cannot be read as one.
    #[error("OCI layout {path}: {message}")]
    Layout {
        /// The layout's directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A budget of the configuration ran out; the message names the key, its value and the amount.
    #[error("{reference}: {source}")]
    Budget {
        /// The reference as normalised.
        reference: String,
        /// Which budget, and by how much.
        source: BudgetExceeded,
    },
    /// A layer was refused or could not be unpacked.
    #[error("{reference}: layer {blob}: {source}")]
    Unpack {
        /// The reference as normalised.
        reference: String,
        /// The layer's blob digest.
        blob: Digest,
        /// Why.
        source: Box<UnpackError>,
    },
    /// The cache's own files failed.
    #[error("{reference}: {source}")]
    Cache {
        /// The reference as normalised.
        reference: String,
        /// What failed.
        source: Box<CacheError>,
    },
}

impl PullError {
    /// The wire error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            PullError::Registry { .. }
            | PullError::CredentialHelper { .. }
            | PullError::Unauthorized { .. }
            | PullError::NotFound { .. }
            | PullError::Verify { .. }
            | PullError::Malformed { .. }
            | PullError::NoPlatform { .. }
            | PullError::NotCached { .. }
            | PullError::Layout { .. }
            | PullError::Budget { .. }
            | PullError::Unpack { .. }
            | PullError::Cache { .. } => ErrorCode::ImageFailed,
        }
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Sent with HTTP basic authentication (and exchanged for a bearer token where the registry asks).
    pub username: String,
    /// See `username`.
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
    /// Unpack options (device nodes, setid bits, budgets).
    pub unpack: UnpackOptions,
    /// How long a registry may stay silent mid-response (default 60 s).
    pub read_timeout: Option<Duration>,
    /// How often a request that failed transiently (connection refused or reset, 5xx, 429) is tried.
    pub retry: Retry,
}

/// Bounded exponential backoff for transient registry failures: `attempts` tries in all, waiting `initial`,
/// then twice as long each time, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempts: 4, initial: Duration::from_millis(250), max: Duration::from_secs(4) }
    }
}

/// How long a Docker credential helper may take to answer.
const HELPER_TIMEOUT: Duration = Duration::from_secs(15);

/// A verified, unpacked image ready to mount.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalised reference.
    pub reference: String,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Unpacked layer dirs, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// The image config's `Env`: the debug process's environment.
    pub env: Vec<String>,
    /// The image config's `WorkingDir`, if set.
    pub working_dir: Option<String>,
}

/// Receives human-readable progress lines.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Per-digest async locks: concurrent pulls that need one blob download it once (the others wait and then
/// find it in the cache). Entries are dropped when unused.
#[derive(Default)]
struct Flights(Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

impl Flights {
    async fn run<T>(&self, key: Digest, f: impl Future<Output = T>) -> T {
        let slot = Arc::clone(self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default());
        let out = {
            let _turn = slot.lock().await;
            f.await
        };
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only taken under the map lock, so a count of 2 (map + ours) means nobody else waits.
        if Arc::strong_count(&slot) == 2 {
            map.remove(&key);
        }
        out
    }
}

/// Pulls images into a cache.
pub struct Puller {
    cache: Arc<Cache>,
    client: oci_client::Client,
    opts: RegistryOptions,
    flights: Flights,
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

/// The manifest of `index` for this host's platform.
fn pick_platform(index: &ImageIndex) -> Option<&Descriptor> {
    let (os, arch) = host_platform();
    index.manifests().iter().find(|m| {
        m.platform().as_ref().is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
    })
}

/// The key credentials are filed under: `host[:port]`, with Docker Hub's other names (`index.docker.io`, as
/// `docker login` writes it, with or without `https://` and `/v1/`; `registry-1.docker.io`) as `docker.io`,
/// the name references normalise to.
fn registry_key(host: &str) -> String {
    let host = host.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    // Spelt as references are (see `canonical_registry`), so `LOCALHOST:5000` in a config finds `localhost:5000`.
    let host = crate::reference::canonical_registry(host).unwrap_or_else(|_| host.to_string());
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => host,
    }
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
                out.insert(registry_key(host), Credentials { username: u.into(), password: p.into() });
            }
        }
    }
    out
}

impl Puller {
    /// A puller that keeps images in `cache` and reaches registries as `opts` says.
    pub fn new(cache: Arc<Cache>, mut opts: RegistryOptions) -> Puller {
        let mut credentials: HashMap<String, Credentials> =
            opts.credentials.drain().map(|(k, v)| (registry_key(&k), v)).collect();
        if let Some(p) = &opts.docker_config {
            for (k, v) in parse_docker_config(p) {
                credentials.entry(k).or_insert(v);
            }
        }
        opts.credentials = credentials;
        opts.insecure = opts.insecure.iter().map(|h| registry_key(h)).collect();
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
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(opts.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT)),
            ..Default::default()
        };
        Puller { cache, client: oci_client::Client::new(cfg), opts, flights: Flights::default() }
    }

    /// Makes `r` ready under `policy`: from the cache when possible, else from its source.
    pub async fn pull(
        &self,
        r: &ImageRef,
        policy: PullPolicy,
        progress: Progress<'_>,
    ) -> Result<PulledImage, PullError> {
        let name = r.to_string();
        // A layout is local and anybody allowed may rewrite it, so it is always read (its cached layers are reused
        // once the layout is seen to hold their blobs); the policy is about registries.
        let is_layout = matches!(r, ImageRef::Layout { .. });
        if policy != PullPolicy::Always && !is_layout {
            if let Some(img) = self.cached(r) {
                return Ok(img);
            }
            if policy == PullPolicy::Never {
                return Err(PullError::NotCached { reference: name });
            }
        }
        let mut src = Source::new(self, r)?;
        if let Source::Registry(s) = &mut src {
            if let Some(auth) = self.helper_auth(s.reference.registry()).await? {
                s.auth = auth;
            }
        }
        progress(format!("resolving {name}"));
        let (manifest_digest, manifest) = self.resolve_manifest(&src, &name).await?;
        // Before any blob is fetched: an image of no layers has no root to run, and one of thousands would be
        // downloaded and unpacked in full before its overlay failed to mount.
        let layer_count = manifest.layers().len() as u64;
        if layer_count == 0 {
            return Err(malformed(&name, "the image has no layers"));
        }
        let max_layers = self.opts.unpack.limits.max_layers;
        if layer_count > max_layers {
            let source = BudgetExceeded::new("max_layers", max_layers, "its manifest lists", layer_count);
            return Err(PullError::Budget { reference: name, source });
        }
        let cfg_desc = manifest.config();
        let cfg_digest = to_digest(cfg_desc.digest().to_string(), &name)?;
        if cfg_desc.size() > MAX_CONFIG {
            return Err(malformed(&name, "image config is too large"));
        }
        self.fetch_blob(&src, &name, cfg_digest, cfg_desc.size(), progress).await?;
        let config = self.read_config(&cfg_digest, &name)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(malformed(&name, "layer count of manifest and config differ"));
        }
        // What this pull unpacks, all layers together, against max_image_bytes.
        let image_bytes = Arc::new(AtomicU64::new(0));
        let jobs = manifest.layers().iter().zip(diff_ids.iter()).map(|(l, d)| {
            let (src, name, image_bytes) = (&src, &name, image_bytes.clone());
            async move {
                let blob = to_digest(l.digest().to_string(), name)?;
                let diff_id = to_digest(d.clone(), name)?;
                let path = self.fetch_layer(src, name, blob, l.size(), diff_id, image_bytes, progress).await?;
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

    fn credentials(&self, registry: &str) -> Option<&Credentials> {
        self.opts.credentials.get(&registry_key(registry))
    }

    /// Credentials from the Docker credential helper that the Docker config's `credHelpers` (for this registry)
    /// or `credsStore` names, when neither the agent's config nor the Docker config's `auths` has any: `None`
    /// when there is no helper or it has nothing for this registry.
    async fn helper_auth(&self, registry: &str) -> Result<Option<oci_client::secrets::RegistryAuth>, PullError> {
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        let Some(path) = self.opts.docker_config.clone() else { return Ok(None) };
        if self.credentials(registry).is_some() {
            return Ok(None);
        }
        // Docker files Docker Hub's credentials under its v1 URL.
        let server = if registry_key(registry) == DOCKER_HUB {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.into()
        };
        let job = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).ok()?;
            Some(docker_credential::get_credential_from_reader(io::BufReader::new(f), &server))
        });
        let fail = |message: String| PullError::CredentialHelper { registry: registry.into(), message };
        let answer = match tokio::time::timeout(HELPER_TIMEOUT, job).await {
            Err(_) => return Err(fail(format!("no answer within {HELPER_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(a))) => a,
        };
        match answer {
            Ok(DockerCredential::UsernamePassword(u, p)) => Ok(Some(oci_client::secrets::RegistryAuth::Basic(u, p))),
            Ok(DockerCredential::IdentityToken(_)) => {
                Err(fail("an identity token (an OAuth refresh token) is not supported; store a password".into()))
            }
            Err(E::NoCredentialConfigured | E::ConfigReadError | E::ConfigNotFound) => Ok(None),
            // A helper's answer for a registry it knows nothing of (docker-credential-helpers' wording).
            Err(E::HelperFailure { stdout, stderr, .. })
                if (stdout.clone() + &stderr).contains("credentials not found") =>
            {
                Ok(None)
            }
            Err(E::HelperFailure { helper, stderr, stdout }) => {
                let why = stderr.lines().chain(stdout.lines()).find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                Err(fail(format!("{helper} failed: {why}")))
            }
            Err(E::HelperCommunicationError) => Err(fail("the helper named in the Docker config cannot be run".into())),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// The manifest (or index) at `at` (or the reference's own), verified against the digest it was asked by.
    async fn fetch_manifest(
        &self,
        src: &Source<'_>,
        name: &str,
        at: Option<Digest>,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let (raw, want) = src.manifest(at).await?;
        if raw.len() as u64 > MAX_MANIFEST {
            return Err(malformed(name, "manifest is too large"));
        }
        let got = Digest::of(&raw);
        if let Some(w) = want {
            if got != w {
                let source = VerifyError::Mismatch { expected: w, actual: got };
                return Err(PullError::Verify { reference: name.into(), what: "manifest".into(), source });
            }
        }
        if let Some(key) = src.key() {
            // The registry served these bytes for this repository: a later reference to it may use the cache.
            self.cache.put_blob(&got, raw.len() as u64, &raw[..]).map_err(|e| cache_error(name, e))?;
            self.cache.record_source(&key, &got).map_err(|e| cache_error(name, e))?;
        }
        Ok((raw, got))
    }

    /// Whether `src` holds blob `d` (that the cache has verified): known from an earlier fetch from the same
    /// registry repository (no round trip), else asked (HEAD), else, for a layout, read and verified in the layout.
    /// A cached blob may serve a reference only then, as a registry only mounts a blob across repositories for
    /// whom may read the source repository.
    async fn source_has(&self, src: &Source<'_>, d: &Digest, size: u64) -> Result<bool, PullError> {
        match src {
            Source::Registry(s) => {
                let key = s.key();
                if self.cache.source_has(&key, d) {
                    return Ok(true);
                }
                let client = &self.client;
                client.store_auth_if_needed(s.reference.resolve_registry(), &s.auth).await;
                let digest = d.to_string();
                let found = s.retrying(|| client.blob_exists(&s.reference, &digest)).await?;
                if found {
                    self.cache.record_source(&key, d).map_err(|e| cache_error(&s.reference.whole(), e))?;
                }
                Ok(found)
            }
            Source::Layout(s) => {
                let (dir, d) = (s.dir.clone(), *d);
                let job = tokio::task::spawn_blocking(move || {
                    let Ok(f) = dir.open_file(&["blobs", d.algorithm(), &d.hex()]) else { return false };
                    let mut rd = crate::digest::VerifyingReader::new(io::BufReader::with_capacity(1 << 20, f), d, size);
                    io::copy(&mut rd, &mut io::sink()).is_ok()
                });
                Ok(job.await.unwrap_or(false))
            }
        }
    }

    /// The error for a blob the cache has but the reference's source does not.
    fn not_in_source(src: &Source<'_>, name: &str, d: &Digest) -> PullError {
        match src {
            Source::Registry(_) => PullError::NotFound { reference: format!("{name} (blob {d})") },
            Source::Layout(s) => s.error(format!("blob {d} is missing or does not match its digest")),
        }
    }

    async fn resolve_manifest(&self, src: &Source<'_>, name: &str) -> Result<(Digest, ImageManifest), PullError> {
        let (raw, digest) = self.fetch_manifest(src, name, None).await?;
        let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| malformed(name, &e.to_string()))?;
        let (raw, digest) = if v.get("manifests").is_some() {
            // Kept too, so that a reference by the index digest resolves from the cache next time.
            self.cache.put_blob(&digest, raw.len() as u64, &raw[..]).map_err(|e| cache_error(name, e))?;
            let index = ImageIndex::from_reader(&raw[..]).map_err(|e| malformed(name, &e.to_string()))?;
            let Some(m) = pick_platform(&index) else {
                let (os, arch) = host_platform();
                return Err(PullError::NoPlatform { reference: name.into(), platform: format!("{os}/{arch}") });
            };
            let d = to_digest(m.digest().to_string(), name)?;
            self.fetch_manifest(src, name, Some(d)).await?
        } else {
            (raw, digest)
        };
        // Keep the verified manifest: a later pull by digest needs no round trip.
        self.cache.put_blob(&digest, raw.len() as u64, &raw[..]).map_err(|e| cache_error(name, e))?;
        let m = ImageManifest::from_reader(&raw[..]).map_err(|e| malformed(name, &e.to_string()))?;
        Ok((digest, m))
    }

    /// Stores blob `d` in the cache, verified against digest and size, unless it is there already; concurrent
    /// callers for one digest fetch it once.
    async fn fetch_blob(
        &self,
        src: &Source<'_>,
        name: &str,
        d: Digest,
        size: u64,
        progress: Progress<'_>,
    ) -> Result<(), PullError> {
        self.flights
            .run(d, async {
                if self.cache.has_blob(&d) {
                    return match self.source_has(src, &d, size).await? {
                        true => Ok(()),
                        false => Err(Self::not_in_source(src, name, &d)),
                    };
                }
                let reader = src.open_blob(&d, size).await?;
                let cache = self.cache.clone();
                with_reader(reader, &d, size, progress, move |r| cache.put_blob(&d, size, r))
                    .await?
                    .map_err(|e| cache_error(name, e))?;
                if let Some(key) = src.key() {
                    self.cache.record_source(&key, &d).map_err(|e| cache_error(name, e))?;
                }
                Ok(())
            })
            .await
    }

    /// The unpacked layer `diff_id`, downloaded (once across concurrent callers) and unpacked as the bytes
    /// arrive (see [`Cache::ensure_layer_streaming`]) unless it is cached.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        src: &Source<'_>,
        name: &str,
        blob: Digest,
        size: u64,
        diff_id: Digest,
        image_bytes: Arc<AtomicU64>,
        progress: Progress<'_>,
    ) -> Result<PathBuf, PullError> {
        let limits = self.opts.unpack.limits;
        self.flights
            .run(blob, async {
                // Found by the blob the manifest names, verified to unpack to the config's diff-id, and held by
                // this reference's source.
                if self.cache.layer_of_blob(&blob) == Some(diff_id) && self.cache.has_layer(&diff_id) {
                    if !self.source_has(src, &blob, size).await? {
                        return Err(Self::not_in_source(src, name, &blob));
                    }
                    progress(format!("layer {} cached", short(&blob)));
                    return Ok(self.cache.layer_path(&diff_id));
                }
                // The blob's declared size bounds what the source may send (VerifyingReader), so a blob declared
                // larger than a layer may unpack to is refused before a byte is fetched.
                if size > limits.max_layer_bytes {
                    let max = limits.max_layer_bytes;
                    let source = BudgetExceeded::new("max_layer_bytes", max, "its blob declares", size);
                    return Err(PullError::Budget { reference: name.into(), source });
                }
                let reader = src.open_blob(&blob, size).await?;
                let (cache, opts) = (self.cache.clone(), self.opts.unpack);
                let path = with_reader(reader, &blob, size, progress, move |r| {
                    cache.ensure_layer_streaming(&blob, size, &diff_id, r, |rd, tmp| {
                        unpack_checked(rd, tmp, &opts, diff_id, &image_bytes)
                    })
                })
                .await?
                .map_err(|e| layer_error(name, blob, e))?;
                if let Some(key) = src.key() {
                    self.cache.record_source(&key, &blob).map_err(|e| cache_error(name, e))?;
                }
                progress(format!("layer {} unpacked", short(&blob)));
                Ok(path)
            })
            .await
    }

    fn read_config(&self, d: &Digest, name: &str) -> Result<ImageConfiguration, PullError> {
        let f = std::fs::File::open(self.cache.blob_path(d)).map_err(|e| malformed(name, &e.to_string()))?;
        ImageConfiguration::from_reader(f.take(MAX_CONFIG)).map_err(|e| malformed(name, &format!("image config: {e}")))
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
    ///
    /// Every blob must be known to have come from the reference's own registry and repository (digest-pinned
    /// references to other repositories, or blobs another reference brought in, are asked for at the source).
    /// Layouts are never served from here: see [`Puller::pull`].
    fn cached(&self, r: &ImageRef) -> Option<PulledImage> {
        let ImageRef::Registry { registry, repository, .. } = r else { return None };
        let key = source_key(registry, repository);
        self.cached_where(r, |d| self.cache.source_has(&key, d))
    }

    /// The image from the cache, its blobs those that `known` accepts.
    fn cached_where(&self, r: &ImageRef, known: impl Fn(&Digest) -> bool) -> Option<PulledImage> {
        let manifest_digest = match r {
            ImageRef::Registry { digest: Some(d), .. } => *d,
            _ => read_ref(&self.ref_file(r))?.manifest.parse().ok()?,
        };
        if !known(&manifest_digest) {
            return None;
        }
        let raw = std::fs::read(self.cache.blob_path(&manifest_digest)).ok()?;
        if Digest::of(&raw) != manifest_digest {
            return None;
        }
        let raw = if serde_json::from_slice::<serde_json::Value>(&raw).ok()?.get("manifests").is_some() {
            // A cached index: follow it to the platform manifest.
            let index = ImageIndex::from_reader(&raw[..]).ok()?;
            let m = pick_platform(&index)?;
            let d: Digest = m.digest().to_string().parse().ok()?;
            if !known(&d) {
                return None;
            }
            let raw = std::fs::read(self.cache.blob_path(&d)).ok()?;
            (Digest::of(&raw) == d).then_some(raw)?
        } else {
            raw
        };
        let m = ImageManifest::from_reader(&raw[..]).ok()?;
        let cfg_digest: Digest = m.config().digest().to_string().parse().ok()?;
        if !known(&cfg_digest) || m.layers().is_empty() {
            return None;
        }
        let config = self.read_config(&cfg_digest, "").ok()?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != m.layers().len() {
            return None;
        }
        let mut layers = Vec::new();
        for (l, d) in m.layers().iter().zip(diff_ids) {
            let (blob, d): (Digest, Digest) = (l.digest().to_string().parse().ok()?, d.parse().ok()?);
            if !known(&blob) || self.cache.layer_of_blob(&blob) != Some(d) || !self.cache.has_layer(&d) {
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

/// The name a registry source's provenance is kept under: blobs belong to a repository, not to a registry.
fn source_key(registry: &str, repository: &str) -> String {
    format!("{registry}/{repository}")
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
    /// The reference it was pulled by, as normalised.
    pub reference: String,
    /// The digest of its platform manifest.
    pub manifest: String,
    /// Bytes of its blobs in the cache (compressed layers, config, manifest).
    pub size: u64,
}

/// What `prune` removed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Pruned {
    /// Blobs removed.
    pub blobs: u64,
    /// Unpacked layers removed.
    pub layers: u64,
    /// Bytes freed, blobs and layers together.
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

    /// Whether `r` is in the cache, complete, so that a pull other than [`PullPolicy::Always`] would not ask its
    /// source.
    /// For an `oci:` layout (always read, see [`Puller::pull`]): whether its layers are all unpacked already, so
    /// that the pull only reads and checks the layout.
    pub fn is_cached(&self, r: &ImageRef) -> bool {
        match r {
            ImageRef::Layout { .. } => self.cached_where(r, |_| true).is_some(),
            _ => self.cached(r).is_some(),
        }
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

/// Where an image's bytes come from: a registry or a layout directory. Each knows how to hand out a manifest and
/// a reader over a blob; everything else (verification, single flight, budgets, caching) is the same for both.
enum Source<'a> {
    Registry(RegistrySource<'a>),
    Layout(LayoutSource),
}

impl<'a> Source<'a> {
    fn new(puller: &'a Puller, r: &ImageRef) -> Result<Source<'a>, PullError> {
        Ok(match r {
            ImageRef::Registry { registry, repository, tag, digest } => {
                let reference = match (tag, digest) {
                    (_, Some(d)) => {
                        oci_client::Reference::with_digest(registry.clone(), repository.clone(), d.to_string())
                    }
                    (t, None) => oci_client::Reference::with_tag(
                        registry.clone(),
                        repository.clone(),
                        t.clone().unwrap_or_else(|| crate::reference::DEFAULT_TAG.into()),
                    ),
                };
                let auth = match puller.credentials(registry) {
                    Some(c) => oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                    None => oci_client::secrets::RegistryAuth::Anonymous,
                };
                Source::Registry(RegistrySource { puller, reference, digest: *digest, auth })
            }
            ImageRef::Layout { path, tag, dir } => {
                let dir = match dir {
                    Some(d) => d.clone(),
                    None => LayoutDir::open(path)
                        .map_err(|e| PullError::Layout { path: path.clone(), message: e.to_string() })?,
                };
                Source::Layout(LayoutSource { dir, tag: tag.clone() })
            }
        })
    }

    /// The provenance key of a registry source; none for a layout, which is checked every time instead.
    fn key(&self) -> Option<String> {
        match self {
            Source::Registry(s) => Some(s.key()),
            Source::Layout(_) => None,
        }
    }

    /// The raw manifest at `at` (or the reference's own), and the digest it must have if one is known.
    async fn manifest(&self, at: Option<Digest>) -> Result<(Vec<u8>, Option<Digest>), PullError> {
        match self {
            Source::Registry(s) => s.manifest(at).await,
            Source::Layout(s) => s.manifest(at),
        }
    }

    /// A reader over blob `d` as the source sends it; nothing is verified here (callers wrap it in a
    /// [`crate::digest::VerifyingReader`] through the cache).
    async fn open_blob(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + Send>, PullError> {
        match self {
            Source::Registry(s) => s.open_blob(d, size).await,
            Source::Layout(s) => s.open_blob(d),
        }
    }
}

/// A transfer that broke off or stalled mid-blob, as opposed to a local I/O error or bytes that fail verification.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {message}")]
struct Transport {
    registry: String,
    message: String,
}

struct RegistrySource<'a> {
    puller: &'a Puller,
    reference: oci_client::Reference,
    /// The digest the reference names, which the manifest must have.
    digest: Option<Digest>,
    /// Basic credentials (oci-client trades them for a bearer token when the registry's `WWW-Authenticate`
    /// challenge names a token realm), or none (an anonymous token where the realm gives one).
    auth: oci_client::secrets::RegistryAuth,
}

/// Whether a failed request may succeed when tried again: the connection was refused, reset or timed out, or
/// the registry answered 5xx or 429. Not a TLS failure, a 4xx or bad bytes.
fn transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    let status = |code: u16| code >= 500 || code == 429;
    match e {
        E::ServerError { code, .. } => status(*code),
        E::RequestError(r) => {
            if let Some(s) = r.status() {
                return status(s.as_u16());
            }
            if r.is_timeout() {
                return true;
            }
            let mut cur: Option<&dyn std::error::Error> = Some(r);
            while let Some(err) = cur {
                if let Some(io) = err.downcast_ref::<io::Error>() {
                    return transient_io(io.kind());
                }
                cur = err.source();
            }
            false
        }
        E::IoError(io) => transient_io(io.kind()),
        // A 4xx with an error envelope: 429 says TOOMANYREQUESTS (distribution's 503 says UNAVAILABLE).
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| match &x.code {
            oci_client::errors::OciErrorCode::Toomanyrequests => true,
            oci_client::errors::OciErrorCode::Other(c) => c == "UNAVAILABLE",
            _ => false,
        }),
        _ => false,
    }
}

fn transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::TimedOut
            | K::UnexpectedEof
            | K::BrokenPipe
    )
}

impl RegistrySource<'_> {
    fn key(&self) -> String {
        source_key(self.reference.registry(), self.reference.repository())
    }

    async fn manifest(&self, at: Option<Digest>) -> Result<(Vec<u8>, Option<Digest>), PullError> {
        let r = &self.reference;
        let reference = match at {
            Some(d) => oci_client::Reference::with_digest(r.registry().into(), r.repository().into(), d.to_string()),
            None => r.clone(),
        };
        let client = &self.puller.client;
        let (bytes, _) = self.retrying(|| client.pull_manifest_raw(&reference, &self.auth, MANIFEST_TYPES)).await?;
        Ok((bytes.to_vec(), at.or(self.digest)))
    }

    /// The blob as it streams; errors of the transfer itself read as [`Transport`], a digest mismatch that
    /// oci-client notices first as [`VerifyError`].
    async fn open_blob(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + Send>, PullError> {
        use futures_util::TryStreamExt;
        let size = i64::try_from(size).map_err(|_| PullError::Malformed {
            reference: d.to_string(),
            message: format!("blob size {size} is out of range"),
        })?;
        let desc = oci_client::manifest::OciDescriptor { digest: d.to_string(), size, ..Default::default() };
        let client = &self.puller.client;
        client.store_auth_if_needed(self.reference.resolve_registry(), &self.auth).await;
        let stream = self.retrying(|| client.pull_blob_stream(&self.reference, &desc)).await?;
        let (expected, registry) = (*d, self.reference.registry().to_string());
        let stream = stream.stream.map_err(move |e| {
            let inner = e.get_ref().and_then(|x| x.downcast_ref::<oci_client::errors::DigestError>());
            match inner {
                Some(oci_client::errors::DigestError::VerificationError { actual, .. }) => io::Error::new(
                    io::ErrorKind::InvalidData,
                    VerifyError::Mismatch { expected, actual: actual.parse().unwrap_or(Digest::from_bytes([0; 32])) },
                ),
                _ => io::Error::other(Transport { registry: registry.clone(), message: one_line(&e) }),
            }
        });
        Ok(Box::new(tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))))
    }

    /// Runs `request` until it succeeds, fails for good, or has failed transiently `retry.attempts` times (with
    /// exponential backoff in between); the last error says how many tries it took.
    async fn retrying<T, F, Fut>(&self, mut request: F) -> Result<T, PullError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    {
        let retry = self.puller.opts.retry;
        let mut wait = retry.initial;
        let mut tries = 0;
        loop {
            tries += 1;
            match request().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && tries < retry.attempts.max(1) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(retry.max);
                }
                Err(e) => {
                    let retried = transient(&e) && tries > 1;
                    return Err(match self.error(e) {
                        PullError::Registry { registry, message } if retried => PullError::Registry {
                            registry,
                            message: format!("{message} (gave up after {tries} tries)"),
                        },
                        other => other,
                    });
                }
            }
        }
    }

    /// The typed error for what oci-client reported, by its error variants and the registry's error codes.
    fn error(&self, e: oci_client::errors::OciDistributionError) -> PullError {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
        let registry = self.reference.registry().to_string();
        let reference = self.reference.whole();
        let in_envelope = |codes: &[C]| match &e {
            E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| codes.contains(&x.code)),
            _ => false,
        };
        match &e {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } | E::ServerError { code: 401, .. } => {
                PullError::Unauthorized { registry }
            }
            E::ImageManifestNotFoundError(_) | E::ServerError { code: 404, .. } => PullError::NotFound { reference },
            _ if in_envelope(&[C::Unauthorized, C::Denied]) => PullError::Unauthorized { registry },
            _ if in_envelope(&[C::ManifestUnknown, C::BlobUnknown, C::NameUnknown, C::NotFound]) => {
                PullError::NotFound { reference }
            }
            _ => PullError::Registry { registry, message: one_line(&e) },
        }
    }
}

/// A layout directory held open: every read is relative to it (see [`LayoutDir`]).
struct LayoutSource {
    dir: LayoutDir,
    tag: Option<String>,
}

impl LayoutSource {
    fn manifest(&self, at: Option<Digest>) -> Result<(Vec<u8>, Option<Digest>), PullError> {
        let d = match at {
            Some(d) => d,
            None => self.entry()?,
        };
        let mut raw = Vec::new();
        self.open_blob(&d)?
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut raw)
            .map_err(|e| self.error(format!("manifest {d}: {e}")))?;
        Ok((raw, Some(d)))
    }

    fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send>, PullError> {
        let f = self
            .dir
            .open_file(&["blobs", d.algorithm(), &d.hex()])
            .map_err(|e| self.error(format!("blob {d}: {e}")))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    /// The manifest digest `index.json` names for the tag (or its only entry).
    fn entry(&self) -> Result<Digest, PullError> {
        let f = self.dir.open_file(&["index.json"]).map_err(|e| self.error(format!("index.json: {e}")))?;
        let index =
            ImageIndex::from_reader(f.take(MAX_MANIFEST)).map_err(|e| self.error(format!("index.json: {e}")))?;
        let ms = index.manifests();
        let tag = self.tag.as_deref();
        let hit = match tag {
            Some(t) => ms.iter().find(|m| {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                    .is_some_and(|n| n == t)
            }),
            None if ms.len() == 1 => ms.first(),
            None => return Err(self.error(format!("{} images in the layout: name one with oci:PATH:TAG", ms.len()))),
        };
        let m = hit.ok_or_else(|| self.error(format!("no image tagged {:?}", tag.unwrap_or(""))))?;
        m.digest().to_string().parse().map_err(|_| self.error(format!("bad digest {}", m.digest())))
    }

    fn error(&self, message: String) -> PullError {
        PullError::Layout { path: self.dir.path().to_path_buf(), message }
    }
}

/// Runs `job` on a blocking thread with `reader` (counted for progress by bytes received) and reports progress
/// while it runs.
async fn with_reader<T: Send + 'static>(
    reader: Box<dyn Read + Send>,
    d: &Digest,
    size: u64,
    progress: Progress<'_>,
    job: impl FnOnce(Box<dyn Read + Send>) -> T + Send + 'static,
) -> Result<T, PullError> {
    let label = short(d);
    let report = |done: u64| progress(format!("layer {label} {} / {}", human(done), human(size)));
    report(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // When this future is dropped (a sibling layer failed, or the session went away), the blocking job must
    // stop too rather than download the rest: its next read fails and it cleans up as after any error.
    let abandoned = Arc::new(AtomicBool::new(false));
    let _abandon_on_drop = AbandonOnDrop(abandoned.clone());
    let counted = Counted { inner: reader, n: 0, last: 0, tx, abandoned };
    let task = tokio::task::spawn_blocking(move || job(Box::new(counted)));
    let mut task = std::pin::pin!(task);
    let res = loop {
        tokio::select! {
            r = &mut task => break r,
            Some(done) = rx.recv() => report(done),
        }
    };
    // The job returns its own errors; this one is the blocking thread itself failing (a panic).
    res.map_err(|e| PullError::Malformed { reference: d.to_string(), message: format!("blob job failed: {e}") })
}

struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts bytes for progress without a report per read, and stops reading once the pull is abandoned.
struct Counted<R> {
    inner: R,
    n: u64,
    last: u64,
    tx: tokio::sync::mpsc::UnboundedSender<u64>,
    abandoned: Arc<AtomicBool>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(io::Error::other("the pull was abandoned"));
        }
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
    image_bytes: &AtomicU64,
) -> Result<UnpackSummary, UnpackError> {
    let s = unpack_layer_of_image(rd, tmp, opts, image_bytes)?;
    if s.diff_id != diff_id {
        return Err(UnpackError::DiffIdMismatch { expected: diff_id, actual: s.diff_id });
    }
    Ok(s)
}

fn transport(e: &io::Error) -> Option<&Transport> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|x| x as _);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<Transport>() {
            return Some(t);
        }
        if let Some(t) = err.downcast_ref::<io::Error>().and_then(transport) {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// What an I/O error met while storing blob `d` means: bad bytes, a broken transfer, or neither.
fn classify_io(name: &str, what: String, e: &io::Error) -> Option<PullError> {
    if let Some(v) = VerifyError::find(e) {
        return Some(PullError::Verify { reference: name.into(), what, source: v.clone() });
    }
    let t = transport(e)?;
    Some(PullError::Registry { registry: t.registry.clone(), message: t.message.clone() })
}

fn cache_error(name: &str, e: CacheError) -> PullError {
    let classified = match &e {
        CacheError::Blob { digest, source } => classify_io(name, format!("blob {digest}"), source),
        _ => None,
    };
    classified.unwrap_or_else(|| PullError::Cache { reference: name.into(), source: Box::new(e) })
}

fn layer_error(name: &str, blob: Digest, e: CacheError) -> PullError {
    match e {
        CacheError::Layer { source: UnpackError::Budget(b), .. } => {
            PullError::Budget { reference: name.into(), source: b }
        }
        CacheError::Layer { source, .. } => {
            let io = match &source {
                UnpackError::Archive(io) | UnpackError::Entry { source: io, .. } => Some(io),
                _ => None,
            };
            match io.and_then(|io| classify_io(name, format!("layer {blob}"), io)) {
                Some(p) => p,
                None => PullError::Unpack { reference: name.into(), blob, source: Box::new(source) },
            }
        }
        other => cache_error(name, other),
    }
}

fn to_digest(s: String, name: &str) -> Result<Digest, PullError> {
    s.parse().map_err(|_| malformed(name, &format!("unsupported digest {s}")))
}

fn malformed(name: &str, message: &str) -> PullError {
    PullError::Malformed { reference: name.into(), message: message.into() }
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn puller(dir: &Path, opts: RegistryOptions) -> Puller {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Puller::new(Arc::new(Cache::open(dir.join("cache")).unwrap()), opts)
    }

    fn basic(p: &Puller, reference: &str) -> Option<(String, String)> {
        let Source::Registry(src) = Source::new(p, &ImageRef::parse(reference).unwrap()).unwrap() else {
            panic!("{reference} is not a registry reference")
        };
        match src.auth {
            oci_client::secrets::RegistryAuth::Basic(u, pw) => Some((u, pw)),
            _ => None,
        }
    }

    #[test]
    fn docker_hub_credentials_are_found_for_docker_io_references() {
        let tmp = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for key in ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io"] {
            let cfg = tmp.path().join("config.json");
            let json = serde_json::json!({"auths": {
                key: {"auth": b64("hubuser:hubpass")},
                "registry.example:5000": {"auth": b64("u:p")},
            }});
            std::fs::write(&cfg, serde_json::to_vec(&json).unwrap()).unwrap();
            let p = puller(tmp.path(), RegistryOptions { docker_config: Some(cfg), ..Default::default() });
            let hub = Some(("hubuser".to_string(), "hubpass".to_string()));
            assert_eq!(basic(&p, "busybox"), hub, "{key}");
            assert_eq!(basic(&p, "index.docker.io/library/alpine:3"), hub, "{key}");
            assert_eq!(basic(&p, "registry.example:5000/x"), Some(("u".into(), "p".into())));
            assert_eq!(basic(&p, "quay.io/x/y"), None);
        }
        // The agent's own credentials table is keyed the same way.
        let credentials = HashMap::from([(
            "index.docker.io".to_string(),
            Credentials { username: "own".into(), password: "pw".into() },
        )]);
        let p = puller(tmp.path(), RegistryOptions { credentials, ..Default::default() });
        assert_eq!(basic(&p, "busybox"), Some(("own".into(), "pw".into())));
    }
}
