//! The host end of the agent's control connection: wait for the agent, check its protocol
//! version, then send requests and read events.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bulkhead_protocol::{Event, FrameReader, FrameWriter, Request, PROTOCOL_VERSION};

/// Shared sender of requests: the event loop, the stdin thread, signal forwarding and the
/// supervisor's control socket all write to the one connection.
#[derive(Clone)]
pub struct Sender(Arc<Mutex<FrameWriter<UnixStream>>>);

impl Sender {
    /// Sends one request.
    pub fn send(&self, request: &Request) -> Result<()> {
        let mut writer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        writer
            .write(request)
            .context("failed to send a request to the guest agent")
    }
}

/// An established control connection.
pub struct Session {
    /// Sends requests.
    pub sender: Sender,
    reader: FrameReader<UnixStream>,
    /// The agent's version, from its ready message.
    pub agent_version: String,
}

impl Session {
    /// Waits up to `timeout` for the agent to connect on `listener`, then reads its ready
    /// message. Fails early when `vmm` exits first.
    pub fn accept(listener: &UnixListener, vmm: &mut Child, timeout: Duration) -> Result<Self> {
        let stream = wait_for_agent(listener, vmm, timeout)?;
        stream.set_nonblocking(false)?;
        let mut reader = FrameReader::new(stream.try_clone()?);
        let ready = reader
            .read::<Event>()
            .context("failed to read the agent's ready message")?;
        let agent_version = match ready {
            Some(Event::Ready {
                protocol_version,
                agent_version,
            }) => {
                if protocol_version != PROTOCOL_VERSION {
                    bail!(
                        "the guest agent speaks protocol version {protocol_version}, but this \
                         bulkhead speaks {PROTOCOL_VERSION}; rebuild the initramfs with scripts/setup"
                    );
                }
                agent_version
            }
            Some(other) => bail!("the guest agent sent {other:?} before its ready message"),
            None => bail!("the guest agent closed the control connection before it was ready"),
        };
        Ok(Self {
            sender: Sender(Arc::new(Mutex::new(FrameWriter::new(stream)))),
            reader,
            agent_version,
        })
    }

    /// Reads the next event; `None` when the agent closed the connection.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        self.reader
            .read::<Event>()
            .context("failed to read from the guest agent")
    }
}

fn wait_for_agent(
    listener: &UnixListener,
    vmm: &mut Child,
    timeout: Duration,
) -> Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("failed to accept the guest agent's connection"),
        }
        if let Some(status) = vmm.try_wait()? {
            return Err(anyhow!(
                "the microVM exited before its agent connected ({status})"
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the guest agent did not connect within {} s; set BULKHEAD_START_TIMEOUT to wait longer",
                timeout.as_secs()
            );
        }
        wait_readable(listener.as_raw_fd(), left.min(Duration::from_millis(100)));
    }
}

/// Blocks until `fd` is readable or `timeout` passes.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll_fd` is a valid, initialized pollfd array of length 1 for the whole call.
    unsafe { libc::poll(&mut poll_fd, 1, timeout.as_millis() as i32) };
}
