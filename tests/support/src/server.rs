//! A small HTTP/1.1 file server on 127.0.0.1 for tests and the demo, with faults that can
//! be injected per path: error statuses, connections dropped mid-body, Range ignored,
//! bodies trickled or stalled, redirects.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Result;

/// Something to do instead of (or while) serving a request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and no file.
    Status(u16),
    /// Promise the whole body, send this many bytes, then close the connection.
    DropAfter(u64),
    /// Answer 200 with the whole file even when a Range was asked for.
    IgnoreRange,
    /// Wait this long before answering.
    Delay(Duration),
    /// Send the body at this many bytes per second (a slow or hostile mirror).
    Trickle(u64),
    /// Send this many bytes of the body, then keep the connection open and silent until
    /// the client gives up (or the server stops).
    StallAfter(u64),
    /// Answer `302 Found` with this `Location` (absolute, or relative to the request).
    Redirect(String),
}

#[derive(Default)]
struct Shared {
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    log: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range_start: Option<u64>,
    pub status: u16,
}

/// A running server; stops when dropped.
pub struct Server {
    port: u16,
    shared: Arc<Shared>,
}

impl Server {
    /// Serves `root` on an ephemeral port of 127.0.0.1.
    pub fn start(root: &Path) -> Result<Server> {
        Server::start_on(root, 0)
    }

    /// Serves `root` on the given port of 127.0.0.1 (0 picks one).
    pub fn start_on(root: &Path, port: u16) -> Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let root = root.to_owned();
        let accept_shared = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = accept_shared.clone();
                let root = root.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &root, &shared);
                });
            }
        });
        Ok(Server { port, shared })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues a fault for the next request of `path` (e.g. `/pool/main/h/hello/hello.deb`).
    pub fn inject(&self, path: &str, fault: Fault) {
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.entry(path.to_string()).or_default().push_back(fault);
        }
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, root: &Path, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").split('?').next().unwrap_or("/").to_string();
    let mut range_start = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("range") {
                range_start = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok());
            }
    }
    let fault = shared.faults.lock().ok().and_then(|mut f| f.get_mut(&path).and_then(|q| q.pop_front()));
    let log = |status: u16| {
        if let Ok(mut l) = shared.log.lock() {
            l.push(Request { path: path.clone(), range_start, status });
        }
    };
    if let Some(Fault::Delay(d)) = fault {
        thread::sleep(d);
    }
    if let Some(Fault::Redirect(location)) = &fault {
        log(302);
        write!(stream, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    if let Some(Fault::Status(code)) = fault {
        log(code);
        let body = format!("injected status {code}\n");
        write!(stream, "HTTP/1.1 {code} Injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    let Some(file) = resolve(root, &path) else {
        log(404);
        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n")?;
        return Ok(());
    };
    // Streamed from disk, so that serving a large package costs no memory.
    let mut data = std::fs::File::open(&file)?;
    let total = data.metadata()?.len();
    let honour_range = !matches!(fault, Some(Fault::IgnoreRange));
    let (status, offset) = match range_start {
        Some(start) if honour_range && start < total => (206, start),
        Some(start) if honour_range && start == total && total > 0 => {
            log(416);
            write!(stream, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
        _ => (200, 0),
    };
    log(status);
    let body_len = total - offset;
    let mut head = format!("HTTP/1.1 {status} OK\r\nContent-Length: {body_len}\r\nAccept-Ranges: bytes\r\n");
    if status == 206 {
        head += &format!("Content-Range: bytes {offset}-{}/{total}\r\n", total - 1);
    }
    head += "Connection: close\r\n\r\n";
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    use std::io::Seek;
    data.seek(std::io::SeekFrom::Start(offset))?;
    match fault {
        Some(Fault::DropAfter(n)) => {
            std::io::copy(&mut (&mut data).take(n.min(body_len)), &mut stream)?;
            stream.flush()?;
            stream.shutdown(Shutdown::Both)?;
        }
        Some(Fault::Trickle(rate)) => {
            // Ten pieces a second (one byte at a time below 10 bytes/s).
            let piece = (rate / 10).max(1);
            let pause = Duration::from_secs_f64(piece as f64 / rate.max(1) as f64);
            let mut buf = vec![0u8; piece as usize];
            loop {
                let n = data.read(&mut buf)?;
                if n == 0 || shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                // A client that gave up makes the write fail: that ends the trickle.
                stream.write_all(&buf[..n])?;
                stream.flush()?;
                thread::sleep(pause);
            }
        }
        Some(Fault::StallAfter(n)) => {
            std::io::copy(&mut (&mut data).take(n.min(body_len)), &mut stream)?;
            stream.flush()?;
            // Silent until the client closes (a read returns 0) or the server stops.
            stream.set_read_timeout(Some(Duration::from_millis(100)))?;
            let started = std::time::Instant::now();
            while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                match reader.read(&mut [0u8; 16]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        _ => {
            std::io::copy(&mut data, &mut stream)?;
        }
    }
    // Drain anything left so the client sees a clean close.
    let _ = reader.read(&mut [0u8; 16]);
    Ok(())
}

/// A port on 127.0.0.1 whose listener never accepts and whose queue is full: a connection
/// to it is neither refused nor answered (the kernel drops the SYN), like a host behind a
/// firewall that drops packets. Closed when dropped.
pub struct Unanswering {
    port: u16,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Unanswering {
    pub fn start() -> Result<Unanswering> {
        use std::os::fd::FromRawFd;
        // std's listeners have a long queue; this one holds a single connection.
        // SAFETY: plain socket calls on a descriptor this function owns; `addr` outlives bind.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let listener = TcpListener::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            anyhow::ensure!(libc::bind(fd, (&raw const addr).cast(), len) == 0, "bind: {}", std::io::Error::last_os_error());
            anyhow::ensure!(libc::listen(fd, 0) == 0, "listen: {}", std::io::Error::last_os_error());
            listener
        };
        let addr = listener.local_addr()?;
        let mut queued = Vec::new();
        // Fill the queue: the first connection that is not answered in time finds it full.
        while queued.len() < 16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        Ok(Unanswering { port: addr.port(), _listener: listener, _queued: queued })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    full.is_file().then_some(full)
}
