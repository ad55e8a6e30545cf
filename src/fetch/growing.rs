//! A file that a download is still writing, read by someone else at the same time (an
//! unpacker that starts before the last byte arrives): how far the download has got, and
//! reads that wait for bytes not yet there.

use std::fs::File;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};

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
