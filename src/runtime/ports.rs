//! Published ports (`-p [IP:]HOSTPORT:CONTAINERPORT[/tcp]`): the supervisor listens on the host
//! port and relays each connection to the guest port through the agent's relay port over vsock.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{anyhow, bail, Context, Result};
use bulkhead_protocol::{
    hybrid, FrameReader, FrameWriter, RelayRequest, RelayResponse, RELAY_PORT,
};

use crate::container::PortMapping;

/// Parses one `-p` value: `[IP:]HOSTPORT:CONTAINERPORT[/tcp]`. IPv6 addresses go in brackets.
pub fn parse(spec: &str) -> Result<PortMapping> {
    let usage = || anyhow!("invalid port mapping {spec:?}: use [IP:]HOSTPORT:CONTAINERPORT[/tcp]");

    let (body, protocol) = match spec.rsplit_once('/') {
        Some((body, protocol)) => (body, protocol),
        None => (spec, "tcp"),
    };
    if protocol != "tcp" {
        bail!("invalid port mapping {spec:?}: only tcp is supported, not {protocol}");
    }

    let (host_part, container_port) = body.rsplit_once(':').ok_or_else(usage)?;
    let (host_ip, host_port) = match host_part.rsplit_once(':') {
        Some((ip, port)) => (parse_ip(ip).ok_or_else(usage)?, port),
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), host_part),
    };
    let port = |text: &str| match text.parse::<u64>() {
        Ok(number @ 1..=65535) => Ok(number as u16),
        Ok(number) => Err(anyhow!(
            "invalid port mapping {spec:?}: port {number} is out of range; use 1 to 65535"
        )),
        Err(_) => Err(usage()),
    };

    Ok(PortMapping {
        host_ip: host_ip.to_string(),
        host_port: port(host_port)?,
        container_port: port(container_port)?,
    })
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// Binds the host side of every mapping, so a port in use fails before the VM starts.
pub fn bind(mappings: &[PortMapping]) -> Result<Vec<(PortMapping, TcpListener)>> {
    mappings
        .iter()
        .map(|mapping| {
            let ip: IpAddr = mapping
                .host_ip
                .parse()
                .context("invalid host address in port mapping")?;
            let address = SocketAddr::new(ip, mapping.host_port);
            let listener = TcpListener::bind(address).map_err(|error| {
                let hint = if error.kind() == io::ErrorKind::AddrInUse {
                    "; pick another host port with -p"
                } else {
                    ""
                };
                anyhow!("cannot publish port {address}: {error}{hint}")
            })?;
            Ok((mapping.clone(), listener))
        })
        .collect()
}

/// Serves each listener on its own thread for as long as the process lives.
pub fn serve(listeners: Vec<(PortMapping, TcpListener)>, vsock: PathBuf, container_id: String) {
    for (mapping, listener) in listeners {
        let vsock = vsock.clone();
        let container_id = container_id.clone();
        let spawned = thread::Builder::new()
            .name(format!("port-{}", mapping.host_port))
            .spawn(move || accept_loop(listener, mapping, vsock, container_id));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a port listener thread");
        }
    }
}

fn accept_loop(listener: TcpListener, mapping: PortMapping, vsock: PathBuf, container_id: String) {
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, container = %container_id, port = mapping.host_port, "accept failed");
                continue;
            }
        };
        let vsock = vsock.clone();
        let container_port = mapping.container_port;
        let container_id = container_id.clone();
        let spawned = thread::Builder::new().name("relay".into()).spawn(move || {
            if let Err(error) = relay(client, &vsock, container_port) {
                tracing::warn!(%error, container = %container_id, port = container_port, "relay failed");
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a relay thread");
        }
    }
}

/// Opens a relay connection to `port` in the guest and copies bytes both ways until both
/// directions end. A half-close on one side becomes a shutdown of the other side's write half.
pub fn relay(client: TcpStream, vsock: &Path, port: u16) -> Result<()> {
    let stream =
        hybrid::connect(vsock, RELAY_PORT).context("cannot reach the guest agent's relay port")?;
    FrameWriter::new(&stream).write(&RelayRequest { port })?;
    match FrameReader::new(&stream).read::<RelayResponse>()? {
        Some(RelayResponse::Ok) => {}
        Some(RelayResponse::Failed { message }) => bail!("guest port {port}: {message}"),
        None => bail!("the agent closed the relay connection for guest port {port}"),
    }

    let guest_reader = stream.try_clone()?;
    let client_writer = client.try_clone()?;
    let to_client = thread::spawn(move || copy_then_shutdown(guest_reader, client_writer));
    let to_guest = copy_then_shutdown(client, stream);
    let to_client = to_client
        .join()
        .map_err(|_| anyhow!("relay thread panicked"))?;
    to_guest.and(to_client).context("relay copy failed")
}

trait HalfClose {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl HalfClose for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

fn copy_then_shutdown(mut from: impl Read, mut to: impl Write + HalfClose) -> io::Result<()> {
    let result = io::copy(&mut from, &mut to);
    // The peer may already be gone; its own copy reports that.
    let _ = to.shutdown_write();
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse() {
        let cases = [
            ("8080:5000", Some(("0.0.0.0", 8080, 5000))),
            ("127.0.0.1:8080:5000", Some(("127.0.0.1", 8080, 5000))),
            ("8080:5000/tcp", Some(("0.0.0.0", 8080, 5000))),
            ("[::1]:80:8080", Some(("::1", 80, 8080))),
            ("8080", None),
            ("8080:0", None),
            ("x:1:2", None),
            ("70000:80", None),
            ("8080:5000/udp", None),
            (":5000", None),
        ];
        for (spec, expected) in cases {
            let parsed = parse(spec).ok();
            let expected = expected.map(|(ip, host_port, container_port)| PortMapping {
                host_ip: ip.into(),
                host_port,
                container_port,
            });
            assert_eq!(parsed, expected, "spec {spec:?}");
        }
    }

    #[test]
    fn port_out_of_range_is_named() {
        for (spec, port) in [("99999:80", "99999"), ("80:0", "0"), ("80:65536", "65536")] {
            let message = parse(spec).unwrap_err().to_string();
            assert!(
                message.contains(&format!("port {port} is out of range")),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_port_error_names_value() {
        let message = parse("80:eighty").unwrap_err().to_string();
        assert!(message.contains("\"80:eighty\""), "{message}");
        assert!(message.contains("HOSTPORT:CONTAINERPORT"), "{message}");
    }

    #[test]
    fn port_in_use_fails_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mapping = PortMapping {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            container_port: 80,
        };
        let message = bind(&[mapping]).unwrap_err().to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("pick another host port"), "{message}");
    }
}
