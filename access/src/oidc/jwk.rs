//! JSON Web Keys (RFC 7517) of an issuer, as `ring` verification keys. The algorithm a key verifies follows
//! from the key itself (RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA); a JWK `alg` that says otherwise
//! makes the key unusable rather than changing what it verifies. Symmetric (`oct`) keys and encryption keys
//! are skipped: a public JWKS never yields an HMAC key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: &'static str,
    material: Material,
}

enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point (0x04 || x || y).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(s: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s?.trim_end_matches('=')).ok()
}

impl Key {
    fn from_jwk(j: Jwk) -> Option<Key> {
        if j.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let (alg, material) = match (j.kty.as_str(), j.crv.as_deref()) {
            ("RSA", _) => {
                let (n, e) = (b64(j.n.as_ref())?, b64(j.e.as_ref())?);
                ("RS256", Material::Rsa { n, e })
            }
            ("EC", Some("P-256")) => {
                let (x, y) = (b64(j.x.as_ref())?, b64(j.y.as_ref())?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                ("ES256", Material::P256(point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(j.x.as_ref())?;
                if x.len() != 32 {
                    return None;
                }
                ("EdDSA", Material::Ed25519(x))
            }
            _ => return None,
        };
        if j.alg.as_deref().is_some_and(|a| a != alg) {
            return None;
        }
        Some(Key { kid: j.kid, alg, material })
    }

    /// Verifies `sig` over `signed` with this key's one algorithm.
    pub fn verify(&self, signed: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig).is_ok()
            }
            Material::P256(p) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p).verify(signed, sig).is_ok()
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x).verify(signed, sig).is_ok(),
        }
    }
}

/// The usable signature keys of a JWKS document; keys of other types are skipped, a broken document is an
/// error.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, serde_json::Error> {
    let set: Jwks = serde_json::from_slice(body)?;
    Ok(set.keys.into_iter().filter_map(|v| serde_json::from_value::<Jwk>(v).ok()).filter_map(Key::from_jwk).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_map_to_their_one_algorithm_and_oct_is_skipped() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
            {"kty": "EC", "crv": "P-256", "x": x, "y": x, "kid": "ec"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "lying", "alg": "HS256"},
            {"kty": "EC", "crv": "P-384", "x": x, "y": x, "kid": "p384"},
            "not a key"
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let got: Vec<(Option<&str>, &str)> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(got, [(Some("ed"), "EdDSA"), (Some("ec"), "ES256"), (Some("rsa"), "RS256")]);
        assert!(parse_jwks(b"{}").is_err());
    }
}
