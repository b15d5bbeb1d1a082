//! Parsing and executing one virtio-blk request (section 5.2.6): a device-readable header, data
//! buffers, and a one-byte status that the device writes last.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{Disk, SECTOR_SIZE};

/// Request types the device understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest's buffers.
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Anything else, answered with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            0 => Self::In,
            1 => Self::Out,
            4 => Self::Flush,
            8 => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Status byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RequestStatus {
    /// Success.
    Ok = 0,
    /// The request failed: out of range, an I/O error or a write to a read-only disk.
    IoError = 1,
    /// The request type is not supported.
    Unsupported = 2,
}

/// `struct virtio_blk_req` without its data and status.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
pub struct RequestHeader {
    /// One of the `VIRTIO_BLK_T_*` values.
    pub request_type: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Offset in 512-byte sectors.
    pub sector: u64,
}

// SAFETY: RequestHeader is plain old data of two u32 and one u64 without padding, so every byte
// pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Bytes moved per disk access, which bounds the bounce buffer of one request.
const CHUNK: usize = 64 * 1024;

/// Executes the request in `chain` against `disk`. Returns the number of bytes written into the
/// guest's device-writable buffers, status byte included, which goes into the used ring.
pub fn execute(
    disk: &Disk,
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
    else {
        tracing::warn!("block: descriptor chain points outside guest memory");
        return 0;
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        tracing::warn!("block: request has no room for the status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };

    let status = match reader.read_obj::<RequestHeader>() {
        Ok(header) => run(disk, header, &mut reader, &mut writer),
        Err(_) => {
            tracing::warn!("block: request header is truncated");
            RequestStatus::IoError
        }
    };

    if status_writer.write_all(&[status as u8]).is_err() {
        tracing::warn!("block: cannot write the request status");
    }
    (writer.bytes_written() + status_writer.bytes_written()) as u32
}

fn run(
    disk: &Disk,
    header: RequestHeader,
    reader: &mut impl Read,
    writer: &mut virtio_queue::Writer<'_, ()>,
) -> RequestStatus {
    match RequestType::from(header.request_type) {
        RequestType::In => {
            let len = writer.available_bytes() as u64;
            match checked_offset(disk, header.sector, len) {
                Some(offset) => copy_to_guest(disk, offset, len, writer),
                None => RequestStatus::IoError,
            }
        }
        RequestType::Out => {
            if disk.read_only() {
                return RequestStatus::IoError;
            }
            let mut data = Vec::new();
            if reader.read_to_end(&mut data).is_err() {
                return RequestStatus::IoError;
            }
            match checked_offset(disk, header.sector, data.len() as u64) {
                Some(offset) => status_of(disk.write_at(&data, offset)),
                None => RequestStatus::IoError,
            }
        }
        RequestType::Flush => status_of(disk.flush()),
        RequestType::GetId => {
            let len = writer.available_bytes().min(disk.id().len());
            status_of(writer.write_all(&disk.id()[..len]))
        }
        RequestType::Unsupported(value) => {
            tracing::debug!(request_type = value, "block: unsupported request type");
            RequestStatus::Unsupported
        }
    }
}

/// Returns the byte offset of `sector` when `len` bytes from there stay on the disk.
fn checked_offset(disk: &Disk, sector: u64, len: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= disk.sectors() * SECTOR_SIZE).then_some(offset)
}

fn copy_to_guest(disk: &Disk, mut offset: u64, len: u64, writer: &mut impl Write) -> RequestStatus {
    let mut buffer = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let chunk = &mut buffer[..CHUNK.min(left)];
        if disk.read_at(chunk, offset).is_err() || writer.write_all(chunk).is_err() {
            return RequestStatus::IoError;
        }
        offset += chunk.len() as u64;
        left -= chunk.len();
    }
    RequestStatus::Ok
}

fn status_of<E>(result: Result<(), E>) -> RequestStatus {
    match result {
        Ok(()) => RequestStatus::Ok,
        Err(_) => RequestStatus::IoError,
    }
}
