//! Tokens of an organisation's OpenID Connect issuer: the issuer's keys come from its discovery document
//! (`/.well-known/openid-configuration`) and the `jwks_uri` named there, are cached, and are fetched again
//! when a token names an unknown `kid` (at most once per `min_refresh_interval`) and every
//! `refresh_interval`, so a key rotation needs no restart and a removed key stops verifying. The user and
//! groups the ACL sees are claims named by the configuration (e.g. `email`, `groups`).

mod fetch;
mod jwk;

use crate::auth::{check_validity, numeric_date, Audience, AuthError, Claims, Jws, MALFORMED};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One `[[oidc]]` table (agent.toml, and the gateway's configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, exactly as tokens carry it in `iss` (https).
    pub issuer: String,
    /// The audience tokens must carry in `aud` (often the client id).
    pub audience: String,
    /// PEM CA certificates for the issuer's TLS; the system's roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Claim whose value is the ACL user (`user:NAME`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Put before the user name, so an issuer's user cannot pass for a local one (e.g. `"idp:"`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_prefix: String,
    /// Claim whose values (an array of strings, or one string) are the ACL groups (`group:NAME`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Put before every group name, so groups of the issuer cannot pass for local ones (e.g. `"idp:"`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_prefix: String,
    /// How often the keys are fetched again even when no token asks for a new one.
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: String,
    /// The least time between two fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_min_refresh_interval")]
    pub min_refresh_interval: String,
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_refresh_interval() -> String {
    "5m".into()
}
fn default_min_refresh_interval() -> String {
    "10s".into()
}

impl OidcConfig {
    /// Resolves a relative `ca_file` against `base` (the directory of the configuration file).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = self.ca_file.as_mut() {
            *p = base.join(&*p);
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("[[oidc]] issuer {0:?}: must be an https URL")]
    Issuer(String),
    #[error("[[oidc]] issuer {issuer}: {key} is not a duration like \"5m\": {value}")]
    Duration { issuer: String, key: &'static str, value: String },
    #[error("[[oidc]] issuer {issuer}: {message}")]
    Tls { issuer: String, message: String },
    #[error("[[oidc]] issuer {0} is configured twice")]
    Duplicate(String),
    #[error("[[oidc]] issuer {issuer}: {key} must not be empty")]
    Empty { issuer: String, key: &'static str },
}

/// Every configured issuer, for [`crate::auth::Verifier::with_oidc`] (agent and gateway build theirs the same way).
pub fn issuers(cfgs: &[OidcConfig]) -> Result<Vec<Arc<Issuer>>, OidcError> {
    // Tokens pick their issuer by `iss`: two tables for one issuer would leave one of them never used.
    for (i, c) in cfgs.iter().enumerate() {
        if cfgs[..i].iter().any(|o| o.issuer == c.issuer) {
            return Err(OidcError::Duplicate(c.issuer.clone()));
        }
    }
    cfgs.iter().cloned().map(Issuer::new).collect()
}

/// The subset of the discovery document we use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<jwk::Key>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
    /// Why the last fetch failed, while no fetch has succeeded since.
    error: Option<String>,
}

/// One configured issuer with its cached keys.
pub struct Issuer {
    cfg: OidcConfig,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    tls: Arc<rustls::ClientConfig>,
    keys: RwLock<KeySet>,
    /// Serialises fetches; holds when the last fetch caused by a token started (the rate limit).
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Issuer {
    pub fn new(cfg: OidcConfig) -> Result<Arc<Issuer>, OidcError> {
        if !cfg.issuer.starts_with("https://") || cfg.issuer.parse::<http::Uri>().is_err() {
            return Err(OidcError::Issuer(cfg.issuer));
        }
        for (key, v) in [("audience", &cfg.audience), ("user_claim", &cfg.user_claim)] {
            if v.is_empty() {
                return Err(OidcError::Empty { issuer: cfg.issuer.clone(), key });
            }
        }
        let dur = |key: &'static str, value: &str| {
            humantime::parse_duration(value).map_err(|_| OidcError::Duration {
                issuer: cfg.issuer.clone(),
                key,
                value: value.into(),
            })
        };
        let refresh_interval = dur("refresh_interval", &cfg.refresh_interval)?;
        let min_refresh_interval = dur("min_refresh_interval", &cfg.min_refresh_interval)?;
        let tls = fetch::tls_config(cfg.ca_file.as_deref())
            .map_err(|message| OidcError::Tls { issuer: cfg.issuer.clone(), message })?;
        Ok(Arc::new(Issuer {
            cfg,
            refresh_interval,
            min_refresh_interval,
            tls: Arc::new(tls),
            keys: Default::default(),
            fetching: Default::default(),
        }))
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// How many keys are cached (for logs and tests).
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|k| k.keys.len()).unwrap_or(0)
    }

    /// Fetches the discovery document, then the JWKS it names, and replaces the cached keys.
    pub async fn fetch_keys(&self) -> Result<usize, String> {
        let base = self.cfg.issuer.trim_end_matches('/');
        let doc = fetch::get(&self.tls, &format!("{base}/.well-known/openid-configuration")).await?;
        let d: Discovery = serde_json::from_slice(&doc).map_err(|e| format!("discovery document: {e}"))?;
        // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer we asked.
        if d.issuer != self.cfg.issuer {
            return Err(format!("discovery document names issuer {:?}", d.issuer));
        }
        let body = fetch::get(&self.tls, &d.jwks_uri).await?;
        let keys = jwk::parse_jwks(&body).map_err(|e| format!("JWKS {}: {e}", d.jwks_uri))?;
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = KeySet { keys, fetched: Some(Instant::now()), error: None };
        }
        Ok(n)
    }

    /// [`Issuer::fetch_keys`], remembering why it failed.
    async fn fetch_keys_noting_errors(&self) -> Result<usize, String> {
        let r = self.fetch_keys().await;
        if let (Err(e), Ok(mut k)) = (&r, self.keys.write()) {
            k.error = Some(e.clone());
        }
        r
    }

    /// Fetches the keys now, and again every `refresh_interval`, for as long as the runtime runs.
    pub fn spawn_refresh(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let r = {
                    let _g = self.fetching.lock().await;
                    self.fetch_keys_noting_errors().await
                };
                match r {
                    Ok(n) => tracing::debug!(issuer = %self.cfg.issuer, keys = n, "OIDC keys fetched"),
                    Err(e) if first => tracing::warn!(
                        issuer = %self.cfg.issuer,
                        "OIDC issuer unreachable at start ({e}); its tokens are refused until its keys can be fetched"
                    ),
                    Err(e) => {
                        tracing::warn!(issuer = %self.cfg.issuer, "OIDC keys not refreshed ({e}); keeping the last ones")
                    }
                }
                first = false;
                tokio::time::sleep(self.refresh_interval).await;
            }
        });
    }

    /// A token named a key we do not hold: fetch again unless a fetch started less than
    /// `min_refresh_interval` ago (a stream of made-up `kid`s must not turn the agent into a load on the
    /// issuer). Returns the error of the fetch if it failed.
    async fn refresh_for_unknown_key(&self) -> Result<(), String> {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh_interval) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.fetch_keys_noting_errors().await.map(|_| ())
    }

    /// `None`: no cached key fits the token's `kid` (or, without a `kid`, its `alg`).
    fn verify_signature(&self, jws: &Jws<'_>) -> Result<Option<bool>, AuthError> {
        let Ok(k) = self.keys.read() else { return Ok(None) };
        let kid = jws.header.kid.as_deref();
        let candidates: Vec<&jwk::Key> = k
            .keys
            .iter()
            .filter(|key| match kid {
                Some(kid) => key.kid.as_deref() == Some(kid),
                None => key.alg == jws.header.alg,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        // The key decides the algorithm: an RSA key never checks an HS256 or ES256 signature.
        let fitting: Vec<&&jwk::Key> = candidates.iter().filter(|key| key.alg == jws.header.alg).collect();
        if fitting.is_empty() {
            return Err(AuthError::Invalid("algorithm does not match the issuer's key"));
        }
        Ok(Some(fitting.iter().any(|key| key.verify(jws.signed.as_bytes(), &jws.sig))))
    }

    /// Verifies a token whose unverified `iss` names this issuer.
    pub(crate) async fn verify(&self, jws: &Jws<'_>, now: u64) -> Result<Claims, AuthError> {
        let mut verified = self.verify_signature(jws)?;
        if verified.is_none() {
            if let Err(cause) = self.refresh_for_unknown_key().await {
                tracing::warn!(issuer = %self.cfg.issuer, "OIDC keys not refreshed for an unknown kid: {cause}");
            }
            // Never fetched (and the last try failed, perhaps just now, perhaps within the rate limit): say so
            // rather than "unknown key".
            let unreachable =
                self.keys.read().ok().and_then(|k| if k.fetched.is_none() { k.error.clone() } else { None });
            if let Some(cause) = unreachable {
                return Err(AuthError::IssuerUnreachable { issuer: self.cfg.issuer.clone(), cause });
            }
            verified = self.verify_signature(jws)?;
        }
        match verified {
            None => return Err(AuthError::Invalid("unknown key (kid not in the issuer's JWKS)")),
            Some(false) => return Err(AuthError::Invalid("signature does not verify")),
            Some(true) => {}
        }
        self.claims(&jws.payload, now)
    }

    /// The checks after the signature: issuer, audience, expiry, not-before, then the mapped user and groups.
    fn claims(&self, payload: &[u8], now: u64) -> Result<Claims, AuthError> {
        let c: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).map_err(|_| MALFORMED)?;
        let date = |k: &str| -> Result<Option<u64>, AuthError> {
            match c.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().ok_or(MALFORMED).and_then(numeric_date).map(Some),
            }
        };
        let exp = date("exp")?.ok_or(AuthError::Invalid("a required claim is missing"))?;
        let nbf = date("nbf")?;
        let iat = date("iat")?;
        check_validity(exp, nbf.unwrap_or(0), now)?;
        if c.get("iss").and_then(|v| v.as_str()) != Some(self.cfg.issuer.as_str()) {
            return Err(AuthError::Invalid("unknown issuer"));
        }
        let aud: Option<Audience> = c.get("aud").and_then(|v| serde_json::from_value(v.clone()).ok());
        if !aud.is_some_and(|a| a.contains(&self.cfg.audience)) {
            return Err(AuthError::Invalid("wrong audience"));
        }
        let user = match c.get(&self.cfg.user_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => format!("{}{s}", self.cfg.user_prefix),
            _ => return Err(AuthError::Invalid("the configured user claim is missing or empty")),
        };
        // An address the issuer says it has not verified may be anyone's (users can often type in any email).
        if self.cfg.user_claim == "email"
            && c.get("email_verified").is_some_and(|v| v != &serde_json::Value::Bool(true))
        {
            return Err(AuthError::Invalid("the email claim is not verified (email_verified is not true)"));
        }
        let groups = match c.get(&self.cfg.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(g)) => vec![g.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|g| {
                    g.as_str().map(String::from).ok_or(AuthError::Invalid("the groups claim is not a list of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AuthError::Invalid("the groups claim is not a list of strings")),
        };
        let groups = groups.into_iter().map(|g| format!("{}{g}", self.cfg.group_prefix)).collect();
        Ok(Claims {
            sub: user,
            groups,
            iss: self.cfg.issuer.clone(),
            aud: self.cfg.audience.clone(),
            iat: iat.unwrap_or(0),
            nbf: nbf.or(iat).unwrap_or(0),
            exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    const ISS: &str = "https://127.0.0.1:1";

    fn config() -> OidcConfig {
        toml::from_str(&format!(
            "issuer = \"{ISS}\"\naudience = \"cli\"\nuser_claim = \"email\"\ngroup_prefix = \"idp:\"\n"
        ))
        .unwrap()
    }

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    /// An issuer holding one ES256 key (kid `ec`) and one Ed25519 key (kid `ed`), as if fetched; the signers.
    fn issuer_with_keys() -> (Arc<Issuer>, EcdsaKeyPair, Ed25519KeyPair) {
        let rng = ring::rand::SystemRandom::new();
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref(), &rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let p = ec.public_key().as_ref();
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&p[1..33]), "y": b64(&p[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key().as_ref())},
        ]});
        let issuer = Issuer::new(config()).unwrap();
        *issuer.keys.write().unwrap() = KeySet {
            keys: jwk::parse_jwks(doc.to_string().as_bytes()).unwrap(),
            fetched: Some(Instant::now()),
            error: None,
        };
        (issuer, ec, ed)
    }

    fn token(header: serde_json::Value, claims: &serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn claims() -> serde_json::Value {
        let now = crate::auth::unix_now();
        json!({"iss": ISS, "aud": ["x", "cli"], "sub": "u1", "email": "a@example", "groups": ["ops", "dev"],
               "iat": now, "exp": now + 60})
    }

    fn check(v: &Verifier, t: &str) -> Result<Claims, AuthError> {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(v.verify(t))
    }

    fn reason(r: Result<Claims, AuthError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected a refusal, got {c:?}"),
        }
    }

    #[test]
    fn es256_and_eddsa_verify_and_claims_are_mapped() {
        let (issuer, ec, ed) = issuer_with_keys();
        let v = Verifier::oidc_only(vec![issuer]);
        let rng = ring::rand::SystemRandom::new();
        let t = token(json!({"alg": "ES256", "kid": "ec"}), &claims(), |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        let c = check(&v, &t).unwrap();
        assert_eq!((c.sub.as_str(), c.groups.clone()), ("a@example", vec!["idp:ops".to_string(), "idp:dev".into()]));
        assert_eq!((c.iss.as_str(), c.aud.as_str()), (ISS, "cli"));
        let t = token(json!({"alg": "EdDSA", "kid": "ed"}), &claims(), |m| ed.sign(m).as_ref().to_vec());
        assert_eq!(check(&v, &t).unwrap().sub, "a@example");
        // Without a kid: the keys of the token's algorithm.
        let t = token(json!({"alg": "EdDSA"}), &claims(), |m| ed.sign(m).as_ref().to_vec());
        assert!(check(&v, &t).is_ok());
        // One group as a string.
        let mut c = claims();
        c["groups"] = json!("ops");
        let t = token(json!({"alg": "EdDSA", "kid": "ed"}), &c, |m| ed.sign(m).as_ref().to_vec());
        assert_eq!(check(&v, &t).unwrap().groups, ["idp:ops"]);
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let (issuer, _, ed) = issuer_with_keys();
        let v = Verifier::oidc_only(vec![issuer]);
        // An Ed25519 signature presented under the EC key's kid.
        let t = token(json!({"alg": "EdDSA", "kid": "ec"}), &claims(), |m| ed.sign(m).as_ref().to_vec());
        assert!(reason(check(&v, &t)).contains("algorithm does not match"));
        for alg in ["none", "HS256", "RS384", "es256"] {
            let t = token(json!({"alg": alg, "kid": "ec"}), &claims(), |_| Vec::new());
            assert!(reason(check(&v, &t)).contains("algorithm not accepted"), "{alg}");
        }
    }

    #[test]
    fn claims_that_do_not_fit_are_refused() {
        let (issuer, _, ed) = issuer_with_keys();
        let v = Verifier::oidc_only(vec![issuer]);
        let now = crate::auth::unix_now();
        let sign =
            |c: &serde_json::Value| token(json!({"alg": "EdDSA", "kid": "ed"}), c, |m| ed.sign(m).as_ref().to_vec());
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("exp", json!(now - 31), "token expired"),
            ("exp", serde_json::Value::Null, "a required claim is missing"),
            ("nbf", json!(now + 31), "not valid yet"),
            ("aud", json!("other"), "wrong audience"),
            ("aud", json!([]), "wrong audience"),
            ("email", json!(""), "user claim"),
            ("email", json!(7), "user claim"),
            ("groups", json!([1]), "groups claim"),
            ("iss", json!("https://other.example"), "unknown issuer"),
            ("email_verified", json!(false), "not verified"),
            ("email_verified", json!("true"), "not verified"),
        ];
        for (k, val, want) in cases {
            let mut c = claims();
            c[k] = val.clone();
            assert!(reason(check(&v, &sign(&c))).contains(want), "{k}={val}: want {want}");
        }
        let mut c = claims();
        c["email_verified"] = json!(true);
        assert!(check(&v, &sign(&c)).is_ok());
        // Within the leeway.
        let mut c = claims();
        c["exp"] = json!(now - 29);
        assert!(check(&v, &sign(&c)).is_ok());
        // A kid the issuer never published, signed by a key it does hold: unknown key (the refresh fails here:
        // nothing listens at port 1, but keys were fetched before, so the reason is the key).
        let t = token(json!({"alg": "EdDSA", "kid": "gone"}), &claims(), |m| ed.sign(m).as_ref().to_vec());
        assert!(reason(check(&v, &t)).contains("unknown key"));
    }

    #[test]
    fn bad_configurations_are_errors() {
        let mut c = config();
        c.issuer = "http://idp.example".into();
        assert!(matches!(Issuer::new(c), Err(OidcError::Issuer(_))));
        let mut c = config();
        c.refresh_interval = "often".into();
        assert!(matches!(Issuer::new(c), Err(OidcError::Duration { .. })));
        let mut c = config();
        c.audience = String::new();
        assert!(matches!(Issuer::new(c), Err(OidcError::Empty { key: "audience", .. })));
        let mut c = config();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(Issuer::new(c), Err(OidcError::Tls { .. })));
        assert!(
            toml::from_str::<OidcConfig>("issuer = \"https://x\"\naudience = \"a\"\nuser_clam = \"email\"\n").is_err()
        );
    }
}
