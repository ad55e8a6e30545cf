//! HTTP(S) downloads with deadlines, retries and resume, hashing while the body streams.
//!
//! Contract: a download either ends with the whole body on disk and its SHA-256 and size
//! known (checked against what the caller expected), or with an error naming the URL; a
//! body that does not match is deleted, never kept. Every read is bounded in bytes (a body
//! past the caller's limit is refused with an error naming the limit) and in time: a
//! connect timeout, a low-speed limit and an overall deadline ([`Limits`], each a setting
//! named in the error it causes). Retries are announced; a long download prints its
//! progress. With `offline` set, no request is made.

mod body;
mod growing;
mod watch;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use body::Body;
pub use growing::{FileRange, Progress};
pub use watch::{ATTEMPTS, CONNECT_TIMEOUT, LOW_SPEED_LIMIT, LOW_SPEED_TIME, Limits, PROGRESS_INTERVAL, TIMEOUT};

use crate::hash::{Hasher, Sha256};
use crate::report::{Reporter, excerpt};
use watch::{Stop, Ticker, Transfer, secs, stop_of};
/// The low-speed and deadline check on a body as it is read (the registry client uses it too).
pub(crate) use watch::Watch;

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
    #[error(
        "{url}: {reason} (after {attempts} attempt{}); check the repository URL and the network",
        if *.attempts == 1 { "" } else { "s" }
    )]
    Network { url: String, reason: String, attempts: u32 },
    #[error(
        "{url} did not finish within {} ({TIMEOUT}); {received} bytes had arrived. The mirror or the network \
         is too slow: raise {TIMEOUT}, or use a closer mirror", secs(*.limit)
    )]
    Deadline { url: String, limit: Duration, received: u64 },
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
    // The cause is in the message, so it is not also a `source`: `{:#}` would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{url}: {reason}")]
    Redirect { url: String, reason: String },
}

/// The wait before the first retry of a download (and of a registry request); doubled after each.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Whether an HTTP status asks for the request again later: a timeout, too many requests,
/// or trouble on the server's side.
pub(crate) fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Redirects followed for one request (curl follows 50, apt and ureq 10).
pub const MAX_REDIRECTS: u32 = 10;

/// How downloads behave.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Forbid all network access; the string says which setting did it.
    pub offline: Option<String>,
    /// Timeouts, speed, deadline, attempts, progress interval.
    pub limits: Limits,
    /// Delay before the first retry; doubled after each.
    pub backoff: Duration,
    /// Where retries and progress are told (stderr when quiet: stdout may be a result).
    pub report: Reporter,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { offline: None, limits: Limits::default(), backoff: RETRY_BACKOFF, report: Reporter { quiet: true } }
    }
}

/// Where a download goes: `file`, the file `name` in the open directory `dir` (the store's
/// `tmp/downloads`), opened there by the store (never through a symlink) and written
/// through that descriptor only, so that a reader of the same descriptor (an unpacker)
/// reads what is written and hashed; `dir` and `name` remove a bad one, `path` names it
/// in messages.
pub struct Part<'a> {
    pub dir: &'a crate::fsat::Dir,
    pub name: &'a std::ffi::OsStr,
    pub path: &'a Path,
    pub file: &'a File,
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

impl From<FetchError> for Attempt {
    fn from(e: FetchError) -> Self {
        Attempt::Fatal(e)
    }
}

/// An HTTP client with ddslug's limits: statuses are answers, not errors; the system's
/// certificate store; connecting bounded by the connect timeout, and silence (before the
/// answer and in the body) by the low-speed window. `max_redirects` are followed by the
/// client itself; `https_only` refuses plain http, redirects included.
pub(crate) fn http_agent(limits: &Limits, max_redirects: u32, https_only: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(max_redirects)
        .https_only(https_only)
        .timeout_resolve(Some(limits.connect_timeout))
        .timeout_connect(Some(limits.connect_timeout))
        .timeout_recv_response(Some(limits.low_speed_time))
        .timeout_per_read(Some(limits.low_speed_time))
        .user_agent(concat!("ddslug/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build();
    config.into()
}

impl Fetcher {
    /// Builds a client that trusts the system's certificate store.
    pub fn new(opts: FetchOptions) -> Fetcher {
        // Redirects are followed here, so that a failure names the URL that failed and its origin.
        Fetcher { agent: http_agent(&opts.limits, 0, false), opts }
    }

    /// Whether requests are forbidden.
    pub fn is_offline(&self) -> bool {
        self.opts.offline.is_some()
    }

    fn transfer(&self, url: &str) -> Transfer {
        Transfer::new(url, self.opts.limits, self.opts.report, self.opts.backoff)
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
    /// the attempts and the deadline. Read errors carry a [`FetchError`]: see
    /// [`into_fetch_error`]. `Ok(None)` when the server says 404/410.
    pub fn open(&self, url: &str, limit: u64, what: &str) -> Result<Option<Body<'_>>, FetchError> {
        self.refuse_if_offline(url)?;
        if let Some(path) = url.strip_prefix("file://") {
            return match File::open(path) {
                Ok(file) => Ok(Some(Body::local(self, self.transfer(url), file, limit, what))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(FetchError::Io { path: path.into(), error: source }),
            };
        }
        Body::open(self, self.transfer(url), limit, what)
    }

    /// Downloads `url` into `part`, resuming what a previous attempt (or process) left there,
    /// and checks the result against `expected` (SHA-256 and size) when given. On a mismatch
    /// `part` is deleted. `progress`, when given, hears of every write (it is not finished
    /// here: the caller knows when the file is really done).
    pub fn download(&self, url: &str, at: Part, expected: Option<Downloaded>, progress: Option<&Progress>) -> Result<Downloaded, FetchError> {
        self.refuse_if_offline(url)?;
        let part = at.path;
        let io_err = |error| FetchError::Io { path: part.to_owned(), error };
        // The store's descriptor (a duplicate: readers use positional reads, so the shared
        // offset is the writer's alone).
        let mut file = at.file.try_clone().map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        // Bytes left by an interrupted run were never hashed by this process: hash them once.
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        hasher.update_from(&mut file, &mut buf).map_err(io_err)?;
        if expected.is_some_and(|exp| hasher.len() > exp.size) {
            start_over(&mut file, &mut hasher, None).map_err(io_err)?;
        }
        // Those bytes were checked by nobody: a reader of the growing file (an unpacker)
        // hears of them only once the whole file matched, and a mismatch blames them first.
        let kept = hasher.len();
        let first_pass_reader = if kept > 0 { None } else { progress };
        let mut place = self.fill(url, &at, &mut file, &mut hasher, expected, first_pass_reader, &mut buf)?;
        let matches = |hasher: &Hasher| expected.is_none_or(|exp| hasher.len() == exp.size && hasher.clone().finish() == exp.sha256);
        if kept > 0 && !matches(&hasher) {
            let name = url.rsplit('/').next().unwrap_or(url);
            self.opts.report.warn(&format!(
                "{name}: the partial download kept from an earlier run ({kept} bytes in {}) was bad; \
                 discarded it, downloading it again from the start",
                part.display()
            ));
            start_over(&mut file, &mut hasher, progress).map_err(io_err)?;
            place = self.fill(url, &at, &mut file, &mut hasher, expected, progress, &mut buf)?;
        }
        let size = hasher.len();
        let got = Downloaded { sha256: hasher.finish(), size };
        if let Some(exp) = expected
            && got != exp {
                drop(file);
                let _ = at.dir.remove_file(at.name);
                return Err(FetchError::Mismatch {
                    url: place,
                    expected: exp.sha256,
                    expected_size: exp.size,
                    actual: got.sha256,
                    actual_size: got.size,
                });
            }
        if let Some(p) = progress {
            p.set_written(size);
        }
        Ok(got)
    }

    /// Downloads what `part` lacks (all of it when `expected` is not known), hashing it;
    /// the body is not checked here. Returns the URL as messages should name it (where it
    /// was redirected to).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        url: &str,
        at: &Part,
        file: &mut File,
        hasher: &mut Hasher,
        expected: Option<Downloaded>,
        progress: Option<&Progress>,
        buf: &mut [u8],
    ) -> Result<String, FetchError> {
        let part = at.path;
        let io_err = |error| FetchError::Io { path: part.to_owned(), error };
        if expected.is_some_and(|e| hasher.len() == e.size) {
            return Ok(url.into());
        }
        let done = Arc::new(AtomicU64::new(hasher.len()));
        let mut sink = Sink { file, hasher, progress, done: &done };
        if let Some(path) = url.strip_prefix("file://") {
            sink.start_over().map_err(io_err)?;
            let mut src = File::open(path).map_err(|error| FetchError::Io { path: path.into(), error })?;
            let failed = |e, got| Attempt::Retry(format!("reading failed after {got} bytes: {e}"));
            copy_hashing(&mut src, part, &mut sink, expected, url, buf, failed).map_err(|e| match e {
                Attempt::Fatal(f) => f,
                Attempt::Retry(reason) => FetchError::Network { url: url.into(), reason, attempts: 1 },
            })?;
        } else {
            let name = url.rsplit('/').next().unwrap_or(url).to_string();
            let _ticker = Ticker::start(name, expected.map(|e| e.size), done.clone(), self.opts.limits.progress_interval, self.opts.report);
            let mut t = self.transfer(url);
            let result = loop {
                if let Err(e) = t.begin(sink.hasher.len()) {
                    break Err(e);
                }
                let failed = match self.download_attempt(&mut t, part, &mut sink, expected, buf) {
                    Ok(()) => break Ok(t.url.clone()),
                    Err(Attempt::Fatal(e)) => break Err(e),
                    Err(Attempt::Retry(reason)) => reason,
                };
                if let Err(e) = t.retry(failed, sink.hasher.len()) {
                    break Err(e);
                }
            };
            match result {
                Ok(place) => {
                    // No fsync: a blob is re-hashed on every use, so a torn write after a power
                    // loss is caught and fetched again; syncing 100+ MB would slow every build.
                    sink.file.flush().map_err(io_err)?;
                    return Ok(place);
                }
                Err(e) => {
                    // A body longer than promised is not worth resuming.
                    if matches!(e, FetchError::TooLarge { .. }) {
                        let _ = at.dir.remove_file(at.name);
                    }
                    return Err(e);
                }
            }
        }
        sink.file.flush().map_err(io_err)?;
        Ok(url.into())
    }

    fn download_attempt(&self, t: &mut Transfer, part: &Path, sink: &mut Sink, expected: Option<Downloaded>, buf: &mut [u8]) -> Result<(), Attempt> {
        let have = sink.hasher.len();
        let response = self.request(t, have)?;
        let status = response.status().as_u16();
        let io_fatal = |source: io::Error| Attempt::Fatal(FetchError::Io { path: part.to_owned(), error: source });
        match status {
            206 if content_range_start(&response) == Some(have) => {}
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
            206 => return Err(Attempt::Retry("server answered another range than the one asked for".into())),
            other => check_status(&t.url, other)?,
        }
        let mut body = Watch::new(response.into_body().into_reader(), t.limits, t.deadline_at());
        copy_hashing(&mut body, part, sink, expected, &t.url, buf, |e, got| self.read_failure(t, e, got))
    }

    /// One request for `t` (following redirects), asking for the bytes from `from` on;
    /// bounded by the time the transfer has left. Each attempt starts at the URL asked for
    /// (a redirector may send the next one elsewhere); messages name the URL that failed
    /// and where it was redirected from.
    fn request(&self, t: &mut Transfer, from: u64) -> Result<ureq::http::Response<ureq::Body>, Attempt> {
        let mut current = t.origin.clone();
        t.url = t.origin.clone();
        for hop in 0..=MAX_REDIRECTS {
            let left = t.deadline_at().saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(t.deadline_error(from).into());
            }
            let mut request = self.agent.get(&current);
            if from > 0 {
                request = request.header("Range", format!("bytes={from}-"));
            }
            let response = request.config().timeout_global(Some(left)).build().call().map_err(|e| self.classify(t, e, from))?;
            let status = response.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let refuse = |t: &Transfer, reason: String| Attempt::Fatal(FetchError::Redirect { url: t.url.clone(), reason });
            let Some(location) = response.headers().get("location").and_then(|v| v.to_str().ok()) else {
                return Err(refuse(t, format!("answered HTTP {status} without a Location to go to")));
            };
            let next = redirect_target(&current, location).map_err(|reason| refuse(t, reason))?;
            if hop == MAX_REDIRECTS {
                return Err(refuse(t, format!("more than {MAX_REDIRECTS} redirects (the last to {})", excerpt(&next, 300))));
            }
            current = next;
            t.url = format!("{} (redirected from {})", excerpt(&current, 300), t.origin);
        }
        unreachable!("the loop returns at its last hop")
    }

    /// What a failed request amounts to, in the terms of the settings that bound it.
    fn classify(&self, t: &Transfer, e: ureq::Error, received: u64) -> Attempt {
        use ureq::Timeout;
        let limits = &t.limits;
        match e {
            ureq::Error::BadUri(reason) => Attempt::Fatal(FetchError::Status {
                url: t.url.clone(),
                status: 0,
                hint: format!(" (not a valid URL: {})", excerpt(&reason, 200)),
            }),
            ureq::Error::Timeout(Timeout::Global) => Attempt::Fatal(t.deadline_error(received)),
            ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => Attempt::Retry(limits.connect_failed()),
            ureq::Error::Timeout(_) => Attempt::Retry(limits.no_response()),
            ureq::Error::HostNotFound => Attempt::Retry("host not found".into()),
            ureq::Error::Io(e) => Attempt::Retry(excerpt(&e.to_string(), 300)),
            other => Attempt::Retry(excerpt(&other.to_string(), 300)),
        }
    }

    /// What a failed body read amounts to, `received` bytes into the transfer.
    fn read_failure(&self, t: &Transfer, e: io::Error, received: u64) -> Attempt {
        match stop_of(&e) {
            Some(Stop::Deadline) => return Attempt::Fatal(t.deadline_error(received)),
            Some(Stop::Slow { window_bytes }) => return Attempt::Retry(t.limits.too_slow(*window_bytes)),
            None => {}
        }
        match ureq::Error::from(e) {
            ureq::Error::Timeout(ureq::Timeout::Global) => Attempt::Fatal(t.deadline_error(received)),
            ureq::Error::Timeout(_) => Attempt::Retry(t.limits.no_data(received)),
            ureq::Error::Io(e) => Attempt::Retry(format!("connection broke after {received} bytes: {}", excerpt(&e.to_string(), 300))),
            other => Attempt::Retry(format!("connection broke after {received} bytes: {}", excerpt(&other.to_string(), 300))),
        }
    }

    fn refuse_if_offline(&self, url: &str) -> Result<(), FetchError> {
        match &self.opts.offline {
            Some(why) if !url.starts_with("file://") => Err(FetchError::Offline { url: url.into(), why: why.clone() }),
            _ => Ok(()),
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

/// The absolute URL a `Location` header sends `base` to. Only http and https are followed,
/// and never from https to http (apt refuses that downgrade too).
fn redirect_target(base: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or(location);
    let scheme_of = |url: &str| url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let base_scheme = scheme_of(base).unwrap_or_default();
    let target = match scheme_of(location) {
        Some(_) => location.to_string(),
        None if location.starts_with("//") => format!("{base_scheme}:{location}"),
        None => {
            let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
            let authority_end = base[after_scheme..].find(['/', '?']).map(|i| after_scheme + i).unwrap_or(base.len());
            let (root, path) = base.split_at(authority_end);
            if location.starts_with('/') {
                format!("{root}{location}")
            } else {
                let path = path.split('?').next().unwrap_or("");
                let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
                format!("{root}{}{location}", if dir.is_empty() { "/" } else { dir })
            }
        }
    };
    match scheme_of(&target).as_deref() {
        Some("https") => Ok(target),
        Some("http") if base_scheme != "https" => Ok(target),
        Some("http") => Err(format!("redirected from https to plain http ({}); refused, as apt refuses it", excerpt(&target, 300))),
        _ => Err(format!("redirected to {}, which is not an http or https URL; refused", excerpt(&target, 300))),
    }
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

/// Where a body goes: the partial file, its hash, whoever reads the file as it grows, and
/// the byte count the progress line shows.
struct Sink<'a> {
    file: &'a mut File,
    hasher: &'a mut Hasher,
    progress: Option<&'a Progress>,
    done: &'a AtomicU64,
}

impl Sink<'_> {
    fn start_over(&mut self) -> io::Result<()> {
        self.done.store(0, Ordering::Relaxed);
        start_over(self.file, self.hasher, self.progress)
    }
}

/// Copies `src` into the sink; a read error becomes what `failed` makes of it (given the
/// bytes held then). What arrived is kept: the next attempt resumes from there.
fn copy_hashing(
    src: &mut impl Read,
    part: &Path,
    sink: &mut Sink,
    expected: Option<Downloaded>,
    url: &str,
    buf: &mut [u8],
    failed: impl Fn(io::Error, u64) -> Attempt,
) -> Result<(), Attempt> {
    let Sink { file, hasher, progress, done } = sink;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e, hasher.len())),
        };
        file.write_all(&buf[..n])
            .map_err(|source| Attempt::Fatal(FetchError::Io { path: part.to_owned(), error: source }))?;
        hasher.update(&buf[..n]);
        done.store(hasher.len(), Ordering::Relaxed);
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
        _ if transient(status) => Err(Attempt::Retry(format!("HTTP {status}"))),
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets() {
        let base = "http://a.test:8080/dists/stable/InRelease?x=1";
        assert_eq!(redirect_target(base, "/m/InRelease").unwrap(), "http://a.test:8080/m/InRelease");
        assert_eq!(redirect_target(base, "Release#frag").unwrap(), "http://a.test:8080/dists/stable/Release");
        assert_eq!(redirect_target(base, "//b.test/x").unwrap(), "http://b.test/x");
        assert_eq!(redirect_target(base, "https://b.test/x").unwrap(), "https://b.test/x");
        assert_eq!(redirect_target("http://a.test", "x").unwrap(), "http://a.test/x");
        assert!(redirect_target("https://a.test/x", "http://b.test/x").unwrap_err().contains("from https to plain http"));
        assert!(redirect_target(base, "file:///etc/passwd").unwrap_err().contains("not an http or https URL"));
    }

    /// `{:#}`, as main prints errors, shows each cause once.
    #[test]
    fn a_cause_is_printed_once() {
        let io = || io::Error::new(io::ErrorKind::UnexpectedEof, "premature eof");
        let shown = |e: anyhow::Error| format!("{e:#}");
        let fetch = || FetchError::Io { path: "/cache/x.part".into(), error: io() };
        for text in [
            shown(fetch().into()),
            shown(crate::apt::client::AptError::from(fetch()).into()),
            shown(crate::apt::datadog_keys::DatadogKeysError::Fetch(fetch()).into()),
            shown(crate::store::StoreError::from(fetch()).into()),
        ] {
            assert_eq!(text.matches("premature eof").count(), 1, "{text}");
        }
    }
}
