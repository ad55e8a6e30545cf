//! A small HTTP proxy on 127.0.0.1 in front of a server (the test registry) that injects
//! faults per request: statuses, stalls, truncated, corrupted or replaced bodies; and, on
//! request, token auth as the distribution spec describes it (a realm that hands out a
//! bearer token for basic credentials).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

/// What the proxy does to one request instead of passing it on untouched.
#[derive(Clone, Debug)]
pub enum ProxyFault {
    /// Answer with this status; the request is not passed on.
    Status(u16),
    /// Send the upstream answer's headers and this many body bytes, then stay silent.
    StallAfter(usize),
    /// Send the upstream answer's headers and this many body bytes, then close.
    Truncate(usize),
    /// Send the upstream answer with this body byte flipped (the same length).
    Corrupt(usize),
    /// Answer 200 with this body and content type; the request is not passed on.
    Replace(&'static str, Vec<u8>),
    /// Pass the request on, then answer with this status instead of the upstream's (a
    /// registry that did the work and failed to say so).
    StatusAfterPassing(u16),
}

/// A queued fault: method, path substring, what to do, how many more times (None: always).
type Injected = (String, String, ProxyFault, Option<usize>);

/// The token the proxy's token service hands out.
pub const PROXY_TOKEN: &str = "ddslug-test-token";

#[derive(Default)]
struct ProxyShared {
    /// With a user and password: the proxy is a registry with token auth (the distribution
    /// spec's flow): `/v2/` wants `Bearer <PROXY_TOKEN>`, which its own `/token` gives for
    /// those credentials in basic auth; tokens asked for record their scope in the log.
    token_auth: Option<(String, String)>,
    /// (method, path substring, fault, times left: None = always).
    faults: Mutex<VecDeque<Injected>>,
    log: Mutex<Vec<(String, String, u16)>>,
    stop: AtomicBool,
}

/// An HTTP proxy on 127.0.0.1 in front of `upstream` (`host:port`), one request per
/// connection; stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<ProxyShared>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> Result<FaultProxy> {
        FaultProxy::start_with(upstream, None)
    }

    /// A proxy that asks for token auth, issuing tokens for `user` and `password`.
    pub fn start_with_token_auth(upstream: &str, user: &str, password: &str) -> Result<FaultProxy> {
        FaultProxy::start_with(upstream, Some((user.into(), password.into())))
    }

    fn start_with(upstream: &str, token_auth: Option<(String, String)>) -> Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(ProxyShared { token_auth, ..ProxyShared::default() });
        let accept = shared.clone();
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (shared, upstream) = (accept.clone(), upstream.clone());
                thread::spawn(move || {
                    let _ = relay(stream, &upstream, &shared);
                });
            }
        });
        Ok(FaultProxy { port, shared })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to the next `times` requests (`None`: all) whose method is `method`
    /// and whose path contains `path_part`.
    pub fn inject(&self, method: &str, path_part: &str, fault: ProxyFault, times: Option<usize>) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.push_back((method.into(), path_part.into(), fault, times));
        }
    }

    /// Every request seen: method, path, status answered.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn take_fault(shared: &ProxyShared, method: &str, path: &str) -> Option<ProxyFault> {
    let mut faults = shared.faults.lock().ok()?;
    let i = faults.iter().position(|(m, p, _, _)| m == method && path.contains(p.as_str()))?;
    let fault = faults[i].2.clone();
    match &mut faults[i].3 {
        Some(1) => {
            faults.remove(i);
        }
        Some(n) => *n -= 1,
        None => {}
    }
    Some(fault)
}

/// Reads a request or response head (up to the blank line) and its headers.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((first.trim_end().to_string(), headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn relay(client: TcpStream, upstream: &str, shared: &ProxyShared) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let (request_line, headers) = read_head(&mut reader)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
    let len: usize = header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let log = |status: u16| {
        if let Ok(mut l) = shared.log.lock() {
            l.push((method.clone(), path.clone(), status));
        }
    };
    if let Some((user, password)) = &shared.token_auth {
        let authorization = header(&headers, "authorization").unwrap_or("");
        if path.starts_with("/token") {
            let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
            let (status, body) = if authorization == expected { (200, format!("{{\"token\":\"{PROXY_TOKEN}\"}}")) } else { (401, "{}".to_string()) };
            log(status);
            write!(client, "HTTP/1.1 {status} Token\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
            return Ok(());
        }
        if authorization != format!("Bearer {PROXY_TOKEN}") {
            log(401);
            let port = client.local_addr()?.port();
            write!(
                client,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"ddslug-test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
    }
    let fault = take_fault(shared, &method, &path);
    let injected = |client: &mut TcpStream, code: u16| {
        let text = format!("{{\"errors\":[{{\"code\":\"INJECTED\",\"message\":\"injected {code}\"}}]}}");
        write!(client, "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())
    };
    match &fault {
        Some(ProxyFault::Status(code)) => {
            log(*code);
            injected(&mut client, *code)?;
            return Ok(());
        }
        Some(ProxyFault::Replace(content_type, bytes)) => {
            log(200);
            write!(client, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len())?;
            client.write_all(bytes)?;
            return Ok(());
        }
        _ => {}
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut head = format!("{request_line}\r\n");
    for (k, v) in &headers {
        // Host is kept: the registry builds its upload Locations from it (the proxy's). The
        // token is the proxy's, not the registry's.
        let ours = k.eq_ignore_ascii_case("connection") || shared.token_auth.is_some() && k.eq_ignore_ascii_case("authorization");
        if !ours {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "Connection: close\r\n\r\n";
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut up_reader = BufReader::new(up);
    let (status_line, up_headers) = read_head(&mut up_reader)?;
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if let Some(ProxyFault::StatusAfterPassing(code)) = fault {
        log(code);
        return injected(&mut client, code);
    }
    log(status);
    let mut up_body = Vec::new();
    if method != "HEAD" {
        up_reader.read_to_end(&mut up_body)?;
    }
    let mut out = format!("{status_line}\r\n");
    for (k, v) in &up_headers {
        if !k.eq_ignore_ascii_case("connection") {
            out += &format!("{k}: {v}\r\n");
        }
    }
    out += "Connection: close\r\n\r\n";
    client.write_all(out.as_bytes())?;
    match fault {
        Some(ProxyFault::StallAfter(n)) => {
            client.write_all(&up_body[..n.min(up_body.len())])?;
            client.flush()?;
            let started = Instant::now();
            client.set_read_timeout(Some(Duration::from_millis(100)))?;
            while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                match reader.read(&mut [0u8; 16]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
        Some(ProxyFault::Truncate(n)) => {
            client.write_all(&up_body[..n.min(up_body.len())])?;
            client.flush()?;
            client.shutdown(Shutdown::Both)?;
        }
        Some(ProxyFault::Corrupt(i)) => {
            if let Some(b) = up_body.get_mut(i) {
                *b ^= 0xff;
            }
            client.write_all(&up_body)?;
        }
        _ => client.write_all(&up_body)?,
    }
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
