//! Runs commands inside the KVM test host from integration tests.
//!
//! This machine's `/dev/kvm` runs only PVM guest kernels, so every test that boots a microVM runs
//! its commands in the test host that `tests/kvm-host/run --serve` starts. The host is QEMU (TCG,
//! `-cpu max`) with Debian's kernel and `kvm-amd`. It sees this machine's root read-only, with
//! tmpfs on `/tmp`, `/var/tmp`, `/run` and `/var/lib/bulkhead`. Paths are the same inside and out, so a test
//! refers to the binaries under the cargo target directory by their usual paths. Files a test
//! prepares for the host must live outside `/tmp` (use `env!("CARGO_TARGET_TMPDIR")`), and the host
//! can write only to its tmpfs paths.
//!
//! Booting a host takes 10 to 20 s and each command costs about 0.1 s more than on this machine,
//! so a test binary shares one host among its tests through [`shared`] or [`shared_with`].
//!
//! ```no_run
//! let host = common::kvm_host::shared();
//! let out = host.run(&["cat", "/proc/version"]);
//! assert_eq!(out.status, 0, "{out}");
//! ```
//!
//! The host stops when the test binary exits, however it exits: the run script watches its stdin,
//! a pipe whose only writer is this process, and kills QEMU when it reaches EOF.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The script that boots the test host; see its header for the options.
/// Test binaries of member crates include this module too, so the script is looked up from the
/// including package's directory upwards.
fn run_script() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .map(|dir| dir.join("tests/kvm-host/run"))
        .find(|script| script.exists())
        .unwrap_or_else(|| manifest_dir.join("tests/kvm-host/run"))
}

/// What the command server sends first on every connection.
const GREETING: &[u8] = b"bulkhead-kvm-host 1";

/// Variables of this process that commands inherit, besides those named in [`PASSED_ENV_PREFIX`].
const PASSED_ENV: [&str; 4] = ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"];
const PASSED_ENV_PREFIX: &str = "BULKHEAD_";

/// Time limit of one command unless [`HostCommand::timeout`] sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

// Frame kinds of the command protocol (documented in tests/kvm-host/server.py).
const ARG: u8 = b'a';
const ENV: u8 = b'e';
const CWD: u8 = b'd';
const START: u8 = b'x';
const STDIN: u8 = b'i';
const HELLO: u8 = b'H';
const STDOUT: u8 = b'o';
const STDERR: u8 = b'e';
const STATUS: u8 = b's';

/// Why the test host could not start or a command could not run.
#[derive(Debug)]
pub enum Error {
    /// The run script could not be started.
    Spawn(io::Error),
    /// The run script exited before the host was ready; `stderr` contains its report, including the
    /// tail of the console log.
    Boot { status: Option<i32>, stderr: String },
    /// The run script's ready line was not understood.
    ReadyLine(String),
    /// Talking to the command server failed.
    Io(io::Error),
    /// The command did not finish within its time limit; it has been killed.
    TimedOut(Duration),
    /// The command server broke the protocol.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn(e) => write!(f, "cannot start {}: {e}", run_script().display()),
            Error::Boot { status, stderr } => {
                let status = status.map_or("a signal".to_string(), |s| format!("status {s}"));
                write!(f, "the KVM test host did not start ({status}):\n{stderr}")
            }
            Error::ReadyLine(line) => {
                write!(
                    f,
                    "unexpected ready line from {}: {line:?}",
                    run_script().display()
                )
            }
            Error::Io(e) => write!(f, "talking to the KVM test host: {e}"),
            Error::TimedOut(limit) => write!(f, "command did not finish within {limit:?}"),
            Error::Protocol(what) => write!(f, "command server protocol error: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to start a test host. The defaults are those of the run script.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Ports inside the host to reach from this machine; each gets a free loopback port here,
    /// which [`KvmHost::host_port`] returns.
    pub forwards: Vec<u16>,
    /// Memory of the host in MiB (run script default: 4096).
    pub memory_mib: Option<u32>,
    /// vCPUs of the host (run script default: 2).
    pub cpus: Option<u32>,
}

impl Options {
    /// Adds a forward from a free loopback port of this machine to `guest_port` inside the host.
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.forwards.push(guest_port);
        self
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status; 128+N when signal N killed the command, 127 when it was not found.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Shows the status and both streams, for assertion messages.
impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}---",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// A running test host.
pub struct KvmHost {
    /// The run script in serve mode; the host stops when `stdin` closes.
    serve: Mutex<Option<(Child, ChildStdin)>>,
    port: u16,
    /// `(host port, guest port)` pairs.
    forwards: Vec<(u16, u16)>,
    log_dir: PathBuf,
}

impl KvmHost {
    /// Boots a host with the default options.
    pub fn start() -> Result<KvmHost> {
        Self::start_with(&Options::default())
    }

    /// Boots a host and waits until it accepts commands.
    pub fn start_with(options: &Options) -> Result<KvmHost> {
        let mut cmd = Command::new(run_script());
        cmd.arg("--serve");
        for port in &options.forwards {
            cmd.arg("--forward").arg(format!("0:{port}"));
        }
        if let Some(mib) = options.memory_mib {
            cmd.arg("--memory").arg(mib.to_string());
        }
        if let Some(cpus) = options.cpus {
            cmd.arg("--cpus").arg(cpus.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Drain stderr all along, so that a late report cannot block the script.
        let stderr: JoinHandle<String> = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });

        let mut line = String::new();
        let read =
            BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut line);
        if read.is_err() || !line.starts_with("ready ") {
            drop(stdin);
            let status = child.wait().ok().and_then(|s| s.code());
            let stderr = stderr.join().unwrap_or_default();
            return Err(Error::Boot { status, stderr });
        }
        let ready = parse_ready_line(&line)?;
        Ok(KvmHost {
            serve: Mutex::new(Some((child, stdin))),
            port: ready.port,
            forwards: ready.forwards,
            log_dir: ready.log_dir,
        })
    }

    /// Runs `args` with no stdin and returns what it left behind. Panics when the command cannot be
    /// run at all (the host died, or the time limit expired), which fails the calling test.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Output {
        let (program, rest) = args.split_first().expect("run needs a program");
        self.command(program.as_ref())
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("running {:?} in the KVM test host: {e}", join(args)))
    }

    /// Starts building a command to run in the host.
    pub fn command(&self, program: &str) -> HostCommand<'_> {
        HostCommand {
            host: self,
            args: vec![program.to_string()],
            env: BTreeMap::new(),
            cwd: None,
            stdin: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Returns the loopback port of this machine that reaches `guest_port` inside the host. Panics when
    /// `guest_port` was not declared in [`Options::forwards`].
    pub fn host_port(&self, guest_port: u16) -> u16 {
        self.forwards
            .iter()
            .find(|(_, guest)| *guest == guest_port)
            .map(|(host, _)| *host)
            .unwrap_or_else(|| panic!("port {guest_port} is not forwarded from the KVM test host"))
    }

    /// Returns the directory with the host's console and QEMU logs. It is removed when the host stops
    /// normally.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn connect(&self) -> Result<TcpStream> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (kind, payload) = read_frame(&mut stream)?;
        if kind != HELLO || payload != GREETING {
            return Err(Error::Protocol(format!("unexpected greeting {payload:?}")));
        }
        Ok(stream)
    }
}

/// Stops the host: closing the script's stdin makes it kill QEMU.
impl Drop for KvmHost {
    fn drop(&mut self) {
        let serve = self
            .serve
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut child, stdin)) = serve {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The host shared by every test of this test binary, started on first use with the default
/// options. Panics when the host cannot start, in every test that calls it.
pub fn shared() -> &'static KvmHost {
    shared_with(Options::default())
}

/// Like [`shared`], with `options` for the first start. Every call within one test binary must pass
/// the same options; a call with others panics.
pub fn shared_with(options: Options) -> &'static KvmHost {
    static HOST: OnceLock<(Options, std::result::Result<KvmHost, String>)> = OnceLock::new();
    let (started_with, host) = HOST.get_or_init(|| {
        let host = KvmHost::start_with(&options).map_err(|e| e.to_string());
        (options.clone(), host)
    });
    assert_eq!(
        started_with, &options,
        "the shared KVM test host was started with other options"
    );
    match host {
        Ok(host) => host,
        Err(e) => panic!("{e}"),
    }
}

/// A command to run in the host, in the manner of [`std::process::Command`].
pub struct HostCommand<'a> {
    host: &'a KvmHost,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    stdin: Vec<u8>,
    timeout: Duration,
}

impl HostCommand<'_> {
    pub fn arg(&mut self, arg: impl AsRef<str>) -> &mut Self {
        self.args.push(arg.as_ref().to_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Sets a variable on top of those passed through from this process (`PATH`, `HOME`,
    /// `BULKHEAD_*`, `RUST_LOG`, `RUST_BACKTRACE`).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets the working directory; the default is this process's, and `/` when the host lacks it.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Sets the bytes of the command's stdin, which is closed after them (the default is an empty stdin).
    pub fn stdin(&mut self, data: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = data.into();
        self
    }

    /// Sets the time limit from start to exit; when it expires, the command is killed.
    pub fn timeout(&mut self, limit: Duration) -> &mut Self {
        self.timeout = limit;
        self
    }

    /// Runs the command to completion and collects its output.
    pub fn output(&self) -> Result<Output> {
        self.spawn()?.wait()
    }

    /// Starts the command and returns at once. Dropping the handle kills the command's process
    /// group inside the host.
    pub fn spawn(&self) -> Result<HostChild> {
        let mut stream = self.host.connect()?;
        let mut request = Vec::new();
        for arg in &self.args {
            push_frame(&mut request, ARG, arg.as_bytes());
        }
        for (key, value) in passed_env().into_iter().chain(self.env.clone()) {
            push_frame(&mut request, ENV, format!("{key}={value}").as_bytes());
        }
        let cwd = match &self.cwd {
            Some(dir) => dir.clone(),
            None => std::env::current_dir()?,
        };
        push_frame(&mut request, CWD, cwd.as_os_str().as_encoded_bytes());
        push_frame(&mut request, START, &[]);
        stream.write_all(&request)?;

        // A thread feeds stdin, so that a command that writes much before it reads cannot stall
        // against this side.
        let mut writer = stream.try_clone()?;
        let stdin = self.stdin.clone();
        let feeder = thread::spawn(move || -> io::Result<()> {
            let mut frames = Vec::with_capacity(stdin.len() + 10);
            for chunk in stdin.chunks(64 * 1024) {
                push_frame(&mut frames, STDIN, chunk);
            }
            push_frame(&mut frames, STDIN, &[]);
            writer.write_all(&frames)
        });
        Ok(HostChild {
            stream,
            feeder: Some(feeder),
            deadline: Instant::now() + self.timeout,
            timeout: self.timeout,
        })
    }
}

/// A command running in the host. Dropping it before [`HostChild::wait`] returns kills it.
pub struct HostChild {
    stream: TcpStream,
    feeder: Option<JoinHandle<io::Result<()>>>,
    deadline: Instant,
    timeout: Duration,
}

impl HostChild {
    /// Waits for the command to exit and returns its output.
    pub fn wait(mut self) -> Result<Output> {
        let mut output = Output::default();
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::TimedOut(self.timeout));
            }
            self.stream.set_read_timeout(Some(left))?;
            let (kind, payload) = match read_frame(&mut self.stream) {
                Ok(frame) => frame,
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::TimedOut(self.timeout))
                }
                Err(e) => return Err(e),
            };
            match kind {
                STDOUT => output.stdout.extend_from_slice(&payload),
                STDERR => output.stderr.extend_from_slice(&payload),
                STATUS => {
                    output.status = std::str::from_utf8(&payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| Error::Protocol(format!("bad status {payload:?}")))?;
                    break;
                }
                other => return Err(Error::Protocol(format!("unknown frame kind {other}"))),
            }
        }
        if let Some(feeder) = self.feeder.take() {
            // The command may exit without reading all of its stdin; that is not an error.
            let _ = feeder.join();
        }
        Ok(output)
    }

    /// Kills the command's process group inside the host.
    pub fn kill(self) {}
}

impl Drop for HostChild {
    fn drop(&mut self) {
        // Closing the connection before the status frame makes the server kill the command.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

struct Ready {
    port: u16,
    forwards: Vec<(u16, u16)>,
    log_dir: PathBuf,
}

/// Parses `ready port=P forward=H:G... log=DIR`.
fn parse_ready_line(line: &str) -> Result<Ready> {
    let bad = || Error::ReadyLine(line.to_string());
    let mut ready = Ready {
        port: 0,
        forwards: Vec::new(),
        log_dir: PathBuf::new(),
    };
    for field in line.trim_end().split(' ').skip(1) {
        match field.split_once('=').ok_or_else(bad)? {
            ("port", p) => ready.port = p.parse().map_err(|_| bad())?,
            ("forward", f) => {
                let (h, g) = f.split_once(':').ok_or_else(bad)?;
                ready
                    .forwards
                    .push((h.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?));
            }
            ("log", dir) => ready.log_dir = PathBuf::from(dir),
            _ => return Err(bad()),
        }
    }
    if ready.port == 0 {
        return Err(bad());
    }
    Ok(ready)
}

fn passed_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| PASSED_ENV.contains(&k.as_str()) || k.starts_with(PASSED_ENV_PREFIX))
        .collect()
}

fn push_frame(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payloads stay below 4 GiB");
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
}

fn read_frame(stream: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

fn join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}
