//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry) serving plain http on 127.0.0.1, with its config file and storage in a
//! directory the test owns, optionally with basic auth (an htpasswd file made by
//! apache2-utils' `htpasswd -B`). Stopped (killed by its pid) when dropped; a stopped one
//! restarts on its port with its storage ([`Registry::stop`], [`Registry::restart`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The registry program (Debian package docker-registry).
pub const PROGRAM: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
    auth: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry whose config (`registry.yml`), storage (`storage/`) and log
    /// (`registry.log`) are in `dir`, on a free port of 127.0.0.1; returns once it answers
    /// `GET /v2/`.
    pub fn start(dir: &Path) -> Result<Registry> {
        Registry::start_with(dir, None)
    }

    /// [`Registry::start`], asking for basic auth as `user` with `password`.
    pub fn start_with_auth(dir: &Path, user: &str, password: &str) -> Result<Registry> {
        Registry::start_with(dir, Some((user.into(), password.into())))
    }

    fn start_with(dir: &Path, auth: Option<(String, String)>) -> Result<Registry> {
        let mut last = String::new();
        // A port found free may be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match Registry::start_on_with(dir, port, auth.clone()) {
                Ok(registry) => return Ok(registry),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("the registry did not start: {last}")
    }

    /// Starts a registry on `port` (as [`Registry::start`]; also to restart one on its port).
    pub fn start_on(dir: &Path, port: u16) -> Result<Registry> {
        Registry::start_on_with(dir, port, None)
    }

    fn start_on_with(dir: &Path, port: u16, auth: Option<(String, String)>) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))?;
        let config = dir.join("registry.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = &auth {
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().context("running htpasswd (apache2-utils)")?;
            anyhow::ensure!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.join("htpasswd"), &out.stdout)?;
            text += &format!("auth:\n  htpasswd:\n    realm: ddslug-test\n    path: {}\n", dir.join("htpasswd").display());
        }
        std::fs::write(&config, text)?;
        let mut registry = Registry { child: None, port, log: dir.join("registry.log"), dir: dir.to_owned(), auth };
        registry.restart()?;
        Ok(registry)
    }

    /// Stops the registry: its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (stopping it first if it runs) on its port, with its storage;
    /// returns once it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let (dir, port) = (self.dir.clone(), self.port);
        let config = dir.join("registry.yml");
        let out = std::fs::File::create(&self.log)?;
        let child = Command::new(PROGRAM)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {PROGRAM} (Debian package docker-registry)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                self.child = None;
                bail!("{PROGRAM} exited ({status}): {}", self.log_text());
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{PROGRAM} did not answer on 127.0.0.1:{port} within 20 s: {}", self.log_text())
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it keeps blobs and manifests (the distribution registry's own layout).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// What the registry logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        // With auth, `/v2/` answers 401: up all the same.
        let up = if self.auth.is_some() { b"HTTP/1.1 401".as_slice() } else { b"HTTP/1.1 200".as_slice() };
        stream.read_exact(&mut head).is_ok() && head.starts_with(up)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
