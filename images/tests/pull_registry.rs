//! Pulls against an in-process registry that misbehaves on demand (wrong digest, truncated or oversized blobs,
//! 401, 500, a stalled transfer, a decompression bomb), and concurrent pulls that must download each blob
//! once. Each failure asserts the typed error and that the cache holds nothing partial. Also: an `oci:` layout
//! is pulled from the directory that was opened, whatever happens to its path afterwards.

use dcos_exec_images::cache::Cache;
use dcos_exec_images::digest::{Digest, VerifyError};
use dcos_exec_images::pull::{Credentials, PullError, PullPolicy, Puller, RegistryOptions, Retry};
use dcos_exec_images::reference::ImageRef;
use dcos_exec_images::unpack::{Limits, UnpackOptions};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the registry answers a blob request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Blob {
    Normal,
    /// Other bytes of the same length.
    WrongDigest,
    /// Only the first half.
    Truncated,
    /// The blob and a megabyte more.
    Oversized,
    /// Some bytes, then nothing, forever.
    Stalled,
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
    /// A status every request gets instead (401, 500).
    status: Option<u16>,
    mode: HashMap<String, Blob>,
    /// GETs by path.
    hits: HashMap<String, usize>,
    /// The next requests (other than `/v2/`) get these statuses, one each, before being served.
    fail_next: Vec<u16>,
    /// Requests that got one of `fail_next`.
    failed: usize,
    /// Basic credentials (`user:password`) every request must carry, else 401 with a Basic challenge.
    require: Option<String>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: Vec<u8>) -> Body {
    Full::new(Bytes::from(b)).map_err(|never| match never {}).boxed()
}

async fn handle(state: Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, String> {
    let path = req.uri().path().to_string();
    let mut st = state.lock().unwrap();
    *st.hits.entry(path.clone()).or_default() += 1;
    if let Some(code) = st.status {
        let mut r = Response::builder().status(code);
        if code == 401 {
            r = r.header("WWW-Authenticate", "Basic realm=\"test\"");
        }
        let body = br#"{"errors":[{"code":"UNKNOWN","message":"no"}]}"#.to_vec();
        return Ok(r.header("Content-Type", "application/json").body(full(body)).unwrap());
    }
    if let Some(want) = &st.require {
        use base64::Engine;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(want));
        if req.headers().get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}"#.to_vec();
            let r = Response::builder().status(401).header("WWW-Authenticate", "Basic realm=\"test\"");
            return Ok(r.header("Content-Type", "application/json").body(full(body)).unwrap());
        }
    }
    if path == "/v2/" {
        return Ok(Response::new(full(Vec::new())));
    }
    if !st.fail_next.is_empty() {
        let code = st.fail_next.remove(0);
        st.failed += 1;
        // As distribution answers: 429 with TOOMANYREQUESTS, 503 with UNAVAILABLE, a bare 502 from a proxy.
        let body = match code {
            429 => br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            503 => br#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#.to_vec(),
            _ => b"bad gateway".to_vec(),
        };
        let mut r = Response::builder().status(code).header("Content-Type", "application/json");
        if code == 429 {
            r = r.header("Retry-After", "0");
        }
        return Ok(r.body(full(body)).unwrap());
    }
    let not_found = || Response::builder().status(StatusCode::NOT_FOUND).body(full(Vec::new())).unwrap();
    if let Some((_, reference)) = path.split_once("/manifests/") {
        return Ok(match st.manifests.get(reference) {
            Some(m) => Response::builder()
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .body(full(m.clone()))
                .unwrap(),
            None => not_found(),
        });
    }
    let Some((_, digest)) = path.split_once("/blobs/") else { return Ok(not_found()) };
    let Some(data) = st.blobs.get(digest).cloned() else { return Ok(not_found()) };
    let body = match st.mode.get(digest).copied().unwrap_or(Blob::Normal) {
        Blob::Normal => full(data),
        Blob::WrongDigest => full(data.iter().map(|b| b ^ 0x55).collect()),
        Blob::Truncated => full(data[..data.len() / 2].to_vec()),
        Blob::Oversized => full(data.into_iter().chain(std::iter::repeat_n(7u8, 1 << 20)).collect()),
        Blob::Stalled => {
            let first =
                futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(Bytes::from(data[..16].to_vec())))]);
            let never = futures_util::stream::pending();
            StreamBody::new(futures_util::StreamExt::chain(first, never)).boxed()
        }
    };
    Ok(Response::new(body))
}

struct Registry {
    state: Arc<Mutex<State>>,
    host: String,
}

impl Registry {
    async fn start() -> Registry {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Registry { state, host }
    }

    fn blob(&self, data: &[u8]) -> (Digest, u64) {
        let d = Digest::of(data);
        self.state.lock().unwrap().blobs.insert(d.to_string(), data.to_vec());
        (d, data.len() as u64)
    }

    /// Stores an image of `layers` (compressed blob, uncompressed tar) as `repo:latest`; returns the layer digests.
    fn image(&self, repo: &str, layers: &[(Vec<u8>, Vec<u8>)]) -> (Vec<Digest>, Digest) {
        let diff_ids: Vec<String> = layers.iter().map(|(_, tar)| Digest::of(tar).to_string()).collect();
        let config = serde_json::json!({
            "architecture": host_arch(), "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}
        });
        let (cd, cs) = self.blob(&serde_json::to_vec(&config).unwrap());
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for (blob, _) in layers {
            let (d, s) = self.blob(blob);
            digests.push(d);
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": s
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
            "layers": descs
        });
        let _ = repo;
        self.state.lock().unwrap().manifests.insert("latest".into(), serde_json::to_vec(&manifest).unwrap());
        (digests, cd)
    }

    fn set(&self, d: &Digest, mode: Blob) {
        self.state.lock().unwrap().mode.insert(d.to_string(), mode);
    }

    fn hits(&self, d: &Digest) -> usize {
        let st = self.state.lock().unwrap();
        st.hits.iter().filter(|(p, _)| p.ends_with(&format!("/blobs/{d}"))).map(|(_, n)| *n).sum()
    }

    fn reference(&self) -> ImageRef {
        ImageRef::parse(&format!("{}/test/img:latest", self.host)).unwrap()
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let tar = tar_of(files);
    (gzip(&tar), tar)
}

fn puller(cache: &Path, reg: &Registry, limits: Limits, creds: Option<(&str, &str)>) -> Puller {
    // The agent installs the process-wide TLS provider at start; a test process has to do it itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut credentials = HashMap::new();
    if let Some((u, p)) = creds {
        credentials.insert(reg.host.clone(), Credentials { username: u.into(), password: p.into() });
    }
    let opts = RegistryOptions {
        insecure: vec![reg.host.clone()],
        credentials,
        unpack: UnpackOptions { limits, ..Default::default() },
        read_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    Puller::new(Arc::new(Cache::open(cache).unwrap()), opts)
}

fn quiet(_: String) {}

/// No unpacked layer, no layer blob, no temporary: what a failed pull may leave is the manifest and config.
fn assert_nothing_partial(cache: &Path, layer_blobs: &[Digest]) {
    let layers = std::fs::read_dir(cache.join("layers/sha256")).unwrap().count();
    assert_eq!(layers, 0, "an unpacked layer was published");
    for d in layer_blobs {
        assert!(!cache.join("blobs/sha256").join(d.hex()).exists(), "layer blob {d} was published");
    }
    let left: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

async fn pull_err(p: &Puller, reg: &Registry) -> PullError {
    match p.pull(&reg.reference(), PullPolicy::Always, &quiet).await {
        Ok(img) => panic!("pull succeeded: {img:?}"),
        Err(e) => {
            assert_eq!(e.code(), dcos_exec_proto::ErrorCode::ImageFailed);
            e
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_image_pulls_and_is_cached() {
    let reg = Registry::start().await;
    let (digests, _) = reg.image("test/img", &[layer(&[("hello", b"hi")])]);
    let tmp = tempfile::tempdir().unwrap();
    let p = puller(tmp.path(), &reg, Limits::default(), None);
    let img = p.pull(&reg.reference(), PullPolicy::IfNotPresent, &quiet).await.unwrap();
    assert_eq!(std::fs::read(img.layers[0].join("hello")).unwrap(), b"hi");
    assert_eq!(reg.hits(&digests[0]), 1);
    // From the cache: no more blob requests.
    p.pull(&reg.reference(), PullPolicy::IfNotPresent, &quiet).await.unwrap();
    assert_eq!(reg.hits(&digests[0]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_misbehaviour_is_a_typed_error_and_leaves_nothing_partial() {
    for mode in [Blob::WrongDigest, Blob::Truncated, Blob::Oversized, Blob::Stalled] {
        let reg = Registry::start().await;
        let (digests, _) = reg.image("test/img", &[layer(&[("hello", &[9u8; 4096][..])])]);
        reg.set(&digests[0], mode);
        let tmp = tempfile::tempdir().unwrap();
        let p = puller(tmp.path(), &reg, Limits::default(), None);
        let e = pull_err(&p, &reg).await;
        match (mode, &e) {
            (Blob::WrongDigest, PullError::Verify { source: VerifyError::Mismatch { expected, .. }, .. }) => {
                assert_eq!(*expected, digests[0])
            }
            // Whichever check sees the end first: ours (size) or oci-client's (digest).
            (
                Blob::Truncated,
                PullError::Verify { source: VerifyError::ShortOrLong { .. } | VerifyError::Mismatch { .. }, .. },
            ) => {}
            (Blob::Oversized, PullError::Verify { source: VerifyError::Oversized { expected, got, .. }, .. }) => {
                // Refused as it streamed: stopped just past the declared size, not at the end of the megabyte.
                assert!(*got < expected + (1 << 20), "{got}")
            }
            (Blob::Stalled, PullError::Registry { registry, .. }) => assert_eq!(*registry, reg.host),
            _ => panic!("{mode:?}: unexpected {e:?}"),
        }
        assert_nothing_partial(tmp.path(), &digests);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_errors_are_typed() {
    let reg = Registry::start().await;
    reg.image("test/img", &[layer(&[("hello", b"hi")])]);
    let tmp = tempfile::tempdir().unwrap();
    reg.state.lock().unwrap().status = Some(401);
    let p = puller(tmp.path(), &reg, Limits::default(), Some(("u", "wrong")));
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::Unauthorized { registry } if *registry == reg.host), "{e:?}");
    reg.state.lock().unwrap().status = Some(500);
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::Registry { registry, .. } if *registry == reg.host), "{e:?}");
    reg.state.lock().unwrap().status = None;
    reg.state.lock().unwrap().manifests.clear();
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::NotFound { .. }), "{e:?}");
    assert_nothing_partial(tmp.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decompression_bomb_stops_at_the_layer_budget() {
    let reg = Registry::start().await;
    // 64 MiB of zeros in one file: a few tens of kilobytes compressed.
    let zeros = vec![0u8; 64 << 20];
    let bomb = layer(&[("zeros", &zeros[..])]);
    assert!(bomb.0.len() < 1 << 20);
    let (digests, _) = reg.image("test/img", &[bomb]);
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits { max_layer_bytes: 8 << 20, ..Limits::default() };
    let p = puller(tmp.path(), &reg, limits, None);
    let e = pull_err(&p, &reg).await;
    let PullError::Budget { source, .. } = &e else { panic!("{e:?}") };
    assert_eq!((source.limit, source.max), ("max_layer_bytes", 8 << 20));
    assert!(e.to_string().contains("max_layer_bytes = 8388608"), "{e}");
    assert_nothing_partial(tmp.path(), &digests);
    // A blob declared larger than a layer may be is refused before it is requested.
    let big = vec![1u8; 9 << 20];
    let (digests, _) = reg.image("test/img", &[(big.clone(), tar_of(&[("x", &big[..])]))]);
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::Budget { source, .. } if source.amount == 9 << 20), "{e:?}");
    assert_eq!(reg.hits(&digests[0]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_budget_counts_all_layers() {
    let reg = Registry::start().await;
    let l1 = layer(&[("a", &[1u8; 3 << 20][..])]);
    let l2 = layer(&[("b", &[2u8; 3 << 20][..])]);
    let (digests, _) = reg.image("test/img", &[l1, l2]);
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits { max_image_bytes: 5 << 20, ..Limits::default() };
    let p = puller(tmp.path(), &reg, limits, None);
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::Budget { source, .. } if source.limit == "max_image_bytes"), "{e:?}");
    // The layer that got in first may have been published; the one that crossed the budget was not.
    let published = digests.iter().filter(|d| tmp.path().join("blobs/sha256").join(d.hex()).exists()).count();
    assert!(published < 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_download_each_blob_once() {
    let reg = Registry::start().await;
    let (digests, config) =
        reg.image("test/img", &[layer(&[("a", &[1u8; 1 << 20][..])]), layer(&[("b", &[2u8; 1 << 20][..])])]);
    let tmp = tempfile::tempdir().unwrap();
    let p = Arc::new(puller(tmp.path(), &reg, Limits::default(), None));
    let r = reg.reference();
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            let (p, r) = (p.clone(), r.clone());
            tokio::spawn(async move { p.pull(&r, PullPolicy::IfNotPresent, &quiet).await.map(|i| i.layers) })
        })
        .collect();
    let mut seen = Vec::new();
    for t in pulls {
        seen.push(t.await.unwrap().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
    for d in digests.iter().chain([&config]) {
        assert_eq!(reg.hits(d), 1, "blob {d} was downloaded more than once");
    }
}

/// An OCI layout at `dir` with one image of one layer holding `files`.
fn write_layout(dir: &Path, files: &[(&str, &[u8])]) {
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
        (d.to_string(), data.len())
    };
    let (blob, tar) = layer(files);
    let (ld, ls) = put(&blob);
    let config = serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]}, "config": {}
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}
    ]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_layout_is_pulled_from_the_directory_that_was_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    write_layout(&base.join("good"), &[("which", b"good")]);
    write_layout(&base.join("denied"), &[("which", b"denied")]);
    std::os::unix::fs::symlink(base.join("good"), base.join("link")).unwrap();
    let r = ImageRef::parse(&format!("oci:{}/./link", base.display())).unwrap().open_layout().unwrap();
    assert_eq!(r.to_string(), format!("oci:{}/good", base.display()), "judged by its real path");
    // Swapped after it was judged: the pull still reads the directory that was opened.
    std::fs::remove_file(base.join("link")).unwrap();
    std::os::unix::fs::symlink(base.join("denied"), base.join("link")).unwrap();
    std::fs::rename(base.join("good"), base.join("good-moved")).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let p = Puller::new(Arc::new(Cache::open(base.join("cache")).unwrap()), RegistryOptions::default());
    let img = p.pull(&r, PullPolicy::Always, &quiet).await.unwrap();
    assert_eq!(std::fs::read(img.layers[0].join("which")).unwrap(), b"good");
}

/// 503, 502 and 429 on the manifest and the blobs are tried again with backoff and the pull succeeds; a registry
/// that keeps failing, or that is not listening, gives a clear error after the last try; a 404 is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_with_backoff_then_named() {
    let reg = Registry::start().await;
    reg.image("test/img", &[layer(&[("hello", b"hi")])]);
    let tmp = tempfile::tempdir().unwrap();
    let retry = Retry { attempts: 4, initial: Duration::from_millis(20), max: Duration::from_millis(80) };
    let with_retry = |dir: &Path, retry: Retry| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let opts = RegistryOptions {
            insecure: vec![reg.host.clone()],
            read_timeout: Some(Duration::from_secs(1)),
            retry,
            ..Default::default()
        };
        Puller::new(Arc::new(Cache::open(dir).unwrap()), opts)
    };
    // Three failures in a row, each request tried again: the manifest, then the config blob, then the layer.
    reg.state.lock().unwrap().fail_next = vec![503, 429, 502];
    let p = with_retry(&tmp.path().join("a"), retry);
    let img = p.pull(&reg.reference(), PullPolicy::Always, &quiet).await.unwrap();
    assert_eq!(std::fs::read(img.layers[0].join("hello")).unwrap(), b"hi");
    assert_eq!(reg.state.lock().unwrap().failed, 3);
    // Failing more often than there are tries: the error says so.
    reg.state.lock().unwrap().failed = 0;
    reg.state.lock().unwrap().fail_next = vec![503; 10];
    let p = with_retry(&tmp.path().join("b"), retry);
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::Registry { message, .. } if message.contains("gave up after 4 tries")), "{e}");
    assert_eq!(reg.state.lock().unwrap().failed, 4);
    // Without retries, one try.
    reg.state.lock().unwrap().failed = 0;
    reg.state.lock().unwrap().fail_next = vec![503; 10];
    let p = with_retry(&tmp.path().join("c"), Retry { attempts: 1, ..retry });
    pull_err(&p, &reg).await;
    assert_eq!(reg.state.lock().unwrap().failed, 1);
    // 404 is an answer, not a failure: asked once.
    reg.state.lock().unwrap().fail_next = vec![404, 503];
    reg.state.lock().unwrap().failed = 0;
    let p = with_retry(&tmp.path().join("d"), retry);
    let e = pull_err(&p, &reg).await;
    assert!(matches!(&e, PullError::NotFound { .. }), "{e:?}");
    assert_eq!(reg.state.lock().unwrap().failed, 1);
}

/// Nobody listens on the registry's port: connection refused, tried `attempts` times, then named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_then_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = format!("127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let opts = RegistryOptions {
        insecure: vec![host.clone()],
        retry: Retry { attempts: 3, initial: Duration::from_millis(100), max: Duration::from_millis(100) },
        ..Default::default()
    };
    let p = Puller::new(Arc::new(Cache::open(tmp.path()).unwrap()), opts);
    let r = ImageRef::parse(&format!("{host}/test/img:latest")).unwrap();
    let started = std::time::Instant::now();
    let e = p.pull(&r, PullPolicy::Always, &quiet).await.unwrap_err();
    assert!(matches!(&e, PullError::Registry { message, .. } if message.contains("gave up after 3 tries")), "{e}");
    // Two waits of 100 ms happened: the tries were spread out, not hammered.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// Docker's `credHelpers` and `credsStore`: a real helper executable (`docker-credential-NAME get`, the server on
/// stdin, `{"Username","Secret"}` on stdout) written by the test. Its credentials reach the registry; a helper that
/// knows nothing of the registry means anonymous; a failing or missing helper is a clear error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_credential_helpers_give_the_credentials() {
    let reg = Registry::start().await;
    reg.image("test/img", &[layer(&[("hello", b"hi")])]);
    reg.state.lock().unwrap().require = Some("helped:s3cret".into());
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = |name: &str, script: &str| {
        let p = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    let log = tmp.path().join("asked");
    // Answers for the test registry only, and logs what it was asked.
    helper(
        "store",
        &format!(
            "read server; echo \"$server\" >> {}; if [ \"$server\" = \"{}\" ]; then \
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"helped\",\"Secret\":\"s3cret\"}}'; \
             else echo 'credentials not found in native keychain'; exit 1; fi",
            log.display(),
            reg.host
        ),
    );
    helper("broken", "read server; echo 'keychain locked' >&2; exit 1");
    // Only this test in this binary runs commands: the helpers are found on PATH, as Docker finds them.
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));
    let pull = |name: &str, config: serde_json::Value| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = tmp.path().join(format!("{name}.json"));
        std::fs::write(&cfg, config.to_string()).unwrap();
        let opts = RegistryOptions {
            insecure: vec![reg.host.clone()],
            docker_config: Some(cfg),
            read_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let p = Puller::new(Arc::new(Cache::open(tmp.path().join(name)).unwrap()), opts);
        let r = reg.reference();
        async move { p.pull(&r, PullPolicy::Always, &quiet).await }
    };
    // credsStore, and credHelpers for this registry.
    let img = pull("store", serde_json::json!({"credsStore": "store"})).await.unwrap();
    assert_eq!(std::fs::read(img.layers[0].join("hello")).unwrap(), b"hi");
    let helpers = serde_json::json!({"credHelpers": {reg.host.clone(): "store"}, "credsStore": "broken"});
    pull("helpers", helpers).await.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), format!("{0}\n{0}\n", reg.host));
    // A helper that knows nothing of the registry: anonymous, so the registry's 401.
    let other = serde_json::json!({"credHelpers": {"elsewhere.example": "broken"}, "credsStore": "store"});
    reg.state.lock().unwrap().require = Some("someone:else".into());
    let e = pull("anonymous", other).await.unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    // A failing helper, and one that is not installed: named.
    let e = pull("broken", serde_json::json!({"credsStore": "broken"})).await.unwrap_err();
    assert!(matches!(&e, PullError::CredentialHelper { .. }), "{e:?}");
    assert!(e.to_string().contains("docker-credential-broken failed: keychain locked"), "{e}");
    let e = pull("missing", serde_json::json!({"credsStore": "nowhere"})).await.unwrap_err();
    assert!(e.to_string().contains("cannot be run"), "{e}");
}
