//! The control connection: events to the host and the dispatch of its requests.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bulkhead_protocol::{Event, FrameReader, FrameWriter, Request};
use tracing::{debug, error, info, warn};

use crate::network;
use crate::process::Processes;
use crate::syscall::Syscall;

/// Sends events on the control connection; clones share the connection.
#[derive(Clone)]
pub struct EventSink {
    writer: Arc<Mutex<FrameWriter<UnixStream>>>,
    failed: Arc<AtomicBool>,
}

impl EventSink {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            writer: Arc::new(Mutex::new(FrameWriter::new(stream))),
            failed: Arc::default(),
        }
    }

    /// Sends one event. A failed connection is logged once; later events are dropped, and the
    /// request loop ends when it reads end of file.
    pub fn send(&self, event: &Event) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self.writer.lock().unwrap().write(event) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                error!(error = %err, "sending to the host failed; dropping further events");
            }
        }
    }
}

/// Why the request loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The host sent [`Request::Shutdown`].
    Shutdown,
    /// The host closed the connection, or it failed.
    Disconnected,
}

/// Reads and dispatches requests until the host asks for shutdown or the connection ends.
pub fn serve(
    stream: UnixStream,
    sys: &Arc<dyn Syscall>,
    processes: &Processes,
    events: &EventSink,
) -> End {
    let mut reader = FrameReader::new(stream);
    loop {
        let request = match reader.read::<Request>() {
            Ok(Some(request)) => request,
            Ok(None) => {
                info!("host closed the control connection");
                return End::Disconnected;
            }
            Err(err) => {
                warn!(error = %err, "reading from the host failed");
                return End::Disconnected;
            }
        };

        match request {
            Request::StartProcess(start) => processes.start(start),
            Request::Stdin { id, data } => processes.write_stdin(id, data),
            Request::CloseStdin { id } => processes.close_stdin(id),
            Request::Signal { id, signal } => processes.signal(id, signal),
            Request::Resize { id, size } => processes.resize(id, size),
            Request::Configure {
                hostname,
                hosts,
                resolv_conf,
                entropy,
            } => {
                let config = network::Config {
                    hostname: &hostname,
                    hosts: hosts.as_deref(),
                    resolv_conf: resolv_conf.as_deref(),
                    entropy: &entropy,
                };
                match network::configure(sys.as_ref(), &config) {
                    Ok(()) => debug!(hostname, "configured"),
                    Err(err) => {
                        warn!(error = %err, "configuration failed");
                        events.send(&Event::Error {
                            id: None,
                            message: crate::error_chain(&err),
                        });
                    }
                }
            }
            Request::Shutdown => {
                info!("host requested shutdown");
                return End::Shutdown;
            }
        }
    }
}
