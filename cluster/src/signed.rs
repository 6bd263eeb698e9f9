//! The signed ACL document kept in etcd at `{prefix}/acl`. An etcd client certificate is held by every agent
//! and gateway, so etcd's own access control cannot tell the operator from a compromised node: the ACL is
//! signed with an Ed25519 key only the operator holds (`pki/acl-signing.key` of `init cluster`), and agents
//! and gateways put in force only a document whose signature verifies under the public key of their config.
//!
//! The document is JSON: `{"format": "dcos-exec-acl/1", "issued": UNIX_SECONDS, "acl": "TOML", "signature":
//! "BASE64"}`. The signature covers the format, the issue time and the ACL text, so that none of them can be
//! swapped; a reader also refuses a document issued before the one in force (an old, wider ACL replayed).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// The `format` of the documents this version writes and reads.
pub const FORMAT: &str = "dcos-exec-acl/1";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a document is refused, or a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignedAclError {
    /// The key file is not an Ed25519 key of the expected kind.
    #[error("ACL-signing key: {0}")]
    Key(String),
    /// The value is not a signed document (e.g. plain TOML written by hand or by an older `init`).
    #[error("not a signed ACL document ({0}); write the ACL with `dcos-exec-agent acl push`")]
    Format(String),
    /// The signature does not verify under the configured key.
    #[error("the signature does not verify under the ACL-signing key: the document was not written by its holder")]
    Signature,
    /// Signed, but older than the ACL in force.
    #[error("issued at {issued}, before the ACL in force (issued at {in_force}): a replayed old document")]
    Replayed {
        /// The document's issue time.
        issued: u64,
        /// The issue time of the document in force.
        in_force: u64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    issued: u64,
    acl: String,
    signature: String,
}

fn message(issued: u64, acl: &str) -> Vec<u8> {
    format!("{FORMAT}\n{issued}\n{acl}").into_bytes()
}

/// The public half of the ACL-signing key, as agents and gateways hold it.
#[derive(Clone)]
pub struct AclKey {
    key: UnparsedPublicKey<Vec<u8>>,
}

impl std::fmt::Debug for AclKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AclKey")
    }
}

/// A verified document: the ACL text and when it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The ACL's TOML text.
    pub acl: String,
    /// Unix seconds.
    pub issued: u64,
}

impl AclKey {
    /// From an Ed25519 SubjectPublicKeyInfo PEM (`acl-signing.pub`).
    pub fn from_pem(public_pem: &[u8]) -> Result<AclKey, SignedAclError> {
        let spki =
            SubjectPublicKeyInfoDer::from_pem_slice(public_pem).map_err(|e| SignedAclError::Key(e.to_string()))?;
        let raw = spki
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SignedAclError::Key("not an Ed25519 public key".into()))?;
        Ok(AclKey { key: UnparsedPublicKey::new(&ED25519, raw.to_vec()) })
    }

    /// Verifies `value` (the bytes of the etcd key) and returns what it signs.
    pub fn verify(&self, value: &[u8]) -> Result<Verified, SignedAclError> {
        let d: Document = serde_json::from_slice(value).map_err(|e| SignedAclError::Format(e.to_string()))?;
        if d.format != FORMAT {
            return Err(SignedAclError::Format(format!("format {:?}, expected {FORMAT:?}", d.format)));
        }
        let sig = STANDARD.decode(&d.signature).map_err(|e| SignedAclError::Format(format!("signature: {e}")))?;
        self.key.verify(&message(d.issued, &d.acl), &sig).map_err(|_| SignedAclError::Signature)?;
        Ok(Verified { acl: d.acl, issued: d.issued })
    }
}

/// Signs `acl` (TOML text) with an Ed25519 PKCS#8 PEM private key (`acl-signing.key`), issued at `issued`
/// (unix seconds), as the document to write at `{prefix}/acl`.
pub fn sign(private_pem: &[u8], acl: &str, issued: u64) -> Result<String, SignedAclError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(private_pem).map_err(|e| SignedAclError::Key(e.to_string()))?;
    let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| SignedAclError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    let signature = STANDARD.encode(key.sign(&message(issued, acl)).as_ref());
    let d = Document { format: FORMAT.into(), issued, acl: acl.into(), signature };
    serde_json::to_string_pretty(&d).map_err(|e| SignedAclError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Vec<u8>, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = |label: &str, der: &[u8]| {
            format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", STANDARD.encode(der)).into_bytes()
        };
        use ring::signature::KeyPair;
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(kp.public_key().as_ref());
        (pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki))
    }

    #[test]
    fn a_signed_document_verifies_and_any_change_is_refused() {
        let (private, public) = pair();
        let key = AclKey::from_pem(&public).unwrap();
        let doc = sign(&private, "[[rule]]\n", 42).unwrap();
        assert_eq!(key.verify(doc.as_bytes()).unwrap(), Verified { acl: "[[rule]]\n".into(), issued: 42 });
        let mut v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        v["acl"] = "[[rule]]\nsubjects = [\"user:eve\"]\n".into();
        assert!(matches!(key.verify(v.to_string().as_bytes()), Err(SignedAclError::Signature)));
        let mut v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        v["issued"] = 43.into();
        assert!(matches!(key.verify(v.to_string().as_bytes()), Err(SignedAclError::Signature)));
        // Signed with another key, or not signed at all.
        let (other, _) = pair();
        assert!(matches!(
            key.verify(sign(&other, "[[rule]]\n", 42).unwrap().as_bytes()),
            Err(SignedAclError::Signature)
        ));
        assert!(matches!(key.verify(b"[[rule]]\nsubjects = []\n"), Err(SignedAclError::Format(_))));
        assert!(AclKey::from_pem(&private).is_err());
    }
}
