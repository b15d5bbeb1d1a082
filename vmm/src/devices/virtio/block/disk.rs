//! The disk image file behind a virtio-blk device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{DEVICE_ID_LEN, SECTOR_SIZE};

/// Errors while opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file or block device.
    #[error("disk image {0} is not a regular file or block device")]
    NotAFile(PathBuf),
    /// The image is smaller than one sector.
    #[error("disk image {0} is smaller than one 512-byte sector")]
    Empty(PathBuf),
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; DEVICE_ID_LEN],
}

impl Disk {
    /// Opens the image at `path`, for reading only when `read_only` is set.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_error = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;

        let metadata = file.metadata().map_err(open_error)?;
        let size = if metadata.is_file() {
            metadata.len()
        } else {
            use std::os::unix::fs::FileTypeExt;
            if !metadata.file_type().is_block_device() {
                return Err(DiskError::NotAFile(path.to_owned()));
            }
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0)).map_err(open_error)?
        };
        if size < SECTOR_SIZE {
            return Err(DiskError::Empty(path.to_owned()));
        }
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                path = %path.display(),
                size,
                "disk image size is not a multiple of 512 bytes; the tail is not visible to the guest"
            );
        }

        Ok(Self {
            file,
            read_only,
            sectors: size / SECTOR_SIZE,
            id: device_id(path),
        })
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The id string the guest reads with `VIRTIO_BLK_T_GET_ID`.
    pub fn id(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.id
    }

    /// Reads exactly `buffer.len()` bytes at `offset`.
    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    /// Writes all of `buffer` at `offset`.
    pub fn write_at(&self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buffer, offset)
    }

    /// Makes written data durable, for a guest flush request.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Derives the device id from the file name, truncated to 20 bytes and NUL-padded.
fn device_id(path: &Path) -> [u8; DEVICE_ID_LEN] {
    let mut id = [0u8; DEVICE_ID_LEN];
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    let len = name.len().min(DEVICE_ID_LEN);
    id[..len].copy_from_slice(&name[..len]);
    id
}
