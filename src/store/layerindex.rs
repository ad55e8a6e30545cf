//! A layer's index (`layers/<key>.index`): its entries grouped by directory, each with what it
//! looked like on disk when the layer was stored. A warm build reads it first thing and walks
//! it directory by directory, checking and linking the layer; so it is binary, lists names
//! rather than full paths, and is read without an allocation per entry (the JSON entry list,
//! 5 MB for 24,000 entries, took 12.5 ms to load; this takes a fraction of that).
//!
//! Modes: the index records every entry's exact permission bits (the package's, what the
//! tree hash and a slug have). Files are stored with exactly those (a slug shares their
//! inodes). Directories are stored with the owner's read, write and search bits added
//! ([`stored_dir_mode`]), so that a build that does not run as root (Heroku's) can strip,
//! rename and add inside a `0555` directory of the package, scan a `0000` one, and link from
//! it into a slug; the slug's directories are made by the build and get the exact bits.
//!
//! Encoding (integers little-endian; a name is a u32 length and its bytes, exactly as the
//! filesystem has them, UTF-8 or not): the magic
//! line, the group count, then per directory (the root first, every directory after its
//! parent): its path below the root (`""` for the root), its permission bits, its child
//! count, then per child that is not a directory: its kind (1 file, 2 symlink), permission
//! bits and name, and for a file its size, mtime (seconds, nanoseconds) and the xxh3 of
//! its content, for a symlink its target.
//!
//! The mtimes tell a warm build cheaply that a file was written through a slug's hard link;
//! the xxh3s catch what the mtimes cannot, a file overwritten in place with its size and mtime
//! kept (`cp -p` over it, a restored mtime, damage in the cache): a warm build reads and
//! hashes every file of the layer it reuses (see [`crate::slug::materialize`]).

use std::ops::Range;

use crate::fsat::Stat;
use crate::store::treehash::{EntryKind, FileMeta, TreeEntry};

const MAGIC: &[u8] = b"ddslug layer index 2\n";

/// Bytes of the index a string occupies.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    len: u32,
}

/// The permission bits the store keeps on a directory whose exact bits (what the package
/// says, what the index, the tree hash and a slug have) are `mode`: those plus the owner's
/// read, write and search. A build that does not run as root must still remove, rename and
/// add inside a package's `0555` directory, and list and link from a `0000` one; the exact
/// bits are set on the slug's own directories (it has no shared directories), never on the
/// store's. Files keep their exact bits in the store: a slug shares their inodes.
pub fn stored_dir_mode(mode: u32) -> u32 {
    mode | 0o700
}

/// A directory of the layer; its subdirectories are groups of their own.
#[derive(Debug)]
pub struct Group {
    rel: Span,
    /// Permission bits (the root's are not recorded: 0).
    pub mode: u32,
    children: Range<u32>,
}

impl Group {
    pub fn is_root(&self) -> bool {
        self.rel.len == 0
    }

    /// Whether `st` (the lstat of this directory in the layer) is what was recorded (with
    /// the store's bits, [`stored_dir_mode`]).
    pub fn intact(&self, st: &Stat) -> bool {
        st.is_dir() && (self.is_root() || st.mode & 0o7777 == stored_dir_mode(self.mode))
    }
}

/// What a child is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    File { size: u64, mtime: (i64, i64), xxh3: u64 },
    Symlink,
}

/// A file or symlink in a group.
#[derive(Debug)]
pub struct Child {
    name: Span,
    /// A symlink's target (empty for files).
    target: Span,
    pub mode: u32,
    pub kind: ChildKind,
}

impl Child {
    /// Whether `st` (the lstat of this child in the layer) is what was recorded: same type
    /// and mode, and for a file the same size and mtime. An in-place edit moves the mtime.
    pub fn intact(&self, st: &Stat) -> bool {
        st.mode & 0o7777 == self.mode
            && match self.kind {
                ChildKind::File { size, mtime, .. } => st.is_file() && st.size == size && st.mtime == mtime,
                ChildKind::Symlink => st.is_symlink(),
            }
    }
}

/// A decoded index.
pub struct LayerIndex {
    bytes: Vec<u8>,
    pub groups: Vec<Group>,
    children: Vec<Child>,
}

impl LayerIndex {
    /// The index of `entries` (sorted by path, as a scan gives them) whose files had `files`'
    /// mtimes and xxh3s (in entry order). `None` when a path has no listed directory or
    /// `files` runs short.
    pub fn encode(entries: &[TreeEntry], files: &[FileMeta]) -> Option<Vec<u8>> {
        // A directory's path, mode and children (name, entry, mtime and xxh3), in entry order;
        // the directories in entry order after the root.
        type Dir<'a> = (&'a [u8], u32, Vec<(&'a [u8], &'a TreeEntry, Option<FileMeta>)>);
        let mut dirs: Vec<Dir> = vec![(b"", 0, Vec::new())];
        let mut by_path = std::collections::HashMap::from([(&b""[..], 0usize)]);
        let mut mtimes = files.iter();
        for e in entries {
            let (parent, name) = crate::pathbytes::split_last(&e.path);
            let group = *by_path.get(parent)?;
            match &e.kind {
                EntryKind::Dir => {
                    by_path.insert(&e.path, dirs.len());
                    dirs.push((&e.path, e.mode, Vec::new()));
                }
                EntryKind::File { .. } => dirs[group].2.push((name, e, Some(*mtimes.next()?))),
                EntryKind::Symlink { .. } => dirs[group].2.push((name, e, None)),
            }
        }
        let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * 48);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(dirs.len() as u32).to_le_bytes());
        let put_str = |out: &mut Vec<u8>, s: &[u8]| {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        };
        for (rel, mode, children) in &dirs {
            put_str(&mut out, rel);
            out.extend_from_slice(&mode.to_le_bytes());
            out.extend_from_slice(&(children.len() as u32).to_le_bytes());
            for (name, e, mtime) in children {
                match &e.kind {
                    EntryKind::File { size, .. } => {
                        let FileMeta { mtime: (sec, nsec), xxh3 } = mtime.unwrap_or(FileMeta { mtime: (0, 0), xxh3: 0 });
                        out.push(1);
                        out.extend_from_slice(&e.mode.to_le_bytes());
                        put_str(&mut out, name);
                        out.extend_from_slice(&size.to_le_bytes());
                        out.extend_from_slice(&sec.to_le_bytes());
                        out.extend_from_slice(&nsec.to_le_bytes());
                        out.extend_from_slice(&xxh3.to_le_bytes());
                    }
                    EntryKind::Symlink { target } => {
                        out.push(2);
                        out.extend_from_slice(&e.mode.to_le_bytes());
                        put_str(&mut out, name);
                        put_str(&mut out, target);
                    }
                    EntryKind::Dir => {}
                }
            }
        }
        Some(out)
    }

    /// Reads what [`LayerIndex::encode`] wrote; `None` for anything else (damaged,
    /// truncated, or naming a path that could leave the tree).
    pub fn decode(bytes: Vec<u8>) -> Option<LayerIndex> {
        let (groups, children) = {
            let mut r = Reader { bytes: &bytes, pos: MAGIC.len() };
            if !bytes.starts_with(MAGIC) {
                return None;
            }
            let group_count = r.u32()? as usize;
            // Every group takes at least 12 bytes, every child at least 13: larger counts
            // are damage, not a huge layer.
            if group_count > bytes.len() / 12 {
                return None;
            }
            let mut groups = Vec::with_capacity(group_count);
            // A child takes 40 to 60 bytes for the usual name lengths: one allocation.
            let mut children = Vec::with_capacity(bytes.len() / 32);
            // File sizes must add up within u64: `totals` sums them.
            let mut total_bytes = 0u64;
            for g in 0..group_count {
                let rel = r.string()?;
                // Only the first group is the root; every other is a relative path.
                let plain = if g == 0 { rel.len == 0 } else { rel.len > 0 && r.slice(rel).split(|&b| b == b'/').all(is_plain_name) };
                if !plain {
                    return None;
                }
                let mode = r.u32()?;
                let count = r.u32()? as usize;
                if count > bytes.len() / 13 {
                    return None;
                }
                let first = children.len() as u32;
                for _ in 0..count {
                    let kind = r.u8()?;
                    let mode = r.u32()?;
                    let name = r.string()?;
                    if !is_plain_name(r.slice(name)) {
                        return None;
                    }
                    let (kind, target) = match kind {
                        1 => {
                            let size = r.u64()?;
                            total_bytes = total_bytes.checked_add(size)?;
                            let mtime = (r.u64()? as i64, r.u64()? as i64);
                            (ChildKind::File { size, mtime, xxh3: r.u64()? }, Span { start: 0, len: 0 })
                        }
                        2 => (ChildKind::Symlink, r.string()?),
                        _ => return None,
                    };
                    children.push(Child { name, target, mode, kind });
                }
                groups.push(Group { rel, mode, children: first..children.len() as u32 });
            }
            if r.pos != bytes.len() {
                return None;
            }
            (groups, children)
        };
        Some(LayerIndex { bytes, groups, children })
    }

    /// A group's path below the root (`""` for the root).
    pub fn rel(&self, group: &Group) -> &[u8] {
        self.str_at(group.rel)
    }

    pub fn children(&self, group: &Group) -> &[Child] {
        &self.children[group.children.start as usize..group.children.end as usize]
    }

    pub fn name(&self, child: &Child) -> &[u8] {
        self.str_at(child.name)
    }

    pub fn target(&self, child: &Child) -> &[u8] {
        self.str_at(child.target)
    }

    /// Files and symlinks, and the bytes of the files.
    pub fn totals(&self) -> (u64, u64) {
        let bytes = self.children.iter().map(|c| if let ChildKind::File { size, .. } = c.kind { size } else { 0 }).sum();
        (self.children.len() as u64, bytes)
    }

    /// Every listed path below the root, directories included.
    pub fn paths(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.groups.iter().flat_map(move |g| {
            let rel = self.rel(g);
            let own = (!g.is_root()).then(|| rel.to_owned());
            own.into_iter().chain(self.children(g).iter().map(move |c| crate::pathbytes::join(rel, self.name(c))))
        })
    }

    fn str_at(&self, span: Span) -> &[u8] {
        &self.bytes[span.start as usize..(span.start + span.len) as usize]
    }
}

/// A single path component that stays where it is: not empty, `.`, `..`, nor holding `/`
/// (or NUL).
fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let taken = self.bytes.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(taken)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    /// A length-prefixed name, as a span of the bytes.
    fn string(&mut self) -> Option<Span> {
        let len = self.u32()?;
        let start = u32::try_from(self.pos).ok()?;
        let end = self.pos.checked_add(len as usize)?;
        // Spans are u32 offsets: `start + len` must stay one.
        u32::try_from(end).ok()?;
        self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(Span { start, len })
    }
    fn slice(&self, span: Span) -> &[u8] {
        &self.bytes[span.start as usize..(span.start + span.len) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Sha256;

    fn entries() -> Vec<TreeEntry> {
        let file = |path: &str, mode, size| TreeEntry { path: path.into(), mode, kind: EntryKind::File { sha256: Sha256::of(b""), size } };
        vec![
            file("a.txt", 0o644, 3),
            TreeEntry { path: "opt".into(), mode: 0o755, kind: EntryKind::Dir },
            file("opt/b", 0o755, 5),
            TreeEntry { path: "opt/d".into(), mode: 0o750, kind: EntryKind::Dir },
            file("opt/d/c\u{e9}", 0o600, 0),
            TreeEntry { path: "opt/l".into(), mode: 0o777, kind: EntryKind::Symlink { target: "d/c\u{e9}".into() } },
            // Names and targets that are not UTF-8 are kept byte for byte.
            TreeEntry { path: b"opt/n\xe9".as_slice().into(), mode: 0o777, kind: EntryKind::Symlink { target: b"d/\xff".as_slice().into() } },
        ]
    }

    /// Found by the `layerindex` fuzz target: two files whose sizes add up past u64::MAX
    /// made `totals` overflow (a panic in debug builds, a wrong total in release builds).
    #[test]
    fn file_sizes_that_overflow_their_total_are_refused() {
        let bytes = include_bytes!("../../tests/data/fuzz/layerindex-size-overflow.index");
        assert!(LayerIndex::decode(bytes.to_vec()).is_none());
    }

    /// Files' records with these mtimes (and, to tell them apart, xxh3s made from them).
    fn metas(mtimes: &[(i64, i64)]) -> Vec<FileMeta> {
        mtimes.iter().map(|&mtime| FileMeta { mtime, xxh3: (mtime.0 ^ mtime.1) as u64 }).collect()
    }

    #[test]
    fn reads_back_what_was_written_grouped_by_directory() {
        let mtimes = metas(&[(1, 2), (1_700_000_000, 999_999_999), (-1, 0)]);
        let index = LayerIndex::decode(LayerIndex::encode(&entries(), &mtimes).unwrap()).unwrap();
        type Layout<'a> = Vec<(&'a [u8], u32, Vec<&'a [u8]>)>;
        let layout: Layout =
            index.groups.iter().map(|g| (index.rel(g), g.mode, index.children(g).iter().map(|c| index.name(c)).collect())).collect();
        assert_eq!(
            layout,
            [
                (&b""[..], 0, vec![&b"a.txt"[..]]),
                (b"opt", 0o755, vec![b"b", b"l", b"n\xe9"]),
                (b"opt/d", 0o750, vec!["c\u{e9}".as_bytes()]),
            ]
        );
        let opt = &index.groups[1];
        let [b, l, n] = index.children(opt) else { panic!("three children") };
        assert_eq!(b.kind, ChildKind::File { size: 5, mtime: (1_700_000_000, 999_999_999), xxh3: 1_700_000_000 ^ 999_999_999 });
        assert_eq!((l.kind, index.target(l)), (ChildKind::Symlink, "d/c\u{e9}".as_bytes()));
        assert_eq!(index.target(n), b"d/\xff");
        assert_eq!(index.totals(), (5, 8));
        let mut paths: Vec<Vec<u8>> = index.paths().collect();
        paths.sort();
        let mut expected: Vec<Vec<u8>> = entries().into_iter().map(|e| e.path.into_bytes()).collect();
        expected.sort();
        assert_eq!(paths, expected);
    }

    #[test]
    fn intact_means_same_type_mode_size_and_mtime() {
        let index = LayerIndex::decode(LayerIndex::encode(&entries(), &metas(&[(1, 2), (3, 4), (5, 6)])).unwrap()).unwrap();
        let b = &index.children(&index.groups[1])[0];
        let st = |mode: u32, size: u64, mtime: (i64, i64)| Stat { mode, size, mtime, ctime: mtime, dev: 1, ino: 2 };
        assert!(b.intact(&st(libc::S_IFREG | 0o755, 5, (3, 4))));
        assert!(!b.intact(&st(libc::S_IFREG | 0o755, 5, (3, 5))), "mtime");
        assert!(!b.intact(&st(libc::S_IFREG | 0o644, 5, (3, 4))), "mode");
        assert!(!b.intact(&st(libc::S_IFREG | 0o755, 6, (3, 4))), "size");
        assert!(!b.intact(&st(libc::S_IFLNK | 0o755, 5, (3, 4))), "type");
        let d = &index.groups[2];
        assert!(d.intact(&st(libc::S_IFDIR | 0o750, 4096, (0, 0))));
        assert!(!d.intact(&st(libc::S_IFDIR | 0o755, 4096, (0, 0))), "mode");
        assert!(index.groups[0].intact(&st(libc::S_IFDIR | 0o700, 4096, (0, 0))), "the root's mode is not recorded");
        // A directory recorded as 0555 (or 0000) is stored with the owner's bits added.
        let ro = [TreeEntry { path: "none".into(), mode: 0, kind: EntryKind::Dir }, TreeEntry { path: "ro".into(), mode: 0o555, kind: EntryKind::Dir }];
        let index = LayerIndex::decode(LayerIndex::encode(&ro, &[]).unwrap()).unwrap();
        let [_, none, ro] = &index.groups[..] else { panic!("three groups") };
        assert_eq!((ro.mode, none.mode), (0o555, 0), "the index has the exact modes");
        assert!(ro.intact(&st(libc::S_IFDIR | 0o755, 4096, (0, 0))) && !ro.intact(&st(libc::S_IFDIR | 0o555, 4096, (0, 0))));
        assert!(none.intact(&st(libc::S_IFDIR | 0o700, 4096, (0, 0))) && !none.intact(&st(libc::S_IFDIR, 4096, (0, 0))));
    }

    #[test]
    fn damage_and_paths_that_leave_the_tree_are_refused() {
        let bytes = LayerIndex::encode(&entries(), &metas(&[(1, 2), (3, 4), (5, 6)])).unwrap();
        for cut in [0, MAGIC.len(), MAGIC.len() + 4, bytes.len() - 1] {
            assert!(LayerIndex::decode(bytes[..cut].to_vec()).is_none(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LayerIndex::decode(longer).is_none(), "trailing bytes");
        let mut huge = bytes.clone();
        huge[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(LayerIndex::decode(huge).is_none(), "impossible count");
        // Paths that would leave the tree, written over valid ones of the same length.
        let list = vec![
            TreeEntry { path: "opt".into(), mode: 0o755, kind: EntryKind::Dir },
            TreeEntry { path: "opt/qq".into(), mode: 0o755, kind: EntryKind::Dir },
            TreeEntry { path: "opt/qq/ww".into(), mode: 0o644, kind: EntryKind::Symlink { target: "t".into() } },
        ];
        let good = LayerIndex::encode(&list, &[]).unwrap();
        assert!(LayerIndex::decode(good.clone()).is_some());
        for (from, to) in [("opt/qq", "opt/.."), ("opt/qq", "../abc"), ("opt/qq", "opt//q"), ("opt/qq", "./optq"), ("ww", ".."), ("ww", "a/")] {
            let at = good.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            let mut evil = good.clone();
            evil[at..at + from.len()].copy_from_slice(to.as_bytes());
            assert!(LayerIndex::decode(evil).is_none(), "{to} was accepted");
        }
        // A path whose directory is not listed cannot be encoded.
        let list = vec![TreeEntry { path: "a/b".into(), mode: 0o644, kind: EntryKind::Symlink { target: "x".into() } }];
        assert!(LayerIndex::encode(&list, &[]).is_none());
    }
}
