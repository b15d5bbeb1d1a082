//! virtio-vsock (section 5.10 of the VirtIO 1.2 specification) backed by host Unix sockets, in
//! Firecracker's hybrid model; see [`muxer`] for how host programs reach the guest and back.
//!
//! The device runs on its own thread, which owns the queues and every socket. Queue
//! notifications from vCPU threads reach it through an eventfd.

mod connection;
mod device;
pub mod muxer;
pub mod packet;

pub use device::Vsock;

use std::path::PathBuf;

/// Context id of the host.
pub const HOST_CID: u64 = 2;
/// Default context id of the guest, the first one that is not reserved.
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Device id of a socket device (section 5).
pub const TYPE_VSOCK: u32 = 19;
/// Size of each of the three queues (receive, transmit, event).
pub const QUEUE_SIZE: u16 = 256;

/// Errors while setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host Unix socket could not be bound.
    #[error("cannot listen on the vsock Unix socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Creating the epoll instance, an eventfd or the device thread failed.
    #[error("failed to create {0} for the vsock device")]
    Resource(&'static str, #[source] std::io::Error),
}
