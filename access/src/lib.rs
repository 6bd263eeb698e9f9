//! Who may do what: [`auth`] verifies bearer tokens (and mints them for `init` and `token`), with [`oidc`] for
//! tokens of an organisation's OpenID Connect issuers, [`acl`] decides which user may take which action on which
//! task, [`audit`] writes down every session and refusal, and [`metrics`] counts them for Prometheus. The agent
//! and the gateway both use it, so a request is judged (and counted) by the same code at every hop.

// Nothing a user or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod acl;
pub mod audit;
pub mod auth;
pub mod metrics;
pub mod oidc;
