//! One stream connection between a guest socket and a host Unix socket, with the credit-based
//! flow control of section 5.10.6.3: each side tells the other how much buffer space it has
//! (`buf_alloc`) and how much it has consumed (`fwd_cnt`), and never sends more than the peer
//! can hold.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{shutdown, Op, PacketHeader, TYPE_STREAM};
use super::HOST_CID;

/// Receive buffer the host side offers the guest per connection, in bytes.
pub const HOST_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once the host has consumed this many bytes since the last one it sent,
/// so a guest that only writes does not stall.
const CREDIT_UPDATE_THRESHOLD: u32 = HOST_BUF_ALLOC / 4;

/// Lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host sent a request and waits for the guest's response.
    HostRequested {
        /// When the request was sent, to time it out.
        since: Instant,
    },
    /// Data flows, possibly in one direction only after a half-close.
    Established,
}

/// Result of reading host data for the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    /// This many bytes were read.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The host closed its write side.
    Eof,
}

/// A connection's sockets, ports and flow-control counters.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    guest_cid: u64,
    /// Where the connection is in its lifecycle.
    pub state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes from the guest written to the host socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host socket has not taken yet.
    pending: Vec<u8>,
    /// The host socket reported data (edge-triggered), and it has not been drained yet.
    pub readable: bool,
    /// The host socket reached EOF, and a SEND shutdown informed the guest.
    pub host_done_sending: bool,
    /// The guest will send no more; the host socket's write side closes once `pending` drains.
    pub guest_done_sending: bool,
    /// The guest will receive no more.
    pub guest_done_receiving: bool,
}

impl Connection {
    /// Creates a connection whose guest side is `peer_port` on `guest_cid`.
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: State,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            pending: Vec::new(),
            readable: false,
            host_done_sending: false,
            guest_done_sending: false,
            guest_done_receiving: false,
        }
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Records the guest's buffer space from any packet it sent.
    pub fn update_peer_credit(&mut self, header: &PacketHeader) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Builds a packet header from the host side to the guest side, carrying the host's credit.
    pub fn header(&mut self, op: Op, len: u32, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        if op == Op::Rw {
            self.rx_cnt += Wrapping(len);
        }
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: HOST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Whether the guest should hear about consumed buffer space now.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Whether there is host data to read and the guest can take some.
    pub fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_done_sending
            && !self.guest_done_receiving
            && self.peer_credit() > 0
    }

    /// Reads at most `buffer.len()` bytes, limited by the guest's credit, from the host socket.
    pub fn read_for_guest(&mut self, buffer: &mut [u8]) -> io::Result<HostRead> {
        let limit = buffer.len().min(self.peer_credit() as usize);
        match self.stream.read(&mut buffer[..limit]) {
            Ok(0) => {
                self.readable = false;
                Ok(HostRead::Eof)
            }
            Ok(n) => Ok(HostRead::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                Ok(HostRead::WouldBlock)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(HostRead::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Forwards guest data to the host socket, keeping what it cannot take yet. Fails when the
    /// guest overran the credit the host gave it, or the host socket failed.
    pub fn write_from_guest(&mut self, data: &[u8]) -> io::Result<()> {
        if self.pending.len() + data.len() > HOST_BUF_ALLOC as usize {
            return Err(io::Error::other(
                "the guest sent more than its credit allows",
            ));
        }
        self.pending.extend_from_slice(data);
        self.flush()
    }

    /// Writes pending guest data to the host socket until it would block, and closes the host
    /// socket's write side once the guest is done sending and nothing is pending.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.pending.len() {
            match self.stream.write(&self.pending[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.drain(..written);
        self.fwd_cnt += Wrapping(written as u32);

        if self.guest_done_sending && self.pending.is_empty() {
            // The host peer reads EOF, while its own writes still reach the guest.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Applies a SHUTDOWN packet's flags.
    pub fn guest_shutdown(&mut self, flags: u32) -> io::Result<()> {
        if flags & shutdown::SEND != 0 {
            self.guest_done_sending = true;
        }
        if flags & shutdown::RECEIVE != 0 {
            self.guest_done_receiving = true;
        }
        self.flush()
    }

    /// Whether both directions have ended, so the connection can be reset and forgotten.
    pub fn finished(&self) -> bool {
        let guest_to_host_done = self.guest_done_sending && self.pending.is_empty();
        let host_to_guest_done = self.host_done_sending || self.guest_done_receiving;
        guest_to_host_done && host_to_guest_done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            Connection::new(ours, 1024, 5000, 3, State::Established),
            theirs,
        )
    }

    #[test]
    fn credit_tracks_bytes_in_flight() {
        let (mut conn, _peer) = connection();
        conn.update_peer_credit(&PacketHeader {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(conn.peer_credit(), 1000);

        conn.header(Op::Rw, 600, 0);
        assert_eq!(conn.peer_credit(), 400);
        conn.update_peer_credit(&PacketHeader {
            buf_alloc: 1000,
            fwd_cnt: 500,
            ..Default::default()
        });
        assert_eq!(conn.peer_credit(), 900);
    }

    #[test]
    fn credit_survives_counter_wrap() {
        let (mut conn, _peer) = connection();
        conn.rx_cnt = Wrapping(u32::MAX - 10);
        conn.update_peer_credit(&PacketHeader {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 20,
            ..Default::default()
        });
        conn.header(Op::Rw, 30, 0);
        assert_eq!(conn.peer_credit(), 60);
    }

    #[test]
    fn read_is_limited_by_credit() {
        let (mut conn, mut peer) = connection();
        peer.write_all(b"0123456789").unwrap();
        conn.update_peer_credit(&PacketHeader {
            buf_alloc: 4,
            ..Default::default()
        });

        let mut buffer = [0u8; 64];
        assert_eq!(conn.read_for_guest(&mut buffer).unwrap(), HostRead::Data(4));
        assert_eq!(&buffer[..4], b"0123");
    }

    #[test]
    fn guest_data_reaches_host_and_counts() {
        let (mut conn, mut peer) = connection();
        conn.write_from_guest(b"hello").unwrap();

        let mut received = [0u8; 5];
        peer.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"hello");
        let update = conn.header(Op::CreditUpdate, 0, 0);
        assert_eq!({ update.fwd_cnt }, 5);
    }

    #[test]
    fn guest_overrun_is_rejected() {
        let (mut conn, _peer) = connection();
        // The peer never reads, so the socket buffer fills and the rest stays pending.
        let chunk = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..64 {
            result = conn.write_from_guest(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(
            result.is_err(),
            "more than HOST_BUF_ALLOC pending must fail"
        );
    }

    #[test]
    fn half_close_passes_eof_to_host() {
        let (mut conn, mut peer) = connection();
        conn.write_from_guest(b"last").unwrap();
        conn.guest_shutdown(shutdown::SEND).unwrap();

        let mut received = Vec::new();
        peer.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"last");
        assert!(!conn.finished(), "the host may still send");

        peer.write_all(b"reply").unwrap();
        let mut buffer = [0u8; 16];
        conn.update_peer_credit(&PacketHeader {
            buf_alloc: 100,
            ..Default::default()
        });
        assert_eq!(conn.read_for_guest(&mut buffer).unwrap(), HostRead::Data(5));
    }

    #[test]
    fn finished_needs_both_directions() {
        let cases = [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, true, true),
        ];
        for (index, (guest_send, host_send, expected)) in cases.into_iter().enumerate() {
            let (mut conn, _peer) = connection();
            conn.guest_done_sending = guest_send;
            conn.host_done_sending = host_send;
            assert_eq!(conn.finished(), expected, "case {index}");
        }
    }
}
