//! The identity of a node in its agent's server certificate: a URI subject alternative name
//! `urn:dcos-exec:node:NAME` (NAME percent-encoded). `init cluster` issues each agent's certificate with it, and
//! a gateway relays a session for node N only to an agent whose certificate names N: a node record rewritten
//! in etcd (by anyone holding an etcd client certificate) cannot send another node's sessions, and the users'
//! tokens with them, to a listener of its choosing, nor to the gateway itself (whose certificate names no node).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What the URI starts with.
pub const NODE_URI_PREFIX: &str = "urn:dcos-exec:node:";

/// Everything but RFC 3986's unreserved characters is encoded.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The URI that names `node` in its agent's certificate.
pub fn node_uri(node: &str) -> String {
    format!("{NODE_URI_PREFIX}{}", utf8_percent_encode(node, ENCODED))
}

/// The node identities a certificate (DER) carries, or why it cannot be read.
pub fn nodes_named(cert_der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("certificate: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| format!("certificate: {e}"))?;
    Ok(san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(NODE_URI_PREFIX) => Some(u.to_string()),
            _ => None,
        })
        .collect())
}

/// Checks that a server certificate (DER) names `node`; the error says what it names instead, for people.
pub fn check(cert_der: &[u8], node: &str) -> Result<(), String> {
    let names = nodes_named(cert_der)?;
    if names.contains(&node_uri(node)) {
        return Ok(());
    }
    Err(match names.as_slice() {
        [] => "its certificate names no node (not an agent's, or issued by an `init cluster` older than node \
               identities: reissue the agents' certificates with `init cluster`)"
            .to_string(),
        other => format!("its certificate is that of {}", other.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_unambiguous_uris() {
        assert_eq!(node_uri("host-1.example"), "urn:dcos-exec:node:host-1.example");
        assert_eq!(node_uri("a:b c"), "urn:dcos-exec:node:a%3Ab%20c");
        assert_ne!(node_uri("a%3Ab"), node_uri("a:b"));
    }
}
