//! Exact rebuilds: lock files, offline builds, verify, diff, gc, and the store under
//! concurrent and interrupted builds.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Served, bin_compile, text};
use ddslug::slug::manifest::{read_lock, read_manifest};
use ddslug::store::treehash::scan_tree;

fn ddslug(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddslug")).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tree_hash(build: &Path) -> ddslug::store::treehash::TreeHash {
    scan_tree(&build.join(".apt")).unwrap().hash
}

#[test]
fn lock_is_stable_checkable_and_pins_compile() {
    let served = Served::start();
    let env = served.env_dir("l", &[("DD_AGENT_VERSION", "7.67.0-1")]);
    let lock_path = served.dir.path().join("ddslug.lock");
    let out = ddslug(&["lock", "--env-dir", s(&env), "--out", s(&lock_path)]);
    assert!(out.status.success(), "{}", text(&out));
    let first = fs::read(&lock_path).unwrap();
    let out = ddslug(&["lock", "--env-dir", s(&env)]);
    assert_eq!(out.stdout, first, "same settings, same lock bytes");
    let lock = read_lock(&lock_path).unwrap();
    let published = served.fixture.repo.deb("datadog-agent", "1:7.67.0-1").unwrap();
    assert_eq!(lock.packages[0].sha256.hex(), published.sha256);
    assert_eq!(lock.signed_by, served.fixture.key.fingerprint());
    assert!(String::from_utf8_lossy(&first).find("\"schema\"") < String::from_utf8_lossy(&first).find("\"packages\""));
    assert!(ddslug(&["lock", "--env-dir", s(&env), "--check", s(&lock_path)]).status.success());
    let other = served.env_dir("l2", &[]);
    let out = ddslug(&["lock", "--env-dir", s(&other), "--check", s(&lock_path)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("out of date"), "{}", text(&out));

    // The app commits the lock: compile installs exactly it, whatever the settings say.
    let build = served.build_dir("locked");
    fs::create_dir_all(build.join("datadog")).unwrap();
    fs::copy(&lock_path, build.join("datadog/ddslug.lock")).unwrap();
    let out = bin_compile(&build, &served.dir.path().join("cache"), &served.env_dir("l3", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Using datadog/ddslug.lock"));
    let manifest = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
    assert_eq!(manifest.lock, lock);

    // The repository now serves other bytes for the locked file: a clear failure.
    let mut bytes = fs::read(&published.path).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 1;
    fs::write(&published.path, bytes).unwrap();
    let build2 = served.build_dir("locked2");
    fs::create_dir_all(build2.join("datadog")).unwrap();
    fs::copy(&lock_path, build2.join("datadog/ddslug.lock")).unwrap();
    let out = bin_compile(&build2, &served.dir.path().join("fresh-cache"), &served.env_dir("l4", &[]));
    assert!(!out.status.success());
    assert!(text(&out).contains(&published.sha256) && text(&out).contains("deleted"), "{}", text(&out));
    assert!(!build2.join(".apt").exists());
}

#[test]
fn offline_builds_from_a_fetched_cache_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (env, cache, reference) = {
        let served = Served::start();
        let env = served.env_dir("o", &[]);
        // Keep what the offline build needs outside the served fixture's directory.
        let env_copy = dir.path().join("env");
        fs::create_dir_all(&env_copy).unwrap();
        let keyring = dir.path().join("keyring.asc");
        fs::copy(&served.fixture.keyring, &keyring).unwrap();
        for e in fs::read_dir(&env).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), env_copy.join(e.file_name())).unwrap();
        }
        fs::write(env_copy.join("DD_APT_KEYRING"), s(&keyring)).unwrap();
        let cache = dir.path().join("cache");
        let out = ddslug(&["fetch", "--env-dir", s(&env_copy), "--cache", s(&cache)]);
        assert!(out.status.success(), "{}", text(&out));
        let build = served.build_dir("online");
        assert!(bin_compile(&build, &dir.path().join("other-cache"), &env_copy).status.success());
        (env_copy, cache, tree_hash(&build))
    };
    // The server is gone now. An offline compile from the fetched cache works...
    fs::write(env.join("DD_OFFLINE"), "true").unwrap();
    let build = dir.path().join("build");
    fs::create_dir_all(&build).unwrap();
    let out = bin_compile(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree_hash(&build), reference, "same tree on another BUILD_DIR and CACHE_DIR");
    // ...and one from an empty cache says what is missing.
    let build2 = dir.path().join("build2");
    fs::create_dir_all(&build2).unwrap();
    let out = bin_compile(&build2, &dir.path().join("empty-cache"), &env);
    assert!(!out.status.success());
    assert!(text(&out).contains("DD_OFFLINE=true") && text(&out).contains("ddslug fetch"), "{}", text(&out));
    // With a lock, the missing item is the blob itself.
    let lock = dir.path().join("ddslug.lock");
    let m = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
    fs::write(&lock, ddslug::slug::manifest::to_json(&m.lock)).unwrap();
    fs::create_dir_all(build2.join("datadog")).unwrap();
    fs::copy(&lock, build2.join("datadog/ddslug.lock")).unwrap();
    let out = bin_compile(&build2, &dir.path().join("empty-cache2"), &env);
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("blob sha256:{}", m.lock.packages[0].sha256)), "{}", text(&out));
}

#[test]
fn verify_lists_differences_and_rebuild_proves_a_purge_changes_nothing() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let build = served.build_dir("v");
    assert!(bin_compile(&build, &cache, &served.env_dir("v", &[])).status.success());
    let out = ddslug(&["verify", s(&build)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("identical to its manifest"));
    let out = ddslug(&["verify", "--rebuild", "--cache", s(&cache), s(&build)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("a cache purge would change nothing"), "{}", text(&out));
    // Without a cache, the blobs are fetched again from the locked repository.
    let out = ddslug(&["verify", "--rebuild", "--json", s(&build)]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rebuild"]["matches"], true);

    let dd = build.join(".apt/opt/datadog-agent");
    fs::write(dd.join("bin/agent/agent"), "tampered").unwrap();
    fs::write(dd.join("extra-file"), "x").unwrap();
    fs::remove_file(dd.join("version-manifest.txt")).unwrap();
    let out = ddslug(&["verify", s(&build)]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("1 added, 1 missing, 1 changed"), "{t}");
    assert!(t.contains("added    opt/datadog-agent/extra-file"), "{t}");
    assert!(t.contains("missing  opt/datadog-agent/version-manifest.txt"), "{t}");
    assert!(t.contains("changed  opt/datadog-agent/bin/agent/agent"), "{t}");
    let out = ddslug(&["verify", "--json", s(&build)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["verify"]["diff"]["added"][0]["path"], "opt/datadog-agent/extra-file");
}

#[test]
fn diff_compares_two_slugs() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let a = served.build_dir("a");
    let b = served.build_dir("b");
    assert!(bin_compile(&a, &cache, &served.env_dir("a", &[])).status.success());
    assert!(bin_compile(&b, &cache, &served.env_dir("b", &[("DD_AGENT_VERSION", "7.67.0-1"), ("DD_APM_ENABLED", "false")])).status.success());
    let out = ddslug(&["diff", s(&a), s(&b)]);
    assert_eq!(out.status.code(), Some(1), "slugs that differ: {}", text(&out));
    let t = text(&out);
    assert!(t.starts_with("packages: datadog-heroku-agent 1:7.81.2-1 -> datadog-agent 1:7.67.0-1\n"), "{t}");
    assert!(t.contains("apm true") && t.contains("apm false"), "{t}");
    assert!(t.contains("  - opt/datadog-agent/embedded/bin/trace-agent"), "{t}");
    let out = ddslug(&["diff", "--json", s(&a), s(&a)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["summary"][0].as_str().unwrap().starts_with("trees identical"));
}

#[test]
fn concurrent_and_killed_compiles_leave_a_usable_cache() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("k", &[]);
    let reference = {
        let build = served.build_dir("ref");
        assert!(bin_compile(&build, &served.dir.path().join("ref-cache"), &env).status.success());
        tree_hash(&build)
    };
    // Two compiles sharing one cache at the same time.
    let spawn = |build: &PathBuf| {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"))
            .args([build, &cache, &env])
            .env("DDSLUG_BIN", env!("CARGO_BIN_EXE_ddslug"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (b1, b2) = (served.build_dir("c1"), served.build_dir("c2"));
    let (mut p1, mut p2) = (spawn(&b1), spawn(&b2));
    assert!(p1.wait().unwrap().success() && p2.wait().unwrap().success());
    assert_eq!((tree_hash(&b1), tree_hash(&b2)), (reference, reference));

    // Killed at several moments (the download is slowed so that some kills land in it).
    let pool = format!("/{}", served.fixture.repo.deb("datadog-heroku-agent", "1:7.81.2-1").unwrap().filename);
    for (i, delay_ms) in [5u64, 30, 80, 150, 300].iter().enumerate() {
        let cache = served.dir.path().join(format!("kill-cache-{i}"));
        served.server.inject(&pool, ddslug_testsupport::Fault::Delay(Duration::from_millis(100)));
        let build = served.build_dir(&format!("killed-{i}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ddslug"))
            .args(["compile", s(&build), s(&cache), s(&env)])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let build = served.build_dir(&format!("after-kill-{i}"));
        let out = bin_compile(&build, &cache, &env);
        assert!(out.status.success(), "after a kill at {delay_ms} ms: {}", text(&out));
        assert_eq!(tree_hash(&build), reference, "after a kill at {delay_ms} ms");
    }
}

#[test]
fn tampered_blobs_and_layers_are_rebuilt_never_shipped() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("t", &[]);
    let build = served.build_dir("t0");
    assert!(bin_compile(&build, &cache, &env).status.success());
    let reference = tree_hash(&build);
    let m = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
    let store = cache.join("ddslug/v1");
    let pool = format!("/{}", m.lock.packages[0].filename);
    let downloads = served.server.count(&pool);
    // A blob whose bytes changed is detected by hash on use and fetched again (another
    // option makes a new layer from the same blob, so the blob is used).
    let blob = store.join("blobs/sha256").join(m.lock.packages[0].sha256.hex());
    let mut perms = fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&blob, perms).unwrap();
    fs::write(&blob, b"not the package").unwrap();
    let b1 = served.build_dir("t1");
    let out = bin_compile(&b1, &cache, &served.env_dir("t-no-apm", &[("DD_APM_ENABLED", "false")]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(served.server.count(&pool), downloads + 1);
    assert!(!b1.join(".apt/opt/datadog-agent/embedded/bin/trace-agent").exists());
    // An in-place edit of a slug file (slugs share inodes with the layer) is caught by its
    // mtime even when the size is unchanged, and the layer is rebuilt.
    let agent = build.join(".apt/opt/datadog-agent/bin/agent/agent");
    let len = fs::metadata(&agent).unwrap().len() as usize;
    fs::write(&agent, vec![b'x'; len]).unwrap();
    let b1 = served.build_dir("t1b");
    let out = bin_compile(&b1, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("changed on disk; rebuilding"), "{}", text(&out));
    assert_eq!(tree_hash(&b1), reference);
    // A layer file whose size changed is caught cheaply on reuse and the layer rebuilt.
    let layer_file = store.join("layers").join(m.layer_key.hex()).join("opt/datadog-agent/bin/agent/agent");
    fs::write(&layer_file, b"short").unwrap();
    let b2 = served.build_dir("t2");
    let out = bin_compile(&b2, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("changed on disk; rebuilding"), "{}", text(&out));
    assert_eq!(tree_hash(&b2), reference);
    // A damaged index of the layer's files means the layer cannot be checked: rebuilt too.
    let record = store.join("layers").join(format!("{}.index", m.layer_key.hex()));
    let mut bytes = fs::read(&record).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&record, bytes).unwrap();
    let b3 = served.build_dir("t3");
    let out = bin_compile(&b3, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no usable index of its files; rebuilding"), "{}", text(&out));
    assert_eq!(tree_hash(&b3), reference);
    let b4 = served.build_dir("t4");
    let out = bin_compile(&b4, &cache, &env);
    assert!(text(&out).contains("Reusing layer"), "the rebuilt layer is reused: {}", text(&out));
    // The slug's entry list is a hard link to the layer's too: edited in place through a
    // slug, it is caught like a layer file, and the next slug still verifies.
    let entries = b4.join(".ddslug/tree.json");
    let stored = store.join("layers").join(format!("{}.tree.json", m.layer_key.hex()));
    assert_eq!(fs::metadata(&entries).unwrap().ino(), fs::metadata(&stored).unwrap().ino());
    let mut listed = fs::read(&entries).unwrap();
    listed[2] ^= 1;
    fs::write(&entries, listed).unwrap();
    let b5 = served.build_dir("t5");
    let out = bin_compile(&b5, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("changed on disk; rebuilding"), "{}", text(&out));
    let out = ddslug(&["verify", s(&b5)]);
    assert!(out.status.success() && text(&out).contains("identical to its manifest"), "{}", text(&out));
}

#[test]
fn gc_dry_runs_then_frees_and_builds_still_work() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("g", &[]);
    assert!(bin_compile(&served.build_dir("g1"), &cache, &env).status.success());
    let out = ddslug(&["gc", "--cache", s(&cache)]);
    assert!(out.status.success());
    assert!(text(&out).contains("would free 0 B in 0 items"), "{}", text(&out));
    let out = ddslug(&["gc", "--cache", s(&cache), "--days", "0"]);
    assert!(text(&out).contains("would free") && text(&out).contains("2 items"), "{}", text(&out));
    assert!(cache.join("ddslug/v1/blobs/sha256").read_dir().unwrap().next().is_some(), "dry run removed nothing");
    let out = ddslug(&["gc", "--cache", s(&cache), "--days", "0", "--delete"]);
    assert!(text(&out).contains("freed"), "{}", text(&out));
    assert!(cache.join("ddslug/v1/blobs/sha256").read_dir().unwrap().next().is_none());
    let out = bin_compile(&served.build_dir("g2"), &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
}
