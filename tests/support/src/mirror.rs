//! Finds the Debian mirror this machine is configured with, so that tests reach Debian's
//! archive without naming a host: `DDSLUG_DEBIAN_MIRROR` wins, else the apt sources.

use std::path::Path;

/// A Debian mirror base URL that serves `suite`, from the environment or apt's sources.
pub fn debian_mirror(suite: &str) -> Option<String> {
    if let Ok(url) = std::env::var("DDSLUG_DEBIAN_MIRROR")
        && !url.is_empty() {
            return Some(url.trim_end_matches('/').to_string());
        }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.push("/etc/apt/sources.list".into());
    files.iter().find_map(|f| from_file(f, suite))
}

fn from_file(path: &Path, suite: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    if path.extension().is_some_and(|e| e == "sources") {
        // deb822 form: stanzas with URIs and Suites fields.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            if suites.split_whitespace().any(|s| s == suite) && !uris.contains("security") {
                return uris.split_whitespace().next().map(|u| u.trim_end_matches('/').to_string());
            }
        }
        return None;
    }
    // One-line form: deb [options] URL suite components...
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[') && !w.ends_with(']')).collect();
        if words.first() == Some(&"deb") && words.get(2) == Some(&suite) {
            return words.get(1).map(|u| u.trim_end_matches('/').to_string());
        }
    }
    None
}
