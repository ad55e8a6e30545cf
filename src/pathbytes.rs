//! Paths and symlink targets as the filesystem holds them: bytes, UTF-8 or not.
//!
//! dpkg keeps a package's names byte for byte, and so does ddslug: the unpacker, the layer
//! index, the entry list (`tree.json`), the tree hash, `verify` and `diff` all carry
//! [`PathBytes`]. Two names that differ in any byte stay two names (`a\xe9` and `a\xff`
//! would both become `a\u{fffd}` through a lossy conversion to text, and collide).
//!
//! Text forms: [`fmt::Display`] is for people: bytes that are not printable UTF-8 appear as
//! `\xNN` and a backslash as `\\`, so that a name prints on one line and two names never
//! print alike. JSON carries UTF-8 names as strings and others in a hex field (see
//! [`crate::store::treehash`]).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// A relative path (`/`-separated) or a symlink target, as bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathBytes(Vec<u8>);

impl PathBytes {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The path as text, when it is UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// `self/name` (`name` alone below the root, `""`).
    pub fn join(&self, name: &[u8]) -> PathBytes {
        PathBytes(join(&self.0, name))
    }

    /// The lowercase hex of the bytes (the JSON form of a name that is not UTF-8).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads [`PathBytes::hex`]'s form back; `None` for anything else (odd length, a
    /// character that is not a lowercase hex digit).
    pub fn from_hex(hex: &str) -> Option<PathBytes> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let hex = hex.as_bytes();
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        hex.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect::<Option<Vec<u8>>>().map(PathBytes)
    }
}

/// `dir/name` as bytes (`name` alone when `dir` is empty).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    out.extend_from_slice(dir);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// `(parent, last component)` of a `/`-separated relative path (`("", path)` at the top).
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}

impl std::ops::Deref for PathBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for PathBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<std::path::Path> for PathBytes {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(self.as_os_str())
    }
}

/// In JSON reports: the string when the bytes are UTF-8, else `{"hex": "<lowercase hex>"}`
/// (the entry list has its own, flatter form: see [`crate::store::treehash`]).
impl serde::Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &self.hex())?;
                map.end()
            }
        }
    }
}

impl From<Vec<u8>> for PathBytes {
    fn from(bytes: Vec<u8>) -> Self {
        PathBytes(bytes)
    }
}

impl From<&[u8]> for PathBytes {
    fn from(bytes: &[u8]) -> Self {
        PathBytes(bytes.to_vec())
    }
}

impl From<String> for PathBytes {
    fn from(text: String) -> Self {
        PathBytes(text.into_bytes())
    }
}

impl From<&str> for PathBytes {
    fn from(text: &str) -> Self {
        PathBytes(text.as_bytes().to_vec())
    }
}

impl PartialEq<str> for PathBytes {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for PathBytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Display for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

impl fmt::Debug for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", escape(&self.0))
    }
}

/// `bytes` for people: printable UTF-8 as it is, a backslash as `\\`, every other byte
/// (invalid UTF-8, control characters) as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape`], cut to about `max` bytes of input: what an error message shows of a name or
/// text a package controls, however long it is.
pub fn escape_bounded(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return escape(bytes);
    }
    // Cut on a character boundary where there is one nearby, so no character is split.
    let mut cut = max;
    while cut > max.saturating_sub(4) && cut > 0 && (bytes[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", escape(&bytes[..cut]), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_stay_distinct_in_every_form() {
        let (a, b) = (PathBytes::from(b"a\xe9".as_slice()), PathBytes::from(b"a\xff".as_slice()));
        assert_ne!(a, b);
        assert_eq!((a.to_string(), b.to_string()), ("a\\xe9".to_string(), "a\\xff".to_string()));
        assert_eq!((a.hex(), b.hex()), ("61e9".to_string(), "61ff".to_string()));
        assert_eq!(PathBytes::from_hex(&a.hex()), Some(a.clone()));
        assert_eq!(a.to_str(), None);
        assert_eq!(PathBytes::from("café").to_str(), Some("café"));
    }

    #[test]
    fn display_escapes_only_what_is_not_printable() {
        assert_eq!(escape("opt/café-日本.txt".as_bytes()), "opt/café-日本.txt");
        assert_eq!(escape(b"a\nb\x1b[31m\x7f"), "a\\x0ab\\x1b[31m\\x7f");
        // A literal backslash-x in a name prints differently from an escaped byte.
        assert_eq!(escape(b"\\xe9"), "\\\\xe9");
        assert_ne!(escape(b"\\xe9"), escape(b"\xe9"));
        // C1 controls are escaped byte by byte too.
        assert_eq!(escape("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn bounded_escapes_say_how_long_the_whole_was() {
        let long = vec![b'x'; 10_000];
        let shown = escape_bounded(&long, 100);
        assert!(shown.len() < 140 && shown.ends_with("(10000 bytes in all)"), "{shown}");
        assert_eq!(escape_bounded(b"short", 100), "short");
        // Not cut inside a character.
        let text = "é".repeat(100);
        assert!(escape_bounded(text.as_bytes(), 51).starts_with(&"é".repeat(25)));
        assert!(!escape_bounded(text.as_bytes(), 51).contains("\\x"));
    }

    #[test]
    fn hex_is_strict() {
        assert_eq!(PathBytes::from_hex(""), Some(PathBytes::default()));
        for bad in ["6", "6G", "61E9", "61 e9", "+1"] {
            assert_eq!(PathBytes::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_and_split() {
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a/b", b"c\xff"), b"a/b/c\xff");
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"top"), (&b""[..], &b"top"[..]));
    }
}
