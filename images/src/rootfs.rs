//! Root disks: an ext4 image of the unpacked layers, built with `mkfs.ext4 -d` from Debian's
//! e2fsprogs and cached under `rootfs/<chain id>.ext4`.
//!
//! `mkfs.ext4 -d` (e2fsprogs 1.47.0) copies owners as 32-bit ids, modes including setuid, setgid
//! and sticky, hard links, device nodes, FIFOs, symlinks, mtimes and xattrs; the rootfs tests
//! check each of these on the built disk with debugfs. The disk has no journal because every
//! container mounts it read-only.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from building a root disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Walking or preparing the staging tree failed.
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `mkfs.ext4` could not be started.
    #[error("failed to run mkfs.ext4 (install e2fsprogs)")]
    Spawn(#[source] io::Error),
    /// `mkfs.ext4` failed for another reason than space.
    #[error("mkfs.ext4 failed with {status}: {output}")]
    Mkfs {
        status: std::process::ExitStatus,
        output: String,
    },
    /// The content did not fit even after growing the disk.
    #[error("mkfs.ext4 ran out of space {attempts} times; last size {size} bytes")]
    NoSpace { attempts: u32, size: u64 },
}

/// Result alias for root disks.
pub type Result<T> = std::result::Result<T, Error>;

/// Directories every container needs, created (mode 0755, /tmp 1777) when the image lacks them.
pub const REQUIRED_DIRS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("run", 0o755),
];

/// Smallest disk built, so that tiny images still leave room for the ext4 metadata.
pub const MIN_DISK_BYTES: u64 = 16 << 20;

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const ATTEMPTS: u32 = 4;

/// What the staging tree contains, for sizing the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Apparent size of all files, each hard-linked file counted once.
    pub bytes: u64,
    /// Blocks the content needs, rounding each file up to whole 4 KiB blocks.
    pub blocks: u64,
    /// Inodes: files, directories, symlinks and device nodes.
    pub inodes: u64,
}

/// Walks `root` without following symlinks and sums what the disk must hold.
pub fn measure(root: &Path) -> Result<Usage> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| Error::Io {
            op: "read directory",
            path: dir.clone(),
            source,
        })?;
        usage.inodes += 1;
        usage.blocks += 1;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                op: "read directory",
                path: dir.clone(),
                source,
            })?;
            let meta = entry.metadata().map_err(|source| Error::Io {
                op: "stat",
                path: entry.path(),
                source,
            })?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.inodes += 1;
            usage.bytes += meta.len();
            usage.blocks += meta.len().div_ceil(BLOCK);
            // Extended attributes beyond the inode's spare space take a block.
            usage.blocks += 1;
        }
    }
    Ok(usage)
}

/// Creates the directories of [`REQUIRED_DIRS`] that `root` lacks. An existing entry of that
/// name (a directory or a symlink such as `/run -> /var/run`) stays as it is.
pub fn add_required_dirs(root: &Path) -> Result<()> {
    for (name, mode) in REQUIRED_DIRS {
        let path = root.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        fs::create_dir(&path).map_err(|source| Error::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).map_err(|source| {
            Error::Io {
                op: "chmod",
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Computes the disk size and inode count for `usage`: the content plus a quarter for
/// directory blocks, extent trees and bitmaps, the inode tables, and 8 MiB of fixed metadata.
pub fn disk_geometry(usage: &Usage) -> (u64, u64) {
    let inodes = (usage.inodes + usage.inodes / 4 + 1024).max(4096);
    let data = usage.blocks * BLOCK;
    let size = data + data / 4 + inodes * INODE_SIZE + (8 << 20);
    (size.max(MIN_DISK_BYTES).next_multiple_of(1 << 20), inodes)
}

/// Builds an ext4 disk at `output` from the tree at `staging`, growing it and retrying when
/// mkfs.ext4 runs out of blocks or inodes.
pub fn build(staging: &Path, output: &Path) -> Result<Usage> {
    add_required_dirs(staging)?;
    let usage = measure(staging)?;
    let (mut size, mut inodes) = disk_geometry(&usage);

    for attempt in 1..=ATTEMPTS {
        let _ = fs::remove_file(output);
        let file = fs::File::create(output).map_err(|source| Error::Io {
            op: "create",
            path: output.to_path_buf(),
            source,
        })?;
        file.set_len(size).map_err(|source| Error::Io {
            op: "size",
            path: output.to_path_buf(),
            source,
        })?;
        drop(file);

        let result = Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args([
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-L",
                "bulkhead-root",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(staging)
            .arg(output)
            .output()
            .map_err(Error::Spawn)?;
        if result.status.success() {
            tracing::debug!(size, inodes, attempt, "built root disk");
            return Ok(usage);
        }

        let output_text = String::from_utf8_lossy(&result.stderr).into_owned()
            + &String::from_utf8_lossy(&result.stdout);
        let no_space = [
            "No space left",
            "Could not allocate",
            "inodes",
            "out of space",
        ]
        .iter()
        .any(|needle| output_text.contains(needle));
        if !no_space {
            let _ = fs::remove_file(output);
            return Err(Error::Mkfs {
                status: result.status,
                output: output_text.trim().to_string(),
            });
        }
        tracing::info!(
            size,
            inodes,
            attempt,
            "root disk too small, retrying larger"
        );
        size += size / 2;
        inodes += inodes / 2;
    }
    let _ = fs::remove_file(output);
    Err(Error::NoSpace {
        attempts: ATTEMPTS,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_has_minimum_and_grows_with_content() {
        let (small, small_inodes) = disk_geometry(&Usage::default());
        assert_eq!(small, MIN_DISK_BYTES);
        assert_eq!(small_inodes, 4096);

        let big = Usage {
            bytes: 1 << 30,
            blocks: (1 << 30) / BLOCK,
            inodes: 100_000,
        };
        let (size, inodes) = disk_geometry(&big);
        assert!(size > big.bytes + big.bytes / 5, "size {size}");
        assert!(inodes >= 125_000, "inodes {inodes}");
    }
}
