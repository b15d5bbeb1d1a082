//! Guest RAM: anonymous memory mapped into the VMM and registered with KVM.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Smallest guest that is accepted. Linux needs more to boot, which the loader checks against
/// the real kernel size.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEMORY_BYTES`].
    #[error("guest memory of {0} bytes is below the minimum of 16 MiB")]
    TooSmall(u64),
    /// mmap of the guest RAM failed.
    #[error("failed to map {size} bytes of guest memory")]
    Map {
        /// Requested size in bytes.
        size: u64,
        /// The underlying error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Result alias for guest memory setup.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// Splits `size` bytes of RAM into regions that avoid the 32-bit MMIO gap: RAM fills the space
/// below the gap first and the rest continues at 4 GiB.
pub fn memory_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    ranges
}

/// Maps `size` bytes of anonymous guest RAM laid out by [`memory_ranges`].
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap> {
    if size < MIN_MEMORY_BYTES {
        return Err(MemoryError::TooSmall(size));
    }
    GuestMemoryMmap::from_ranges(&memory_ranges(size))
        .map_err(|source| MemoryError::Map { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_below_gap_are_one_region() {
        assert_eq!(memory_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn ranges_above_gap_continue_at_4g() {
        let size = 4u64 << 30;
        let ranges = memory_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(
            ranges[1],
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize)
        );
    }

    #[test]
    fn memory_below_minimum_is_rejected() {
        assert!(matches!(
            create_guest_memory(1 << 20),
            Err(MemoryError::TooSmall(_))
        ));
    }
}
