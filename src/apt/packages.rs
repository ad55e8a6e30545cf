//! Packages indexes: the stanzas apt uses to find a .deb, its size and its SHA-256.

use crate::apt::deb822;
use crate::apt::version::DebVersion;
use crate::hash::Sha256;

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
    pub depends: Option<String>,
    pub installed_size: Option<u64>,
}

/// The Packages index is not usable.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    #[error("{url}: {source}")]
    Syntax { url: String, source: deb822::Deb822Error },
    #[error("{url}, stanza at line {line} ({package}): {reason}")]
    Stanza { url: String, line: usize, package: String, reason: String },
}

/// Parses a whole Packages index. `url` names it in errors.
pub fn parse_packages(text: &str, url: &str) -> Result<Vec<PackageEntry>, PackagesError> {
    let stanzas = deb822::parse(text).map_err(|source| PackagesError::Syntax { url: url.into(), source })?;
    let mut entries = Vec::with_capacity(stanzas.len());
    for s in stanzas {
        let package = s.get("Package").unwrap_or("(no Package field)").to_string();
        let fail = |reason: String| PackagesError::Stanza { url: url.into(), line: s.line, package: package.clone(), reason };
        let field = |name: &str| s.get(name).ok_or_else(|| fail(format!("missing {name}")));
        let version = field("Version")?.parse::<DebVersion>().map_err(|e| fail(e.to_string()))?;
        let size = field("Size")?.parse::<u64>().map_err(|_| fail("Size is not a number".into()))?;
        let sha256 = field("SHA256")?.parse::<Sha256>().map_err(|e| fail(e.to_string()))?;
        let filename = field("Filename")?;
        if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
            return Err(fail(format!("Filename {filename:?} leaves the repository")));
        }
        entries.push(PackageEntry {
            package: package.clone(),
            version,
            architecture: field("Architecture")?.to_string(),
            filename: filename.to_string(),
            size,
            sha256,
            depends: s.get("Depends").map(str::to_string),
            installed_size: s.get("Installed-Size").and_then(|v| v.parse().ok()),
        });
    }
    Ok(entries)
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
}
