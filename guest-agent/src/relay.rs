//! The port relay: the host opens a connection to the agent's relay listener, names a TCP port
//! of the guest in a [`RelayRequest`], and the agent relays bytes between that connection and a
//! TCP connection to 127.0.0.1 (or ::1) on the port.
//!
//! Each direction is copied by its own thread. The end of one direction is passed on as a
//! shutdown of the write side, and both sockets close only when both directions have ended, so
//! half-closing protocols work.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;

use bulkhead_protocol::{FrameReader, FrameWriter, RelayRequest, RelayResponse};
use tracing::{debug, warn};

use crate::transport::Listener;

/// Stack size of relay threads, which each hold one copy buffer.
const RELAY_THREAD_STACK: usize = 128 * 1024;

/// Accepts relay connections on `listener` on a new thread, forever.
pub fn start(listener: Listener) {
    let run = move || loop {
        match listener.accept() {
            Ok(stream) => spawn(move || handle(stream)),
            Err(err) => {
                warn!(error = %err, "accepting a relay connection failed");
                // Errors such as EMFILE persist for a while; back off instead of spinning.
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    spawn(run);
}

fn spawn(run: impl FnOnce() + Send + 'static) {
    if let Err(err) = thread::Builder::new()
        .name("relay".into())
        .stack_size(RELAY_THREAD_STACK)
        .spawn(run)
    {
        warn!(error = %err, "failed to start a relay thread");
    }
}

/// Connects to the guest port on IPv4 loopback, then IPv6 loopback.
fn connect_guest(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    TcpStream::connect(v4).or_else(|v4_err| TcpStream::connect(v6).map_err(|_| v4_err))
}

fn handle(host: UnixStream) {
    let request = match FrameReader::new(&host).read::<RelayRequest>() {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(err) => {
            warn!(error = %err, "invalid relay request");
            return;
        }
    };
    let port = request.port;

    let mut writer = FrameWriter::new(&host);
    let guest = match connect_guest(port) {
        Ok(guest) => guest,
        Err(err) => {
            debug!(port, error = %err, "relay target refused");
            let message = format!("failed to connect to guest port {port}: {err}");
            let _ = writer.write(&RelayResponse::Failed { message });
            return;
        }
    };
    if let Err(err) = writer.write(&RelayResponse::Ok) {
        debug!(port, error = %err, "host left before the relay started");
        return;
    }
    debug!(port, "relay started");

    let (Ok(host_reader), Ok(guest_writer)) = (host.try_clone(), guest.try_clone()) else {
        warn!(port, "failed to duplicate relay sockets");
        return;
    };
    let upstream = thread::Builder::new()
        .name("relay-up".into())
        .stack_size(RELAY_THREAD_STACK)
        .spawn(move || copy_half(host_reader, guest_writer, |s| s.shutdown(Shutdown::Write)));
    copy_half(guest, host, |s: &UnixStream| s.shutdown(Shutdown::Write));
    match upstream {
        Ok(upstream) => {
            let _ = upstream.join();
        }
        Err(err) => warn!(port, error = %err, "failed to start a relay thread"),
    }
    debug!(port, "relay ended");
}

/// Copies `from` into `to` until end of file or an error, then shuts down `to`'s write side.
fn copy_half<R: Read, W: Write>(
    mut from: R,
    mut to: W,
    shutdown: impl FnOnce(&W) -> io::Result<()>,
) {
    if let Err(err) = io::copy(&mut from, &mut to) {
        debug!(error = %err, "relay direction ended with an error");
    }
    let _ = shutdown(&to);
}
