//! What the agent and the gateway share as HTTPS servers, so that both accept, admit, tune, hand over and shut
//! down connections the same way: [`listener`] (the accept loop until SIGTERM/SIGINT, socket tuning),
//! [`gate`] (the cap on connections not yet authenticated), [`connection`] (TLS handshake and HTTP/1.1 with
//! upgrades), [`tls`] (certificates from PEM files), [`logging`] and [`config`] (what both config files need).

// Nothing a client or the network controls may panic the process.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod connection;
pub mod gate;
pub mod listener;
pub mod logging;
pub mod tls;
