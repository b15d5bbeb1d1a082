//! An HTTP/1.1 reverse proxy on 127.0.0.1 in front of the test registry. It injects faults
//! (error statuses, bodies cut short, delays), can demand Bearer tokens that its own `/token`
//! endpoint issues, and records every request it receives.
//!
//! It serves one request per connection and responds with `Connection: close`, so each retry
//! or resumed download of the client arrives as a new, separately recorded request.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// What the proxy does to one matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Respond with this status and an empty body, without forwarding to the registry.
    Status(u16),
    /// Forward the request, then send the response head and only this many body bytes, and
    /// close the connection.
    Cut(usize),
    /// Forward the request and hold the response back for this long.
    Delay(Duration),
}

/// Bearer tokens that the proxy demands and issues from `/token` as `token-1`, `token-2`, ...
/// in the `access_token` field.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// `expires_in` of the token response, in seconds. The proxy rejects a token older than
    /// this.
    pub expires_in: u64,
    /// Requests after which the proxy rejects a token, whatever its age: a server that
    /// revokes tokens before the lifetime it announced.
    pub max_uses: Option<usize>,
    /// `user:password` that the token endpoint requires as Basic credentials.
    pub credentials: Option<&'static str>,
}

/// One request the proxy received, and the status of its response.
#[derive(Clone, Debug)]
pub struct Request {
    /// Path with query.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

struct Issued {
    token: String,
    issued: Instant,
    uses: usize,
}

struct State {
    upstream: u16,
    port: u16,
    faults: Vec<(String, VecDeque<Fault>)>,
    tokens: Option<Tokens>,
    issued: Vec<Issued>,
    requests: Vec<Request>,
}

/// The running proxy; stopped on drop.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy that forwards to the registry on 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            upstream,
            port,
            faults: Vec::new(),
            tokens: None,
            issued: Vec::new(),
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state));
                }
            })
        };
        FaultProxy {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `host:port` of the proxy, for references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies `faults` in order to the requests whose path ends with `path_suffix`, one fault
    /// per request. Requests after the last fault pass through.
    pub fn inject(&self, path_suffix: &str, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((path_suffix.to_string(), faults.into_iter().collect()));
    }

    /// Demands Bearer tokens from now on.
    pub fn require_tokens(&self, tokens: Tokens) {
        self.state.lock().unwrap().tokens = Some(tokens);
    }

    /// Returns every request received so far, token requests included.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Returns the requests whose path ends with `path_suffix`.
    pub fn requests_to(&self, path_suffix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .collect()
    }

    /// Returns the paths with query of the token requests that got a token.
    pub fn token_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/token") && r.status == 200)
            .map(|r| r.path)
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The connection wakes the acceptor, which then finds the flag set and returns.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// What [`decide`] chose for one request.
enum Action {
    Answer {
        status: u16,
        headers: String,
        body: Vec<u8>,
    },
    Forward {
        cut: Option<usize>,
        delay: Option<Duration>,
    },
}

fn serve(mut client: TcpStream, state: &Mutex<State>) {
    let Some(head) = read_head(&client) else {
        return;
    };
    let request_line = head[0].clone();
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let header = |name: &str| {
        head.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let authorization = header("Authorization");
    let range = header("Range");

    let action = decide(&mut state.lock().unwrap(), &path, authorization.as_deref());
    let (status, response) = match action {
        Action::Answer {
            status,
            headers,
            body,
        } => {
            let mut response = format!(
                "HTTP/1.1 {status} Fault\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(&body);
            (status, response)
        }
        Action::Forward { cut, delay } => {
            let upstream = state.lock().unwrap().upstream;
            let mut response = forward(upstream, &head);
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            let head_end = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |p| p + 4);
            if let Some(bytes) = cut {
                response.truncate(head_end + bytes);
            }
            let status = String::from_utf8_lossy(&response[..head_end])
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, response)
        }
    };

    // Record before responding, so that the request is listed by the time the client has the
    // response.
    state.lock().unwrap().requests.push(Request {
        path,
        range,
        authorization,
        status,
    });
    let _ = client.write_all(&response);
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}

/// Reads a request head up to the blank line, one string per line with its CRLF.
fn read_head(client: &TcpStream) -> Option<Vec<String>> {
    let mut reader = BufReader::new(client);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            return Some(head);
        }
    }
}

/// Chooses the response to a request: the token endpoint, a token check, or the next fault.
fn decide(state: &mut State, path: &str, authorization: Option<&str>) -> Action {
    if let Some(tokens) = state.tokens.clone() {
        if path.starts_with("/token") {
            return issue_token(state, &tokens, authorization);
        }
        if let Some(rejection) = check_token(state, &tokens, authorization) {
            return rejection;
        }
    }

    let fault = state
        .faults
        .iter_mut()
        .find(|(suffix, faults)| path.ends_with(suffix.as_str()) && !faults.is_empty())
        .and_then(|(_, faults)| faults.pop_front());
    match fault {
        Some(Fault::Status(status)) => Action::Answer {
            status,
            headers: String::new(),
            body: Vec::new(),
        },
        Some(Fault::Cut(bytes)) => Action::Forward {
            cut: Some(bytes),
            delay: None,
        },
        Some(Fault::Delay(delay)) => Action::Forward {
            cut: None,
            delay: Some(delay),
        },
        None => Action::Forward {
            cut: None,
            delay: None,
        },
    }
}

fn issue_token(state: &mut State, tokens: &Tokens, authorization: Option<&str>) -> Action {
    if let Some(credentials) = tokens.credentials {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        if authorization != Some(basic.as_str()) {
            return Action::Answer {
                status: 401,
                headers: String::new(),
                body: Vec::new(),
            };
        }
    }
    let token = format!("token-{}", state.issued.len() + 1);
    state.issued.push(Issued {
        token: token.clone(),
        issued: Instant::now(),
        uses: 0,
    });
    Action::Answer {
        status: 200,
        headers: "Content-Type: application/json\r\n".into(),
        body: format!(
            r#"{{"access_token":"{token}","expires_in":{}}}"#,
            tokens.expires_in
        )
        .into_bytes(),
    }
}

/// Returns the 401 challenge for a missing, unknown, expired or used-up token, and counts a
/// use of a valid one.
fn check_token(state: &mut State, tokens: &Tokens, authorization: Option<&str>) -> Option<Action> {
    let presented = authorization.and_then(|value| value.strip_prefix("Bearer "));
    let valid = presented
        .and_then(|token| state.issued.iter_mut().find(|i| i.token == token))
        .filter(|issued| {
            issued.issued.elapsed() < Duration::from_secs(tokens.expires_in)
                && tokens.max_uses.is_none_or(|max| issued.uses < max)
        });
    if let Some(issued) = valid {
        issued.uses += 1;
        return None;
    }

    let error = if presented.is_some() {
        r#",error="invalid_token""#
    } else {
        ""
    };
    Some(Action::Answer {
        status: 401,
        headers: format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{}/token\",service=\"test-registry\"{error}\r\n",
            state.port
        ),
        body: Vec::new(),
    })
}

/// Sends the request head to the registry with `Connection: close` and returns its whole
/// response.
fn forward(upstream: u16, head: &[String]) -> Vec<u8> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    let mut request = head[0].clone();
    for line in &head[1..] {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with("connection:") && line != "\r\n" {
            request.push_str(line);
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    server.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response);
    response
}
