//! A real OpenID Connect issuer for the tests: `oidc_issuer.py` (authlib) over TLS with its own CA, driven
//! through its test-only `/admin` endpoints with curl, as a browser or an operator would reach it.

use super::run;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running issuer; killed on drop.
pub struct Issuer {
    pub url: String,
    pub dir: PathBuf,
    child: Child,
}

impl Issuer {
    /// Starts an issuer in `dir` (CA and certificate written there) and waits until it listens.
    pub fn start(dir: &Path) -> Issuer {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc_issuer.py");
        let log = std::fs::File::create(dir.join("issuer.log")).unwrap();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script).arg("--dir").arg(dir).stdout(Stdio::piped()).stderr(log);
        // SAFETY: prctl in the child before exec; the issuer dies with the thread that started it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting oidc_issuer.py (python3-authlib installed? see scripts/setup)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("READY ").unwrap_or_else(|| {
            panic!("issuer did not start: {}", std::fs::read_to_string(dir.join("issuer.log")).unwrap_or_default())
        });
        Issuer { url: url.to_string(), dir: dir.into(), child }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn curl(&self, path: &str, body: Option<&serde_json::Value>) -> String {
        let mut c = Command::new("curl");
        c.args(["-sS", "--fail-with-body", "--cacert"]).arg(self.ca());
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
        }
        let o = run(c.arg(format!("{}{path}", self.url)));
        assert!(
            o.status.success(),
            "curl {path}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// POST of a JSON body to a test endpoint; the JSON answer.
    pub fn admin(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        serde_json::from_str(&self.curl(path, Some(&body))).unwrap()
    }

    pub fn get(&self, path: &str) -> String {
        self.curl(path, None)
    }

    /// A token signed by the issuer's current key of `alg`, with `claims` over iss/iat/exp (ttl 300 s).
    pub fn mint(&self, alg: &str, claims: serde_json::Value) -> String {
        self.mint_with(serde_json::json!({"alg": alg, "claims": claims}))
    }

    /// A token from a full mint request (`alg`, `claims`, `ttl`, `kid`, `header_kid`, `omit`, `omit_kid`).
    pub fn mint_with(&self, req: serde_json::Value) -> String {
        self.admin("/admin/mint", req)["token"].as_str().unwrap().to_string()
    }

    /// The kid the issuer signs `alg` tokens with.
    pub fn current_kid(&self, alg: &str) -> String {
        self.admin("/admin/current", serde_json::json!({}))[alg].as_str().unwrap().to_string()
    }

    /// The user's click: approves `user_code` as this user.
    pub fn approve(&self, user_code: &str, sub: &str, email: &str, groups: &[&str]) {
        let r = self.admin(
            "/device/approve",
            serde_json::json!({"user_code": user_code, "sub": sub, "email": email, "groups": groups}),
        );
        assert_eq!(r["approved"], true, "{r}");
    }

    /// One `[[oidc]]` table for agent.toml, as an inline array element.
    pub fn agent_table(&self, audience: &str, refresh: &str, min_refresh: &str) -> String {
        format!(
            "{{ issuer = \"{}\", audience = \"{audience}\", ca_file = \"{}\", user_claim = \"email\", groups_claim = \"groups\", group_prefix = \"idp:\", refresh_interval = \"{refresh}\", min_refresh_interval = \"{min_refresh}\" }}",
            self.url,
            self.ca().display()
        )
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
