//! Hostile input against the real binary: packages served from a signed repository that
//! ship symlinks where ddslug writes after unpacking, BUILD_DIRs and caches with symlinks
//! planted where the slug or the store goes, symlinks at temp names, and builds killed
//! midway. Each case checks the exit status, the error, that a sentinel directory outside
//! (with known contents) is untouched, and that BUILD_DIR is as it was when the build fails.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{bin_compile, text};
use ddslug_testsupport::agent::{Scale, agent_deb};
use ddslug_testsupport::repo::{RepoSpec, WrittenRepo, sha256_hex, write_repo};
use ddslug_testsupport::{DebSpec, KeyKind, Server, SigningKey};

/// The package every good build here installs.
const GOOD: &str = "1:7.79.0-1";
/// The recipe renames core-agent to agent for this version.
const RENAMING: &str = "1:7.67.0-1";
const DDSLUG: &str = env!("CARGO_BIN_EXE_ddslug");

/// A signed repository of `datadog-agent` packages, served on 127.0.0.1.
struct Repo {
    dir: tempfile::TempDir,
    repo: WrittenRepo,
    keyring: PathBuf,
    server: Server,
}

impl Repo {
    fn serve(debs: Vec<DebSpec>) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyKind::Ed25519, "ddslug hostile tests").unwrap();
        let repo = write_repo(&dir.path().join("repo"), &RepoSpec::new("stable").component("7", debs), &key).unwrap();
        let keyring = dir.path().join("keyring.asc");
        fs::write(&keyring, key.public_armored().unwrap()).unwrap();
        let server = Server::start(&repo.root).unwrap();
        Repo { dir, repo, keyring, server }
    }

    /// A fresh directory named `name` in the test's temp dir.
    fn fresh(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        path
    }

    /// An ENV_DIR for agent `version` from this repository.
    fn env(&self, name: &str, version: &str) -> PathBuf {
        let env = self.fresh(&format!("env-{name}"));
        fs::write(env.join("DD_APT_REPO_URL"), self.server.url()).unwrap();
        fs::write(env.join("DD_APT_KEYRING"), self.keyring.to_str().unwrap()).unwrap();
        fs::write(env.join("DD_AGENT_VERSION"), version.split_once(':').map_or(version, |(_, v)| v)).unwrap();
        env
    }

    /// A BUILD_DIR holding an app and another buildpack's `.apt` file.
    fn app(&self, name: &str) -> PathBuf {
        let build = self.fresh(&format!("build-{name}"));
        fs::write(build.join("Procfile"), "web: ./server\n").unwrap();
        fs::create_dir_all(build.join("datadog/conf.d")).unwrap();
        fs::write(build.join("datadog/conf.d/app.yaml"), "instances: []\n").unwrap();
        fs::create_dir_all(build.join(".apt/usr/bin")).unwrap();
        fs::write(build.join(".apt/usr/bin/other-buildpack-tool"), "x").unwrap();
        build
    }
}

/// A directory outside BUILD_DIR and CACHE_DIR with known contents, shaped like what a
/// hostile symlink would lead writes into.
fn sentinel(base: &Path, name: &str) -> PathBuf {
    let s = base.join(name);
    fs::create_dir_all(s.join("agent")).unwrap();
    fs::write(s.join("agent/core-agent"), "sentinel core-agent").unwrap();
    fs::write(s.join("agent/agent"), "sentinel agent").unwrap();
    fs::write(s.join("victim"), "sentinel victim").unwrap();
    s
}

/// Hands `path` and everything below it to the unprivileged user the builds run as.
fn give_away(path: &Path) {
    std::os::unix::fs::lchown(path, Some(common::UNPRIVILEGED), Some(common::UNPRIVILEGED)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            give_away(&entry.unwrap().path());
        }
    }
}

/// Everything under `dir` (not following symlinks): path → type, mode, size, mtime, and
/// content or link target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_file() {
                format!("file {}", sha256_hex(&fs::read(&path).unwrap()))
            } else {
                "dir".to_string()
            };
            let rel = path.strip_prefix(root).unwrap().to_owned();
            out.insert(rel, format!("{what} mode {:o} size {} mtime {}.{}", meta.mode(), meta.len(), meta.mtime(), meta.mtime_nsec()));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The agent package `version` without anything at or below `drop`, plus `links`.
fn hostile(version: &str, drop: &[&str], links: &[(&str, String)]) -> DebSpec {
    let mut d = agent_deb("datadog-agent", version, Scale::SMALL);
    d.entries.retain(|(p, _)| !drop.iter().any(|u| p == u.as_bytes() || p.starts_with(format!("{u}/").as_bytes())));
    for (path, target) in links {
        d = d.symlink(*path, target.as_str());
    }
    d
}

fn assert_contains(out: &Output, needles: &[&str]) {
    let all = text(out);
    for needle in needles {
        assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
    }
}

/// What `.ddslug-staging.*` entries BUILD_DIR holds.
fn staging_dirs(build: &Path) -> Vec<String> {
    fs::read_dir(build)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ddslug-staging."))
        .collect()
}

#[test]
fn packages_with_a_symlink_where_ddslug_writes_are_refused_and_nothing_outside_changes() {
    let base = tempfile::tempdir().unwrap();
    let s = sentinel(base.path(), "sentinel");
    let (sentinel_agent, victim) = (s.join("agent").display().to_string(), s.join("victim").display().to_string());
    // A relative target that climbs out of wherever the tree is unpacked.
    let climbing = format!("{}{}", "../".repeat(40), sentinel_agent.trim_start_matches('/'));
    let bin_agent = "opt/datadog-agent/bin/agent";
    // (version, what is missing from the package, its symlinks, the symlink named in the error, what ddslug writes there)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("1:7.81.2-1", vec![], vec![("opt/datadog-agent/bin/agent/agent-wrapper", victim.clone())], "opt/datadog-agent/bin/agent/agent-wrapper", "writes opt/datadog-agent/bin/agent/agent-wrapper"),
        ("1:7.81.1-1", vec![bin_agent], vec![(bin_agent, sentinel_agent.clone())], bin_agent, "writes opt/datadog-agent/bin/agent/agent-wrapper"),
        ("1:7.81.0-1", vec!["opt"], vec![("opt", s.display().to_string())], "opt", "writes opt/datadog-agent/bin/agent/agent-wrapper"),
        ("1:7.80.0-1", vec![bin_agent], vec![(bin_agent, climbing.clone())], bin_agent, "writes opt/datadog-agent/bin/agent/agent-wrapper"),
        (RENAMING, vec!["opt/datadog-agent/bin"], vec![("opt/datadog-agent/bin", s.display().to_string())], "opt/datadog-agent/bin", "renames opt/datadog-agent/bin/agent/core-agent to opt/datadog-agent/bin/agent/agent"),
    ];
    let debs = cases.iter().map(|(v, drop, links, ..)| hostile(v, drop, links)).collect();
    let repo = Repo::serve(debs);
    // Heroku builds as a user who is not root: the same builds run as one too, and the
    // sentinel is theirs to write, so that an escape would show.
    if common::running_as_root() {
        give_away(base.path());
    }
    let before = snapshot(base.path());
    for ((version, _, links, link, writes), unprivileged) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
        let name = format!("{version}-{}", if unprivileged { "user" } else { "root" });
        let build = repo.app(&name);
        let app = snapshot(&build);
        let (cache, env) = (repo.fresh(&format!("cache-{name}")), repo.env(&name, version));
        let out = if unprivileged { common::bin_compile_unprivileged(&build, &cache, &env) } else { bin_compile(&build, &cache, &env) };
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let file = format!("datadog-agent_{}_amd64.deb", version.split_once(':').map_or(*version, |(_, v)| v));
        let label = format!("package {file} ships a symlink at {link} (to {})", links[0].1);
        assert_contains(&out, &[&label, writes, "never writes through a symlink"]);
        assert_eq!(snapshot(base.path()), before, "{name}: something outside BUILD_DIR and CACHE_DIR changed");
        assert_eq!(snapshot(&build), app, "{name}: BUILD_DIR changed");
        let tmp: Vec<_> = fs::read_dir(cache.join("ddslug/v1/tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(tmp, ["downloads"], "{name}: staging left in the cache");
    }
}

#[test]
fn build_dir_symlinks_are_refused_or_replaced_never_written_through() {
    let base = tempfile::tempdir().unwrap();
    let s = sentinel(base.path(), "sentinel");
    let repo = Repo::serve(vec![agent_deb("datadog-agent", GOOD, Scale::SMALL)]);
    let cache = repo.fresh("cache");
    let before = snapshot(base.path());
    // `.apt` and `.profile.d` may hold other buildpacks' files: a symlink there is refused.
    for name in [".apt", ".profile.d"] {
        let build = repo.app(name);
        let _ = fs::remove_dir_all(build.join(name));
        symlink(&s, build.join(name)).unwrap();
        let app = snapshot(&build);
        let out = bin_compile(&build, &cache, &repo.env("good", GOOD));
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert_contains(&out, &[&format!("{name} is a symlink (to {})", s.display()), "never writes through a symlink", "Remove the symlink"]);
        assert_eq!(snapshot(base.path()), before, "{name}: the symlink's target changed");
        assert_eq!(snapshot(&build), app, "{name}: BUILD_DIR changed");
    }
    // `.ddslug` is ours alone, and a symlink inside `.apt` is another buildpack's entry where
    // the agent's directory goes: both are replaced, the links themselves.
    let build = repo.app("replaced");
    symlink(&s, build.join(".ddslug")).unwrap();
    symlink(&s, build.join(".apt/opt")).unwrap();
    let out = bin_compile(&build, &cache, &repo.env("good", GOOD));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(base.path()), before, "the symlinks' target changed");
    for dir in [".ddslug", ".apt/opt"] {
        assert!(fs::symlink_metadata(build.join(dir)).unwrap().is_dir(), "{dir} is not a directory now");
    }
    assert!(build.join(".ddslug/manifest.json").is_file() && build.join(".apt/opt/datadog-agent/bin/agent/agent-wrapper").is_file());
    assert!(build.join(".apt/usr/bin/other-buildpack-tool").is_file(), "another buildpack's file was lost");
}

#[test]
fn cache_symlinks_are_replaced_never_followed() {
    let base = tempfile::tempdir().unwrap();
    let s = sentinel(base.path(), "sentinel");
    let repo = Repo::serve(vec![agent_deb("datadog-agent", GOOD, Scale::SMALL)]);
    let published = repo.repo.deb("datadog-agent", GOOD).unwrap();
    // A damaged cache: store directories and a partial download that are symlinks.
    let cache = repo.fresh("cache");
    let v1 = cache.join("ddslug/v1");
    fs::create_dir_all(v1.join("tmp/downloads")).unwrap();
    symlink(&s, v1.join("layers")).unwrap();
    symlink(&s, v1.join("indexes")).unwrap();
    symlink(s.join("victim"), v1.join(format!("tmp/downloads/{}.part", published.sha256))).unwrap();
    let before = snapshot(base.path());
    let build = repo.app("cache");
    let out = bin_compile(&build, &cache, &repo.env("good", GOOD));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(base.path()), before, "a write followed a symlink in the cache");
    for dir in ["layers", "indexes"] {
        assert!(fs::symlink_metadata(v1.join(dir)).unwrap().is_dir(), "{dir} was not replaced by a directory");
    }
    let blob = v1.join("blobs/sha256").join(&published.sha256);
    assert!(fs::symlink_metadata(&blob).unwrap().is_file());
    assert_eq!(sha256_hex(&fs::read(&blob).unwrap()), published.sha256);

    // gc deletes in the store, not where a symlink in it points.
    let old = base.path().join("old-layers");
    let key = "ab".repeat(32);
    fs::create_dir_all(old.join(&key)).unwrap();
    fs::write(old.join(&key).join("file"), "x").unwrap();
    fs::write(old.join(format!("{key}.json")), "{}").unwrap();
    filetime::set_file_mtime(old.join(format!("{key}.json")), filetime::FileTime::from_unix_time(1_000_000_000, 0)).unwrap();
    fs::remove_dir_all(v1.join("layers")).unwrap();
    symlink(&old, v1.join("layers")).unwrap();
    let before = snapshot(base.path());
    let out = Command::new(DDSLUG).args(["gc", "--days", "1", "--delete", "--cache"]).arg(&cache).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(base.path()), before, "gc deleted through a symlink");
}

/// Plants symlinks to `target` at `dir/<prefix><pid>` for the next pids, runs `cmd`, and
/// returns its output and the planted path of its pid, once a run got a planted pid (the
/// kernel hands out pids in order; other processes may take some in between).
fn run_with_planted_pids(dir: &Path, prefix: &str, target: &Path, mut cmd: impl FnMut() -> Command) -> (Output, PathBuf) {
    for _ in 0..5 {
        let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
        let planted = last + 1..=last + 300;
        for pid in planted.clone() {
            let _ = symlink(target, dir.join(format!("{prefix}{pid}")));
        }
        let child = cmd().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        if planted.contains(&pid) {
            return (out, dir.join(format!("{prefix}{pid}")));
        }
    }
    panic!("no run of the command got a planted pid");
}

#[test]
fn temp_paths_are_unpredictable_and_planted_symlinks_are_not_followed() {
    let base = tempfile::tempdir().unwrap();
    let s = sentinel(base.path(), "sentinel");
    let repo = Repo::serve(vec![agent_deb("datadog-agent", GOOD, Scale::SMALL)]);
    let tmpdir = base.path().join("tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    let env = repo.env("good", GOOD);

    // `ddslug lock` resolves in a scratch store in $TMPDIR.
    let before = snapshot(&s);
    let (out, planted) = run_with_planted_pids(&tmpdir, "ddslug-resolve.", &s, || {
        let mut cmd = Command::new(DDSLUG);
        cmd.args(["lock", "--env-dir"]).arg(&env).env("TMPDIR", &tmpdir);
        cmd
    });
    assert!(out.status.success(), "{}", text(&out));
    assert_contains(&out, &["\"sha256\""]);
    assert_eq!(snapshot(&s), before, "lock wrote through {}", planted.display());

    // `verify --rebuild` rebuilds in a scratch store in $TMPDIR.
    // (No other buildpack's file in `.apt`: verify counts it as added.)
    let build = repo.fresh("build-verify");
    let cache = repo.fresh("cache");
    let out = bin_compile(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    let (out, planted) = run_with_planted_pids(&tmpdir, "ddslug-rebuild.", &s, || {
        let mut cmd = Command::new(DDSLUG);
        cmd.arg("verify").arg(&build).args(["--rebuild", "--offline", "--cache"]).arg(&cache).env("TMPDIR", &tmpdir);
        cmd
    });
    assert!(out.status.success(), "{}", text(&out));
    assert!(fs::symlink_metadata(&planted).is_ok_and(|m| m.file_type().is_symlink()), "verify --rebuild used {}", planted.display());
    assert_eq!(snapshot(&s), before, "verify --rebuild wrote through {}", planted.display());

    // `download --out` puts its temp file beside the result.
    let out_dir = repo.fresh("out");
    let name = "datadog-agent_7.79.0-1_amd64.deb";
    symlink(s.join("victim"), out_dir.join(format!("{name}.tmp"))).unwrap();
    let out = Command::new(DDSLUG)
        .args(["download", "--repo", &repo.server.url(), "--suite", "stable", "--component", "7", "--keyring"])
        .arg(&repo.keyring)
        .arg("--out")
        .arg(&out_dir)
        .arg("--cache")
        .arg(&cache)
        .arg(format!("datadog-agent={GOOD}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&s), before, "download wrote through its temp file's symlink");
    let published = repo.repo.deb("datadog-agent", GOOD).unwrap();
    assert_eq!(sha256_hex(&fs::read(out_dir.join(name)).unwrap()), published.sha256);
}

#[test]
fn staging_left_by_a_dead_build_is_removed_and_a_live_one_kept() {
    let repo = Repo::serve(vec![agent_deb("datadog-agent", GOOD, Scale::SMALL)]);
    let cache = repo.fresh("cache");
    let env = repo.env("good", GOOD);
    let build = repo.app("planted");
    // An older ddslug's name for a dead build's staging, with a read-only directory inside.
    let dead = build.join(".ddslug-staging.4194301");
    fs::create_dir_all(dead.join("apt/opt")).unwrap();
    fs::write(dead.join("apt/opt/file"), "x").unwrap();
    fs::set_permissions(dead.join("apt"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    // A live build's, locked by this process.
    let live = build.join(".ddslug-staging.live0123456");
    fs::create_dir_all(&live).unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let out = bin_compile(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_contains(&out, &["removed 1 staging directory left in BUILD_DIR by interrupted builds"]);
    assert_eq!(staging_dirs(&build), [".ddslug-staging.live0123456"]);
    drop(held);
    // A child that another test thread forked while the lock was held keeps a copy of it
    // until it execs: wait until nobody holds it any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rustix::fs::flock(fs::File::open(&live).unwrap(), rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(Instant::now() < deadline, "the live staging directory stayed locked");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = bin_compile(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(staging_dirs(&build).is_empty(), "left: {:?}\n{}", staging_dirs(&build), text(&out));
}

#[test]
fn a_build_killed_during_install_leaves_nothing_the_next_build_keeps() {
    use rustix::fs::inotify;
    let repo = Repo::serve(vec![agent_deb("datadog-agent", GOOD, Scale::SMALL)]);
    let cache = repo.fresh("cache");
    let env = repo.env("good", GOOD);
    // Warm the cache, so that the killed build goes straight to installing.
    let out = bin_compile(&repo.app("warm"), &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    let build = repo.fresh("build-killed");
    let mut left = Vec::new();
    for _ in 0..10 {
        let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(&watch, &build, inotify::WatchFlags::CREATE).unwrap();
        let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"))
            .arg(&build)
            .arg(&cache)
            .arg(&env)
            .env("DDSLUG_BIN", DDSLUG)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // kill -9 as soon as the staging directory appears in BUILD_DIR.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = vec![std::mem::MaybeUninit::uninit(); 4096];
        'wait: while Instant::now() < deadline {
            let mut events = inotify::Reader::new(&watch, &mut buf);
            loop {
                match events.next() {
                    Ok(event) if event.file_name().is_some_and(|n| n.to_bytes().starts_with(b".ddslug-staging.")) => break 'wait,
                    Ok(_) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => panic!("inotify: {e}"),
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let _ = child.kill();
        child.wait().unwrap();
        left = staging_dirs(&build);
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "no run was killed before it finished installing");
    let out = bin_compile(&build, &cache, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(staging_dirs(&build).is_empty(), "left: {:?}", staging_dirs(&build));
    let verified = Command::new(DDSLUG).arg("verify").arg(&build).output().unwrap();
    assert!(verified.status.success(), "{}", text(&verified));
}
