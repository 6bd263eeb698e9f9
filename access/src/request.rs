//! Reading an exec request: turn the path and headers into a typed request, or say what is wrong with them.
//! Pure: no I/O, no ACL, no container. The agent and the gateway read a request with this same code.

use dcos_exec_images::pull::PullPolicy;
use dcos_exec_images::reference::ImageRef;
use dcos_exec_proto::{ErrorCode, ExecRequest, EXEC_REQUEST_HEADER};
use http::{header, HeaderMap, HeaderValue};

/// A well-formed exec request, not yet authorized.
#[derive(Debug)]
pub struct ExecParams {
    /// The task id as the client named it (percent-decoded).
    pub task: String,
    pub request: ExecRequest,
    /// `--debug-image`, parsed and normalised.
    pub image: Option<ImageRef>,
    pub pull_policy: PullPolicy,
    /// `--cap-add`, as kernel numbers (not yet checked against the agent's allowlist).
    pub cap_add: Vec<u32>,
    /// The client's `Sec-WebSocket-Key`, answered in the upgrade.
    pub ws_key: HeaderValue,
}

/// What is wrong with a request. All of it is the client's to fix: `bad_request`.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("only GET is supported")]
    Method,
    #[error("no such endpoint: {0}")]
    NoEndpoint(String),
    #[error("task id is not valid percent-encoded UTF-8")]
    TaskEncoding,
    #[error("missing {EXEC_REQUEST_HEADER} header")]
    MissingRequest,
    #[error("{0}")]
    Request(String),
    #[error("no command given")]
    NoCommand,
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("exec needs a WebSocket upgrade")]
    NotUpgrade,
    #[error("exec needs an RFC 6455 WebSocket handshake: {0}")]
    Handshake(&'static str),
    #[error("--debug-image: {0}")]
    Image(String),
    #[error("{0}")]
    PullPolicy(String),
    #[error("--cap-add needs --debug-image")]
    CapAddWithoutImage,
    #[error("{0}")]
    Capability(String),
}

impl ParseError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

/// Decodes the task segment of `/v1/tasks/{task}/exec` (the CLI percent-encodes every byte outside the
/// unreserved set). A `%` not followed by two hex digits is an error, not a literal.
pub fn task_segment(seg: &str) -> Result<String, ParseError> {
    let b = seg.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return Err(ParseError::TaskEncoding);
    }
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ParseError::TaskEncoding)
}

/// Whether `name`'s comma-separated values include `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks the WebSocket opening handshake of RFC 6455 (section 4.2.1) and returns its key. HTTP/1.1 is
/// checked with [`http_version`], which needs the request line.
pub fn handshake(headers: &HeaderMap) -> Result<HeaderValue, ParseError> {
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(ParseError::NotUpgrade);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(ParseError::Handshake("Connection must include \"Upgrade\""));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(ParseError::Handshake("Sec-WebSocket-Version must be 13"));
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        // The key is 16 random bytes in base64: 24 characters.
        (Some(k), None) if k.len() == 24 => Ok(k.clone()),
        _ => Err(ParseError::Handshake("one Sec-WebSocket-Key of 16 bytes in base64 is needed")),
    }
}

/// A WebSocket upgrade needs HTTP/1.1 (RFC 6455 section 4.1).
pub fn http_version(v: http::Version) -> Result<(), ParseError> {
    if v == http::Version::HTTP_11 {
        Ok(())
    } else {
        Err(ParseError::Handshake("HTTP/1.1 is needed"))
    }
}

/// Parses the exec request of `task` from its headers.
pub fn exec_request(task: String, headers: &HeaderMap) -> Result<ExecParams, ParseError> {
    let raw = headers.get(EXEC_REQUEST_HEADER).and_then(|v| v.to_str().ok()).ok_or(ParseError::MissingRequest)?;
    let request = ExecRequest::from_header(raw).map_err(|e| ParseError::Request(e.to_string()))?;
    if request.command.is_empty() {
        return Err(ParseError::NoCommand);
    }
    // No C string holds a NUL: refused here, not found missing (or cut short) in the container.
    let nul = |s: &str| s.contains('\0');
    if request.command.iter().any(|a| nul(a)) {
        return Err(ParseError::Nul("the command"));
    }
    if request.workdir.as_deref().is_some_and(nul) {
        return Err(ParseError::Nul("the working directory"));
    }
    if request.user.as_deref().is_some_and(nul) {
        return Err(ParseError::Nul("the user"));
    }
    if request.env.iter().any(|e| nul(e)) {
        return Err(ParseError::Nul("an environment variable"));
    }
    let ws_key = handshake(headers)?;
    let image = request
        .debug_image
        .as_deref()
        .map(ImageRef::parse)
        .transpose()
        .map_err(|e| ParseError::Image(e.to_string()))?;
    let pull_policy = request.pull_policy.as_deref().unwrap_or("").parse().map_err(ParseError::PullPolicy)?;
    if !request.cap_add.is_empty() && image.is_none() {
        return Err(ParseError::CapAddWithoutImage);
    }
    let cap_add = dcos_exec_container::caps::parse_names(&request.cap_add).map_err(ParseError::Capability)?;
    Ok(ExecParams { task, request, image, pull_policy, cap_add, ws_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(req: &serde_json::Value, upgrade: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        let r: ExecRequest = serde_json::from_value(req.clone()).unwrap();
        h.insert(EXEC_REQUEST_HEADER, r.to_header().parse().unwrap());
        if upgrade {
            h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
            h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
            h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
            h.insert(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        }
        h
    }

    fn parse(req: serde_json::Value) -> Result<ExecParams, ParseError> {
        exec_request("t".into(), &headers(&req, true))
    }

    #[test]
    fn task_segments_are_percent_decoded() {
        assert_eq!(task_segment("web.1").unwrap(), "web.1");
        assert_eq!(task_segment("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(task_segment("%e2%9c%93").unwrap(), "\u{2713}");
        for bad in ["bad%2", "bad%zz", "%ff", "%", "a%%41"] {
            assert!(matches!(task_segment(bad), Err(ParseError::TaskEncoding)), "{bad}");
        }
    }

    #[test]
    fn a_plain_request_parses() {
        let p = parse(serde_json::json!({"command": ["sh", "-c", "true"], "tty": true})).unwrap();
        assert_eq!(p.request.command, ["sh", "-c", "true"]);
        assert!(p.request.tty && p.image.is_none());
        assert_eq!(p.ws_key, "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        let mut h = HeaderMap::new();
        assert!(matches!(exec_request("t".into(), &h), Err(ParseError::MissingRequest)));
        h.insert(EXEC_REQUEST_HEADER, "!!not base64".parse().unwrap());
        assert!(matches!(exec_request("t".into(), &h), Err(ParseError::Request(_))));
        assert!(matches!(parse(serde_json::json!({"command": []})), Err(ParseError::NoCommand)));
        let plain = headers(&serde_json::json!({"command": ["true"]}), false);
        assert!(matches!(exec_request("t".into(), &plain), Err(ParseError::NotUpgrade)));
        let img = |extra: serde_json::Value| {
            let mut r = serde_json::json!({"command": ["sh"]});
            r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(r)
        };
        assert!(matches!(img(serde_json::json!({"debug_image": "UPPER/Case::x"})), Err(ParseError::Image(_))));
        assert!(matches!(
            img(serde_json::json!({"debug_image": "busybox", "pull_policy": "sometimes"})),
            Err(ParseError::PullPolicy(_))
        ));
        assert!(matches!(img(serde_json::json!({"cap_add": ["SYS_PTRACE"]})), Err(ParseError::CapAddWithoutImage)));
        assert!(matches!(
            img(serde_json::json!({"debug_image": "busybox", "cap_add": ["NOT_A_CAP"]})),
            Err(ParseError::Capability(_))
        ));
        let ok = img(serde_json::json!({"debug_image": "busybox", "cap_add": ["SYS_PTRACE"]})).unwrap();
        assert_eq!(ok.image.unwrap().to_string(), "docker.io/library/busybox:latest");
        for (field, v) in [
            ("command", serde_json::json!(["id\0x"])),
            ("command", serde_json::json!(["sh", "a\0"])),
            ("workdir", serde_json::json!("/tmp\0/x")),
            ("user", serde_json::json!("root\0")),
            ("env", serde_json::json!(["A=b\0c"])),
        ] {
            let mut r = serde_json::json!({"command": ["sh"]});
            r[field] = v;
            let e = parse(r).unwrap_err();
            assert!(matches!(e, ParseError::Nul(_)), "{field}: {e:?}");
            assert_eq!(e.code(), ErrorCode::BadRequest);
        }
        for (name, value, want) in [
            (header::SEC_WEBSOCKET_VERSION, "8", "Version"),
            (header::CONNECTION, "keep-alive", "Connection"),
            (header::SEC_WEBSOCKET_KEY, "short", "Key"),
        ] {
            let mut h = headers(&serde_json::json!({"command": ["true"]}), true);
            h.insert(name, value.parse().unwrap());
            let e = exec_request("t".into(), &h).unwrap_err();
            assert!(matches!(e, ParseError::Handshake(m) if m.contains(want)), "{value}");
        }
        let mut no_version = headers(&serde_json::json!({"command": ["true"]}), true);
        no_version.remove(header::SEC_WEBSOCKET_VERSION);
        assert!(matches!(exec_request("t".into(), &no_version), Err(ParseError::Handshake(_))));
        assert!(http_version(http::Version::HTTP_10).is_err() && http_version(http::Version::HTTP_11).is_ok());
        for e in [ParseError::NoCommand, ParseError::NotUpgrade, ParseError::TaskEncoding] {
            assert_eq!(e.code(), ErrorCode::BadRequest);
        }
    }
}
