//! The virtio-mmio transport, version 2 (section 4.2 of the VirtIO 1.2 specification): the
//! register window through which the driver negotiates features, sets up queues and notifies the
//! device.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{status, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// Transport version 2 is the non-legacy interface.
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest.
const VENDOR_ID: u32 = 0;

// Register offsets (section 4.2.2).
const REG_MAGIC_VALUE: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE_START: u64 = 0x100;

/// One virtio device together with its transport state.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`, whose queues live in `memory` and whose interrupt is `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Self {
        let queues = new_queues(device.as_ref());
        Self {
            device,
            memory,
            interrupt: Arc::new(interrupt),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            REG_MAGIC_VALUE => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => 0,
            _ => {
                tracing::debug!(offset, "virtio-mmio: read of an unknown register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue layout may change only before the driver declares itself ready.
        let queue_setup_allowed = self.status & status::DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => match self.driver_features_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM if queue_setup_allowed => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            REG_QUEUE_READY if queue_setup_allowed => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH if queue_setup_allowed => {
                self.write_queue_address(offset, value)
            }
            REG_QUEUE_NOTIFY => {
                if self.activated {
                    self.device.queue_notify(value as u16);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            _ => tracing::debug!(offset, value, "virtio-mmio: ignored register write"),
        }
    }

    fn write_queue_address(&mut self, offset: u64, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        match offset {
            REG_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            REG_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            REG_QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            REG_QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            REG_QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            REG_QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }

        let mut value = value;
        let newly_set = value & !self.status;
        if newly_set & status::FEATURES_OK != 0 {
            // Section 3.1.1: the device leaves FEATURES_OK clear when it cannot accept the
            // driver's subset, and the driver then gives up.
            let unsupported = self.driver_features & !self.device_features();
            if unsupported != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!(
                    features = self.driver_features,
                    "virtio-mmio: driver accepted features the device did not offer"
                );
                value &= !status::FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        self.status = value;

        if newly_set & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let all_valid = self.queues.iter().all(|q| q.is_valid(&self.memory));
        let result = if all_valid {
            // The device owns the queues from now on. A reset gives the transport fresh ones.
            let queues = std::mem::take(&mut self.queues);
            self.device
                .activate(self.memory.clone(), queues, self.interrupt.clone())
        } else {
            Err(super::ActivateError::BadQueues(self.queues.len()))
        };

        match result {
            Ok(()) => self.activated = true,
            Err(error) => {
                tracing::warn!(%error, device = self.device.device_type(), "virtio-mmio: activation failed");
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt
                    .trigger(super::interrupt_status::CONFIG_CHANGE);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.queues = new_queues(self.device.as_ref());
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt.acknowledge(u32::MAX);
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&size| Queue::new(size).expect("queue sizes of bulkhead devices are powers of two"))
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_START {
            self.device.read_config(offset - CONFIG_SPACE_START, data);
            return;
        }
        // Section 4.2.2.2: the driver uses only 32-bit accesses for registers.
        if data.len() != 4 {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register read of wrong width"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_START {
            self.device.write_config(offset - CONFIG_SPACE_START, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register write of wrong width"
            );
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Record {
        acked: u64,
        activations: usize,
        notified: Vec<u16>,
        resets: usize,
    }

    struct FakeDevice(Arc<Mutex<Record>>);

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn ack_features(&mut self, features: u64) {
            self.0.lock().unwrap().acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _memory: GuestMemoryMmap,
            queues: Vec<Queue>,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), ActivateError> {
            assert_eq!(queues[0].size(), 8);
            self.0.lock().unwrap().activations += 1;
            Ok(())
        }
        fn queue_notify(&mut self, index: u16) {
            self.0.lock().unwrap().notified.push(index);
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let interrupt = Interrupt::new(EventFd::new(0).unwrap());
        let transport = MmioTransport::new(Box::new(FakeDevice(record.clone())), memory, interrupt);
        (transport, record)
    }

    fn read32(transport: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(transport: &mut MmioTransport, offset: u64, value: u32) {
        transport.write(offset, &value.to_le_bytes());
    }

    fn negotiate(transport: &mut MmioTransport, high_features: u32) {
        write32(transport, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(transport, REG_DRIVER_FEATURES_SEL, 0);
        write32(transport, REG_DRIVER_FEATURES, 1 << 5);
        write32(transport, REG_DRIVER_FEATURES_SEL, 1);
        write32(transport, REG_DRIVER_FEATURES, high_features);
        write32(
            transport,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(transport: &mut MmioTransport) {
        write32(transport, REG_QUEUE_SEL, 0);
        write32(transport, REG_QUEUE_NUM, 8);
        write32(transport, REG_QUEUE_DESC_LOW, 0x1000);
        write32(transport, REG_QUEUE_DRIVER_LOW, 0x2000);
        write32(transport, REG_QUEUE_DEVICE_LOW, 0x3000);
        write32(transport, REG_QUEUE_READY, 1);
    }

    #[test]
    fn mmio_identity_registers() {
        let (mut transport, _) = transport();
        let cases = [
            (REG_MAGIC_VALUE, MAGIC_VALUE),
            (REG_VERSION, 2),
            (REG_DEVICE_ID, 42),
            (REG_QUEUE_NUM_MAX, 16),
        ];
        for (offset, expected) in cases {
            assert_eq!(
                read32(&mut transport, offset),
                expected,
                "register {offset:#x}"
            );
        }
        write32(&mut transport, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read32(&mut transport, REG_DEVICE_FEATURES),
            1,
            "VERSION_1 in the high word"
        );
    }

    #[test]
    fn mmio_activates_on_driver_ok() {
        let (mut transport, record) = transport();
        negotiate(&mut transport, 1);
        assert_ne!(read32(&mut transport, REG_STATUS) & status::FEATURES_OK, 0);
        setup_queue(&mut transport);
        write32(&mut transport, REG_STATUS, 0xf);

        assert_eq!(record.lock().unwrap().activations, 1);
        assert_eq!(record.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1 << 5);
        write32(&mut transport, REG_QUEUE_NOTIFY, 0);
        assert_eq!(record.lock().unwrap().notified, vec![0]);
    }

    #[test]
    fn mmio_rejects_driver_without_version_1() {
        let (mut transport, record) = transport();
        negotiate(&mut transport, 0);
        assert_eq!(read32(&mut transport, REG_STATUS) & status::FEATURES_OK, 0);
        assert_eq!(record.lock().unwrap().acked, 0);
    }

    #[test]
    fn mmio_invalid_queue_needs_reset() {
        let (mut transport, record) = transport();
        negotiate(&mut transport, 1);
        // Queue size 0 is invalid, so activation must fail.
        write32(&mut transport, REG_STATUS, 0xf);

        assert_eq!(record.lock().unwrap().activations, 0);
        assert_ne!(
            read32(&mut transport, REG_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn mmio_status_zero_resets_device() {
        let (mut transport, record) = transport();
        negotiate(&mut transport, 1);
        setup_queue(&mut transport);
        write32(&mut transport, REG_STATUS, 0xf);
        write32(&mut transport, REG_STATUS, 0);

        assert_eq!(record.lock().unwrap().resets, 1);
        assert_eq!(read32(&mut transport, REG_STATUS), 0);
        assert_eq!(read32(&mut transport, REG_QUEUE_READY), 0);
    }

    #[test]
    fn mmio_config_space_passes_offset() {
        let (mut transport, _) = transport();
        let mut data = [0u8; 2];
        transport.read(CONFIG_SPACE_START + 3, &mut data);
        assert_eq!(data, [0x13, 0x13]);
    }
}
