// Shared by the build scripts of the binaries (agent/build.rs, cli/build.rs, gateway/build.rs if any).
// Puts the git revision of the build into `DCOS_EXEC_REVISION` for `--version`: `git rev-parse --short HEAD`,
// or the variable of that name when set (a build from a source tarball), or "unknown" outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DCOS_EXEC_REVISION");
    let revision = std::env::var("DCOS_EXEC_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // A new commit or checkout moves HEAD or the branch it points at: rebuild then, and only then.
    // A path that does not exist would rerun this on every build, so only existing ones are named.
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{head}"));
        }
        watch.push(format!("{common}/packed-refs"));
    }
    for p in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rustc-env=DCOS_EXEC_REVISION={revision}");
}
