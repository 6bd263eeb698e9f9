//! Content digests (`sha256:<hex>`) and a reader that verifies size and digest as bytes stream through.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// Errors from parsing a digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `ALGORITHM:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<hex>)")]
    MissingAlgorithm(String),
    /// An algorithm other than sha256.
    #[error("unsupported digest algorithm {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    /// Not 64 lowercase hex characters after `sha256:`.
    #[error("sha256 digest {0:?} must be 64 lowercase hex characters")]
    BadHex(String),
}

/// A sha256 content digest. Stored as raw bytes so comparisons are exact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    bytes: [u8; 32],
}

impl Digest {
    /// Digest of an in-memory byte slice.
    pub fn of(data: &[u8]) -> Self {
        Self::from_bytes(Sha256::digest(data).into())
    }

    /// The digest whose sha256 value is `bytes`.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// The raw sha256 value.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Always `sha256`; kept as a method so callers need not hardcode it.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64-character lowercase hex part.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex_part) = s.split_once(':').ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        }
        // Uppercase is rejected: the OCI spec requires lowercase and mixed forms would alias cache paths.
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::BadHex(s.to_string()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| DigestError::BadHex(s.to_string()))?;
        Ok(Self { bytes })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a stream did not match the descriptor it was fetched by. Carried inside the `io::Error` (kind
/// `InvalidData`) that [`VerifyingReader`] returns, so callers can tell it apart from a transport error with
/// [`VerifyError::find`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The stream ended at a size other than the descriptor's.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {got}")]
    ShortOrLong {
        /// The descriptor's digest.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The bytes the stream had.
        got: u64,
    },
    /// The stream went on past the descriptor's size (reading stopped there).
    #[error("size mismatch for {digest}: expected {expected} bytes, got at least {got}")]
    Oversized {
        /// The descriptor's digest.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The bytes read before stopping.
        got: u64,
    },
    /// The content hashes to another digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The descriptor's digest.
        expected: Digest,
        /// The content's.
        actual: Digest,
    },
}

impl VerifyError {
    /// The verification failure inside `e`, if that is what `e` is.
    pub fn find(e: &io::Error) -> Option<&VerifyError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|x| x as _);
        while let Some(err) = cur {
            if let Some(v) = err.downcast_ref::<VerifyError>() {
                return Some(v);
            }
            if let Some(v) = err.downcast_ref::<io::Error>().and_then(VerifyError::find) {
                return Some(v);
            }
            cur = err.source();
        }
        None
    }
}

/// Wraps a reader, hashing everything read; at EOF fails with `InvalidData` unless both the byte count and the
/// digest match. Also fails as soon as more bytes than `expected_size` arrive, so an oversized stream cannot fill
/// the disk before being rejected.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected_digest: Digest,
    expected_size: u64,
    read: u64,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Reads `inner`, which must be exactly `expected_size` bytes hashing to `expected_digest`.
    pub fn new(inner: R, expected_digest: Digest, expected_size: u64) -> Self {
        Self { inner, hasher: Sha256::new(), expected_digest, expected_size, read: 0, verified: false }
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.read != self.expected_size {
            return Err(invalid(VerifyError::ShortOrLong {
                digest: self.expected_digest,
                expected: self.expected_size,
                got: self.read,
            }));
        }
        let actual = Digest::from_bytes(self.hasher.clone().finalize().into());
        if actual != self.expected_digest {
            return Err(invalid(VerifyError::Mismatch { expected: self.expected_digest, actual }));
        }
        self.verified = true;
        Ok(())
    }
}

fn invalid(e: VerifyError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !self.verified {
                self.finish()?;
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(invalid(VerifyError::Oversized {
                digest: self.expected_digest,
                expected: self.expected_size,
                got: self.read,
            }));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display_roundtrip() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert!(matches!("abc".parse::<Digest>(), Err(DigestError::MissingAlgorithm(_))));
        assert!(matches!(
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!("sha256:abcd".parse::<Digest>(), Err(DigestError::BadHex(_))));
        assert!(matches!(
            EMPTY.to_uppercase().replace("SHA256", "sha256").parse::<Digest>(),
            Err(DigestError::BadHex(_))
        ));
        let nonhex = format!("sha256:{}", "g".repeat(64));
        assert!(matches!(nonhex.parse::<Digest>(), Err(DigestError::BadHex(_))));
        assert!("sha256:".parse::<Digest>().is_err());
    }

    fn read_all(data: &[u8], d: Digest, size: u64) -> io::Result<Vec<u8>> {
        let mut r = VerifyingReader::new(data, d, size);
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        assert!(r.verified);
        Ok(out)
    }

    #[test]
    fn verifying_reader_accepts_matching_stream() {
        let data = b"hello world".repeat(1000);
        let out = read_all(&data, Digest::of(&data), data.len() as u64).unwrap();
        assert_eq!(out, data);
        assert_eq!(read_all(b"", Digest::of(b""), 0).unwrap(), b"");
    }

    #[test]
    fn verifying_reader_rejects_wrong_digest() {
        let err = read_all(b"hello", Digest::of(b"hellp"), 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(msg.contains(&Digest::of(b"hellp").to_string()), "{msg}");
        assert!(msg.contains(&Digest::of(b"hello").to_string()), "{msg}");
        assert!(matches!(VerifyError::find(&err), Some(VerifyError::Mismatch { .. })));
    }

    #[test]
    fn verifying_reader_rejects_short_stream() {
        let err = read_all(b"hell", Digest::of(b"hello"), 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("expected 5 bytes, got 4"), "{err}");
        assert!(matches!(VerifyError::find(&err), Some(VerifyError::ShortOrLong { expected: 5, got: 4, .. })));
    }

    #[test]
    fn verifying_reader_rejects_oversized_stream_early() {
        let data = vec![7u8; 10_000];
        let mut r = VerifyingReader::new(&data[..], Digest::of(&data[..5]), 5);
        let mut buf = [0u8; 3];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let err = r.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("expected 5 bytes"), "{err}");
        assert!(!r.verified);
        assert!(matches!(VerifyError::find(&err), Some(VerifyError::Oversized { expected: 5, .. })));
    }
}
