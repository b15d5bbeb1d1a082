//! The virtio-blk device: feature negotiation, configuration space and the request queue.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{features, request, Disk, QUEUE_SIZE};
use crate::devices::virtio::{
    interrupt_status, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK,
};

/// Segments per request offered in `seg_max`. Two descriptors of each chain carry the header
/// and the status byte.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Offsets in `struct virtio_blk_config`.
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_SIZE: usize = 24;

struct ActiveQueue {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-blk device on one disk image.
pub struct Block {
    disk: Disk,
    config: [u8; CONFIG_SIZE],
    acked_features: u64,
    active: Option<ActiveQueue>,
}

impl Block {
    /// Creates a device for `disk`.
    pub fn new(disk: Disk) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[CONFIG_CAPACITY..CONFIG_CAPACITY + 8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        Self {
            disk,
            config,
            acked_features: 0,
            active: None,
        }
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Completes every available request, then interrupts the guest if it asked for it.
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = &active.memory;
        let mut completed = false;

        loop {
            while let Some(chain) = active.queue.pop_descriptor_chain(memory) {
                let head = chain.head_index();
                let used_len = request::execute(&self.disk, chain, memory);
                if let Err(error) = active.queue.add_used(memory, head, used_len) {
                    tracing::warn!(%error, "block: failed to add a used ring entry");
                }
                completed = true;
            }
            // Re-check after enabling notifications, so a request added meanwhile is not missed.
            match active.queue.enable_notification(memory) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(%error, "block: queue is broken");
                    break;
                }
            }
        }

        if completed && active.queue.needs_notification(memory).unwrap_or(true) {
            active.interrupt.trigger(interrupt_status::USED_BUFFER);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut offered = features::FLUSH | features::SEG_MAX;
        if self.disk.read_only() {
            offered |= features::RO;
        }
        offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        match self.config.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!(
            offset,
            "block: ignored write to the read-only configuration space"
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let count = queues.len();
        let queue = queues
            .into_iter()
            .next()
            .ok_or(ActivateError::BadQueues(count))?;
        self.active = Some(ActiveQueue {
            memory,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::{RequestHeader, RequestStatus, SECTOR_SIZE};

    const HEADER_ADDR: u64 = 0x10_0000;
    const DATA_ADDR: u64 = 0x20_0000;
    const STATUS_ADDR: u64 = 0x30_0000;

    struct Fixture {
        memory: GuestMemoryMmap,
        image: TempFile,
        irqfd: EventFd,
    }

    impl Fixture {
        /// A 64 KiB image whose byte at offset i is i % 251.
        fn new() -> Self {
            let image = TempFile::new().unwrap();
            let content: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            image.as_file().write_all(&content).unwrap();
            Self {
                memory: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap(),
                image,
                irqfd: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            }
        }

        fn path(&self) -> &Path {
            self.image.as_path()
        }

        fn device(&self, read_only: bool) -> Block {
            Block::new(Disk::open(self.path(), read_only).unwrap())
        }

        /// Submits one request through a mock queue and returns (status, used length).
        fn submit(
            &self,
            block: &mut Block,
            request_type: u32,
            sector: u64,
            data: &[RawDescriptor],
        ) -> (u8, u32) {
            let header = RequestHeader {
                request_type,
                reserved: 0,
                sector,
            };
            self.memory
                .write_obj(header, GuestAddress(HEADER_ADDR))
                .unwrap();
            self.memory
                .write_obj(0xffu8, GuestAddress(STATUS_ADDR))
                .unwrap();

            let mock = MockSplitQueue::new(&self.memory, 16);
            let mut descriptors = vec![raw(HEADER_ADDR, 16, 0)];
            descriptors.extend_from_slice(data);
            descriptors.push(raw(STATUS_ADDR, 1, VRING_DESC_F_WRITE as u16));
            mock.build_desc_chain(&descriptors).unwrap();

            let queue: Queue = mock.create_queue().unwrap();
            let interrupt = Arc::new(Interrupt::new(self.irqfd.try_clone().unwrap()));
            block
                .activate(self.memory.clone(), vec![queue], interrupt)
                .unwrap();
            block.queue_notify(0);

            let status: u8 = self.memory.read_obj(GuestAddress(STATUS_ADDR)).unwrap();
            let used_len = mock.used().ring().ref_at(0).unwrap().load().len();
            (status, used_len)
        }
    }

    fn raw(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn block_read_copies_sectors() {
        let fixture = Fixture::new();
        let mut block = fixture.device(true);

        let data = [raw(DATA_ADDR, 1024, VRING_DESC_F_WRITE as u16)];
        let (status, used_len) = fixture.submit(&mut block, 0, 2, &data);

        assert_eq!(status, RequestStatus::Ok as u8);
        assert_eq!(used_len, 1025);
        let mut read = vec![0u8; 1024];
        fixture
            .memory
            .read_slice(&mut read, GuestAddress(DATA_ADDR))
            .unwrap();
        let expected: Vec<u8> = (1024..2048).map(|i| (i % 251) as u8).collect();
        assert_eq!(read, expected);
        assert_eq!(fixture.irqfd.read().unwrap(), 1, "the guest is interrupted");
    }

    #[test]
    fn block_write_reaches_file() {
        let fixture = Fixture::new();
        let mut block = fixture.device(false);
        fixture
            .memory
            .write_slice(&[0xab; 512], GuestAddress(DATA_ADDR))
            .unwrap();

        let (status, used_len) = fixture.submit(&mut block, 1, 3, &[raw(DATA_ADDR, 512, 0)]);

        assert_eq!(status, RequestStatus::Ok as u8);
        assert_eq!(used_len, 1);
        let content = std::fs::read(fixture.path()).unwrap();
        assert!(content[3 * 512..4 * 512].iter().all(|&b| b == 0xab));
        assert_eq!(
            content[4 * 512],
            (4 * 512 % 251) as u8,
            "the next sector is untouched"
        );
    }

    #[test]
    fn block_read_only_rejects_write() {
        let fixture = Fixture::new();
        let mut block = fixture.device(true);
        let before = std::fs::read(fixture.path()).unwrap();

        let (status, _) = fixture.submit(&mut block, 1, 0, &[raw(DATA_ADDR, 512, 0)]);

        assert_eq!(status, RequestStatus::IoError as u8);
        assert_eq!(std::fs::read(fixture.path()).unwrap(), before);
        assert_ne!(block.features() & features::RO, 0);
    }

    #[test]
    fn block_rejects_out_of_range() {
        let fixture = Fixture::new();
        let sectors = 64 * 1024 / SECTOR_SIZE;
        let cases = [(sectors, 512u32), (sectors - 1, 1024), (u64::MAX, 512)];

        for (index, (sector, len)) in cases.into_iter().enumerate() {
            let mut block = fixture.device(false);
            let data = [raw(DATA_ADDR, len, VRING_DESC_F_WRITE as u16)];
            let (status, _) = fixture.submit(&mut block, 0, sector, &data);
            assert_eq!(status, RequestStatus::IoError as u8, "case {index}");
        }
    }

    #[test]
    fn block_flush_and_get_id() {
        let fixture = Fixture::new();

        let mut block = fixture.device(false);
        let (status, _) = fixture.submit(&mut block, 4, 0, &[]);
        assert_eq!(status, RequestStatus::Ok as u8, "flush");

        let mut block = fixture.device(false);
        let data = [raw(DATA_ADDR, 20, VRING_DESC_F_WRITE as u16)];
        let (status, used_len) = fixture.submit(&mut block, 8, 0, &data);
        assert_eq!(status, RequestStatus::Ok as u8, "get id");
        assert_eq!(used_len, 21);
        let mut id = [0u8; 20];
        fixture
            .memory
            .read_slice(&mut id, GuestAddress(DATA_ADDR))
            .unwrap();
        assert_eq!(&id, block.disk.id());
    }

    #[test]
    fn block_unknown_type_is_unsupported() {
        let fixture = Fixture::new();
        let mut block = fixture.device(false);
        let (status, _) = fixture.submit(&mut block, 99, 0, &[]);
        assert_eq!(status, RequestStatus::Unsupported as u8);
    }

    #[test]
    fn block_config_reports_capacity() {
        let fixture = Fixture::new();
        let block = fixture.device(false);
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 128);
        assert_eq!(block.features() & features::RO, 0);
    }
}
