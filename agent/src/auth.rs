//! Bearer-token authentication: Ed25519-signed JWTs (EdDSA) with issuer, audience, expiry and not-before.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The claims of a dcos-exec token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// Groups the user belongs to, as used by ACL subjects `group:NAME`.
    #[serde(default)]
    pub groups: Vec<String>,
    pub iss: String,
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
    Invalid(String),
    #[error("bad key: {0}")]
    Key(String),
}

/// Verifies tokens for one issuer and audience.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// `public_pem` is an Ed25519 SubjectPublicKeyInfo PEM.
    pub fn new(public_pem: &[u8], issuer: &str, audience: &str) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ed_pem(public_pem).map_err(|e| AuthError::Key(e.to_string()))?;
        // Only EdDSA: this closes `alg: none` and HS256-with-the-public-key confusion.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(Verifier { key, validation })
    }

    /// Checks an `Authorization` header value and returns the claims.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::NotBearer)?.trim();
        self.verify(token)
    }

    /// Checks a raw token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            AuthError::Invalid(
                match e.kind() {
                    ExpiredSignature => "token expired",
                    ImmatureSignature => "token not valid yet",
                    InvalidSignature => "signature does not verify (token of another signer?)",
                    InvalidAlgorithm | InvalidAlgorithmName => "algorithm not accepted (only EdDSA)",
                    InvalidIssuer => "wrong issuer",
                    InvalidAudience => "wrong audience",
                    MissingRequiredClaim(_) => "a required claim is missing",
                    _ => "malformed token",
                }
                .to_string(),
            )
        })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty subject".into()));
        }
        Ok(data.claims)
    }
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
    let key = EncodingKey::from_ed_pem(private_pem).map_err(|e| AuthError::Key(e.to_string()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims {
        sub: user.into(),
        groups: groups.to_vec(),
        iss: issuer.into(),
        aud: audience.into(),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).map_err(|e| AuthError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keypair() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    #[test]
    fn minted_token_verifies_with_claims() {
        let (sk, pk) = keypair();
        let t = mint(sk.as_bytes(), "iss", "aud", "alice", &["ops".into()], Duration::from_secs(60)).unwrap();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let c = v.verify_header(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!((c.sub.as_str(), c.groups.as_slice()), ("alice", &["ops".to_string()][..]));
    }

    #[test]
    fn other_signer_issuer_audience_and_expiry_are_refused() {
        let (sk, pk) = keypair();
        let (other_sk, _) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let other = mint(other_sk.as_bytes(), "iss", "aud", "a", &[], Duration::from_secs(60)).unwrap();
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(m)) if m.contains("signature")));
        let wrong_iss = mint(sk.as_bytes(), "x", "aud", "a", &[], Duration::from_secs(60)).unwrap();
        assert!(v.verify(&wrong_iss).is_err());
        let wrong_aud = mint(sk.as_bytes(), "iss", "x", "a", &[], Duration::from_secs(60)).unwrap();
        assert!(v.verify(&wrong_aud).is_err());
        assert!(matches!(v.verify_header(None), Err(AuthError::Missing)));
        assert!(matches!(v.verify_header(Some("Basic abc")), Err(AuthError::NotBearer)));
    }

    #[test]
    fn alg_none_and_hs256_confusion_are_refused() {
        let (_, pk) = keypair();
        let v = Verifier::new(pk.as_bytes(), "iss", "aud").unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(r#"{"sub":"a","iss":"iss","aud":"aud","iat":0,"nbf":0,"exp":99999999999}"#);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(v.verify(&none).is_err());
        // HS256 keyed with the public key PEM: the classic confusion attack.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::from_str::<serde_json::Value>(
                r#"{"sub":"a","iss":"iss","aud":"aud","iat":0,"nbf":0,"exp":99999999999}"#,
            )
            .unwrap(),
            &EncodingKey::from_secret(pk.as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs), Err(AuthError::Invalid(m)) if m.contains("algorithm")));
    }
}
