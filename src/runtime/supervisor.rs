//! The supervisor of one container: it starts the microVM, waits for the agent, starts the
//! process, relays stdio, logs and published ports, forwards signals, records the exit status
//! and cleans up. `bulkhead run` runs it in the foreground; `bulkhead run -d` starts it as a
//! detached process (like conmon for Podman).
//!
//! Its control socket takes one line per connection from `stop`, `kill` and `rm -f`:
//! `signal N` forwards signal N, `stop T` sends the stop signal and kills the VM after T seconds,
//! and `kill-vm` kills the VM at once. It replies `ok` or `error: MESSAGE`.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bulkhead_protocol::{hybrid, Event, Request, StartProcess, Stream, WindowSize, CONTROL_PORT};

use super::session::{Sender, Session};
use super::{ports, vm};
use crate::container::state::now;
use crate::container::{log, random_bytes, Container, ContainerConfig, Status};
use crate::terminal;

/// Id of the container's main process in the agent protocol.
const MAIN_PROCESS: u32 = 1;
/// How long the guest gets to shut down after the process exits, before the VM is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default time the agent gets to connect; TCG-emulated test hosts boot slowly.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Exit code when the VM was killed, as Docker reports a SIGKILLed container.
const EXIT_KILLED: i32 = 128 + libc::SIGKILL;
/// Exit code when bulkhead itself failed.
pub const EXIT_BULKHEAD_FAILED: i32 = 125;

/// Whether the user's terminal is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// `bulkhead run`: stdio goes to the caller's terminal too.
    Foreground,
    /// `bulkhead run -d`: output only goes to the log.
    Detached,
}

/// Set once the container's VM has stopped, so the stop timer can give up early.
#[derive(Default)]
struct Finished {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Finished {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; returns whether the VM stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .changed
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

/// Runs the container to its end and returns its exit code. Failures are recorded in the
/// container's state before they are returned.
pub fn run(container: &Container, attach: Attach) -> Result<i32> {
    let config = container.config()?;
    match supervise(container, &config, attach) {
        Ok(code) => Ok(code),
        Err(error) => {
            let message = format!("{error:#}");
            let recorded = container.update_state(|state| {
                state.status = Status::Exited;
                state.finished = Some(now());
                state.exit_code = Some(EXIT_BULKHEAD_FAILED);
                state.error = Some(message);
            });
            if let Err(record_error) = recorded {
                tracing::warn!(error = %record_error, container = %container.id, "cannot record the failure");
            }
            cleanup_if_requested(container, &config);
            Err(error)
        }
    }
}

fn supervise(container: &Container, config: &ContainerConfig, attach: Attach) -> Result<i32> {
    // Everything that can fail because of the host happens before the VM starts.
    let listeners = ports::bind(&config.ports)?;
    vm::create_upper_disk(&container.upper_disk())?;
    let vsock = container.vsock_path();
    let control_path = hybrid::listener_path(&vsock, CONTROL_PORT);
    vm::remove_if_exists(&control_path)?;
    let agent_listener = UnixListener::bind(&control_path)
        .with_context(|| format!("failed to listen on {}", control_path.display()))?;
    vm::remove_if_exists(&container.control_path())?;
    let control_listener = UnixListener::bind(container.control_path())
        .with_context(|| format!("failed to listen on {}", container.control_path().display()))?;

    let mut vmm = vm::spawn(container, config)?;
    let vmm_pid = vmm.id();
    container.update_state(|state| {
        state.status = Status::Running;
        state.supervisor_pid = Some(std::process::id());
        state.vmm_pid = Some(vmm_pid);
    })?;
    tracing::info!(container = %container.id, vmm_pid, "microVM started");

    let finished = Arc::new(Finished::default());
    let result = run_guest(
        container,
        config,
        attach,
        &mut vmm,
        agent_listener,
        control_listener,
        listeners,
        &finished,
    );
    finished.set();

    // The VM must be gone before state.json records the exit, whatever happened above.
    let status = stop_vmm(&mut vmm);
    let (code, error) = match result {
        Ok(Some(code)) => (code, None),
        Ok(None) => vm_failure(container, status),
        Err(error) => {
            let console = vm::log_tail(&container.console_log(), 2048);
            return Err(error.context(format!(
                "console log {}:\n{console}",
                container.console_log().display()
            )));
        }
    };

    container.update_state(|state| {
        state.status = Status::Exited;
        state.finished = Some(now());
        state.exit_code = Some(code);
        state.error = error.clone();
    })?;
    if let (Some(error), Attach::Foreground) = (&error, attach) {
        eprintln!("bulkhead: {error}");
    }
    cleanup_if_requested(container, config);
    Ok(code)
}

/// Runs the guest side. Returns the process's exit code, or `None` when the VM ended first.
#[allow(clippy::too_many_arguments)]
fn run_guest(
    container: &Container,
    config: &ContainerConfig,
    attach: Attach,
    vmm: &mut Child,
    agent_listener: UnixListener,
    control_listener: UnixListener,
    listeners: Vec<(crate::container::PortMapping, std::net::TcpListener)>,
    finished: &Arc<Finished>,
) -> Result<Option<i32>> {
    let timeout = std::env::var("BULKHEAD_START_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_START_TIMEOUT);
    let mut session = Session::accept(&agent_listener, vmm, timeout)?;
    drop(agent_listener);
    tracing::info!(container = %container.id, agent = %session.agent_version, "agent ready");

    let sender = session.sender.clone();
    sender.send(&Request::Configure {
        hostname: container.short_id().to_owned(),
        hosts: None,
        resolv_conf: None,
        entropy: random_bytes(64)?,
    })?;

    let foreground_tty = attach == Attach::Foreground && config.tty;
    let window = if foreground_tty {
        terminal::window_size()
    } else {
        None
    };
    sender.send(&Request::StartProcess(StartProcess {
        id: MAIN_PROCESS,
        argv: config.argv.iter().map(|a| a.clone().into_bytes()).collect(),
        env: config.env.iter().map(|e| e.clone().into_bytes()).collect(),
        cwd: config.working_dir.clone(),
        user: config.user.clone(),
        tty: config
            .tty
            .then(|| window.unwrap_or(WindowSize { rows: 24, cols: 80 })),
        stdin: config.interactive,
    }))?;

    ports::serve(listeners, container.vsock_path(), container.id.clone());
    serve_control(
        control_listener,
        sender.clone(),
        vmm.id(),
        config.stop_signal,
        finished.clone(),
    );
    forward_signals(sender.clone(), config.tty);
    let _raw_mode = if foreground_tty {
        terminal::RawMode::enable()
    } else {
        None
    };
    if attach == Attach::Foreground && config.interactive {
        forward_stdin(sender.clone());
    }

    relay_events(container, attach, &mut session)
}

/// Copies the process's output to the log (and the terminal) until its exit event.
fn relay_events(
    container: &Container,
    attach: Attach,
    session: &mut Session,
) -> Result<Option<i32>> {
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(container.output_log())
        .with_context(|| format!("failed to open {}", container.output_log().display()))?;

    loop {
        let event = match session.next_event() {
            Ok(Some(event)) => event,
            // The connection ends when the VM dies; the caller reads the VMM's status.
            Ok(None) | Err(_) => return Ok(None),
        };
        match event {
            Event::Started {
                id: MAIN_PROCESS,
                pid,
            } => {
                tracing::debug!(container = %container.id, pid, "process started");
                container.update_state(|state| state.started = Some(now()))?;
            }
            Event::Output { stream, data, .. } => {
                let stream_byte = match stream {
                    Stream::Stdout => log::STDOUT,
                    Stream::Stderr => log::STDERR,
                };
                if let Err(error) = log::append(&mut log_file, stream_byte, &data) {
                    tracing::warn!(%error, container = %container.id, "cannot write the container log");
                }
                if attach == Attach::Foreground {
                    write_to_terminal(stream, &data);
                }
            }
            Event::Exit {
                id: MAIN_PROCESS,
                code,
            } => return Ok(Some(code)),
            Event::Error { message, .. } => {
                tracing::warn!(container = %container.id, %message, "agent reported an error");
            }
            other => tracing::debug!(container = %container.id, ?other, "ignored agent event"),
        }
    }
}

fn write_to_terminal(stream: Stream, data: &[u8]) {
    // A closed terminal must not stop the container; its output is in the log anyway.
    let _ = match stream {
        Stream::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(data).and_then(|()| out.flush())
        }
        Stream::Stderr => io::stderr().lock().write_all(data),
    };
}

/// Asks the agent to shut the guest down and waits for the VMM, killing it after a grace period.
fn stop_vmm(vmm: &mut Child) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    loop {
        match vmm.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = vmm.kill();
                return vmm.wait().ok();
            }
        }
    }
}

/// Explains a VM that ended before the process reported its exit.
fn vm_failure(container: &Container, status: Option<ExitStatus>) -> (i32, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    let console = container.console_log();
    let reason = match status.map(|s| (s.code(), s.signal())) {
        // `stop` after its grace period, `kill` and `rm -f` end the VM this way: an ordinary
        // 137 as in Docker, not an error.
        Some((_, Some(libc::SIGKILL))) => return (EXIT_KILLED, None),
        Some((Some(8), _)) => "the guest kernel panicked".to_owned(),
        Some((Some(9), _)) => "a vCPU of the microVM failed".to_owned(),
        Some((Some(code), _)) => format!("bulkhead-vmm exited with status {code}"),
        Some((_, Some(signal))) => format!("bulkhead-vmm was killed by signal {signal}"),
        _ => "bulkhead-vmm ended in an unknown way".to_owned(),
    };
    let message = format!(
        "{reason} before the container's process exited; see the console log {} and {}",
        console.display(),
        container.vmm_log().display()
    );
    (EXIT_BULKHEAD_FAILED, Some(message))
}

fn cleanup_if_requested(container: &Container, config: &ContainerConfig) {
    if config.auto_remove {
        if let Err(error) = container.remove_files() {
            tracing::warn!(error = %format!("{error:#}"), container = %container.id, "cannot remove the container");
        }
    }
}

/// Serves the supervisor's control socket on a thread.
fn serve_control(
    listener: UnixListener,
    sender: Sender,
    vmm_pid: u32,
    stop_signal: i32,
    finished: Arc<Finished>,
) {
    let spawned = thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let reply = handle_control(&stream, &sender, vmm_pid, stop_signal, &finished);
                let line = match reply {
                    Ok(()) => "ok\n".to_owned(),
                    Err(error) => format!("error: {error:#}\n"),
                };
                let _ = (&stream).write_all(line.as_bytes());
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the control socket thread");
    }
}

fn handle_control(
    stream: &UnixStream,
    sender: &Sender,
    vmm_pid: u32,
    stop_signal: i32,
    finished: &Arc<Finished>,
) -> Result<()> {
    let mut line = String::new();
    BufReader::new(stream.take(64)).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("signal"), Some(number)) => {
            let signal: i32 = number.parse().context("invalid signal number")?;
            sender.send(&Request::Signal {
                id: MAIN_PROCESS,
                signal,
            })
        }
        (Some("stop"), Some(seconds)) => {
            let grace = Duration::from_secs(seconds.parse().context("invalid stop timeout")?);
            // The process may already be gone; the timer still ends the VM.
            let _ = sender.send(&Request::Signal {
                id: MAIN_PROCESS,
                signal: stop_signal,
            });
            let finished = finished.clone();
            thread::spawn(move || {
                if !finished.wait(grace) {
                    kill_vmm(vmm_pid);
                }
            });
            Ok(())
        }
        (Some("kill-vm"), None) => {
            kill_vmm(vmm_pid);
            Ok(())
        }
        _ => Err(anyhow!("unknown control request {:?}", line.trim())),
    }
}

fn kill_vmm(pid: u32) {
    // SAFETY: kill has no memory-safety requirements; the pid is our own child's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Forwards the signals a user sends to `bulkhead run` to the container's process, as
/// `docker run` does, and window size changes to its terminal.
fn forward_signals(sender: Sender, tty: bool) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
    let mut signals = match signal_hook::iterator::Signals::new([
        SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
    ]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "cannot install signal handlers; signals are not forwarded");
            return;
        }
    };
    thread::spawn(move || {
        for signal in signals.forever() {
            let request = if signal == SIGWINCH {
                match (tty, terminal::window_size()) {
                    (true, Some(size)) => Request::Resize {
                        id: MAIN_PROCESS,
                        size,
                    },
                    _ => continue,
                }
            } else {
                Request::Signal {
                    id: MAIN_PROCESS,
                    signal,
                }
            };
            if sender.send(&request).is_err() {
                return;
            }
        }
    });
}

/// Copies the caller's stdin to the process until EOF, then closes the process's stdin.
fn forward_stdin(sender: Sender) {
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    let request = Request::Stdin {
                        id: MAIN_PROCESS,
                        data: buffer[..n].to_vec(),
                    };
                    if sender.send(&request).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = sender.send(&Request::CloseStdin { id: MAIN_PROCESS });
    });
}
