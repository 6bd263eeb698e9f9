//! Who may do what: [`auth`] verifies bearer tokens (and mints them for `init` and `token`), with [`oidc`] for
//! tokens of an organisation's OpenID Connect issuers, [`acl`] decides which user may take which action on which
//! task, [`audit`] writes down every session and refusal, [`metrics`] counts them for Prometheus, [`request`]
//! reads an exec request, [`names`] picks the task a user's name means and [`judge`] decides on it. The agent
//! and the gateway both use it, so a request is read, resolved, judged and counted by the same code at every hop.

// Nothing a user or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod acl;
pub mod audit;
pub mod auth;
pub mod judge;
pub mod metrics;
pub mod names;
pub mod oidc;
pub mod request;
pub mod text;
