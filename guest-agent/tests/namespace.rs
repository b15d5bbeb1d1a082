//! Runs `bulkhead-agent --rootfs` in new mount, PID, network and UTS namespaces with a
//! busybox-static root file system, and drives it over its Unix-socket control and relay
//! connections as the host would.
//!
//! Needs root (for unshare and the mounts) and /usr/bin/busybox from Debian's busybox-static;
//! without either every test prints why it is skipped and passes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use bulkhead_protocol::{
    Event, FrameReader, FrameWriter, RelayRequest, RelayResponse, Request, StartProcess, Stream,
    WindowSize, PROTOCOL_VERSION,
};

const BUSYBOX: &str = "/usr/bin/busybox";
const TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root for unshare and mounts");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("needs /usr/bin/busybox (Debian package busybox-static)");
    }
    None
}

macro_rules! agent_or_skip {
    () => {
        match skip_reason() {
            Some(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
            None => Agent::launch(),
        }
    };
}

/// A fresh directory under cargo's per-target temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "ns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds a busybox root: /bin/busybox with a symlink per applet, a passwd and group file, and
/// a non-executable file /bin/notexec.
fn build_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::write(bin.join("notexec"), "#!/bin/sh\necho never\n").unwrap();
    std::fs::set_permissions(bin.join("notexec"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nwww:x:33:\naudio:x:29:www\n").unwrap();
}

/// Everything a process sent, and its exit code.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: Option<i32>,
}

impl Output {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The agent in its namespaces, and the host end of its control connection.
struct Agent {
    child: Child,
    writer: FrameWriter<UnixStream>,
    events: Receiver<Event>,
    /// Events already received for processes other than the one being waited for.
    outputs: HashMap<u32, Output>,
    /// Stdin bytes each process may still receive, from its `StdinWindow` events.
    stdin_windows: HashMap<u32, u64>,
    /// `Error` events received, in order.
    errors: Vec<(Option<u32>, String)>,
    relay_path: PathBuf,
    next_id: u32,
    _dir: TempDir,
}

impl Agent {
    fn launch() -> Self {
        let dir = TempDir::new();
        let rootfs = dir.0.join("rootfs");
        build_rootfs(&rootfs);
        let control_path = dir.0.join("control.sock");
        let relay_path = dir.0.join("relay.sock");
        let listener = UnixListener::bind(&control_path).unwrap();
        listener.set_nonblocking(true).unwrap();

        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--net",
                "--uts",
                "--fork",
                "--kill-child",
            ])
            .arg(env!("CARGO_BIN_EXE_bulkhead-agent"))
            .arg(format!("--control=unix:{}", control_path.display()))
            .arg(format!("--relay=unix:{}", relay_path.display()))
            .arg(format!("--rootfs={}", rootfs.display()))
            .arg("--log=debug")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();

        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!("agent exited before connecting: {status}");
                    }
                    assert!(Instant::now() < deadline, "agent did not connect");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("accept failed: {err}"),
            }
        };
        stream.set_nonblocking(false).unwrap();

        let (sender, events) = mpsc::channel();
        let mut reader = FrameReader::new(stream.try_clone().unwrap());
        thread::spawn(move || {
            while let Ok(Some(event)) = reader.read::<Event>() {
                if sender.send(event).is_err() {
                    break;
                }
            }
        });

        let mut agent = Agent {
            child,
            writer: FrameWriter::new(stream),
            events,
            outputs: HashMap::new(),
            stdin_windows: HashMap::new(),
            errors: Vec::new(),
            relay_path,
            next_id: 1,
            _dir: dir,
        };
        match agent.next_event() {
            Event::Ready {
                protocol_version, ..
            } => assert_eq!(protocol_version, PROTOCOL_VERSION),
            other => panic!("expected Ready, got {other:?}"),
        }
        agent
    }

    fn next_event(&mut self) -> Event {
        match self.events.recv_timeout(TIMEOUT) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => panic!("no event from the agent within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("agent closed the control connection"),
        }
    }

    fn send(&mut self, request: &Request) {
        self.writer.write(request).unwrap();
    }

    /// Starts a process and waits for `Started`; returns its id, or the id of a process that
    /// failed to start (its Exit follows).
    fn start_process(&mut self, spec: StartProcess) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Request::StartProcess(StartProcess { id, ..spec }));
        id
    }

    fn spawn(&mut self, argv: &[&str]) -> u32 {
        self.start_process(command(argv))
    }

    /// Collects events until `id` has exited.
    fn wait(&mut self, id: u32) -> Output {
        loop {
            if self.outputs.get(&id).is_some_and(|o| o.code.is_some()) {
                return self.outputs.remove(&id).unwrap();
            }
            let event = self.next_event();
            self.handle(event);
        }
    }

    /// Collects events until `id`'s stdout contains `text`.
    fn wait_for_stdout(&mut self, id: u32, text: &str) {
        while !self
            .outputs
            .get(&id)
            .is_some_and(|o| o.stdout().contains(text))
        {
            let event = self.next_event();
            assert!(
                !matches!(event, Event::Exit { id: exited, .. } if exited == id),
                "process {id} exited before printing {text:?}"
            );
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Started { .. } => {}
            Event::Output { id, stream, data } => {
                let output = self.outputs.entry(id).or_default();
                match stream {
                    Stream::Stdout => output.stdout.extend(data),
                    Stream::Stderr => output.stderr.extend(data),
                }
            }
            Event::Exit { id, code } => self.outputs.entry(id).or_default().code = Some(code),
            Event::StdinWindow { id, bytes } => {
                *self.stdin_windows.entry(id).or_default() += u64::from(bytes);
            }
            Event::Error { id, message } => self.errors.push((id, message)),
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Sends up to 64 KiB of `data` within the stdin window of `id`, and returns the number of
    /// bytes sent. It waits for window only when none is left.
    fn send_stdin_within_window(&mut self, id: u32, data: &[u8]) -> usize {
        while self.stdin_windows.get(&id).copied().unwrap_or(0) == 0 {
            let event = self.next_event();
            self.handle(event);
        }
        let window = self.stdin_windows.get_mut(&id).unwrap();
        let len = data.len().min(*window as usize).min(64 * 1024);
        *window -= len as u64;
        self.send(&Request::Stdin {
            id,
            data: data[..len].to_vec(),
        });
        len
    }

    /// Sends all of `data` to the stdin of `id` within its window, then closes it.
    fn write_stdin(&mut self, id: u32, data: &[u8]) {
        let mut sent = 0;
        while sent < data.len() {
            sent += self.send_stdin_within_window(id, &data[sent..]);
        }
        self.send(&Request::CloseStdin { id });
    }

    fn run(&mut self, argv: &[&str]) -> Output {
        let id = self.spawn(argv);
        self.wait(id)
    }

    /// Opens a relay connection to guest `port`; returns the stream, or the agent's refusal.
    fn relay(&self, port: u16) -> Result<UnixStream, String> {
        let stream = UnixStream::connect(&self.relay_path).unwrap();
        FrameWriter::new(&stream)
            .write(&RelayRequest { port })
            .unwrap();
        match FrameReader::new(&stream).read::<RelayResponse>().unwrap() {
            Some(RelayResponse::Ok) => Ok(stream),
            Some(RelayResponse::Failed { message }) => Err(message),
            None => Err("relay connection closed".into()),
        }
    }

    /// Polls the relay until a server listens on guest `port`.
    fn wait_for_port(&self, port: u16) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.relay(port) {
                Ok(stream) => {
                    drop(stream);
                    return;
                }
                Err(message) => {
                    assert!(
                        Instant::now() < deadline,
                        "port {port} never opened: {message}"
                    );
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Requests shutdown and returns the agent's exit status.
    fn shutdown(mut self) -> std::process::ExitStatus {
        self.send(&Request::Shutdown);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after Shutdown"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // unshare --kill-child takes the agent, and with it the PID namespace, down too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(argv: &[&str]) -> StartProcess {
    StartProcess {
        argv: argv.iter().map(|arg| arg.as_bytes().to_vec()).collect(),
        ..StartProcess::default()
    }
}

#[test]
fn exit_codes_match_docker() {
    let mut agent = agent_or_skip!();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["true"], 0, ""),
        (&["sh", "-c", "exit 3"], 3, ""),
        (
            &["/bin/notexec"],
            126,
            "exec: \"/bin/notexec\": permission denied\n",
        ),
        (
            &["nosuchcmd"],
            127,
            "exec: \"nosuchcmd\": executable file not found in $PATH\n",
        ),
    ];
    for (i, (argv, code, stderr)) in cases.iter().enumerate() {
        let output = agent.run(argv);
        assert_eq!(output.code, Some(*code), "case {i}: {argv:?}");
        assert_eq!(output.stderr(), *stderr, "case {i}: {argv:?}");
    }

    for (signal, code) in [(9, 137), (15, 143)] {
        let id = agent.spawn(&["sleep", "100"]);
        agent.send(&Request::Signal { id, signal });
        assert_eq!(agent.wait(id).code, Some(code), "signal {signal}");
    }
    assert!(agent.shutdown().success());
}

#[test]
fn sigterm_trap_runs_and_exits_7() {
    let mut agent = agent_or_skip!();
    let script = "trap 'echo trapped; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let id = agent.spawn(&["sh", "-c", script]);
    agent.wait_for_stdout(id, "ready\n");
    agent.send(&Request::Signal { id, signal: 15 });

    let output = agent.wait(id);
    assert_eq!(output.code, Some(7));
    assert!(
        output.stdout().ends_with("trapped\n"),
        "{:?}",
        output.stdout()
    );
}

#[test]
fn orphans_leave_no_zombies() {
    let mut agent = agent_or_skip!();
    let orphans = "for i in 1 2 3 4 5; do (sleep 0.2 &); done; exit 0";
    assert_eq!(agent.run(&["sh", "-c", orphans]).code, Some(0));

    // Every orphan is a child of the agent now; poll until none is left, zombie or not.
    let deadline = Instant::now() + TIMEOUT;
    let states = loop {
        let output = agent.run(&["sh", "-c", "cat /proc/[0-9]*/stat"]);
        let stat = output.stdout();
        if !stat.contains("(sleep)") {
            break stat;
        }
        assert!(Instant::now() < deadline, "orphans never reaped:\n{stat}");
        thread::sleep(Duration::from_millis(20));
    };
    let zombies: Vec<&str> = states
        .lines()
        .filter(|line| {
            line.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
}

#[test]
fn stdin_reaches_process_and_eof() {
    let mut agent = agent_or_skip!();
    let megabyte: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let cases: [&[u8]; 3] = [b"", b"x", &megabyte];
    for (i, input) in cases.iter().enumerate() {
        let id = agent.start_process(StartProcess {
            stdin: true,
            ..command(&["cat"])
        });
        agent.write_stdin(id, input);

        let output = agent.wait(id);
        assert_eq!(output.code, Some(0), "case {i}");
        assert_eq!(output.stdout.len(), input.len(), "case {i}");
        assert!(output.stdout == *input, "case {i}: content differs");
    }
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
}

/// Returns the MD5 digest of `data` in hex, as busybox md5sum prints it.
fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new(BUSYBOX)
        .arg("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let output = thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(data));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        output
    });
    String::from_utf8(output.stdout).unwrap()[..32].to_owned()
}

/// Reads the peak resident set size (VmHWM) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slow_stdin_reader_keeps_agent_memory_bounded() {
    let mut agent = agent_or_skip!();
    let input: Vec<u8> = (0..64u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // The reader starts only once /tmp/go exists, so everything sent before that waits in
    // the agent or in the pipe to the process.
    let id = agent.start_process(StartProcess {
        stdin: true,
        ..command(&[
            "sh",
            "-c",
            "until [ -e /tmp/go ]; do sleep 0.05; done; md5sum",
        ])
    });

    // Use up the first window, which is all the agent grants before it writes to the pipe.
    let mut sent = 0;
    loop {
        sent += agent.send_stdin_within_window(id, &input[sent..]);
        if agent.stdin_windows[&id] == 0 {
            break;
        }
    }
    assert_eq!(sent, 256 * 1024, "first stdin window");

    // The control connection still serves other processes while this stdin is stalled.
    assert_eq!(agent.run(&["touch", "/tmp/go"]).code, Some(0));

    agent.write_stdin(id, &input[sent..]);
    let output = agent.wait(id);
    assert_eq!(output.code, Some(0), "{}", output.stderr());
    assert_eq!(output.stdout(), format!("{}  -\n", md5_hex(&input)));
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);

    let peak_kib = peak_rss_kib(agent.pid());
    assert!(
        peak_kib < 32 * 1024,
        "agent peak RSS {peak_kib} KiB after relaying 64 MiB of stdin"
    );
}

#[test]
fn stdin_beyond_window_is_rejected() {
    let mut agent = agent_or_skip!();
    let id = agent.start_process(StartProcess {
        stdin: true,
        ..command(&["wc", "-c"])
    });
    while agent.stdin_windows.get(&id).copied().unwrap_or(0) == 0 {
        let event = agent.next_event();
        agent.handle(event);
    }
    let window = agent.stdin_windows[&id] as usize;
    agent.send(&Request::Stdin {
        id,
        data: vec![b'x'; window + 1],
    });
    agent.send(&Request::CloseStdin { id });

    let output = agent.wait(id);
    assert_eq!(output.code, Some(0));
    assert_eq!(
        output.stdout().trim(),
        "0",
        "dropped data reached the process"
    );
    assert_eq!(agent.errors.len(), 1, "{:?}", agent.errors);
    assert_eq!(agent.errors[0].0, Some(id));
    assert!(
        agent.errors[0].1.contains("only 262144 bytes were granted"),
        "{}",
        agent.errors[0].1
    );
}

#[test]
fn large_stdout_arrives_whole_before_exit() {
    let mut agent = agent_or_skip!();
    let script = "head -c 4194304 /dev/zero; echo END";
    for run in 0..50 {
        let output = agent.run(&["sh", "-c", script]);
        assert_eq!(output.code, Some(0), "run {run}");
        assert_eq!(output.stdout.len(), 4 * 1024 * 1024 + 4, "run {run}");
        assert!(output.stdout.ends_with(b"\0END\n"), "run {run}: tail lost");
    }
}

#[test]
fn numeric_user_without_passwd_entry() {
    let mut agent = agent_or_skip!();
    let cases = [
        ("4242", "4242\n0\n0\n"),
        ("4242:4343", "4242\n4343\n4343\n"),
        ("www", "33\n33\n33 29\n"),
    ];
    for (i, (user, expected)) in cases.into_iter().enumerate() {
        let output = agent.wait_start(StartProcess {
            user: user.into(),
            ..command(&["sh", "-c", "id -u; id -g; id -G"])
        });
        assert_eq!(output.code, Some(0), "case {i}: {}", output.stderr());
        assert_eq!(output.stdout(), expected, "case {i}: user {user}");
    }

    let output = agent.wait_start(StartProcess {
        user: "nobody".into(),
        ..command(&["true"])
    });
    assert_eq!(output.code, Some(125));
    assert!(output.stderr().contains("unable to find user nobody"));
}

impl Agent {
    fn wait_start(&mut self, spec: StartProcess) -> Output {
        let id = self.start_process(spec);
        self.wait(id)
    }
}

#[test]
fn env_and_args_keep_their_bytes() {
    let mut agent = agent_or_skip!();
    let output = agent.wait_start(StartProcess {
        env: vec![b"A=b=c".to_vec(), b"B==".to_vec()],
        ..command(&["sh", "-c", "printf '%s|%s|%s' \"$A\" \"$B\" \"$PATH\""])
    });
    assert_eq!(output.stdout(), format!("b=c|=|{DEFAULT_PATH}"));

    let arg = vec![0xff, 0x01, b' ', b'=', 0x80];
    let output = agent.wait_start(StartProcess {
        argv: vec![b"printf".to_vec(), b"%s".to_vec(), arg.clone()],
        ..StartProcess::default()
    });
    assert_eq!(output.stdout, arg);
}

#[test]
fn env_entry_without_equals_is_ignored() {
    let mut agent = agent_or_skip!();
    let output = agent.wait_start(StartProcess {
        env: vec![b"BEFORE=1".to_vec(), b"BARE".to_vec(), b"AFTER=2".to_vec()],
        ..command(&["env"])
    });
    assert_eq!(output.code, Some(0), "{}", output.stderr());

    let stdout = output.stdout();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    let expected = [
        "AFTER=2".to_owned(),
        "BEFORE=1".to_owned(),
        "HOME=/root".to_owned(),
        format!("PATH={DEFAULT_PATH}"),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn missing_working_dir_is_created() {
    let mut agent = agent_or_skip!();
    let output = agent.wait_start(StartProcess {
        cwd: "/work/a/b".into(),
        ..command(&["pwd"])
    });
    assert_eq!(output.code, Some(0), "{}", output.stderr());
    assert_eq!(output.stdout(), "/work/a/b\n");
}

#[test]
fn tty_has_requested_size() {
    let mut agent = agent_or_skip!();
    let output = agent.wait_start(StartProcess {
        tty: Some(WindowSize { rows: 33, cols: 99 }),
        ..command(&["sh", "-c", "stty size; tty"])
    });
    assert_eq!(output.code, Some(0));
    assert_eq!(output.stdout(), "33 99\r\n/dev/pts/0\r\n");
}

#[test]
fn relay_passes_half_close() {
    let mut agent = agent_or_skip!();
    agent.spawn(&["nc", "-ll", "-p", "5002", "-e", "wc", "-c"]);
    agent.wait_for_port(5002);

    let mut stream = agent.relay(5002).unwrap();
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.trim(), "5");
}

#[test]
fn relay_server_speaks_first() {
    let mut agent = agent_or_skip!();
    agent.spawn(&["nc", "-ll", "-p", "5003", "-e", "echo", "hello"]);
    agent.wait_for_port(5003);

    let mut stream = agent.relay(5003).unwrap();
    let mut greeting = String::new();
    stream.read_to_string(&mut greeting).unwrap();
    assert_eq!(greeting, "hello\n");
}

#[test]
fn relay_refuses_closed_port() {
    let agent = agent_or_skip!();
    let message = agent.relay(5999).unwrap_err();
    assert!(message.contains("guest port 5999"), "{message}");
}

#[test]
fn relay_handles_200_concurrent_connections() {
    let agent = agent_or_skip!();
    // busybox nc listens with a backlog of one, too small for 200 simultaneous connects, so the
    // echo server runs in this process on a socket created inside the agent's network namespace.
    let listener = agent.listen_in_guest(5001);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                std::io::copy(&mut reader, &mut writer).unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
            });
        }
    });

    let relay_path = agent.relay_path.clone();
    let clients: Vec<_> = (0..200u32)
        .map(|n| {
            let relay_path = relay_path.clone();
            thread::spawn(move || {
                let stream = UnixStream::connect(&relay_path).unwrap();
                FrameWriter::new(&stream)
                    .write(&RelayRequest { port: 5001 })
                    .unwrap();
                let response = FrameReader::new(&stream).read::<RelayResponse>().unwrap();
                assert_eq!(response, Some(RelayResponse::Ok), "connection {n}");

                let payload: Vec<u8> = (0..32 * 1024 + n).map(|i| (i * 7 + n) as u8).collect();
                let mut writer = stream.try_clone().unwrap();
                let sent = payload.clone();
                let sender = thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut echoed = Vec::new();
                (&stream).read_to_end(&mut echoed).unwrap();
                sender.join().unwrap();
                (checksum(&payload), checksum(&echoed))
            })
        })
        .collect();

    for (n, client) in clients.into_iter().enumerate() {
        let (sent, echoed) = client.join().unwrap();
        assert_eq!(sent, echoed, "connection {n}");
    }
}

impl Agent {
    /// Returns the agent's pid in this machine's PID namespace: the only child of unshare.
    fn pid(&self) -> u32 {
        let unshare = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Binds a TCP listener on 127.0.0.1:`port` in the agent's network namespace.
    fn listen_in_guest(&self, port: u16) -> TcpListener {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid())).unwrap();
        // setns changes only the calling thread, so a short-lived thread does it; the socket
        // stays in the namespace it was created in.
        thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind(("127.0.0.1", port)).unwrap()
        })
        .join()
        .unwrap()
    }
}

/// Fletcher-64 style checksum of `data`, sensitive to order and length.
fn checksum(data: &[u8]) -> (u64, u64, usize) {
    let (mut a, mut b) = (0u64, 0u64);
    for byte in data {
        a = (a + u64::from(*byte)) % 0xffff_ffff;
        b = (b + a) % 0xffff_ffff;
    }
    (a, b, data.len())
}
