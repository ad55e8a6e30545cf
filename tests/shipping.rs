//! The buildpack as Heroku gets it from its git URL: a checkout with no `target/` and no
//! cargo on PATH. `bin/compile` downloads the binary `bin/ddslug.release` pins from a release
//! archive served on 127.0.0.1 (packed by `.ci/release pack`, the step `make release` packs
//! with), checks it, caches it, reuses it without a request, and refuses anything else
//! without running it or touching BUILD_DIR; as this user and as uid 65534. Also: release
//! archives are the same bytes wherever they are packed, and the GLIBC check can fail.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Served, text};
use ddslug::hash::Sha256;
use ddslug::store::treehash::{TreeHash, scan_tree};
use ddslug_testsupport::{Fault, Server};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `sh` and bin/compile's download path need; the tests' PATH holds only these.
const TOOLS: &[&str] = &["curl", "timeout", "sha256sum", "tar", "gzip", "uname", "mkdir", "mv", "rm", "chmod"];

fn target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// `tool` from this process's PATH.
fn which(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH (.ci/run installs it: binutils for objcopy/objdump)"))
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn sha256_file(path: &Path) -> String {
    Sha256::of(&fs::read(path).unwrap()).hex()
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

/// In `dir`: the buildpack's scripts as a checkout without target/ (no pin yet), and a PATH
/// directory holding only TOOLS (no cargo).
fn bare_checkout(dir: &Path) -> (PathBuf, PathBuf) {
    let checkout = dir.join("buildpack");
    fs::create_dir_all(checkout.join("bin")).unwrap();
    for script in ["compile", "detect", "release"] {
        fs::copy(Path::new(REPO).join("bin").join(script), checkout.join("bin").join(script)).unwrap();
    }
    let tools = dir.join("tools");
    fs::create_dir(&tools).unwrap();
    for tool in TOOLS {
        std::os::unix::fs::symlink(which(tool), tools.join(tool)).unwrap();
    }
    assert!(!checkout.join("target").exists() && !tools.join("cargo").exists());
    (checkout, tools)
}

/// A buildpack checkout without target/, a release archive of this build's ddslug served
/// on 127.0.0.1, the pin for it in the checkout, and a PATH directory without cargo.
struct Release {
    dir: tempfile::TempDir,
    checkout: PathBuf,
    tools: PathBuf,
    archive: PathBuf,
    /// The archive's URL path on the server.
    url_path: String,
    archive_sha256: String,
    binary_sha256: String,
    server: Server,
}

impl Release {
    fn new() -> Release {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (checkout, tools) = bare_checkout(dir.path());
        // The debug build without its debug info (200 MB to 16 MB): the tests are about the
        // bootstrap, not the optimiser, and a release build costs minutes.
        let binary = dir.path().join("ddslug");
        run_ok(Command::new(which("objcopy")).arg("--strip-debug").arg(env!("CARGO_BIN_EXE_ddslug")).arg(&binary));
        let served = dir.path().join("releases");
        let out_dir = served.join(format!("v{VERSION}"));
        let pin = checkout.join("bin/ddslug.release");
        run_ok(
            Command::new(Path::new(REPO).join(".ci/release"))
                .args(["pack".as_ref(), binary.as_os_str(), VERSION.as_ref(), target().as_ref(), out_dir.as_os_str(), pin.as_os_str()])
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        let name = format!("ddslug-{VERSION}-{}.tar.gz", target());
        let archive = out_dir.join(&name);
        let pin_text = fs::read_to_string(&pin).unwrap();
        let arch = std::env::consts::ARCH;
        let pinned = |key: &str| {
            let prefix = format!("{key}.{arch}=");
            pin_text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{pin_text}")).to_string()
        };
        // The pin names exactly what was packed.
        assert_eq!(pinned("archive"), name);
        assert_eq!(pinned("archive_size"), fs::metadata(&archive).unwrap().len().to_string());
        assert_eq!(pinned("archive_sha256"), sha256_file(&archive));
        assert_eq!(pinned("binary_sha256"), sha256_file(&binary));
        assert!(pin_text.contains("\nurl_base=\n"), "a test pin has no address of its own:\n{pin_text}");
        let server = Server::start(&served).unwrap();
        Release {
            url_path: format!("/v{VERSION}/{name}"),
            archive_sha256: pinned("archive_sha256"),
            binary_sha256: pinned("binary_sha256"),
            dir,
            checkout,
            tools,
            archive,
            server,
        }
    }

    /// Runs the checkout's bin/compile with only `tools` on PATH, as `user` when given.
    fn compile(&self, build: &Path, cache: &Path, env: &Path, user: Option<u32>) -> Output {
        let program = self.checkout.join("bin/compile");
        let mut cmd = match user {
            Some(id) => {
                let mut cmd = Command::new(which("setpriv"));
                cmd.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.arg(build).arg(cache).arg(env).env_clear();
        cmd.env("PATH", &self.tools).env("HOME", self.dir.path()).env("STACK", "heroku-24");
        cmd.output().unwrap()
    }

    fn archive_requests(&self) -> usize {
        self.server.count(&self.url_path)
    }

    fn cached_binary(&self, cache: &Path) -> PathBuf {
        cache.join("ddslug/bin").join(&self.binary_sha256).join("ddslug")
    }
}

/// A directory `user` owns (when root: tests drop to it with setpriv).
fn owned_dir(path: &Path, user: Option<u32>) -> PathBuf {
    let _ = fs::remove_dir_all(path);
    fs::create_dir_all(path).unwrap();
    if let Some(id) = user {
        std::os::unix::fs::chown(path, Some(id), Some(id)).unwrap();
    }
    path.to_owned()
}

/// BUILD_DIR holding an app file, owned by `user`, and its tree hash.
fn app_build_dir(served: &Served, name: &str, user: Option<u32>) -> (PathBuf, TreeHash) {
    let build = owned_dir(&served.dir.path().join(format!("build-{name}")), user);
    fs::write(build.join("Procfile"), "web: ./server\n").unwrap();
    if let Some(id) = user {
        std::os::unix::fs::chown(build.join("Procfile"), Some(id), Some(id)).unwrap();
    }
    let hash = scan_tree(&build).unwrap().hash;
    (build, hash)
}

/// A failed build said all of `expect`, left BUILD_DIR as it was and cached no binary.
fn assert_refused(out: &Output, build: &Path, before: &TreeHash, cache: &Path, expect: &[&str]) {
    let output = text(out);
    assert!(!out.status.success(), "should fail:\n{output}");
    for needle in expect {
        assert!(output.contains(needle), "expected {needle:?} in:\n{output}");
    }
    assert!(!output.contains("Datadog Agent (ddslug"), "ddslug ran:\n{output}");
    assert_eq!(&scan_tree(build).unwrap().hash, before, "BUILD_DIR changed:\n{output}");
    let kept: Vec<_> = fs::read_dir(cache.join("ddslug/bin")).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(kept.is_empty(), "the cache kept {kept:?}:\n{output}");
}

fn download_verify_cache_reuse(user: Option<u32>) {
    let release = Release::new();
    let served = Served::start();
    fs::set_permissions(served.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let url = release.server.url();
    // DDSLUG_RELEASE_URL as a Heroku config var: a file in ENV_DIR.
    let env = served.env_dir("online", &[("DDSLUG_RELEASE_URL", &url)]);
    let offline = served.env_dir("offline", &[("DDSLUG_RELEASE_URL", &url), ("DD_OFFLINE", "true")]);
    let cache = owned_dir(&served.dir.path().join("cache"), user);

    // No address: the pin has none and DDSLUG_RELEASE_URL is unset.
    let (build, before) = app_build_dir(&served, "no-url", user);
    let out = release.compile(&build, &cache, &served.env_dir("no-url", &[]), user);
    assert_refused(&out, &build, &before, &cache, &["DDSLUG_RELEASE_URL is not set", "no url_base", "DDSLUG_BIN"]);
    assert_eq!(release.archive_requests(), 0);

    // A tampered archive (one byte flipped, same size) is refused with both hashes.
    let good = fs::read(&release.archive).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    fs::write(&release.archive, &bad).unwrap();
    let (build, before) = app_build_dir(&served, "tampered", user);
    let out = release.compile(&build, &cache, &env, user);
    let tampered_sha = Sha256::of(&bad).hex();
    assert_refused(&out, &build, &before, &cache, &[&format!("expected {}", release.archive_sha256), &format!("SHA-256 is {tampered_sha}"), "Nothing was run"]);
    assert_eq!(release.archive_requests(), 1);

    // An archive larger than the pinned size stops at the pinned size.
    let mut big = good.clone();
    big.extend_from_slice(&[0; 4096]);
    fs::write(&release.archive, &big).unwrap();
    let (build, before) = app_build_dir(&served, "too-big", user);
    let out = release.compile(&build, &cache, &env, user);
    assert_refused(&out, &build, &before, &cache, &[&format!("larger than the {} bytes", good.len())]);

    // The download limits are package downloads' (DD_DOWNLOAD_*): checked like ddslug
    // checks them, and the overall deadline holds.
    let (build, before) = app_build_dir(&served, "bad-limit", user);
    let out = release.compile(&build, &cache, &served.env_dir("bad-limit", &[("DDSLUG_RELEASE_URL", &url), ("DD_DOWNLOAD_TIMEOUT", "ten")]), user);
    assert_refused(&out, &build, &before, &cache, &["DD_DOWNLOAD_TIMEOUT=\"ten\": expected a whole number of seconds from 1 to 86400"]);
    let (build, before) = app_build_dir(&served, "bad-offline", user);
    let out = release.compile(&build, &cache, &served.env_dir("bad-offline", &[("DDSLUG_RELEASE_URL", &url), ("DD_OFFLINE", "maybe")]), user);
    assert_refused(&out, &build, &before, &cache, &["DD_OFFLINE=\"maybe\": expected true or false"]);
    fs::write(&release.archive, &good).unwrap();
    // A second server, whose stalled requests are logged late: they must not count below.
    let stalled = Server::start(release.archive.parent().unwrap().parent().unwrap()).unwrap();
    for _ in 0..3 {
        stalled.inject(&release.url_path, Fault::Delay(std::time::Duration::from_secs(10)));
    }
    let (build, before) = app_build_dir(&served, "slow", user);
    let slow = served.env_dir("slow", &[("DDSLUG_RELEASE_URL", &stalled.url()), ("DD_DOWNLOAD_TIMEOUT", "2")]);
    let started = std::time::Instant::now();
    let out = release.compile(&build, &cache, &slow, user);
    assert_refused(&out, &build, &before, &cache, &["DD_DOWNLOAD_TIMEOUT=2"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "the deadline did not stop the download");

    // The real archive: downloaded (through a 503 and a connection dropped mid-body, which
    // are retried), checked, cached, run.
    fs::write(&release.archive, &good).unwrap();
    release.server.inject(&release.url_path, Fault::Status(503));
    release.server.inject(&release.url_path, Fault::DropAfter(good.len() as u64 / 3));
    let requests = release.archive_requests() + 2;
    let (first, _) = app_build_dir(&served, "first", user);
    let out = release.compile(&first, &cache, &env, user);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("Verified ddslug {VERSION} (SHA-256 {})", release.binary_sha256)), "{}", text(&out));
    assert_eq!(release.archive_requests(), requests + 1);
    let cached = release.cached_binary(&cache);
    assert_eq!(sha256_file(&cached), release.binary_sha256);
    assert_eq!(fs::metadata(&cached).unwrap().mode() & 0o7777, 0o555);
    // The slug's binary is the one that ran (compile ships itself): the pinned one.
    assert_eq!(sha256_file(&first.join(".ddslug/bin/ddslug")), release.binary_sha256);
    assert!(first.join(".apt/opt/datadog-agent/bin/agent/agent-wrapper").exists());
    assert!(first.join("Procfile").exists());
    let tree = scan_tree(&first.join(".apt")).unwrap().hash;

    // Second build: the cached binary, re-hashed, and no request.
    let (second, _) = app_build_dir(&served, "second", user);
    let out = release.compile(&second, &cache, &env, user);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("from the build cache"), "{}", text(&out));
    assert_eq!(release.archive_requests(), requests + 1, "the second build asked for the archive again");
    assert_eq!(scan_tree(&second.join(".apt")).unwrap().hash, tree);

    // Offline with the cached binary: works, and nothing is asked of either server.
    let (apt_before, release_before) = (served.server.requests().len(), release.server.requests().len());
    let (third, _) = app_build_dir(&served, "offline", user);
    let out = release.compile(&third, &cache, &offline, user);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!((served.server.requests().len(), release.server.requests().len()), (apt_before, release_before));
    assert_eq!(scan_tree(&third.join(".apt")).unwrap().hash, tree);

    // A cached binary that is no longer the pinned one never runs: offline, the build
    // fails naming both hashes; online, it is fetched again.
    let impostor = b"#!/bin/sh\necho impostor ran\nexit 0\n";
    let replace_cached = || {
        let parent = cached.parent().unwrap();
        if !parent.exists() {
            owned_dir(parent, user);
        }
        let staged = cache.join("ddslug/bin/impostor");
        fs::write(&staged, impostor).unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&staged, &cached).unwrap();
    };
    replace_cached();
    let (build, before) = app_build_dir(&served, "impostor-offline", user);
    let out = release.compile(&build, &cache, &offline, user);
    assert_refused(
        &out,
        &build,
        &before,
        &cache,
        &[&format!("has SHA-256 {}, expected {}", Sha256::of(impostor).hex(), release.binary_sha256), "DD_OFFLINE=true", "no ddslug"],
    );
    assert!(!text(&out).contains("impostor ran"));
    replace_cached();
    let (fourth, _) = app_build_dir(&served, "impostor-online", user);
    let out = release.compile(&fourth, &cache, &env, user);
    assert!(out.status.success() && !text(&out).contains("impostor ran"), "{}", text(&out));
    assert_eq!(release.archive_requests(), requests + 2);
    assert_eq!(sha256_file(&cached), release.binary_sha256);
    assert_eq!(scan_tree(&fourth.join(".apt")).unwrap().hash, tree);

    // Offline without a cached binary: a clear failure, no request.
    let empty = owned_dir(&served.dir.path().join("cache-empty"), user);
    let (build, before) = app_build_dir(&served, "offline-empty", user);
    let requests = release.server.requests().len();
    let out = release.compile(&build, &empty, &offline, user);
    assert_refused(&out, &build, &before, &empty, &["DD_OFFLINE=true forbids downloads", "no ddslug", "Build once with network access"]);
    assert_eq!(release.server.requests().len(), requests);
}

#[test]
fn a_checkout_without_target_downloads_verifies_caches_and_reuses_the_pinned_binary() {
    download_verify_cache_reuse(None);
}

#[test]
fn the_same_as_an_unprivileged_user() {
    // CI runs as root: drop to nobody. Run by a user already, this is that user again.
    download_verify_cache_reuse(is_root().then_some(65534));
}

/// The committed pin is one bin/compile reads: run offline from an empty cache, the build
/// gets as far as looking for the pinned binary and says which one.
#[test]
fn the_committed_pin_is_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let (checkout, tools) = bare_checkout(dir.path());
    fs::copy(Path::new(REPO).join("bin/ddslug.release"), checkout.join("bin/ddslug.release")).unwrap();
    for d in ["build", "cache", "env"] {
        fs::create_dir(dir.path().join(d)).unwrap();
    }
    fs::write(dir.path().join("env/DD_OFFLINE"), "true\n").unwrap();
    let out = Command::new(checkout.join("bin/compile"))
        .args(["build", "cache", "env"].map(|d| dir.path().join(d)))
        .env_clear()
        .env("PATH", &tools)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let pin = fs::read_to_string(checkout.join("bin/ddslug.release")).unwrap();
    let version = pin.lines().find_map(|l| l.strip_prefix("version=")).unwrap();
    let expected = match std::env::consts::ARCH {
        "x86_64" => format!("the build cache has no ddslug {version} for x86_64"),
        arch => format!("pins no ddslug binary for this machine's architecture ({arch})"),
    };
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert!(pin.contains("\nurl_template={base}/v{version}/{archive}\n"), "{pin}");
}

#[test]
fn release_archives_are_the_same_bytes_wherever_they_are_packed() {
    let dir = tempfile::tempdir().unwrap();
    let pack = |name: &str, mode: u32| {
        let here = dir.path().join(name);
        fs::create_dir(&here).unwrap();
        // A stand-in binary with its own mtime and mode: neither may reach the archive.
        let binary = here.join("ddslug");
        fs::write(&binary, b"\x7fELF not really, the packer does not care\n".repeat(1000)).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(mode)).unwrap();
        let pin = here.join("ddslug.release");
        run_ok(
            Command::new(Path::new(REPO).join(".ci/release"))
                .args(["pack".as_ref(), binary.as_os_str(), "9.9.9".as_ref(), target().as_ref(), here.join("out").as_os_str(), pin.as_os_str()])
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        let archive = here.join(format!("out/ddslug-9.9.9-{}.tar.gz", target()));
        let sums = fs::read_to_string(archive.with_extension("gz.sha256")).unwrap();
        (sha256_file(&archive), sums, fs::read_to_string(pin).unwrap())
    };
    let a = pack("a", 0o700);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = pack("somewhere-else", 0o775);
    assert_eq!(a, b);
    assert!(a.1.starts_with(&a.0), "{} does not name {}", a.1, a.0);
    assert!(a.2.contains(&format!("archive_sha256.{}={}", std::env::consts::ARCH, a.0)), "{}", a.2);
}

#[test]
fn glibc_check_passes_this_build_and_fails_past_a_limit() {
    let check = Path::new(REPO).join(".ci/glibc-check");
    let binary = env!("CARGO_BIN_EXE_ddslug");
    let out = run_ok(Command::new(&check).arg(binary));
    assert!(text(&out).contains("limit GLIBC_2.35 (heroku-22"), "{}", text(&out));
    // Every x86_64 or aarch64 glibc binary needs at least GLIBC_2.2.5 / 2.17: a limit of 2.2
    // must fail, naming the symbols.
    let out = Command::new(&check).args([binary, "2.2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("newer than GLIBC_2.2:") && text(&out).contains("GLIBC_2.") && text(&out).contains(": "), "{}", text(&out));
}
