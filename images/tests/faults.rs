//! Pulls through faults: cut downloads, 5xx answers, expiring tokens (through the proxy of
//! `common::proxy` in front of Debian's docker-registry), and DNS, TLS and timeout failures.
//!
//! The DNS, TLS and timeout cases pull in a child process, which is this test binary run again
//! for the same test with [`CHILD_REFERENCE`] set. The DNS and TLS children run in new network
//! namespaces (`unshare -rn`), so no packet leaves this machine.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultProxy, Tokens};
use common::{layer, open_images, store_is_empty, write_layout, Compress, Entry, Layout, Registry};
use images::registry::Silent;
use images::Reference;

/// Body bytes after which the proxy cuts the first download of the layer.
const CUT: usize = 100_000;

/// Set in a child process: the reference it pulls, printing the outcome in a
/// [`RESULT_MARKER`] line.
const CHILD_REFERENCE: &str = "BULKHEAD_FAULTS_CHILD_REFERENCE";
/// Set in the TLS child: a directory with `cert.pem` and `key.pem`, served by `openssl s_server`
/// on 127.0.0.1:[`TLS_PORT`] inside the child's network namespace.
const CHILD_TLS_DIR: &str = "BULKHEAD_FAULTS_CHILD_TLS_DIR";
/// Port of the TLS server. The child's network namespace is new, so the port is free.
const TLS_PORT: u16 = 5443;
/// Host name that the TLS child's `/etc/hosts` maps to 127.0.0.1. The client uses HTTPS for
/// it because it is not a loopback name.
const TLS_HOST: &str = "registry.bulkhead.test";
/// Separates the causes of an error in a child's result.
const CAUSE_SEPARATOR: &str = "| caused by:";
/// Precedes `<milliseconds> <error message or "ok">` in the output of a child. The test
/// harness prints it after the test's name, on the same line.
const RESULT_MARKER: &str = "PULL-RESULT ";

/// Pushes an image with one gzip layer of 256 KiB of incompressible bytes as `name`.
fn push_image(registry: &Registry, name: &str) -> (tempfile::TempDir, Layout) {
    let mut data = vec![0u8; 256 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in &mut data {
        // xorshift64: a fixed, incompressible byte stream.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut file = Entry::file("data", "");
    file.data = data;
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(layout.path(), "v1", &[(layer(&[file]), Compress::Gzip)]);
    registry.push_layout(layout.path(), "v1", name);
    (layout, written)
}

fn blob_path(digest: &images::Digest) -> String {
    format!("/blobs/{digest}")
}

#[test]
fn cut_download_resumes_with_range() {
    let registry = Registry::start("");
    let (layout, written) = push_image(&registry, "resume/app:v1");
    let proxy = FaultProxy::start(registry.port);
    let layer = written.layers[0];
    proxy.inject(&blob_path(&layer), [Fault::Cut(CUT)]);

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/resume/app:v1", proxy.host()).parse().unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, written.config);

    let stored = images.store().read_blob(&layer).unwrap();
    let pushed = fs::read(common::layout_blob(layout.path(), &layer)).unwrap();
    assert!(stored.len() > CUT, "layer of {} bytes", stored.len());
    assert!(
        stored == pushed,
        "the stored layer differs from the pushed one"
    );

    let requests = proxy.requests_to(&blob_path(&layer));
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].range, None, "{requests:#?}");
    assert_eq!(requests[0].status, 200, "{requests:#?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str()),
        "{requests:#?}"
    );
    assert_eq!(requests[1].status, 206, "{requests:#?}");
}

#[test]
fn server_errors_are_retried() {
    let registry = Registry::start("");
    let (_layout, written) = push_image(&registry, "flaky/app:v1");
    let cases = [
        ("manifest", "/manifests/v1".to_string()),
        ("layer", blob_path(&written.layers[0])),
    ];
    for (what, path) in cases {
        let proxy = FaultProxy::start(registry.port);
        proxy.inject(
            &path,
            [Fault::Status(503), Fault::Status(502), Fault::Status(503)],
        );

        let state = tempfile::tempdir().unwrap();
        let images = open_images(state.path());
        let reference: Reference = format!("{}/flaky/app:v1", proxy.host()).parse().unwrap();
        let record = images.pull(&reference, &Silent);
        assert!(record.is_ok(), "{what}: {record:?}");
        assert_eq!(record.unwrap().id, written.config, "{what}");

        let statuses: Vec<u16> = proxy.requests_to(&path).iter().map(|r| r.status).collect();
        assert_eq!(statuses, [503, 502, 503, 200], "{what}");
    }
}

#[test]
fn persistent_server_error_fails_cleanly() {
    let registry = Registry::start("");
    let (_layout, written) = push_image(&registry, "down/app:v1");
    let layer = blob_path(&written.layers[0]);
    // The manifest never recovers; the layer breaks off after CUT bytes and then fails, so a
    // partial blob exists when the pull gives up.
    let cases = [
        ("manifest", "/manifests/v1".to_string(), None, 5),
        ("layer", layer, Some(Fault::Cut(CUT)), 6),
    ];
    for (what, path, first, expected_requests) in cases {
        let proxy = FaultProxy::start(registry.port);
        let faults = first
            .into_iter()
            .chain(std::iter::repeat_n(Fault::Status(503), 10));
        proxy.inject(&path, faults);

        let state = tempfile::tempdir().unwrap();
        let images = open_images(state.path());
        let reference: Reference = format!("{}/down/app:v1", proxy.host()).parse().unwrap();
        let error = images.pull(&reference, &Silent).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&reference.to_string()),
            "{what}: {message}"
        );
        assert!(message.contains("HTTP 503"), "{what}: {message}");
        assert!(message.contains("all 5 attempts"), "{what}: {message}");

        assert_eq!(
            proxy.requests_to(&path).len(),
            expected_requests,
            "{what}: {:#?}",
            proxy.requests()
        );
        assert!(images.list().unwrap().is_empty(), "{what}");
        assert!(!images.store().has_blob(&written.layers[0]), "{what}");
        assert!(
            store_is_empty(state.path()),
            "{what}: a failed pull left files behind"
        );
    }
}

#[test]
fn revoked_token_is_renewed_after_401() {
    let registry = Registry::start("");
    let (_layout, written) = push_image(&registry, "private/app:v1");
    let proxy = FaultProxy::start(registry.port);
    // The token response promises 300 s, but the proxy rejects each token after two requests,
    // so only the 401 response makes the client renew it.
    proxy.require_tokens(Tokens {
        expires_in: 300,
        max_uses: Some(2),
        credentials: None,
    });

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/private/app:v1", proxy.host()).parse().unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, written.config);

    let requests = proxy.requests();
    assert_eq!(proxy.token_requests().len(), 2, "{requests:#?}");
    let rejected = requests
        .iter()
        .filter(|r| r.authorization.as_deref() == Some("Bearer token-1") && r.status == 401)
        .count();
    assert_eq!(rejected, 1, "{requests:#?}");
    let layer = proxy.requests_to(&blob_path(&written.layers[0]));
    let last = layer.last().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer token-2"));
    assert_eq!(last.status, 200, "{requests:#?}");
}

#[test]
fn short_lived_token_is_renewed_before_expiry() {
    let registry = Registry::start("");
    let (_layout, written) = push_image(&registry, "private/app:v1");
    let proxy = FaultProxy::start(registry.port);
    // Tokens live 2 s. The config download takes 2.5 s, so the token that fetched the manifest
    // is too old for the layer, and the client must renew it before sending it.
    proxy.require_tokens(Tokens {
        expires_in: 2,
        max_uses: None,
        credentials: None,
    });
    proxy.inject(
        &blob_path(&written.config),
        [Fault::Delay(Duration::from_millis(2500))],
    );

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/private/app:v1", proxy.host()).parse().unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, written.config);

    let requests = proxy.requests();
    assert_eq!(proxy.token_requests().len(), 2, "{requests:#?}");
    let rejected_tokens: Vec<_> = requests
        .iter()
        .filter(|r| r.authorization.is_some() && r.status == 401)
        .collect();
    assert!(rejected_tokens.is_empty(), "{requests:#?}");
    let layer = proxy.requests_to(&blob_path(&written.layers[0]));
    assert_eq!(layer.len(), 1, "{requests:#?}");
    assert_eq!(layer[0].authorization.as_deref(), Some("Bearer token-2"));
}

#[test]
fn dns_failure_names_reference() {
    if let Some(reference) = child_reference() {
        return child_pull(&reference);
    }
    let reference = "registry.example.test:5000/x:1";
    let result = pull_in_child(
        "dns_failure_names_reference",
        &["unshare", "-rn"],
        &[(CHILD_REFERENCE, reference)],
    );
    let message = &result.message;
    assert!(message.contains(reference), "{}", result.output);
    assert!(
        message.contains("cannot resolve the registry host name registry.example.test;"),
        "{}",
        result.output
    );
}

#[test]
fn tls_failure_names_reference_and_fix() {
    if let Some(reference) = child_reference() {
        return child_pull(&reference);
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-subj")
        .arg(format!("/CN={TLS_HOST}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{TLS_HOST}"))
        // A server certificate, not a CA, so that the only fault is the unknown issuer.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .expect("openssl runs (install the openssl package)");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hosts = dir.path().join("hosts");
    fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {TLS_HOST}\n"),
    )
    .unwrap();

    // New user, network, mount and PID namespaces: /etc/hosts is replaced only in the child,
    // and --kill-child ends the whole namespace, TLS server included, if this test kills
    // unshare.
    let setup = r#"mount --bind "$1" /etc/hosts && ip link set lo up && shift && exec "$@""#;
    let hosts = hosts.to_str().unwrap();
    let reference = format!("{TLS_HOST}:{TLS_PORT}/tls/app:1");
    let result = pull_in_child(
        "tls_failure_names_reference_and_fix",
        &[
            "unshare",
            "-rnm",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            setup,
            "sh",
            hosts,
        ],
        &[
            (CHILD_REFERENCE, &reference),
            (CHILD_TLS_DIR, dir.path().to_str().unwrap()),
        ],
    );
    let (message, causes) = result
        .message
        .split_once(CAUSE_SEPARATOR)
        .unwrap_or_else(|| panic!("no cause: {}", result.output));
    assert!(message.contains(&reference), "{}", result.output);
    assert!(message.contains("TLS handshake with"), "{}", result.output);
    assert!(
        message.contains(&format!("--insecure-registry {TLS_HOST}:{TLS_PORT}")),
        "{}",
        result.output
    );
    // The certificate check failed, not the connection.
    assert!(
        causes.contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        result.output
    );
}

#[test]
fn timeout_names_reference() {
    if let Some(reference) = child_reference() {
        return child_pull(&reference);
    }
    // The kernel completes the TCP handshake for the listen backlog, so the client connects,
    // sends its request, and waits for a response that never comes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let reference = format!("{}/silent/app:1", silent.local_addr().unwrap());
    let result = pull_in_child(
        "timeout_names_reference",
        &[],
        &[
            (CHILD_REFERENCE, &reference),
            (images::registry::TIMEOUT_ENV, "1"),
        ],
    );
    let message = &result.message;
    assert!(message.contains(&reference), "{}", result.output);
    assert!(message.contains("timed out after 1 s"), "{}", result.output);
    assert!(
        message.contains("BULKHEAD_REGISTRY_TIMEOUT"),
        "{}",
        result.output
    );
    // One attempt of 1 s: timeouts are not retried.
    assert!(
        result.elapsed >= Duration::from_secs(1),
        "{}",
        result.output
    );
    assert!(result.elapsed < Duration::from_secs(4), "{}", result.output);
    drop(silent);
}

/// What a child pull reported.
struct ChildResult {
    /// The error message and its causes, or "ok".
    message: String,
    /// Time the pull took in the child.
    elapsed: Duration,
    /// Everything the child printed, for failure messages.
    output: String,
}

fn child_reference() -> Option<String> {
    std::env::var(CHILD_REFERENCE).ok()
}

/// Runs the test `name` of this binary as a child process under `wrapper` with `env`, and
/// returns what its pull reported. Kills the child if it runs longer than a minute.
fn pull_in_child(name: &str, wrapper: &[&str], env: &[(&str, &str)]) -> ChildResult {
    let output_dir = tempfile::tempdir().unwrap();
    let output_path = output_dir.path().join("output");
    let output = fs::File::create(&output_path).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output);
    let mut child = KillOnDrop(command.spawn().unwrap());

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "child {name} ran over 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = fs::read_to_string(&output_path).unwrap();
    assert!(status.success(), "child {name} failed: {status}\n{output}");

    let line = output
        .lines()
        .find_map(|line| line.split_once(RESULT_MARKER).map(|(_, result)| result))
        .unwrap_or_else(|| panic!("child {name} printed no result:\n{output}"));
    let (millis, message) = line.split_once(' ').unwrap();
    ChildResult {
        message: message.to_string(),
        elapsed: Duration::from_millis(millis.parse().unwrap()),
        output,
    }
}

/// Runs the child side: starts the TLS server if [`CHILD_TLS_DIR`] is set, pulls `reference`
/// into a new store, and prints the outcome. A pull that succeeds is reported, not a failure here,
/// so that the parent's assertions explain it.
fn child_pull(reference: &str) {
    let _tls_server = std::env::var(CHILD_TLS_DIR)
        .ok()
        .map(|dir| start_tls_server(Path::new(&dir)));

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = reference.parse().unwrap();
    let start = Instant::now();
    let outcome = images.pull(&reference, &Silent);
    let millis = start.elapsed().as_millis();
    let message = match outcome {
        Ok(_) => "ok".to_string(),
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(" {CAUSE_SEPARATOR} {cause}"));
                source = cause.source();
            }
            message.replace('\n', " ")
        }
    };
    println!("{RESULT_MARKER}{millis} {message}");
}

/// Starts `openssl s_server` with the certificate in `dir` on 127.0.0.1:[`TLS_PORT`] and waits
/// until it accepts connections.
fn start_tls_server(dir: &Path) -> KillOnDrop {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{TLS_PORT}"))
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("openssl runs (install the openssl package)");
    let server = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", TLS_PORT)).is_err() {
        assert!(
            Instant::now() < deadline,
            "openssl s_server did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// A child process killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
