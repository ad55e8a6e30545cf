//! Go modules compiled into the agent's executables. The Go linker writes each executable's
//! build information into an ELF section, `.go.buildinfo`: the Go release, the main package,
//! and the modules it was built from with their versions, checksums and replacements (what
//! `go version -m` prints). Those modules become SBOM components; the Go release becomes a
//! `stdlib` component, as other SBOM tools name it.
//!
//! Where: the executables (regular files with an execute bit) in [`GO_BIN_DIRS`] and their
//! subdirectories, read from the finished tree (so only what the recipe kept); files that are
//! not ELF, or ELF without the section (Python, OpenSSL, ...), are skipped.
//!
//! Contract: the files come from the package and are not trusted. They are opened through
//! directory descriptors that never follow a symlink; only the ELF header, the section
//! headers, the section names and the section itself are read, each bounded (a section over
//! [`BUILDINFO_LIMIT`] or a malformed ELF is a note in the SBOM, not a failed build). Only
//! the layout Go writes since 1.18 (strings inline in the section) is read; an older
//! executable is a note.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::collect::{MAX_FIELD, Parent, SbomError, bounded, open_parent};
use crate::fsat::{Dir, Kind};

/// Where the agent's executables are, relative to the layer root: its own (`bin/agent/agent`)
/// and the embedded ones (trace-agent, process-agent, ...).
pub const GO_BIN_DIRS: [&str; 2] = ["opt/datadog-agent/bin", "opt/datadog-agent/embedded/bin"];
/// Levels of subdirectories read below each of [`GO_BIN_DIRS`].
const MAX_DEPTH: usize = 3;
/// Executables examined per layer, at most.
const MAX_EXECUTABLES: usize = 4096;
/// The largest `.go.buildinfo` section read (its text is one line per module).
pub const BUILDINFO_LIMIT: u64 = 4 << 20;
/// The most bytes of `.go.buildinfo` sections read per layer: what is kept of them goes into
/// the layer's inventory and SBOM, which are read back within [`super::MAX_INVENTORY`] and
/// [`super::MAX_SLUG_SBOM`].
const BUILDINFO_TOTAL: u64 = 4 << 20;
/// Section headers read per ELF file, at most.
const MAX_SECTIONS: u64 = 1 << 16;
/// The largest section-name table read.
const SHSTRTAB_LIMIT: u64 = 1 << 20;
/// What starts a `.go.buildinfo` section.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Modules kept per executable, at most.
const MAX_MODULES: usize = 100_000;

/// One Go executable of the layer and what it was built from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoBinary {
    /// Relative to the layer root.
    pub path: String,
    /// As Go prints it (`go1.22.5`, maybe followed by experiments: `go1.22.5 X:boringcrypto`).
    pub go_version: String,
    /// The main package's import path.
    pub main: String,
    /// The main module (first, `main: true`) and every dependency.
    pub modules: Vec<GoModule>,
}

/// A module an executable was built from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoModule {
    pub path: String,
    /// `v1.2.3`, or `(devel)` for a main module built from a checkout.
    pub version: String,
    /// The go.sum checksum (`h1:...`), when the build had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
    /// What a `replace` directive put in its place: a module path and version, or a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub main: bool,
}

/// The Go executables in the tree at `tree` (shown as `tree_path`), sorted by path.
pub fn binaries(tree: &Dir, tree_path: &Path, notes: &mut Vec<String>) -> Result<Vec<GoBinary>, SbomError> {
    let mut found = Found::default();
    for root in GO_BIN_DIRS {
        let Parent::Open(dir) = open_parent(tree, tree_path, root.as_bytes())? else { continue };
        walk(&dir, root, 0, tree_path, &mut found, notes)?;
    }
    if found.examined > MAX_EXECUTABLES || found.bytes > BUILDINFO_TOTAL {
        notes.push(format!(
            "more than {MAX_EXECUTABLES} executables or {BUILDINFO_TOTAL} bytes of Go build information in {}, ddslug's limits: \
             the Go modules of the others are not listed",
            GO_BIN_DIRS.join(" and ")
        ));
    }
    found.binaries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found.binaries)
}

/// What [`walk`] found so far, and how much it read.
#[derive(Default)]
struct Found {
    binaries: Vec<GoBinary>,
    examined: usize,
    /// Bytes of `.go.buildinfo` sections read.
    bytes: u64,
}

fn walk(dir: &Dir, rel: &str, depth: usize, tree_path: &Path, found: &mut Found, notes: &mut Vec<String>) -> Result<(), SbomError> {
    let io = |error| SbomError::Io { path: tree_path.join(rel), error };
    for (name, kind) in dir.entries().map_err(io)? {
        let Some(name_text) = name.to_str() else { continue };
        let child = format!("{rel}/{name_text}");
        match kind {
            Kind::Dir if depth < MAX_DEPTH => {
                // Opened without following a symlink swapped in since the listing.
                let Ok(sub) = dir.dir_beneath(Path::new(&name)) else { continue };
                walk(&sub, &child, depth + 1, tree_path, found, notes)?;
            }
            Kind::File => {
                let file = match dir.open_regular(&name) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        notes.push(format!("{child}: {e}; its Go build information was not read"));
                        continue;
                    }
                    Err(_) => continue,
                };
                let meta = file.metadata().map_err(|error| SbomError::Io { path: tree_path.join(&child), error })?;
                if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0 {
                    continue;
                }
                found.examined += 1;
                if found.examined > MAX_EXECUTABLES || found.bytes > BUILDINFO_TOTAL {
                    return Ok(());
                }
                match read_binary(&file, meta.len(), &child, &mut found.bytes) {
                    Ok(Some(binary)) if found.bytes <= BUILDINFO_TOTAL => found.binaries.push(binary),
                    Ok(_) => {}
                    Err(Unreadable::Note(note)) => notes.push(format!("{child}: {note}; its Go modules are not listed")),
                    Err(Unreadable::Io(error)) => return Err(SbomError::Io { path: tree_path.join(&child), error }),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why an executable's build information was not read.
#[derive(Debug)]
enum Unreadable {
    /// What the package's file is like (for a note).
    Note(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Unreadable {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Unreadable::Note("a truncated ELF file".into()) } else { Unreadable::Io(e) }
    }
}

/// The build information of the ELF file `file` (`len` bytes), `None` when it is not a Go
/// executable; the size of the section read is added to `read`.
fn read_binary(file: &File, len: u64, path: &str, read: &mut u64) -> Result<Option<GoBinary>, Unreadable> {
    let Some(section) = buildinfo_section(file, len)? else { return Ok(None) };
    *read += section.len() as u64;
    from_section(&section, path).map(Some).map_err(Unreadable::Note)
}

/// What the `.go.buildinfo` section `section` of the executable `path` says; `Err` says why
/// it cannot be read (for a note).
pub fn from_section(section: &[u8], path: &str) -> Result<GoBinary, String> {
    let (go_version, modinfo) = parse_buildinfo(section)?;
    let (main, modules) = parse_modinfo(&modinfo);
    Ok(GoBinary { path: path.into(), go_version: bounded(&go_version), main: bounded(&main), modules })
}

/// [`binaries`] for one open file (`len` bytes): its build information, `Ok(None)` when it
/// is not a Go executable, `Ok(Err(note))` when it cannot be read.
pub fn from_file(file: &File, len: u64, path: &str) -> std::io::Result<Result<Option<GoBinary>, String>> {
    match read_binary(file, len, path, &mut 0) {
        Ok(found) => Ok(Ok(found)),
        Err(Unreadable::Note(note)) => Ok(Err(note)),
        Err(Unreadable::Io(e)) => Err(e),
    }
}

fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// The bytes of the `.go.buildinfo` section of an ELF file; `None` for a file that is not
/// ELF or has no such section.
fn buildinfo_section(file: &File, len: u64) -> Result<Option<Vec<u8>>, Unreadable> {
    let bad = |what: &str| Unreadable::Note(format!("a malformed ELF file ({what})"));
    if len < 64 {
        return Ok(None);
    }
    let head = read_at(file, 0, 64)?;
    if &head[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let (wide, big) = match (head[4], head[5]) {
        (1 | 2, 1 | 2) => (head[4] == 2, head[5] == 2),
        // Not an ELF file after all (no class or byte order ELF defines).
        _ => return Ok(None),
    };
    let u16_at = |b: &[u8], at: usize| if big { u16::from_be_bytes([b[at], b[at + 1]]) } else { u16::from_le_bytes([b[at], b[at + 1]]) };
    let u32_at = |b: &[u8], at: usize| {
        let x = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big { u32::from_be_bytes(x) } else { u32::from_le_bytes(x) }
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        if big { u64::from_be_bytes(x) } else { u64::from_le_bytes(x) }
    };
    // Where the section headers are, how big each is, how many, and which holds the names.
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (u64_at(&head, 0x28), u16_at(&head, 0x3a), u16_at(&head, 0x3c), u16_at(&head, 0x3e))
    } else {
        (u64::from(u32_at(&head, 0x20)), u16_at(&head, 0x2e), u16_at(&head, 0x30), u16_at(&head, 0x32))
    };
    let entry = if wide { 64 } else { 40 };
    if shnum == 0 {
        return Ok(None);
    }
    if u64::from(shentsize) != entry || u64::from(shnum) > MAX_SECTIONS || shstrndx >= shnum {
        return Err(bad("its section header table"));
    }
    let table_len = entry * u64::from(shnum);
    if shoff.checked_add(table_len).is_none_or(|end| end > len) {
        return Err(bad("section headers past its end"));
    }
    let table = read_at(file, shoff, table_len)?;
    // (name offset, file offset, size) of section `i`.
    let section = |i: usize| {
        let s = &table[i * entry as usize..(i + 1) * entry as usize];
        if wide { (u32_at(s, 0), u64_at(s, 0x18), u64_at(s, 0x20)) } else { (u32_at(s, 0), u64::from(u32_at(s, 0x10)), u64::from(u32_at(s, 0x14))) }
    };
    let in_file = |offset: u64, size: u64| offset.checked_add(size).is_some_and(|end| end <= len);
    let (_, names_at, names_len) = section(usize::from(shstrndx));
    if names_len > SHSTRTAB_LIMIT || !in_file(names_at, names_len) {
        return Err(bad("its section name table"));
    }
    let names = read_at(file, names_at, names_len)?;
    let wanted = b".go.buildinfo\0";
    for i in 0..usize::from(shnum) {
        let (name, offset, size) = section(i);
        let name = name as usize;
        if names.get(name..name + wanted.len()) != Some(&wanted[..]) {
            continue;
        }
        if size > BUILDINFO_LIMIT {
            return Err(Unreadable::Note(format!("its .go.buildinfo section is larger than {BUILDINFO_LIMIT} bytes, ddslug's limit")));
        }
        if !in_file(offset, size) {
            return Err(bad("its .go.buildinfo section lies past its end"));
        }
        return Ok(Some(read_at(file, offset, size)?));
    }
    Ok(None)
}

/// The Go release and the module information text of a `.go.buildinfo` section (the layout
/// of Go 1.18 and later: a 32-byte header, then two strings, each after its length as an
/// unsigned varint).
fn parse_buildinfo(section: &[u8]) -> Result<(String, String), String> {
    if section.len() < 32 || &section[..14] != MAGIC {
        return Err("its .go.buildinfo section does not start as Go writes it".into());
    }
    // Flag 2: the strings are inline; without it they are pointers (Go before 1.18).
    if section[15] & 2 == 0 {
        return Err("built by a Go release before 1.18, whose build information ddslug does not read".into());
    }
    let mut rest = &section[32..];
    let mut string = || -> Result<&[u8], String> {
        let (len, used) = uvarint(rest).ok_or("a malformed .go.buildinfo section")?;
        let bytes = rest.get(used..).and_then(|r| r.get(..usize::try_from(len).ok()?)).ok_or("a malformed .go.buildinfo section")?;
        rest = &rest[used + bytes.len()..];
        Ok(bytes)
    };
    let version = String::from_utf8_lossy(string()?).into_owned();
    let modinfo = string()?;
    // The module text sits between two 16-byte markers (not UTF-8), and ends with a newline
    // before the second.
    let text = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' { &modinfo[16..modinfo.len() - 16] } else { &[][..] };
    Ok((version, String::from_utf8_lossy(text).into_owned()))
}

/// An unsigned LEB128 varint at the start of `b`: its value and its length.
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The main package and the modules of Go's module information text: tab-separated lines
/// `path <pkg>`, `mod <path> <version> [<sum>]`, `dep <path> <version> [<sum>]`, and
/// `=> <path> [<version> <sum>]` replacing the module of the line before. Other lines
/// (`build` settings) are not used.
fn parse_modinfo(text: &str) -> (String, Vec<GoModule>) {
    let mut main = String::new();
    let mut modules: Vec<GoModule> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["path", path, ..] => main = (*path).to_string(),
            [kind @ ("mod" | "dep"), path, version, rest @ ..] if modules.len() < MAX_MODULES => modules.push(GoModule {
                path: bounded(path),
                version: bounded(version),
                sum: rest.first().filter(|s| !s.is_empty()).map(|s| bounded(s)),
                replaced_by: None,
                main: *kind == "mod",
            }),
            ["=>", path, rest @ ..] => {
                if let Some(last) = modules.last_mut() {
                    let with_version = rest.first().filter(|v| !v.is_empty()).map_or_else(|| (*path).to_string(), |v| format!("{path} {v}"));
                    last.replaced_by = Some(with_version.chars().take(2 * MAX_FIELD).collect());
                }
            }
            _ => {}
        }
    }
    (main, modules)
}

/// A Go release's number (`go1.22.5 X:boringcrypto` gives `1.22.5`).
pub fn release_number(go_version: &str) -> &str {
    let first = go_version.split_whitespace().next().unwrap_or("");
    first.strip_prefix("go").unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.go.buildinfo` section as Go 1.18+ writes it, holding `version` and `modinfo`
    /// (wrapped in its 16-byte markers).
    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend([8, 2]);
        s.resize(32, 0);
        // Go's markers are not UTF-8.
        let mut wrapped = vec![0xafu8; 16];
        wrapped.extend_from_slice(modinfo.as_bytes());
        wrapped.extend([0xf2u8; 16]);
        for text in [version.as_bytes(), &wrapped[..]] {
            let mut n = text.len() as u64;
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                s.push(if n == 0 { byte } else { byte | 0x80 });
                if n == 0 {
                    break;
                }
            }
            s.extend_from_slice(text);
        }
        s
    }

    #[test]
    fn module_text_parses_with_replacements() {
        let text = "path\texample.com/app/cmd/app\nmod\texample.com/app\t(devel)\t\ndep\tgithub.com/a/b\tv1.2.3\th1:abc=\ndep\tgithub.com/c/d\tv0.1.0\th1:def=\n=>\tgithub.com/fork/d\tv0.1.1\th1:ghi=\ndep\texample.com/local\tv0.0.0\n=>\t./local\t\t\nbuild\t-compiler=gc\n";
        let (version, modinfo) = parse_buildinfo(&section("go1.22.5", text)).unwrap();
        assert_eq!((version.as_str(), modinfo.as_str()), ("go1.22.5", text));
        let (main, modules) = parse_modinfo(&modinfo);
        assert_eq!(main, "example.com/app/cmd/app");
        let summary: Vec<_> = modules.iter().map(|m| (m.path.as_str(), m.version.as_str(), m.sum.as_deref(), m.replaced_by.as_deref(), m.main)).collect();
        assert_eq!(
            summary,
            [
                ("example.com/app", "(devel)", None, None, true),
                ("github.com/a/b", "v1.2.3", Some("h1:abc="), None, false),
                ("github.com/c/d", "v0.1.0", Some("h1:def="), Some("github.com/fork/d v0.1.1"), false),
                ("example.com/local", "v0.0.0", None, Some("./local"), false),
            ]
        );
        assert_eq!(release_number("go1.22.5 X:boringcrypto"), "1.22.5");
    }

    fn copy_of(bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    #[test]
    fn elf_files_without_the_section_or_broken_ones_are_skipped_or_noted() {
        // This test program: ELF, no Go build information.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (f, len) = copy_of(&me);
        assert!(buildinfo_section(f.as_file(), len).unwrap().is_none());
        // Not ELF at all, or too short to be: skipped.
        let (f, len) = copy_of(b"#!/bin/sh\necho not ELF, and long enough to have a header of sixty-four bytes\n");
        assert!(buildinfo_section(f.as_file(), len).unwrap().is_none());
        // Its section headers moved past the end, or its name table index out of range: notes.
        let mut moved = me.clone();
        moved[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        let (f, len) = copy_of(&moved);
        assert!(matches!(buildinfo_section(f.as_file(), len), Err(Unreadable::Note(n)) if n.contains("past its end")));
        let mut bad_index = me.clone();
        bad_index[0x3e..0x40].copy_from_slice(&u16::MAX.to_le_bytes());
        let (f, len) = copy_of(&bad_index);
        assert!(matches!(buildinfo_section(f.as_file(), len), Err(Unreadable::Note(_))));
        // Cut short: whatever it says, no panic.
        for cut in [64, 100, me.len() / 2, me.len() - 1] {
            let (f, len) = copy_of(&me[..cut]);
            let _ = buildinfo_section(f.as_file(), len);
        }
    }

    #[test]
    fn a_section_objcopy_added_is_found() {
        // An object file from binutils' `as`, given the section by `objcopy --add-section`
        // (a fuzz seed; its first byte picks the fuzz target's mode).
        let seed = include_bytes!("../../fuzz/seeds/gobuild/elf-with-buildinfo");
        let (f, len) = copy_of(&seed[1..]);
        let found = from_file(f.as_file(), len, "go.o").unwrap().unwrap().unwrap();
        assert_eq!((found.go_version.as_str(), found.main.as_str()), ("go1.19.8", "example.com/agent"));
        let names: Vec<_> = found.modules.iter().map(|m| (m.path.as_str(), m.version.as_str(), m.replaced_by.as_deref())).collect();
        assert_eq!(names, [("example.com/agent", "(devel)", None), ("example.com/forked", "v0.3.0", Some("../fork (devel)")), ("example.com/lib", "v1.4.2", None)]);
    }

    #[test]
    fn only_executables_in_the_agents_bin_directories_are_read_and_no_symlink_is_followed() {
        use std::os::unix::fs::PermissionsExt;
        let seed = &include_bytes!("../../fuzz/seeds/gobuild/elf-with-buildinfo")[1..];
        let tmp = tempfile::tempdir().unwrap();
        let put = |rel: &str, bytes: &[u8], mode: u32| {
            let path = tmp.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("opt/datadog-agent/bin/agent/agent", seed, 0o755);
        put("opt/datadog-agent/embedded/bin/not-executable", seed, 0o644);
        put("opt/datadog-agent/embedded/bin/script", b"#!/bin/sh\nexit 0\n", 0o755);
        put("opt/datadog-agent/embedded/lib/elsewhere", seed, 0o755);
        std::os::unix::fs::symlink("../../bin/agent/agent", tmp.path().join("opt/datadog-agent/embedded/bin/link")).unwrap();
        let mut notes = Vec::new();
        let found = binaries(&Dir::open_given(tmp.path()).unwrap(), tmp.path(), &mut notes).unwrap();
        let paths: Vec<_> = found.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(paths, ["opt/datadog-agent/bin/agent/agent"]);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn bad_sections_are_notes_not_panics() {
        let mut old = section("go1.17", "x");
        old[15] = 0;
        assert!(parse_buildinfo(&old).unwrap_err().contains("before 1.18"));
        assert!(parse_buildinfo(b"not a section at all, not at all....").is_err());
        let good = section("go1.22.5", "path\tx\n");
        for cut in 0..good.len() {
            let _ = parse_buildinfo(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[32] = 0xff;
        huge[33] = 0xff;
        assert!(parse_buildinfo(&huge).is_err());
        // Text without its markers holds no modules.
        let (_, modinfo) = parse_buildinfo(&section("go1.22.5", "")).unwrap();
        assert_eq!(modinfo, "");
    }
}
