//! HTTP(S) downloads with timeouts, retries and resume, hashing while the body streams.
//!
//! Contract: a download either ends with the whole body on disk and its SHA-256 and size
//! known (checked against what the caller expected), or with an error naming the URL; a
//! body that does not match is deleted, never kept. Every read is bounded in bytes: a body
//! past the caller's limit is refused with an error naming the limit. With `offline` set,
//! no request is made.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::hash::{Hasher, Sha256};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: network access is disabled ({why}); run `ddslug fetch` with network access first \
         so that the cache holds everything, or drop the offline setting"
    )]
    Offline { url: String, why: String },
    #[error("{url}: server answered HTTP {status}{hint}")]
    Status { url: String, status: u16, hint: String },
    #[error("{url}: {reason} (after {attempts} attempts); check the repository URL and the network")]
    Network { url: String, reason: String, attempts: u32 },
    #[error(
        "{url} served {actual_size} bytes with SHA-256 {actual}, but the index promises {expected_size} bytes \
         with SHA-256 {expected}; the download was deleted. The mirror is corrupt or was changed \
         under us: try again later or use another mirror"
    )]
    Mismatch { url: String, expected: Sha256, expected_size: u64, actual: Sha256, actual_size: u64 },
    #[error(
        "{url} is larger than {}, {what}; refusing to read further. The repository is broken or hostile: \
         check the repository URL, or use another mirror", crate::report::limit(*.limit)
    )]
    TooLarge { url: String, limit: u64, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How far a download has written its file, for a reader that consumes the file while it
/// grows (an unpacker that starts before the last byte arrives).
#[derive(Debug, Default)]
pub struct Progress {
    state: Mutex<ProgressState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ProgressState {
    written: u64,
    /// `Some(true)`: the whole body is on disk and matched what was expected.
    done: Option<bool>,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        // A poisoned lock only means a reader panicked; the numbers are still right.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
        self.changed.notify_all();
    }

    pub(crate) fn set_written(&self, written: u64) {
        self.update(|s| s.written = written);
    }

    /// The download is over: complete and verified (`true`), or failed.
    pub fn finish(&self, ok: bool) {
        self.update(|s| s.done = Some(ok));
    }

    /// Waits until the file holds more than `pos` bytes, or the download is over; returns
    /// how many bytes it holds then (`pos` or fewer means the body ended there).
    pub fn wait_beyond(&self, pos: u64) -> io::Result<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match state.done {
                Some(false) => return Err(io::Error::other("the download failed (its error is reported separately)")),
                Some(true) => return Ok(state.written),
                None if state.written > pos => return Ok(state.written),
                None => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// How many bytes the file holds now, without waiting (a download that starts over
    /// can lower it).
    pub fn written(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).written
    }

    /// Reads from `file` (the download's file) at `pos` up to `buf.len()` bytes of what has
    /// arrived, waiting for at least one; 0 means the download ended at `pos`. A download
    /// that started over (the server ignored the resume range) shrinks the file under the
    /// reader: the read then waits for it to grow back.
    pub fn read_at(&self, file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let available = self.wait_beyond(pos)?;
            let want = buf.len().min(available.saturating_sub(pos).try_into().unwrap_or(usize::MAX));
            if want == 0 {
                return Ok(0);
            }
            // Asked before reading: a download that ends during the read is read again.
            let over = self.is_done();
            let n = file.read_at(&mut buf[..want], pos)?;
            if n > 0 || over {
                return Ok(n);
            }
        }
    }

    /// Whether the download is over (either way).
    pub fn is_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).done.is_some()
    }

    /// Waits for the end of the download; whether it completed and matched.
    pub fn wait_done(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(ok) = state.done {
                return ok;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The bytes `pos..end` of a file, read with `pread` (no shared cursor); with `growing`, a
/// file still being downloaded: a read waits for bytes that have not arrived yet.
pub struct FileRange<'f> {
    pub file: &'f File,
    pub pos: u64,
    pub end: u64,
    pub growing: Option<&'f Progress>,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min(self.end.saturating_sub(self.pos).try_into().unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        let n = match self.growing {
            Some(progress) => progress.read_at(self.file, buf, self.pos)?,
            None if want == 0 => 0,
            None => self.file.read_at(buf, self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// How downloads behave.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Forbid all network access; the string says which setting did it.
    pub offline: Option<String>,
    /// Attempts per URL, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubled after each.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            offline: None,
            attempts: 5,
            backoff: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// What was downloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downloaded {
    pub sha256: Sha256,
    pub size: u64,
}

/// A reusable HTTP client.
pub struct Fetcher {
    agent: ureq::Agent,
    opts: FetchOptions,
}

/// One attempt's failure: worth retrying or not.
enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

impl Fetcher {
    /// Builds a client that trusts the system's certificate store.
    pub fn new(opts: FetchOptions) -> Fetcher {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .user_agent(concat!("ddslug/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Fetcher { agent: config.into(), opts }
    }

    /// Whether requests are forbidden.
    pub fn is_offline(&self) -> bool {
        self.opts.offline.is_some()
    }

    /// Fetches a small document into memory, refusing it past `limit` bytes (`what` says
    /// which limit, for the message). `Ok(None)` when the server says 404/410.
    pub fn get_bytes(&self, url: &str, limit: u64, what: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(mut body) = self.open(url, limit, what)? else { return Ok(None) };
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes).map_err(|e| into_fetch_error(e, url))?;
        Ok(Some(bytes))
    }

    /// Opens `url` for reading as a stream of at most `limit` bytes (`what` names the limit
    /// in the error past it). A connection that breaks is resumed where it broke, within
    /// the attempts allowed. Read errors carry a [`FetchError`]: see [`into_fetch_error`].
    /// `Ok(None)` when the server says 404/410.
    pub fn open(&self, url: &str, limit: u64, what: &str) -> Result<Option<Body<'_>>, FetchError> {
        self.refuse_if_offline(url)?;
        let mut body = Body { fetcher: self, url: url.into(), limit, what: what.into(), pos: 0, reader: None, failures: 0, last: String::new() };
        if let Some(path) = url.strip_prefix("file://") {
            return match File::open(path) {
                Ok(file) => {
                    body.reader = Some(Box::new(file));
                    // A local file cannot be resumed: its first error is its last.
                    body.failures = self.opts.attempts;
                    Ok(Some(body))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(FetchError::Io { path: path.into(), source }),
            };
        }
        let response = self.with_retries(url, || {
            let response = self.agent.get(url).call().map_err(|e| classify(url, e))?;
            match response.status().as_u16() {
                404 | 410 => Ok(None),
                status => check_status(url, status).map(|()| Some(response)),
            }
        })?;
        Ok(response.map(|r| {
            body.reader = Some(Box::new(r.into_body().into_reader()));
            body
        }))
    }

    /// Downloads `url` into `part`, resuming what a previous attempt (or process) left there,
    /// and checks the result against `expected` (SHA-256 and size) when given. On a mismatch
    /// `part` is deleted. `progress`, when given, hears of every write (it is not finished
    /// here: the caller knows when the file is really done).
    pub fn download(&self, url: &str, part: &Path, expected: Option<Downloaded>, progress: Option<&Progress>) -> Result<Downloaded, FetchError> {
        self.refuse_if_offline(url)?;
        let io_err = |source| FetchError::Io { path: part.to_owned(), source };
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(part).map_err(io_err)?;
        // Bytes left by an interrupted run were never hashed by this process: hash them once.
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        hasher.update_from(&mut file, &mut buf).map_err(io_err)?;
        if let Some(exp) = expected
            && hasher.len() > exp.size
        {
            start_over(&mut file, &mut hasher, progress).map_err(io_err)?;
        }
        if let Some(p) = progress {
            p.set_written(hasher.len());
        }
        let complete = |hasher: &Hasher| expected.is_some_and(|e| hasher.len() == e.size);
        if !complete(&hasher) {
            if let Some(path) = url.strip_prefix("file://") {
                start_over(&mut file, &mut hasher, progress).map_err(io_err)?;
                let mut src = File::open(path).map_err(|source| FetchError::Io { path: path.into(), source })?;
                let mut sink = Sink { file: &mut file, hasher: &mut hasher, progress };
                copy_hashing(&mut src, part, &mut sink, expected, url, &mut buf).map_err(|e| match e {
                    Attempt::Fatal(f) => f,
                    Attempt::Retry(reason) => FetchError::Network { url: url.into(), reason, attempts: 1 },
                })?;
            } else {
                let mut sink = Sink { file: &mut file, hasher: &mut hasher, progress };
                let result = self.with_retries(url, || self.download_attempt(url, part, &mut sink, expected, &mut buf));
                if let Err(e) = result {
                    // A body longer than promised is not worth resuming.
                    if matches!(e, FetchError::TooLarge { .. }) {
                        drop(file);
                        let _ = std::fs::remove_file(part);
                    }
                    return Err(e);
                }
            }
        }
        // No fsync: a blob is re-hashed on every use, so a torn write after a power loss is
        // caught and fetched again; syncing 100+ MB would only slow every cold build.
        file.flush().map_err(io_err)?;
        let size = hasher.len();
        let got = Downloaded { sha256: hasher.finish(), size };
        if let Some(exp) = expected
            && got != exp {
                drop(file);
                let _ = std::fs::remove_file(part);
                return Err(FetchError::Mismatch {
                    url: url.into(),
                    expected: exp.sha256,
                    expected_size: exp.size,
                    actual: got.sha256,
                    actual_size: got.size,
                });
            }
        Ok(got)
    }

    fn download_attempt(&self, url: &str, part: &Path, sink: &mut Sink, expected: Option<Downloaded>, buf: &mut [u8]) -> Result<(), Attempt> {
        let have = sink.hasher.len();
        let mut request = self.agent.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request.call().map_err(|e| classify(url, e))?;
        let status = response.status().as_u16();
        let io_fatal = |source: io::Error| Attempt::Fatal(FetchError::Io { path: part.to_owned(), source });
        match status {
            206 if have > 0 => {}
            // The server ignored Range (or we asked for none): start over.
            200 => {
                if have > 0 {
                    sink.start_over().map_err(io_fatal)?;
                }
            }
            // What we hold is at least as long as the file: restart so the hash decides.
            416 => {
                sink.start_over().map_err(io_fatal)?;
                return Err(Attempt::Retry("server refused the resume range".into()));
            }
            other => check_status(url, other)?,
        }
        let mut body = response.into_body().into_reader();
        copy_hashing(&mut body, part, sink, expected, url, buf)
    }

    fn refuse_if_offline(&self, url: &str) -> Result<(), FetchError> {
        match &self.opts.offline {
            Some(why) if !url.starts_with("file://") => Err(FetchError::Offline { url: url.into(), why: why.clone() }),
            _ => Ok(()),
        }
    }

    fn with_retries<T>(&self, url: &str, mut attempt: impl FnMut() -> Result<T, Attempt>) -> Result<T, FetchError> {
        let mut delay = self.opts.backoff;
        let attempts = self.opts.attempts.max(1);
        let mut last = String::new();
        for i in 1..=attempts {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => last = reason,
            }
            if i < attempts {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
        Err(FetchError::Network { url: url.into(), reason: last, attempts })
    }
}

/// A response body read as a stream (see [`Fetcher::open`]): resumed with a Range request
/// when the connection breaks (the bytes already read are skipped if the server ignores
/// the range), refused past its limit.
pub struct Body<'f> {
    fetcher: &'f Fetcher,
    url: String,
    limit: u64,
    what: String,
    /// Bytes delivered so far.
    pos: u64,
    reader: Option<Box<dyn Read + Send + 'f>>,
    /// Attempts that failed so far.
    failures: u32,
    last: String,
}

impl Body<'_> {
    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Requests the rest of the body after a broken connection, waiting before each retry.
    fn resume(&mut self) -> Result<(), FetchError> {
        let opts = &self.fetcher.opts;
        loop {
            self.failures += 1;
            if self.failures >= opts.attempts.max(1) {
                let reason = std::mem::take(&mut self.last);
                return Err(FetchError::Network { url: self.url.clone(), reason, attempts: self.failures });
            }
            std::thread::sleep(opts.backoff * 2u32.saturating_pow(self.failures - 1));
            let request = self.fetcher.agent.get(&self.url).header("Range", format!("bytes={}-", self.pos));
            let response = match request.call().map_err(|e| classify(&self.url, e)) {
                Ok(r) => r,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => {
                    self.last = reason;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let resumed = status == 206 && content_range_start(&response) == Some(self.pos);
            if let Err(attempt) = check_status(&self.url, status) {
                match attempt {
                    Attempt::Fatal(e) => return Err(e),
                    Attempt::Retry(reason) => {
                        self.last = reason;
                        continue;
                    }
                }
            }
            let mut reader = response.into_body().into_reader();
            if !resumed {
                // The whole body again: skip what was already delivered.
                match io::copy(&mut (&mut reader).take(self.pos), &mut io::sink()) {
                    Ok(n) if n == self.pos => {}
                    Ok(n) => {
                        self.last = format!("the server sent {n} bytes where {} were read before", self.pos);
                        continue;
                    }
                    Err(e) => {
                        self.last = format!("connection broke after {} bytes: {e}", self.pos);
                        continue;
                    }
                }
            }
            self.reader = Some(Box::new(reader));
            return Ok(());
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                self.resume().map_err(io::Error::other)?;
                continue;
            };
            // One byte past the limit is enough to know.
            let room = (self.limit - self.pos + 1).min(buf.len() as u64) as usize;
            match reader.read(&mut buf[..room]) {
                Ok(n) => {
                    self.pos += n as u64;
                    if self.pos > self.limit {
                        let e = FetchError::TooLarge { url: self.url.clone(), limit: self.limit, what: self.what.clone() };
                        return Err(io::Error::other(e));
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reader = None;
                    self.last = format!("connection broke after {} bytes: {e}", self.pos);
                }
            }
        }
    }
}

/// The [`FetchError`] a [`Body`] read failed with; any other I/O error (a decoder's,
/// reading what the body gave) is returned as it was.
pub fn take_fetch_error(e: io::Error) -> Result<FetchError, io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<FetchError>()) {
        return Err(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<FetchError>()) {
        Some(Ok(fetch)) => Ok(*fetch),
        Some(Err(other)) => Err(io::Error::new(kind, other)),
        None => Err(io::Error::from(kind)),
    }
}

/// A [`Body`] read error as a [`FetchError`] of `url`.
pub fn into_fetch_error(e: io::Error, url: &str) -> FetchError {
    take_fetch_error(e).unwrap_or_else(|e| FetchError::Network { url: url.into(), reason: e.to_string(), attempts: 1 })
}

/// Where a 206 response's `Content-Range: bytes <start>-<end>/<len>` starts.
fn content_range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// Empties the partial file and the hash of what it held. Readers hear of it first, so
/// that none reads past the new end.
fn start_over(file: &mut File, hasher: &mut Hasher, progress: Option<&Progress>) -> io::Result<()> {
    if let Some(p) = progress {
        p.set_written(0);
    }
    *hasher = Hasher::new();
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Where a body goes: the partial file, its hash, and whoever reads the file as it grows.
struct Sink<'a> {
    file: &'a mut File,
    hasher: &'a mut Hasher,
    progress: Option<&'a Progress>,
}

impl Sink<'_> {
    fn start_over(&mut self) -> io::Result<()> {
        start_over(self.file, self.hasher, self.progress)
    }
}

fn copy_hashing(src: &mut impl Read, part: &Path, sink: &mut Sink, expected: Option<Downloaded>, url: &str, buf: &mut [u8]) -> Result<(), Attempt> {
    let Sink { file, hasher, progress } = sink;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Keep what arrived: the next attempt resumes from here.
            Err(e) => return Err(Attempt::Retry(format!("connection broke after {} bytes: {e}", hasher.len()))),
        };
        file.write_all(&buf[..n])
            .map_err(|source| Attempt::Fatal(FetchError::Io { path: part.to_owned(), source }))?;
        hasher.update(&buf[..n]);
        if let Some(p) = progress {
            p.set_written(hasher.len());
        }
        if let Some(exp) = expected
            && hasher.len() > exp.size {
                let what = "the size the signed index gives".to_string();
                return Err(Attempt::Fatal(FetchError::TooLarge { url: url.into(), limit: exp.size, what }));
            }
    }
    if let Some(exp) = expected
        && hasher.len() < exp.size {
            return Err(Attempt::Retry(format!("body ended after {} of {} bytes", hasher.len(), exp.size)));
        }
    Ok(())
}

fn check_status(url: &str, status: u16) -> Result<(), Attempt> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(Attempt::Retry(format!("HTTP {status}"))),
        _ => {
            let hint = match status {
                401 | 403 => "; the repository refused access",
                404 | 410 => "; the file is not on the server: check the repository URL, suite and component",
                _ => "",
            };
            Err(Attempt::Fatal(FetchError::Status { url: url.into(), status, hint: hint.into() }))
        }
    }
}

fn classify(url: &str, e: ureq::Error) -> Attempt {
    match e {
        ureq::Error::BadUri(reason) => Attempt::Fatal(FetchError::Status {
            url: url.into(),
            status: 0,
            hint: format!(" (not a valid URL: {reason})"),
        }),
        ureq::Error::HostNotFound => Attempt::Retry("host not found".into()),
        other => Attempt::Retry(other.to_string()),
    }
}
