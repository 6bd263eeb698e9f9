//! Fixtures for debug-image tests: a private CA, a TLS registry with htpasswd auth (docker-registry), OCI images
//! built with umoci or written byte by byte, a target container without a shell, and an agent whose `[images]`
//! table trusts the CA and holds the registry's credentials.

#![allow(dead_code)]

use crate::support::{at_exit, bin, prefix, run, stderr, stdout, world, Agent, Container};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const REGISTRY_USER: &str = "user";
pub const REGISTRY_PASSWORD: &str = "pass";

/// The ACL of the debug agent: the admin may debug with any image, `dbg` only with images under `tools/`.
pub const DEBUG_ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
subjects = ["user:dbg"]
tasks = ["*"]
actions = ["debug"]
images = ["127.0.0.1:*/tools/*"]
"#;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn checked(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    o
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn wait_for_port(addr: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child with `pid` when the thread that spawned it dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir.join("certs.d")).unwrap();
        let o = |args: &[&str]| checked(Command::new("openssl").current_dir(dir).args(args));
        o(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=dcos-exec-test-ca",
        ]);
        o(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        o(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        // skopeo reads `ca.crt` from a directory.
        std::fs::copy(dir.join("ca.crt"), dir.join("certs.d/ca.crt")).unwrap();
        Pki { dir: dir.into() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }
}

/// A docker-registry process serving TLS on 127.0.0.1, optionally behind htpasswd basic auth.
pub struct Registry {
    pub dir: PathBuf,
    pub port: u16,
    pub cert_dir: PathBuf,
    pub tls: bool,
    child: Mutex<Option<Child>>,
}

impl Registry {
    /// Starts a registry; it dies with the thread that calls this.
    pub fn start(dir: &Path, pki: &Pki, auth: bool) -> Registry {
        Registry::start_with(dir, pki, auth, true)
    }

    /// Like [`Registry::start`]; without `tls` it speaks plain HTTP.
    pub fn start_with(dir: &Path, pki: &Pki, auth: bool, tls: bool) -> Registry {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: dcos-exec-e2e\n",
            dir.join("data").display(),
        );
        if tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.dir.join("server.crt").display(),
                pki.dir.join("server.key").display()
            ));
        }
        if auth {
            let o = checked(Command::new("htpasswd").args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD]));
            std::fs::write(dir.join("htpasswd"), &o.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: dcos-exec-e2e\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        // docker-registry writes its access log (combined log format) to stdout.
        let access = std::fs::File::create(dir.join("access.log")).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(dir.join("config.yml")).stdin(Stdio::null()).stdout(access).stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("starting docker-registry (scripts/setup installs it)");
        wait_for_port(&format!("127.0.0.1:{port}"), 20);
        Registry { dir: dir.into(), port, cert_dir: pki.cert_dir(), tls, child: Mutex::new(Some(child)) }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry; connections to its port are refused afterwards.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Copies `oci:LAYOUT:TAG` to `HOST/REPO` (with `--all` for an index); returns the pushed reference.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, all: bool) -> String {
        let dest = format!("{}/{repo}", self.host());
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "copy", "-q"]);
        if all {
            c.arg("--all");
        }
        c.args(["--dest-creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")]);
        if !self.tls {
            c.arg("--dest-tls-verify=false");
        }
        c.arg("--dest-cert-dir")
            .arg(&self.cert_dir)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"));
        checked(&mut c);
        dest
    }

    /// The raw manifest (or index) the registry serves for `reference` (HOST/REPO:TAG).
    pub fn raw_manifest(&self, reference: &str) -> Vec<u8> {
        let o = checked(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")])
                .arg("--cert-dir")
                .arg(&self.cert_dir)
                .arg(format!("docker://{reference}")),
        );
        o.stdout
    }

    /// Successful GETs of blobs so far, by digest (`sha256:...`), from the registry's access log.
    pub fn blob_gets(&self) -> std::collections::HashMap<String, usize> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let mut out = std::collections::HashMap::new();
        for line in log.lines() {
            // ... "GET /v2/REPO/blobs/sha256:HEX HTTP/1.1" 200 SIZE ...
            let Some((_, req)) = line.split_once("\"GET ") else { continue };
            let Some((path, rest)) = req.split_once(' ') else { continue };
            let ok = rest.split_once("\" ").is_some_and(|(_, after)| after.starts_with("200 "));
            if let (Some((_, digest)), true) = (path.split_once("/blobs/"), ok) {
                *out.entry(digest.to_string()).or_default() += 1;
            }
        }
        out
    }

    /// `sha256:...` of the manifest the registry serves for `reference`.
    pub fn manifest_digest(&self, reference: &str) -> String {
        format!("sha256:{}", sha256_hex(&self.raw_manifest(reference)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `init`s an agent into `dir` like [`Agent::start`], then adds `extra` (e.g. an `[images]` table) to its
/// config and writes `acl` before starting it.
pub fn start_agent(dir: &Path, extra: &str, acl: &str) -> Agent {
    let _ = std::fs::remove_dir_all(dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--listen", &listen, "--dir"]).arg(dir));
    assert!(o.status.success(), "init: {}", stderr(&o));
    let cfg = dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace("grace_period = \"5s\"", "grace_period = \"1s\"");
    text = text.replacen("\n[runtimes]", "\ntask_id_annotation = \"io.dcos.task-id\"\n\n[runtimes]", 1);
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&cfg, text).unwrap();
    std::fs::write(dir.join("acl.toml"), acl).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new(bin("dcos-exec-agent"));
    cmd.args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(log).env("DCOS_EXEC_LOG", "debug");
    die_with_parent(&mut cmd);
    let child = cmd.spawn().expect("starting the agent");
    wait_for_port(&listen, 20);
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    Agent { dir: dir.into(), url: format!("https://127.0.0.1:{port}"), child, admin_token }
}

/// A runc container whose root holds only a static busybox at `/busybox` (no shell, no applet links) and
/// `/etc`; it runs `/busybox sleep 100000` (busybox needs its own name in argv[0] to run an applet).
pub fn start_shell_less(root: &Path, id: &str) -> Container {
    let bundle = root.join(id);
    let _ = std::fs::remove_dir_all(&bundle);
    let rootfs = bundle.join("rootfs");
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("busybox")).expect("busybox-static is installed");
    std::fs::write(rootfs.join("etc/passwd"), format!("root:x:0:0:{id}:/:/busybox\n")).unwrap();
    std::fs::write(rootfs.join("etc/marker"), "target-marker\n").unwrap();
    let _ = Command::new("runc").args(["delete", "-f", id]).output();
    checked(Command::new("runc").current_dir(&bundle).arg("spec"));
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/busybox", "sleep", "100000"]);
    cfg["root"]["readonly"] = false.into();
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    Container::run_bundle(root, id, bundle)
}

// ---------------------------------------------------------------------------------------------------------------
// Images written byte by byte.

/// One tar entry of a hand-made layer; names and link targets are written raw, unchecked.
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub device: (u32, u32),
}

impl Entry {
    pub fn dir(name: &str, mode: u32) -> Entry {
        Entry::raw(name.as_bytes(), tar::EntryType::Directory, mode)
    }
    pub fn file(name: &str, mode: u32, data: &[u8]) -> Entry {
        Entry { data: data.to_vec(), ..Entry::raw(name.as_bytes(), tar::EntryType::Regular, mode) }
    }
    pub fn symlink(name: &str, target: &str) -> Entry {
        Entry { link: target.as_bytes().to_vec(), ..Entry::raw(name.as_bytes(), tar::EntryType::Symlink, 0o777) }
    }
    pub fn hardlink(name: &str, target: &str) -> Entry {
        Entry { link: target.as_bytes().to_vec(), ..Entry::raw(name.as_bytes(), tar::EntryType::Link, 0o644) }
    }
    pub fn char_device(name: &str, major: u32, minor: u32) -> Entry {
        Entry { device: (major, minor), ..Entry::raw(name.as_bytes(), tar::EntryType::Char, 0o666) }
    }
    pub fn raw(name: &[u8], kind: tar::EntryType, mode: u32) -> Entry {
        Entry { name: name.to_vec(), kind, mode, data: Vec::new(), link: Vec::new(), device: (0, 0) }
    }
}

/// An uncompressed tar of `entries`, names set in the header bytes directly (no path validation).
pub fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        assert!(e.name.len() <= 100 && e.link.len() <= 100, "names fit the old header");
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..e.name.len()].copy_from_slice(&e.name);
            old.linkname = [0; 100];
            old.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.device.0).unwrap();
            h.set_device_minor(e.device.1).unwrap();
        }
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A layer with a static busybox at /bin/busybox, its applet links, /tmp (1777) and /etc/passwd.
pub fn busybox_layer() -> Vec<u8> {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let mut entries = vec![
                Entry::dir("bin/", 0o755),
                Entry::file("bin/busybox", 0o755, &std::fs::read("/bin/busybox").expect("busybox-static")),
                Entry::dir("etc/", 0o755),
                Entry::file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n"),
                Entry::dir("tmp/", 0o1777),
            ];
            let list = run(Command::new("/bin/busybox").arg("--list"));
            for applet in stdout(&list).lines().filter(|a| *a != "busybox") {
                entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
            }
            tar_layer(&entries)
        })
        .clone()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Writes `data` as a blob of the layout at `dir`; returns its descriptor (digest and size).
pub fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&hex), data).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
}

/// Writes config, gzipped layers and the manifest of an image for linux/`arch`; returns the manifest descriptor.
pub fn put_image(dir: &Path, arch: &str, layers: &[Vec<u8>]) -> serde_json::Value {
    put_image_with(dir, arch, layers, serde_json::json!({"Env": ["PATH=/bin:/usr/bin"], "WorkingDir": "/"}))
}

/// [`put_image`] with `config` as the image configuration's `config` (entrypoint, command, env, workdir).
pub fn put_image_with(dir: &Path, arch: &str, layers: &[Vec<u8>], config: serde_json::Value) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256_hex(l))).collect();
    let layer_descs: Vec<serde_json::Value> =
        layers.iter().map(|l| put_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(l))).collect();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_desc = put_blob(dir, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    });
    put_blob(dir, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap())
}

/// Points the layout's `index.json` at `desc`, tagged `tag`, and writes `oci-layout`.
pub fn tag_layout(dir: &Path, tag: &str, desc: &serde_json::Value) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut d = desc.clone();
    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [d]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A fresh layout at `dir` holding one linux/amd64 image of `layers` tagged `tag`; returns the manifest digest.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    let _ = std::fs::remove_dir_all(dir);
    let desc = put_image(dir, "amd64", layers);
    tag_layout(dir, tag, &desc);
    desc["digest"].as_str().unwrap().to_string()
}

/// A fresh layout at `dir` whose tag `tag` names an index with one image per architecture in `archs`.
pub fn write_index_layout(dir: &Path, tag: &str, archs: &[&str], layers: &[Vec<u8>]) {
    let _ = std::fs::remove_dir_all(dir);
    let manifests: Vec<serde_json::Value> = archs
        .iter()
        .map(|arch| {
            let mut d = put_image(dir, arch, layers);
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let desc = put_blob(dir, "application/vnd.oci.image.index.v1+json", &serde_json::to_vec(&index).unwrap());
    tag_layout(dir, tag, &desc);
}

// ---------------------------------------------------------------------------------------------------------------
// Images built with umoci.

/// Builds `layout:tag` with umoci: one layer per closure, each called on a rootfs holding the layers so far.
pub fn umoci_image(layout: &Path, tag: &str, layers: &[&dyn Fn(&Path)]) {
    let work = layout.with_extension("bundle");
    if !layout.join("index.json").exists() {
        checked(Command::new("umoci").arg("init").arg("--layout").arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    checked(Command::new("umoci").args(["new", "--image", &image]));
    for (i, populate) in layers.iter().enumerate() {
        let _ = std::fs::remove_dir_all(&work);
        checked(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&work));
        populate(&work.join("rootfs"));
        if i == 0 {
            checked(Command::new("umoci").args(["config", "--image", &image, "--config.env", "PATH=/bin:/usr/bin"]));
        }
        checked(Command::new("umoci").args(["repack", "--image", &image]).arg(&work));
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Fills `rootfs` with a static busybox, its applet links and a world-writable /tmp.
pub fn populate_busybox(rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::set_permissions(rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in stdout(&list).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The shared set-up.

/// What every debug-image test shares: CA, registry, agent, a shell-less target and a busybox image.
pub struct Fixture {
    pub root: PathBuf,
    pub pki: Pki,
    pub registry: Registry,
    pub agent: Agent,
    pub target: Container,
    /// `oci:` layout of the busybox image built with umoci.
    pub busybox_layout: PathBuf,
    /// Its normalised reference in the registry.
    pub busybox: String,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        // The world's containers are used too; it cleans up what earlier runs left.
        let _ = world();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread that lives as long as the process: the registry's and agent's parent-death signal fires only
        // when the test process ends.
        std::thread::spawn(move || {
            remove_stale_roots();
            let root = std::env::temp_dir().join(format!("{}-img", prefix()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let pki = Pki::create(&root.join("pki"));
            let registry = Registry::start(&root.join("registry"), &pki, true);
            let busybox_layout = root.join("layouts/busybox");
            std::fs::create_dir_all(busybox_layout.parent().unwrap()).unwrap();
            umoci_image(&busybox_layout, "latest", &[&populate_busybox]);
            let busybox = registry.push(&busybox_layout, "latest", "tools/busybox:latest", false);
            let images = format!(
                "[images]\nca_files = [\"{ca}\"]\n\n\
                 [images.credentials.\"{host}\"]\nusername = \"{REGISTRY_USER}\"\npassword = \"{REGISTRY_PASSWORD}\"\n\n\
                 [images.credentials.\"localhost:{port}\"]\nusername = \"{REGISTRY_USER}\"\npassword = \"not-the-password\"\n",
                ca = pki.ca().display(),
                host = registry.host(),
                port = registry.port,
            );
            let agent = start_agent(&root.join("agent"), &images, DEBUG_ACL);
            let target = start_shell_less(&root, &format!("{}-noshell", prefix()));
            // Before the clean-up removes their directories (hooks run last-registered first).
            at_exit(|| {
                if let Some(f) = FIXTURE.get() {
                    f.registry.stop();
                    // SAFETY: kill and waitpid on our own child, which is never reaped before exit.
                    unsafe {
                        libc::kill(f.agent.pid(), libc::SIGKILL);
                        libc::waitpid(f.agent.pid(), std::ptr::null_mut(), 0);
                    }
                }
            });
            tx.send(Fixture { root, pki, registry, agent, target, busybox_layout, busybox }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("debug-image set-up failed (see the panic above)")
    })
}

/// Deletes the set-up directories of earlier test processes that are gone.
fn remove_stale_roots() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix("dcx").and_then(|r| r.strip_suffix("-img")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Fixture {
    pub fn cache(&self) -> PathBuf {
        self.agent.dir.join("images")
    }

    /// `dcos task exec --debug-image IMAGE OPTS... TASK CMD...` with `token`.
    pub fn debug_as(&self, token: &str, image: &str, opts: &[&str], task: &str, cmd: &[&str]) -> Output {
        run(self.agent.dcos_as(token).args(["task", "exec", "--debug-image", image]).args(opts).arg(task).args(cmd))
    }

    /// [`Fixture::debug_as`] as the admin.
    pub fn debug(&self, image: &str, opts: &[&str], task: &str, cmd: &[&str]) -> Output {
        self.debug_as(&self.agent.admin_token, image, opts, task, cmd)
    }

    /// A fresh directory for one test's files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.root.join("scratch").join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

/// Files below `dir`, recursively (not following symlinks), as paths relative to it.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Number of entries directly in `dir` (0 when it does not exist).
pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// A TCP proxy to `upstream` that holds its first connection, after saying so on the returned receiver, until
/// the returned sender fires.
pub fn gated_proxy(upstream: String) -> (u16, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            if i == 0 {
                let _ = seen_tx.send(());
                let _ = release_rx.recv();
            }
            let Ok(server) = std::net::TcpStream::connect(&upstream) else { return };
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
    (port, seen_rx, release_tx)
}
