//! The virtio-vsock device: configuration space, activation, and the thread that moves packets
//! between the queues and the [`Muxer`].

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{PacketHeader, HEADER_SIZE};
use super::{VsockError, QUEUE_SIZE, TYPE_VSOCK};
use crate::devices::virtio::{interrupt_status, ActivateError, Interrupt, VirtioDevice};

/// Largest payload moved in one receive packet.
const MAX_PAYLOAD: usize = 64 * 1024;
/// epoll tokens of the device's own eventfds; socket tokens are their file descriptors, which
/// never take these values because 0 to 2 are the standard streams.
const TOKEN_NOTIFY: u64 = u64::MAX;
const TOKEN_STOP: u64 = u64::MAX - 1;
/// How often the loop wakes to time out host requests while any is pending.
const REQUEST_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The vsock device before and after activation.
pub struct Vsock {
    guest_cid: u64,
    path: PathBuf,
    /// Taken by the device thread at activation.
    muxer: Option<Muxer>,
    notify: EventFd,
    stop: EventFd,
    worker: Option<JoinHandle<Muxer>>,
}

impl Vsock {
    /// Creates the device and binds the host socket at `path` right away, so host programs can
    /// connect (and wait) before the guest driver is up.
    pub fn new(guest_cid: u64, path: PathBuf) -> Result<Self, VsockError> {
        let epoll = Epoll::new().map_err(|e| VsockError::Resource("an epoll instance", e))?;
        let muxer = Muxer::new(&path, guest_cid, epoll)?;
        let eventfd =
            || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VsockError::Resource("an eventfd", e));
        Ok(Self {
            guest_cid,
            path,
            muxer: Some(muxer),
            notify: eventfd()?,
            stop: eventfd()?,
            worker: None,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The configuration space is `le64 guest_cid`.
        let config = self.guest_cid.to_le_bytes();
        let start = offset as usize;
        match config.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!(
            offset,
            "vsock: ignored write to the read-only configuration space"
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let count = queues.len();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::BadQueues(count));
        };
        let Some(muxer) = self.muxer.take() else {
            tracing::warn!("vsock: activated twice without a reset");
            return Err(ActivateError::BadQueues(count));
        };
        let clone = |fd: &EventFd| fd.try_clone().map_err(|_| ActivateError::BadQueues(count));
        let worker = Worker {
            memory,
            rx,
            tx,
            interrupt,
            muxer,
            notify: clone(&self.notify)?,
            stop: clone(&self.stop)?,
        };
        let handle = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || worker.run())
            .map_err(|_| ActivateError::BadQueues(count))?;
        self.worker = Some(handle);
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        if let Err(error) = self.notify.write(1) {
            tracing::warn!(%error, "vsock: failed to wake the device thread");
        }
    }

    fn reset(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        let _ = self.stop.write(1);
        match worker.join() {
            // The muxer keeps its socket and connections; the driver sets up new queues.
            Ok(muxer) => self.muxer = Some(muxer),
            Err(_) => {
                tracing::warn!(path = %self.path.display(), "vsock: the device thread panicked")
            }
        }
    }
}

/// The device thread's state.
struct Worker {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    notify: EventFd,
    stop: EventFd,
}

impl Worker {
    fn run(mut self) -> Muxer {
        let epoll = self.muxer.epoll();
        for (fd, token) in [
            (self.notify.as_raw_fd(), TOKEN_NOTIFY),
            (self.stop.as_raw_fd(), TOKEN_STOP),
        ] {
            if let Err(error) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                tracing::error!(%error, "vsock: cannot watch the device eventfds; the device is dead");
                return self.muxer;
            }
        }

        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = if self.muxer.has_pending_requests() {
                REQUEST_POLL_INTERVAL.as_millis() as i32
            } else {
                -1
            };
            let ready = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::error!(%error, "vsock: epoll_wait failed; the device stops");
                    return self.muxer;
                }
            };

            for event in &events[..ready] {
                match event.data() {
                    TOKEN_STOP => return self.muxer,
                    TOKEN_NOTIFY => {
                        let _ = self.notify.read();
                        self.process_tx();
                    }
                    fd => self.muxer.handle_event(fd as i32, event.event_set()),
                }
            }
            self.muxer.expire_requests(Instant::now());
            self.fill_rx();
        }
    }

    /// Hands every packet the guest queued for transmission to the muxer.
    fn process_tx(&mut self) {
        let memory = &self.memory;
        let mut used = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            match read_packet(chain, memory) {
                Some((header, data)) => self.muxer.handle_guest_packet(header, &data),
                None => tracing::warn!("vsock: dropped a malformed transmit packet"),
            }
            if let Err(error) = self.tx.add_used(memory, head, 0) {
                tracing::warn!(%error, "vsock: failed to return a transmit buffer");
            }
            used = true;
        }
        if used {
            self.interrupt.trigger(interrupt_status::USED_BUFFER);
        }
    }

    /// Fills the guest's receive buffers with whatever the muxer has ready.
    fn fill_rx(&mut self) {
        let memory = &self.memory;
        let mut used = false;
        let mut payload = vec![0u8; MAX_PAYLOAD];

        while self.muxer.has_packets() {
            let Some(chain) = self.rx.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(memory) else {
                tracing::warn!("vsock: receive buffer outside guest memory");
                let _ = self.rx.add_used(memory, head, 0);
                used = true;
                continue;
            };
            let room = writer
                .available_bytes()
                .saturating_sub(HEADER_SIZE)
                .min(MAX_PAYLOAD);
            let Some((header, len)) = self.muxer.next_packet(&mut payload[..room]) else {
                // Nothing was ready after all: give the buffer back for later.
                self.rx.set_next_avail(self.rx.next_avail().wrapping_sub(1));
                break;
            };
            let written = writer.write_obj(header).and_then(|()| {
                use std::io::Write;
                writer.write_all(&payload[..len])
            });
            if written.is_err() {
                tracing::warn!("vsock: receive buffer smaller than a packet header");
            }
            let _ = self
                .rx
                .add_used(memory, head, writer.bytes_written() as u32);
            used = true;
        }
        if used {
            self.interrupt.trigger(interrupt_status::USED_BUFFER);
        }
    }
}

/// Reads a header and its payload from a transmit chain.
fn read_packet(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> Option<(PacketHeader, Vec<u8>)> {
    use std::io::Read;
    let mut reader = chain.reader(memory).ok()?;
    let header: PacketHeader = reader.read_obj().ok()?;
    let len = header.len as usize;
    if len > reader.available_bytes() || len > MAX_PAYLOAD {
        return None;
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).ok()?;
    Some((header, data))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::devices::virtio::vsock::muxer::port_socket_path;
    use crate::devices::virtio::vsock::packet::{shutdown, Op, TYPE_STREAM};
    use crate::devices::virtio::vsock::HOST_CID;

    const GUEST_CID: u64 = 3;
    const RX_RING: u64 = 0x1_0000;
    const TX_RING: u64 = 0x2_0000;
    const RX_BUFFERS: u64 = 0x10_0000;
    const TX_BUFFERS: u64 = 0x40_0000;
    const RX_BUFFER_SIZE: u32 = 4096 + HEADER_SIZE as u32;

    /// A worker driven by hand, with the driver side of both queues in real guest memory.
    struct Harness<'a> {
        worker: Worker,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        memory: &'a GuestMemoryMmap,
        rx_posted: u16,
        rx_seen: u16,
        tx_posted: u16,
        _dir: TempDir,
        path: PathBuf,
    }

    impl<'a> Harness<'a> {
        fn new(memory: &'a GuestMemoryMmap) -> Self {
            let dir = TempDir::new().unwrap();
            let path = dir.as_path().join("vsock.sock");
            let rx = MockSplitQueue::create(memory, GuestAddress(RX_RING), QUEUE_SIZE);
            let tx = MockSplitQueue::create(memory, GuestAddress(TX_RING), QUEUE_SIZE);
            let muxer = Muxer::new(&path, GUEST_CID, Epoll::new().unwrap()).unwrap();
            let worker = Worker {
                memory: memory.clone(),
                rx: rx.create_queue().unwrap(),
                tx: tx.create_queue().unwrap(),
                interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
                muxer,
                notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                stop: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            };
            Self {
                worker,
                rx,
                tx,
                memory,
                rx_posted: 0,
                rx_seen: 0,
                tx_posted: 0,
                _dir: dir,
                path,
            }
        }

        /// Posts `count` empty receive buffers.
        fn post_rx(&mut self, count: u16) {
            for _ in 0..count {
                let index = self.rx_posted;
                let address = RX_BUFFERS + u64::from(index) * u64::from(RX_BUFFER_SIZE);
                let descriptor = raw(address, RX_BUFFER_SIZE, VRING_DESC_F_WRITE as u16);
                self.rx.add_desc_chains(&[descriptor], index).unwrap();
                self.rx_posted += 1;
            }
        }

        /// Sends one packet from the guest and lets the device process it.
        fn send(&mut self, op: Op, src_port: u32, dst_port: u32, flags: u32, data: &[u8]) {
            let header = PacketHeader {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op: op as u16,
                flags,
                buf_alloc: 64 * 1024,
                fwd_cnt: 0,
            };
            let index = self.tx_posted;
            let address = TX_BUFFERS + u64::from(index) * 0x1_0000;
            self.memory
                .write_obj(header, GuestAddress(address))
                .unwrap();
            let data_address = address + HEADER_SIZE as u64;
            self.memory
                .write_slice(data, GuestAddress(data_address))
                .unwrap();
            let descriptor = raw(address, (HEADER_SIZE + data.len()) as u32, 0);
            self.tx.add_desc_chains(&[descriptor], index).unwrap();
            self.tx_posted += 1;
            self.worker.process_tx();
            self.worker.fill_rx();
        }

        /// Waits for the muxer's sockets to become ready, handles them and fills receive buffers.
        fn poll(&mut self) {
            let mut events = vec![EpollEvent::default(); 16];
            let ready = self.worker.muxer.epoll().wait(1000, &mut events).unwrap();
            for event in &events[..ready] {
                self.worker
                    .muxer
                    .handle_event(event.data() as i32, event.event_set());
            }
            self.worker.fill_rx();
        }

        /// Returns the packets the device put into receive buffers since the last call.
        fn received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
            let used_idx = self.rx.used().idx().load();
            let mut packets = Vec::new();
            while self.rx_seen != used_idx {
                let element = self
                    .rx
                    .used()
                    .ring()
                    .ref_at(self.rx_seen as usize)
                    .unwrap()
                    .load();
                let address = RX_BUFFERS + u64::from(element.id()) * u64::from(RX_BUFFER_SIZE);
                let header: PacketHeader = self.memory.read_obj(GuestAddress(address)).unwrap();
                let mut data = vec![0u8; header.len as usize];
                let data_address = GuestAddress(address + HEADER_SIZE as u64);
                self.memory.read_slice(&mut data, data_address).unwrap();
                assert_eq!(element.len() as usize, HEADER_SIZE + data.len());
                packets.push((header, data));
                self.rx_seen += 1;
            }
            packets
        }

        /// Polls until a packet arrives, then returns every packet received.
        fn receive_some(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
            for _ in 0..50 {
                let packets = self.received();
                if !packets.is_empty() {
                    return packets;
                }
                self.poll();
            }
            panic!("no packet reached the guest");
        }
    }

    fn raw(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn ops(packets: &[(PacketHeader, Vec<u8>)]) -> Vec<u16> {
        packets.iter().map(|(header, _)| header.op).collect()
    }

    #[test]
    fn vsock_guest_connects_to_host_listener() {
        let memory = memory();
        let mut harness = Harness::new(&memory);
        let listener = UnixListener::bind(port_socket_path(&harness.path, 52)).unwrap();
        harness.post_rx(8);

        harness.send(Op::Request, 1234, 52, 0, &[]);
        let (mut host, _) = listener.accept().unwrap();
        let packets = harness.received();
        assert_eq!(ops(&packets), vec![Op::Response as u16]);
        let (response, _) = packets[0];
        assert_eq!(({ response.src_port }, { response.dst_port }), (52, 1234));
        assert_eq!({ response.dst_cid }, GUEST_CID);

        harness.send(Op::Rw, 1234, 52, 0, b"ping");
        let mut received = [0u8; 4];
        host.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"ping");

        host.write_all(b"pong").unwrap();
        let packets = harness.receive_some();
        assert_eq!(ops(&packets), vec![Op::Rw as u16]);
        assert_eq!(packets[0].1, b"pong");
    }

    #[test]
    fn vsock_unknown_port_gets_reset() {
        let memory = memory();
        let mut harness = Harness::new(&memory);
        harness.post_rx(4);

        harness.send(Op::Request, 1234, 99, 0, &[]);
        assert_eq!(
            ops(&harness.received()),
            vec![Op::Rst as u16],
            "no listener on port 99"
        );

        harness.send(Op::Rw, 1234, 100, 0, b"stray");
        assert_eq!(
            ops(&harness.received()),
            vec![Op::Rst as u16],
            "data for no connection"
        );

        harness.send(Op::Rst, 1234, 100, 0, &[]);
        assert!(harness.received().is_empty(), "a reset is never answered");
    }

    #[test]
    fn vsock_host_connect_handshake() {
        let memory = memory();
        let mut harness = Harness::new(&memory);
        harness.post_rx(8);

        let mut host = UnixStream::connect(&harness.path).unwrap();
        host.write_all(b"CONNECT 5000\n").unwrap();
        let packets = harness.receive_some();
        assert_eq!(ops(&packets), vec![Op::Request as u16]);
        let (request, _) = packets[0];
        assert_eq!({ request.dst_port }, 5000);
        let local_port = request.src_port;

        harness.send(Op::Response, 5000, local_port, 0, &[]);
        let mut line = [0u8; 64];
        let len = host.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..len]).unwrap(),
            format!("OK {local_port}\n")
        );

        host.write_all(b"request").unwrap();
        let packets = harness.receive_some();
        assert_eq!(packets[0].1, b"request");
    }

    #[test]
    fn vsock_half_close_keeps_reply_path() {
        let memory = memory();
        let mut harness = Harness::new(&memory);
        let listener = UnixListener::bind(port_socket_path(&harness.path, 7)).unwrap();
        harness.post_rx(8);
        harness.send(Op::Request, 40, 7, 0, &[]);
        let (mut host, _) = listener.accept().unwrap();
        harness.received();

        // The host finishes sending: the guest hears SHUTDOWN(SEND) but may still send.
        host.write_all(b"question").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut packets = Vec::new();
        while !ops(&packets).contains(&(Op::Shutdown as u16)) {
            packets.extend(harness.receive_some());
        }
        let shutdown_packet = packets
            .iter()
            .find(|(h, _)| h.op == Op::Shutdown as u16)
            .unwrap();
        assert_eq!({ shutdown_packet.0.flags }, shutdown::SEND);
        assert_eq!(packets[0].1, b"question");

        harness.send(Op::Rw, 40, 7, 0, b"answer");
        harness.send(Op::Shutdown, 40, 7, shutdown::BOTH, &[]);
        let mut reply = Vec::new();
        host.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"answer");
        assert_eq!(
            ops(&harness.received()),
            vec![Op::Rst as u16],
            "both directions ended"
        );
    }

    #[test]
    fn vsock_rejects_bad_connect_line() {
        let memory = memory();
        let mut harness = Harness::new(&memory);
        harness.post_rx(4);

        let mut host = UnixStream::connect(&harness.path).unwrap();
        host.write_all(b"HELLO 5000\n").unwrap();
        harness.poll();
        harness.poll();

        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the muxer closes the stream");
        assert!(harness.received().is_empty(), "the guest hears nothing");
    }

    #[test]
    fn vsock_config_holds_guest_cid() {
        let dir = TempDir::new().unwrap();
        let device = Vsock::new(42, dir.as_path().join("v.sock")).unwrap();
        let mut cid = [0u8; 8];
        device.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 42);
        assert_eq!(device.device_type(), TYPE_VSOCK);
    }
}
