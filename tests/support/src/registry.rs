//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry) serving plain http on 127.0.0.1, with its config file and storage in a
//! directory the test owns. Stopped (killed by its pid) when dropped.

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
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry whose config (`registry.yml`), storage (`storage/`) and log
    /// (`registry.log`) are in `dir`, on a free port of 127.0.0.1; returns once it answers
    /// `GET /v2/`.
    pub fn start(dir: &Path) -> Result<Registry> {
        let mut last = String::new();
        // A port found free may be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match Registry::start_on(dir, port) {
                Ok(registry) => return Ok(registry),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("the registry did not start: {last}")
    }

    /// Starts a registry on `port` (as [`Registry::start`]; also to restart one on its port).
    pub fn start_on(dir: &Path, port: u16) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )?;
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(PROGRAM)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {PROGRAM} (Debian package docker-registry)"))?;
        let mut registry = Registry { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = registry.child.try_wait()? {
                bail!("{PROGRAM} exited ({status}): {}", registry.log_text());
            }
            if registry.answers() {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{PROGRAM} did not answer on 127.0.0.1:{port} within 20 s: {}", registry.log_text())
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
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
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
