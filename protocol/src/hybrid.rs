//! Host side of a Firecracker-style hybrid vsock device.
//!
//! The VMM exposes the guest's vsock as one host Unix socket at `uds_path`. A host process opens
//! a connection to guest port `P` by connecting to `uds_path` and sending `CONNECT P\n`; the VMM
//! replies `OK <host_port>\n` once the guest accepted. A guest connection to host port `P`
//! arrives at a Unix socket that the host listens on at `<uds_path>_P`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Maximum length of the VMM's acknowledgement line, in bytes.
const MAX_ACK_LEN: u64 = 64;

/// Returns the path of the Unix socket on which the host accepts guest connections to `port`.
pub fn listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = uds_path.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Opens a connection to guest vsock `port` through the VMM's Unix socket at `uds_path`.
///
/// # Errors
/// Fails when the socket cannot be connected, or when the VMM replies with anything other than
/// `OK <number>\n` (it closes the connection when no guest process listens on `port`).
pub fn connect(uds_path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds_path)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;

    // Read byte by byte so that no byte after the acknowledgement is consumed here.
    let mut line = Vec::new();
    BufReader::with_capacity(1, (&stream).take(MAX_ACK_LEN)).read_until(b'\n', &mut line)?;
    let ack = String::from_utf8_lossy(&line);
    let valid = ack
        .strip_prefix("OK ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .is_some_and(|number| number.parse::<u32>().is_ok());
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("vsock CONNECT {port} rejected: {:?}", ack.trim_end()),
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    #[test]
    fn listener_path_appends_port() {
        assert_eq!(
            listener_path(Path::new("/run/c/vsock.sock"), 1024),
            PathBuf::from("/run/c/vsock.sock_1024")
        );
    }

    fn serve_once(ack: &'static [u8]) -> (tempdir::Dir, thread::JoinHandle<Vec<u8>>) {
        let dir = tempdir::Dir::new();
        let listener = UnixListener::bind(dir.path.join("v.sock")).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            BufReader::new(&stream)
                .read_until(b'\n', &mut line)
                .unwrap();
            stream.write_all(ack).unwrap();
            line
        });
        (dir, server)
    }

    #[test]
    fn connect_sends_port_and_accepts_ok() {
        let (dir, server) = serve_once(b"OK 1073741824\nrest");
        let mut stream = connect(&dir.path.join("v.sock"), 1025).unwrap();
        assert_eq!(server.join().unwrap(), b"CONNECT 1025\n");

        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
    }

    #[test]
    fn connect_rejects_other_answers() {
        let (dir, server) = serve_once(b"NO\n");
        let err = connect(&dir.path.join("v.sock"), 1025).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// A directory under the system temporary directory, removed on drop.
    mod tempdir {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir {
            pub path: PathBuf,
        }

        impl Dir {
            pub fn new() -> Self {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "bulkhead-protocol-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Self { path }
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}
