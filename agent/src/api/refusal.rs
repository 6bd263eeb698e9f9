//! A request refused before the upgrade: a wire code, a message, and the HTTP response that carries them.

use crate::api::authorize::{CapNotAllowed, CapReachesHost, Denied, ImageRefusal};
use crate::api::origin::OriginError;
use crate::api::parse::ParseError;
use crate::api::upgrade::AuditFailed;
use crate::limits::TooManySessions;
use crate::runtime::RuntimeError;
use crate::shutdown::ShuttingDown;
use dcos_exec_access::auth::AuthError;
use dcos_exec_proto::{ErrorBody, ErrorCode};
use http::{Response, StatusCode};

/// Why a request was refused. Built only from typed errors, each of which knows its own code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    /// The JSON error body with the code's HTTP status.
    pub fn response(&self) -> Response<super::Body> {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::json_response(status, &ErrorBody { code: self.code, message: self.message.clone() })
    }
}

/// Each refusal type brings its code; this is the only place they become a [`Refusal`]. Messages quote
/// request and container data (field names, task ids, annotations): their control characters are escaped
/// here, once, so no log line, audit record or terminal that shows a refusal gets them raw.
macro_rules! refusal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Refusal {
            fn from(e: $t) -> Self {
                Refusal { code: e.code(), message: dcos_exec_access::text::escape_controls(&e.to_string()).into_owned() }
            }
        }
    )*};
}
refusal_from!(
    AuthError,
    ParseError,
    RuntimeError,
    Denied,
    CapNotAllowed,
    CapReachesHost,
    ImageRefusal,
    TooManySessions,
    ShuttingDown,
    OriginError,
    AuditFailed
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_maps_to_its_wire_code() {
        let cases: Vec<(Refusal, ErrorCode)> = vec![
            (AuthError::Missing.into(), ErrorCode::Unauthenticated),
            (AuthError::Invalid("token expired").into(), ErrorCode::Unauthenticated),
            (ParseError::NoCommand.into(), ErrorCode::BadRequest),
            (RuntimeError::NotFound("t".into()).into(), ErrorCode::TaskNotFound),
            (
                RuntimeError::NotRunning { id: "c".into(), state: "stopped".into() }.into(),
                ErrorCode::ContainerNotRunning,
            ),
            (
                RuntimeError::Ambiguous { task: "t".into(), candidates: vec!["t1".into(), "t2".into()] }.into(),
                ErrorCode::Ambiguous,
            ),
            (
                Denied { user: "u".into(), action: "exec".into(), image: None, task: "t".into() }.into(),
                ErrorCode::Forbidden,
            ),
            (TooManySessions { user: "u".into(), limit: 3 }.into(), ErrorCode::Forbidden),
            (CapNotAllowed { cap: "SYS_ADMIN".into(), allowed: "SYS_PTRACE".into() }.into(), ErrorCode::Forbidden),
            (CapReachesHost { cap: "SYS_PTRACE".into(), namespace: "pid" }.into(), ErrorCode::Forbidden),
            (ShuttingDown.into(), ErrorCode::Internal),
            (AuditFailed.into(), ErrorCode::Internal),
        ];
        let forged = Refusal::from(ParseError::Request("unknown field `x\n2026 INFO forged\u{1b}[8m`".into()));
        assert_eq!(forged.message, "unknown field `x\\n2026 INFO forged\\u{1b}[8m`");
        for (r, want) in cases {
            assert_eq!(r.code, want, "{}", r.message);
            assert_eq!(r.response().status().as_u16(), want.http_status(), "{}", r.message);
        }
    }
}
