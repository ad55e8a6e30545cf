//! Picks exact packages out of a verified index.
//!
//! Contract: an error lists at most [`LISTED`] versions, newest first, and says how many
//! more there are: an index can hold thousands, a message must stay readable.

use crate::apt::client::RepoIndex;
use crate::apt::packages::{PackageEntry, versions_of};
use crate::apt::version::DebVersion;
use crate::report::{excerpt, first_of};

/// Versions listed in a "not found" message.
pub const LISTED: usize = 20;

/// The wanted package or version is not in the index.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{package} is not in {packages_url}; check the package name and the component")]
    NoPackage { package: String, packages_url: String },
    #[error("{package} {version} is not in {packages_url}; available versions, newest first: {available}")]
    NoVersion { package: String, version: String, packages_url: String, available: String },
    #[error("{0:?} is not a Debian version: {1}")]
    BadVersion(String, String),
}

/// All versions of `package` for the index's architecture (and `all`), newest first.
pub fn available<'a>(index: &'a RepoIndex, package: &str) -> Vec<&'a PackageEntry> {
    versions_of(&index.packages, package, &index.source.arch)
}

/// Finds `package` at exactly `version`. A version given without an epoch also matches
/// one that carries an epoch (`7.50.0-1` finds `1:7.50.0-1`) when that is unambiguous.
pub fn find<'a>(index: &'a RepoIndex, package: &str, version: &str) -> Result<&'a PackageEntry, ResolveError> {
    let wanted: DebVersion = version.parse().map_err(|e| ResolveError::BadVersion(excerpt(version, 80), format!("{e}")))?;
    let all = available(index, package);
    if all.is_empty() {
        return Err(ResolveError::NoPackage { package: package.into(), packages_url: index.packages_url.clone() });
    }
    if let Some(exact) = all.iter().find(|e| e.version == wanted) {
        return Ok(exact);
    }
    if !version.contains(':') {
        let loose: Vec<&&PackageEntry> = all
            .iter()
            .filter(|e| e.version.upstream() == wanted.upstream() && e.version.revision() == wanted.revision())
            .collect();
        if let [only] = loose.as_slice() {
            return Ok(only);
        }
    }
    Err(ResolveError::NoVersion {
        package: package.into(),
        version: excerpt(version, 80),
        packages_url: index.packages_url.clone(),
        available: first_of(all.iter().map(|e| &e.version), LISTED),
    })
}

/// Package names that carry the agent, in order of preference.
pub const HEROKU_AGENT: &str = "datadog-heroku-agent";
/// See [`HEROKU_AGENT`].
pub const AGENT: &str = "datadog-agent";

/// Neither agent package has the wanted version.
#[derive(Debug, thiserror::Error)]
#[error(
    "Datadog Agent {wanted} is not in {packages_url}.\n\
     Available Heroku versions (datadog-heroku-agent), newest first: {heroku}\n\
     Available regular versions (datadog-agent), newest first: {regular}\n\
     Pick one with: heroku config:set DD_AGENT_VERSION=<version>"
)]
pub struct AgentNotFound {
    pub wanted: String,
    pub packages_url: String,
    pub heroku: String,
    pub regular: String,
}

/// Finds the agent at `wanted`: `datadog-heroku-agent` first, else `datadog-agent`, whose
/// versions carry the epoch `1:` (matched with or without it).
pub fn resolve_agent<'a>(index: &'a RepoIndex, wanted: &str) -> Result<&'a PackageEntry, AgentNotFound> {
    for package in [HEROKU_AGENT, AGENT] {
        if let Ok(entry) = find(index, package, wanted) {
            return Ok(entry);
        }
        if !wanted.contains(':')
            && let Ok(entry) = find(index, package, &format!("1:{wanted}")) {
                return Ok(entry);
            }
    }
    let list = |package: &str| {
        let versions = available(index, package);
        if versions.is_empty() { "(none)".to_string() } else { first_of(versions.iter().map(|e| &e.version), LISTED) }
    };
    Err(AgentNotFound {
        wanted: wanted.into(),
        packages_url: index.packages_url.clone(),
        heroku: list(HEROKU_AGENT),
        regular: list(AGENT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::client::AptSource;
    use crate::apt::release::Release;

    fn index(versions: usize) -> RepoIndex {
        let text: String = (0..versions)
            .map(|i| {
                format!(
                    "Package: datadog-agent\nVersion: 1:7.{i}.0-1\nArchitecture: amd64\nFilename: pool/a_{i}.deb\nSize: 1\nSHA256: {}\n\n",
                    "ab".repeat(32)
                )
            })
            .collect();
        RepoIndex {
            source: AptSource::new("http://x", "stable", "7", "amd64"),
            signer: String::new(),
            release: Release {
                suite: None,
                codename: None,
                date: None,
                valid_until: None,
                architectures: Vec::new(),
                components: Vec::new(),
                sha256: Vec::new(),
            },
            packages_url: "http://x/Packages".into(),
            packages: crate::apt::packages::parse_packages(&text, "u").unwrap(),
            stanzas: versions as u64,
        }
    }

    #[test]
    fn not_found_lists_the_newest_and_counts_the_rest() {
        let index = index(500);
        let e = resolve_agent(&index, "7.999.0-1").unwrap_err().to_string();
        assert!(e.contains("newest first: 1:7.499.0-1, 1:7.498.0-1,"), "{e}");
        assert!(e.contains("1:7.480.0-1, … and 480 more"), "{e}");
        assert!(e.contains("(datadog-heroku-agent), newest first: (none)"), "{e}");
        assert!(e.len() < 1000, "{} bytes", e.len());
        let e = find(&index, "datadog-agent", "9").unwrap_err().to_string();
        assert!(e.contains("and 480 more"), "{e}");
        assert!(resolve_agent(&index, "7.5.0-1").is_ok());
    }
}
