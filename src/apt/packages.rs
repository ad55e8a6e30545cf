//! Packages indexes: the stanzas apt uses to find a .deb, its size and its SHA-256.
//!
//! Contract: an index is read as a stream, one stanza at a time, and only the stanzas of
//! the wanted packages are kept; stanzas, their size and the entries kept are bounded
//! ([`Limits`]), so that reading any index, however large or hostile, takes the memory of
//! a few stanzas, and an error names the limit it hit.

use std::io::{self, BufRead};

use crate::apt::deb822::{self, StanzaReadError, StanzaReader};
use crate::apt::version::DebVersion;
use crate::hash::Sha256;
use crate::report::excerpt;

/// One package as a Packages index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageEntry {
    pub package: String,
    pub version: DebVersion,
    pub architecture: String,
    /// Path relative to the repository root.
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
    pub installed_size: Option<u64>,
}

/// How much of an index is read, and kept.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Stanzas in the index (Debian's largest has ~65,000).
    pub stanzas: u64,
    /// Bytes in one stanza (Debian's largest are a few tens of kB).
    pub stanza_bytes: usize,
    /// Entries of the wanted packages kept (Datadog's repository has a few hundred).
    pub kept: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { stanzas: 2_000_000, stanza_bytes: 1 << 20, kept: 10_000 }
    }
}

/// Largest package accepted (Datadog's agent is ~150 MB, Debian's largest a few GB): the
/// download of a .deb is bounded by the Size its index gives, and that by this.
pub const PACKAGE_LIMIT: u64 = 8 << 30;

/// Longest value accepted for the fields kept: they become URLs, names in messages and
/// lock entries (Debian's longest are far shorter). Only these short fields are kept
/// (not Depends or Description, which can fill a whole stanza): thousands of entries stay
/// a few MB.
const FIELD_LIMITS: [(&str, usize); 4] = [("Package", 256), ("Version", 256), ("Architecture", 64), ("Filename", 1024)];

/// The Packages index is not usable.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    // The cause is in the message, not a `source`: `{:#}` would print it twice.
    #[error("{url}: {error}")]
    Syntax { url: String, error: deb822::Deb822Error },
    #[error("{url}, stanza at line {line} ({package}): {reason}")]
    Stanza { url: String, line: usize, package: String, reason: String },
    #[error(
        "{url}: {error}; the index is broken or hostile: check the repository URL, or use another mirror"
    )]
    StanzaTooLarge { url: String, error: StanzaReadError },
    #[error(
        "{url} has more than {limit} stanzas, the limit for a Packages index; the index is broken or hostile: \
         check the repository URL, or use another mirror"
    )]
    TooManyStanzas { url: String, limit: u64 },
    #[error(
        "{url} lists more than {limit} entries for {packages}, the limit kept for the wanted packages; the index \
         is broken or hostile: check the repository URL, or use another mirror"
    )]
    TooManyEntries { url: String, packages: String, limit: usize },
}

/// Reading stopped: the stream failed (decompression, network, a size limit: the caller
/// knows which), or the index is not usable.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Invalid(PackagesError),
}

/// What a pass over an index found.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// The wanted packages' entries, in index order.
    pub entries: Vec<PackageEntry>,
    /// Stanzas read, wanted or not.
    pub stanzas: u64,
}

/// Reads a Packages index from a stream, keeping the entries of `names` built for `arch`
/// (or `all`). `url` names it in errors.
pub fn read_packages(reader: impl BufRead, url: &str, names: &[&str], arch: &str, limits: Limits) -> Result<Found, ReadError> {
    let invalid = ReadError::Invalid;
    let mut stanzas = StanzaReader::new(reader, limits.stanza_bytes);
    let mut found = Found::default();
    loop {
        let (text, first_line) = match stanzas.next_stanza() {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(found),
            Err(StanzaReadError::Io(e)) => return Err(ReadError::Io(e)),
            Err(error) => return Err(invalid(PackagesError::StanzaTooLarge { url: url.into(), error })),
        };
        found.stanzas += 1;
        if found.stanzas > limits.stanzas {
            return Err(invalid(PackagesError::TooManyStanzas { url: url.into(), limit: limits.stanzas }));
        }
        // Most stanzas are other packages: look at the name before parsing the rest.
        if !package_name(&text).is_some_and(|n| names.contains(&n)) {
            continue;
        }
        let parsed = deb822::parse(&text).map_err(|mut error| {
            error.line += first_line - 1;
            invalid(PackagesError::Syntax { url: url.into(), error })
        })?;
        for mut s in parsed {
            s.line += first_line - 1;
            let entry = entry(&s, url).map_err(invalid)?;
            if entry.architecture != arch && entry.architecture != "all" {
                continue;
            }
            if found.entries.len() >= limits.kept {
                let packages = names.join(", ");
                return Err(invalid(PackagesError::TooManyEntries { url: url.into(), packages, limit: limits.kept }));
            }
            found.entries.push(entry);
        }
    }
}

/// The value of the stanza's `Package` field, found without parsing the stanza.
fn package_name(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("Package").then(|| value.trim())
    })
}

fn entry(s: &deb822::Stanza, url: &str) -> Result<PackageEntry, PackagesError> {
    let package = s.get("Package").unwrap_or("(no Package field)");
    let fail = |reason: String| PackagesError::Stanza { url: url.into(), line: s.line, package: excerpt(package, 80), reason: excerpt(&reason, 300) };
    for (name, max) in FIELD_LIMITS {
        if s.get(name).is_some_and(|v| v.len() > max) {
            return Err(fail(format!("{name} is longer than {max} bytes, the limit for that field")));
        }
    }
    let field = |name: &str| s.get(name).ok_or_else(|| fail(format!("missing {name}")));
    let version = field("Version")?.parse::<DebVersion>().map_err(|e| fail(e.to_string()))?;
    let size = field("Size")?.parse::<u64>().map_err(|_| fail("Size is not a number".into()))?;
    if size > PACKAGE_LIMIT {
        return Err(fail(format!("Size {size} is more than {}, the limit for a package", crate::report::limit(PACKAGE_LIMIT))));
    }
    let sha256 = field("SHA256")?.parse::<Sha256>().map_err(|e| fail(e.to_string()))?;
    let filename = field("Filename")?;
    if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
        return Err(fail(format!("Filename {filename:?} leaves the repository")));
    }
    Ok(PackageEntry {
        package: package.to_string(),
        version,
        architecture: field("Architecture")?.to_string(),
        filename: filename.to_string(),
        size,
        sha256,
        installed_size: s.get("Installed-Size").and_then(|v| v.parse().ok()),
    })
}

/// Parses a whole Packages index held in memory, keeping every package (tests and small
/// indexes; repositories are read with [`read_packages`]).
pub fn parse_packages(text: &str, url: &str) -> Result<Vec<PackageEntry>, PackagesError> {
    let stanzas = deb822::parse(text).map_err(|error| PackagesError::Syntax { url: url.into(), error })?;
    stanzas.iter().map(|s| entry(s, url)).collect()
}

/// All entries for `name` built for `arch` (or `all`), newest first.
pub fn versions_of<'a>(entries: &'a [PackageEntry], name: &str, arch: &str) -> Vec<&'a PackageEntry> {
    let mut found: Vec<&PackageEntry> =
        entries.iter().filter(|e| e.package == name && (e.architecture == arch || e.architecture == "all")).collect();
    found.sort_by(|a, b| b.version.cmp(&a.version));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn stanza(name: &str, version: &str, arch: &str) -> String {
        format!("Package: {name}\nVersion: {version}\nArchitecture: {arch}\nFilename: pool/{name}_{version}.deb\nSize: 10\nSHA256: {SHA}\n\n")
    }

    #[test]
    fn newest_first_and_arch_filter() {
        let text = [
            stanza("a", "1.0-1", "amd64"),
            stanza("a", "1:0.5-1", "amd64"),
            stanza("a", "2.0-1", "arm64"),
            stanza("a", "1.5-1", "all"),
            stanza("b", "9", "amd64"),
        ]
        .concat();
        let entries = parse_packages(&text, "u").unwrap();
        let versions: Vec<String> = versions_of(&entries, "a", "amd64").iter().map(|e| e.version.to_string()).collect();
        assert_eq!(versions, vec!["1:0.5-1", "1.5-1", "1.0-1"]);
    }

    #[test]
    fn missing_fields_name_the_package_and_url() {
        let text = "Package: broken\nVersion: 1\nArchitecture: amd64\nFilename: pool/x.deb\nSize: 1\n";
        let e = parse_packages(text, "http://x/Packages").unwrap_err().to_string();
        assert!(e.contains("http://x/Packages") && e.contains("broken") && e.contains("missing SHA256"), "{e}");
        let escape = stanza("x", "1", "amd64").replace("pool/", "../../");
        assert!(parse_packages(&escape, "u").is_err());
    }

    fn read(text: &str, names: &[&str], limits: Limits) -> Result<Found, ReadError> {
        read_packages(text.as_bytes(), "http://x/Packages", names, "amd64", limits)
    }

    #[test]
    fn streaming_keeps_only_the_wanted_packages_for_the_architecture() {
        let text = [stanza("a", "1", "amd64"), stanza("b", "2", "amd64"), stanza("a", "3", "arm64"), stanza("a", "4", "all")].concat();
        let found = read(&text, &["a"], Limits::default()).unwrap();
        assert_eq!(found.stanzas, 4);
        let versions: Vec<String> = found.entries.iter().map(|e| e.version.to_string()).collect();
        assert_eq!(versions, ["1", "4"]);
        // A broken stanza of a package nobody asked for is not parsed; one of ours is, and
        // its line is the line in the whole index.
        let broken = [stanza("b", "2", "amd64"), "Package: a\nVersion: 1\n".into()].concat();
        assert!(read(&broken, &["b"], Limits::default()).is_ok());
        let Err(ReadError::Invalid(e)) = read(&broken, &["a"], Limits::default()) else { panic!("accepted") };
        assert!(e.to_string().contains("stanza at line 8 (a): missing Size"), "{e}");
    }

    #[test]
    fn limits_are_named_when_hit() {
        let three = [stanza("a", "1", "amd64"), stanza("a", "2", "amd64"), stanza("b", "3", "amd64")].concat();
        let limits = Limits { stanzas: 2, ..Limits::default() };
        let Err(ReadError::Invalid(e)) = read(&three, &["x"], limits) else { panic!("accepted") };
        assert!(e.to_string().contains("more than 2 stanzas"), "{e}");
        let limits = Limits { kept: 1, ..Limits::default() };
        let Err(ReadError::Invalid(e)) = read(&three, &["a"], limits) else { panic!("accepted") };
        assert!(e.to_string().contains("more than 1 entries for a"), "{e}");
        let huge = stanza("a", "1", "amd64").replace("Size: 10", &format!("Size: {}", PACKAGE_LIMIT + 1));
        let Err(ReadError::Invalid(e)) = read(&huge, &["a"], Limits::default()) else { panic!("accepted") };
        assert!(e.to_string().contains("more than 8 GiB, the limit for a package"), "{e}");
        let limits = Limits { stanza_bytes: 100, ..Limits::default() };
        let Err(ReadError::Invalid(e)) = read(&three, &["a"], limits) else { panic!("accepted") };
        assert!(e.to_string().contains("longer than 100 bytes"), "{e}");
    }
}
