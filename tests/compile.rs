//! `bin/compile` end to end against a served, signed agent repository: the same `.apt` tree
//! as the classic buildpack for every settings case, the layer cache, and bad input.

mod common;

use std::fs;
use std::path::Path;

use common::{CASES, Served, bin_compile, bin_compile_unprivileged, bin_compile_unprivileged_with, expected_path, normalized_tree, text};
use ddslug::slug::manifest::read_manifest;
use ddslug::store::treehash::{TreeEntry, diff, scan_tree};

/// Every settings case, built as a user who is not root (as on Heroku).
#[test]
fn same_tree_as_the_classic_buildpack_for_every_case() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let mut block_reads = 0;
    for (case, settings) in CASES {
        let build = served.build_dir(case);
        let env = served.env_dir(case, settings);
        let out = bin_compile_unprivileged(&build, &cache, &env);
        assert!(out.status.success(), "{case}: {}", text(&out));
        // The test packages are multi-block xz, as dpkg-deb writes them: read block by block.
        block_reads += usize::from(text(&out).contains(" xz blocks"));
        let expected: Vec<TreeEntry> = serde_json::from_str(&fs::read_to_string(expected_path(case)).unwrap()).unwrap();
        let ours = normalized_tree(&build.join(".apt"));
        let d = diff(&expected, &ours);
        assert!(d.is_empty(), "{case}: differs from the classic buildpack: {d:#?}");
        assert_no_broken_symlinks(&build.join(".apt"), &build.join(".apt/opt/datadog-agent"));
        assert!(build.join(".apt/opt/datadog-agent/bin/agent/agent-wrapper").exists());
        assert!(build.join(".profile.d/datadog.sh").exists());
        assert!(build.join(".ddslug/bin/ddslug").exists());
        let manifest = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
        let actual = scan_tree(&build.join(".apt")).unwrap();
        assert_eq!(manifest.tree_hash, actual.hash, "{case}: manifest tree hash");
        assert_eq!(manifest.files, actual.files);
    }
    assert!(block_reads > 0, "no layer was unpacked through the xz block reader");
}

/// Every symlink under `dir` resolves, reading absolute targets relative to `apt` (the slug
/// root the dyno sees as `/app/.apt`) as well as literally.
fn assert_no_broken_symlinks(apt: &Path, dir: &Path) {
    for entry in scan_tree(dir).unwrap().entries {
        if let ddslug::store::treehash::EntryKind::Symlink { target } = &entry.kind {
            let link = dir.join(&entry.path);
            assert!(
                fs::metadata(&link).is_ok(),
                "broken symlink {} -> {target} under {}",
                entry.path,
                apt.display()
            );
        }
    }
}

#[test]
fn manifest_records_exact_inputs_and_pkgconfig_resolves() {
    let served = Served::start();
    let build = served.build_dir("m");
    let env = served.env_dir("m", &[]);
    let out = bin_compile(&build, &served.dir.path().join("cache"), &env);
    assert!(out.status.success(), "{}", text(&out));
    let m = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
    let published = served.fixture.repo.deb("datadog-heroku-agent", "1:7.81.2-1").unwrap();
    let p = &m.lock.packages[0];
    assert_eq!((p.name.as_str(), p.version.as_str()), ("datadog-heroku-agent", "1:7.81.2-1"));
    assert_eq!((p.filename.as_str(), p.size, p.sha256.hex()), (published.filename.as_str(), published.size, published.sha256.clone()));
    assert_eq!(m.lock.repository, served.server.url());
    assert_eq!((m.lock.suite.as_str(), m.lock.component.as_str()), ("stable", "7"));
    assert_eq!(m.lock.signed_by, served.fixture.key.fingerprint());
    assert_eq!(m.stack.as_deref(), Some("heroku-24"));
    assert_eq!(m.lock.options.python, 3);
    assert_eq!(m.pkgconfig, vec!["opt/datadog-agent/embedded/lib/pkgconfig/libffi.pc"]);
    // pkg-config resolves the prefix to the installed location, wherever BUILD_DIR is.
    let pc_dir = build.join(".apt/opt/datadog-agent/embedded/lib/pkgconfig");
    let out = std::process::Command::new("pkg-config")
        .args(["--variable=prefix", "libffi"])
        .env("PKG_CONFIG_LIBDIR", &pc_dir)
        .output();
    if let Ok(out) = out {
        assert!(out.status.success(), "{}", text(&out));
        let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(fs::canonicalize(&prefix).unwrap(), fs::canonicalize(build.join(".apt/opt/datadog-agent/embedded")).unwrap());
    } else {
        let pc = fs::read_to_string(pc_dir.join("libffi.pc")).unwrap();
        assert!(pc.starts_with("prefix=${pcfiledir}/../..\n"), "{pc}");
    }
}

/// Cold then warm, as a user who is not root; then as root on the same cache.
#[test]
fn warm_compile_downloads_and_unpacks_nothing() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("w", &[]);
    let first = served.build_dir("w1");
    let out = bin_compile_unprivileged(&first, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Building layer"));
    let requests = served.server.requests().len();
    let second = served.build_dir("w2");
    let out = bin_compile_unprivileged(&second, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Reusing layer"), "{}", text(&out));
    assert!(text(&out).contains("nothing to download or unpack"), "{}", text(&out));
    assert_eq!(served.server.requests().len(), requests, "the warm compile made HTTP requests");
    assert_eq!(scan_tree(&first.join(".apt")).unwrap().hash, scan_tree(&second.join(".apt")).unwrap().hash);
    // ENV_DIR is optional: settings may come from the environment alone.
    let third = served.build_dir("w3");
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"))
        .arg(&third)
        .arg(&cache)
        .env("DDSLUG_BIN", env!("CARGO_BIN_EXE_ddslug"))
        .env("STACK", "heroku-24")
        .env("DD_APT_REPO_URL", fs::read_to_string(env.join("DD_APT_REPO_URL")).unwrap())
        .env("DD_APT_KEYRING", fs::read_to_string(env.join("DD_APT_KEYRING")).unwrap())
        .env_remove("DD_AGENT_VERSION")
        .env_remove("DD_AGENT_MAJOR_VERSION")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Reusing layer"), "{}", text(&out));
    assert_eq!(scan_tree(&third.join(".apt")).unwrap().hash, scan_tree(&first.join(".apt")).unwrap().hash);
}

#[test]
fn changing_inputs_in_any_order_never_reuses_a_stale_layer() {
    let served = Served::start();
    let cache = served.dir.path().join("cache");
    let a = served.env_dir("a", &[]);
    let b = served.env_dir("b", &[("DD_APM_ENABLED", "false")]);
    let c = served.env_dir("c", &[("DD_AGENT_VERSION", "7.67.0-1")]);
    let mut hashes = Vec::new();
    for (i, env) in [&a, &b, &c, &a, &c, &b].iter().enumerate() {
        let build = served.build_dir(&format!("o{i}"));
        let out = bin_compile(&build, &cache, env);
        assert!(out.status.success(), "{}", text(&out));
        hashes.push(scan_tree(&build.join(".apt")).unwrap().hash);
        let trace = build.join(".apt/opt/datadog-agent/embedded/bin/trace-agent").exists();
        assert_eq!(trace, env.as_path() != b.as_path(), "trace-agent presence in step {i}");
    }
    assert_eq!(hashes[0], hashes[3]);
    assert_eq!(hashes[2], hashes[4]);
    assert_eq!(hashes[1], hashes[5]);
    assert!(hashes[0] != hashes[1] && hashes[1] != hashes[2] && hashes[0] != hashes[2]);
}

/// BUILD_DIR with an app file and an `.apt` from another buildpack, and its tree hash.
fn app_build_dir(served: &Served, name: &str) -> (std::path::PathBuf, ddslug::store::treehash::TreeHash) {
    let build = served.build_dir(name);
    fs::write(build.join("Procfile"), "web: ./server\n").unwrap();
    fs::create_dir_all(build.join(".apt/usr/bin")).unwrap();
    fs::write(build.join(".apt/usr/bin/other-buildpack-tool"), "x").unwrap();
    let hash = scan_tree(&build).unwrap().hash;
    (build, hash)
}

fn assert_fails_cleanly(served: &Served, name: &str, settings: &[(&str, &str)], expect: &[&str]) {
    let cache = served.dir.path().join("cache");
    let (build, before) = app_build_dir(served, name);
    let env = served.env_dir(name, settings);
    let out = bin_compile(&build, &cache, &env);
    assert!(!out.status.success(), "{name}: should fail");
    let output = text(&out);
    for needle in expect {
        assert!(output.contains(needle), "{name}: expected {needle:?} in:\n{output}");
    }
    assert_eq!(scan_tree(&build).unwrap().hash, before, "{name}: BUILD_DIR changed");
    // The cache is still usable by a good build.
    let good = served.build_dir(&format!("{name}-after"));
    let out = bin_compile(&good, &cache, &served.env_dir("good", &[]));
    assert!(out.status.success(), "{name}: next build failed: {}", text(&out));
}

#[test]
fn bad_settings_fail_clearly_and_change_nothing() {
    let served = Served::start();
    assert_fails_cleanly(
        &served,
        "unknown-version",
        &[("DD_AGENT_VERSION", "7.99.0-1")],
        &["7.99.0-1 is not in", "Available Heroku versions", "1:7.81.2-1, 1:7.50.0-1", "1:7.81.2-1, 1:7.68.0-1, 1:7.67.0-1"],
    );
    assert_fails_cleanly(&served, "bad-python", &[("DD_AGENT_MAJOR_VERSION", "6"), ("DD_PYTHON_VERSION", "4")], &["DD_PYTHON_VERSION", "expected 2 or 3"]);
    assert_fails_cleanly(&served, "bad-major", &[("DD_AGENT_MAJOR_VERSION", "8")], &["DD_AGENT_MAJOR_VERSION", "expected 6 or 7"]);
    assert_fails_cleanly(&served, "bad-bool", &[("DD_APM_ENABLED", "maybe")], &["DD_APM_ENABLED", "true or false"]);
}

#[test]
fn repository_faults_fail_clearly_and_change_nothing() {
    let served = Served::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = format!("http://127.0.0.1:{port}");
    assert_fails_cleanly(&served, "unreachable", &[("DD_APT_REPO_URL", &dead)], &[&dead, "InRelease"]);

    let other = ddslug_testsupport::SigningKey::generate(ddslug_testsupport::KeyKind::Ed25519, "other").unwrap();
    let wrong_keyring = served.dir.path().join("wrong.asc");
    fs::write(&wrong_keyring, other.public_armored().unwrap()).unwrap();
    assert_fails_cleanly(
        &served,
        "wrong-key",
        &[("DD_APT_KEYRING", wrong_keyring.to_str().unwrap())],
        &["no valid OpenPGP signature", "not in the keyring"],
    );

    // The pinned 7.67 .deb now has different bytes than the signed index promises.
    let published = served.fixture.repo.deb("datadog-agent", "1:7.67.0-1").unwrap();
    let mut bytes = fs::read(&published.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&published.path, &bytes).unwrap();
    assert_fails_cleanly(&served, "corrupt-deb", &[("DD_AGENT_VERSION", "7.67.0-1")], &[&published.filename, &published.sha256, "deleted"]);
}

/// Names and link targets that are not UTF-8 go through the whole build as bytes: the layer,
/// its index (the warm build links from it), the slug, tree.json, verify and diff.
#[test]
fn names_that_are_not_utf8_survive_cold_and_warm_builds_verify_and_diff() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let served = Served::with_agent(|deb| {
        deb.file(b"opt/datadog-agent/share/a\xe9", 0o644, "latin-1")
            .file(b"opt/datadog-agent/share/a\xff", 0o644, "lone ff")
            .file(b"opt/datadog-agent/share/d\xe9/inside", 0o644, "below")
            .symlink(b"opt/datadog-agent/share/l\xfe", b"a\xe9")
    });
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("bytes", &[]);
    let (cold, warm) = (served.build_dir("cold"), served.build_dir("warm"));
    for build in [&cold, &warm] {
        let out = bin_compile(build, &cache, &env);
        assert!(out.status.success(), "{}", text(&out));
    }
    let share = |build: &Path, name: &[u8]| build.join(".apt/opt/datadog-agent/share").join(OsStr::from_bytes(name));
    for build in [&cold, &warm] {
        assert_eq!(fs::read(share(build, b"a\xe9")).unwrap(), b"latin-1");
        assert_eq!(fs::read(share(build, b"a\xff")).unwrap(), b"lone ff");
        assert_eq!(fs::read(share(build, b"d\xe9/inside")).unwrap(), b"below");
        assert_eq!(fs::read_link(share(build, b"l\xfe")).unwrap().as_os_str().as_bytes(), b"a\xe9");
        let manifest = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
        assert_eq!(scan_tree(&build.join(".apt")).unwrap().hash, manifest.tree_hash);
        let listed = fs::read_to_string(build.join(".ddslug/tree.json")).unwrap();
        assert!(listed.contains(r#""path_hex":"6f70742f64617461646f672d6167656e742f73686172652f61ff""#), "{listed}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(build).output().unwrap();
        assert!(out.status.success() && text(&out).contains("identical to its manifest"), "{}", text(&out));
    }
    // A change to a file with such a name is found, and named with escapes.
    fs::write(share(&warm, b"a\xff"), "tampered").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(&warm).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("changed  opt/datadog-agent/share/a\\xff"), "{}", text(&out));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("diff").arg(&cold).arg(&warm).output().unwrap();
    assert!(text(&out).contains("trees identical"), "diff compares the recorded lists: {}", text(&out));
}

/// One raw tar header (no data) with the given name and mode field, checksummed: what a
/// hostile package can hold that no tar writer makes.
fn raw_header(name: &[u8], mode_field: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.as_mut_bytes()[100..100 + mode_field.len()].copy_from_slice(mode_field);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A package the unpacker refuses: the error names the package's file (not the partial
/// download it was unpacked from while it arrived) and shows the package's own bytes escaped,
/// never raw; BUILD_DIR is left as it was.
#[test]
fn unpack_errors_name_the_package_and_escape_its_bytes() {
    let cases = [
        ("a path with `..` and a terminal escape", raw_header(b"./opt/\x1b[2J/../../../escape", b"0000644\0"), "contains `..`"),
        ("a mode field of control bytes", raw_header(b"./opt/datadog-agent/x", b"\x1b[2J\x07\x01"), "mode"),
    ];
    for (case, header, reason) in cases {
        let served = Served::with_agent(|deb| deb.raw_tar(header));
        let (build, before) = app_build_dir(&served, "hostile");
        let out = bin_compile(&build, &served.dir.path().join("cache"), &served.env_dir("hostile", &[]));
        assert!(!out.status.success(), "{case}: should fail");
        let t = text(&out);
        assert!(t.contains("datadog-heroku-agent_7.81.2-1_amd64.deb:") && t.contains(reason), "{case}: {t}");
        assert!(!t.contains(".part"), "{case}: names the partial download: {t}");
        assert!(!out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b), "{case}: raw escape bytes printed: {t}");
        assert!(t.contains("\\x1b[2J"), "{case}: the bytes are shown escaped: {t}");
        assert_eq!(scan_tree(&build).unwrap().hash, before, "{case}: BUILD_DIR changed");
    }
}

/// A kept path that is a hard link to a stripped one: dpkg -x followed by the classic
/// buildpack's `rm` leaves it a regular file with the target's bytes, mode and mtime, so
/// compile must do the same (it refused the package before).
#[test]
fn a_kept_hard_link_to_a_stripped_file_becomes_that_file() {
    use std::os::unix::fs::MetadataExt;
    let (kept, stripped) = ("opt/datadog-agent/bin/gstatus", "opt/datadog-agent/embedded/sbin/gstatus");
    let served = Served::with_agent(|deb| deb.hardlink(kept, stripped));
    // The oracle: dpkg-deb -x of the served package, then the stripped name removed.
    let published = served.fixture.repo.deb("datadog-heroku-agent", "1:7.81.2-1").unwrap();
    let dpkg = served.dir.path().join("dpkg-x");
    assert!(std::process::Command::new("dpkg-deb").arg("-x").arg(&published.path).arg(&dpkg).status().unwrap().success());
    fs::remove_file(dpkg.join(stripped)).unwrap();
    let expected = fs::metadata(dpkg.join(kept)).unwrap();
    assert_eq!(expected.nlink(), 1);
    let cache = served.dir.path().join("cache");
    let env = served.env_dir("link", &[]);
    for name in ["cold", "warm"] {
        let build = served.build_dir(name);
        let out = bin_compile(&build, &cache, &env);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let apt = build.join(".apt");
        assert!(!apt.join(stripped).exists(), "{name}: the stripped name is gone");
        assert_eq!(fs::read(apt.join(kept)).unwrap(), fs::read(dpkg.join(kept)).unwrap(), "{name}: the target's bytes");
        let got = fs::symlink_metadata(apt.join(kept)).unwrap();
        assert!(got.is_file());
        assert_eq!((got.mode(), got.mtime()), (expected.mode(), expected.mtime()), "{name}: the target's mode and mtime");
        let manifest = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
        assert_eq!(scan_tree(&apt).unwrap().hash, manifest.tree_hash, "{name}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(&build).output().unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
}

/// A package with directories its owner may not write (0555) or even read or pass (0000),
/// and a file nobody may read, built as a user who is not root (as Heroku builds run; the
/// suite runs as root, so compile runs through setpriv): dpkg-deb -x manages as that user,
/// and so must compile, cold and warm, linked and copied, with the recipe removing and the
/// wrapper adding files inside such directories. The slug has the package's exact modes;
/// the same build as root gives the same tree.
#[test]
fn directories_without_owner_permissions_build_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    use ddslug_testsupport::Node;
    let served = Served::with_agent(|mut deb| {
        // Read-only directories that the recipe strips inside (share/doc, share/man) and the
        // agent-wrapper is added to (bin/agent): emitted before anything below them.
        for dir in ["opt/datadog-agent/embedded/share", "opt/datadog-agent/bin/agent"] {
            deb.entries.insert(0, (dir.as_bytes().to_vec(), Node::Dir { mode: 0o555 }));
        }
        deb.dir("opt/datadog-agent/locked", 0o000)
            .file("opt/datadog-agent/locked/secret", 0o600, "behind a 0000 directory")
            .dir("opt/datadog-agent/locked/deeper", 0o555)
            .file("opt/datadog-agent/locked/deeper/f", 0o644, "deeper")
            .file("opt/datadog-agent/unreadable", 0o000, "a file no one may read")
    });
    let env = served.env_dir("modes", &[]);
    let cache = served.dir.path().join("cache");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let mut hashes = Vec::new();
    for (name, vars) in [("cold", &[][..]), ("warm", &[]), ("copied", &[("DDSLUG_MATERIALIZE", "copy")])] {
        let build = served.build_dir(name);
        let out = bin_compile_unprivileged_with(&build, &cache, &env, vars);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let dd = build.join(".apt/opt/datadog-agent");
        assert_eq!(mode(&dd.join("locked")), 0o000, "{name}");
        assert_eq!(mode(&dd.join("locked/deeper")), 0o555, "{name}");
        assert_eq!(mode(&dd.join("embedded/share")), 0o555, "{name}");
        assert_eq!(mode(&dd.join("bin/agent")), 0o555, "{name}");
        assert_eq!(mode(&dd.join("unreadable")), 0o000, "{name}");
        assert!(dd.join("bin/agent/agent-wrapper").exists(), "{name}");
        assert!(!dd.join("embedded/share/doc").exists() && !dd.join("embedded/share/man").exists(), "{name}: stripped");
        assert_eq!(fs::read(dd.join("locked/secret")).unwrap(), b"behind a 0000 directory", "{name}");
        let manifest = read_manifest(&build.join(".ddslug/manifest.json")).unwrap();
        let actual = scan_tree(&build.join(".apt")).unwrap().hash;
        assert_eq!(actual, manifest.tree_hash, "{name}: the manifest's tree hash is the slug's");
        hashes.push(actual);
    }
    assert!(text(&bin_compile_unprivileged(&served.build_dir("again"), &cache, &env)).contains("Reusing layer"));
    // As root, from a cache of its own: the same tree.
    let build = served.build_dir("root");
    let out = bin_compile(&build, &served.dir.path().join("root-cache"), &env);
    assert!(out.status.success(), "{}", text(&out));
    hashes.push(scan_tree(&build.join(".apt")).unwrap().hash);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}
