//! Matching a recipe against a tree and removing what it matches: while unpacking
//! ([`StripFilter`], whose removed entries are never written) and on the unpacked tree
//! ([`Recipe::apply`], for renames and for what several packages put together).
//!
//! Contract: only ever deletes and renames paths under the given root, through directory
//! descriptors that never follow a symlink (one on the way is an error naming it).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{Options, Recipe, RecipeError, Rule, RuleOutcome};

impl Recipe {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::unpack::recipe::tests::opts;

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
}
