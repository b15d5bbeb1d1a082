//! The process service: starts container processes, relays their stdio and reports their exit.
//!
//! Each process gets a thread per output stream and one for stdin. A process's exit is reported
//! only after the reaper has collected its status and every output stream has reached end of
//! file, so the host always receives the complete output before [`Event::Exit`].
//!
//! Stdin is flow-controlled with [`Event::StdinWindow`]: the host sends at most
//! [`STDIN_WINDOW`] bytes ahead of what the process has read, so a process that reads slowly
//! holds up only its own stdin, never the control connection or the agent's memory.

pub mod exec;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use bulkhead_protocol::{Event, ProcessId, StartProcess, Stream, WindowSize};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::control::EventSink;
use crate::syscall::Syscall;
use crate::tty;
use crate::user::{self, Identity};
use exec::StartError;

/// Bytes read from a process's output per [`Event::Output`].
const OUTPUT_CHUNK: usize = 32 * 1024;

/// Stack size of the per-process stdio threads, which hold one buffer of [`OUTPUT_CHUNK`].
const STDIO_THREAD_STACK: usize = 128 * 1024;

/// Stdin bytes that the host may send ahead of the process, which is the most stdin data the
/// agent queues for one process.
pub const STDIN_WINDOW: u32 = 256 * 1024;

enum StdinMessage {
    Data(Vec<u8>),
    Close,
}

/// The queue to a process's stdin thread.
struct StdinQueue {
    sender: mpsc::Sender<StdinMessage>,
    /// Bytes granted to the host with [`Event::StdinWindow`] and not yet received.
    window: Arc<AtomicU32>,
}

/// Tracks the two conditions for [`Event::Exit`]: the exit status and the end of every output
/// stream.
struct Completion {
    state: Mutex<(usize, Option<i32>)>,
}

impl Completion {
    fn new(streams: usize) -> Self {
        Self {
            state: Mutex::new((streams, None)),
        }
    }

    /// Records the end of one output stream; returns the exit code once the process is done.
    fn stream_closed(&self) -> Option<i32> {
        let mut state = self.state.lock().unwrap();
        state.0 -= 1;
        state.1.filter(|_| state.0 == 0)
    }

    /// Records the exit code; returns it when every output stream has already ended.
    fn exited(&self, code: i32) -> Option<i32> {
        let mut state = self.state.lock().unwrap();
        state.1 = Some(code);
        (state.0 == 0).then_some(code)
    }
}

struct Entry {
    pid: Pid,
    stdin: Option<StdinQueue>,
    tty_master: Option<Arc<File>>,
    completion: Arc<Completion>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<ProcessId, Entry>,
    /// Processes whose exit status is still to be collected.
    running: HashMap<Pid, ProcessId>,
}

/// The processes of one control connection. Cloning shares the table.
#[derive(Clone)]
pub struct Processes {
    sys: Arc<dyn Syscall>,
    events: EventSink,
    table: Arc<Mutex<Table>>,
}

/// A validated start request, ready to spawn.
struct Prepared {
    program: PathBuf,
    argv: Vec<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    identity: Identity,
}

impl Processes {
    pub fn new(sys: Arc<dyn Syscall>, events: EventSink) -> Self {
        Self {
            sys,
            events,
            table: Arc::default(),
        }
    }

    /// Starts the process of `request`. Failures are reported to the host as the process's
    /// stderr output and exit code.
    pub fn start(&self, request: StartProcess) {
        let id = request.id;
        if self.table.lock().unwrap().by_id.contains_key(&id) {
            self.events.send(&Event::Error {
                id: Some(id),
                message: format!("process id {id} is already in use"),
            });
            return;
        }

        if let Err(err) = self
            .prepare(&request)
            .and_then(|prepared| self.spawn(&request, prepared))
        {
            info!(id, code = err.code, message = %err.message, "process failed to start");
            let mut message = err.message.into_bytes();
            message.push(b'\n');
            self.events.send(&Event::Output {
                id,
                stream: Stream::Stderr,
                data: message,
            });
            self.events.send(&Event::Exit { id, code: err.code });
        }
    }

    fn prepare(&self, request: &StartProcess) -> Result<Prepared, StartError> {
        let Some(argv0) = request.argv.first() else {
            return Err(StartError::setup("no command specified"));
        };

        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let identity = user::resolve(&request.user, &passwd, &group)
            .map_err(|err| StartError::setup(err.to_string()))?;

        let mut env = parse_env(&request.env);
        if !env.iter().any(|(name, _)| name == "PATH") {
            env.push(("PATH".into(), exec::DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(name, _)| name == "HOME") {
            env.push(("HOME".into(), identity.home.clone().into()));
        }
        let path_var = env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.as_bytes().to_vec())
            .unwrap_or_default();

        let cwd = if request.cwd.is_empty() {
            PathBuf::from("/")
        } else {
            PathBuf::from(&request.cwd)
        };
        self.sys.mkdir_all(&cwd, 0o755).map_err(|err| {
            StartError::setup(format!(
                "failed to create working directory {}: {err}",
                cwd.display()
            ))
        })?;

        // Relative commands are looked up from the process's working directory.
        let program = exec::lookup(self.sys.as_ref(), argv0, &path_var)?;
        let program = if program.is_relative() {
            cwd.join(program)
        } else {
            program
        };

        Ok(Prepared {
            program,
            argv: request.argv.clone(),
            env,
            cwd,
            identity,
        })
    }

    fn spawn(&self, request: &StartProcess, prepared: Prepared) -> Result<(), StartError> {
        let id = request.id;
        let mut command = Command::new(&prepared.program);
        command
            .arg0(OsStr::from_bytes(&prepared.argv[0]))
            .args(prepared.argv[1..].iter().map(|arg| OsStr::from_bytes(arg)))
            .env_clear()
            .envs(prepared.env.iter().map(|(name, value)| (name, value)))
            .current_dir(&prepared.cwd);

        let pty = match request.tty {
            Some(size) => Some(open_tty(&mut command, size)?),
            None => {
                let stdin = if request.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                };
                command
                    .stdin(stdin)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                None
            }
        };
        prepare_child(&mut command, &prepared.identity, pty.is_some());

        // The table stays locked from fork until the pid is recorded, so the reaper cannot
        // collect the child's status before it is known. The lock also keeps the reaper away
        // from a child whose exec failed, because std's spawn waits for that child itself.
        let mut table = self.table.lock().unwrap();
        let mut child = command
            .spawn()
            .map_err(|err| exec::exec_error(&prepared.argv[0], &err))?;
        // The parent's copies of the terminal's slave side must close, or reading the master
        // never reaches end of file.
        drop(command);
        let pid = Pid::from_raw(child.id() as i32);

        let mut outputs: Vec<(Stream, Box<dyn Read + Send>)> = Vec::new();
        let mut stdin_writer: Option<Box<dyn Write + Send>> = None;
        let mut tty_master = None;
        match pty {
            Some(master) => {
                let master = Arc::new(master);
                let reader = master.try_clone().map_err(|err| {
                    StartError::setup(format!("failed to duplicate the terminal: {err}"))
                })?;
                outputs.push((Stream::Stdout, Box::new(TtyReader(reader))));
                if request.stdin {
                    stdin_writer = Some(Box::new(TtyWriter(Arc::clone(&master))));
                }
                tty_master = Some(master);
            }
            None => {
                let stdout = child.stdout.take().expect("stdout is piped");
                let stderr = child.stderr.take().expect("stderr is piped");
                outputs.push((Stream::Stdout, Box::new(stdout)));
                outputs.push((Stream::Stderr, Box::new(stderr)));
                if let Some(stdin) = child.stdin.take() {
                    stdin_writer = Some(Box::new(stdin));
                }
            }
        }

        let completion = Arc::new(Completion::new(outputs.len()));
        let has_stdin = stdin_writer.is_some();
        let stdin =
            stdin_writer.map(|writer| self.start_stdin_thread(id, writer, tty_master.is_some()));
        table.running.insert(pid, id);
        table.by_id.insert(
            id,
            Entry {
                pid,
                stdin,
                tty_master,
                completion: Arc::clone(&completion),
            },
        );
        drop(table);

        info!(id, pid = pid.as_raw(), program = %prepared.program.display(), "process started");
        self.events.send(&Event::Started {
            id,
            pid: pid.as_raw() as u32,
        });
        if has_stdin {
            self.events.send(&Event::StdinWindow {
                id,
                bytes: STDIN_WINDOW,
            });
        }
        for (stream, reader) in outputs {
            self.start_output_thread(id, stream, reader, Arc::clone(&completion));
        }
        Ok(())
    }

    fn start_output_thread(
        &self,
        id: ProcessId,
        stream: Stream,
        mut reader: Box<dyn Read + Send>,
        completion: Arc<Completion>,
    ) {
        let this = self.clone();
        let run = move || {
            let mut buf = vec![0u8; OUTPUT_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => this.events.send(&Event::Output {
                        id,
                        stream,
                        data: buf[..n].to_vec(),
                    }),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        warn!(id, ?stream, error = %err, "reading process output failed");
                        break;
                    }
                }
            }
            if let Some(code) = completion.stream_closed() {
                this.finish(id, code);
            }
        };
        spawn_stdio_thread(format!("out-{id}"), run);
    }

    /// Starts the thread that writes queued stdin data to the process. Each chunk, once
    /// written, is granted back to the host as window.
    fn start_stdin_thread(
        &self,
        id: ProcessId,
        mut writer: Box<dyn Write + Send>,
        tty: bool,
    ) -> StdinQueue {
        let (sender, receiver) = mpsc::channel();
        let window = Arc::new(AtomicU32::new(STDIN_WINDOW));
        let thread_window = Arc::clone(&window);
        let events = self.events.clone();
        let run = move || {
            // After a write error (the process closed its stdin) the remaining data is dropped,
            // but still granted back, so that a host waiting for window does not stall.
            let mut broken = false;
            for message in receiver {
                match message {
                    StdinMessage::Data(data) => {
                        if !broken {
                            if let Err(err) = writer.write_all(&data) {
                                debug!(id, error = %err, "process stdin closed early");
                                broken = true;
                            }
                        }
                        // The length fit the window when it was queued, so it fits in a u32.
                        let bytes = data.len() as u32;
                        thread_window.fetch_add(bytes, Ordering::SeqCst);
                        events.send(&Event::StdinWindow { id, bytes });
                    }
                    StdinMessage::Close if tty => {
                        let _ = writer.write_all(&[tty::EOF_CHAR]);
                    }
                    StdinMessage::Close => break,
                }
            }
        };
        spawn_stdio_thread(format!("in-{id}"), run);
        StdinQueue { sender, window }
    }

    /// Removes a finished process and reports its exit.
    fn finish(&self, id: ProcessId, code: i32) {
        self.table.lock().unwrap().by_id.remove(&id);
        info!(id, code, "process exited");
        self.events.send(&Event::Exit { id, code });
    }

    /// Queues bytes for a process's stdin.
    pub fn write_stdin(&self, id: ProcessId, data: Vec<u8>) {
        self.send_stdin(id, StdinMessage::Data(data));
    }

    /// Closes a process's stdin after the bytes queued before.
    pub fn close_stdin(&self, id: ProcessId) {
        self.send_stdin(id, StdinMessage::Close);
    }

    fn send_stdin(&self, id: ProcessId, message: StdinMessage) {
        let table = self.table.lock().unwrap();
        let Some(entry) = table.by_id.get(&id) else {
            drop(table);
            self.report_unknown(id);
            return;
        };
        match &entry.stdin {
            Some(queue) => {
                if let StdinMessage::Data(data) = &message {
                    if let Err(granted) = take_window(&queue.window, data.len()) {
                        drop(table);
                        warn!(
                            id,
                            bytes = data.len(),
                            granted,
                            "stdin data exceeds the window"
                        );
                        self.events.send(&Event::Error {
                            id: Some(id),
                            message: format!(
                                "dropped {} bytes of stdin for process {id}: only {granted} \
                                 bytes were granted by StdinWindow",
                                data.len()
                            ),
                        });
                        return;
                    }
                }
                // A send fails only when the stdin thread has already ended, after a close.
                let _ = queue.sender.send(message);
            }
            None => {
                drop(table);
                self.events.send(&Event::Error {
                    id: Some(id),
                    message: format!("process {id} was started without stdin"),
                });
            }
        }
    }

    /// Sends signal number `signal` to a process.
    pub fn signal(&self, id: ProcessId, signal: i32) {
        let pid = self
            .table
            .lock()
            .unwrap()
            .by_id
            .get(&id)
            .map(|entry| entry.pid);
        let Some(pid) = pid else {
            self.report_unknown(id);
            return;
        };

        let result = Signal::try_from(signal).and_then(|signal| kill(pid, signal));
        match result {
            // The process has exited but its output is still being drained.
            Ok(()) | Err(Errno::ESRCH) => debug!(id, signal, "signal sent"),
            Err(errno) => self.events.send(&Event::Error {
                id: Some(id),
                message: format!("failed to send signal {signal} to process {id}: {errno}"),
            }),
        }
    }

    /// Changes the window size of a process's terminal.
    pub fn resize(&self, id: ProcessId, size: WindowSize) {
        let master = self
            .table
            .lock()
            .unwrap()
            .by_id
            .get(&id)
            .map(|entry| entry.tty_master.clone());
        let message = match master {
            None => return self.report_unknown(id),
            Some(None) => format!("process {id} has no terminal to resize"),
            Some(Some(master)) => match tty::resize(&master, size) {
                Ok(()) => return,
                Err(err) => format!("failed to resize the terminal of process {id}: {err}"),
            },
        };
        self.events.send(&Event::Error {
            id: Some(id),
            message,
        });
    }

    fn report_unknown(&self, id: ProcessId) {
        self.events.send(&Event::Error {
            id: Some(id),
            message: format!("no process with id {id}"),
        });
    }

    /// Collects the status of every child that has exited, reporting the host's processes and
    /// discarding orphans. Called by the signal thread on `SIGCHLD`.
    pub fn reap(&self) {
        let mut table = self.table.lock().unwrap();
        let mut exited = Vec::new();
        let mut orphans = 0;
        loop {
            let (pid, code) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(errno) => {
                    warn!(error = %errno, "waitpid failed");
                    break;
                }
            };
            match table.running.remove(&pid) {
                Some(id) => {
                    let completion = table.by_id.get(&id).map(|e| Arc::clone(&e.completion));
                    exited.push((id, code, completion));
                }
                None => orphans += 1,
            }
        }
        drop(table);

        if orphans > 0 {
            debug!(orphans, "reaped orphaned processes");
        }
        for (id, code, completion) in exited {
            if let Some(code) = completion.and_then(|completion| completion.exited(code)) {
                self.finish(id, code);
            }
        }
    }
}

/// Takes `len` bytes from the stdin window; returns the bytes granted when `len` exceeds them.
fn take_window(window: &AtomicU32, len: usize) -> Result<(), u32> {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    window
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |granted| {
            granted.checked_sub(len)
        })
        .map(drop)
}

/// Splits `NAME=value` entries at the first `=`. Entries without `=` are dropped, as Docker
/// drops them: moby's `ReplaceOrAppendEnvValues` reads a bare `NAME` as a request to unset
/// NAME and never passes it to the process.
fn parse_env(entries: &[Vec<u8>]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for entry in entries {
        let Some(split) = entry.iter().position(|byte| *byte == b'=') else {
            continue;
        };
        let name = OsStr::from_bytes(&entry[..split]).to_owned();
        let value = OsStr::from_bytes(&entry[split + 1..]).to_owned();
        // A later entry replaces an earlier one of the same name, as in Docker.
        env.retain(|(existing, _)| *existing != name);
        env.push((name, value));
    }
    env
}

fn open_tty(command: &mut Command, size: WindowSize) -> Result<File, StartError> {
    let pty = tty::open(size)
        .map_err(|err| StartError::setup(format!("failed to open a terminal: {err}")))?;
    let clone = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map_err(|err| StartError::setup(format!("failed to duplicate the terminal: {err}")))
    };
    command
        .stdin(clone(&pty.slave)?)
        .stdout(clone(&pty.slave)?)
        .stderr(pty.slave);
    Ok(pty.master)
}

/// Arranges for the child to unblock every signal, take the terminal (when it has one) and
/// take `identity` before exec.
fn prepare_child(command: &mut Command, identity: &Identity, tty: bool) {
    let uid = identity.uid;
    let gid = identity.gid;
    let groups: Vec<libc::gid_t> = identity.groups.clone();
    let setup = move || {
        // The agent blocks the signals it takes with sigwait, and a blocked mask survives exec.
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        if tty {
            tty::make_controlling_terminal()?;
        }
        // SAFETY: `groups` is a live Vec owned by the closure, and setgroups reads exactly
        // `groups.len()` entries from it.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setgid and setuid take integers and touch no memory; the group is set first
        // because changing it needs the privilege that setuid drops.
        if unsafe { libc::setgid(gid) } < 0 || unsafe { libc::setuid(uid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec, so it may call only async-signal-safe
    // functions. It calls pthread_sigmask, setsid, ioctl, setgroups, setgid and setuid, and it
    // neither allocates nor takes locks.
    unsafe { command.pre_exec(setup) };
}

fn spawn_stdio_thread(name: String, run: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name(name)
        .stack_size(STDIO_THREAD_STACK)
        .spawn(run)
        .expect("failed to spawn a stdio thread");
}

/// Reads the master side of a terminal, where EIO means every slave descriptor has closed.
struct TtyReader(File);

impl Read for TtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(err) if err.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

struct TtyWriter(Arc<File>);

impl Write for TtyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_env_keeps_equals_in_values() {
        let entries = [
            b"A=b=c".to_vec(),
            b"EMPTY=".to_vec(),
            b"NOEQUALS".to_vec(),
            b"A=last".to_vec(),
        ];
        let env = parse_env(&entries);
        assert_eq!(
            env,
            [("EMPTY".into(), "".into()), ("A".into(), "last".into())]
        );
        assert_eq!(
            parse_env(&[b"X=1=2==".to_vec()]),
            [("X".into(), "1=2==".into())]
        );
    }

    #[test]
    fn take_window_rejects_excess() {
        let window = AtomicU32::new(10);
        assert_eq!(take_window(&window, 4), Ok(()));
        assert_eq!(take_window(&window, 7), Err(6));
        assert_eq!(take_window(&window, 6), Ok(()));
        assert_eq!(take_window(&window, 1), Err(0));
        assert_eq!(take_window(&window, usize::MAX), Err(0));
        assert_eq!(window.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn completion_waits_for_status_and_streams() {
        let completion = Completion::new(2);
        assert_eq!(completion.stream_closed(), None);
        assert_eq!(completion.exited(3), None);
        assert_eq!(completion.stream_closed(), Some(3));

        let completion = Completion::new(1);
        assert_eq!(completion.stream_closed(), None);
        assert_eq!(completion.exited(0), Some(0));
    }
}
