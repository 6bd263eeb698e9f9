//! Attacks on `--debug-image` performed through the real `dcos` CLI against a real agent, registry and runc
//! containers: a gzip bomb layer, ten concurrent sessions on one uncached image, an image file carrying
//! `cap_setuid+ep`, and `oci:` spellings that once slipped past the ACL.

#[path = "support/registry.rs"]
mod registry;
mod support;

use registry::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

/// The `[images]` table of an agent that trusts the fixture's CA and holds credentials for `registry`.
fn images_table(f: &Fixture, registry: &str, extra: &str) -> String {
    format!(
        "[images]\nca_files = [\"{ca}\"]\n{extra}\n\n[images.credentials.\"{registry}\"]\nusername = \"{REGISTRY_USER}\"\npassword = \"{REGISTRY_PASSWORD}\"\n",
        ca = f.pki.ca().display(),
    )
}

fn debug_with(agent: &Agent, token: &str, image: &str, task: &str, cmd: &[&str]) -> Output {
    run(agent.dcos_as(token).args(["task", "exec", "--debug-image", image]).arg(task).args(cmd))
}

/// Bytes below `dir` (files, not following symlinks).
fn disk_bytes(dir: &Path) -> u64 {
    tree(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(dir.join(p)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

// ---------------------------------------------------------------------------------------------------------------
// A gzip bomb.

/// A gzip of a tar holding one file of `gib` GiB of zeros, built without compressing gigabytes: a 1 MiB run of
/// zeros is deflated once after a full flush (which resets the compressor's history, so the block stands alone)
/// and repeated; the trailer's CRC is combined arithmetically. About 1 KiB of output per MiB of zeros.
fn gzip_bomb(gib: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(gib << 30);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    gzip_bomb_after(&header, gib)
}

/// [`gzip_bomb`] with `header` (whose size should be `gib` GiB) before the zeros.
fn gzip_bomb_after(header: &tar::Header, gib: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    let deflate = |c: &mut Compress, input: &[u8], flush: FlushCompress| {
        let mut out = Vec::with_capacity(input.len() / 100 + 4096);
        let before = c.total_in();
        loop {
            let done = usize::try_from(c.total_in() - before).unwrap();
            c.compress_vec(&input[done..], &mut out, flush).unwrap();
            if usize::try_from(c.total_in() - before).unwrap() == input.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    };
    let mut c = Compress::new(Compression::best(), false);
    let mut body = deflate(&mut c, header.as_bytes(), FlushCompress::Full);
    let zeros = vec![0u8; 1 << 20];
    let first = deflate(&mut c, &zeros, FlushCompress::Full);
    let again = deflate(&mut c, &zeros, FlushCompress::Full);
    assert_eq!(first, again, "a full flush must make the zero block repeatable");
    let mut crc = Crc::new();
    crc.update(header.as_bytes());
    let mut zero_crc = Crc::new();
    zero_crc.update(&zeros);
    for _ in 0..(gib << 10) {
        body.extend_from_slice(&first);
        crc.combine(&zero_crc);
    }
    // The end-of-archive blocks, and the end of the deflate stream.
    let end = [0u8; 1024];
    body.extend(deflate(&mut c, &end, FlushCompress::Finish));
    crc.update(&end);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend(body);
    gz.extend(crc.sum().to_le_bytes());
    gz.extend(crc.amount().to_le_bytes());
    gz
}

/// An OCI layout of busybox plus `bomb` (already gzipped); the bomb's diff-id is made up, it is refused first.
fn write_bomb_layout(dir: &Path, bomb: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    let busybox = busybox_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&busybox).unwrap();
    let busybox_gz = gz.finish().unwrap();
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let layers = vec![put_blob(dir, gzip, &busybox_gz), put_blob(dir, gzip, bomb)];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [
            format!("sha256:{}", sha256_hex(&busybox)), format!("sha256:{}", sha256_hex(b"never unpacked in full"))
        ]},
    });
    let config = put_blob(dir, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers,
    });
    let desc = put_blob(dir, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap());
    tag_layout(dir, "latest", &desc);
}

#[test]
fn a_gzip_bomb_layer_stops_at_the_layer_budget_and_leaves_nothing() {
    if skip() {
        return;
    }
    const BUDGET: u64 = 64 << 20;
    let f = fixture();
    let dir = f.scratch("bomb");
    let bomb = gzip_bomb(5);
    // The attack of the report: about 5 MB that inflate to 5 GiB (checked on the first 256 MiB here).
    assert!(bomb.len() < 8 << 20, "{}", bomb.len());
    let mut head = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(flate2::read::GzDecoder::new(&bomb[..]), (256 << 20) + 512),
        &mut head,
    )
    .unwrap();
    assert_eq!(head.len(), (256 << 20) + 512);
    assert!(head[512..].iter().all(|b| *b == 0));
    drop(head);
    let layout = dir.join("layout");
    write_bomb_layout(&layout, &bomb);

    let agent = start_agent(
        &dir.join("agent"),
        &images_table(f, &f.registry.host(), &format!("max_layer_bytes = {BUDGET}")),
        DEBUG_ACL,
    );
    let cache = agent.dir.join("images");
    let before = disk_bytes(&cache);
    // Watch the cache while the pull runs: its peak, not just what is left, must stay within the budget.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(disk_bytes(&cache));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let image = format!("oci:{}", layout.display());
    let o = debug_with(&agent, &agent.admin_token, &image, &f.target.id, &["echo", "bomb"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap();

    assert_eq!(o.status.code(), Some(122), "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("max_layer_bytes = {BUDGET}")), "the refusal names the limit: {err}");
    let amount: u64 = err
        .split("at least ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the refusal names the amount: {err}"));
    assert!(amount > BUDGET, "{err}");
    assert!(stdout(&o).is_empty());
    // Nothing partial: no bomb blob, no bomb layer, no temporaries.
    let bomb_hex = sha256_hex(&bomb);
    assert!(!cache.join("blobs/sha256").join(&bomb_hex).exists(), "the bomb's blob was kept");
    assert!(count(&cache.join("layers/sha256")) <= 1, "only the busybox layer may be unpacked");
    assert_eq!(count(&cache.join("tmp")), 0, "temporaries left behind");
    let after = disk_bytes(&cache);
    // The busybox layer (about 2 MB unpacked, and its blob) may stay; the bomb may use at most its budget.
    let slack = 16 << 20;
    assert!(peak <= before + BUDGET + slack, "cache peaked at {peak} bytes (was {before})");
    assert!(after <= before + slack, "cache grew from {before} to {after} bytes");
    eprintln!(
        "gzip bomb: {} compressed bytes, refused at {amount} bytes; cache peak {peak}, after {after}",
        bomb.len()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Single flight.

#[test]
fn ten_concurrent_sessions_on_one_uncached_image_get_each_blob_once() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("flight");
    let reg = Registry::start(&dir.join("registry"), &f.pki, true);
    let layout = dir.join("layout");
    let extra = tar_layer(&[Entry::file("flight", 0o644, &vec![7u8; 4 << 20])]);
    write_layout(&layout, "v1", &[busybox_layer(), extra]);
    let image = reg.push(&layout, "v1", "tools/flight:v1", false);
    let agent = start_agent(&dir.join("agent"), &images_table(f, &reg.host(), ""), DEBUG_ACL);
    assert!(reg.blob_gets().is_empty());

    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (agent, image, target) = (&agent, &image, &f.target.id);
                s.spawn(move || {
                    debug_with(agent, &agent.admin_token, image, target, &["echo", &format!("session {i}")])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, o) in outputs.iter().enumerate() {
        assert_eq!(ok(o), format!("session {i}\n"));
    }
    // Every blob of the image: the layers and the config, each fetched once.
    let raw: serde_json::Value = serde_json::from_slice(&reg.raw_manifest(&image)).unwrap();
    let mut blobs: Vec<String> =
        raw["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    blobs.push(raw["config"]["digest"].as_str().unwrap().to_string());
    let gets = reg.blob_gets();
    eprintln!("blob GETs in the access log: {gets:?}");
    for b in &blobs {
        assert_eq!(gets.get(b).copied().unwrap_or(0), 1, "blob {b}: {gets:?}");
    }
    assert_eq!(gets.len(), blobs.len(), "{gets:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// File capabilities.

const CAPPROBE_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int r = setuid(0);
    printf("setuid=%d uid=%d euid=%d\n", r, (int)getuid(), (int)geteuid());
    return 0;
}
"#;

/// A static binary that tries `setuid(0)` and prints what it got.
fn capprobe(dir: &Path) -> PathBuf {
    let src = dir.join("capprobe.c");
    std::fs::write(&src, CAPPROBE_C).unwrap();
    let bin = dir.join("capprobe");
    let o = run(Command::new("gcc").args(["-static", "-O1", "-o"]).arg(&bin).arg(&src));
    assert!(o.status.success(), "gcc: {}", stderr(&o));
    bin
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length passed.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(usize::try_from(len).ok()?);
    Some(buf)
}

/// A uid-1000 container whose bounding set holds CAP_SETUID (as docker's default does) and which does not
/// set noNewPrivileges: file capabilities on an executable would be honoured in it.
fn container_without_nnp(root: &Path, id: &str) -> Container {
    let bundle = root.join(id);
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).unwrap();
    make_rootfs(&bundle.join("rootfs"));
    let _ = Command::new("runc").args(["delete", "-f", id]).output();
    let o = run(Command::new("runc").current_dir(&bundle).arg("spec"));
    assert!(o.status.success(), "runc spec: {}", stderr(&o));
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    cfg["process"]["cwd"] = "/".into();
    cfg["process"]["noNewPrivileges"] = false.into();
    let bounding = serde_json::json!(["CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    cfg["process"]["capabilities"] =
        serde_json::json!({"bounding": bounding, "effective": [], "permitted": [], "inheritable": [], "ambient": []});
    cfg["root"]["readonly"] = false.into();
    cfg["annotations"] = serde_json::json!({"io.dcos.task-id": id});
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    Container::run_bundle(root, id, bundle)
}

/// The pieces of a file-capability attack: a scratch dir, the probe with `cap_setuid+ep`, the exact xattr bytes
/// setcap wrote, and a uid-1000 target without noNewPrivileges.
fn capability_attack(f: &Fixture, name: &str) -> (PathBuf, PathBuf, Vec<u8>, Container) {
    let dir = f.scratch(name);
    let probe = capprobe(&dir);
    let o = run(Command::new("setcap").arg("cap_setuid+ep").arg(&probe));
    assert!(o.status.success(), "setcap: {}", stderr(&o));
    let cap = xattr(&probe, "security.capability").expect("setcap wrote security.capability");
    let target = container_without_nnp(&f.root, &format!("{}-{name}", prefix()));
    (dir, probe, cap, target)
}

#[test]
fn file_capabilities_in_a_debug_image_do_not_give_root() {
    if skip() {
        return;
    }
    let f = fixture();
    let (dir, probe, cap, target) = capability_attack(f, "filecaps");

    // Control: the same file with its capability on the container's own filesystem does give uid 0 to the
    // uid-1000 process, so the container is one in which the attack works.
    let in_root = target.bundle.join("rootfs/capprobe");
    std::fs::copy(&probe, &in_root).unwrap();
    assert!(run(Command::new("setcap").arg("cap_setuid+ep").arg(&in_root)).status.success());
    let o = run(f.agent.dcos().args(["task", "exec", &target.id, "/capprobe"]));
    assert_eq!(ok(&o), "setuid=0 uid=0 euid=0\n", "control: file capabilities work in this container");
    std::fs::remove_file(&in_root).unwrap();

    // The attack: the capability as a PAX xattr of the file in a debug image's layer.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])]).unwrap();
    let data = std::fs::read(&probe).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("capprobe").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let layout = dir.join("layout");
    write_layout(&layout, "v1", &[busybox_layer(), layer.clone()]);
    let o = f.debug(&format!("oci:{}:v1", layout.display()), &[], &target.id, &["/capprobe"]);
    assert_eq!(ok(&o), "setuid=-1 uid=1000 euid=1000\n", "a file capability from the image was honoured");
    // And the unpacked file carries no capability at all.
    let unpacked = f.cache().join("layers/sha256").join(sha256_hex(&layer)).join("capprobe");
    assert!(unpacked.exists(), "{}", unpacked.display());
    assert_eq!(xattr(&unpacked, "security.capability"), None);
}

/// The mount flags alone: with `keep_setid = true` the unpacker keeps the setuid bit and the file capability
/// (the operator's opt-in to privileged images), so only `nosuid` on the debug root stands between them and root.
#[test]
fn setuid_and_file_capabilities_kept_by_keep_setid_still_give_nothing_on_the_nosuid_root() {
    if skip() {
        return;
    }
    let f = fixture();
    let (dir, probe, cap, target) = capability_attack(f, "nosuid");
    let data = std::fs::read(&probe).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    // One file with the capability, one setuid-root copy.
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])]).unwrap();
    for (name, mode) in [("capprobe", 0o755), ("suidprobe", 0o4755)] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(u64::try_from(data.len()).unwrap());
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    let layer = b.into_inner().unwrap();
    let layout = dir.join("layout");
    write_layout(&layout, "v1", &[busybox_layer(), layer.clone()]);
    let agent = start_agent(&dir.join("agent"), &images_table(f, &f.registry.host(), "keep_setid = true"), DEBUG_ACL);
    let image = format!("oci:{}:v1", layout.display());
    // The cache kept both privileges, so this is the mount's doing alone.
    let o = debug_with(&agent, &agent.admin_token, &image, &target.id, &["/capprobe"]);
    assert_eq!(ok(&o), "setuid=-1 uid=1000 euid=1000\n", "a kept file capability was honoured");
    let unpacked = agent.dir.join("images/layers/sha256").join(sha256_hex(&layer));
    assert_eq!(xattr(&unpacked.join("capprobe"), "security.capability"), Some(cap));
    let o = debug_with(&agent, &agent.admin_token, &image, &target.id, &["/suidprobe"]);
    assert_eq!(ok(&o), "setuid=-1 uid=1000 euid=1000\n", "a kept setuid bit was honoured");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(unpacked.join("suidprobe")).unwrap().permissions().mode();
    assert_eq!(mode & 0o4000, 0o4000, "the cache kept the setuid bit");
    // And the session's root says so.
    let o = debug_with(&agent, &agent.admin_token, &image, &target.id, &["sh", "-c", "grep ' / ' /proc/self/mounts"]);
    let line = ok(&o);
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
}

// ---------------------------------------------------------------------------------------------------------------
// ACL spellings of `oci:` paths.

/// Opens and reads of the watched paths, by inotify.
struct Watch {
    fd: i32,
    names: HashMap<i32, PathBuf>,
}

impl Watch {
    fn new(paths: &[PathBuf]) -> Watch {
        // SAFETY: plain syscalls on a descriptor this struct owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let mut names = HashMap::new();
        for p in paths {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: as above, with a valid C string.
            let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
            assert!(wd >= 0, "watching {}", p.display());
            names.insert(wd, p.clone());
        }
        Watch { fd, names }
    }

    /// Events so far as (watched path, name of the child or "" for the path itself).
    fn events(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: reading into a buffer of the length passed.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut off = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while off + head <= n.unsigned_abs() {
                // SAFETY: the kernel wrote a whole event at `off`; read_unaligned copes with the byte buffer.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name = &buf[off + head..off + head + ev.len as usize];
                let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
                out.push((self.names.get(&ev.wd).cloned().unwrap_or_default(), name));
                off += head + ev.len as usize;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn oci_spellings_of_a_denied_layout_are_refused_without_reading_it() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("acl-spellings");
    let srv = dir.join("srv");
    let good = srv.join("corpus/good-busybox");
    let denied = srv.join("extra/x");
    write_layout(&good, "latest", &[busybox_layer()]);
    let denied_layer = tar_layer(&[Entry::file("denied-marker", 0o644, b"the denied layout was read\n")]);
    write_layout(&denied, "latest", &[busybox_layer(), denied_layer.clone()]);
    std::os::unix::fs::symlink(&denied, srv.join("corpus/good-link")).unwrap();
    let s = srv.display();
    let acl = format!(
        "[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n\n\
         [[rule]]\nsubjects = [\"user:dbg\"]\ntasks = [\"*\"]\nactions = [\"debug\"]\nimages = [\"oci:{s}/corpus/good-*\"]\n\n\
         [[rule]]\neffect = \"deny\"\nsubjects = [\"*\"]\ntasks = [\"**\"]\nactions = [\"debug\"]\nimages = [\"oci:{s}/extra/*\"]\n"
    );
    let agent = start_agent(&dir.join("agent"), &images_table(f, &f.registry.host(), ""), &acl);
    let dbg = agent.token("dbg", &[], "10m");
    // Allowed: the layout the rule names.
    let o = debug_with(&agent, &dbg, &format!("oci:{}", good.display()), &f.target.id, &["echo", "good"]);
    assert_eq!(ok(&o), "good\n");

    let watch = Watch::new(&[denied.clone(), denied.join("blobs/sha256")]);
    let attempts = [
        (&agent.admin_token, format!("oci:{s}//extra/x")),
        (&agent.admin_token, format!("oci:{s}/./extra/x")),
        (&agent.admin_token, format!("oci:{s}/corpus/../extra/x")),
        (&agent.admin_token, format!("oci:{s}/extra/x")),
        (&dbg, format!("oci:{s}/corpus/good-busybox/../../extra/x")),
        (&dbg, format!("oci:{s}/corpus/good-link")),
        (&dbg, format!("oci:{s}/corpus/good-busybox/../../extra/./x")),
    ];
    for (token, image) in &attempts {
        let o = debug_with(&agent, token, image, &f.target.id, &["cat", "/denied-marker"]);
        assert_eq!(o.status.code(), Some(118), "{image}: stdout {} stderr {}", stdout(&o), stderr(&o));
        if image.ends_with("good-link") {
            // Allowed by its text, refused for the symlink, without naming where it leads.
            assert!(stderr(&o).contains("goes through a symlink") && !stderr(&o).contains("extra"), "{}", stderr(&o));
        } else {
            assert!(stderr(&o).contains(&format!("oci:{s}/extra/x")), "the refusal names the path: {}", stderr(&o));
        }
        assert!(stdout(&o).is_empty());
    }
    // Opening the directory itself is how its real path is learnt; nothing in it was opened or read.
    let events = watch.events();
    let inside: Vec<_> = events.iter().filter(|(p, name)| !(p == &denied && name.is_empty())).collect();
    assert!(inside.is_empty(), "the agent read the denied layout: {inside:?}");
    assert!(!agent.dir.join("images/layers/sha256").join(sha256_hex(&denied_layer)).exists());
    let cached: Vec<_> = std::fs::read_dir(denied.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| agent.dir.join("images/blobs/sha256").join(n).exists())
        .collect();
    // The busybox layer and its neighbours are shared with the good layout; the denied layout's own are not.
    let denied_only = sha256_hex(&{
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&denied_layer).unwrap();
        gz.finish().unwrap()
    });
    assert!(!cached.iter().any(|n| n.to_string_lossy() == denied_only), "{cached:?}");
}

/// The attack: a layer plants a symlink to a host directory, then puts a whiteout (`.wh.NAME`, which unpacking
/// turns into a 0:0 device that replaces NAME) or an opaque marker (`.wh..wh..opq`, which becomes the
/// `trusted.overlay.opaque` xattr of its directory) behind it, to delete or shadow a host file, or plant a
/// device node, outside the cache. A whiteout of the symlink itself must replace only the symlink.
#[test]
fn whiteouts_and_opaque_markers_behind_a_symlink_touch_nothing_outside_the_layer() {
    if skip() {
        return;
    }
    let f = fixture();
    let victim_dir = std::env::temp_dir().join(format!("{}-whiteout-victim", prefix()));
    let _ = std::fs::remove_dir_all(&victim_dir);
    std::fs::create_dir_all(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("victim"), "host file\n").unwrap();
    let link = victim_dir.to_str().unwrap();
    let cases: Vec<(&str, Vec<Entry>, bool)> = vec![
        ("whiteout", vec![Entry::symlink("link", link), Entry::file("link/.wh.victim", 0o644, b"")], true),
        ("opaque", vec![Entry::symlink("link", link), Entry::file("link/.wh..wh..opq", 0o644, b"")], true),
        ("whiteout of the link", vec![Entry::symlink("link", link), Entry::file(".wh.link", 0o644, b"")], false),
    ];
    let untouched = |what: &str| {
        let names: Vec<String> = std::fs::read_dir(&victim_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["victim"], "{what}: the host directory changed");
        let md = std::fs::symlink_metadata(victim_dir.join("victim")).unwrap();
        assert!(md.is_file(), "{what}: the host file was replaced");
        assert_eq!(std::fs::read_to_string(victim_dir.join("victim")).unwrap(), "host file\n", "{what}");
        assert!(xattr(&victim_dir, "trusted.overlay.opaque").is_none(), "{what}: the host directory was made opaque");
    };
    for (name, entries, refused) in cases {
        let dir = f.scratch(&format!("whiteout-{}", name.replace(' ', "-")));
        write_layout(&dir, "v1", &[busybox_layer(), tar_layer(&entries)]);
        let o = debug_with(
            &f.agent,
            &f.agent.admin_token,
            &format!("oci:{}:v1", dir.display()),
            &f.target.id,
            &["sh", "-c", "ls -la /link /link/ 2>&1; cat /link/victim 2>&1; true"],
        );
        untouched(name);
        if refused {
            assert_eq!(o.status.code(), Some(122), "{name}: {}{}", stdout(&o), stderr(&o));
            assert!(stderr(&o).contains("symlink"), "{name}: {}", stderr(&o));
        } else {
            assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
            assert!(!stdout(&o).contains("host file"), "{name}: the session saw the host file: {}", stdout(&o));
        }
    }
    let _ = std::fs::remove_dir_all(&victim_dir);
}

// ---------------------------------------------------------------------------------------------------------------
// The cache as a way around the ACL's image rules.

/// An agent whose `dev` may debug with images of `allowed` only; the admin may use any image.
fn acl_agent(f: &Fixture, dir: &Path, allowed: &str) -> (Agent, String) {
    let acl = format!(
        "[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n\n\
         [[rule]]\nsubjects = [\"user:dev\"]\ntasks = [\"*\"]\nactions = [\"debug\"]\nimages = [\"{allowed}\"]\n"
    );
    let agent = start_agent(&dir.join("agent"), &images_table(f, &f.registry.host(), ""), &acl);
    let dev = agent.token("dev", &[], "10m");
    (agent, dev)
}

const SECRET: &[u8] = b"the denied image's secret\n";

/// The attack: once the admin has used an image that `dev` may not, `dev` names it by its manifest digest under a
/// repository the ACL allows (one that does not have it, or no registry at all). The cache must not answer for a
/// repository it never fetched the manifest from.
#[test]
fn a_digest_pinned_reference_to_another_repository_does_not_reach_a_cached_denied_image() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("digest-acl");
    let host = f.registry.host();
    let layout = dir.join("secret");
    let secret_layer = tar_layer(&[Entry::file("secret.txt", 0o644, SECRET)]);
    write_layout(&layout, "v1", &[busybox_layer(), secret_layer]);
    let pushed = f.registry.push(&layout, "v1", "denied/secret:v1", false);
    let digest = f.registry.manifest_digest(&pushed);
    let (agent, dev) = acl_agent(f, &dir, &format!("{host}/allowed/**"));
    assert_eq!(
        ok(&debug_with(&agent, &agent.admin_token, &pushed, &f.target.id, &["cat", "/secret.txt"])).as_bytes(),
        SECRET
    );
    // Denied by name.
    let o = debug_with(&agent, &dev, &pushed, &f.target.id, &["cat", "/secret.txt"]);
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    // Allowed name, the denied image's digest: the allowed repository does not have it.
    let o =
        debug_with(&agent, &dev, &format!("{host}/allowed/anything@{digest}"), &f.target.id, &["cat", "/secret.txt"]);
    assert_eq!(o.status.code(), Some(122), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("secret"), "{}", stdout(&o));
    // And with no registry there at all.
    let nobody = format!("127.0.0.1:{}", free_port());
    let o = debug_with(
        &agent,
        &agent.admin_token,
        &format!("{nobody}/allowed/x@{digest}"),
        &f.target.id,
        &["cat", "/secret.txt"],
    );
    assert_eq!(o.status.code(), Some(122), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("secret"), "{}", stdout(&o));
    // The common case still comes from the cache: the same reference again fetches no blob.
    let before = f.registry.blob_gets();
    assert_eq!(
        ok(&debug_with(&agent, &agent.admin_token, &pushed, &f.target.id, &["cat", "/secret.txt"])).as_bytes(),
        SECRET
    );
    assert_eq!(f.registry.blob_gets(), before, "a cached image was downloaded again");
}

/// The attack: `dev` writes an image it may use whose config lists the denied image's layer diff-id, with a layer
/// blob that does not exist (or that is other bytes). Layers are found by the blob the manifest names, which the
/// image's own source must hold and which must unpack to that diff-id.
#[test]
fn a_config_naming_a_cached_denied_layer_by_diff_id_does_not_reach_it() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("diffid-acl");
    let secret = dir.join("secret");
    let secret_layer = tar_layer(&[Entry::file("secret.txt", 0o644, SECRET)]);
    write_layout(&secret, "v1", &[busybox_layer(), secret_layer.clone()]);
    let allowed = dir.join("allowed");
    let (agent, dev) = acl_agent(f, &dir, &format!("oci:{}/**", allowed.display()));
    let o = debug_with(
        &agent,
        &agent.admin_token,
        &format!("oci:{}:v1", secret.display()),
        &f.target.id,
        &["cat", "/secret.txt"],
    );
    assert_eq!(ok(&o).as_bytes(), SECRET);

    let busybox = busybox_layer();
    let diff_ids = serde_json::json!([
        format!("sha256:{}", sha256_hex(&busybox)),
        format!("sha256:{}", sha256_hex(&secret_layer)),
    ]);
    let gzip_of = |data: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    };
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let other = tar_layer(&[Entry::file("other.txt", 0o644, b"other\n")]);
    for (case, fake) in [
        ("missing", serde_json::json!({"mediaType": gzip, "digest": format!("sha256:{}", "0".repeat(64)), "size": 1})),
        ("other-bytes", put_blob(&allowed.join("other-bytes"), gzip, &gzip_of(&other))),
    ] {
        let layout = allowed.join(case);
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config =
            put_blob(&layout, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [put_blob(&layout, gzip, &gzip_of(&busybox)), fake],
        });
        let desc =
            put_blob(&layout, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap());
        tag_layout(&layout, "v1", &desc);
        let o =
            debug_with(&agent, &dev, &format!("oci:{}:v1", layout.display()), &f.target.id, &["cat", "/secret.txt"]);
        assert_eq!(o.status.code(), Some(122), "{case}: stdout {} stderr {}", stdout(&o), stderr(&o));
        assert!(!stdout(&o).contains("secret"), "{case}: {}", stdout(&o));
    }
}

/// The attack: a deny rule names the registry as `127.0.0.1:PORT` (and `localhost:PORT`); the user spells the same
/// registry another way the HTTP client also resolves there. The reference is judged, and audited, with its host in
/// the one spelling the URL standard gives it.
#[test]
fn other_spellings_of_a_denied_registry_host_are_judged_as_the_host() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("host-spelling");
    let port = f.registry.port;
    let acl = format!(
        "[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n\n\
         [[rule]]\nsubjects = [\"user:dev\"]\ntasks = [\"*\"]\nactions = [\"debug\"]\nimages = [\"**\"]\n\n\
         [[rule]]\neffect = \"deny\"\nsubjects = [\"*\"]\ntasks = [\"**\"]\nactions = [\"debug\"]\n\
         images = [\"127.0.0.1:{port}/tools/*\", \"localhost:{port}/tools/*\"]\n"
    );
    let agent = start_agent(&dir.join("agent"), &images_table(f, &f.registry.host(), ""), &acl);
    let dev = agent.token("dev", &[], "10m");
    for (host, canonical) in [
        ("LOCALHOST", "localhost"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
    ] {
        let o = debug_with(&agent, &dev, &format!("{host}:{port}/tools/busybox:latest"), &f.target.id, &["echo", "in"]);
        assert_eq!(o.status.code(), Some(118), "{host}: stdout {} stderr {}", stdout(&o), stderr(&o));
        assert!(stdout(&o).is_empty(), "{host}: {}", stdout(&o));
        let judged = format!("{canonical}:{port}/tools/busybox:latest");
        assert!(stderr(&o).contains(&judged), "{host}: the refusal names {judged}: {}", stderr(&o));
        let rec = agent.audit().into_iter().last().unwrap();
        assert_eq!(rec["event"], "denied");
        assert!(rec["reason"].as_str().unwrap().contains(&format!("image {judged} ")), "{host}: {rec}");
    }
}

/// The attack: a 1 MB gzip layer whose GNU long-name entry declares 1 GiB. The tar reader holds a long name in
/// memory whole before `max_path_len` can be checked, so the agent grew by gigabytes; the entry is refused at its
/// header now.
#[test]
fn a_gigabyte_gnu_long_name_is_refused_before_it_is_held_in_memory() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("longname");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNULongName);
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let bomb = gzip_bomb_after(&header, 1);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let layout = dir.join("longname");
    write_bomb_layout(&layout, &bomb);
    let (agent, _) = acl_agent(f, &dir, "none");
    let hwm = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
    };
    let before = hwm();
    let o = debug_with(&agent, &agent.admin_token, &format!("oci:{}", layout.display()), &f.target.id, &["true"]);
    assert_eq!(o.status.code(), Some(122), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("a GNU long name entry of 1073741824 bytes (at most 65536)"), "{}", stderr(&o));
    let grown = hwm().saturating_sub(before);
    assert!(grown < 256 << 20, "the agent's peak memory grew by {} MiB", grown >> 20);
}

/// The attack: a user with no grant at all names `oci:` paths to learn about the agent's host from the refusal:
/// `/proc/self/cwd` (the agent's working directory), `/proc/1/root`, and `X/../../proc/self/cwd`, which resolves
/// only when X exists. Paths are judged by their text before anything is opened, `/proc`, `/sys` and `/dev` are
/// refused, and no answer names a resolved path or differs by what exists.
#[test]
fn oci_paths_tell_a_user_without_a_grant_nothing_about_the_host() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("oci-probe");
    std::fs::create_dir_all(dir.join("hidden-dir")).unwrap();
    let (agent, _) = acl_agent(f, &dir, "none");
    let nobody = agent.token("nobody", &[], "10m");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", agent.pid())).unwrap();
    let d = dir.display();
    let answer = |image: &str| {
        let o = debug_with(&agent, &nobody, image, &f.target.id, &["true"]);
        let err = stderr(&o);
        assert!(!err.contains(&cwd.display().to_string()), "{image}: names the agent's cwd: {err}");
        assert!(stdout(&o).is_empty());
        (o.status.code(), err)
    };
    for image in ["oci:/proc/self/cwd", "oci:/proc/1/root", "oci:/sys/kernel", "oci:/dev/shm"] {
        let (code, err) = answer(image);
        assert_eq!(code, Some(125), "{image}: {err}");
        assert!(err.contains("is under /proc, /sys or /dev"), "{image}: {err}");
    }
    let (code, err) = answer(&format!("oci:{d}/hidden-dir/../../../../../../../../../proc/self/cwd"));
    assert_eq!(code, Some(125), "{err}");
    // Whether a directory exists makes no difference to the answer.
    let (a, b) = (format!("oci:{d}/hidden-dir/../x"), format!("oci:{d}/no-such-dir/../x"));
    let ((ca, ea), (cb, eb)) = (answer(&a), answer(&b));
    assert_eq!((ca, cb), (Some(118), Some(118)), "{ea} / {eb}");
    assert_eq!(ea, eb);
    assert!(ea.contains(&format!("oci:{d}/x")), "{ea}");
}

/// The attack: any host user changes a file of a cached layer (the layers keep the image's own modes, world-writable
/// directories included) and so what every later session runs. The cache's root is root's alone, made so at
/// every open (a cache an older agent left world-traversable is closed too).
#[test]
fn host_users_cannot_reach_the_image_cache() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("cache-perms");
    let layout = dir.join("ww");
    let ww = tar_layer(&[Entry::dir("ww", 0o777), Entry::file("ww/tool", 0o777, b"#!/bin/sh\necho original\n")]);
    write_layout(&layout, "latest", &[busybox_layer(), ww.clone()]);
    let (agent, _) = acl_agent(f, &dir, "none");
    let cache = agent.dir.join("images");
    let o =
        debug_with(&agent, &agent.admin_token, &format!("oci:{}", layout.display()), &f.target.id, &["sh", "/ww/tool"]);
    assert_eq!(ok(&o), "original\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let layer_dir = cache.join("layers/sha256").join(sha256_hex(&ww)).join("ww");
    assert!(layer_dir.join("tool").is_file());
    // The attack as an unprivileged host user: the layer directory is 0777 but out of reach.
    let as_nobody = |script: String| {
        run(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &script]))
    };
    let o = as_nobody(format!("echo 'echo changed' > {}/tool", layer_dir.display()));
    assert_ne!(o.status.code(), Some(0), "a host user wrote into a cached layer");
    let o = as_nobody(format!("ls {}", cache.display()));
    assert_ne!(o.status.code(), Some(0), "a host user listed the cache");
    let o =
        debug_with(&agent, &agent.admin_token, &format!("oci:{}", layout.display()), &f.target.id, &["sh", "/ww/tool"]);
    assert_eq!(ok(&o), "original\n");
    // A cache left world-traversable (as before) is closed when the agent opens it again.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(Command::new(bin("dcos-exec-agent"))
        .args(["images", "--config"])
        .arg(agent.dir.join("agent.toml"))
        .arg("list"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
}

/// An image of no layers fails as an image (exit 122), and one of more layers than `max_layers` is refused on its
/// manifest, before any layer is fetched (25 000 layers were downloaded and unpacked before the overlay failed).
#[test]
fn images_of_no_layers_or_too_many_are_refused_on_the_manifest() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("layer-count");
    let (agent, _) = acl_agent(f, &dir, "none");
    let none = dir.join("none");
    write_layout(&none, "v1", &[]);
    let o = debug_with(&agent, &agent.admin_token, &format!("oci:{}:v1", none.display()), &f.target.id, &["true"]);
    assert_eq!(o.status.code(), Some(122), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("the image has no layers"), "{}", stderr(&o));
    let many = dir.join("many");
    let layers: Vec<Vec<u8>> = std::iter::once(busybox_layer())
        .chain((1..129).map(|i| tar_layer(&[Entry::file(&format!("f{i}"), 0o644, i.to_string().as_bytes())])))
        .collect();
    write_layout(&many, "v1", &layers);
    let o = debug_with(&agent, &agent.admin_token, &format!("oci:{}:v1", many.display()), &f.target.id, &["true"]);
    assert_eq!(o.status.code(), Some(122), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("image budget exceeded: max_layers = 128, but its manifest lists 129"),
        "{}",
        stderr(&o)
    );
    let cache = agent.dir.join("images");
    assert!(layers.iter().all(|l| !cache.join("layers/sha256").join(sha256_hex(l)).exists()), "a layer was unpacked");
    // 128 is within the limit.
    write_layout(&many, "v2", &layers[..128]);
    let o =
        debug_with(&agent, &agent.admin_token, &format!("oci:{}:v2", many.display()), &f.target.id, &["cat", "/f127"]);
    assert_eq!(ok(&o), "127");
}
