//! Hostile repositories for the limit tests: a Release signed by a real key that lists index
//! files whose content the test chooses (decompression bombs, stanza floods, sizes that lie),
//! and the peak memory of the process that reads them.
//!
//! Everything is streamed to disk: a test that builds a 300 MB bomb must not need 300 MB.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::signing::SigningKey;
use crate::timefmt::{now_unix, release_date};

/// One line of a Release file's SHA256 field: what the signed Release promises.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Path under `dists/<suite>/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Counts and hashes what goes through it, so that a file is listed without a second read.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How an index file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Squeeze {
    Plain,
    Gzip,
    /// xz preset 0: fast, and repeated text still shrinks by thousands.
    Xz,
}

impl Squeeze {
    fn suffix(self) -> &'static str {
        match self {
            Squeeze::Plain => "",
            Squeeze::Gzip => ".gz",
            Squeeze::Xz => ".xz",
        }
    }
}

/// Writes `dists/<suite>/<component>/binary-<arch>/Packages<suffix>` from what `fill` writes
/// (uncompressed text), compressing on the way; returns the listing of the written file and
/// the uncompressed size.
pub fn write_packages(
    root: &Path,
    suite: &str,
    component: &str,
    arch: &str,
    squeeze: Squeeze,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(Listed, u64)> {
    let rel = format!("{component}/binary-{arch}/Packages{}", squeeze.suffix());
    let path = root.join("dists").join(suite).join(&rel);
    fs::create_dir_all(path.parent().context("index path has a parent")?)?;
    let file = Hashing { inner: BufWriter::new(File::create(&path)?), hasher: Sha256::new(), len: 0 };
    let (file, plain_len) = match squeeze {
        Squeeze::Plain => {
            let mut w = Counting { inner: file, len: 0 };
            fill(&mut w)?;
            (w.inner, w.len)
        }
        Squeeze::Gzip => {
            let mut w = Counting { inner: flate2::write::GzEncoder::new(file, flate2::Compression::new(9)), len: 0 };
            fill(&mut w)?;
            (w.inner.finish()?, w.len)
        }
        Squeeze::Xz => {
            let mut w = Counting { inner: liblzma::write::XzEncoder::new(file, 0), len: 0 };
            fill(&mut w)?;
            (w.inner.finish()?, w.len)
        }
    };
    let Hashing { mut inner, hasher, len } = file;
    inner.flush()?;
    let sha256 = hasher.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    Ok((Listed { path: rel, size: len, sha256 }, plain_len))
}

struct Counting<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A stanza as the test repositories write them; `filename` under `pool/`.
pub fn stanza(package: &str, version: &str) -> String {
    format!(
        "Package: {package}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/main/{package}_{version}_amd64.deb\n\
         Size: 1000\nSHA256: {}\nDescription: generated\n\n",
        "ab".repeat(32)
    )
}

/// Writes `count` stanzas of `package`, versions `1.<i>-1`.
pub fn flood(w: &mut dyn Write, package: &str, count: u64) -> io::Result<()> {
    for i in 0..count {
        w.write_all(stanza(package, &format!("1.{i}-1")).as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` bytes of one stanza repeated (a decompression bomb once compressed).
pub fn filler(w: &mut dyn Write, bytes: u64) -> io::Result<()> {
    let one = stanza("filler", "1.0-1");
    let block = one.repeat((1 << 20) / one.len() + 1);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block.as_bytes()[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Signs a Release listing `files` (InRelease and Release + Release.gpg) under
/// `dists/<suite>/`.
pub fn sign_release(root: &Path, suite: &str, components: &str, arch: &str, files: &[Listed], key: &SigningKey) -> Result<()> {
    let mut text = format!(
        "Origin: hostile\nSuite: {suite}\nCodename: {suite}\nDate: {}\nValid-Until: {}\nArchitectures: {arch}\n\
         Components: {components}\nSHA256:\n",
        release_date(now_unix()),
        release_date(now_unix() + 86_400)
    );
    for f in files {
        let _ = writeln!(text, " {} {:>16} {}", f.sha256, f.size, f.path);
    }
    let dists = root.join("dists").join(suite);
    fs::create_dir_all(&dists)?;
    fs::write(dists.join("Release"), &text)?;
    fs::write(dists.join("InRelease"), key.clearsign(text.as_bytes())?)?;
    fs::write(dists.join("Release.gpg"), key.detached_sign(text.as_bytes())?)?;
    Ok(())
}

/// A file of `len` zero bytes that takes no disk space (for bodies far past a limit).
pub fn sparse_file(path: &Path, len: u64) -> Result<()> {
    fs::create_dir_all(path.parent().context("file has a parent")?)?;
    File::create(path)?.set_len(len)?;
    Ok(())
}

/// How a measured run ended.
#[derive(Debug)]
pub struct Measured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the process, in KiB (getrusage's ru_maxrss, from wait4).
    pub max_rss_kib: u64,
}

impl Measured {
    /// stdout and stderr together, for assertion messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to its end and measures its peak memory. `give_up` is a safety net, not a
/// timing assertion: a process still running then is killed and reported as an error (a
/// download that never ends must fail the test, not hang it).
pub fn run_measured(cmd: &mut Command, give_up: Duration) -> Result<Measured> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 only writes into the two locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: pid is our own child, not yet reaped (std's Child is never waited on here).
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!("wait4: {}", io::Error::last_os_error());
        }
        if started.elapsed() > give_up && !killed {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if killed {
        bail!("still running after {give_up:?}, killed; output so far:\n{stdout}{stderr}");
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(Measured { status: ExitStatus::from_raw(status), stdout, stderr, max_rss_kib: usage.ru_maxrss as u64 })
}

/// `dir/<name>` as a path, created empty.
pub fn fresh_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path)?;
    Ok(path)
}
