//! The `when` language of recipe rules: `version` (numeric, component by component),
//! `major`, `python`, `apm`, `process_agent`, compared with `== != < <= > >=` and combined
//! with `and`, `or`, `not` and parentheses.
//!
//! Contract: evaluation is a pure function of the expression and the [`Options`]; anything
//! it does not understand is an error naming the token, never a default.

use super::Options;

/// Evaluates a `when` condition.
pub fn eval(expr: &str, o: &Options) -> Result<bool, String> {
    let tokens = tokenize(expr)?;
    let mut parser = Parser { tokens: &tokens, pos: 0, o };
    let value = parser.or()?;
    if parser.pos != tokens.len() {
        return Err(format!("unexpected {:?}", tokens[parser.pos]));
    }
    Ok(value)
}

fn tokenize(expr: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' {
            tokens.push(c.to_string());
            i += 1;
        } else if "<>=!".contains(c) {
            let two = chars.get(i + 1) == Some(&'=');
            tokens.push(chars[i..i + if two { 2 } else { 1 }].iter().collect());
            i += if two { 2 } else { 1 };
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [String],
    pos: usize,
    o: &'a Options,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }
    fn next(&mut self) -> Result<&str, String> {
        let t = self.tokens.get(self.pos).ok_or("unexpected end of condition")?;
        self.pos += 1;
        Ok(t)
    }
    fn or(&mut self) -> Result<bool, String> {
        let mut v = self.and()?;
        while self.peek() == Some("or") {
            self.pos += 1;
            v |= self.and()?;
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<bool, String> {
        let mut v = self.unary()?;
        while self.peek() == Some("and") {
            self.pos += 1;
            v &= self.unary()?;
        }
        Ok(v)
    }
    fn unary(&mut self) -> Result<bool, String> {
        match self.peek() {
            Some("not") => {
                self.pos += 1;
                Ok(!self.unary()?)
            }
            Some("(") => {
                self.pos += 1;
                let v = self.or()?;
                if self.next()? != ")" {
                    return Err("expected `)`".into());
                }
                Ok(v)
            }
            _ => self.atom(),
        }
    }
    fn atom(&mut self) -> Result<bool, String> {
        let name = self.next()?.to_string();
        let flag = match name.as_str() {
            "always" => return Ok(true),
            "never" => return Ok(false),
            "apm" => Some(self.o.apm),
            "process_agent" => Some(self.o.process_agent),
            _ => None,
        };
        let op = match self.peek() {
            Some(op) if ["<", "<=", ">", ">=", "==", "!="].contains(&op) => op.to_string(),
            _ => {
                return flag.ok_or_else(|| format!("{name:?} is not a flag (flags: apm, process_agent, always, never)"));
            }
        };
        self.pos += 1;
        let value = self.next()?.to_string();
        let ord = match (name.as_str(), flag) {
            (_, Some(f)) => {
                let want = parse_bool(&value)?;
                return match op.as_str() {
                    "==" => Ok(f == want),
                    "!=" => Ok(f != want),
                    _ => Err(format!("{name} can only be compared with == or !=")),
                };
            }
            ("version", _) => cmp_version(&self.o.version, &parse_version(&value)?),
            ("major", _) => self.o.major.cmp(&parse_num(&value)?),
            ("python", _) => self.o.python.cmp(&parse_num(&value)?),
            _ => return Err(format!("unknown name {name:?} (expected version, major, python, apm, process_agent)")),
        };
        use std::cmp::Ordering::*;
        Ok(match op.as_str() {
            "<" => ord == Less,
            "<=" => ord != Greater,
            ">" => ord == Greater,
            ">=" => ord != Less,
            "==" => ord == Equal,
            _ => ord != Equal,
        })
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

fn parse_num(v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| format!("{v:?} is not a number"))
}

fn parse_version(v: &str) -> Result<Vec<u64>, String> {
    v.split('.').map(parse_num).collect()
}

/// Compares numeric version components, missing ones counting as 0.
pub fn cmp_version(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n).map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0))).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::unpack::recipe::tests::opts;

    #[test]
    fn conditions() {
        let o = opts(&[7, 52, 1], 3);
        assert!(eval("version >= 7.52", &o).unwrap());
        assert!(!eval("version < 7.52", &o).unwrap());
        assert!(eval("major == 7 and not apm", &o).unwrap());
        assert!(eval("(major == 6 or version < 7.68) and process_agent", &o).unwrap());
        assert!(eval("apm == false and python != 2", &o).unwrap());
        assert!(eval("versionx < 1", &o).is_err());
        assert!(eval("major <", &o).is_err());
        assert!(eval("apm < true", &o).is_err());
    }
}
