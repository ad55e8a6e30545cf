//! The strip recipe: which paths of the unpacked agent a given configuration removes, and why.
//!
//! A recipe is data (`recipes/datadog-agent.toml`), not code:
//!
//! ```toml
//! format = 1
//! [[rule]]
//! name = "docs"                      # printed in the build log
//! why = "documentation is not needed on a dyno"
//! when = "always"                    # or e.g. "major == 6 or version < 7.68"
//! remove = ["opt/datadog-agent/embedded/share/doc"]   # globs relative to the .apt root
//! keep = []                          # exceptions to `remove`
//! ```
//!
//! Globs: `*` and `?` match within one path component, `**` matches any number of
//! components. Paths are matched as bytes, exactly as the package names them (`?` is one
//! byte; a name that is not UTF-8 is matched like any other). A matched directory is removed with everything below it. Conditions read
//! `version` (compared numerically, component by component: `7.52` means `7.52.0`), `major`,
//! `python`, `apm` and `process_agent`, combined with `and`, `or`, `not` and parentheses.
//!
//! Contract: applying a recipe only ever deletes and renames paths under the given root,
//! through directory descriptors that never follow a symlink (one on the way is an error
//! naming it); the result depends only on the tree, the recipe text and the [`Options`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The options a recipe may read. Everything here is part of the layer key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Numeric components of the agent's upstream version, e.g. `[7, 81, 2]`.
    pub version: Vec<u64>,
    pub major: u64,
    pub python: u64,
    pub apm: bool,
    pub process_agent: bool,
}

/// Why a recipe could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("recipe {path}, rule {rule:?}: condition {when:?}: {reason}")]
    Condition { path: String, rule: String, when: String, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "recipe rule {rule:?}: {path} lies beyond the symlink {link} (to {target}); ddslug never removes or \
         renames through a symlink, so the package is refused. Use a package without that symlink"
    )]
    Symlink { rule: String, path: String, link: String, target: String },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    format: u32,
    #[serde(rename = "rule", default)]
    rules: Vec<Rule>,
}

/// One named rule of the recipe.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub why: String,
    #[serde(default = "always")]
    pub when: String,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub keep: Vec<String>,
    /// `[from, to]` pairs: `from` replaces `to` when it exists (like `mv -f`).
    #[serde(default)]
    pub rename: Vec<[String; 2]>,
}

fn always() -> String {
    "always".into()
}

/// A parsed, validated recipe and the exact text it came from.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub text: String,
    pub rules: Vec<Rule>,
    source: String,
}

/// What one rule removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleOutcome {
    pub rule: String,
    pub why: String,
    /// Top-most removed paths, relative to the root.
    pub paths: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

impl Recipe {
    /// Parses recipe text; `source` names it in errors. Conditions are checked here so that
    /// a typo fails every build, not only the builds whose options reach it.
    pub fn parse(text: &str, source: &str) -> Result<Recipe, RecipeError> {
        let file: RecipeFile =
            toml::from_str(text).map_err(|e| RecipeError::Invalid { path: source.into(), reason: e.to_string() })?;
        if file.format != 1 {
            return Err(RecipeError::Invalid {
                path: source.into(),
                reason: format!("format {} is not supported (expected 1)", file.format),
            });
        }
        let probe = Options { version: vec![7, 0, 0], major: 7, python: 3, apm: true, process_agent: false };
        for rule in &file.rules {
            eval(&rule.when, &probe).map_err(|reason| RecipeError::Condition {
                path: source.into(),
                rule: rule.name.clone(),
                when: rule.when.clone(),
                reason,
            })?;
            let renames = rule.rename.iter().flatten();
            for glob in rule.remove.iter().chain(&rule.keep).chain(renames) {
                if glob.starts_with('/') || glob.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(RecipeError::Invalid {
                        path: source.into(),
                        reason: format!("rule {:?}: {glob:?} must be a relative path without `..`", rule.name),
                    });
                }
            }
        }
        Ok(Recipe { text: text.into(), rules: file.rules, source: source.into() })
    }

    /// The rules that apply to these options, in recipe order.
    pub fn active_rules(&self, options: &Options) -> Result<Vec<&Rule>, RecipeError> {
        let mut active = Vec::new();
        for rule in &self.rules {
            let on = eval(&rule.when, options).map_err(|reason| RecipeError::Condition {
                path: self.source.clone(),
                rule: rule.name.clone(),
                when: rule.when.clone(),
                reason,
            })?;
            if on {
                active.push(rule);
            }
        }
        Ok(active)
    }

    /// Deletes what the active rules remove from the tree at `root`. A path matched by
    /// several rules is credited to the first.
    pub fn apply(&self, root: &Path, options: &Options) -> Result<Vec<RuleOutcome>, RecipeError> {
        let rules = self.active_rules(options)?;
        let mut outcomes: Vec<RuleOutcome> = rules
            .iter()
            .map(|r| RuleOutcome { rule: r.name.clone(), why: r.why.clone(), ..Default::default() })
            .collect();
        let mut doomed: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        walk(root, b"", &mut |rel, is_dir| match decide(&rules, rel, is_dir) {
            Decision::Removed(i) => {
                doomed.insert(rel.to_vec(), i);
                Walk::Skip
            }
            // Only descend where some pattern could still match below: most of the tree
            // (site-packages, binaries) is never visited.
            Decision::Open if is_dir => Walk::Descend,
            _ => Walk::Skip,
        })?;
        // Removals and renames go through directory descriptors opened without following any
        // symlink: a package's symlink is an error here, never a way out of the tree.
        let tree = crate::fsat::Dir::open_given(root).map_err(|source| RecipeError::Io { path: root.to_owned(), error: source })?;
        for (rel, i) in doomed {
            let path = crate::fsat::join(root, &rel);
            let (files, bytes) = measure(&path)?;
            let (dir, name) = parent_of(&tree, root, &rel, &rules[i].name)?.ok_or_else(|| missing(&path))?;
            dir.remove_all(name).map_err(|source| RecipeError::Io { path: path.clone(), error: source })?;
            let outcome = &mut outcomes[i];
            outcome.paths.push(crate::pathbytes::escape(&rel));
            outcome.files += files;
            outcome.bytes += bytes;
        }
        // Renames run after removals, in rule order; a missing source is not an error.
        for (i, rule) in rules.iter().enumerate() {
            for [from, to] in &rule.rename {
                let Some((src_dir, src)) = parent_of(&tree, root, from.as_bytes(), &rule.name)? else { continue };
                if src_dir.kind(src).is_err() {
                    continue;
                }
                let dst_path = root.join(to);
                let (dst_dir, dst) = parent_of(&tree, root, to.as_bytes(), &rule.name)?.ok_or_else(|| missing(&dst_path))?;
                if let Ok(st) = dst_dir.lstat(dst) {
                    outcomes[i].files += 1;
                    outcomes[i].bytes += if st.is_file() { st.size } else { 0 };
                    dst_dir.remove_all(dst).map_err(|source| RecipeError::Io { path: dst_path.clone(), error: source })?;
                }
                src_dir.rename(src, &dst_dir, dst).map_err(|source| RecipeError::Io { path: dst_path.clone(), error: source })?;
                outcomes[i].paths.push(format!("{from} -> {to}"));
            }
        }
        Ok(outcomes)
    }
}

/// What the rules decided for a path.
#[derive(Clone, Copy)]
enum Decision {
    Removed(usize),
    /// Some pattern could match below: look at each child.
    Open,
    /// No pattern can match below: keep everything without looking.
    Closed,
}

/// The recipe applied while unpacking ([`crate::unpack::deb::EntryFilter`]): entries it removes are
/// never written. Its outcomes merge with [`Recipe::apply`]'s, which runs afterwards for
/// renames and for anything several packages put together.
pub struct StripFilter<'r> {
    rules: Vec<&'r Rule>,
    decisions: std::collections::HashMap<Vec<u8>, Decision>,
    pub outcomes: Vec<RuleOutcome>,
}

impl<'r> StripFilter<'r> {
    /// A filter for the rules active under `options`.
    pub fn new(recipe: &'r Recipe, options: &Options) -> Result<StripFilter<'r>, RecipeError> {
        let rules = recipe.active_rules(options)?;
        let outcomes =
            rules.iter().map(|r| RuleOutcome { rule: r.name.clone(), why: r.why.clone(), ..Default::default() }).collect();
        Ok(StripFilter { rules, decisions: std::collections::HashMap::new(), outcomes })
    }
}

/// What the rules say about one path: removed by the first rule that matches it (and does
/// not keep it), else whether any pattern could still match below it.
fn decide(rules: &[&Rule], rel: &[u8], is_dir: bool) -> Decision {
    for (i, rule) in rules.iter().enumerate() {
        let kept = rule.keep.iter().any(|k| glob_match(k, rel) || (is_dir && glob_is_below(k, rel)));
        if !kept && rule.remove.iter().any(|g| glob_match(g, rel)) {
            return Decision::Removed(i);
        }
    }
    if rules.iter().any(|r| r.remove.iter().any(|g| glob_is_below(g, rel))) { Decision::Open } else { Decision::Closed }
}

impl crate::unpack::deb::EntryFilter for StripFilter<'_> {
    fn skip(&mut self, rel: &[u8], is_dir: bool, size: u64) -> bool {
        let (parent, _) = crate::pathbytes::split_last(rel);
        let decision = match self.decisions.get(parent) {
            Some(Decision::Removed(i)) => Decision::Removed(*i),
            Some(Decision::Closed) => Decision::Closed,
            _ => {
                let d = decide(&self.rules, rel, is_dir);
                if let Decision::Removed(i) = d {
                    self.outcomes[i].paths.push(crate::pathbytes::escape(rel));
                }
                d
            }
        };
        if is_dir {
            self.decisions.insert(rel.to_vec(), decision);
        }
        match decision {
            Decision::Removed(i) => {
                if !is_dir {
                    self.outcomes[i].files += 1;
                    self.outcomes[i].bytes += size;
                }
                true
            }
            _ => false,
        }
    }
}

/// Adds `more` into `into` (same rules, same order), paths sorted.
pub fn merge_outcomes(into: &mut [RuleOutcome], more: &[RuleOutcome]) {
    for (a, b) in into.iter_mut().zip(more) {
        a.paths.extend(b.paths.iter().cloned());
        a.files += b.files;
        a.bytes += b.bytes;
        a.paths.sort();
        a.paths.dedup();
    }
}

enum Walk {
    Descend,
    Skip,
}

/// Visits every entry below `dir` in sorted order; directories before their children.
fn walk(dir: &Path, rel: &[u8], visit: &mut dyn FnMut(&[u8], bool) -> Walk) -> Result<(), RecipeError> {
    let io = |source| RecipeError::Io { path: dir.to_owned(), error: source };
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        use std::os::unix::ffi::OsStrExt;
        let child = crate::pathbytes::join(rel, entry.file_name().as_bytes());
        let is_dir = entry.file_type().map_err(io)?.is_dir();
        if let Walk::Descend = visit(&child, is_dir)
            && is_dir {
                walk(&entry.path(), &child, visit)?;
            }
    }
    Ok(())
}

/// The directory holding `rel` (opened without following any symlink) and `rel`'s last
/// name; `None` when that directory does not exist. A symlink on the way is an error.
fn parent_of<'a>(tree: &crate::fsat::Dir, root: &Path, rel: &'a [u8], rule: &str) -> Result<Option<(crate::fsat::Dir, &'a std::ffi::OsStr)>, RecipeError> {
    use std::os::unix::ffi::OsStrExt;
    let rel_path = Path::new(std::ffi::OsStr::from_bytes(rel));
    let (parent, name) = (rel_path.parent().unwrap_or(Path::new("")), rel_path.file_name().unwrap_or_default());
    match tree.dir_beneath(parent) {
        Ok(dir) => Ok(Some((dir, name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(match tree.symlink_on(parent) {
            Some((link, target)) => RecipeError::Symlink {
                rule: rule.into(),
                path: crate::pathbytes::escape(rel),
                link: crate::pathbytes::escape(link.as_os_str().as_bytes()),
                target: crate::pathbytes::escape(target.as_os_str().as_bytes()),
            },
            None => RecipeError::Io { path: root.join(parent), error: source },
        }),
    }
}

fn missing(path: &Path) -> RecipeError {
    RecipeError::Io { path: path.to_owned(), error: std::io::Error::from(std::io::ErrorKind::NotFound) }
}

/// Files (and symlinks) and bytes under a path, the path itself included.
fn measure(path: &Path) -> Result<(u64, u64), RecipeError> {
    let meta = fs::symlink_metadata(path).map_err(|source| RecipeError::Io { path: path.to_owned(), error: source })?;
    if !meta.is_dir() {
        return Ok((1, if meta.is_file() { meta.len() } else { 0 }));
    }
    let mut total = (0, 0);
    for entry in fs::read_dir(path).map_err(|source| RecipeError::Io { path: path.to_owned(), error: source })? {
        let entry = entry.map_err(|source| RecipeError::Io { path: path.to_owned(), error: source })?;
        let (f, b) = measure(&entry.path())?;
        total.0 += f;
        total.1 += b;
    }
    Ok(total)
}

/// Whether `path` (relative, `/`-separated, as bytes) matches the glob.
pub fn glob_match(glob: &str, path: &[u8]) -> bool {
    let g: Vec<&[u8]> = glob.as_bytes().split(|&b| b == b'/').collect();
    let p: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    match_parts(&g, &p)
}

/// Whether some path below directory `dir` could match `glob` (so a kept path inside a
/// directory protects the directory from wholesale removal).
fn glob_is_below(glob: &str, dir: &[u8]) -> bool {
    let g: Vec<&[u8]> = glob.as_bytes().split(|&b| b == b'/').collect();
    let p: Vec<&[u8]> = dir.split(|&b| b == b'/').collect();
    prefix_match(&g, &p)
}

fn match_parts(g: &[&[u8]], p: &[&[u8]]) -> bool {
    match (g.first(), p.first()) {
        (None, None) => true,
        (Some(&b"**"), _) => match_parts(&g[1..], p) || (!p.is_empty() && match_parts(g, &p[1..])),
        (Some(gs), Some(ps)) => segment_match(gs, ps) && match_parts(&g[1..], &p[1..]),
        _ => false,
    }
}

/// Whether the path `p` is a proper prefix of something `g` matches.
fn prefix_match(g: &[&[u8]], p: &[&[u8]]) -> bool {
    match (g.first(), p.first()) {
        (_, None) => !g.is_empty(),
        (None, Some(_)) => false,
        (Some(&b"**"), _) => true,
        (Some(gs), Some(ps)) => segment_match(gs, ps) && prefix_match(&g[1..], &p[1..]),
    }
}

fn segment_match(g: &[u8], s: &[u8]) -> bool {
    match (g.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => segment_match(&g[1..], s) || (!s.is_empty() && segment_match(g, &s[1..])),
        (Some(b'?'), Some(_)) => segment_match(&g[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => segment_match(&g[1..], &s[1..]),
        _ => false,
    }
}

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

    fn opts(version: &[u64], python: u64) -> Options {
        Options { version: version.to_vec(), major: version[0], python, apm: false, process_agent: true }
    }

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

    #[test]
    fn globs() {
        assert!(glob_match("opt/*/embedded/lib/*.a", b"opt/datadog-agent/embedded/lib/libssl.a"));
        assert!(!glob_match("opt/*/embedded/lib/*.a", b"opt/datadog-agent/embedded/lib/x/libssl.a"));
        assert!(glob_match("opt/**/botocore/data/*", b"opt/a/b/site-packages/botocore/data/ec2"));
        assert!(glob_match("opt/**/x", b"opt/x"));
        assert!(glob_match("a/python?.?", b"a/python3.9"));
        assert!(glob_is_below("opt/**/botocore/data/s3", b"opt/a"));
        assert!(!glob_is_below("opt/b/c", b"opt/a"));
        // Names that are not UTF-8 match as bytes: `*` takes any of them, `?` one byte, and
        // a literal in the glob matches only its own bytes.
        assert!(glob_match("doc/*", b"doc/a\xe9"));
        assert!(glob_match("doc/a?", b"doc/a\xff"));
        assert!(!glob_match("doc/a\u{e9}", b"doc/a\xe9"));
        assert!(glob_match("doc/a\u{e9}", "doc/a\u{e9}".as_bytes()));
    }

    #[test]
    fn apply_removes_with_exceptions_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let data = root.join("lib/botocore/data");
        for svc in ["ec2", "s3", "sqs"] {
            fs::create_dir_all(data.join(svc)).unwrap();
            fs::write(data.join(svc).join("service-2.json"), vec![b'x'; 10]).unwrap();
        }
        fs::create_dir_all(root.join("doc")).unwrap();
        fs::write(root.join("doc/README"), b"12345").unwrap();
        let recipe = Recipe::parse(
            r#"format = 1
[[rule]]
name = "botocore"
why = "only s3 is used"
remove = ["lib/botocore/data/*"]
keep = ["lib/botocore/data/s3"]
[[rule]]
name = "docs"
why = "no docs"
when = "major == 7"
remove = ["doc", "lib/botocore/data/sqs"]
"#,
            "test",
        )
        .unwrap();
        let out = recipe.apply(root, &opts(&[7, 0], 3)).unwrap();
        assert_eq!(out[0].paths, vec!["lib/botocore/data/ec2", "lib/botocore/data/sqs"]);
        assert_eq!((out[0].files, out[0].bytes), (2, 20));
        assert_eq!(out[1].paths, vec!["doc"]);
        assert!(data.join("s3/service-2.json").exists());
        assert!(!root.join("doc").exists());
    }

    #[test]
    fn removals_and_renames_never_go_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("tree"), dir.path().join("outside"));
        fs::create_dir_all(outside.join("bin")).unwrap();
        fs::write(outside.join("bin/core"), b"outside core").unwrap();
        fs::write(outside.join("bin/agent"), b"outside agent").unwrap();
        fs::create_dir_all(root.join("opt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("opt/app")).unwrap();
        let recipe = Recipe::parse(
            "format = 1\n[[rule]]\nname = 'combined'\nwhy = 'w'\nrename = [['opt/app/bin/core', 'opt/app/bin/agent']]\n",
            "test",
        )
        .unwrap();
        match recipe.apply(&root, &opts(&[7, 0], 3)) {
            Err(RecipeError::Symlink { rule, link, .. }) => assert_eq!((rule.as_str(), link.as_str()), ("combined", "opt/app")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(fs::read(outside.join("bin/core")).unwrap(), b"outside core");
        assert_eq!(fs::read(outside.join("bin/agent")).unwrap(), b"outside agent");
        // A removal pattern never reaches below the symlink either (the walk does not enter it).
        let recipe = Recipe::parse("format = 1\n[[rule]]\nname = 'x'\nwhy = 'w'\nremove = ['opt/*/bin']\n", "test").unwrap();
        let out = recipe.apply(&root, &opts(&[7, 0], 3)).unwrap();
        assert!(out[0].paths.is_empty());
        assert!(outside.join("bin/core").exists());
    }

    #[test]
    fn bad_recipes_are_refused() {
        assert!(Recipe::parse("format = 2", "t").is_err());
        let bad = "format = 1\n[[rule]]\nname='x'\nwhy='y'\nwhen='major >< 6'\nremove=['a']\n";
        assert!(matches!(Recipe::parse(bad, "t"), Err(RecipeError::Condition { .. })));
        let escape = "format = 1\n[[rule]]\nname='x'\nwhy='y'\nremove=['../etc']\n";
        assert!(Recipe::parse(escape, "t").is_err());
    }
}
