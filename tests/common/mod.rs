//! Support code shared by the integration tests of the root package. Each test binary includes it
//! with `mod common;` and uses only part of it.

#[allow(dead_code)]
pub mod kvm_host;
