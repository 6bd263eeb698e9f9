//! Where a request comes from. Normally the connection's peer; on a connection that presented a gateway
//! certificate, the user's address that the gateway relays in `x-dcos-exec-forwarded-for` (the gateway is then
//! `via`), and the container it resolved the task to in `x-dcos-exec-container`. From any other connection
//! those headers are a forgery: refused, so that nobody can put another address in the audit trail or steer
//! the agent to a container of their choosing.

use dcos_exec_proto::forward::{CONTAINER, FORWARDED_FOR};
use dcos_exec_proto::ErrorCode;
use http::HeaderMap;
use std::net::SocketAddr;

/// Who sent a request, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The user's address.
    pub source: String,
    /// The gateway's address, when a gateway relayed the request.
    pub via: Option<String>,
    /// The container id a gateway resolved the task to.
    pub container: Option<String>,
}

impl Origin {
    /// A request straight from its sender.
    pub fn direct(peer: SocketAddr) -> Origin {
        Origin { source: peer.to_string(), via: None, container: None }
    }
}

/// Forwarding headers that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{0} is honoured only on a connection with a gateway certificate")]
    NotGateway(&'static str),
    #[error("{FORWARDED_FOR} is not an address: {0:?}")]
    BadAddress(String),
    #[error("{0} is not valid UTF-8, or given more than once")]
    BadHeader(&'static str),
}

impl OriginError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OriginError::NotGateway(_) => ErrorCode::Forbidden,
            OriginError::BadAddress(_) | OriginError::BadHeader(_) => ErrorCode::BadRequest,
        }
    }
}

fn one<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, OriginError> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(OriginError::BadHeader(name));
    }
    first.to_str().map(Some).map_err(|_| OriginError::BadHeader(name))
}

/// The origin of a request from `peer`; `gateway` says whether its connection presented a certificate that
/// the gateway CA verified.
pub fn of(peer: SocketAddr, gateway: bool, headers: &HeaderMap) -> Result<Origin, OriginError> {
    let forwarded = one(headers, FORWARDED_FOR)?;
    let container = one(headers, CONTAINER)?;
    if !gateway {
        if forwarded.is_some() {
            return Err(OriginError::NotGateway(FORWARDED_FOR));
        }
        if container.is_some() {
            return Err(OriginError::NotGateway(CONTAINER));
        }
        return Ok(Origin::direct(peer));
    }
    let source = match forwarded {
        Some(f) => f.trim().parse::<SocketAddr>().map_err(|_| OriginError::BadAddress(f.into()))?.to_string(),
        None => peer.to_string(),
    };
    let via = forwarded.map(|_| peer.to_string());
    Ok(Origin { source, via, container: container.map(|c| c.trim().to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_gateways() {
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let fwd = headers(&[(FORWARDED_FOR, "192.0.2.7:5555"), (CONTAINER, "c0ffee")]);
        let o = of(peer, true, &fwd).unwrap();
        assert_eq!(o.source, "192.0.2.7:5555");
        assert_eq!((o.via.as_deref(), o.container.as_deref()), (Some("10.0.0.9:4000"), Some("c0ffee")));
        let e = of(peer, false, &fwd).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Forbidden);
        let only_container = headers(&[(CONTAINER, "c0ffee")]);
        assert_eq!(of(peer, false, &only_container).unwrap_err().code(), ErrorCode::Forbidden);
        assert_eq!(of(peer, false, &HeaderMap::new()).unwrap(), Origin::direct(peer));
        assert_eq!(of(peer, true, &HeaderMap::new()).unwrap(), Origin::direct(peer));
        let bad = headers(&[(FORWARDED_FOR, "me")]);
        assert_eq!(of(peer, true, &bad).unwrap_err().code(), ErrorCode::BadRequest);
        let twice = headers(&[(FORWARDED_FOR, "192.0.2.7:1"), (FORWARDED_FOR, "192.0.2.8:1")]);
        assert_eq!(of(peer, true, &twice).unwrap_err().code(), ErrorCode::BadRequest);
    }
}
