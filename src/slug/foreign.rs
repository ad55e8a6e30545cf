//! What other buildpacks put in `.apt` before ddslug installs (heroku-buildpack-apt, run
//! first, unpacks its packages there): recorded at compile time, so that `verify` checks
//! those entries exactly too instead of calling them tampering.
//!
//! The rule: at install, every entry already in `BUILD_DIR/.apt` that survives the merge
//! (see [`survivors`]) is listed in `.ddslug/foreign.json` (the entry-list format of
//! `tree.json`: path, type, mode, SHA-256 or target), and the manifest records that file's
//! SHA-256, so the list is under the manifest's protection as `tree.json` is. `verify`
//! takes each listed entry back from what it finds only if it is exactly as listed;
//! anything else in `.apt` is held against ddslug's own tree as before: a file added, or a
//! listed one changed or gone, after the compile is a difference.
//!
//! Contract: pure functions over entry lists; nothing here reads or writes a file.

use std::collections::{BTreeMap, HashMap};

use crate::pathbytes::PathBytes;
use crate::store::layerindex::LayerIndex;
use crate::store::treehash::{EntryKind, TreeDiff, TreeEntry};

/// The entries of `existing` (what was in `.apt` before the install) that are still there
/// after ddslug's tree is merged in, as [`crate::slug::materialize::merge_into`] merges: a
/// directory both have is kept (with the existing one's mode and mtime) and entered;
/// anything else of ours replaces what was at its path, with all below it. `ours` gives
/// each path of ddslug's tree and whether it is a directory ([`kinds_of`]). `existing` is
/// sorted by path bytes; so is the result.
pub fn survivors(existing: Vec<TreeEntry>, ours: &HashMap<Vec<u8>, bool>) -> Vec<TreeEntry> {
    existing
        .into_iter()
        .filter(|e| {
            let is_dir = matches!(e.kind, EntryKind::Dir);
            // Itself: kept unless ours has something there that is not a directory both have.
            let kept = ours.get(e.path.as_bytes()).is_none_or(|&our_dir| our_dir && is_dir);
            // Every directory above it that ours has too must be one ours has as a directory
            // (above it, the existing entry is a directory by construction).
            kept && parents(e.path.as_bytes()).all(|p| ours.get(p).is_none_or(|&our_dir| our_dir))
        })
        .collect()
}

/// Every path of a layer and whether it is a directory.
pub fn kinds_of(index: &LayerIndex) -> HashMap<Vec<u8>, bool> {
    let mut kinds = HashMap::new();
    for group in &index.groups {
        let rel = index.rel(group);
        if !group.is_root() {
            kinds.insert(rel.to_vec(), true);
        }
        for child in index.children(group) {
            kinds.insert(crate::pathbytes::join(rel, index.name(child)), false);
        }
    }
    kinds
}

/// The proper parents of a `/`-separated relative path, nearest first.
fn parents(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().rev().filter(|&(_, &b)| b == b'/').map(move |(at, _)| &path[..at])
}

/// What [`take_back`] made of the tree as found.
#[derive(Debug, Default)]
pub struct TakenBack {
    /// Listed entries that are not as listed: missing (`removed`) or different (`changed`,
    /// as (listed, found)).
    pub diff: TreeDiff,
    /// The listed entries found exactly as listed, by path.
    pub matched: usize,
}

/// Takes the listed `foreign` entries back from `found` (the tree as found, by path): one
/// found exactly as listed is removed, unless ddslug's tree `built` has a directory at that
/// path too (a directory both had), which then stands for ours (from the list the manifest
/// vouches for); what is not as listed is reported and, where ours has the path, also
/// stands for ours, so that it is not reported twice.
pub fn take_back(found: &mut BTreeMap<PathBytes, TreeEntry>, foreign: &[TreeEntry], built: &[TreeEntry]) -> TakenBack {
    let built: HashMap<&[u8], &TreeEntry> = built.iter().map(|e| (e.path.as_bytes(), e)).collect();
    let mut out = TakenBack::default();
    for listed in foreign {
        let ours = built.get(listed.path.as_bytes()).filter(|e| matches!(e.kind, EntryKind::Dir));
        match found.get(&listed.path) {
            None => {
                out.diff.removed.push(listed.clone());
                continue;
            }
            Some(actual) if actual == listed => out.matched += 1,
            Some(actual) => {
                out.diff.changed.push((listed.clone(), actual.clone()));
                if ours.is_none() {
                    found.remove(&listed.path);
                }
            }
        }
        match ours {
            Some(ours) => {
                found.insert(listed.path.clone(), (*ours).clone());
            }
            None => {
                found.remove(&listed.path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Sha256;

    fn dir(path: &str, mode: u32) -> TreeEntry {
        TreeEntry { path: path.as_bytes().into(), mode, kind: EntryKind::Dir }
    }

    fn file(path: &str, content: &str) -> TreeEntry {
        TreeEntry { path: path.as_bytes().into(), mode: 0o644, kind: EntryKind::File { sha256: Sha256::of(content.as_bytes()), size: content.len() as u64 } }
    }

    fn paths(entries: &[TreeEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.to_str().unwrap()).collect()
    }

    #[test]
    fn what_survives_the_merge() {
        let existing = vec![
            dir("etc", 0o700),
            file("etc/apt.conf", "apt"),
            dir("opt", 0o755),
            // A file where ours has a directory, and a directory where ours has a file.
            file("opt/datadog-agent", "junk"),
            dir("opt/x", 0o755),
            file("opt/x/below", "gone with it"),
            dir("usr", 0o755),
            file("usr/bin/psql", "psql"),
        ];
        let ours = vec![dir("etc", 0o755), dir("etc/datadog-agent", 0o755), dir("opt", 0o755), dir("opt/datadog-agent", 0o755), file("opt/x", "ours")];
        let kinds = ours.iter().map(|e| (e.path.as_bytes().to_vec(), matches!(e.kind, EntryKind::Dir))).collect();
        assert_eq!(paths(&survivors(existing, &kinds)), ["etc", "etc/apt.conf", "opt", "usr", "usr/bin/psql"]);
        // The same kinds from the layer index of that tree.
        let metas = vec![crate::store::treehash::FileMeta { mtime: (0, 0), xxh3: 0 }; 1];
        let index = LayerIndex::decode(LayerIndex::encode(&ours, &metas).unwrap()).unwrap();
        assert_eq!(kinds_of(&index), kinds);
    }

    #[test]
    fn taken_back_exactly_as_listed_or_reported() {
        let foreign = vec![dir("etc", 0o700), file("etc/apt.conf", "apt"), file("usr/a", "a"), file("usr/b", "b")];
        let built = vec![dir("etc", 0o755), file("etc/ours", "ours")];
        let mut found: BTreeMap<PathBytes, TreeEntry> =
            [dir("etc", 0o700), file("etc/apt.conf", "apt"), file("etc/ours", "ours"), file("usr/a", "changed"), file("usr/new", "added")]
                .into_iter()
                .map(|e| (e.path.clone(), e))
                .collect();
        let back = take_back(&mut found, &foreign, &built);
        assert_eq!(back.matched, 2);
        assert_eq!(paths(&back.diff.removed), ["usr/b"]);
        assert_eq!(back.diff.changed.iter().map(|(l, _)| l.path.to_str().unwrap()).collect::<Vec<_>>(), ["usr/a"]);
        // What is left is ours (the shared directory with our mode) and what nobody listed.
        let left: Vec<TreeEntry> = found.into_values().collect();
        assert_eq!(left, [dir("etc", 0o755), file("etc/ours", "ours"), file("usr/new", "added")]);
        // A shared directory whose mode changed after the build is reported once.
        let mut found: BTreeMap<PathBytes, TreeEntry> = [(dir("etc", 0o777))].into_iter().map(|e| (e.path.clone(), e)).collect();
        let back = take_back(&mut found, &foreign[..1], &built);
        assert_eq!(back.diff.changed.len(), 1);
        assert_eq!(found.into_values().collect::<Vec<_>>(), [dir("etc", 0o755)]);
    }
}
