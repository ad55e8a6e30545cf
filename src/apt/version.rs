//! Debian version numbers and their order, as dpkg defines it (Debian policy 5.6.12):
//! `[epoch:]upstream[-revision]`; compared epoch first (numerically), then upstream, then
//! revision, each with dpkg's `verrevcmp`: `~` sorts before everything, even the end of the
//! string; letters sort before other characters; digit runs compare as numbers.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A parsed Debian version. Displays as the exact text it was parsed from.
#[derive(Clone, Debug)]
pub struct DebVersion {
    text: String,
    epoch: u64,
    upstream_start: usize,
    revision_start: Option<usize>,
}

/// The text is not a Debian version.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a Debian version: {reason}")]
pub struct VersionError {
    pub text: String,
    pub reason: &'static str,
}

impl DebVersion {
    /// The epoch (0 when absent).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The upstream part.
    pub fn upstream(&self) -> &str {
        let end = self.revision_start.map(|r| r - 1).unwrap_or(self.text.len());
        &self.text[self.upstream_start..end]
    }

    /// The Debian revision ("" when absent).
    pub fn revision(&self) -> &str {
        self.revision_start.map(|r| &self.text[r..]).unwrap_or("")
    }

    /// Leading dot-separated numbers of the upstream part: `7.52.0~rc.1` → `[7, 52, 0]`.
    pub fn upstream_numeric_parts(&self) -> Vec<u64> {
        let mut parts = Vec::new();
        for piece in self.upstream().split('.') {
            let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
            match digits.parse() {
                Ok(n) => parts.push(n),
                Err(_) => break,
            }
            if digits.len() != piece.len() {
                break;
            }
        }
        parts
    }
}

impl FromStr for DebVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A version from an index can be as long as its stanza: the message keeps a part.
        let err = |reason| VersionError { text: crate::report::excerpt(s, 80), reason };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(err("it contains whitespace"));
        }
        let (epoch, upstream_start) = match text.find(':') {
            Some(i) => {
                let epoch = text[..i].parse::<u64>().map_err(|_| err("the epoch is not a number"))?;
                (epoch, i + 1)
            }
            None => (0, 0),
        };
        let rest = &text[upstream_start..];
        let revision_start = rest.rfind('-').map(|i| upstream_start + i + 1);
        let upstream_end = revision_start.map(|r| r - 1).unwrap_or(text.len());
        let upstream = &text[upstream_start..upstream_end];
        if upstream.is_empty() {
            return Err(err("the upstream version is empty"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || ".+~-:".contains(c);
        if !text[upstream_start..].chars().all(allowed) {
            return Err(err("it contains characters a version cannot have"));
        }
        if revision_start.is_some_and(|r| r == text.len()) {
            return Err(err("the revision after `-` is empty"));
        }
        Ok(DebVersion { text: text.to_string(), epoch, upstream_start, revision_start })
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for DebVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DebVersion {}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream(), other.upstream()))
            .then_with(|| verrevcmp(self.revision(), other.revision()))
    }
}

impl serde::Serialize for DebVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for DebVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// dpkg's character weight: `~` lowest, then the end of a part, then letters, then the rest.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`.
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Digit runs, numerically (leading zeros ignored, any length).
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DebVersion {
        s.parse().unwrap()
    }

    #[test]
    fn parts() {
        let x = v("1:7.52.0~rc.1-1");
        assert_eq!((x.epoch(), x.upstream(), x.revision()), (1, "7.52.0~rc.1", "1"));
        assert_eq!(x.upstream_numeric_parts(), vec![7, 52, 0]);
        let y = v("2.10-1.1-3");
        assert_eq!((y.upstream(), y.revision()), ("2.10-1.1", "3"));
        assert_eq!(v("1.0").revision(), "");
        assert_eq!(x.to_string(), "1:7.52.0~rc.1-1");
    }

    #[test]
    fn classic_orderings() {
        let ordered = [
            "~~", "~~a", "~", "0", "1.0~rc1", "1.0", "1.0-0.1", "1.0-1", "1.0-1.1", "1.0a", "1.0+", "1.1", "1.10",
            "2.0", "1:0.1",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0"), v("1.0-0"));
        assert_eq!(v("0:1.0"), v("1.0"));
        assert_eq!(v("1.001"), v("1.1"));
    }

    #[test]
    fn rejects_non_versions() {
        for bad in ["", "a:1.0", "1:", "1.0-", "1.0 beta", "1.0_amd64"] {
            assert!(bad.parse::<DebVersion>().is_err(), "{bad:?}");
        }
    }
}
