//! A client for OCI registries (the distribution spec's `/v2/` API): blobs (HEAD, GET,
//! monolithic or chunked upload) and manifests (GET, PUT by tag), with basic and token auth.
//!
//! Contract: the registry is not trusted. Every read is bounded (a manifest by
//! [`MANIFEST_LIMIT`], a blob by the size its descriptor gives, capped by the caller's limit)
//! and checked (a blob against its digest and size while it streams); every request has the
//! deadlines of downloads (`DD_DOWNLOAD_CONNECT_TIMEOUT`, `DD_DOWNLOAD_LOW_SPEED_*`,
//! `DD_DOWNLOAD_TIMEOUT`). Plain http is used only for 127.0.0.1 / localhost or when
//! `DD_CACHE_REGISTRY_INSECURE` allows it. Credentials never appear in an error, a log line
//! or a `Debug` form; they are not sent on a redirect to another host (ureq drops them).

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::fetch::{Limits, Watch};
use crate::hash::{Hasher, Sha256};

/// The largest manifest read (the distribution reference registry's own limit is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest token response read.
const TOKEN_LIMIT: u64 = 1 << 20;
/// The largest error body kept for a message.
const ERROR_BODY_LIMIT: u64 = 4096;
/// Blobs larger than this are uploaded in chunks of this size.
pub const CHUNK: u64 = 64 << 20;

/// Why a registry request failed. The message names the registry and what to do; it never
/// holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{setting}={value:?}: {expected}")]
    Setting { setting: String, value: String, expected: String },
    #[error("{url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{url}: the registry answered HTTP {status}{hint}")]
    Status { url: String, status: u16, hint: String },
    #[error("{url}: {reason}; the registry is broken or hostile")]
    Bad { url: String, reason: String },
    #[error("{url}: larger than {}, {what}; refusing to read further", crate::report::limit(*.limit))]
    TooLarge { url: String, limit: u64, what: String },
    #[error("{url}: served {actual_size} bytes with SHA-256 {actual} instead of the {expected_size} bytes with SHA-256 {expected} asked for")]
    Mismatch { url: String, expected: Sha256, expected_size: u64, actual: Sha256, actual_size: u64 },
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
}

/// Where a repository lives: `host[:port]/repository`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    /// `http` or `https`.
    pub scheme: &'static str,
    pub host: String,
    pub repository: String,
}

impl RepoRef {
    /// Parses `host[:port]/repository` (as `DD_CACHE_REGISTRY` holds it; `setting` names it
    /// in errors). http is chosen for 127.0.0.1, ::1 and localhost, or for any host when
    /// `insecure`; https otherwise.
    pub fn parse(value: &str, setting: &str, insecure: bool) -> Result<RepoRef, RegistryError> {
        let bad = |expected: &str| RegistryError::Setting { setting: setting.into(), value: value.into(), expected: expected.into() };
        let text = value.trim();
        let (scheme_given, rest) = match text.split_once("://") {
            Some(("https", rest)) => (Some("https"), rest),
            Some(("http", rest)) => (Some("http"), rest),
            Some(_) => return Err(bad("expected host[:port]/repository (optionally after https://)")),
            None => (None, text),
        };
        let (host, repository) = rest.split_once('/').ok_or_else(|| bad("expected host[:port]/repository, e.g. registry.example.com/team/ddslug-cache"))?;
        let repository = repository.trim_end_matches('/');
        let host_ok = !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        // The distribution spec's repository name grammar: lowercase path components.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !host_ok || repository.len() > 255 || !repository.split('/').all(component_ok) {
            return Err(bad("expected host[:port]/repository with a repository of lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
        let local = matches!(name, "127.0.0.1" | "::1" | "localhost");
        let scheme = match scheme_given {
            Some("http") if !(local || insecure) => {
                return Err(bad("plain http is used only for 127.0.0.1 or localhost; use https, or set DD_CACHE_REGISTRY_INSECURE=true for a registry on a private network"));
            }
            Some(s) => s,
            None if local || insecure => "http",
            None => "https",
        };
        Ok(RepoRef { scheme, host: host.into(), repository: repository.into() })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}://{}/v2/{}/{rest}", self.scheme, self.host, self.repository)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)
    }
}

/// A user name and password (or token) for the registry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <password>)", self.user)
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!("Basic {}", B64.encode(format!("{}:{}", self.user, self.password)))
    }

    /// The credentials a Docker `config.json` holds for `host` (`auths.<host>.auth`, base64
    /// of `user:password`), if any. The file is read within 1 MiB.
    pub fn from_docker_config(path: &std::path::Path, host: &str) -> Result<Option<Credentials>, RegistryError> {
        let io = |error| RegistryError::Io { path: path.display().to_string(), error };
        let mut text = Vec::new();
        match std::fs::File::open(path) {
            Ok(f) => f.take((1 << 20) + 1).read_to_end(&mut text).map_err(io)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        if text.len() > 1 << 20 {
            return Err(io(io::Error::other("larger than 1 MiB, the limit for a Docker config.json")));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| io(io::Error::other(format!("not JSON ({e}); fix it or set DD_CACHE_REGISTRY_USER and DD_CACHE_REGISTRY_PASSWORD"))))?;
        let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else { return Ok(None) };
        let entry = auths.iter().find(|(k, _)| {
            let k = k.trim_start_matches("https://").trim_start_matches("http://");
            k == host || k.split('/').next() == Some(host)
        });
        let Some(auth) = entry.and_then(|(_, v)| v.get("auth")).and_then(|a| a.as_str()) else { return Ok(None) };
        let decoded = B64.decode(auth.trim()).ok().and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) => Ok(Some(Credentials { user: user.into(), password: password.into() })),
            None => Err(io(io::Error::other(format!("auths.{host}.auth is not base64 of user:password")))),
        }
    }
}

/// A blob in a registry: its digest and size (what a descriptor gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Sha256,
    pub size: u64,
}

/// A client for one repository.
pub struct Registry {
    pub repo: RepoRef,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    limits: Limits,
    /// Blobs larger than this are uploaded in PATCH chunks of this size.
    chunk: u64,
    /// The Authorization header that worked last (basic, or a bearer token), by scope.
    auth: Mutex<Vec<(String, String)>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registry({})", self.repo)
    }
}

/// A request to send: method, URL, extra headers, and a body.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

/// Whether a request needs pull or push access (for a token's scope).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

impl Registry {
    pub fn new(repo: RepoRef, credentials: Option<Credentials>, limits: Limits) -> Registry {
        // Blob GETs may be redirected to storage; never from https to plain http.
        let agent = crate::fetch::http_agent(&limits, 5, repo.scheme == "https");
        Registry { repo, agent, credentials, limits, chunk: CHUNK, auth: Mutex::new(Vec::new()) }
    }

    /// Uploads blobs larger than `chunk` bytes in chunks of that size (default [`CHUNK`]).
    pub fn with_chunk_size(mut self, chunk: u64) -> Registry {
        self.chunk = chunk.max(1);
        self
    }

    fn scope(&self, access: Access) -> String {
        let actions = if access == Access::Push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repo.repository)
    }

    fn network(&self, url: &str, e: ureq::Error) -> RegistryError {
        use ureq::Timeout;
        let reason = match e {
            ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => self.limits.connect_failed(),
            ureq::Error::Timeout(Timeout::Global) => format!("did not finish within {} s (DD_DOWNLOAD_TIMEOUT)", self.limits.deadline.as_secs()),
            ureq::Error::Timeout(_) => self.limits.no_response(),
            ureq::Error::Io(e) => e.to_string(),
            other => other.to_string(),
        };
        RegistryError::Network { url: url.into(), reason }
    }


    /// Sends a request ([`Registry::send_once`]); one answered with a transient status (408,
    /// 429, 5xx) is sent again, as downloads are: up to `DD_DOWNLOAD_ATTEMPTS` times, waiting
    /// 250 ms and twice as long after each, within `DD_DOWNLOAD_TIMEOUT`. A streamed body
    /// cannot be sent again; its caller decides. Registries answer 500 for a moment when two
    /// builders push the same blob at once (the reference registry rewrites the repository's
    /// link file in place, and a HEAD reading it empty fails), so retrying is what lets
    /// builders sharing a registry push together.
    fn send(&self, method: &str, url: &str, headers: &[(&str, String)], body: Body, access: Access) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let bytes = match body {
            Body::Reader(..) => return self.send_once(method, url, headers, body, access),
            Body::Empty => None,
            Body::Bytes(bytes) => Some(bytes),
        };
        let started = Instant::now();
        let mut wait = crate::fetch::RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            let response = self.send_once(method, url, headers, bytes.map_or(Body::Empty, Body::Bytes), access)?;
            let status = response.status().as_u16();
            if !crate::fetch::transient(status) {
                return Ok(response);
            }
            if attempt >= self.limits.attempts || started.elapsed() + wait >= self.limits.deadline {
                let times = if attempt == 1 { String::new() } else { format!(" {attempt} times") };
                return Err(RegistryError::Status { url: url.into(), status, hint: format!("{times}{}", self.error_body(url, response)) });
            }
            drop(response);
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }

    /// Sends one request, authenticating when the registry asks (once per scope: the header
    /// that worked is reused). A streamed body is sent once: the request before it (a HEAD
    /// or POST of the same scope) has authenticated already.
    fn send_once(&self, method: &str, url: &str, headers: &[(&str, String)], mut body: Body, access: Access) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let scope = self.scope(access);
        let mut authorization = self.auth.lock().ok().and_then(|a| a.iter().find(|(s, _)| *s == scope).map(|(_, h)| h.clone()));
        let built = |e: ureq::http::Error| RegistryError::Network { url: url.into(), reason: e.to_string() };
        for round in 0..2 {
            let mut request = ureq::http::Request::builder().method(method).uri(url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(header) = &authorization {
                request = request.header("Authorization", header);
            }
            let deadline = Some(self.limits.deadline);
            let response = match &mut body {
                Body::Empty if matches!(method, "GET" | "HEAD") => {
                    let request = self.agent.configure_request(request.body(()).map_err(built)?).timeout_global(deadline).build();
                    self.agent.run(request)
                }
                Body::Empty => {
                    let request = self.agent.configure_request(request.body(&[][..]).map_err(built)?).timeout_global(deadline).build();
                    self.agent.run(request)
                }
                Body::Bytes(bytes) => {
                    let request = self.agent.configure_request(request.body(*bytes).map_err(built)?).timeout_global(deadline).build();
                    self.agent.run(request)
                }
                Body::Reader(reader, len) => {
                    let request = request.header("Content-Length", len.to_string()).body(ureq::SendBody::from_reader(reader)).map_err(built)?;
                    self.agent.run(self.agent.configure_request(request).timeout_global(deadline).build())
                }
            }
            .map_err(|e| self.network(url, e))?;
            let status = response.status().as_u16();
            if status == 401 && round == 0 && !matches!(body, Body::Reader(..)) {
                // Answer the challenge, then send again.
                let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let header = self.authorize(url, &challenge, &scope)?;
                if let Ok(mut cache) = self.auth.lock() {
                    cache.retain(|(s, _)| *s != scope);
                    cache.push((scope.clone(), header.clone()));
                }
                authorization = Some(header);
                continue;
            }
            if status == 401 || status == 403 {
                let hint = if self.credentials.is_some() {
                    "; check DD_CACHE_REGISTRY_USER / DD_CACHE_REGISTRY_PASSWORD (or the Docker config.json): they are refused or lack access to the repository"
                } else {
                    "; the registry wants credentials: set DD_CACHE_REGISTRY_USER and DD_CACHE_REGISTRY_PASSWORD (or log in with `docker login`)"
                };
                return Err(RegistryError::Status { url: url.into(), status, hint: hint.into() });
            }
            return Ok(response);
        }
        Err(RegistryError::Status { url: url.into(), status: 401, hint: String::new() })
    }

    /// The Authorization header answering a `WWW-Authenticate` challenge: basic with the
    /// credentials, or a bearer token from the challenge's realm (the distribution spec's
    /// token flow, sending the credentials to the realm when there are any).
    fn authorize(&self, url: &str, challenge: &str, scope: &str) -> Result<String, RegistryError> {
        let (kind, params) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
        let no_credentials = || RegistryError::Status {
            url: url.into(),
            status: 401,
            hint: "; the registry wants credentials: set DD_CACHE_REGISTRY_USER and DD_CACHE_REGISTRY_PASSWORD (or log in with `docker login`)".into(),
        };
        if kind.eq_ignore_ascii_case("basic") {
            return self.credentials.as_ref().map(Credentials::basic).ok_or_else(no_credentials);
        }
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Bad { url: url.into(), reason: format!("unknown authentication scheme {:?}", crate::report::excerpt(kind, 40)) });
        }
        let param = |name: &str| auth_param(params, name);
        let realm = param("realm").ok_or_else(|| RegistryError::Bad { url: url.into(), reason: "a Bearer challenge without a realm".into() })?;
        if !(realm.starts_with("https://") || realm.starts_with("http://") && self.repo.scheme == "http") {
            return Err(RegistryError::Bad { url: url.into(), reason: "a token realm that is not https".into() });
        }
        let mut token_url = format!("{realm}{}scope={}", if realm.contains('?') { '&' } else { '?' }, percent(scope));
        if let Some(service) = param("service") {
            token_url.push_str(&format!("&service={}", percent(&service)));
        }
        let mut request = self.agent.get(&token_url);
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", c.basic());
        }
        let response = request.config().timeout_global(Some(self.limits.deadline)).build().call().map_err(|e| self.network(&realm, e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let hint = if self.credentials.is_some() { "; check DD_CACHE_REGISTRY_USER / DD_CACHE_REGISTRY_PASSWORD" } else { "; set DD_CACHE_REGISTRY_USER and DD_CACHE_REGISTRY_PASSWORD" };
            return Err(RegistryError::Status { url: realm, status, hint: hint.into() });
        }
        let bytes = self.read_limited(&realm, response, TOKEN_LIMIT, "the limit for a token response")?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| RegistryError::Bad { url: realm.clone(), reason: "the token response is not JSON".into() })?;
        let token = json.get("token").or_else(|| json.get("access_token")).and_then(|t| t.as_str());
        match token {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(format!("Bearer {t}")),
            _ => Err(RegistryError::Bad { url: realm, reason: "the token response has no token".into() }),
        }
    }

    /// A body read that failed, for people: a timeout names its setting.
    fn read_failed(&self, e: &io::Error, got: u64, size: Option<u64>) -> String {
        let of = size.map(|s| format!(" of {s}")).unwrap_or_default();
        if e.kind() == io::ErrorKind::TimedOut || e.to_string().starts_with("timeout") {
            format!("no data for {} s (DD_DOWNLOAD_LOW_SPEED_TIME) after {got}{of} bytes", self.limits.low_speed_time.as_secs())
        } else {
            format!("{e} after {got}{of} bytes")
        }
    }

    fn read_limited(&self, url: &str, response: ureq::http::Response<ureq::Body>, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::new();
        let deadline = Instant::now() + self.limits.deadline;
        let read = Watch::new(response.into_body().into_reader(), self.limits, deadline).take(limit + 1).read_to_end(&mut bytes);
        if let Err(e) = read {
            return Err(RegistryError::Network { url: url.into(), reason: self.read_failed(&e, bytes.len() as u64, None) });
        }
        if bytes.len() as u64 > limit {
            return Err(RegistryError::TooLarge { url: url.into(), limit, what: what.into() });
        }
        Ok(bytes)
    }

    fn unexpected(&self, url: &str, response: ureq::http::Response<ureq::Body>) -> RegistryError {
        let status = response.status().as_u16();
        RegistryError::Status { url: url.into(), status, hint: self.error_body(url, response) }
    }

    /// `": <the start of the answer's body>"`, or nothing for an empty body.
    fn error_body(&self, url: &str, response: ureq::http::Response<ureq::Body>) -> String {
        let body = self.read_limited(url, response, ERROR_BODY_LIMIT, "").unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        if text.trim().is_empty() { String::new() } else { format!(": {}", crate::report::excerpt(text.trim(), 200)) }
    }

    /// Whether the repository has the blob (HEAD).
    pub fn has_blob(&self, blob: BlobRef, access_for_push: bool) -> Result<bool, RegistryError> {
        let url = self.repo.url(&format!("blobs/sha256:{}", blob.digest));
        let access = if access_for_push { Access::Push } else { Access::Pull };
        let response = self.send("HEAD", &url, &[], Body::Empty, access)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.unexpected(&url, response)),
        }
    }

    /// Streams the blob into `out`, checking its size and SHA-256 as it passes; at most
    /// `limit` bytes are accepted whatever the descriptor says. `Ok(false)` when the
    /// registry does not have it. Bytes already written are the caller's to discard on error.
    pub fn get_blob(&self, blob: BlobRef, limit: u64, out: &mut dyn Write) -> Result<bool, RegistryError> {
        let url = self.repo.url(&format!("blobs/sha256:{}", blob.digest));
        if blob.size > limit {
            return Err(RegistryError::TooLarge { url, limit, what: "the limit for this blob".into() });
        }
        let response = self.send("GET", &url, &[], Body::Empty, Access::Pull)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            _ => return Err(self.unexpected(&url, response)),
        }
        let deadline = Instant::now() + self.limits.deadline;
        let mut reader = Watch::new(response.into_body().into_reader(), self.limits, deadline).take(blob.size + 1);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RegistryError::Network { url, reason: self.read_failed(&e, hasher.len(), Some(blob.size)) }),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|error| RegistryError::Io { path: "the blob's destination".into(), error })?;
        }
        let (size, digest) = (hasher.len(), hasher.finish());
        if size != blob.size || digest != blob.digest {
            return Err(RegistryError::Mismatch { url, expected: blob.digest, expected_size: blob.size, actual: digest, actual_size: size });
        }
        Ok(true)
    }

    /// A small blob whole (a config or record), checked like [`Registry::get_blob`].
    pub fn get_blob_bytes(&self, blob: BlobRef, limit: u64) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut bytes = Vec::new();
        Ok(self.get_blob(blob, limit, &mut bytes)?.then_some(bytes))
    }

    /// Uploads a blob unless the repository has it already (HEAD first). `open` gives the
    /// blob's bytes from the start (called once per attempt). Blobs up to [`CHUNK`] go in
    /// one PUT; larger ones in PATCH chunks ([`Registry::with_chunk_size`]). Returns whether
    /// anything was uploaded.
    pub fn push_blob(&self, blob: BlobRef, open: &mut dyn FnMut() -> io::Result<Box<dyn Read>>) -> Result<bool, RegistryError> {
        if self.has_blob(blob, true)? {
            return Ok(false);
        }
        let start_url = self.repo.url("blobs/uploads/");
        let response = self.send("POST", &start_url, &[], Body::Empty, Access::Push)?;
        if response.status() != 202 {
            return Err(self.unexpected(&start_url, response));
        }
        let mut location = self.location(&start_url, &response)?;
        let io_err = |error| RegistryError::Io { path: format!("the blob sha256:{} to upload", blob.digest), error };
        let mut reader = open().map_err(io_err)?;
        if blob.size > self.chunk {
            let mut offset = 0;
            while offset < blob.size {
                let len = self.chunk.min(blob.size - offset);
                let mut chunk = (&mut reader).take(len);
                let range = format!("{offset}-{}", offset + len - 1);
                let headers = [("Content-Type", "application/octet-stream".to_string()), ("Content-Range", range)];
                let response = self.send("PATCH", &location, &headers, Body::Reader(&mut chunk, len), Access::Push)?;
                if response.status() != 202 {
                    return Err(self.unexpected(&location, response));
                }
                location = self.location(&location, &response)?;
                offset += len;
            }
            let url = with_digest(&location, &blob.digest);
            let sent = self.send("PUT", &url, &[], Body::Empty, Access::Push);
            return self.committed(blob, &url, sent);
        }
        let url = with_digest(&location, &blob.digest);
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        let sent = self.send("PUT", &url, &headers, Body::Reader(&mut reader, blob.size), Access::Push);
        self.committed(blob, &url, sent)
    }

    /// Whether the PUT that ends an upload stored the blob. A failed one is not the end when
    /// the repository has the blob all the same: a retried PUT whose first try was stored,
    /// or another builder's upload of the same bytes (the registry checked its digest).
    fn committed(&self, blob: BlobRef, url: &str, sent: Result<ureq::http::Response<ureq::Body>, RegistryError>) -> Result<bool, RegistryError> {
        let failed = match sent {
            Ok(response) if response.status() == 201 => return Ok(true),
            Ok(response) => self.unexpected(url, response),
            Err(e @ RegistryError::Status { .. }) => e,
            Err(e) => return Err(e),
        };
        if matches!(self.has_blob(blob, true), Ok(true)) { Ok(true) } else { Err(failed) }
    }

    /// The absolute upload URL a response's `Location` gives (it may be relative).
    fn location(&self, url: &str, response: &ureq::http::Response<ureq::Body>) -> Result<String, RegistryError> {
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("");
        if location.is_empty() {
            return Err(RegistryError::Bad { url: url.into(), reason: "an upload answer without a Location".into() });
        }
        if location.starts_with('/') {
            return Ok(format!("{}://{}{location}", self.repo.scheme, self.repo.host));
        }
        let own = format!("{}://{}/", self.repo.scheme, self.repo.host);
        if !location.starts_with(&own) {
            // The upload (with our credentials) goes to the registry only.
            return Err(RegistryError::Bad { url: url.into(), reason: "an upload Location on another host".into() });
        }
        Ok(location.to_string())
    }

    /// Stores a manifest under `tag`; returns its digest.
    pub fn put_manifest(&self, tag: &str, media_type: &str, bytes: &[u8]) -> Result<Sha256, RegistryError> {
        let url = self.repo.url(&format!("manifests/{tag}"));
        let response = self.send("PUT", &url, &[("Content-Type", media_type.to_string())], Body::Bytes(bytes), Access::Push)?;
        if response.status() != 201 {
            return Err(self.unexpected(&url, response));
        }
        Ok(Sha256::of(bytes))
    }

    /// The manifest `reference` (a tag, or `sha256:<hex>`) as bytes with its media type,
    /// within [`MANIFEST_LIMIT`]; `Ok(None)` when the repository has no such manifest. A
    /// manifest asked for by digest is checked against it.
    pub fn get_manifest(&self, reference: &str, accept: &[&str]) -> Result<Option<(String, Vec<u8>)>, RegistryError> {
        let url = self.repo.url(&format!("manifests/{reference}"));
        let response = self.send("GET", &url, &[("Accept", accept.join(", "))], Body::Empty, Access::Pull)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.unexpected(&url, response)),
        }
        let media_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = self.read_limited(&url, response, MANIFEST_LIMIT, "the limit for a manifest")?;
        if let Some(hex) = reference.strip_prefix("sha256:")
            && hex.parse::<Sha256>().ok() != Some(Sha256::of(&bytes))
        {
            return Err(RegistryError::Bad { url, reason: "the manifest does not match the digest it was asked for by".into() });
        }
        Ok(Some((media_type, bytes)))
    }
}

fn with_digest(location: &str, digest: &Sha256) -> String {
    format!("{location}{}digest=sha256%3A{digest}", if location.contains('?') { '&' } else { '?' })
}

/// The value of `name` in a challenge's `k="v", k2="v2"` parameters.
fn auth_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_string());
        }
        rest = next.trim_start_matches([',', ' ']);
    }
    None
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_choose_http_only_for_the_local_host() {
        let r = RepoRef::parse("127.0.0.1:5000/team/cache", "DD_CACHE_REGISTRY", false).unwrap();
        assert_eq!((r.scheme, r.host.as_str(), r.repository.as_str()), ("http", "127.0.0.1:5000", "team/cache"));
        assert_eq!(RepoRef::parse("registry.example.com/c", "DD_CACHE_REGISTRY", false).unwrap().scheme, "https");
        assert_eq!(RepoRef::parse("registry.internal:5000/c", "DD_CACHE_REGISTRY", true).unwrap().scheme, "http");
        let e = RepoRef::parse("http://registry.example.com/c", "DD_CACHE_REGISTRY", false).unwrap_err().to_string();
        assert!(e.starts_with("DD_CACHE_REGISTRY=\"http://registry.example.com/c\"") && e.contains("DD_CACHE_REGISTRY_INSECURE"), "{e}");
        for bad in ["registry.example.com", "host/UPPER", "host/a//b", "ftp://h/r", "/r"] {
            assert!(RepoRef::parse(bad, "DD_CACHE_REGISTRY", false).is_err(), "{bad}");
        }
    }

    #[test]
    fn challenges_parse() {
        let p = r#"realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#;
        assert_eq!(auth_param(p, "realm").as_deref(), Some("https://auth.example.com/token"));
        assert_eq!(auth_param(p, "service").as_deref(), Some("registry.example.com"));
        assert_eq!(auth_param(p, "scope").as_deref(), Some("repository:a/b:pull"));
        assert_eq!(auth_param(p, "nope"), None);
        assert_eq!(percent("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = B64.encode("me:s3cret");
        std::fs::write(&path, format!(r#"{{"auths":{{"https://127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        let c = Credentials::from_docker_config(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("me", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(Credentials::from_docker_config(&path, "other:5000").unwrap(), None);
        assert_eq!(Credentials::from_docker_config(&dir.path().join("none.json"), "h").unwrap(), None);
    }
}
