//! Step 2 of an exec request: turn the path and headers into a typed request. The code is shared with the
//! gateway, which reads the same request before it relays it.

pub use dcos_exec_access::request::*;
