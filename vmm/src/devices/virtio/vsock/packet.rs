//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, section 5.10.6) and the operations
//! it carries.

use vm_memory::ByteValued;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset, or refused.
    Rst = 3,
    /// The sender will send or receive no more; see [`shutdown`].
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// The sender's buffer space, unsolicited.
    CreditUpdate = 6,
    /// A request for a [`Op::CreditUpdate`].
    CreditRequest = 7,
}

impl Op {
    /// Decodes an operation, or `None` for a value the specification does not define.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// Flags of a [`Op::Shutdown`] packet.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RECEIVE: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both directions.
    pub const BOTH: u32 = RECEIVE | SEND;
}

/// Socket type of a stream connection, the only type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// `struct virtio_vsock_hdr`, little endian on the wire (x86_64 is little endian).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct PacketHeader {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Length of the payload that follows the header.
    pub len: u32,
    /// Socket type: [`TYPE_STREAM`].
    pub type_: u16,
    /// One of [`Op`].
    pub op: u16,
    /// Operation flags, such as the [`shutdown`] bits.
    pub flags: u32,
    /// Receive buffer space of the sender.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

// SAFETY: PacketHeader is packed plain old data made of integers, so it has no padding and every
// byte pattern is a valid value.
unsafe impl ByteValued for PacketHeader {}

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = std::mem::size_of::<PacketHeader>();

impl PacketHeader {
    /// The decoded operation, if valid.
    pub fn operation(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_44_bytes() {
        assert_eq!(HEADER_SIZE, 44);
    }

    #[test]
    fn op_round_trips() {
        for value in 1..=7u16 {
            assert_eq!(Op::from_u16(value).map(|op| op as u16), Some(value));
        }
        assert_eq!(Op::from_u16(0), None);
        assert_eq!(Op::from_u16(8), None);
    }
}
