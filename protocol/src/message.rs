//! Messages of the control and relay connections.

use crate::codec::{DecodeError, Decoder, Encoder, Frame};

/// Host-chosen identifier of a process, unique among the processes of one control connection.
pub type ProcessId = u32;

/// Size of a terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Number of rows.
    pub rows: u16,
    /// Number of columns.
    pub cols: u16,
}

/// A request to start a process in the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartProcess {
    /// Identifier that later requests and events use for this process.
    pub id: ProcessId,
    /// Program and arguments. `argv[0]` is looked up in the `PATH` of `env` unless it contains a
    /// `/`. Arguments are arbitrary bytes without NUL.
    pub argv: Vec<Vec<u8>>,
    /// Environment entries, each `NAME=value`; the value may contain further `=`. The agent
    /// ignores entries without `=`, as Docker does, and adds a default `PATH` when none is given.
    pub env: Vec<Vec<u8>>,
    /// Working directory, created when missing. Empty means `/`.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved in the container's `/etc/passwd` and
    /// `/etc/group`. Empty means root.
    pub user: String,
    /// Run on a new pseudo-terminal of this size instead of separate stdio pipes. With a
    /// terminal, all output arrives as [`Stream::Stdout`].
    pub tty: Option<WindowSize>,
    /// Connect stdin to [`Request::Stdin`] data. When false, stdin is `/dev/null` (or, with a
    /// terminal, a terminal that receives no input).
    pub stdin: bool,
}

/// A request from the host on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Starts a process. The agent answers with [`Event::Started`], or with an
    /// [`Event::Output`] on stderr and an [`Event::Exit`] when the process could not start.
    StartProcess(StartProcess),
    /// Writes bytes to the process's stdin (or its terminal). The host may send only as many
    /// bytes as [`Event::StdinWindow`] events have granted and not yet used. The agent rejects
    /// data beyond that window with an [`Event::Error`] and drops it.
    Stdin {
        /// Target process.
        id: ProcessId,
        /// Bytes to write, at most [`MAX_DATA_CHUNK`](crate::MAX_DATA_CHUNK).
        data: Vec<u8>,
    },
    /// Closes the process's stdin after the data sent before it has been written. With a
    /// terminal, the agent writes the terminal's end-of-file character instead.
    CloseStdin {
        /// Target process.
        id: ProcessId,
    },
    /// Sends a signal to the process.
    Signal {
        /// Target process.
        id: ProcessId,
        /// Linux signal number.
        signal: i32,
    },
    /// Changes the window size of the process's terminal, which sends it `SIGWINCH`.
    Resize {
        /// Target process.
        id: ProcessId,
        /// New size.
        size: WindowSize,
    },
    /// Sets up the guest's identity before processes start.
    Configure {
        /// Host name of the guest. Empty leaves it unchanged.
        hostname: String,
        /// Contents for `/etc/hosts`. When absent, the agent writes a minimal file only if the
        /// image has none.
        hosts: Option<Vec<u8>>,
        /// Contents for `/etc/resolv.conf`, with the same rule as `hosts`.
        resolv_conf: Option<Vec<u8>>,
        /// Random bytes that the agent adds to the kernel's entropy pool.
        entropy: Vec<u8>,
    },
    /// Stops every process, syncs and unmounts the file systems and powers the guest off.
    Shutdown,
}

/// Output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, or the terminal.
    Stdout,
    /// Standard error.
    Stderr,
}

/// An event from the agent on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent has set up the guest and accepts requests. Always the first frame.
    Ready {
        /// The agent's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        protocol_version: u32,
        /// The agent's package version, for logs.
        agent_version: String,
    },
    /// The process was started.
    Started {
        /// Process named in the request.
        id: ProcessId,
        /// Its process id in the guest.
        pid: u32,
    },
    /// Bytes the process wrote.
    Output {
        /// Source process.
        id: ProcessId,
        /// Stream the bytes came from.
        stream: Stream,
        /// The bytes, never empty.
        data: Vec<u8>,
    },
    /// The process has exited and its stdout and stderr have been sent completely. This is the
    /// last event for the id.
    Exit {
        /// Source process.
        id: ProcessId,
        /// The exit code as Docker reports it: the process's exit code, or 128 plus the signal
        /// number that ended it. 126 and 127 mean the command was not executable or not found,
        /// 125 that the agent failed to set the process up; then an [`Event::Output`] on stderr
        /// says why.
        code: i32,
    },
    /// A request failed without affecting a process's exit, for example a signal to an unknown
    /// id or a failed [`Request::Configure`].
    Error {
        /// Process the request named, if any.
        id: Option<ProcessId>,
        /// What failed.
        message: String,
    },
    /// The agent accepts `bytes` more bytes of [`Request::Stdin`] data for the process. It
    /// grants a first window right after [`Event::Started`] of a process started with `stdin`.
    /// It grants again as it writes the data to the process, so the data buffered in the agent
    /// stays within one window however slowly the process reads.
    StdinWindow {
        /// Target process.
        id: ProcessId,
        /// Additional bytes the host may send.
        bytes: u32,
    },
}

/// First frame of a relay connection, sent by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRequest {
    /// TCP port in the guest. The agent connects to 127.0.0.1 and then ::1 on it.
    pub port: u16,
}

/// The agent's answer to a [`RelayRequest`]. After `Ok` the connection carries raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayResponse {
    /// The agent is connected to the guest port and relays from now on.
    Ok,
    /// The agent could not connect; it closes the connection after this frame.
    Failed {
        /// Why the connection failed.
        message: String,
    },
}

mod tag {
    pub const START_PROCESS: u8 = 0x01;
    pub const STDIN: u8 = 0x02;
    pub const CLOSE_STDIN: u8 = 0x03;
    pub const SIGNAL: u8 = 0x04;
    pub const RESIZE: u8 = 0x05;
    pub const CONFIGURE: u8 = 0x06;
    pub const SHUTDOWN: u8 = 0x07;

    pub const RELAY_REQUEST: u8 = 0x41;

    pub const READY: u8 = 0x81;
    pub const STARTED: u8 = 0x82;
    pub const OUTPUT: u8 = 0x83;
    pub const EXIT: u8 = 0x84;
    pub const ERROR: u8 = 0x85;
    pub const STDIN_WINDOW: u8 = 0x86;

    pub const RELAY_OK: u8 = 0xc1;
    pub const RELAY_FAILED: u8 = 0xc2;
}

fn encode_window_size(enc: &mut Encoder<'_>, size: &WindowSize) {
    enc.u16(size.rows).u16(size.cols);
}

fn decode_window_size(dec: &mut Decoder<'_>) -> Result<WindowSize, DecodeError> {
    Ok(WindowSize {
        rows: dec.u16()?,
        cols: dec.u16()?,
    })
}

fn encode_bytes(enc: &mut Encoder<'_>, bytes: &[u8]) {
    enc.bytes(bytes);
}

impl Frame for Request {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut enc = Encoder(out);
        match self {
            Request::StartProcess(start) => {
                enc.u8(tag::START_PROCESS)
                    .u32(start.id)
                    .bytes_list(&start.argv)
                    .bytes_list(&start.env)
                    .str(&start.cwd)
                    .str(&start.user)
                    .option(start.tty.as_ref(), encode_window_size)
                    .u8(start.stdin.into());
            }
            Request::Stdin { id, data } => {
                enc.u8(tag::STDIN).u32(*id).bytes(data);
            }
            Request::CloseStdin { id } => {
                enc.u8(tag::CLOSE_STDIN).u32(*id);
            }
            Request::Signal { id, signal } => {
                enc.u8(tag::SIGNAL).u32(*id).i32(*signal);
            }
            Request::Resize { id, size } => {
                enc.u8(tag::RESIZE).u32(*id);
                encode_window_size(&mut enc, size);
            }
            Request::Configure {
                hostname,
                hosts,
                resolv_conf,
                entropy,
            } => {
                enc.u8(tag::CONFIGURE)
                    .str(hostname)
                    .option(hosts.as_deref(), encode_bytes)
                    .option(resolv_conf.as_deref(), encode_bytes)
                    .bytes(entropy);
            }
            Request::Shutdown => {
                enc.u8(tag::SHUTDOWN);
            }
        }
    }

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut dec = Decoder::new(body);
        let request = match dec.u8()? {
            tag::START_PROCESS => Request::StartProcess(StartProcess {
                id: dec.u32()?,
                argv: dec.bytes_list()?,
                env: dec.bytes_list()?,
                cwd: dec.string()?,
                user: dec.string()?,
                tty: dec.option(decode_window_size)?,
                stdin: match dec.u8()? {
                    0 => false,
                    1 => true,
                    value => {
                        return Err(DecodeError::InvalidValue {
                            field: "stdin",
                            value: value.into(),
                        })
                    }
                },
            }),
            tag::STDIN => Request::Stdin {
                id: dec.u32()?,
                data: dec.bytes()?,
            },
            tag::CLOSE_STDIN => Request::CloseStdin { id: dec.u32()? },
            tag::SIGNAL => Request::Signal {
                id: dec.u32()?,
                signal: dec.i32()?,
            },
            tag::RESIZE => Request::Resize {
                id: dec.u32()?,
                size: decode_window_size(&mut dec)?,
            },
            tag::CONFIGURE => Request::Configure {
                hostname: dec.string()?,
                hosts: dec.option(Decoder::bytes)?,
                resolv_conf: dec.option(Decoder::bytes)?,
                entropy: dec.bytes()?,
            },
            tag::SHUTDOWN => Request::Shutdown,
            other => return Err(DecodeError::UnknownTag(other)),
        };
        dec.finish()?;
        Ok(request)
    }
}

impl Frame for Event {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut enc = Encoder(out);
        match self {
            Event::Ready {
                protocol_version,
                agent_version,
            } => {
                enc.u8(tag::READY).u32(*protocol_version).str(agent_version);
            }
            Event::Started { id, pid } => {
                enc.u8(tag::STARTED).u32(*id).u32(*pid);
            }
            Event::Output { id, stream, data } => {
                let stream = match stream {
                    Stream::Stdout => 1,
                    Stream::Stderr => 2,
                };
                enc.u8(tag::OUTPUT).u32(*id).u8(stream).bytes(data);
            }
            Event::Exit { id, code } => {
                enc.u8(tag::EXIT).u32(*id).i32(*code);
            }
            Event::Error { id, message } => {
                enc.u8(tag::ERROR)
                    .option(id.as_ref(), |enc, id| {
                        enc.u32(*id);
                    })
                    .str(message);
            }
            Event::StdinWindow { id, bytes } => {
                enc.u8(tag::STDIN_WINDOW).u32(*id).u32(*bytes);
            }
        }
    }

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut dec = Decoder::new(body);
        let event = match dec.u8()? {
            tag::READY => Event::Ready {
                protocol_version: dec.u32()?,
                agent_version: dec.string()?,
            },
            tag::STARTED => Event::Started {
                id: dec.u32()?,
                pid: dec.u32()?,
            },
            tag::OUTPUT => {
                let id = dec.u32()?;
                let stream = match dec.u8()? {
                    1 => Stream::Stdout,
                    2 => Stream::Stderr,
                    value => {
                        return Err(DecodeError::InvalidValue {
                            field: "stream",
                            value: value.into(),
                        })
                    }
                };
                Event::Output {
                    id,
                    stream,
                    data: dec.bytes()?,
                }
            }
            tag::EXIT => Event::Exit {
                id: dec.u32()?,
                code: dec.i32()?,
            },
            tag::ERROR => Event::Error {
                id: dec.option(Decoder::u32)?,
                message: dec.string()?,
            },
            tag::STDIN_WINDOW => Event::StdinWindow {
                id: dec.u32()?,
                bytes: dec.u32()?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        dec.finish()?;
        Ok(event)
    }
}

impl Frame for RelayRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        Encoder(out).u8(tag::RELAY_REQUEST).u16(self.port);
    }

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut dec = Decoder::new(body);
        let request = match dec.u8()? {
            tag::RELAY_REQUEST => RelayRequest { port: dec.u16()? },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        dec.finish()?;
        Ok(request)
    }
}

impl Frame for RelayResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut enc = Encoder(out);
        match self {
            RelayResponse::Ok => {
                enc.u8(tag::RELAY_OK);
            }
            RelayResponse::Failed { message } => {
                enc.u8(tag::RELAY_FAILED).str(message);
            }
        }
    }

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut dec = Decoder::new(body);
        let response = match dec.u8()? {
            tag::RELAY_OK => RelayResponse::Ok,
            tag::RELAY_FAILED => RelayResponse::Failed {
                message: dec.string()?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        dec.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Frame + PartialEq + std::fmt::Debug>(message: &T) {
        let mut body = Vec::new();
        message.encode(&mut body);
        assert_eq!(&T::decode(&body).unwrap(), message);
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::StartProcess(StartProcess {
                id: 7,
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), vec![0xff, 0x01, b' ']],
                env: vec![b"A=b=c".to_vec()],
                cwd: "/work".into(),
                user: "1000:1000".into(),
                tty: Some(WindowSize { rows: 24, cols: 80 }),
                stdin: true,
            }),
            Request::StartProcess(StartProcess::default()),
            Request::Stdin {
                id: 1,
                data: vec![0; 3],
            },
            Request::CloseStdin { id: 1 },
            Request::Signal { id: 2, signal: 15 },
            Request::Resize {
                id: 3,
                size: WindowSize { rows: 1, cols: 2 },
            },
            Request::Configure {
                hostname: "box".into(),
                hosts: None,
                resolv_conf: Some(b"nameserver 10.0.2.3\n".to_vec()),
                entropy: vec![1, 2, 3],
            },
            Request::Shutdown,
        ];
        for request in &requests {
            round_trip(request);
        }
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Ready {
                protocol_version: 1,
                agent_version: "0.1.0".into(),
            },
            Event::Started { id: 1, pid: 42 },
            Event::Output {
                id: 1,
                stream: Stream::Stderr,
                data: b"x".to_vec(),
            },
            Event::Exit { id: 1, code: 137 },
            Event::Exit { id: 1, code: -1 },
            Event::Error {
                id: None,
                message: "m".into(),
            },
            Event::Error {
                id: Some(9),
                message: String::new(),
            },
            Event::StdinWindow {
                id: 2,
                bytes: u32::MAX,
            },
        ];
        for event in &events {
            round_trip(event);
        }
    }

    #[test]
    fn relay_frames_round_trip() {
        round_trip(&RelayRequest { port: 65535 });
        round_trip(&RelayResponse::Ok);
        round_trip(&RelayResponse::Failed {
            message: "refused".into(),
        });
    }

    #[test]
    fn exit_has_documented_layout() {
        let mut body = Vec::new();
        Event::Exit { id: 5, code: 143 }.encode(&mut body);
        assert_eq!(body, [0x84, 5, 0, 0, 0, 143, 0, 0, 0]);
    }

    #[test]
    fn stdin_window_has_documented_layout() {
        let mut body = Vec::new();
        Event::StdinWindow {
            id: 1,
            bytes: 0x4_0000,
        }
        .encode(&mut body);
        assert_eq!(body, [0x86, 1, 0, 0, 0, 0, 0, 4, 0]);
    }

    #[test]
    fn decode_rejects_malformed_bodies() {
        let cases: [(&[u8], DecodeError); 5] = [
            (&[], DecodeError::Truncated(0)),
            (&[0x7f], DecodeError::UnknownTag(0x7f)),
            (&[0x03, 1, 0], DecodeError::Truncated(1)),
            (&[0x07, 0], DecodeError::TrailingBytes(1)),
            // A string length far beyond the body must fail rather than allocate.
            (&[0x06, 0xff, 0xff, 0xff, 0xff], DecodeError::Truncated(5)),
        ];
        for (i, (body, expected)) in cases.iter().enumerate() {
            assert_eq!(&Request::decode(body).unwrap_err(), expected, "case {i}");
        }
    }

    #[test]
    fn decode_rejects_invalid_stream() {
        let body = [0x83, 1, 0, 0, 0, 3, 0, 0, 0, 0];
        assert_eq!(
            Event::decode(&body).unwrap_err(),
            DecodeError::InvalidValue {
                field: "stream",
                value: 3
            }
        );
    }
}
