//! The guest's identity on the network: host name and `/etc/hostname`, loopback, `/etc/hosts`,
//! `/etc/resolv.conf`, and the entropy that the host provides.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use thiserror::Error;

use crate::syscall::Syscall;

/// Failures of [`configure`].
#[derive(Debug, Error)]
pub enum NetworkError {
    /// sethostname failed.
    #[error("failed to set the host name to {name:?}")]
    Hostname {
        /// The requested name.
        name: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A configuration file could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// The settings of a [`bulkhead_protocol::Request::Configure`].
pub struct Config<'a> {
    pub hostname: &'a str,
    pub hosts: Option<&'a [u8]>,
    pub resolv_conf: Option<&'a [u8]>,
    pub entropy: &'a [u8],
}

/// Returns the `/etc/hosts` written when the image has none.
pub fn default_hosts(hostname: &str) -> String {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    hosts
}

/// Applies `config` to the guest, whose root must already be the container root.
///
/// # Errors
/// Stops at the first step that fails.
pub fn configure(sys: &dyn Syscall, config: &Config<'_>) -> Result<(), NetworkError> {
    if !config.hostname.is_empty() {
        sys.sethostname(config.hostname)
            .map_err(|source| NetworkError::Hostname {
                name: config.hostname.to_owned(),
                source,
            })?;
        // As in Docker, /etc/hostname contains the container's host name, replacing the image's.
        let path = "/etc/hostname";
        std::fs::write(path, format!("{}\n", config.hostname))
            .map_err(|source| NetworkError::Write { path, source })?;
    }

    let default_hosts = default_hosts(config.hostname);
    let files = [
        (
            "/etc/hosts",
            config.hosts.or(Some(default_hosts.as_bytes())),
        ),
        ("/etc/resolv.conf", config.resolv_conf),
    ];
    for (path, contents) in files {
        let requested = match path {
            "/etc/hosts" => config.hosts.is_some(),
            _ => config.resolv_conf.is_some(),
        };
        // An image's own file wins over a default, never over a file the host sends.
        let Some(contents) = contents else { continue };
        if !requested && Path::new(path).exists() {
            continue;
        }
        std::fs::write(path, contents).map_err(|source| NetworkError::Write { path, source })?;
    }

    if !config.entropy.is_empty() {
        // NOTE: writing to /dev/urandom mixes the bytes into the pool without crediting entropy;
        // crediting needs the RNDADDENTROPY ioctl.
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .and_then(|mut urandom| urandom.write_all(config.entropy))
            .map_err(|source| NetworkError::Write {
                path: "/dev/urandom",
                source,
            })?;
    }
    Ok(())
}

/// Sets `IFF_UP` on the interface `name` with the SIOCSIFFLAGS ioctl.
pub fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain old data, for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }

    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from `request` and writes the flags
    // into its union, which lives for the whole call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the union's active field is ifru_flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hosts_names_localhost_and_host() {
        let hosts = default_hosts("box");
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("127.0.1.1\tbox\n"));
        assert!(!default_hosts("").contains("127.0.1.1"));
    }

    #[test]
    fn set_link_up_rejects_long_name() {
        let err = set_link_up("a-name-longer-than-ifnamsiz").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
