//! The host–agent protocol of bulkhead.
//!
//! The host (the `bulkhead` supervisor) and the guest agent (`bulkhead-agent`, PID 1 in the
//! microVM) exchange length-prefixed binary frames over vsock stream connections:
//!
//! * The **control connection** is opened by the agent to the host (CID 2, port
//!   [`CONTROL_PORT`]). The agent sends [`Event::Ready`] first, then the host sends
//!   [`Request`]s and the agent answers with [`Event`]s. One control connection carries every
//!   process of the VM, each named by a host-chosen [`ProcessId`].
//! * A **relay connection** is opened by the host to the agent's [`RELAY_PORT`]. Its first frame
//!   is a [`RelayRequest`] naming a TCP port in the guest; the agent answers with a
//!   [`RelayResponse`], and after an `Ok` response the connection carries raw bytes both ways.
//!
//! The byte layout of every frame is described in [`codec`]. Frames are read and written with
//! [`FrameReader`] and [`FrameWriter`] over any [`std::io::Read`] or [`std::io::Write`], so the
//! same code runs over `AF_VSOCK` in the guest, over the VMM's hybrid vsock Unix socket on the
//! host (see [`hybrid`]), and over a plain Unix socket in tests.
#![deny(missing_docs)]

pub mod codec;
pub mod hybrid;
mod message;
mod transport;

pub use codec::{DecodeError, Frame};
pub use message::{
    Event, ProcessId, RelayRequest, RelayResponse, Request, StartProcess, Stream, WindowSize,
};
pub use transport::{FrameReader, FrameWriter};

use thiserror::Error;

/// Version of the wire format. The agent announces it in [`Event::Ready`]; a host must reject
/// an agent whose version differs from its own, because frames of another version may not decode.
/// Version 2 added [`Event::StdinWindow`], the flow control of [`Request::Stdin`].
pub const PROTOCOL_VERSION: u32 = 2;

/// vsock port on the host (CID 2) that the agent connects to for its control connection.
/// With a Firecracker-style hybrid vsock device this connection arrives at the host Unix socket
/// `<uds_path>_1024`.
pub const CONTROL_PORT: u32 = 1024;

/// vsock port on which the agent accepts relay connections from the host.
pub const RELAY_PORT: u32 = 1025;

/// vsock context id of the host.
pub const HOST_CID: u32 = 2;

/// Largest frame body accepted, in bytes (the length prefix excluded).
pub const MAX_FRAME_LEN: u32 = 1024 * 1024 + 4096;

/// Largest data chunk that fits in one [`Request::Stdin`] or [`Event::Output`] frame.
pub const MAX_DATA_CHUNK: usize = 1024 * 1024;

/// Errors of reading or writing frames.
#[derive(Debug, Error)]
pub enum Error {
    /// The underlying connection failed.
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
    /// A frame was read but its body is not a valid message.
    #[error("invalid frame")]
    Decode(#[from] DecodeError),
    /// The length prefix of a frame exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    FrameTooLong(u32),
}

/// Result of the protocol's fallible operations.
pub type Result<T> = std::result::Result<T, Error>;
