//! OCI debug images for `--debug-image`: references, digests, safe layer unpacking and a verified blob cache.

// Public items say what they are: other crates and their authors build on them.
#![warn(missing_docs)]
// Library code returns errors rather than panicking, and leaves the process's stdout and stderr to its
// caller.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

pub mod cache;
pub mod digest;
pub mod layout;
pub mod pull;
pub mod reference;
pub mod unpack;
