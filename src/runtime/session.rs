//! The host end of the agent's control connection: wait for the agent, check its protocol
//! version, then send requests and read events.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bulkhead_protocol::{Event, FrameReader, FrameWriter, ProcessId, Request, PROTOCOL_VERSION};

/// Shared sender of requests: the event loop, the stdin thread, signal forwarding and the
/// supervisor's control socket all write to the one connection.
#[derive(Clone)]
pub struct Sender {
    writer: Arc<Mutex<FrameWriter<UnixStream>>>,
    windows: Arc<StdinWindows>,
}

impl Sender {
    /// Sends one request. A [`Request::Stdin`] is split to fit the stdin window that the agent
    /// has granted, and waits for more window while none is left, so that a process that reads
    /// slowly slows down the sender instead of filling the agent's memory. The wait does not
    /// hold up other requests.
    pub fn send(&self, request: &Request) -> Result<()> {
        if let Request::Stdin { id, data } = request {
            return self.send_stdin(*id, data);
        }
        self.write(request)
    }

    fn send_stdin(&self, id: ProcessId, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let len = self.windows.take(id, data.len())?;
            let (chunk, rest) = data.split_at(len);
            self.write(&Request::Stdin {
                id,
                data: chunk.to_vec(),
            })?;
            data = rest;
        }
        Ok(())
    }

    fn write(&self, request: &Request) -> Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer
            .write(request)
            .context("failed to send a request to the guest agent")
    }
}

/// The stdin window of each process: bytes the agent has granted with
/// [`Event::StdinWindow`] and the host has not sent yet.
#[derive(Default)]
struct StdinWindows {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Default)]
struct WindowState {
    granted: HashMap<ProcessId, u64>,
    /// Processes whose [`Event::Exit`] has arrived, so whose stdin is closed.
    exited: Vec<ProcessId>,
    /// The control connection has ended.
    closed: bool,
}

impl StdinWindows {
    /// Waits until `id` has window, then takes up to `max` bytes of it.
    fn take(&self, id: ProcessId, max: usize) -> Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.closed {
                bail!("the guest agent closed the control connection");
            }
            if state.exited.contains(&id) {
                bail!("process {id} has exited and reads no more stdin");
            }
            if let Some(granted) = state.granted.get_mut(&id).filter(|granted| **granted > 0) {
                let len = max.min(usize::try_from(*granted).unwrap_or(usize::MAX));
                *granted -= len as u64;
                return Ok(len);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records an event that changes a window: a grant, an exit, or (with `None`) the end of
    /// the connection.
    fn update(&self, event: Option<&Event>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Some(Event::StdinWindow { id, bytes }) => {
                *state.granted.entry(*id).or_default() += u64::from(*bytes);
            }
            Some(Event::Exit { id, .. }) => {
                state.granted.remove(id);
                state.exited.push(*id);
            }
            Some(_) => return,
            None => state.closed = true,
        }
        self.changed.notify_all();
    }
}

/// An established control connection.
pub struct Session {
    /// Sends requests.
    pub sender: Sender,
    reader: FrameReader<UnixStream>,
    windows: Arc<StdinWindows>,
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
        let windows = Arc::new(StdinWindows::default());
        Ok(Self {
            sender: Sender {
                writer: Arc::new(Mutex::new(FrameWriter::new(stream))),
                windows: Arc::clone(&windows),
            },
            reader,
            windows,
            agent_version,
        })
    }

    /// Reads the next event; `None` when the agent closed the connection.
    /// [`Event::StdinWindow`] is handled here and never returned.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            let event = self.reader.read::<Event>();
            match &event {
                Ok(Some(event @ Event::StdinWindow { .. })) => {
                    self.windows.update(Some(event));
                    continue;
                }
                Ok(Some(event)) => self.windows.update(Some(event)),
                Ok(None) | Err(_) => self.windows.update(None),
            }
            return event.context("failed to read from the guest agent");
        }
    }
}

impl Drop for Session {
    /// Wakes a sender that waits for stdin window, which no event loop grants any more.
    fn drop(&mut self) {
        self.windows.update(None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_window_splits_and_waits_for_grants() {
        let windows = Arc::new(StdinWindows::default());
        windows.update(Some(&Event::StdinWindow { id: 1, bytes: 10 }));
        assert_eq!(windows.take(1, 4).unwrap(), 4);
        assert_eq!(windows.take(1, 100).unwrap(), 6);

        let waiter = {
            let windows = Arc::clone(&windows);
            std::thread::spawn(move || windows.take(1, 100))
        };
        windows.update(Some(&Event::StdinWindow { id: 2, bytes: 50 }));
        windows.update(Some(&Event::StdinWindow { id: 1, bytes: 30 }));
        assert_eq!(waiter.join().unwrap().unwrap(), 30);
        assert_eq!(windows.take(2, 100).unwrap(), 50);
    }

    #[test]
    fn stdin_window_wait_ends_at_exit_or_close() {
        let cases: [(Option<Event>, &str); 2] = [
            (Some(Event::Exit { id: 1, code: 0 }), "process 1 has exited"),
            (None, "closed the control connection"),
        ];
        for (i, (event, expected)) in cases.into_iter().enumerate() {
            let windows = Arc::new(StdinWindows::default());
            let waiter = {
                let windows = Arc::clone(&windows);
                std::thread::spawn(move || windows.take(1, 1))
            };
            windows.update(event.as_ref());
            let message = waiter.join().unwrap().unwrap_err().to_string();
            assert!(message.contains(expected), "case {i}: {message}");
        }
    }
}
