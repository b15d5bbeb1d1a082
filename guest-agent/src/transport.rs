//! Connections to the host: `AF_VSOCK` in the VM, Unix sockets when the agent runs on a host
//! for tests.
//!
//! Both kinds are handed out as [`UnixStream`]s. The agent only reads, writes and shuts down
//! these sockets, and those system calls behave the same on a vsock stream socket, so one type
//! serves both.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// `VMADDR_CID_ANY`: listen on every context id of the guest.
const VSOCK_CID_ANY: u32 = u32::MAX;

/// Address of a connection to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `vsock:CID:PORT`, or `vsock:PORT` for a listener on any CID.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!("invalid endpoint {text:?}: expected unix:PATH, vsock:PORT or vsock:CID:PORT")
        };
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid());
            }
            return Ok(Endpoint::Unix(path.into()));
        }
        let rest = text.strip_prefix("vsock:").ok_or_else(invalid)?;
        let (cid, port) = match rest.split_once(':') {
            Some((cid, port)) => (cid.parse().map_err(|_| invalid())?, port),
            None => (VSOCK_CID_ANY, rest),
        };
        Ok(Endpoint::Vsock {
            cid,
            port: port.parse().map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

fn vsock_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn connect_once(endpoint: &Endpoint) -> io::Result<UnixStream> {
    match endpoint {
        Endpoint::Unix(path) => UnixStream::connect(path),
        Endpoint::Vsock { cid, port } => {
            let fd = vsock_socket()?;
            connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &VsockAddr::new(*cid, *port),
            )?;
            Ok(UnixStream::from(fd))
        }
    }
}

/// Connects to `endpoint`, retrying refused or missing targets every 10 ms until `timeout`.
///
/// # Errors
/// Returns the last error once `timeout` has passed, or any other error at once.
pub fn connect_with_retry(endpoint: &Endpoint, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect_once(endpoint) {
            Ok(stream) => return Ok(stream),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::NotFound
                        | io::ErrorKind::ConnectionReset
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err),
        }
    }
}

/// A listening socket.
pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    /// Listens on `endpoint`. A Unix socket file left from an earlier run is replaced.
    ///
    /// # Errors
    /// Fails when the socket cannot be bound.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Self> {
        match endpoint {
            Endpoint::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Ok(Listener::Unix(UnixListener::bind(path)?))
            }
            Endpoint::Vsock { cid, port } => {
                let fd = vsock_socket()?;
                let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                bind(raw, &VsockAddr::new(*cid, *port))?;
                listen(&fd, Backlog::MAXCONN)?;
                Ok(Listener::Vsock(fd))
            }
        }
    }

    /// Waits for the next connection.
    ///
    /// # Errors
    /// Fails when accept(2) fails.
    pub fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Unix(listener) => listener.accept().map(|(stream, _)| stream),
            Listener::Vsock(fd) => {
                let raw = accept4(std::os::fd::AsRawFd::as_raw_fd(fd), SockFlag::SOCK_CLOEXEC)?;
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(raw) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let cases: [(&str, Result<Endpoint, ()>); 6] = [
            ("unix:/run/a.sock", Ok(Endpoint::Unix("/run/a.sock".into()))),
            ("vsock:2:1024", Ok(Endpoint::Vsock { cid: 2, port: 1024 })),
            (
                "vsock:1025",
                Ok(Endpoint::Vsock {
                    cid: VSOCK_CID_ANY,
                    port: 1025,
                }),
            ),
            ("unix:", Err(())),
            ("vsock:x:1", Err(())),
            ("tcp:1", Err(())),
        ];
        for (i, (text, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                text.parse::<Endpoint>().map_err(|_| ()),
                expected,
                "case {i}"
            );
        }
    }
}
