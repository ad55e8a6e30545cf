//! deb822 control data (Packages, Release, control files): stanzas of `Field: value`
//! lines, continuation lines starting with a space or tab, stanzas separated by blank lines.
//! Parsed borrowed: values are slices of the input, so a 50 MB Packages file costs no copies.
//! [`StanzaReader`] cuts a stream into stanzas one at a time, each bounded in bytes, so that
//! an index of any length is read in the memory of its largest stanza.

use std::io::{self, BufRead, Read};

use crate::report::{excerpt, limit as human};

/// One stanza: fields in file order.
#[derive(Clone, Debug, Default)]
pub struct Stanza<'a> {
    pub fields: Vec<(&'a str, &'a str)>,
    /// 1-based line where the stanza starts, for messages.
    pub line: usize,
}

impl<'a> Stanza<'a> {
    /// The value of a field (case-insensitive name), without the space after the colon.
    /// Multi-line values keep their newlines and continuation indentation.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// The continuation lines of a multi-line field, trimmed (the first line excluded).
    pub fn lines(&self, name: &str) -> Vec<&'a str> {
        self.get(name)
            .map(|v| v.lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// The text is not deb822.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Deb822Error {
    pub line: usize,
    pub reason: String,
}

/// Parses all stanzas. `#` comment lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Stanza<'_>>, Deb822Error> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    // (field name, start offset of value, end offset of value)
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.trim_end_matches(['\n', '\r']);
        let start = offset;
        offset += raw.len();
        if line.trim().is_empty() {
            if let Some((k, s, e)) = open.take() {
                current.fields.push((k, text[s..e].trim_end()));
            }
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match open.as_mut() {
                Some((_, _, end)) => *end = start + line.len(),
                None => {
                    return Err(Deb822Error { line: line_no, reason: "continuation line without a field".into() });
                }
            }
            continue;
        }
        let Some(colon) = line.find(':') else {
            return Err(Deb822Error { line: line_no, reason: format!("expected `Field: value`, got {:?}", excerpt(line, 80)) });
        };
        if let Some((k, s, e)) = open.take() {
            current.fields.push((k, text[s..e].trim_end()));
        }
        if current.fields.is_empty() && open.is_none() {
            current.line = line_no;
        }
        let name = &line[..colon];
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Deb822Error { line: line_no, reason: format!("bad field name {:?}", excerpt(name, 80)) });
        }
        let value_start = start + colon + 1;
        let leading = text[value_start..start + line.len()].len() - text[value_start..start + line.len()].trim_start().len();
        open = Some((name, value_start + leading, start + line.len()));
    }
    if let Some((k, s, e)) = open.take() {
        current.fields.push((k, text[s..e].trim_end()));
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    Ok(stanzas)
}

/// Why [`StanzaReader`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum StanzaReadError {
    #[error("{0}")]
    Io(io::Error),
    #[error("the stanza at line {line} is longer than {}, the limit for one stanza", human(*.limit as u64))]
    TooLarge { line: usize, limit: usize },
}

/// Reads stanzas from a stream, one at a time: the text of each (its lines, without the
/// blank lines around it) and the line it starts on.
pub struct StanzaReader<R> {
    reader: R,
    max_stanza: usize,
    /// Lines read so far.
    line: usize,
    text: Vec<u8>,
}

impl<R: BufRead> StanzaReader<R> {
    /// A reader that refuses a stanza longer than `max_stanza` bytes.
    pub fn new(reader: R, max_stanza: usize) -> Self {
        StanzaReader { reader, max_stanza, line: 0, text: Vec::new() }
    }

    /// The next stanza (its text as UTF-8, invalid bytes replaced) and its first line, or
    /// `None` at the end of the stream.
    pub fn next_stanza(&mut self) -> Result<Option<(String, usize)>, StanzaReadError> {
        self.text.clear();
        let mut start = 0;
        loop {
            let before = self.text.len();
            // One byte more than the stanza may still take: reaching it means "too long",
            // whether or not the line would have ended.
            let room = (self.max_stanza - before) as u64 + 1;
            let n = (&mut self.reader).take(room).read_until(b'\n', &mut self.text).map_err(StanzaReadError::Io)?;
            if n == 0 {
                break;
            }
            self.line += 1;
            if self.text.len() > self.max_stanza {
                return Err(StanzaReadError::TooLarge { line: if start == 0 { self.line } else { start }, limit: self.max_stanza });
            }
            if self.text[before..].iter().all(u8::is_ascii_whitespace) {
                self.text.truncate(before);
                if before > 0 {
                    break;
                }
                continue;
            }
            if start == 0 {
                start = self.line;
            }
        }
        if self.text.is_empty() {
            return Ok(None);
        }
        Ok(Some((String::from_utf8_lossy(&self.text).into_owned(), start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_one_at_a_time_with_their_first_line() {
        let text = "\n\nPackage: a\nVersion: 1\n\n \t\nPackage: b\nDescription: x\n more\n";
        let mut r = StanzaReader::new(text.as_bytes(), 1 << 10);
        assert_eq!(r.next_stanza().unwrap(), Some(("Package: a\nVersion: 1\n".to_string(), 3)));
        assert_eq!(r.next_stanza().unwrap(), Some(("Package: b\nDescription: x\n more\n".to_string(), 7)));
        assert_eq!(r.next_stanza().unwrap(), None);
    }

    #[test]
    fn a_stanza_past_the_limit_is_refused_without_reading_it_whole() {
        let long = format!("Package: a\nDescription: {}\n", "x".repeat(100));
        let e = StanzaReader::new(long.as_bytes(), 64).next_stanza().unwrap_err();
        assert!(matches!(e, StanzaReadError::TooLarge { line: 1, limit: 64 }), "{e:?}");
        // A line with no end at all stops at the limit too.
        let endless = std::io::repeat(b'x');
        let e = StanzaReader::new(std::io::BufReader::new(endless), 64).next_stanza().unwrap_err();
        assert!(e.to_string().contains("longer than 64 bytes"), "{e}");
    }

    #[test]
    fn stanzas_and_multiline_fields() {
        let text = "Package: hello\nVersion: 2.10-3\nDescription: greets\n the world\n .\n again\n\n\nPackage: tzdata\r\nSHA256:\n aa 1 x\n bb 2 y\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("package"), Some("hello"));
        assert_eq!(s[0].get("Description"), Some("greets\n the world\n .\n again"));
        assert_eq!(s[1].get("Package"), Some("tzdata"));
        assert_eq!(s[1].lines("SHA256"), vec!["aa 1 x", "bb 2 y"]);
        assert_eq!(s[1].line, 9);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e = parse("Package: a\n continued\nno colon here\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(parse(" orphan continuation\n").is_err());
    }
}
