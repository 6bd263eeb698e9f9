//! OCI debug images for `--debug-image`: references, digests, safe layer unpacking and a verified blob cache.

pub mod cache;
pub mod digest;
pub mod layout;
pub mod pull;
pub mod reference;
pub mod unpack;
