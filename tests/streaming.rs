//! A package missing from the cache is unpacked while it downloads: data.tar.gz as a stream,
//! multi-block data.tar.xz block by block as the block headers arrive. The slug must be the
//! same as from a stored blob, also when the connection breaks and the download resumes or
//! starts over, and a body that does not match the signed index must fail the build and
//! store nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{bin_compile, text};
use ddslug::store::treehash::{TreeHash, scan_tree};
use ddslug_testsupport::agent::{Scale, agent_deb};
use ddslug_testsupport::debs::Compression;
use ddslug_testsupport::repo::{PublishedDeb, RepoSpec, write_repo};
use ddslug_testsupport::{Fault, KeyKind, Server, SigningKey};

struct StreamRepo {
    dir: tempfile::TempDir,
    server: Server,
    env: PathBuf,
    deb: PublishedDeb,
}

/// One agent 7 package with data.tar compressed as given, served from a signed repository.
fn repo(compression: Compression) -> StreamRepo {
    let dir = tempfile::tempdir().unwrap();
    let mut deb = agent_deb("datadog-agent", "1:7.81.2-1", Scale::SMALL);
    deb.compression = compression;
    let key = SigningKey::generate(KeyKind::Ed25519, "ddslug streaming test").unwrap();
    let repo = write_repo(&dir.path().join("repo"), &RepoSpec::new("stable").component("7", vec![deb]), &key).unwrap();
    let keyring = dir.path().join("keyring.asc");
    fs::write(&keyring, key.public_armored().unwrap()).unwrap();
    let server = Server::start(&repo.root).unwrap();
    let env = dir.path().join("env");
    fs::create_dir_all(&env).unwrap();
    fs::write(env.join("DD_APT_REPO_URL"), server.url()).unwrap();
    fs::write(env.join("DD_APT_KEYRING"), keyring.to_str().unwrap()).unwrap();
    let deb = repo.deb("datadog-agent", "1:7.81.2-1").unwrap().clone();
    StreamRepo { dir, server, env, deb }
}

impl StreamRepo {
    fn build_dir(&self, name: &str) -> PathBuf {
        let build = self.dir.path().join(format!("build-{name}"));
        fs::create_dir_all(&build).unwrap();
        build
    }

    fn pool(&self) -> String {
        format!("/{}", self.deb.filename)
    }

    /// A cold compile (fresh cache) into a fresh BUILD_DIR: its slug's tree hash.
    fn cold_compile(&self, name: &str, expect_in_output: &[&str]) -> TreeHash {
        let build = self.build_dir(name);
        let out = bin_compile(&build, &self.dir.path().join(format!("cache-{name}")), &self.env);
        assert!(out.status.success(), "{name}: {}", text(&out));
        for expected in expect_in_output {
            assert!(text(&out).contains(expected), "{name}: no {expected:?} in {}", text(&out));
        }
        scan_tree(&build.join(".apt")).unwrap().hash
    }
}

fn blob_path(cache: &Path, sha256: &str) -> PathBuf {
    cache.join("ddslug/v1/blobs/sha256").join(sha256)
}

#[test]
fn streamed_gzip_equals_the_stored_blob_also_across_broken_connections() {
    streamed_equals_the_stored_blob(Compression::Gzip, &[]);
}

#[test]
fn streamed_xz_blocks_equal_the_stored_blob_also_across_broken_connections() {
    streamed_equals_the_stored_blob(Compression::XzMultiBlock, &["xz blocks"]);
}

fn streamed_equals_the_stored_blob(compression: Compression, also_expected: &[&str]) {
    let r = repo(compression);
    let expected = [&["unpacking it as it arrives", "downloaded in"], also_expected].concat();
    let streamed = r.cold_compile("streamed", &expected);
    let cache = r.dir.path().join("cache-streamed");
    assert!(blob_path(&cache, &r.deb.sha256).is_file(), "the download was kept in the store");
    assert_eq!(fs::read_dir(cache.join("ddslug/v1/tmp/downloads")).unwrap().count(), 0, "a partial download was left");

    // The same package, already in the store: unpacked from the verified blob.
    let stored_cache = r.dir.path().join("cache-stored");
    fs::create_dir_all(stored_cache.join("ddslug/v1/blobs/sha256")).unwrap();
    fs::copy(&r.deb.path, blob_path(&stored_cache, &r.deb.sha256)).unwrap();
    let stored_build = r.build_dir("stored");
    let out = bin_compile(&stored_build, &stored_cache, &r.env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already in the cache"), "{}", text(&out));
    assert_eq!(scan_tree(&stored_build.join(".apt")).unwrap().hash, streamed);

    // The connection breaks half-way: the download resumes where it was, the unpacker waits.
    let half = r.deb.size / 2;
    r.server.inject(&r.pool(), Fault::DropAfter(half));
    assert_eq!(r.cold_compile("resumed", &["unpacking it as it arrives"]), streamed);
    let ranges: Vec<_> = r.server.requests().into_iter().filter(|q| q.path == r.pool()).map(|q| q.range_start).collect();
    assert_eq!(ranges.last(), Some(&Some(half)), "{ranges:?}");

    // It breaks, and the server ignores the resume range: the file starts over from byte 0
    // under the unpacker, which must read the new bytes, not stop at the shrunken end.
    r.server.inject(&r.pool(), Fault::DropAfter(half));
    r.server.inject(&r.pool(), Fault::IgnoreRange);
    assert_eq!(r.cold_compile("restarted", &["unpacking it as it arrives"]), streamed);
}

#[test]
fn a_gzip_body_that_does_not_match_fails_the_build_and_stores_nothing() {
    a_body_that_does_not_match_fails_the_build(Compression::Gzip);
}

#[test]
fn an_xz_body_that_does_not_match_fails_the_build_and_stores_nothing() {
    a_body_that_does_not_match_fails_the_build(Compression::XzMultiBlock);
}

fn a_body_that_does_not_match_fails_the_build(compression: Compression) {
    let r = repo(compression);
    // Corrupt a byte in the middle of data.tar: the decompressor may or may not notice (its
    // checks are off while downloading), SHA-256 does.
    let mut bytes = fs::read(&r.deb.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&r.deb.path, &bytes).unwrap();
    let build = r.build_dir("corrupt");
    fs::write(build.join("app.txt"), b"the app's own file").unwrap();
    let cache = r.dir.path().join("cache-corrupt");
    let out = bin_compile(&build, &cache, &r.env);
    assert!(!out.status.success(), "{}", text(&out));
    for expected in [r.deb.filename.as_str(), r.deb.sha256.as_str(), "deleted"] {
        assert!(text(&out).contains(expected), "no {expected:?} in {}", text(&out));
    }
    let left: Vec<_> = fs::read_dir(&build).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["app.txt"], "BUILD_DIR changed");
    let store = cache.join("ddslug/v1");
    assert!(!blob_path(&cache, &r.deb.sha256).exists());
    let layers: Vec<_> = fs::read_dir(store.join("layers")).unwrap().collect();
    assert!(layers.is_empty(), "a layer was stored: {layers:?}");
    assert_eq!(fs::read_dir(store.join("tmp/downloads")).unwrap().count(), 0, "the bad download was kept");
}

#[test]
fn a_slow_download_shows_its_progress_and_a_stalled_one_resumes_under_the_unpacker() {
    let r = repo(Compression::Gzip);
    let stored = r.cold_compile("reference", &[]);
    fs::write(r.env.join("DD_DOWNLOAD_PROGRESS_INTERVAL"), "1").unwrap();
    fs::write(r.env.join("DD_DOWNLOAD_LOW_SPEED_TIME"), "1").unwrap();

    // About three seconds of download: a progress line in the build output every second.
    r.server.inject(&r.pool(), Fault::Trickle(r.deb.size / 3 + 1));
    let build = r.build_dir("slow");
    let out = bin_compile(&build, &r.dir.path().join("cache-slow"), &r.env);
    assert!(out.status.success(), "{}", text(&out));
    let name = r.deb.filename.rsplit('/').next().unwrap();
    let progress = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&format!("       {name}: "))).count();
    assert!(progress >= 2, "expected progress lines in: {}", text(&out));
    assert_eq!(scan_tree(&build.join(".apt")).unwrap().hash, stored);

    // Silent half-way: given up after the low-speed window, resumed, the unpacker waiting.
    let half = r.deb.size / 2;
    r.server.inject(&r.pool(), Fault::StallAfter(half));
    let build = r.build_dir("stalled");
    let out = bin_compile(&build, &r.dir.path().join("cache-stalled"), &r.env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no data for 1 s (DD_DOWNLOAD_LOW_SPEED_TIME)"), "{}", text(&out));
    let ranges: Vec<_> = r.server.requests().into_iter().filter(|q| q.path == r.pool()).map(|q| q.range_start).collect();
    assert_eq!(ranges.last(), Some(&Some(half)), "{ranges:?}");
    assert_eq!(scan_tree(&build.join(".apt")).unwrap().hash, stored);
}

#[test]
fn a_corrupted_partial_download_is_discarded_not_unpacked() {
    let r = repo(Compression::XzMultiBlock);
    let reference = r.cold_compile("reference", &[]);
    // An earlier build left most of the package, with one byte changed in its data.tar.
    let cache = r.dir.path().join("cache-corrupt-part");
    let downloads = cache.join("ddslug/v1/tmp/downloads");
    fs::create_dir_all(&downloads).unwrap();
    let mut part = fs::read(&r.deb.path).unwrap();
    part.truncate(part.len() * 3 / 4);
    let mid = part.len() / 2;
    part[mid] ^= 0x55;
    fs::write(downloads.join(format!("{}.part", r.deb.sha256)), &part).unwrap();
    let build = r.build_dir("corrupt-part");
    let out = bin_compile(&build, &cache, &r.env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the partial download kept from an earlier run"), "{}", text(&out));
    assert!(!text(&out).contains("mirror"), "the mirror is not to blame: {}", text(&out));
    assert_eq!(scan_tree(&build.join(".apt")).unwrap().hash, reference);
    let ranges: Vec<_> = r.server.requests().into_iter().filter(|q| q.path == r.pool()).map(|q| q.range_start).collect();
    assert_eq!(ranges[ranges.len() - 2..], [Some(part.len() as u64), None], "{ranges:?}");
}
