//! Applies image layers to a staging tree.
//!
//! Layers are applied strictly in order, each streamed from its blob through the decompressor
//! (gzip, zstd or none, sniffed from the magic bytes) and the tar reader. The uncompressed
//! stream is hashed on the way to check the config's diff id. Entries are written with `*at`
//! system calls relative to directory descriptors that [`tree`] resolves with `openat2`'s
//! `RESOLVE_IN_ROOT`, so symlinks in a layer resolve as in a chroot and nothing lands outside
//! the staging root. Names that climb above the root with `..` are rejected.

mod layer;
mod path;
mod tree;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hashing};

pub use layer::LayerStats;
pub use path::normalize;

/// Errors from applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or decompressing the layer stream failed.
    #[error("failed to read the layer stream")]
    Read(#[source] io::Error),
    /// An entry name climbs above the root.
    #[error("entry {0:?} escapes the root with '..'")]
    Escape(String),
    /// A hard link names a target outside the root or missing from the tree.
    #[error("hard link {name:?} to {target:?}: target not found")]
    LinkTarget { name: String, target: String },
    /// A filesystem operation on an entry failed.
    #[error("failed to {op} {name:?}")]
    Entry {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    /// The layer stream ends inside the data of a file.
    #[error("layer stream ends inside the data of {name:?}: {actual} of {expected} bytes")]
    Truncated {
        name: String,
        expected: u64,
        actual: u64,
    },
    /// The tar stream contains an entry type that cannot be represented.
    #[error("entry {name:?} has unsupported type {kind:?}")]
    Unsupported { name: String, kind: char },
    /// The uncompressed layer does not match the diff id from the image config.
    #[error("layer diff id mismatch: config says {expected}, uncompressed content has {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    /// The staging root cannot be opened.
    #[error("failed to open staging root {0}")]
    Root(PathBuf, #[source] io::Error),
}

/// Result alias for unpacking.
pub type Result<T> = std::result::Result<T, Error>;

/// Layer compression, from the first bytes of the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Detects the compression from the magic bytes at the start of `reader`, without consuming them.
pub fn sniff(reader: &mut impl BufRead) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    Ok(match sniff(&mut reader)? {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::None => Box::new(reader),
    })
}

/// Applies one layer blob (compressed or not) on top of the tree at `root` and checks the
/// digest of the uncompressed stream against `diff_id` if given.
pub fn apply_layer(root: &Path, blob: impl Read, diff_id: Option<&Digest>) -> Result<LayerStats> {
    let reader = decompress(blob).map_err(Error::Read)?;
    let mut hashing = Hashing::new(reader);
    let mut stats = layer::apply(root, &mut hashing)?;

    // The tar end marker may be followed by padding that belongs to the diff id too.
    io::copy(&mut hashing, &mut io::sink()).map_err(Error::Read)?;
    let (_, actual, _) = hashing.finish();
    if let Some(expected) = diff_id {
        if actual != *expected {
            return Err(Error::DiffIdMismatch {
                expected: *expected,
                actual,
            });
        }
    }
    stats.diff_id = actual;
    Ok(stats)
}

/// Creates the staging root with the mode an image root has (0755, owned by root).
pub fn create_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).map_err(|e| Error::Root(root.to_path_buf(), e))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::Root(root.to_path_buf(), e))
}
