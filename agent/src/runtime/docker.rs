//! Docker: what only the engine knows about its containers (names, Compose labels, exit statuses), from the Engine
//! API on its unix socket. One endpoint is needed, so it is asked with hyper (already the agent's HTTP stack)
//! rather than a full Engine API client. The exec itself never goes through Docker: it uses the OCI bundle that
//! runc's state (Docker's runc root) points at.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A list bigger than this is refused rather than buffered (a host runs thousands of containers at most).
const MAX_BODY: usize = 64 << 20;

/// Why an engine did not answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    #[error("{0}: HTTP: {1}")]
    Http(PathBuf, String),
    #[error("{0}: answered HTTP {1}")]
    Status(PathBuf, u16),
    #[error("{0}: not a container list: {1}")]
    Json(PathBuf, serde_json::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(PathBuf, Duration),
}

/// One entry of `GET /containers/json?all=1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Entry {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

impl Entry {
    /// Docker's name without the leading `/` (links add more names, with a second `/`: not the container's own).
    pub fn name(&self) -> Option<String> {
        let own = self.names.iter().find(|n| n.matches('/').count() <= 1).or(self.names.first())?;
        Some(own.trim_start_matches('/').to_string())
    }

    pub fn label(&self, key: &str) -> Option<String> {
        self.labels.as_ref()?.get(key).cloned()
    }

    /// The exit status in `Exited (137) 5 seconds ago`.
    pub fn exit_code(&self) -> Option<i32> {
        let rest = self.status.strip_prefix("Exited (")?;
        rest.split(')').next()?.parse().ok()
    }
}

/// Every container of the engine on `socket`, stopped ones included.
pub async fn containers(socket: &Path, timeout: Duration) -> Result<Vec<Entry>, EngineError> {
    match tokio::time::timeout(timeout, ask(socket)).await {
        Ok(r) => r,
        Err(_) => Err(EngineError::Timeout(socket.into(), timeout)),
    }
}

async fn ask(socket: &Path) -> Result<Vec<Entry>, EngineError> {
    let body = get(socket, "/containers/json?all=1").await?.ok_or(EngineError::Status(socket.into(), 404))?;
    serde_json::from_slice(&body).map_err(|e| EngineError::Json(socket.into(), e))
}

/// `GET path` of the Engine API on `socket`: the body, or `None` when the engine answers 404.
pub async fn get(socket: &Path, path: &str) -> Result<Option<Bytes>, EngineError> {
    let http = |e: &dyn std::fmt::Display| EngineError::Http(socket.into(), e.to_string());
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| EngineError::Connect(socket.into(), e))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let resp = send.send_request(req).await.map_err(|e| http(&e))?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(EngineError::Status(socket.into(), resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| http(&*e))?.to_bytes();
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_exit_statuses_as_the_engine_gives_them() {
        let v: Vec<Entry> = serde_json::from_str(
            r#"[{"Id":"7fee","Names":["/other/alias","/web-1"],"State":"exited","Status":"Exited (137) 2 seconds ago",
                 "Labels":{"com.docker.compose.service":"web"},"Image":"bb:1"},
                {"Id":"aa","Names":["/db"],"State":"running","Status":"Up 3 minutes","Labels":null}]"#,
        )
        .unwrap();
        assert_eq!(v[0].name().as_deref(), Some("web-1"));
        assert_eq!(v[0].exit_code(), Some(137));
        assert_eq!(v[0].label("com.docker.compose.service").as_deref(), Some("web"));
        assert_eq!((v[1].name().as_deref(), v[1].exit_code(), v[1].label("x")), (Some("db"), None, None));
    }

    /// A socket nobody listens on, and one that is not there: errors, quickly, never a hang.
    #[tokio::test]
    async fn an_engine_that_does_not_answer_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let silent = tmp.path().join("silent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
        let t = Duration::from_millis(300);
        assert!(matches!(containers(&silent, t).await, Err(EngineError::Timeout(..))));
        assert!(matches!(containers(&tmp.path().join("none.sock"), t).await, Err(EngineError::Connect(..))));
    }
}
