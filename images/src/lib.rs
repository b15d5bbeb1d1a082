//! OCI images for bulkhead: references, the registry client, `docker save` and OCI-layout
//! archives, the content-addressed store, layer unpacking and the ext4 root disks.
//!
//! The flow of one image: blobs arrive from a registry ([`registry`]) or an archive ([`archive`])
//! into a per-operation ingest directory of the [`store`], verified by digest and size. The layers
//! are then applied in manifest order into a staging tree ([`unpack`]), which `mkfs.ext4 -d` turns
//! into the image's root disk ([`rootfs`]). Only when all of that succeeded are the blobs and the
//! disk moved into the store and the image recorded in its index.
//!
//! [`Images`] ties the pieces together and is what the CLI and `bulkhead run` use.

pub mod archive;
pub mod digest;
mod images;
pub mod oci;
pub mod reference;
pub mod registry;
mod remove;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use images::{summarize, Error, Image, ImageConfigSummary, Images, Result};
pub use reference::Reference;
