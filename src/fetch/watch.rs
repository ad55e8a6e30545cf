//! Deadlines for one URL's transfer: the settings ([`Limits`]), the attempts and the
//! overall deadline across them ([`Transfer`]), the low-speed check on a body as it is read
//! ([`Watch`]), and the progress line printed while a long transfer runs ([`Ticker`]).
//!
//! Contract: no transfer outlives its deadline or stays below the low-speed limit for a
//! whole low-speed window; every retry is announced with its reason; a transfer that takes
//! longer than the progress interval prints its progress at least once per interval.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::FetchError;
use crate::report::{Reporter, bytes};

/// Setting: longest wait for a connection (TCP and TLS), in seconds.
pub const CONNECT_TIMEOUT: &str = "DD_DOWNLOAD_CONNECT_TIMEOUT";
/// Setting: the low-speed limit in bytes per second (0 turns the speed check off).
pub const LOW_SPEED_LIMIT: &str = "DD_DOWNLOAD_LOW_SPEED_LIMIT";
/// Setting: the low-speed window in seconds; also the longest silence accepted.
pub const LOW_SPEED_TIME: &str = "DD_DOWNLOAD_LOW_SPEED_TIME";
/// Setting: longest time one download may take, retries included, in seconds.
pub const TIMEOUT: &str = "DD_DOWNLOAD_TIMEOUT";
/// Setting: attempts per download, the first included.
pub const ATTEMPTS: &str = "DD_DOWNLOAD_ATTEMPTS";
/// Setting: seconds between progress lines of a long download.
pub const PROGRESS_INTERVAL: &str = "DD_DOWNLOAD_PROGRESS_INTERVAL";

/// How long a download may take, and how slow it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// Bytes per second a transfer must average over each `low_speed_time` window.
    pub low_speed_limit: u64,
    pub low_speed_time: Duration,
    /// The whole download, every attempt and the waits between them.
    pub deadline: Duration,
    pub attempts: u32,
    pub progress_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(15),
            low_speed_limit: 1000,
            low_speed_time: Duration::from_secs(30),
            // A 150 MB agent package at 250 kB/s; Heroku builds themselves stop at 15 minutes.
            deadline: Duration::from_secs(600),
            attempts: 5,
            progress_interval: Duration::from_secs(10),
        }
    }
}

/// Whole seconds, for messages that quote a setting.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64().round() as u64)
}

impl Limits {
    pub(crate) fn connect_failed(&self) -> String {
        format!("could not connect within {} ({CONNECT_TIMEOUT})", secs(self.connect_timeout))
    }

    pub(crate) fn no_response(&self) -> String {
        format!("no response within {} ({LOW_SPEED_TIME})", secs(self.low_speed_time))
    }

    pub(crate) fn no_data(&self, received: u64) -> String {
        format!("no data for {} ({LOW_SPEED_TIME}) after {received} bytes", secs(self.low_speed_time))
    }

    pub(crate) fn too_slow(&self, window_bytes: u64) -> String {
        format!(
            "slower than {} bytes/s for {} ({LOW_SPEED_LIMIT}, {LOW_SPEED_TIME}): {window_bytes} bytes in that time",
            self.low_speed_limit,
            secs(self.low_speed_time)
        )
    }
}

/// One URL's transfer across its attempts.
pub(crate) struct Transfer {
    /// The URL asked for; every attempt starts there.
    pub origin: String,
    /// The URL, as messages name it: the one that failed, and where it was redirected from.
    pub url: String,
    pub limits: Limits,
    report: Reporter,
    backoff: Duration,
    started: Instant,
    /// Attempts begun so far.
    attempts: u32,
}

impl Transfer {
    pub fn new(url: &str, limits: Limits, report: Reporter, backoff: Duration) -> Transfer {
        Transfer { origin: url.into(), url: url.into(), limits, report, backoff, started: Instant::now(), attempts: 0 }
    }

    /// When the deadline falls.
    pub fn deadline_at(&self) -> Instant {
        self.started + self.limits.deadline
    }

    /// The error for a transfer past its deadline, `received` bytes into it.
    pub fn deadline_error(&self, received: u64) -> FetchError {
        FetchError::Deadline { url: self.url.clone(), limit: self.limits.deadline, received }
    }

    /// Starts an attempt: the time it has left.
    pub fn begin(&mut self, received: u64) -> Result<Duration, FetchError> {
        self.attempts += 1;
        let left = self.deadline_at().saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.deadline_error(received));
        }
        Ok(left)
    }

    /// An attempt failed for `reason`: waits before the next one and says so, or returns
    /// the error when no attempt is left or the wait would pass the deadline.
    pub fn retry(&mut self, reason: String, received: u64) -> Result<(), FetchError> {
        if self.attempts >= self.limits.attempts.max(1) {
            return Err(FetchError::Network { url: self.url.clone(), reason, attempts: self.attempts });
        }
        let wait = self.backoff * 2u32.saturating_pow(self.attempts.saturating_sub(1)).min(64);
        if Instant::now() + wait >= self.deadline_at() {
            return Err(self.deadline_error(received));
        }
        self.report.progress(&format!(
            "{}: {reason}; retrying in {:.1} s (attempt {} of {})",
            self.url,
            wait.as_secs_f64(),
            self.attempts + 1,
            self.limits.attempts
        ));
        std::thread::sleep(wait);
        Ok(())
    }
}

/// Why [`Watch`] stopped a body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error("below the low-speed limit: {window_bytes} bytes in the last window")]
    Slow { window_bytes: u64 },
    #[error("past the deadline")]
    Deadline,
}

/// A body that fails a read once a whole low-speed window brought fewer bytes than the
/// limit asks, or once the deadline has passed (a silent connection is ended by the HTTP
/// client's per-read timeout, which is the window's length).
pub(crate) struct Watch<R> {
    inner: R,
    limits: Limits,
    deadline_at: Instant,
    window_start: Instant,
    window_bytes: u64,
}

impl<R: Read> Watch<R> {
    pub fn new(inner: R, limits: Limits, deadline_at: Instant) -> Self {
        Watch { inner, limits, deadline_at, window_start: Instant::now(), window_bytes: 0 }
    }
}

impl<R: Read> Read for Watch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let now = Instant::now();
        if now >= self.deadline_at {
            return Err(io::Error::other(Stop::Deadline));
        }
        self.window_bytes += n as u64;
        let window = now.duration_since(self.window_start);
        if window >= self.limits.low_speed_time {
            let wanted = (self.limits.low_speed_limit as f64 * window.as_secs_f64()) as u64;
            if self.window_bytes < wanted {
                return Err(io::Error::other(Stop::Slow { window_bytes: self.window_bytes }));
            }
            self.window_start = now;
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

/// The [`Stop`] a read failed with, if it was one.
pub(crate) fn stop_of(e: &io::Error) -> Option<&Stop> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Stop>())
}

/// Prints `<name>: <done> of <total> (<n>%), <rate>/s` every interval until dropped.
pub(crate) struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts printing the progress of `done` (bytes on disk or read so far).
    pub fn start(name: String, total: Option<u64>, done: Arc<AtomicU64>, every: Duration, report: Reporter) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut before = done.load(Ordering::Relaxed);
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let now = done.load(Ordering::Relaxed);
                let rate = (now.saturating_sub(before) as f64 / every.as_secs_f64()) as u64;
                before = now;
                let of = match total {
                    Some(total) if total > 0 => format!(" of {} ({}%)", bytes(total), now.min(total) * 100 / total),
                    _ => String::new(),
                };
                report.progress(&format!("{name}: {}{of} after {}, {}/s", bytes(now), secs(started.elapsed()), bytes(rate)));
            }
        });
        Ticker { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `piece` bytes per read, sleeping `pause` before each.
    struct Slow {
        piece: usize,
        pause: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = self.piece.min(buf.len());
            buf[..n].fill(b'x');
            Ok(n)
        }
    }

    fn limits(low_speed_limit: u64) -> Limits {
        Limits { low_speed_limit, low_speed_time: Duration::from_millis(200), ..Limits::default() }
    }

    /// Reads `reads` times; the bytes read, or the first error.
    fn read_for(watch: &mut impl Read, reads: usize) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        let mut total = 0;
        for _ in 0..reads {
            total += watch.read(&mut buf)?;
        }
        Ok(total)
    }

    #[test]
    fn a_trickle_below_the_limit_is_stopped_after_a_window() {
        let far = Instant::now() + Duration::from_secs(60);
        // 10 bytes every 20 ms is at most 500 bytes/s (less on a busy machine): far under a
        // limit of 1 MB/s, and over 1 byte/s however slow the machine.
        let trickle = || Slow { piece: 10, pause: Duration::from_millis(20) };
        let e = read_for(&mut Watch::new(trickle(), limits(1_000_000), far), 50).unwrap_err();
        assert!(matches!(stop_of(&e), Some(Stop::Slow { .. })), "{e}");
        assert_eq!(read_for(&mut Watch::new(trickle(), limits(1), far), 30).unwrap(), 300);
    }

    #[test]
    fn a_body_is_stopped_at_the_deadline() {
        let soon = Instant::now() + Duration::from_millis(100);
        let fast = Slow { piece: 64, pause: Duration::from_millis(10) };
        let e = read_for(&mut Watch::new(fast, limits(0), soon), 100).unwrap_err();
        assert!(matches!(stop_of(&e), Some(Stop::Deadline)), "{e}");
    }

    #[test]
    fn retries_stop_at_the_attempts_allowed_and_never_pass_the_deadline() {
        let quiet = Reporter { quiet: true };
        let limits = Limits { attempts: 2, ..Limits::default() };
        let mut t = Transfer::new("http://x/f", limits, quiet, Duration::from_millis(1));
        t.begin(0).unwrap();
        t.retry("broken".into(), 0).unwrap();
        t.begin(0).unwrap();
        let e = t.retry("broken again".into(), 5).unwrap_err().to_string();
        assert!(e.contains("broken again (after 2 attempts)"), "{e}");
        let limits = Limits { deadline: Duration::from_millis(50), ..Limits::default() };
        let mut t = Transfer::new("http://x/f", limits, quiet, Duration::from_secs(1));
        t.begin(0).unwrap();
        let e = t.retry("broken".into(), 7).unwrap_err().to_string();
        assert!(e.contains("did not finish within") && e.contains(TIMEOUT), "{e}");
    }
}
