//! The host side of every vsock connection: a Unix socket in Firecracker's hybrid style.
//!
//! - A host program connects to the socket at `path` and writes `CONNECT <port>\n`. The muxer
//!   sends the guest a connection request for that port and, once the guest accepts, replies
//!   `OK <host port>\n` on the Unix stream. From then on the stream carries the connection's data.
//! - A guest connection to host port P is forwarded to the Unix socket `<path>_<P>`, where a host
//!   program must be listening; otherwise the guest gets a reset.
//!
//! The muxer turns guest packets into socket I/O and socket events into packets for the guest.
//! Packets without payload (responses, resets, shutdowns, credit updates) wait in a queue until
//! the guest posts receive buffers.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, HostRead, State};
use super::packet::{shutdown, Op, PacketHeader, TYPE_STREAM};
use super::{VsockError, HOST_CID};

/// How long a host-initiated connection waits for the guest to accept it. A guest without a
/// listener replies at once with a reset, so this only ends requests to a guest that is stuck
/// or very slow, as under nested emulation with a hundred connections arriving at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Identifies a connection by its host and guest ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    local_port: u32,
    peer_port: u32,
}

/// Owner of a registered file descriptor.
#[derive(Debug, Clone, Copy)]
enum FdOwner {
    Listener,
    Handshake,
    Connection(Key),
}

/// A host client that has connected but not yet sent its full `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connection multiplexer behind one vsock device.
pub struct Muxer {
    path: PathBuf,
    guest_cid: u64,
    epoll: Epoll,
    listener: UnixListener,
    owners: HashMap<RawFd, FdOwner>,
    handshakes: HashMap<RawFd, Handshake>,
    connections: HashMap<Key, Connection>,
    control: VecDeque<PacketHeader>,
    next_local_port: u32,
}

impl Muxer {
    /// Binds the Unix socket at `path` for a guest with context id `guest_cid`, and registers it
    /// with `epoll`. A stale socket file from an earlier run is replaced.
    pub fn new(path: &Path, guest_cid: u64, epoll: Epoll) -> Result<Self, VsockError> {
        let bind_error = |source| VsockError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(bind_error(source)),
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;

        let mut muxer = Self {
            path: path.to_owned(),
            guest_cid,
            epoll,
            listener,
            owners: HashMap::new(),
            handshakes: HashMap::new(),
            connections: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        };
        let fd = muxer.listener.as_raw_fd();
        muxer
            .register(fd, FdOwner::Listener, EventSet::IN)
            .map_err(bind_error)?;
        Ok(muxer)
    }

    /// The epoll instance that reports the muxer's sockets.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Whether a host-initiated request is waiting, so the event loop must wake up to time it out.
    pub fn has_pending_requests(&self) -> bool {
        self.connections
            .values()
            .any(|c| matches!(c.state, State::HostRequested { .. }))
    }

    fn register(&mut self, fd: RawFd, owner: FdOwner, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )?;
        self.owners.insert(fd, owner);
        Ok(())
    }

    fn unregister(&mut self, fd: RawFd) {
        self.owners.remove(&fd);
        // Closing the descriptor removes it from epoll anyway; this only makes it prompt.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Handles readiness `events` on the socket `fd`.
    pub fn handle_event(&mut self, fd: RawFd, events: EventSet) {
        match self.owners.get(&fd).copied() {
            Some(FdOwner::Listener) => self.accept_clients(),
            Some(FdOwner::Handshake) => self.read_connect_line(fd),
            Some(FdOwner::Connection(key)) => self.connection_event(key, events),
            None => tracing::debug!(fd, "vsock: event for a closed socket"),
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(error) = stream.set_nonblocking(true) {
                        tracing::warn!(%error, "vsock: cannot make a host connection non-blocking");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(error) = self.register(fd, FdOwner::Handshake, EventSet::IN) {
                        tracing::warn!(%error, "vsock: cannot watch a host connection");
                        continue;
                    }
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "vsock: accept on the host socket failed");
                    return;
                }
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line byte by byte, so data the client sends after it stays
    /// in the socket for the connection.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let complete = loop {
            match handshake.stream.read(&mut byte) {
                Ok(0) => break Err("the client closed before sending CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if handshake.line.len() >= MAX_CONNECT_LINE => {
                    break Err("the CONNECT line is too long")
                }
                Ok(_) => handshake.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err("reading the CONNECT line failed"),
            }
        };

        let handshake = self.handshakes.remove(&fd).expect("looked up above");
        self.unregister(fd);
        let port = complete.and_then(|()| parse_connect_line(&handshake.line));
        match port {
            Ok(port) => self.request_guest_connection(handshake.stream, port),
            Err(reason) => {
                tracing::warn!(reason, line = %String::from_utf8_lossy(&handshake.line), "vsock: rejected a host connection");
            }
        }
    }

    fn request_guest_connection(&mut self, stream: UnixStream, peer_port: u32) {
        let local_port = self.allocate_local_port(peer_port);
        let key = Key {
            local_port,
            peer_port,
        };
        let state = State::HostRequested {
            since: Instant::now(),
        };
        let mut connection = Connection::new(stream, local_port, peer_port, self.guest_cid, state);

        let fd = connection.stream().as_raw_fd();
        let events =
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
        if let Err(error) = self.register(fd, FdOwner::Connection(key), events) {
            tracing::warn!(%error, "vsock: cannot watch a host connection");
            return;
        }
        self.control.push_back(connection.header(Op::Request, 0, 0));
        self.connections.insert(key, connection);
        tracing::debug!(local_port, peer_port, "vsock: host connection requested");
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.connections.contains_key(&Key {
                local_port: port,
                peer_port,
            }) {
                return port;
            }
        }
    }

    fn connection_event(&mut self, key: Key, events: EventSet) {
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            // A read distinguishes EOF from errors.
            connection.readable = true;
        }
        if events.contains(EventSet::OUT) {
            if let Err(error) = connection.flush() {
                tracing::debug!(%error, port = key.peer_port, "vsock: host socket write failed");
                self.reset(key);
                return;
            }
            self.close_if_finished(key);
        }
    }

    /// Handles one packet the guest sent.
    pub fn handle_guest_packet(&mut self, header: PacketHeader, data: &[u8]) {
        if header.dst_cid != HOST_CID
            || header.src_cid != self.guest_cid
            || header.type_ != TYPE_STREAM
        {
            tracing::warn!(
                src_cid = { header.src_cid },
                dst_cid = { header.dst_cid },
                "vsock: dropped a packet with wrong addresses or type"
            );
            self.reset_unknown(&header);
            return;
        }
        let key = Key {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        let Some(op) = header.operation() else {
            self.reset_unknown(&header);
            return;
        };

        if op == Op::Request {
            self.accept_guest_connection(key, &header);
            return;
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            self.reset_unknown(&header);
            return;
        };
        connection.update_peer_credit(&header);

        let result = match op {
            Op::Response => Self::establish(connection),
            Op::Rst => {
                tracing::debug!(
                    port = key.peer_port,
                    local_port = key.local_port,
                    "vsock: the guest reset a connection"
                );
                self.remove(key);
                return;
            }
            Op::Shutdown => connection.guest_shutdown(header.flags),
            Op::Rw => connection.write_from_guest(data),
            Op::CreditRequest => {
                let update = connection.header(Op::CreditUpdate, 0, 0);
                self.control.push_back(update);
                Ok(())
            }
            Op::CreditUpdate | Op::Request => Ok(()),
        };
        if let Err(error) = result {
            tracing::debug!(%error, port = key.peer_port, "vsock: connection failed");
            self.reset(key);
            return;
        }
        self.close_if_finished(key);
    }

    fn accept_guest_connection(&mut self, key: Key, header: &PacketHeader) {
        if self.connections.contains_key(&key) {
            self.reset_unknown(header);
            return;
        }
        let path = port_socket_path(&self.path, key.local_port);
        let stream = match UnixStream::connect(&path)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, path = %path.display(), "vsock: guest connection refused");
                self.reset_unknown(header);
                return;
            }
        };

        let mut connection = Connection::new(
            stream,
            key.local_port,
            key.peer_port,
            self.guest_cid,
            State::Established,
        );
        connection.update_peer_credit(header);
        let fd = connection.stream().as_raw_fd();
        let events =
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
        if let Err(error) = self.register(fd, FdOwner::Connection(key), events) {
            tracing::warn!(%error, "vsock: cannot watch a guest connection");
            self.reset_unknown(header);
            return;
        }
        self.control
            .push_back(connection.header(Op::Response, 0, 0));
        self.connections.insert(key, connection);
        tracing::debug!(
            port = key.local_port,
            peer_port = key.peer_port,
            "vsock: guest connection accepted"
        );
    }

    fn establish(connection: &mut Connection) -> io::Result<()> {
        if !matches!(connection.state, State::HostRequested { .. }) {
            return Err(io::Error::other(
                "the guest responded to a request that was never sent",
            ));
        }
        connection.state = State::Established;
        tracing::debug!(
            port = connection.peer_port,
            local_port = connection.local_port,
            "vsock: the guest accepted a host connection"
        );
        // The line is a few bytes on a fresh socket, so the socket buffer takes it at once.
        let line = format!("OK {}\n", connection.local_port);
        let mut stream = connection.stream();
        stream.write_all(line.as_bytes())
    }

    fn close_if_finished(&mut self, key: Key) {
        if self.connections.get(&key).is_some_and(Connection::finished) {
            self.reset(key);
        }
    }

    /// Sends the guest a reset for the connection and removes it.
    fn reset(&mut self, key: Key) {
        if let Some(mut connection) = self.remove(key) {
            self.control.push_back(connection.header(Op::Rst, 0, 0));
        }
    }

    fn remove(&mut self, key: Key) -> Option<Connection> {
        let connection = self.connections.remove(&key)?;
        self.unregister(connection.stream().as_raw_fd());
        Some(connection)
    }

    /// Replies to a packet of no known connection with a reset, unless it is a reset itself.
    fn reset_unknown(&mut self, header: &PacketHeader) {
        if header.op == Op::Rst as u16 {
            return;
        }
        self.control.push_back(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: header.src_cid,
            src_port: header.dst_port,
            dst_port: header.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Default::default()
        });
    }

    /// Resets host-initiated requests that the guest did not accept in time.
    pub fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.state, State::HostRequested { since } if now - since > REQUEST_TIMEOUT))
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            tracing::warn!(
                port = key.peer_port,
                "vsock: the guest did not accept a host connection in time"
            );
            self.reset(key);
        }
    }

    /// Whether a packet may be ready for the guest. Data may still turn out to be unavailable.
    pub fn has_packets(&self) -> bool {
        !self.control.is_empty()
            || self
                .connections
                .values()
                .any(|c| c.can_send_data() || c.needs_credit_update())
    }

    /// Produces the next packet for the guest, with its payload in `buffer`. Returns the header
    /// and the payload length, or `None` when nothing is ready.
    pub fn next_packet(&mut self, buffer: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if let Some(header) = self.control.pop_front() {
            return Some((header, 0));
        }

        let keys: Vec<Key> = self.connections.keys().copied().collect();
        for key in keys {
            if let Some(packet) = self.next_packet_of(key, buffer) {
                return Some(packet);
            }
        }
        self.control.pop_front().map(|header| (header, 0))
    }

    fn next_packet_of(&mut self, key: Key, buffer: &mut [u8]) -> Option<(PacketHeader, usize)> {
        let connection = self.connections.get_mut(&key)?;
        if connection.can_send_data() {
            match connection.read_for_guest(buffer) {
                Ok(HostRead::Data(len)) => {
                    let header = connection.header(Op::Rw, len as u32, 0);
                    return Some((header, len));
                }
                Ok(HostRead::WouldBlock) => {}
                Ok(HostRead::Eof) => {
                    connection.host_done_sending = true;
                    let header = connection.header(Op::Shutdown, 0, shutdown::SEND);
                    self.close_if_finished(key);
                    return Some((header, 0));
                }
                Err(error) => {
                    tracing::debug!(%error, port = key.peer_port, "vsock: host socket read failed");
                    self.reset(key);
                    return None;
                }
            }
        }
        let connection = self.connections.get_mut(&key)?;
        if connection.needs_credit_update() {
            return Some((connection.header(Op::CreditUpdate, 0, 0), 0));
        }
        None
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect_line(line: &[u8]) -> Result<u32, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "the CONNECT line is not UTF-8")?;
    let port = line
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")
        .ok_or("the line does not start with CONNECT")?;
    port.trim()
        .parse()
        .map_err(|_| "the CONNECT port is not a number")
}

/// The Unix socket that guest connections to host port `port` go to.
pub fn port_socket_path(path: &Path, port: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parses() {
        let cases: [(&[u8], Result<u32, ()>); 6] = [
            (b"CONNECT 52", Ok(52)),
            (b"CONNECT 4294967295", Ok(u32::MAX)),
            (b"CONNECT 52\r", Ok(52)),
            (b"CONNECT", Err(())),
            (b"CONNECT -1", Err(())),
            (b"connect 52", Err(())),
        ];
        for (line, expected) in cases {
            let parsed = parse_connect_line(line).map_err(|_| ());
            assert_eq!(parsed, expected, "line {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn port_socket_path_appends_port() {
        assert_eq!(
            port_socket_path(Path::new("/run/c/vsock.sock"), 1024),
            PathBuf::from("/run/c/vsock.sock_1024")
        );
    }
}
