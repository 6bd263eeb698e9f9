//! `dcos task exec --debug-image`: a tool image from a TLS registry with basic auth (or an OCI layout) run in a
//! task's namespaces with the task's root at /target; layers, whiteouts, pull policies, refusals of hostile
//! images, the ACL's image patterns and the audit record.

#[path = "support/registry.rs"]
mod registry;
mod support;

use registry::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use support::*;

/// The tests count cache entries and mounts, so they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

/// Exit 122 with a last stderr line `dcos: ...` naming `cause`, and no output from a command.
fn assert_image_failed(o: &Output, cause: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(122), "stdout: {}\nstderr: {err}", stdout(o));
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("dcos: ") && last.contains(cause), "expected {cause:?} in: {err}");
    assert!(stdout(o).is_empty(), "{}", stdout(o));
}

fn mountinfo(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap()
}

fn overlay_mounts(info: &str) -> Vec<String> {
    info.lines().filter(|l| l.contains(" overlay ")).map(str::to_string).collect()
}

/// Interface names of the network namespace `pid` is in.
fn interfaces(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}

fn session_with(agent: &Agent, marker: &str) -> serde_json::Value {
    let found = agent.audit().into_iter().rev().find(|r| {
        r["event"] == "session_end" && r["command"].as_array().is_some_and(|c| c.iter().any(|a| a == marker))
    });
    found.unwrap_or_else(|| panic!("no session record with {marker:?} in the audit log"))
}

#[test]
fn shell_less_target_is_debugged_with_an_image_from_a_tls_registry_with_basic_auth() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let init = f.target.init_pid().to_string();
    let target_mounts = mountinfo(&init);
    let host_overlays = overlay_mounts(&mountinfo("self"));
    // The target really has no shell: a plain exec fails.
    let o = run(f.agent.dcos().args(["task", "exec", &f.target.id, "sh", "-c", "true"]));
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));

    let script = "ps -o pid,args; echo ---; ls /target; echo ---; cat /target/etc/passwd; echo ---; \
                  ip addr || ifconfig -a; echo ---; ls /target/bin 2>&1; ls /bin/busybox";
    let o = f.debug(&f.busybox, &["--pull-policy", "always"], &f.target.id, &["sh", "-c", script]);
    let out = ok(&o);
    assert!(stderr(&o).contains(&format!("resolving {}", f.busybox)), "progress on stderr: {}", stderr(&o));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 5, "{out}");
    // ps reads the target's /proc: its init is pid 1.
    assert!(
        parts[0].lines().any(|l| l.trim_start().starts_with("1 ") && l.contains("/busybox sleep 100000")),
        "{}",
        parts[0]
    );
    let listing: Vec<&str> = parts[1].lines().collect();
    for name in ["busybox", "etc", "proc", "tmp"] {
        assert!(listing.contains(&name), "/target lists the target's root: {listing:?}");
    }
    assert!(!listing.contains(&"bin"), "{listing:?}");
    assert_eq!(parts[2], format!("root:x:0:0:{}:/:/busybox\n", f.target.id));
    // The target's network namespace: its interfaces, and none of the host's others.
    let theirs = interfaces(&init);
    assert!(theirs.contains(&"lo".to_string()));
    for i in &theirs {
        assert!(parts[3].contains(&format!(": {i}")) || parts[3].contains(&format!("{i} ")), "{i}: {}", parts[3]);
    }
    for i in interfaces("self").iter().filter(|i| !theirs.contains(i)) {
        assert!(!parts[3].contains(&format!(" {i}:")), "host interface {i} is visible: {}", parts[3]);
    }
    assert!(parts[4].contains("No such file") && parts[4].ends_with("/bin/busybox\n"), "{}", parts[4]);

    // Nothing was mounted in the target's namespace or left on the host.
    assert_eq!(mountinfo(&init), target_mounts, "the target's mount table is unchanged");
    assert_eq!(overlay_mounts(&mountinfo("self")), host_overlays, "no overlay left on the host");
    assert!(count(&f.cache().join("layers/sha256")) > 0, "layers are cached");
    assert!(count(&f.cache().join("blobs/sha256")) > 0, "blobs are cached");
}

#[test]
fn read_only_and_non_root_targets_get_a_writable_debug_root() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let w = world();
    let script = "touch /x && echo debug-root-writable; touch /target/x 2>&1; echo target-rc=$?";
    let out = ok(&f.debug(&f.busybox, &[], &w.ro.id, &["sh", "-c", script]));
    assert!(out.contains("debug-root-writable\n"), "{out}");
    assert!(out.contains("Read-only file system") && out.contains("target-rc=1\n"), "{out}");
    assert!(!w.ro.bundle.join("rootfs/x").exists());

    let script = "id -u; touch /tmp/x && echo tmp-writable; ls /target/home; cat /proc/self/status | grep CapEff";
    let out = ok(&f.debug(&f.busybox, &[], &w.app.id, &["sh", "-c", script]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "the session runs as the target's user: {out}");
    assert_eq!(lines[1], "tmp-writable", "{out}");
    assert_eq!(lines[2], "app", "{out}");
    // Only CAP_NET_BIND_SERVICE (bit 10), like the target.
    assert!(lines[3].ends_with("0000000000000400"), "{out}");
    assert!(!w.app.bundle.join("rootfs/tmp/x").exists(), "the debug root's writes stay in its tmpfs");
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let check = "for p in /a /a/file /b/keep /d/old /d/sub /d/new; do \
                 if [ -e $p ]; then echo \"$p present\"; else echo \"$p absent\"; fi; done; ls -a /a /d";
    let expected = "/a present\n/a/file absent\n/b/keep present\n/d/old absent\n/d/sub absent\n/d/new present\n\
                    /a:\n.\n..\n\n/d:\n.\n..\nnew\n";

    // Written by hand: `.wh.file` and `.wh..wh..opq`, pulled from the registry.
    let dir = f.scratch("whiteouts");
    let lower = tar_layer(&[
        Entry::dir("a/", 0o755),
        Entry::file("a/file", 0o644, b"gone\n"),
        Entry::dir("b/", 0o755),
        Entry::file("b/keep", 0o644, b"kept\n"),
        Entry::dir("d/", 0o755),
        Entry::file("d/old", 0o644, b"old\n"),
        Entry::dir("d/sub/", 0o755),
        Entry::file("d/sub/x", 0o644, b"x\n"),
    ]);
    let upper = tar_layer(&[
        Entry::file("a/.wh.file", 0o644, b""),
        Entry::dir("d/", 0o755),
        Entry::file("d/.wh..wh..opq", 0o644, b""),
        Entry::file("d/new", 0o644, b"new\n"),
    ]);
    write_layout(&dir, "v1", &[busybox_layer(), lower, upper]);
    let image = f.registry.push(&dir, "v1", "tools/layers:v1", false);
    assert_eq!(ok(&f.debug(&image, &[], &f.target.id, &["sh", "-c", check])), expected);

    // The same made by umoci: a deleted file, and a directory deleted and made again.
    let layout = f.scratch("umoci-layers").join("layout");
    let first = |r: &Path| {
        populate_busybox(r);
        for (p, c) in [("a/file", "gone"), ("b/keep", "kept"), ("d/old", "old"), ("d/sub/x", "x")] {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), c).unwrap();
        }
    };
    let second = |r: &Path| {
        std::fs::remove_file(r.join("a/file")).unwrap();
        std::fs::remove_dir_all(r.join("d")).unwrap();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/new"), "new").unwrap();
    };
    umoci_image(&layout, "v1", &[&first, &second]);
    let image = format!("oci:{}:v1", layout.display());
    assert_eq!(ok(&f.debug(&image, &[], &f.target.id, &["sh", "-c", check])), expected);
}

#[test]
fn dynamically_linked_tool_uses_the_libraries_of_the_image() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let o = run(std::process::Command::new("ldd").arg("/bin/ls"));
    let libs: Vec<PathBuf> = stdout(&o)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect();
    assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "/bin/ls is dynamically linked: {libs:?}");
    let layout = f.scratch("dynamic").join("layout");
    let populate = |r: &Path| {
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::copy("/bin/ls", r.join("bin/ls")).unwrap();
        for l in &libs {
            let dst = r.join(l.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(l, &dst).unwrap();
        }
    };
    umoci_image(&layout, "v1", &[&populate]);
    let image = format!("oci:{}:v1", layout.display());
    // The target has no libraries at all: the loader and libc can only come from the image.
    assert!(!f.target.bundle.join("rootfs/lib").exists() && !f.target.bundle.join("rootfs/lib64").exists());
    let out = ok(&f.debug(&image, &[], &f.target.id, &["/bin/ls", "-1", "/target", "/lib64"]));
    assert!(out.contains("/target:\nbusybox\ndev\netc\n"), "{out}");
    assert!(out.contains("ld-linux-x86-64.so.2"), "{out}");
}

#[test]
fn oci_layout_works_without_any_registry() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let dir = f.scratch("layout");
    let digest = write_layout(
        &dir,
        "v2",
        &[busybox_layer(), tar_layer(&[Entry::file("etc/motd", 0o644, b"from the layout\n")])],
    );
    let image = format!("oci:{}:v2", dir.display());
    let marker = "layout-session";
    let out = ok(&f.debug(&image, &[], &f.target.id, &["sh", "-c", "cat /etc/motd /target/etc/marker", marker]));
    assert_eq!(out, "from the layout\ntarget-marker\n");
    let rec = session_with(&f.agent, marker);
    assert_eq!(rec["image"], image.as_str());
    assert_eq!(rec["image_digest"], digest.as_str());
    // A tag the layout does not have.
    let o = f.debug(&format!("oci:{}:nope", dir.display()), &[], &f.target.id, &["true"]);
    assert_image_failed(&o, "no image tagged");
}

#[test]
fn pull_policies_and_references_by_digest_work_from_the_cache() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    // A registry of its own (TLS, no auth), stopped halfway.
    let reg = Registry::start(&f.root.join("registry-policy"), &f.pki, false);
    let dir = f.scratch("policy");
    write_layout(&dir, "v1", &[busybox_layer(), tar_layer(&[Entry::file("policy", 0o644, b"pulled\n")])]);
    let image = reg.push(&dir, "v1", "pp/img:v1", false);
    let cat = ["cat", "/policy"];

    let o = f.debug(&image, &["--pull-policy", "never"], &f.target.id, &cat);
    assert_image_failed(&o, "is not cached and the pull policy is never");
    assert_eq!(ok(&f.debug(&image, &[], &f.target.id, &cat)), "pulled\n");
    assert_eq!(ok(&f.debug(&image, &["--pull-policy", "never"], &f.target.id, &cat)), "pulled\n");
    let digest = reg.manifest_digest(&image);
    reg.stop();

    // Registry gone: by digest and by tag (if-not-present) come from the cache, `always` fails.
    let by_digest = format!("{}/pp/img@{digest}", reg.host());
    assert_eq!(ok(&f.debug(&by_digest, &[], &f.target.id, &cat)), "pulled\n");
    assert_eq!(ok(&f.debug(&image, &["--pull-policy", "if-not-present"], &f.target.id, &cat)), "pulled\n");
    let o = f.debug(&image, &["--pull-policy", "always"], &f.target.id, &cat);
    assert_image_failed(&o, &reg.host());
    // Never pulled, by digest: not cached.
    let other = format!("{}/pp/img@sha256:{}", reg.host(), "0".repeat(64));
    assert_image_failed(&f.debug(&other, &[], &f.target.id, &cat), &reg.host());

    let o = f.debug(&image, &["--pull-policy", "sometimes"], &f.target.id, &cat);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("sometimes"), "{}", stderr(&o));
    let o = f.debug("Not/A/Valid:ref:", &[], &f.target.id, &cat);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
}

#[test]
fn registry_failures_exit_122_and_name_the_cause() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let t = &f.target.id;
    // Nothing listens.
    let down = format!("127.0.0.1:{}", free_port());
    let o = f.debug(&format!("{down}/tools/busybox:latest"), &[], t, &["true"]);
    assert_image_failed(&o, &format!("registry {down}: error sending request"));
    assert!(stderr(&o).contains("Connection refused"), "the cause is named: {}", stderr(&o));
    // The agent's credentials for localhost:PORT are wrong.
    let o = f.debug(&format!("localhost:{}/tools/busybox:latest", f.registry.port), &[], t, &["true"]);
    assert_image_failed(&o, "refused the credentials");
    // Unknown repository, unknown tag.
    let o = f.debug(&format!("{}/tools/nosuch:latest", f.registry.host()), &[], t, &["true"]);
    assert_image_failed(&o, "not found");
    let o = f.debug(&format!("{}/tools/busybox:nosuch", f.registry.host()), &[], t, &["true"]);
    assert_image_failed(&o, "not found");
}

#[test]
fn multi_platform_index_picks_the_host_platform_or_fails_clearly() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let dir = f.scratch("index");
    let layers = [busybox_layer(), tar_layer(&[Entry::file("which", 0o644, b"multi\n")])];
    write_index_layout(&dir, "v1", &["arm64", "amd64"], &layers);
    let image = f.registry.push(&dir, "v1", "tools/multi:v1", true);
    let marker = "multi-platform";
    assert_eq!(ok(&f.debug(&image, &[], &f.target.id, &["sh", "-c", "cat /which", marker])), "multi\n");
    let index: serde_json::Value = serde_json::from_slice(&f.registry.raw_manifest(&image)).unwrap();
    let amd64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .expect("amd64 entry")["digest"]
        .clone();
    let rec = session_with(&f.agent, marker);
    assert_eq!(rec["image_digest"], amd64, "the platform manifest is audited");

    let dir = f.scratch("index-s390x");
    write_index_layout(&dir, "v1", &["s390x"], &layers);
    let image = f.registry.push(&dir, "v1", "tools/s390x:v1", true);
    assert_image_failed(&f.debug(&image, &[], &f.target.id, &["true"]), "has no image for linux/amd64");
    // The same from the layout directly.
    let o = f.debug(&format!("oci:{}:v1", dir.display()), &[], &f.target.id, &["true"]);
    assert_image_failed(&o, "has no image for linux/amd64");
}

#[test]
fn blob_that_does_not_match_its_digest_is_refused() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let dir = f.scratch("tampered");
    let layer = tar_layer(&[Entry::file("payload", 0o644, b"original\n")]);
    write_layout(&dir, "v1", &[busybox_layer(), layer.clone()]);
    // Swap the second layer's content, keeping its name (the digest).
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &serde_json::Value| dir.join("blobs/sha256").join(d.as_str().unwrap().trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    let tampered = blob(&manifest["layers"][1]["digest"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_layer(&[Entry::file("payload", 0o644, b"evil!!!!!\n")])).unwrap();
    std::fs::write(&tampered, gz.finish().unwrap()).unwrap();
    let bad_hex = sha256_hex(&std::fs::read(&tampered).unwrap());
    let image = format!("oci:{}:v1", dir.display());
    assert_image_failed(&f.debug(&image, &[], &f.target.id, &["true"]), "does not match its digest");
    // Neither the claimed nor the actual content is in the cache.
    let claimed = tampered.file_name().unwrap();
    assert!(!f.cache().join("blobs/sha256").join(claimed).exists());
    assert!(!f.cache().join("blobs/sha256").join(&bad_hex).exists());
    assert!(!f.cache().join("layers/sha256").join(sha256_hex(&layer)).exists());
}

#[test]
fn hostile_layer_entries_are_refused_and_nothing_is_written_outside_the_cache() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let p = prefix();
    let sym_dir = std::env::temp_dir().join(format!("{p}-symdir"));
    std::fs::create_dir_all(&sym_dir).unwrap();
    let abs = format!("/tmp/{p}-abs-escape");
    let dotdot = format!("{}tmp/{p}-dotdot-escape", "../".repeat(12));
    let cases: Vec<(&str, Vec<Entry>, String)> = vec![
        ("absolute", vec![Entry::file(&abs, 0o644, b"x")], format!("refusing layer entry \"{abs}\": absolute path")),
        (
            "dotdot",
            vec![Entry::dir("ok/", 0o755), Entry::file(&dotdot, 0o644, b"x")],
            format!("refusing layer entry \"{dotdot}\": path contains a '..' component"),
        ),
        (
            "symlink",
            vec![Entry::symlink("link", sym_dir.to_str().unwrap()), Entry::file("link/evil", 0o644, b"x")],
            "refusing layer entry \"link/evil\": parent component \"link\" is a symlink".to_string(),
        ),
        (
            "hardlink-absolute",
            vec![Entry::hardlink("hl", "/etc/passwd")],
            "refusing layer entry \"hl\": hardlink target \"/etc/passwd\" is outside the layer".to_string(),
        ),
        (
            "hardlink-dotdot",
            vec![Entry::hardlink("hl", "../../../../../../../../etc/passwd")],
            "refusing layer entry \"hl\": hardlink target".to_string(),
        ),
        (
            "device",
            vec![Entry::dir("dev/", 0o755), Entry::char_device("dev/mem", 1, 1)],
            "refusing layer entry \"dev/mem\": device nodes and fifos are not allowed".to_string(),
        ),
    ];
    let outside = |root: &Path| -> Vec<PathBuf> {
        tree(root).into_iter().filter(|p| !p.starts_with("agent/images") && !p.starts_with("scratch")).collect()
    };
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    for (name, entries, cause) in cases {
        let before = outside(&f.root);
        let dir = f.scratch(&format!("hostile-{name}"));
        let layer = tar_layer(&entries);
        write_layout(&dir, "v1", std::slice::from_ref(&layer));
        let o = f.debug(&format!("oci:{}:v1", dir.display()), &[], &f.target.id, &["true"]);
        assert_image_failed(&o, &cause);
        assert_eq!(stderr(&o).matches(&cause).count(), 1, "{name}: said more than once: {}", stderr(&o));
        // The operator's pull says it once too.
        let o = run(Command::new(bin("dcos-exec-agent"))
            .args(["images", "--config"])
            .arg(f.agent.dir.join("agent.toml"))
            .args(["pull", &format!("oci:{}:v1", dir.display())]));
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        assert_eq!(stderr(&o).matches(&cause).count(), 1, "{name}: said more than once: {}", stderr(&o));
        assert_eq!(outside(&f.root), before, "{name}: files appeared next to the cache");
        assert!(!f.cache().join("layers/sha256").join(sha256_hex(&layer)).exists(), "{name}: layer was cached");
        assert_eq!(count(&f.cache().join("tmp")), 0, "{name}: temporary unpack left behind");
        assert!(!Path::new(&abs).exists() && !Path::new(&format!("/tmp/{p}-dotdot-escape")).exists(), "{name}");
        assert_eq!(count(&sym_dir), 0, "{name}: wrote through the symlink");
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links, "{name}: linked /etc/passwd");
    }
    let _ = std::fs::remove_dir_all(&sym_dir);
}

#[test]
fn setuid_and_setgid_bits_are_stripped() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let dir = f.scratch("setid");
    let layer = tar_layer(&[
        Entry::file("suid", 0o4755, b"#!/bin/sh\n"),
        Entry::file("sgid", 0o2755, b"#!/bin/sh\n"),
        Entry::file("plain", 0o640, b""),
    ]);
    write_layout(&dir, "v1", &[busybox_layer(), layer]);
    let image = format!("oci:{}:v1", dir.display());
    let out = ok(&f.debug(&image, &[], &f.target.id, &["stat", "-c", "%n %a", "/suid", "/sgid", "/plain"]));
    assert_eq!(out, "/suid 755\n/sgid 755\n/plain 640\n");
}

#[test]
fn acl_image_patterns_decide_and_a_denied_request_pulls_nothing() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let token = f.agent.token("dbg", &[], "10m");
    let tools = format!("{}/tools/busybox", f.registry.host());
    assert_eq!(ok(&f.debug_as(&token, &tools, &[], &f.target.id, &["echo", "allowed"])), "allowed\n");

    // An image never pulled, outside tools/.
    let dir = f.scratch("acl");
    write_layout(&dir, "v1", &[busybox_layer(), tar_layer(&[Entry::file("acl", 0o644, b"fresh acl content\n")])]);
    let image = f.registry.push(&dir, "v1", "other/fresh:v1", false);
    let blobs = count(&f.cache().join("blobs/sha256"));
    let refs = count(&f.cache().join("refs"));
    let o = f.debug_as(&token, &image, &[], &f.target.id, &["echo", "denied"]);
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{image}:latest")) || stderr(&o).contains(&image), "{}", stderr(&o));
    assert!(!stderr(&o).contains("resolving"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert_eq!(count(&f.cache().join("blobs/sha256")), blobs, "a denied request pulls nothing");
    assert_eq!(count(&f.cache().join("refs")), refs);
    // --cap-add needs debug:caps, which dbg lacks even for tools/.
    let o = f.debug_as(&token, &tools, &["--cap-add", "SYS_PTRACE"], &f.target.id, &["true"]);
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    // The admin may, and then the blobs arrive: the count above would have seen a pull.
    assert_eq!(ok(&f.debug(&image, &[], &f.target.id, &["cat", "/acl"])), "fresh acl content\n");
    assert!(count(&f.cache().join("blobs/sha256")) > blobs);
}

#[test]
fn audit_records_the_image_and_the_manifest_digest() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let marker = "audit-marker";
    ok(&f.debug(&f.busybox, &[], &f.target.id, &["echo", marker]));
    let rec = session_with(&f.agent, marker);
    assert_eq!(rec["image"], f.busybox.as_str());
    assert_eq!(rec["image_digest"], f.registry.manifest_digest(&f.busybox).as_str());
    assert_eq!(rec["container"], f.target.id.as_str());
    // A failed pull is audited too, with the image and no digest.
    let missing = format!("{}/tools/missing:latest", f.registry.host());
    let marker = "audit-failed";
    assert_eq!(f.debug(&missing, &[], &f.target.id, &["echo", marker]).status.code(), Some(122));
    let rec = session_with(&f.agent, marker);
    assert_eq!(rec["image"], missing.as_str());
    assert!(rec["image_digest"].as_str().unwrap_or_default().is_empty(), "{rec}");
}

#[test]
fn cap_add_gives_the_debug_process_more_than_the_target_has() {
    if skip() {
        return;
    }
    let _s = serial();
    let f = fixture();
    let t = &f.target.id;
    let caps = |extra: &[&str]| {
        let o = f.debug(&f.busybox, extra, t, &["grep", "CapEff", "/proc/self/status"]);
        let line = ok(&o);
        u64::from_str_radix(line.trim().trim_start_matches("CapEff:").trim(), 16).unwrap()
    };
    const SYS_PTRACE: u64 = 1 << 19;
    assert_eq!(caps(&[]) & SYS_PTRACE, 0, "by default the target's capabilities, which lack SYS_PTRACE");
    assert_ne!(caps(&["--cap-add", "SYS_PTRACE"]) & SYS_PTRACE, 0, "--cap-add SYS_PTRACE is granted");
    let o = f.debug(&f.busybox, &["--cap-add", "NOT_A_CAP"], t, &["true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
}

#[test]
fn plain_http_registry_only_when_listed_insecure_with_docker_config_credentials() {
    if skip() {
        return;
    }
    use base64::Engine;
    let _s = serial();
    let f = fixture();
    let dir = f.scratch("insecure");
    let reg = Registry::start_with(&dir.join("registry"), &f.pki, true, false);
    let image = format!("{}:latest", reg.push(&f.busybox_layout, "latest", "plain/busybox", false));
    // Credentials only in a Docker-style config.json, none in the agent config.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let docker_cfg = dir.join("docker-config.json");
    std::fs::write(&docker_cfg, serde_json::json!({"auths": {reg.host(): {"auth": auth}}}).to_string()).unwrap();
    let listed = start_agent(
        &dir.join("agent-insecure"),
        &format!(
            "[images]\ninsecure_registries = [\"{}\"]\ndocker_config = \"{}\"\n",
            reg.host(),
            docker_cfg.display()
        ),
        DEBUG_ACL,
    );
    let run_with = |agent: &Agent| {
        run(agent.dcos().args(["task", "exec", "--debug-image", &image, &f.target.id, "sh", "-c", "echo over-http"]))
    };
    let o = run_with(&listed);
    assert_eq!(ok(&o), "over-http\n");
    // The same registry without being listed: HTTPS is required, so the pull fails.
    let unlisted = start_agent(
        &dir.join("agent-strict"),
        &format!("[images]\ndocker_config = \"{}\"\n", docker_cfg.display()),
        DEBUG_ACL,
    );
    let o = run_with(&unlisted);
    assert_eq!(o.status.code(), Some(122), "{}", stderr(&o));
    // Listed, but without credentials: the registry's 401 is named.
    let anonymous = start_agent(
        &dir.join("agent-anon"),
        &format!("[images]\ninsecure_registries = [\"{}\"]\n", reg.host()),
        DEBUG_ACL,
    );
    let o = run_with(&anonymous);
    assert_eq!(o.status.code(), Some(122), "{}", stderr(&o));
    assert!(stderr(&o).contains("refused the credentials"), "{}", stderr(&o));
}

/// The bind mount the crashed container below had: a host directory the test makes.
fn stopped_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{}-stopped-data", prefix()))
}

/// A container that writes its log and exits 3, with a read-only bind mount at /data.
fn crashing(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "echo crashed > /root/app.log; exit 3"]);
    // Docker's default set has CAP_MKNOD: the sandbox (which has no device cgroup) must not make it a way to the
    // host's disk.
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set].as_array_mut().unwrap().push("CAP_MKNOD".into());
    }
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({
        "destination": "/data", "type": "bind", "source": stopped_data_dir(), "options": ["rbind", "ro"]
    }));
}

#[test]
fn a_stopped_container_is_debugged_in_a_sandbox_on_its_files() {
    if skip() {
        return;
    }
    let f = fixture();
    let dir = f.scratch("stopped");
    let data = stopped_data_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("note"), "from a bind mount\n").unwrap();
    std::fs::create_dir_all(Path::new(&f.root).join("stopped-bundles")).unwrap();
    let opts = ContainerOpts {
        tweak: Some(crashing),
        prepare: Some(|root| std::fs::create_dir_all(root.join("data")).unwrap()),
        ..Default::default()
    };
    let c = Container::start(&f.root.join("stopped-bundles"), &format!("{}-crashed", prefix()), &opts);
    let state = || {
        let o = run(std::process::Command::new("runc").args(["state", &c.id]));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["status"].clone()).unwrap_or_default()
    };
    assert!(eventually(30, || state() == "stopped"), "the container exits");
    let acl = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
subjects = ["user:ro"]
tasks = ["*"]
actions = ["debug", "exec:tty"]
images = ["**"]

[[rule]]
subjects = ["user:rw"]
tasks = ["*"]
actions = ["debug", "debug:write"]
images = ["**"]
"#;
    let agent = start_agent(&dir.join("agent"), "", acl);
    let layout = dir.join("layout");
    write_layout(&layout, "v1", &[busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let probe = "cat /target/root/app.log /target/data/note; echo pid=$$; ls /proc 2>/dev/null | wc -l; \
                 ip -o link | wc -l; touch /target/root/written 2>/dev/null; echo touch=$?";
    // Plain exec has nothing to join.
    let o = run(agent.dcos().args(["task", "exec", &c.id, "true"]));
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    // A reader: the crashed container's files and mounts, in namespaces of the session's own, read-only.
    let ro = agent.token("ro", &[], "1h");
    let o = run(agent.dcos_as(&ro).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["crashed", "from a bind mount", "pid=1", "0", "1", "touch=1"], "{out}");
    assert!(!c.bundle.join("rootfs/root/written").exists());
    // With debug:write the same session may change the container's files (not its read-only bind mount).
    let rw = agent.token("rw", &[], "1h");
    let o = run(agent.dcos_as(&rw).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("touch=0"), "{}", stdout(&o));
    assert!(c.bundle.join("rootfs/root/written").exists());
    let o = run(agent.dcos_as(&rw).args(["task", "exec", "--debug-image", &image, &c.id, "touch", "/target/data/x"]));
    assert_ne!(o.status.code(), Some(0), "the read-only bind mount stays read-only");
    // The attack: a node for the host's console screen (/dev/vcs, c 7:0: the host's root opens it here; a disk
    // would do worse), made with the container's CAP_MKNOD where the session may write (the container's root with
    // debug:write, the sandbox's /dev and /tmp), then opened. The sandbox has no device cgroup, so it gets no
    // CAP_MKNOD: a node made in the container's root would stay on the host's filesystem.
    assert!(std::fs::File::open("/dev/vcs").is_ok(), "the host's root opens /dev/vcs, so the attack means something");
    let mut open_host = String::new();
    for dir in ["/target/root", "/dev", "/tmp"] {
        open_host +=
            &format!("mknod {dir}/vcs c 7 0 && echo made; (exec 3<{dir}/vcs && echo OPENED {dir}) 2>/dev/null; ");
    }
    let o = run(agent.dcos_as(&rw).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", &open_host]));
    let out = stdout(&o);
    assert!(!out.contains("made"), "a device node was made in the sandbox: {out}{}", stderr(&o));
    assert!(!out.contains("OPENED"), "a host device opened in the sandbox: {out}");
    assert!(std::fs::symlink_metadata(c.bundle.join("rootfs/root/vcs")).is_err(), "a node was left in the root");
    // A node that is in the container's files already (made on the host here, as an image may carry one) does
    // not open either: every tree of the sandbox is nodev.
    let planted = c.bundle.join("rootfs/root/planted-vcs");
    let st = std::process::Command::new("mknod").arg(&planted).args(["c", "7", "0"]).status().unwrap();
    assert!(st.success());
    let o = run(agent.dcos_as(&rw).args([
        "task",
        "exec",
        "--debug-image",
        &image,
        &c.id,
        "sh",
        "-c",
        "ls -l /target/root/planted-vcs && (exec 3</target/root/planted-vcs && echo OPENED) 2>/dev/null; true",
    ]));
    assert!(stdout(&o).contains("planted-vcs"), "the node is there: {}{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("OPENED"), "a host device opened in the sandbox: {}", stdout(&o));
    let _ = std::fs::remove_file(&planted);
    // A terminal works in the sandbox, and the container stayed stopped throughout.
    let o = run(agent.dcos_as(&ro).args(["task", "exec", "-t", "--debug-image", &image, &c.id, "tty"]));
    assert!(stdout(&o).trim().starts_with("/dev/pts/"), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(state(), "stopped");
}
