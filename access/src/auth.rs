//! Bearer-token authentication: the agent's own Ed25519-signed JWTs (EdDSA) and, through [`crate::oidc`], tokens
//! of configured OpenID Connect issuers (RS256, ES256, EdDSA), each checked for issuer, audience, expiry and
//! not-before.
//!
//! Signing and verification use `ring`, the crypto provider that TLS already uses, so the agent carries one
//! crypto stack. Only the compact serialization is accepted, and only the algorithms in [`ACCEPTED_ALGS`]:
//! `none` and the HMAC family are refused before any key is looked at.

use crate::oidc;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dcos_exec_proto::ErrorCode;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY: u64 = 30;

/// Signature algorithms accepted from any issuer. What a key may verify is decided by the key (see
/// [`crate::oidc`]); a name outside this list (`none`, `HS256`, a case variant) never reaches a key.
pub const ACCEPTED_ALGS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The claims of a verified token, as the ACL sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user name (for an OIDC token: the configured user claim, e.g. `email`).
    pub sub: String,
    /// Groups the user belongs to, as used by ACL subjects `group:NAME` (for an OIDC token: the configured
    /// groups claim, with the configured prefix).
    #[serde(default)]
    pub groups: Vec<String>,
    pub iss: String,
    /// One audience (what `mint` writes); a verified token may have carried several (see [`Audience`]).
    pub aud: String,
    #[serde(default)]
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// Why a token was refused. The text never includes the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("authorization header is not a bearer token")]
    NotBearer,
    #[error("token refused: {0}")]
    Invalid(&'static str),
    #[error("bad key: {0}")]
    Key(String),
    /// The token names a configured OIDC issuer whose keys could not be fetched.
    #[error("token refused: the keys of issuer {issuer} could not be fetched: {cause}")]
    IssuerUnreachable { issuer: String, cause: String },
}

impl AuthError {
    /// Every authentication failure is `unauthenticated` on the wire.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthenticated
    }
}

pub(crate) const MALFORMED: AuthError = AuthError::Invalid("malformed token");

/// The JOSE header: `alg`, `kid` to pick the issuer's key, `crit` refused (we understand no extension).
#[derive(Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWS split into its parts; nothing in it is trusted until the signature over `signed` verifies.
pub(crate) struct Jws<'a> {
    pub header: Header,
    pub payload: Vec<u8>,
    pub sig: Vec<u8>,
    pub signed: &'a str,
}

impl<'a> Jws<'a> {
    /// `accepted`: the algorithms allowed, and the refusal for any other.
    fn parse(token: &'a str, accepted: (&[&str], &'static str)) -> Result<Jws<'a>, AuthError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(c64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(MALFORMED);
        };
        let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| MALFORMED);
        let header: Header = serde_json::from_slice(&b64(h64)?).map_err(|_| MALFORMED)?;
        // This closes `alg: none` and HS256-with-the-public-key confusion for every issuer.
        if !accepted.0.contains(&header.alg.as_str()) {
            return Err(AuthError::Invalid(accepted.1));
        }
        if header.crit.is_some() {
            return Err(AuthError::Invalid("critical header extensions are not supported"));
        }
        Ok(Jws { header, payload: b64(c64)?, sig: b64(s64)?, signed: &token[..h64.len() + 1 + c64.len()] })
    }

    /// The `iss` claim before verification: it only picks whose keys to try.
    fn unverified_issuer(&self) -> Result<String, AuthError> {
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<serde_json::Value>,
        }
        let c: Iss = serde_json::from_slice(&self.payload).map_err(|_| MALFORMED)?;
        match c.iss {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(_) => Err(MALFORMED),
            None => Err(AuthError::Invalid("a required claim is missing")),
        }
    }
}

/// `aud` as RFC 7519 allows it: one string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(v) => v.iter().any(|a| a == want),
        }
    }
}

/// A NumericDate: may be fractional; negative, NaN or infinite is malformed.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "finite and not negative: `as` drops the fraction of a NumericDate and saturates past u64::MAX"
)]
pub(crate) fn numeric_date(v: f64) -> Result<u64, AuthError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v as u64)
    } else {
        Err(MALFORMED)
    }
}

/// `exp` and `nbf` against `now`, with [`LEEWAY`] either way.
pub(crate) fn check_validity(exp: u64, nbf: u64, now: u64) -> Result<(), AuthError> {
    if exp.saturating_add(LEEWAY) < now {
        return Err(AuthError::Invalid("token expired"));
    }
    if nbf > now.saturating_add(LEEWAY) {
        return Err(AuthError::Invalid("token not valid yet"));
    }
    Ok(())
}

/// Claims as they may arrive: NumericDates may be fractional, the required ones may be missing.
#[derive(Deserialize)]
struct WireClaims {
    sub: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    iss: Option<String>,
    aud: Option<Audience>,
    iat: Option<f64>,
    nbf: Option<f64>,
    exp: Option<f64>,
}

/// The agent's own issuer: one Ed25519 key.
struct LocalIssuer {
    key: UnparsedPublicKey<Vec<u8>>,
    issuer: String,
    audience: String,
}

/// Verifies tokens of the agent's own issuer and of the configured OIDC issuers. Agent and gateway both hold
/// one and call [`Verifier::verify_header`] for every request.
pub struct Verifier {
    local: Option<LocalIssuer>,
    oidc: Vec<Arc<oidc::Issuer>>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Verifier {
    /// The agent's own issuer: `public_pem` is an Ed25519 SubjectPublicKeyInfo PEM.
    pub fn new(public_pem: &[u8], issuer: &str, audience: &str) -> Result<Self, AuthError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(public_pem).map_err(|e| AuthError::Key(e.to_string()))?;
        let raw = spki
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| AuthError::Key("not an Ed25519 public key".into()))?;
        Ok(Verifier {
            local: Some(LocalIssuer {
                key: UnparsedPublicKey::new(&ED25519, raw.to_vec()),
                issuer: issuer.into(),
                audience: audience.into(),
            }),
            oidc: Vec::new(),
        })
    }

    /// Only OIDC issuers (for a gateway that holds no key of its own).
    pub fn oidc_only(issuers: Vec<Arc<oidc::Issuer>>) -> Self {
        Verifier { local: None, oidc: issuers }
    }

    /// Also accepts tokens of these OIDC issuers.
    pub fn with_oidc(mut self, issuers: Vec<Arc<oidc::Issuer>>) -> Self {
        self.oidc.extend(issuers);
        self
    }

    /// Starts fetching every OIDC issuer's keys now and again every `refresh_interval`. Call it once, inside
    /// the tokio runtime; an issuer that does not answer is a warning and is tried again.
    pub fn spawn_refresh(&self) {
        for i in &self.oidc {
            i.clone().spawn_refresh();
        }
    }

    /// Checks an `Authorization` header value and returns the claims.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::NotBearer)?.trim();
        self.verify(token).await
    }

    /// Checks a raw token: header, then signature, then claims (nothing unsigned is trusted; the unsigned
    /// `iss` only chooses whose keys are tried, and is checked again once the signature verified).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let jws = Jws::parse(token, self.accepted())?;
        let iss = jws.unverified_issuer()?;
        if let Some(issuer) = self.oidc.iter().find(|i| i.issuer() == iss) {
            return issuer.verify(&jws, unix_now()).await;
        }
        match &self.local {
            Some(local) if local.issuer == iss => local.verify(&jws, unix_now()),
            _ => Err(AuthError::Invalid("unknown issuer")),
        }
    }

    /// The algorithms this verifier accepts, and the refusal that names them: without OIDC issuers, only the
    /// agent's own EdDSA.
    fn accepted(&self) -> (&'static [&'static str], &'static str) {
        if self.oidc.is_empty() {
            (&ACCEPTED_ALGS[..1], "algorithm not accepted (only EdDSA)")
        } else {
            (&ACCEPTED_ALGS, "algorithm not accepted (only EdDSA, ES256 and RS256)")
        }
    }

    #[cfg(test)]
    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let jws = Jws::parse(token, self.accepted())?;
        match &self.local {
            Some(l) => l.verify(&jws, now),
            None => Err(AuthError::Invalid("unknown issuer")),
        }
    }
}

impl LocalIssuer {
    fn verify(&self, jws: &Jws<'_>, now: u64) -> Result<Claims, AuthError> {
        if jws.header.alg != "EdDSA" {
            return Err(AuthError::Invalid("algorithm not accepted (the agent's own tokens are EdDSA)"));
        }
        self.key
            .verify(jws.signed.as_bytes(), &jws.sig)
            .map_err(|_| AuthError::Invalid("signature does not verify (token of another signer?)"))?;

        let c: WireClaims = serde_json::from_slice(&jws.payload).map_err(|_| MALFORMED)?;
        let (Some(sub), Some(iss), Some(aud), Some(nbf), Some(exp)) = (c.sub, c.iss, c.aud, c.nbf, c.exp) else {
            return Err(AuthError::Invalid("a required claim is missing"));
        };
        let (nbf, exp) = (numeric_date(nbf)?, numeric_date(exp)?);
        check_validity(exp, nbf, now)?;
        if iss != self.issuer {
            return Err(AuthError::Invalid("unknown issuer"));
        }
        if !aud.contains(&self.audience) {
            return Err(AuthError::Invalid("wrong audience"));
        }
        if sub.is_empty() {
            return Err(AuthError::Invalid("empty subject"));
        }
        let iat = c.iat.map(numeric_date).transpose()?.unwrap_or(0);
        Ok(Claims { sub, groups: c.groups, iss, aud: self.audience.clone(), iat, nbf, exp })
    }
}

/// Signs `claims` with an Ed25519 PKCS#8 PEM private key, as a compact JWT with `alg: EdDSA`.
fn sign(private_pem: &[u8], claims: &impl Serialize) -> Result<String, AuthError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(private_pem).map_err(|e| AuthError::Key(e.to_string()))?;
    let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| AuthError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    let body = serde_json::to_vec(claims).map_err(|e| AuthError::Key(e.to_string()))?;
    let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(body));
    let sig = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    Ok(token)
}

/// Mints a token signed with an Ed25519 PKCS#8 PEM private key.
pub fn mint(
    private_pem: &[u8],
    issuer: &str,
    audience: &str,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    let now = unix_now();
    let claims = Claims {
        sub: user.into(),
        groups: groups.to_vec(),
        iss: issuer.into(),
        aud: audience.into(),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs(),
    };
    sign(private_pem, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keypair() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    fn b64(s: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A token with this exact header, signed correctly by `sk`.
    fn signed_with_header(sk: &str, header: &str, claims: &serde_json::Value) -> String {
        let der = PrivatePkcs8KeyDer::from_pem_slice(sk.as_bytes()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
        format!("{input}.{}", b64(key.sign(input.as_bytes()).as_ref()))
    }

    fn claims(now: u64) -> serde_json::Value {
        json!({"sub": "a", "iss": "iss", "aud": "aud", "iat": now, "nbf": now, "exp": now + 60})
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    impl Verifier {
        fn verify_now(&self, token: &str) -> Result<Claims, AuthError> {
            block(self.verify(token))
        }
    }

    fn reason(r: Result<Claims, AuthError>) -> &'static str {
        match r {
            Err(AuthError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn minted_token_verifies_with_claims() {
        let (sk, pk) = keypair();
        let t = mint(sk.as_bytes(), "iss", "aud", "alice", &["ops".into()], Duration::from_secs(60)).unwrap();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let c = block(v.verify_header(Some(&format!("Bearer {t}")))).unwrap();
        assert_eq!((c.sub.as_str(), c.groups.as_slice()), ("alice", &["ops".to_string()][..]));
    }

    #[test]
    fn other_signer_issuer_audience_and_expiry_are_refused() {
        let (sk, pk) = keypair();
        let (other_sk, _) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let other = mint(other_sk.as_bytes(), "iss", "aud", "a", &[], Duration::from_secs(60)).unwrap();
        assert!(reason(v.verify_now(&other)).contains("signature"));
        let wrong_iss = mint(sk.as_bytes(), "x", "aud", "a", &[], Duration::from_secs(60)).unwrap();
        assert_eq!(reason(v.verify_now(&wrong_iss)), "unknown issuer");
        let wrong_aud = mint(sk.as_bytes(), "iss", "x", "a", &[], Duration::from_secs(60)).unwrap();
        assert_eq!(reason(v.verify_now(&wrong_aud)), "wrong audience");
        assert!(matches!(block(v.verify_header(None)), Err(AuthError::Missing)));
        assert!(matches!(block(v.verify_header(Some("Basic abc"))), Err(AuthError::NotBearer)));
    }

    #[test]
    fn expiry_and_not_before_allow_only_the_leeway() {
        let (sk, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let t = signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &claims(1000));
        // Valid from 1000 - 30 to 1060 + 30.
        assert!(v.verify_at(&t, 1000 - LEEWAY).is_ok());
        assert_eq!(reason(v.verify_at(&t, 1000 - LEEWAY - 1)), "token not valid yet");
        assert!(v.verify_at(&t, 1060 + LEEWAY).is_ok());
        assert_eq!(reason(v.verify_at(&t, 1060 + LEEWAY + 1)), "token expired");
    }

    #[test]
    fn audience_may_be_an_array_that_contains_ours() {
        let (sk, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let now = unix_now();
        let mut c = claims(now);
        c["aud"] = json!(["other", "aud"]);
        assert!(v.verify_now(&signed_with_header(&sk, r#"{"alg":"EdDSA","typ":"JWT"}"#, &c)).is_ok());
        c["aud"] = json!(["other", "aud2"]);
        assert_eq!(reason(v.verify_now(&signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &c))), "wrong audience");
        c["aud"] = json!([]);
        assert_eq!(reason(v.verify_now(&signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &c))), "wrong audience");
    }

    #[test]
    fn missing_claims_crit_headers_and_garbage_are_refused() {
        let (sk, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let now = unix_now();
        for k in ["sub", "iss", "aud", "nbf", "exp"] {
            let mut c = claims(now);
            c.as_object_mut().unwrap().remove(k);
            let t = signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &c);
            assert_eq!(reason(v.verify_now(&t)), "a required claim is missing", "without {k}");
        }
        let mut c = claims(now);
        c["sub"] = json!("");
        assert_eq!(reason(v.verify_now(&signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &c))), "empty subject");
        let crit = signed_with_header(&sk, r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, &claims(now));
        assert!(reason(v.verify_now(&crit)).contains("critical"));
        let good = signed_with_header(&sk, r#"{"alg":"EdDSA"}"#, &claims(now));
        for bad in ["", "a.b", "a.b.c.d", &format!("{good}.x"), &good.replace('.', "..")] {
            assert_eq!(reason(v.verify_now(bad)), "malformed token", "{bad:?}");
        }
        // A claims part that was changed after signing.
        let (h, rest) = good.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let mut c = claims(now);
        c["sub"] = json!("root");
        let tampered = format!("{h}.{}.{s}", b64(c.to_string().as_bytes()));
        assert!(reason(v.verify_now(&tampered)).contains("signature"));
    }

    #[test]
    fn alg_none_hs256_confusion_and_other_algs_are_refused() {
        let (sk, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let body = b64(br#"{"sub":"a","iss":"iss","aud":"aud","iat":0,"nbf":0,"exp":99999999999}"#);
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(reason(v.verify_now(&none)).contains("algorithm"));
        // Without OIDC issuers only EdDSA is accepted, and the refusal names only that.
        let r = reason(v.verify_now(&none));
        assert!(r.contains("(only EdDSA)") && !r.contains("RS256"), "{r}");
        // HS256 keyed with the public key PEM: the classic confusion attack.
        let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), body);
        let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pk.as_bytes()), input.as_bytes());
        let hs = format!("{input}.{}", b64(mac.as_ref()));
        assert!(reason(v.verify_now(&hs)).contains("algorithm"));
        // A valid Ed25519 signature under another alg name (or a case variant) is still refused.
        for alg in ["eddsa", "Ed25519", "ES256"] {
            let t = signed_with_header(&sk, &format!(r#"{{"alg":"{alg}"}}"#), &claims(unix_now()));
            assert!(reason(v.verify_now(&t)).contains("algorithm"), "{alg}");
        }
    }

    /// The gateway shares one `Verifier` between connections and awaits it on a multi-threaded runtime.
    #[test]
    fn verifier_is_shared_across_threads_and_its_future_is_send() {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Send + Sync>() {}
        shared::<Verifier>();
        let (_, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let fut = v.verify_header(None);
        send(&fut);
        assert!(matches!(block(fut), Err(AuthError::Missing)));
    }

    #[test]
    fn keys_of_other_types_are_refused() {
        let rsa_like = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(Verifier::new(rsa_like.public_key_pem().as_bytes(), "i", "a"), Err(AuthError::Key(_))));
        assert!(mint(rsa_like.serialize_pem().as_bytes(), "i", "a", "u", &[], Duration::from_secs(1)).is_err());
    }
}
