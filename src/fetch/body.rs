//! A response body read as a stream ([`Fetcher::open`]): bounded in bytes, watched for
//! speed and deadline, and resumed where it broke.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::watch::{Ticker, Transfer, Watch};
use super::{Attempt, FetchError, Fetcher, check_status};

/// A response body read as a stream: resumed with a Range request when the connection
/// breaks (the bytes already read are skipped if the server ignores the range), refused
/// past its limit. Read errors carry a [`FetchError`] (see [`super::take_fetch_error`]).
pub struct Body<'f> {
    fetcher: &'f Fetcher,
    t: Transfer,
    limit: u64,
    what: String,
    /// Bytes delivered so far.
    pos: u64,
    reader: Option<Box<dyn Read + Send + 'f>>,
    /// A local file: its first error is its last.
    local: bool,
    done: Arc<AtomicU64>,
    _ticker: Option<Ticker>,
}

impl<'f> Body<'f> {
    /// A body of a local file (`file://`).
    pub(crate) fn local(fetcher: &'f Fetcher, t: Transfer, file: std::fs::File, limit: u64, what: &str) -> Body<'f> {
        let mut body = Body::new(fetcher, t, limit, what, false);
        body.reader = Some(Box::new(file));
        body.local = true;
        body
    }

    /// Requests the body; `None` when the server says it has no such file (404, 410).
    pub(crate) fn open(fetcher: &'f Fetcher, t: Transfer, limit: u64, what: &str) -> Result<Option<Body<'f>>, FetchError> {
        let mut body = Body::new(fetcher, t, limit, what, true);
        match body.connect(true)? {
            true => Ok(Some(body)),
            false => Ok(None),
        }
    }

    fn new(fetcher: &'f Fetcher, t: Transfer, limit: u64, what: &str, tick: bool) -> Body<'f> {
        let done = Arc::new(AtomicU64::new(0));
        let name = t.origin.rsplit('/').next().unwrap_or(&t.origin).to_string();
        let ticker = tick.then(|| Ticker::start(name, None, done.clone(), t.limits.progress_interval, fetcher.opts.report));
        Body { fetcher, t, limit, what: what.into(), pos: 0, reader: None, local: false, done, _ticker: ticker }
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Requests the rest of the body (all of it at first), waiting before each retry.
    /// `false` when the server has no such file (only asked on the first request).
    fn connect(&mut self, first: bool) -> Result<bool, FetchError> {
        loop {
            self.t.begin(self.pos)?;
            let failed = match self.attempt(first) {
                Ok(found) => return Ok(found),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => reason,
            };
            self.t.retry(failed, self.pos)?;
        }
    }

    fn attempt(&mut self, first: bool) -> Result<bool, Attempt> {
        let response = self.fetcher.request(&mut self.t, self.pos)?;
        let status = response.status().as_u16();
        if first && matches!(status, 404 | 410) {
            return Ok(false);
        }
        check_status(&self.t.url, status)?;
        let resumed = status == 206 && super::content_range_start(&response) == Some(self.pos);
        let deadline_at = self.t.deadline_at();
        let mut reader = Watch::new(response.into_body().into_reader(), self.t.limits, deadline_at);
        if self.pos > 0 && !resumed {
            // The whole body again: skip what was already delivered.
            match io::copy(&mut (&mut reader).take(self.pos), &mut io::sink()) {
                Ok(n) if n == self.pos => {}
                Ok(n) => return Err(Attempt::Retry(format!("the server sent {n} bytes where {} were read before", self.pos))),
                Err(e) => return Err(self.fetcher.read_failure(&self.t, e, self.pos)),
            }
        }
        self.reader = Some(Box::new(reader));
        Ok(true)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                self.connect(false).map_err(io::Error::other)?;
                continue;
            };
            // One byte past the limit is enough to know.
            let room = (self.limit - self.pos + 1).min(buf.len() as u64) as usize;
            let e = match reader.read(&mut buf[..room]) {
                Ok(n) => {
                    self.pos += n as u64;
                    self.done.store(self.pos, Ordering::Relaxed);
                    if self.pos > self.limit {
                        let url = self.t.url.clone();
                        return Err(io::Error::other(FetchError::TooLarge { url, limit: self.limit, what: self.what.clone() }));
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.reader = None;
            if self.local {
                let reason = format!("reading failed after {} bytes: {e}", self.pos);
                return Err(io::Error::other(FetchError::Network { url: self.t.url.clone(), reason, attempts: 1 }));
            }
            match self.fetcher.read_failure(&self.t, e, self.pos) {
                Attempt::Fatal(f) => return Err(io::Error::other(f)),
                Attempt::Retry(reason) => self.t.retry(reason, self.pos).map_err(io::Error::other)?,
            }
        }
    }
}
