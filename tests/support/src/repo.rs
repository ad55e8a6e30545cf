//! Lays out a signed apt repository on disk:
//! `dists/<suite>/{InRelease,Release,Release.gpg}`,
//! `dists/<suite>/<component>/binary-<arch>/Packages{,.gz,.xz}` and `pool/<component>/...`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::debs::{Compression, DebSpec, compress};
use crate::signing::SigningKey;
use crate::timefmt::{now_unix, release_date};

/// Which forms of each Packages index to publish (all are listed in Release).
#[derive(Clone, Copy, Debug)]
pub struct IndexForms {
    pub plain: bool,
    pub gz: bool,
    pub xz: bool,
}

impl IndexForms {
    pub const ALL: IndexForms = IndexForms { plain: true, gz: true, xz: true };
}

/// How the Release file is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignMode {
    /// InRelease and Release + Release.gpg, like Debian.
    Both,
    /// Only InRelease.
    InRelease,
    /// Only Release + Release.gpg (no InRelease), like older repositories.
    Detached,
    /// Release with no signature at all.
    Unsigned,
}

/// A repository to generate.
#[derive(Clone, Debug)]
pub struct RepoSpec {
    pub suite: String,
    pub arch: String,
    pub components: Vec<(String, Vec<DebSpec>)>,
    pub forms: IndexForms,
    /// Valid-Until as seconds since the epoch; `None` leaves the field out.
    pub valid_until: Option<i64>,
    pub sign: SignMode,
}

impl RepoSpec {
    /// A `stable` amd64 repository with every index form and both signature forms.
    pub fn new(suite: &str) -> RepoSpec {
        RepoSpec {
            suite: suite.into(),
            arch: "amd64".into(),
            components: Vec::new(),
            forms: IndexForms::ALL,
            valid_until: Some(now_unix() + 7 * 86_400),
            sign: SignMode::Both,
        }
    }

    /// Adds packages to a component.
    pub fn component(mut self, name: &str, debs: Vec<DebSpec>) -> RepoSpec {
        self.components.push((name.into(), debs));
        self
    }
}

/// One package as published.
#[derive(Clone, Debug)]
pub struct PublishedDeb {
    pub component: String,
    pub package: String,
    pub version: String,
    /// Path relative to the repository root, as in the Packages `Filename` field.
    pub filename: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// What `write_repo` produced.
#[derive(Clone, Debug)]
pub struct WrittenRepo {
    pub root: PathBuf,
    pub debs: Vec<PublishedDeb>,
}

impl WrittenRepo {
    /// The published package with this name and version.
    pub fn deb(&self, package: &str, version: &str) -> Option<&PublishedDeb> {
        self.debs.iter().find(|d| d.package == package && d.version == version)
    }
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes the repository under `root` and signs it with `key`.
pub fn write_repo(root: &Path, spec: &RepoSpec, key: &SigningKey) -> Result<WrittenRepo> {
    let dists = root.join("dists").join(&spec.suite);
    let mut published = Vec::new();
    let mut index_files: Vec<(String, Vec<u8>)> = Vec::new();
    for (component, debs) in &spec.components {
        let mut packages = String::new();
        for deb in debs {
            let bytes = deb.build().with_context(|| format!("building {}", deb.file_name()))?;
            let first = if deb.package.starts_with("lib") { &deb.package[..4] } else { &deb.package[..1] };
            let filename = format!("pool/{component}/{first}/{}/{}", deb.package, deb.file_name());
            let path = root.join(&filename);
            fs::create_dir_all(path.parent().context("pool path has a parent")?)?;
            fs::write(&path, &bytes)?;
            let sha256 = sha256_hex(&bytes);
            let _ = write!(
                packages,
                "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: ddslug tests <tests@ddslug.invalid>\n\
                 Installed-Size: {}\nFilename: {}\nSize: {}\nSHA256: {}\nSection: utils\nPriority: optional\n\
                 Description: generated test package\n Built by ddslug's test support.\n .\n Second paragraph.\n\n",
                deb.package,
                deb.version,
                deb.arch,
                deb.installed_size_kib(),
                filename,
                bytes.len(),
                sha256
            );
            published.push(PublishedDeb {
                component: component.clone(),
                package: deb.package.clone(),
                version: deb.version.clone(),
                filename,
                path,
                sha256,
                size: bytes.len() as u64,
            });
        }
        let rel = format!("{component}/binary-{}/Packages", spec.arch);
        let plain = packages.into_bytes();
        let variants = [
            (spec.forms.plain, "", compress(&plain, Compression::None)?),
            (spec.forms.gz, ".gz", compress(&plain, Compression::Gzip)?),
            (spec.forms.xz, ".xz", compress(&plain, Compression::Xz)?),
        ];
        for (publish, suffix, bytes) in variants {
            let name = format!("{rel}{suffix}");
            if publish {
                let path = dists.join(&name);
                fs::create_dir_all(path.parent().context("index path has a parent")?)?;
                fs::write(&path, &bytes)?;
            }
            // Like Debian, Release lists every form even when one is not served.
            index_files.push((name, bytes));
        }
    }
    let release = release_text(spec, &index_files);
    fs::create_dir_all(&dists)?;
    fs::write(dists.join("Release"), &release)?;
    match spec.sign {
        SignMode::Both | SignMode::InRelease => fs::write(dists.join("InRelease"), key.clearsign(release.as_bytes())?)?,
        SignMode::Detached | SignMode::Unsigned => {}
    }
    match spec.sign {
        SignMode::Both | SignMode::Detached => {
            fs::write(dists.join("Release.gpg"), key.detached_sign(release.as_bytes())?)?
        }
        SignMode::InRelease | SignMode::Unsigned => {}
    }
    if spec.sign == SignMode::InRelease {
        fs::remove_file(dists.join("Release"))?;
    }
    Ok(WrittenRepo { root: root.to_owned(), debs: published })
}

fn release_text(spec: &RepoSpec, index_files: &[(String, Vec<u8>)]) -> String {
    let components: Vec<&str> = spec.components.iter().map(|(c, _)| c.as_str()).collect();
    let mut text = format!(
        "Origin: ddslug-tests\nLabel: ddslug-tests\nSuite: {}\nCodename: {}\nDate: {}\n",
        spec.suite,
        spec.suite,
        release_date(now_unix())
    );
    if let Some(until) = spec.valid_until {
        let _ = writeln!(text, "Valid-Until: {}", release_date(until));
    }
    let _ = write!(
        text,
        "Architectures: {}\nComponents: {}\nDescription: ddslug test repository\nSHA256:\n",
        spec.arch,
        components.join(" ")
    );
    for (name, bytes) in index_files {
        let _ = writeln!(text, " {} {:>16} {}", sha256_hex(bytes), bytes.len(), name);
    }
    text
}
