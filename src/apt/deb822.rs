//! deb822 control data (Packages, Release, control files): stanzas of `Field: value`
//! lines, continuation lines starting with a space or tab, stanzas separated by blank lines.
//! Parsed borrowed: values are slices of the input, so a 50 MB Packages file costs no copies.

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
            return Err(Deb822Error { line: line_no, reason: format!("expected `Field: value`, got {line:?}") });
        };
        if let Some((k, s, e)) = open.take() {
            current.fields.push((k, text[s..e].trim_end()));
        }
        if current.fields.is_empty() && open.is_none() {
            current.line = line_no;
        }
        let name = &line[..colon];
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Deb822Error { line: line_no, reason: format!("bad field name {name:?}") });
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

#[cfg(test)]
mod tests {
    use super::*;

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
