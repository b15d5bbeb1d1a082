//! virtio-blk (section 5.2 of the VirtIO 1.2 specification) on a raw disk image file, read-only
//! or read-write. Requests run synchronously on the vCPU thread that notified the queue.

mod device;
mod disk;
mod request;

pub use device::Block;
pub use disk::{Disk, DiskError};
pub use request::{RequestHeader, RequestStatus, RequestType};

/// Size of a virtio-blk sector, fixed by the specification whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device id string returned by `VIRTIO_BLK_T_GET_ID`.
pub const DEVICE_ID_LEN: usize = 20;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (section 5.2.3).
pub mod features {
    /// The maximum number of segments per request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// Cache flush command support.
    pub const FLUSH: u64 = 1 << 9;
}
