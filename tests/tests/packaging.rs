//! Getting dcos-exec onto real hosts, end to end: scripts/setup's Rust toolchain step (run with no cargo on
//! PATH, into a scratch CARGO_HOME and RUSTUP_HOME), scripts/install, the systemd unit (`systemd-analyze`), the
//! agent's container image (built FROM scratch on a real dockerd, run the documented way, exec'd through into a
//! runc container), the DaemonSet (Kubernetes' schemas, and the same mounts and probe as the image) and the .deb
//! (`dpkg-deb`, then installed into and removed from a scratch root with `dpkg --root`).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// What the agent's container needs from its host, as the README's `docker run` and the DaemonSet mount it
/// (host path, path in the container, read-only).
const MOUNTS: &[(&str, &str, bool)] = &[
    ("/run", "/run", false),
    ("/sys/fs/cgroup", "/sys/fs/cgroup", false),
    ("/etc/dcos-exec", "/etc/dcos-exec", true),
    ("/var/log/dcos-exec", "/var/log/dcos-exec", false),
    ("/var/cache/dcos-exec", "/var/cache/dcos-exec", false),
];

/// Where scripts/setup installs the manifest validator.
const KUBERNETES_VALIDATE: &str = "/opt/dcos-exec-dev/venv/bin/kubernetes-validate";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `(major, minor, patch)` of "1.88" or "cargo 1.95.0 (...)"'s second word.
fn version(v: &str) -> (u64, u64, u64) {
    let core = v.split(['-', '+', ' ']).next().unwrap_or(v);
    let mut it = core.split('.').map(|p| p.parse::<u64>().unwrap_or_else(|_| panic!("version {v:?}")));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn msrv() -> String {
    let toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    toml.lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml")
}

/// The static binaries of scripts/build-static (scripts/test builds them before the tests, with the profile it
/// names in `STATIC_PROFILE`; release by default).
fn static_bin(name: &str) -> PathBuf {
    let target = bin("dcos").parent().and_then(Path::parent).expect("target dir").to_path_buf();
    let profile = std::env::var("STATIC_PROFILE").unwrap_or_else(|_| "release".into());
    let p = target.join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH)).join(profile).join(name);
    assert!(p.exists(), "{} is missing: run scripts/build-static first", p.display());
    p
}

/// A scratch directory of this test process (removed at exit with everything else of its prefix).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-pkg-{name}", prefix()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

/// `scripts/setup --toolchain-only` with a PATH that has no Rust toolchain and a scratch CARGO_HOME, RUSTUP_HOME
/// and HOME, so this machine's own toolchain is neither seen nor touched.
fn toolchain_setup(dir: &Path, extra_path: Option<&Path>, update_root: Option<&str>) -> Output {
    let mut path = String::new();
    if let Some(p) = extra_path {
        path.push_str(&format!("{}:", p.display()));
    }
    path.push_str("/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin");
    let mut c = Command::new(workspace().join("scripts/setup"));
    c.arg("--toolchain-only")
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.join("home"))
        .env("CARGO_HOME", dir.join("cargo"))
        .env("RUSTUP_HOME", dir.join("rustup"))
        .stdin(Stdio::null());
    if let Some(u) = update_root {
        c.env("RUSTUP_UPDATE_ROOT", u);
    }
    run(&mut c)
}

/// The error scripts/setup stops with when it cannot get a toolchain: one line that says what to do.
fn assert_one_line_how_to_get_rust(o: &Output, why: &str) {
    assert!(!o.status.success(), "setup succeeded: {}", stdout(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not: {err}");
    assert!(stdout(o).is_empty(), "nothing else: {}", stdout(o));
    let l = lines[0];
    assert!(l.contains(why), "{l}");
    assert!(l.contains(&format!("install Rust {} or later", msrv())), "{l}");
    assert!(l.contains("https://rustup.rs") && l.contains("cargo is on PATH"), "{l}");
}

#[test]
fn setup_installs_a_rust_toolchain_when_cargo_is_not_on_path() {
    let dir = scratch("rustup");
    let host_cargo = run(Command::new("cargo").arg("--version"));
    let o = toolchain_setup(&dir, None, None);
    if !o.status.success() && stderr(&o).contains("cannot be reached") {
        // No route to static.rust-lang.org here: then the one line is the behaviour to check.
        assert_one_line_how_to_get_rust(&o, "no Rust toolchain (cargo) on PATH");
        return;
    }
    let out = ok(&o, "scripts/setup --toolchain-only");
    assert!(out.contains("no Rust toolchain (cargo) on PATH; installing rustup's stable toolchain"), "{out}");
    let cargo = dir.join("cargo/bin/cargo");
    let v = ok(&run(Command::new(&cargo).arg("--version").env("RUSTUP_HOME", dir.join("rustup"))), "new cargo");
    let got = v.split_whitespace().nth(1).expect("cargo VERSION");
    assert!(version(got) >= version(&msrv()), "installed cargo {got} is older than {}", msrv());
    // scripts/test needs both; the minimal profile has neither unless asked for.
    for tool in ["rustfmt", "cargo-clippy"] {
        let o =
            run(Command::new(dir.join("cargo/bin").join(tool)).arg("--version").env("RUSTUP_HOME", dir.join("rustup")));
        ok(&o, tool);
    }
    assert!(dir.join("rustup/toolchains").read_dir().unwrap().next().is_some(), "toolchain in RUSTUP_HOME");
    // This machine's own toolchain is still what it was.
    assert_eq!(stdout(&run(Command::new("cargo").arg("--version"))), stdout(&host_cargo));
    // A second run finds the toolchain it installed and does nothing.
    let o = toolchain_setup(&dir, Some(&dir.join("cargo/bin")), Some("https://127.0.0.1:1/rustup"));
    assert!(ok(&o, "second run").is_empty(), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn setup_stops_with_one_line_when_no_toolchain_can_be_fetched() {
    let dir = scratch("norust");
    // Nothing listens on port 1: the download fails at once, as where the server is blocked.
    let o = toolchain_setup(&dir, None, Some("https://127.0.0.1:1/rustup"));
    assert_one_line_how_to_get_rust(
        &o,
        "no Rust toolchain (cargo) on PATH and https://127.0.0.1:1/rustup cannot be reached",
    );
    assert!(!dir.join("cargo").exists() && !dir.join("rustup").exists(), "nothing installed");
}

/// A `cargo` on PATH that reports `v`.
fn fake_cargo(dir: &Path, v: &str) -> PathBuf {
    let bin = dir.join(format!("fake-{v}"));
    std::fs::create_dir_all(&bin).unwrap();
    let f = bin.join("cargo");
    std::fs::write(&f, format!("#!/bin/sh\necho 'cargo {v} (0000000 2020-01-01)'\n")).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn setup_replaces_a_cargo_older_than_the_msrv_and_keeps_one_that_is_recent_enough() {
    let dir = scratch("oldrust");
    // Debian 12's cargo.
    let old = fake_cargo(&dir, "1.63.0");
    let o = toolchain_setup(&dir, Some(&old), Some("https://127.0.0.1:1/rustup"));
    assert_one_line_how_to_get_rust(
        &o,
        &format!("cargo 1.63.0 is older than this workspace's rust-version {}", msrv()),
    );
    // Exactly the MSRV: nothing to do, nothing fetched (the unreachable server would fail it otherwise).
    let (ma, mi, _) = version(&msrv());
    let at_msrv = fake_cargo(&dir, &format!("{ma}.{mi}.0"));
    let o = toolchain_setup(&dir, Some(&at_msrv), Some("https://127.0.0.1:1/rustup"));
    assert!(ok(&o, "setup with cargo at the MSRV").is_empty(), "{}", stdout(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn install_puts_the_binaries_in_prefix_bin() {
    let dir = scratch("install");
    let from = bin("dcos").parent().unwrap().to_path_buf();
    let o = run(Command::new(workspace().join("scripts/install"))
        .arg("--from")
        .arg(&from)
        .env("PREFIX", &dir)
        .stdin(Stdio::null()));
    let out = ok(&o, "scripts/install");
    for b in ["dcos", "dcos-exec-agent"] {
        let p = dir.join("bin").join(b);
        assert!(out.contains(&format!("install: {}", p.display())), "{out}");
        let o = run(Command::new("/bin/sh").arg("-c").arg(format!("{b} --help")).env("PATH", dir.join("bin")));
        assert!(ok(&o, b).contains("Usage"), "{b} --help from PATH: {}", stdout(&o));
    }
    // PREFIX/bin is not on this PATH: it says so.
    assert!(stderr(&o).contains("is not on this shell's PATH"), "{}", stderr(&o));
    let o = run(Command::new(workspace().join("scripts/install"))
        .arg("--from")
        .arg(dir.join("nothing"))
        .env("PREFIX", &dir));
    assert!(!o.status.success() && stderr(&o).contains("is missing"), "{}", stderr(&o));
}

/// The unit with ExecStart pointing at `agent` (verify insists that the binary exists).
fn unit_with(agent: &Path, dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(workspace().join("packaging/systemd/dcos-exec-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/dcos-exec-agent run"), "{unit}");
    let p = dir.join("dcos-exec-agent.service");
    std::fs::write(&p, unit.replace("/usr/bin/dcos-exec-agent", &agent.display().to_string())).unwrap();
    p
}

/// `systemd-analyze verify`: clean means exit 0 and not a word on stderr (unknown or misspelt settings are
/// only warnings there).
fn assert_unit_verifies(unit: &Path) {
    let o = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(unit));
    assert!(o.status.success() && stderr(&o).trim().is_empty(), "systemd-analyze verify: {}", stderr(&o));
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened_as_documented() {
    let dir = scratch("unit");
    let unit = unit_with(&bin("dcos-exec-agent"), &dir);
    assert_unit_verifies(&unit);
    // The check catches what it should: a misspelt value is a warning with exit 0.
    let text = std::fs::read_to_string(&unit).unwrap();
    let bad = dir.join("bad.service");
    std::fs::write(&bad, text.replace("ProtectSystem=strict", "ProtectSystem=strickt")).unwrap();
    let o = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&bad));
    assert!(stderr(&o).contains("strickt") || !o.status.success(), "bad unit passed: {}", stderr(&o));
    // What systemd itself reports about the unit's sandbox.
    let o = run(Command::new("systemd-analyze").args(["security", "--offline=true", "--man=no"]).arg(&unit));
    let report = stdout(&o);
    let line = |name: &str| report.lines().find(|l| l.contains(&format!(" {name}="))).unwrap_or_default().to_string();
    for on in ["ProtectSystem", "PrivateTmp", "UMask"] {
        assert!(line(on).starts_with('✓'), "{on} is on: {report}");
    }
    // Off on purpose (see the unit's comment): sessions would inherit them.
    for off in ["NoNewPrivileges", "SystemCallFilter", "CapabilityBoundingSet", "ProtectControlGroups"] {
        assert!(line(off).starts_with('✗'), "{off} is off: {report}");
    }
    let setting = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(setting("Restart").as_deref(), Some("on-failure"));
    assert_eq!(setting("ProtectHome").as_deref(), Some("read-only"));
    assert_eq!(setting("KillMode").as_deref(), Some("mixed"));
}

/// YAML documents of `file` as JSON, through the validator's own Python (it brings PyYAML).
fn yaml_documents(file: &Path) -> Vec<serde_json::Value> {
    let python = Path::new(KUBERNETES_VALIDATE).with_file_name("python3");
    let o = run(Command::new(python)
        .arg("-c")
        .arg("import sys, json, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)")
        .arg(file));
    serde_json::from_str(&ok(&o, "yaml to json")).unwrap()
}

/// The Dockerfile's instruction `name` (its JSON form).
fn dockerfile(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(workspace().join("packaging/container/Dockerfile")).unwrap();
    let v = text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    serde_json::from_str(v).unwrap_or_else(|_| v.into())
}

#[test]
fn the_daemonset_validates_and_runs_the_image_the_way_the_image_needs() {
    assert!(Path::new(KUBERNETES_VALIDATE).exists(), "{KUBERNETES_VALIDATE} is missing: scripts/setup installs it");
    let file = workspace().join("packaging/kubernetes/daemonset.yaml");
    let o = run(Command::new(KUBERNETES_VALIDATE).args(["--strict", "--quiet"]).arg(&file));
    ok(&o, "kubernetes-validate --strict");
    // The validator is not a rubber stamp: a misspelt field fails it.
    let dir = scratch("k8s");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, std::fs::read_to_string(&file).unwrap().replace("hostPID", "hostPid")).unwrap();
    let o = run(Command::new(KUBERNETES_VALIDATE).args(["--strict", "--quiet"]).arg(&bad));
    assert!(!o.status.success() && stdout(&o).contains("hostPid"), "{}{}", stdout(&o), stderr(&o));

    let docs = yaml_documents(&file);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "sessions need the host's pids");
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["args"], dockerfile("CMD"), "the image's own command");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(dockerfile("EXPOSE"), serde_json::json!(port), "the port the image exposes");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Ready once the runtimes were read (the image test GETs the path this names, so it is checked too).
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["readinessProbe", "livenessProbe"] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["scheme"], "HTTPS", "{probe}");
        assert_eq!(g["port"], c["ports"][0]["name"], "{probe}");
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for (host, inside, ro) in MOUNTS {
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == *inside)
            .unwrap_or_else(|| panic!("{inside} is mounted"));
        assert_eq!(m["readOnly"].as_bool().unwrap_or(false), *ro, "{inside}");
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        // The set-up comes from a Secret; everything else is the host's own directory.
        if *inside == "/etc/dcos-exec" {
            assert!(v["secret"].is_object(), "{v}");
        } else {
            assert_eq!(v["hostPath"]["path"], *host, "{v}");
        }
    }
    let run_mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/run").unwrap();
    assert_eq!(run_mount["mountPropagation"], "HostToContainer", "runtimes' later mounts under /run reach the agent");
}

/// Whether the mount that holds /run propagates (shared or slave), which `:rslave` needs. systemd makes `/`
/// shared; some containers and chroots leave it private.
fn run_propagates() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // Fields: id parent dev root MOUNT_POINT options [optional fields...] - fstype source super-options.
    let holder = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 6 && (f[4] == "/" || f[4] == "/run"))
        // The longest mount point wins, and of equal ones the last mounted (max_by_key keeps the last).
        .max_by_key(|f| f[4].len())
        .map(|f| f[6..].iter().take_while(|x| **x != "-").copied().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    holder.contains("shared:") || holder.contains("master:")
}

/// `layout:busybox`: an OCI image layout holding a static busybox, built with umoci.
fn busybox_layout(layout: &Path) {
    let image = format!("{}:busybox", layout.display());
    let bundle = layout.with_extension("bundle");
    let umoci = |args: &[&str], extra: Option<&Path>| {
        let mut c = Command::new("umoci");
        c.args(args);
        if let Some(p) = extra {
            c.arg(p);
        }
        ok(&run(&mut c), &format!("umoci {args:?}"));
    };
    umoci(&["init", "--layout"], Some(layout));
    umoci(&["new", "--image", &image], None);
    umoci(&["unpack", "--rootless", "--image", &image], Some(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    umoci(&["config", "--image", &image, "--config.env", "PATH=/bin"], None);
    umoci(&["repack", "--image", &image], Some(&bundle));
}

/// Capabilities (Docker's names) missing from this process's bounding set.
fn missing_capabilities() -> Vec<&'static str> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    let bnd = u64::from_str_radix(hex, 16).unwrap();
    NAMES.iter().enumerate().filter(|(i, _)| bnd & (1 << i) == 0).map(|(_, n)| *n).collect()
}

/// The documented `docker run` of the README, with the scratch directories of a test in place of the host's.
fn docker_run_args(name: &str, image: &str, host_dirs: &[(String, &str, bool)]) -> Vec<String> {
    let mut a: Vec<String> = ["run", "-d", "--name", name, "--privileged", "--pid", "host", "--network", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--cgroupns".into(), "host".into()]);
    for (host, inside, ro) in host_dirs {
        let opts = match (*inside, ro) {
            // Docker refuses rslave under a private mount; bind mounts show new files either way.
            ("/run", _) if run_propagates() => ":rslave",
            ("/run", _) => "",
            (_, true) => ":ro",
            _ => "",
        };
        a.extend(["-v".into(), format!("{host}:{inside}{opts}")]);
    }
    a.push(image.into());
    a
}

#[test]
fn the_agent_image_runs_on_dockerd_and_execs_into_a_runc_container() {
    if skip() {
        return;
    }
    let agent_bin = static_bin("dcos-exec-agent");
    let dcos = static_bin("dcos");
    // Static means no interpreter, nothing for FROM scratch to lack.
    let f = ok(&run(Command::new("file").arg("-L").arg(&agent_bin)), "file");
    assert!(f.contains("statically linked") || f.contains("static-pie linked"), "{f}");

    let root = scratch("image");
    let d = dockerd::start(&root.join("docker"));
    let tag = format!("{}-agent:test", prefix());
    let o = run(Command::new(workspace().join("packaging/container/build"))
        .args(["--no-build", &tag])
        .env("AGENT", &agent_bin)
        .env("DOCKER_HOST", d.host()));
    ok(&o, "packaging/container/build");
    let inspect: serde_json::Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &tag])).unwrap();
    let cfg = &inspect[0]["Config"];
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/usr/bin/dcos-exec-agent"]));
    // FROM scratch: one layer, a few MB: the binary, the CA bundle and empty directories.
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1, "{inspect}");
    let size = inspect[0]["Size"].as_u64().unwrap();
    assert!(size < 64 << 20, "image of {size} bytes");

    // A container of the host's runc, with a marker in its root.
    let c = Container::start(
        &root,
        &format!("{}-img", prefix()),
        &ContainerOpts {
            prepare: Some(|rootfs: &Path| {
                std::fs::write(rootfs.join("marker"), "inside the runc container\n").unwrap()
            }),
            ..Default::default()
        },
    );

    // The agent's set-up, as an operator makes it: config with absolute paths for what the image writes.
    let etc = root.join("etc");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--listen", &listen, "--dir"]).arg(&etc));
    ok(&o, "init");
    let cfg_path = etc.join("agent.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let at = text.find("\n[runtimes]").unwrap();
    let top = text[..at].replace("audit_log = \"audit.log\"", "audit_log = \"/var/log/dcos-exec/audit.log\"");
    let tables = "[runtimes]\nrunc_roots = [\"/run/runc\"]\ncrun_roots = []\ndocker_sockets = []\n\
                  containerd_sockets = []\n\n[images]\ncache_dir = \"/var/cache/dcos-exec/images\"\n";
    std::fs::write(&cfg_path, format!("{top}\n{tables}")).unwrap();
    let admin = std::fs::read_to_string(etc.join("admin.token")).unwrap().trim().to_string();
    // A busybox debug image as an OCI layout (umoci), which the ACL lets the admin use.
    let layout = root.join("tools");
    busybox_layout(&layout);
    std::fs::write(
        etc.join("acl.toml"),
        format!(
            "[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"*\"]\nactions = [\"*\"]\nimages = [\"oci:{}/**\"]\n",
            root.display()
        ),
    )
    .unwrap();
    let audit = root.join("log");
    let cache = root.join("cache");
    std::fs::create_dir_all(&audit).unwrap();
    std::fs::create_dir_all(&cache).unwrap();

    let mut dirs: Vec<(String, &str, bool)> = Vec::new();
    for (host, inside, ro) in MOUNTS {
        let host = match *inside {
            "/etc/dcos-exec" => etc.display().to_string(),
            "/var/log/dcos-exec" => audit.display().to_string(),
            "/var/cache/dcos-exec" => cache.display().to_string(),
            _ => host.to_string(),
        };
        dirs.push((host, inside, *ro));
    }
    // Hand-made runc bundles live where their maker put them (Docker's, containerd's and CRI's are under /run).
    let bundles = root.display().to_string();
    dirs.push((bundles.clone(), &bundles, true));
    let name = format!("{}-agent", prefix());
    let args = docker_run_args(&name, &tag, &dirs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = d.docker(&args);
    if !o.status.success() && stderr(&o).contains("unable to apply caps") {
        // This host's own bounding set lacks capabilities (it is itself a container), and --privileged asks
        // for every one: the README's form for such hosts.
        let missing = missing_capabilities();
        let _ = writeln!(std::io::stderr(), "NOTE: --privileged fails here (no {missing:?}): the README's equivalent");
        d.docker_ok(&["rm", "-f", &name]);
        let mut alt: Vec<String> = Vec::new();
        for a in &args {
            if *a == "--privileged" {
                alt.extend(["--cap-add", "ALL"].map(String::from));
                for m in &missing {
                    alt.extend(["--cap-drop".to_string(), m.to_string()]);
                }
                for opt in ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"] {
                    alt.extend(["--security-opt".to_string(), opt.to_string()]);
                }
            } else {
                alt.push(a.to_string());
            }
        }
        let alt: Vec<&str> = alt.iter().map(String::as_str).collect();
        d.docker_ok(&alt);
    } else {
        ok(&o, "docker run");
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&listen).is_err() {
        let logs = d.docker(&["logs", &name]);
        assert!(Instant::now() < deadline, "agent in the image did not listen: {}{}", stdout(&logs), stderr(&logs));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The DaemonSet's probes answer on the agent in the image.
    let docs = yaml_documents(&workspace().join("packaging/kubernetes/daemonset.yaml"));
    let pod = &docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap()["spec"]["template"]["spec"];
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = pod["containers"][0][probe]["httpGet"]["path"].as_str().unwrap();
        let o = run(Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(etc.join("ca.crt"))
            .arg(format!("https://127.0.0.1:{port}{path}")));
        ok(&o, &format!("{probe}: GET {path}"));
    }

    let dcos = |token: &str| {
        let mut cmd = Command::new(&dcos);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &root)
            .env("DCOS_URL", format!("https://127.0.0.1:{port}"))
            .env("DCOS_SSL_VERIFY", etc.join("ca.crt"))
            .env("DCOS_ACS_TOKEN", token)
            .stdin(Stdio::null());
        cmd
    };
    let o = run(dcos(&admin).args([
        "task",
        "exec",
        &c.id,
        "sh",
        "-c",
        "cat /marker; cat /proc/1/cmdline; echo; cat /proc/self/cgroup",
    ]));
    let out = ok(&o, "dcos task exec through the agent in the image");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("inside the runc container"), "{out}");
    assert_eq!(lines.next(), Some("sleep\u{0}100000\u{0}"), "pid 1 is the container's: {out:?}");
    let cgroup: String = lines.collect::<Vec<_>>().join("\n");
    let want = std::fs::read_to_string(format!("/proc/{}/cgroup", c.init_pid())).unwrap();
    assert_eq!(cgroup.trim(), want.trim(), "the session is in the container's cgroup");
    // A debug image: pulled into the cache volume, mounted by the agent in the image, the target at /target.
    let image = format!("oci:{}:busybox", layout.display());
    let o = run(dcos(&admin).args(["task", "exec", "--debug-image", &image, &c.id, "cat", "/target/marker"]));
    assert_eq!(ok(&o, "--debug-image through the agent in the image"), "inside the runc container\n");
    assert!(cache.join("images").read_dir().unwrap().next().is_some(), "the cache is in the volume");
    // The exit status comes through, and the audit trail is on the host.
    let o = run(dcos(&admin).args(["task", "exec", &c.id, "sh", "-c", "exit 7"]));
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let log = std::fs::read_to_string(audit.join("audit.log")).unwrap_or_default();
    assert!(log.lines().filter(|l| l.contains(&c.id)).count() >= 2, "audit log on the host: {log}");
    // A forged token is refused by the agent in the image as by any other.
    let o = run(dcos("e30.e30.AAAA").args(["task", "exec", &c.id, "true"]));
    assert!(!o.status.success() && o.status.code() != Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    // The README documents the same command.
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    for flag in [
        "--privileged",
        "--pid host",
        "--network host",
        "--cgroupns host",
        "-v /run:/run:rslave",
        "-v /sys/fs/cgroup:/sys/fs/cgroup",
        "-v /etc/dcos-exec:/etc/dcos-exec:ro",
        "-v /var/log/dcos-exec:/var/log/dcos-exec",
        "-v /var/cache/dcos-exec:/var/cache/dcos-exec",
    ] {
        assert!(readme.contains(flag), "README's docker run has {flag}");
    }
    d.docker_ok(&["rm", "-f", &name]);
}

#[test]
fn the_deb_holds_binaries_unit_and_readme_and_installs_into_a_scratch_root() {
    if skip() {
        return;
    }
    static_bin("dcos-exec-agent");
    let out_dir = scratch("deb");
    let o = run(Command::new(workspace().join("packaging/deb/build"))
        .arg("--no-build")
        .env("BIN_DIR", static_bin("dcos").parent().unwrap())
        .env("OUT_DIR", &out_dir)
        .stdin(Stdio::null()));
    let printed = ok(&o, "packaging/deb/build");
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    assert!(deb.exists() && deb.starts_with(&out_dir), "{printed}");

    let info = ok(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)), "dpkg-deb -I");
    let field = |k: &str| info.lines().find_map(|l| l.trim().strip_prefix(&format!("{k}: "))).map(str::to_string);
    assert_eq!(field("Package").as_deref(), Some("dcos-exec"), "{info}");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(field("Architecture").as_deref(), Some(arch), "{info}");
    // Static binaries: no shared-library dependency.
    assert!(field("Depends").is_none_or(|d| !d.contains("libc6") && !d.contains("libseccomp")), "{info}");

    let list = ok(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)), "dpkg-deb -c");
    let has = |path: &str| list.lines().any(|l| l.ends_with(&format!(".{path}")) || l.contains(&format!(".{path} ")));
    for p in [
        "/usr/bin/dcos",
        "/usr/bin/dcos-exec-agent",
        "/lib/systemd/system/dcos-exec-agent.service",
        "/usr/share/doc/dcos-exec/README.md",
        "/usr/share/doc/dcos-exec/copyright",
    ] {
        assert!(has(p), "{p} in the package:\n{list}");
    }
    for l in list.lines().filter(|l| l.contains("./usr/bin/") && !l.ends_with('/')) {
        assert!(l.starts_with("-rwxr-xr-x 0/0"), "{l}");
    }
    // Man pages (gzipped, as Debian wants them) and completions, generated by the binaries themselves.
    for p in [
        "/usr/share/man/man1/dcos.1.gz",
        "/usr/share/man/man1/dcos-task-exec.1.gz",
        "/usr/share/man/man1/dcos-exec-agent.1.gz",
        "/usr/share/bash-completion/completions/dcos",
        "/usr/share/zsh/vendor-completions/_dcos",
        "/usr/share/fish/vendor_completions.d/dcos.fish",
        "/usr/bin/dcos-exec-gateway",
    ] {
        assert!(has(p), "{p} in the package:\n{list}");
    }

    // Installed into a scratch root with dpkg itself, then removed.
    let root = scratch("debroot");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
            .args(["--force-script-chrootless", "--no-triggers"])
            .args(args))
    };
    ok(&dpkg(&["-i", &deb.display().to_string()]), "dpkg --root -i");
    let status = ok(&dpkg(&["-s", "dcos-exec"]), "dpkg -s");
    assert!(status.contains("Status: install ok installed"), "{status}");
    let agent = root.join("usr/bin/dcos-exec-agent");
    let help = ok(&run(Command::new(&agent).arg("--help")), "installed agent");
    assert!(help.contains("init") && help.contains("run"), "{help}");
    ok(&run(Command::new(root.join("usr/bin/dcos")).arg("--help")), "installed dcos");
    // The packaged unit with the packaged binary.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/dcos-exec-agent.service")).unwrap();
    let u = root.join("check.service");
    std::fs::write(&u, unit.replace("/usr/bin/dcos-exec-agent", &agent.display().to_string())).unwrap();
    assert_unit_verifies(&u);
    ok(&dpkg(&["-r", "dcos-exec"]), "dpkg --root -r");
    assert!(!agent.exists() && !root.join("lib/systemd/system/dcos-exec-agent.service").exists(), "removed");
}

/// An apt configuration with its own lists directory and no sources: `apt-get update` takes only that lock.
fn scratch_apt(dir: &Path) -> PathBuf {
    for d in ["lists/partial", "sources.list.d"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let conf = dir.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::State::Lists \"{}\";\nDir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts \"{}\";\n",
            dir.join("lists").display(),
            dir.join("sources.list.d").display()
        ),
    )
    .unwrap();
    conf
}

/// Holds apt's lock on `file` (an fcntl lock, as apt and dpkg take them) until the returned file is dropped.
fn hold_apt_lock(file: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(file).unwrap();
    let fl = libc::flock {
        l_type: i16::try_from(libc::F_WRLCK).unwrap(),
        l_whence: i16::try_from(libc::SEEK_SET).unwrap(),
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl with F_SETLK on a descriptor we own and a fully initialised struct flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(r, 0, "locking {}", file.display());
    f
}

#[test]
fn setup_waits_for_the_apt_lock_another_process_holds() {
    if skip() {
        return;
    }
    let dir = scratch("aptlock");
    let conf = scratch_apt(&dir);
    let apt_wait = workspace().join("scripts/apt-wait");
    let lock = hold_apt_lock(&dir.join("lists/lock"));
    // apt-get alone fails at once: the lock is really held.
    let o = run(Command::new("apt-get").args(["update", "-qq"]).env("APT_CONFIG", &conf));
    assert!(!o.status.success() && stderr(&o).contains("Could not get lock"), "{}", stderr(&o));
    // A caller that will not wait gets apt's own error.
    let o = run(Command::new(&apt_wait)
        .args(["apt-get", "update", "-qq"])
        .env("APT_CONFIG", &conf)
        .env("APT_WAIT_SECONDS", "0"));
    assert!(!o.status.success() && stderr(&o).contains("Could not get lock"), "{}", stderr(&o));
    // scripts/setup's way: it waits, says why once, and runs when the holder lets go.
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = released.clone();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(lock);
    });
    let o = run(Command::new(&apt_wait).args(["apt-get", "update", "-qq"]).env("APT_CONFIG", &conf));
    assert!(released.load(std::sync::atomic::Ordering::SeqCst), "apt-wait returned while the lock was held");
    ok(&o, "scripts/apt-wait apt-get update");
    let err = stderr(&o);
    assert_eq!(err.matches("apt-wait: waiting for another package manager to finish").count(), 1, "{err}");
    holder.join().unwrap();
    let setup = std::fs::read_to_string(workspace().join("scripts/setup")).unwrap();
    assert!(
        setup.contains("scripts/apt-wait\" apt-get update") && setup.contains("scripts/apt-wait\" apt-get install")
    );
}

#[test]
fn install_takes_man_pages_and_completions_from_the_binaries() {
    // The real binaries generate them (`dcos completion SHELL`, `BINARY man DIR`): scripts/package-assets runs
    // them for scripts/install and the .deb.
    let dir = scratch("assets");
    let prefix = dir.join("prefix");
    let o = run(Command::new(workspace().join("scripts/install"))
        .arg("--from")
        .arg(bin("dcos").parent().unwrap())
        .env("PREFIX", &prefix));
    ok(&o, "scripts/install");
    for (path, want) in [
        ("share/man/man1/dcos.1", ".TH dcos 1"),
        ("share/man/man1/dcos-task-exec.1", ".TH dcos-task-exec 1"),
        ("share/man/man1/dcos-exec-agent.1", ".TH dcos-exec-agent 1"),
        ("share/bash-completion/completions/dcos", "complete -F _dcos"),
        ("share/zsh/vendor-completions/_dcos", "#compdef dcos"),
        ("share/fish/vendor_completions.d/dcos.fish", "complete -c dcos"),
    ] {
        let got = std::fs::read_to_string(prefix.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got.contains(want), "{path} lacks {want:?}");
    }
    assert!(prefix.join("bin/dcos").exists() && prefix.join("bin/dcos-exec-agent").exists());
}
