//! Writes the seeds that need ddslug's own encoders (`seeds/layerindex`): a small tree with a
//! file, a hard link, a symlink, a name that is not UTF-8 and an odd directory mode, scanned
//! and indexed as a layer build does it. Run: `cargo run --manifest-path fuzz/Cargo.toml
//! --bin make_seeds` (plain build, no sanitizer).
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("layer");
    std::fs::create_dir_all(root.join("opt/agent/bin"))?;
    std::fs::create_dir_all(root.join("opt/agent/etc"))?;
    std::fs::write(root.join("opt/agent/bin/agent"), b"binary")?;
    std::fs::hard_link(root.join("opt/agent/bin/agent"), root.join("opt/agent/bin/agent2"))?;
    std::fs::write(root.join("opt/agent/etc").join(OsStr::from_bytes(b"a\xe9")), b"")?;
    std::os::unix::fs::symlink("../bin/agent", root.join("opt/agent/etc/link"))?;
    std::fs::set_permissions(root.join("opt/agent/etc"), std::fs::Permissions::from_mode(0o750))?;
    let (scan, files) = ddslug::store::treehash::scan_tree_known(&root, &HashMap::new(), &HashMap::new())
        .map_err(std::io::Error::other)?;
    let index = ddslug::store::layerindex::LayerIndex::encode(&scan.entries, &files).ok_or_else(|| std::io::Error::other("encode"))?;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/layerindex/small.index");
    std::fs::write(&out, &index)?;
    println!("{} ({} bytes)", out.display(), index.len());
    Ok(())
}
