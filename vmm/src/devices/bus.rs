//! Address buses: port I/O and MMIO exits are dispatched to the device whose window contains the
//! address, with the offset into that window.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus window.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset` into the device window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset` into the device window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors while adding a device to a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new window is empty or overlaps one that is already taken.
    #[error("bus window {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Base address of the rejected window.
        base: u64,
        /// Length of the rejected window.
        len: u64,
    },
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Window {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping device windows.
#[derive(Default)]
pub struct Bus {
    windows: BTreeMap<u64, Window>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let overlap = || BusError::Overlap { base, len };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(overlap)?;
        if let Some((prev_base, prev)) = self.windows.range(..end).next_back() {
            if prev_base + prev.len > base {
                return Err(overlap());
            }
        }
        self.windows.insert(base, Window { len, device });
        Ok(())
    }

    fn find(&self, address: u64) -> Option<(u64, &SharedDevice)> {
        let (base, window) = self.windows.range(..=address).next_back()?;
        let offset = address - base;
        (offset < window.len).then_some((offset, &window.device))
    }

    /// Dispatches a read. Returns false when no device owns `address`.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.find(address) else {
            return false;
        };
        lock(device).read(offset, data);
        true
    }

    /// Dispatches a write. Returns false when no device owns `address`.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        let Some((offset, device)) = self.find(address) else {
            return false;
        };
        lock(device).write(offset, data);
        true
    }
}

/// Locks a device. A device whose lock was poisoned by a panicking vCPU thread is still used,
/// because the process aborts on panic in release builds and tests want the state anyway.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn bus_dispatches_by_offset() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, device.clone()).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(device.lock().unwrap().writes, vec![(0, vec![0x41])]);
        assert!(!bus.read(0x400, &mut data), "past the window");
        assert!(!bus.read(0x3f7, &mut data), "before the window");
    }

    #[test]
    fn bus_rejects_overlaps() {
        let mut bus = Bus::new();
        let device = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x1000, 0x100, device()).unwrap();

        let cases = [(0x1000, 0x100), (0xf80, 0x100), (0x10ff, 1), (0x2000, 0)];
        for (index, (base, len)) in cases.into_iter().enumerate() {
            assert_eq!(
                bus.insert(base, len, device()),
                Err(BusError::Overlap { base, len }),
                "case {index}"
            );
        }
        bus.insert(0x1100, 0x100, device()).unwrap();
        bus.insert(0xf00, 0x100, device()).unwrap();
    }
}
