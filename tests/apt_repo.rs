//! The apt client and the `versions` / `download` commands against signed repositories
//! built by the test and served on 127.0.0.1.

use std::path::PathBuf;
use std::process::Command;

use ddslug_testsupport::repo::WrittenRepo;
use ddslug_testsupport::{DebSpec, Fault, IndexForms, KeyKind, RepoSpec, Server, SignMode, SigningKey, write_repo};

struct Fixture {
    dir: tempfile::TempDir,
    repo: WrittenRepo,
    server: Server,
    keyring: PathBuf,
}

fn hello(version: &str) -> DebSpec {
    DebSpec::new("hello", version)
        .file("usr/bin/hello", 0o755, format!("#!/bin/sh\necho hello {version}\n"))
        .file("usr/share/doc/hello/copyright", 0o644, "generated\n")
        .symlink("usr/bin/hi", "hello")
}

fn fixture_with(spec: RepoSpec, kind: KeyKind, armored: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(kind, "ddslug test repo").unwrap();
    let root = dir.path().join("repo");
    let repo = write_repo(&root, &spec, &key).unwrap();
    let keyring = dir.path().join(if armored { "key.asc" } else { "key.gpg" });
    let bytes = if armored { key.public_armored().unwrap() } else { key.public_binary().unwrap() };
    std::fs::write(&keyring, bytes).unwrap();
    let server = Server::start(&root).unwrap();
    Fixture { dir, repo, server, keyring }
}

fn standard_spec() -> RepoSpec {
    RepoSpec::new("stable").component("main", vec![hello("2.10-2"), hello("2.10-3"), hello("1:1.0-1"), hello("2.10~rc1-1")])
}

fn ddslug(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddslug")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn repo_args<'a>(f: &'a Fixture, url: &'a str) -> Vec<&'a str> {
    vec!["--repo", url, "--suite", "stable", "--component", "main", "--keyring", f.keyring.to_str().unwrap()]
}

fn versions(f: &Fixture) -> (bool, String, String) {
    let url = f.server.url();
    let mut args = vec!["versions"];
    args.extend(repo_args(f, &url));
    args.push("hello");
    ddslug(&args)
}

fn download(f: &Fixture, spec: &str) -> (bool, String, String) {
    let url = f.server.url();
    let out = f.dir.path().join("out");
    let cache = f.dir.path().join("cache");
    let mut args = vec!["download"];
    args.extend(repo_args(f, &url));
    args.extend(["--out", out.to_str().unwrap(), "--cache", cache.to_str().unwrap(), spec]);
    ddslug(&args)
}

fn cache_blob(f: &Fixture, sha: &str) -> PathBuf {
    f.dir.path().join("cache/ddslug/v1/blobs/sha256").join(sha)
}

#[test]
fn versions_newest_first_for_each_index_form() {
    let forms = [
        IndexForms { plain: false, gz: false, xz: true },
        IndexForms { plain: false, gz: true, xz: false },
        IndexForms { plain: true, gz: false, xz: false },
    ];
    for form in forms {
        let mut spec = standard_spec();
        spec.forms = form;
        let f = fixture_with(spec, KeyKind::Ed25519, true);
        let (ok, stdout, stderr) = versions(&f);
        assert!(ok, "{form:?}: {stderr}");
        assert_eq!(stdout, "1:1.0-1\n2.10-3\n2.10-2\n2.10~rc1-1\n", "{form:?}");
        let expected = match (form.xz, form.gz) {
            (true, _) => "Packages.xz",
            (_, true) => "Packages.gz",
            _ => "Packages",
        };
        let fetched: Vec<String> = f.server.requests().into_iter().map(|r| r.path).collect();
        assert!(fetched.iter().any(|p| p.ends_with(expected)), "{form:?}: fetched {fetched:?}");
    }
}

#[test]
fn detached_release_gpg_with_rsa_binary_keyring() {
    let mut spec = standard_spec();
    spec.sign = SignMode::Detached;
    let f = fixture_with(spec, KeyKind::Rsa2048, false);
    let (ok, stdout, stderr) = versions(&f);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("1:1.0-1\n"));
    assert_eq!(f.server.count("/dists/stable/InRelease"), 1);
    assert_eq!(f.server.count("/dists/stable/Release.gpg"), 1);
}

#[test]
fn download_verifies_and_lands_in_store() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let (ok, stdout, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    let path = PathBuf::from(stdout.trim());
    let published = f.repo.deb("hello", "2.10-3").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&published.path).unwrap());
    assert!(cache_blob(&f, &published.sha256).exists());
    // The same download again is served from the store.
    let pool = format!("/{}", published.filename);
    let (ok, _, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    assert_eq!(f.server.count(&pool), 1);
}

#[test]
fn unknown_version_lists_available_ones() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let (ok, _, stderr) = download(&f, "hello=9.9-9");
    assert!(!ok);
    assert!(stderr.contains("hello 9.9-9 is not in"), "{stderr}");
    assert!(stderr.contains("1:1.0-1, 2.10-3, 2.10-2, 2.10~rc1-1"), "{stderr}");
}

#[test]
fn tampered_inrelease_is_rejected() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let path = f.repo.root.join("dists/stable/InRelease");
    let text = std::fs::read_to_string(&path).unwrap();
    // Change one character of the signed text, keeping the signature.
    std::fs::write(&path, text.replacen("Suite: stable", "Suite: stabla", 1)).unwrap();
    let (ok, _, stderr) = versions(&f);
    assert!(!ok);
    assert!(stderr.contains("no valid OpenPGP signature"), "{stderr}");
    assert!(stderr.contains("bad signature"), "{stderr}");
}

#[test]
fn signature_from_another_key_is_rejected() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let other = SigningKey::generate(KeyKind::Ed25519, "someone else").unwrap();
    std::fs::write(&f.keyring, other.public_armored().unwrap()).unwrap();
    let (ok, _, stderr) = versions(&f);
    assert!(!ok);
    assert!(stderr.contains("not in the keyring"), "{stderr}");
}

#[test]
fn keyring_with_several_keys() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let other = SigningKey::generate(KeyKind::Ed25519, "another repository").unwrap();
    let mut keyring = other.public_armored().unwrap();
    keyring.extend(std::fs::read(&f.keyring).unwrap());
    std::fs::write(&f.keyring, keyring).unwrap();
    let (ok, stdout, stderr) = versions(&f);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("1:1.0-1\n"));
}

#[test]
fn unsigned_repository_is_rejected() {
    let mut spec = standard_spec();
    spec.sign = SignMode::Unsigned;
    let f = fixture_with(spec, KeyKind::Ed25519, true);
    let (ok, _, stderr) = versions(&f);
    assert!(!ok);
    assert!(stderr.contains("is not signed"), "{stderr}");
}

#[test]
fn expired_valid_until_is_an_error() {
    let mut spec = standard_spec();
    spec.valid_until = Some(ddslug_testsupport::timefmt::now_unix() - 3600);
    let f = fixture_with(spec, KeyKind::Ed25519, true);
    let (ok, _, stderr) = versions(&f);
    assert!(!ok);
    assert!(stderr.to_lowercase().contains("expired"), "{stderr}");
}

#[test]
fn packages_hash_mismatch_is_an_error() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let path = f.repo.root.join("dists/stable/main/binary-amd64/Packages.xz");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (ok, _, stderr) = versions(&f);
    assert!(!ok);
    assert!(stderr.contains("Packages.xz served"), "{stderr}");
    assert!(stderr.contains("signed Release promises"), "{stderr}");
}

#[test]
fn deb_hash_mismatch_deletes_the_download() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let published = f.repo.deb("hello", "2.10-2").unwrap();
    let mut bytes = std::fs::read(&published.path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&published.path, &bytes).unwrap();
    let (ok, _, stderr) = download(&f, "hello=2.10-2");
    assert!(!ok);
    assert!(stderr.contains(&published.filename), "{stderr}");
    assert!(stderr.contains(&published.sha256), "{stderr}");
    assert!(!cache_blob(&f, &published.sha256).exists());
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path().join("cache/ddslug/v1/tmp/downloads")).unwrap().collect();
    assert!(leftovers.is_empty(), "partial download kept: {leftovers:?}");
    assert!(!f.dir.path().join("out/hello_2.10-2_amd64.deb").exists());
}

#[test]
fn dropped_connection_resumes_with_range() {
    let big = DebSpec::new("hello", "3.0-1");
    // Incompressible content so that the .deb is large enough to cut in the middle.
    let big = big.file("usr/lib/hello/blob.bin", 0o644, ddslug_testsupport::agent::noise(1, 400_000));
    let f = fixture_with(RepoSpec::new("stable").component("main", vec![big]), KeyKind::Ed25519, true);
    let published = f.repo.deb("hello", "3.0-1").unwrap();
    let pool = format!("/{}", published.filename);
    f.server.inject(&pool, Fault::DropAfter(150_000));
    let (ok, stdout, stderr) = download(&f, "hello=3.0-1");
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(stdout.trim()).unwrap(), std::fs::read(&published.path).unwrap());
    let requests: Vec<_> = f.server.requests().into_iter().filter(|r| r.path == pool).collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range_start, Some(150_000));
    assert_eq!(requests[1].status, 206);
}

#[test]
fn server_errors_are_retried() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    f.server.inject("/dists/stable/InRelease", Fault::Status(500));
    let published = f.repo.deb("hello", "2.10-3").unwrap();
    let pool = format!("/{}", published.filename);
    f.server.inject(&pool, Fault::Status(503));
    f.server.inject(&pool, Fault::Status(502));
    let (ok, _, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    assert_eq!(f.server.count("/dists/stable/InRelease"), 2);
    assert_eq!(f.server.count(&pool), 3);
}

#[test]
fn range_ignored_by_server_starts_over() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let published = f.repo.deb("hello", "2.10-3").unwrap();
    let pool = format!("/{}", published.filename);
    f.server.inject(&pool, Fault::DropAfter(200));
    f.server.inject(&pool, Fault::IgnoreRange);
    let (ok, stdout, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(stdout.trim()).unwrap(), std::fs::read(&published.path).unwrap());
}

#[test]
fn unreachable_repository_names_the_url() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut args = vec!["versions"];
    args.extend(repo_args(&f, &url));
    args.push("hello");
    let (ok, _, stderr) = ddslug(&args);
    assert!(!ok);
    assert!(stderr.contains(&format!("{url}/dists/stable/InRelease")), "{stderr}");
    // One clear line of error, after a note for each retry.
    let (notes, error) = stderr.trim().rsplit_once('\n').unwrap_or(("", stderr.trim()));
    assert!(error.starts_with("ddslug: error: ") && error.contains("after 5 attempts"), "{stderr}");
    assert_eq!(notes.lines().filter(|l| l.contains("; retrying in ")).count(), 4, "{stderr}");
}

#[test]
fn datadog_default_keys_must_carry_a_pinned_fingerprint() {
    // A key server that hands out a key which is not one of Datadog's: refused.
    let dir = tempfile::tempdir().unwrap();
    let impostor = SigningKey::generate(KeyKind::Ed25519, "not datadog").unwrap();
    std::fs::write(dir.path().join("DATADOG_APT_KEY_CURRENT.public"), impostor.public_armored().unwrap()).unwrap();
    let server = Server::start(dir.path()).unwrap();
    let fetcher = ddslug::fetch::Fetcher::new(ddslug::fetch::FetchOptions::default());
    let err = ddslug::apt::datadog_keys::datadog_keyring(&fetcher, &server.url()).unwrap_err().to_string();
    assert!(err.contains("has a pinned Datadog fingerprint"), "{err}");
    assert!(err.contains(&impostor.fingerprint()), "{err}");
    assert!(err.contains("DD_APT_KEYRING"), "{err}");
}

#[test]
fn a_broken_index_download_resumes_where_it_broke() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let index = "/dists/stable/main/binary-amd64/Packages.xz";
    let size = std::fs::metadata(f.repo.root.join(index.trim_start_matches('/'))).unwrap().len();
    // Broken half-way: resumed with a range. Broken again, the range ignored: the bytes
    // already read are skipped in the full body that comes back.
    f.server.inject(index, Fault::DropAfter(size / 2));
    f.server.inject(index, Fault::DropAfter(size / 4));
    f.server.inject(index, Fault::IgnoreRange);
    let (ok, stdout, stderr) = versions(&f);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "1:1.0-1\n2.10-3\n2.10-2\n2.10~rc1-1\n");
    let ranges: Vec<_> = f.server.requests().into_iter().filter(|r| r.path == index).map(|r| (r.range_start, r.status)).collect();
    assert_eq!(ranges, [(None, 200), (Some(size / 2), 206), (Some(size / 2 + size / 4), 200)]);
}

#[test]
fn a_cause_is_printed_once() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let missing = f.dir.path().join("no-such-keyring.asc");
    let url = f.server.url();
    let mut args = vec!["versions", "--repo", &url, "--suite", "stable", "--component", "main", "--keyring", missing.to_str().unwrap()];
    args.push("hello");
    let (ok, _, stderr) = ddslug(&args);
    assert!(!ok);
    assert!(stderr.contains("cannot read keyring"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

#[test]
fn a_redirect_that_fails_names_the_url_that_failed_and_where_it_came_from() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let published = f.repo.deb("hello", "2.10-3").unwrap();
    let pool = format!("/{}", published.filename);
    let origin = format!("{}{pool}", f.server.url());
    f.server.inject(&pool, Fault::Redirect("/moved/hello.deb".into()));
    let (ok, _, stderr) = download(&f, "hello=2.10-3");
    assert!(!ok);
    let target = format!("{}/moved/hello.deb", f.server.url());
    assert!(stderr.contains(&format!("{target} (redirected from {origin}): server answered HTTP 404")), "{stderr}");

    // A redirect to a copy that exists works; one that loops is given up, naming the loop.
    let copy = f.repo.root.join("mirror2").join(&published.filename);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&published.path, &copy).unwrap();
    f.server.inject(&pool, Fault::Redirect(format!("{}/mirror2/{}", f.server.url(), published.filename)));
    let (ok, stdout, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(stdout.trim()).unwrap(), std::fs::read(&published.path).unwrap());

    let other = f.repo.deb("hello", "2.10-2").unwrap();
    let pool2 = format!("/{}", other.filename);
    for _ in 0..20 {
        f.server.inject(&pool2, Fault::Redirect(pool2.clone()));
    }
    let (ok, _, stderr) = download(&f, "hello=2.10-2");
    assert!(!ok);
    assert!(stderr.contains("more than 10 redirects"), "{stderr}");
}

#[test]
fn a_corrupted_partial_download_is_discarded_and_fetched_again() {
    let f = fixture_with(standard_spec(), KeyKind::Ed25519, true);
    let published = f.repo.deb("hello", "2.10-3").unwrap();
    // An earlier run left half the file, with one byte changed (a disk or a proxy).
    let downloads = f.dir.path().join("cache/ddslug/v1/tmp/downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let mut half = std::fs::read(&published.path).unwrap();
    half.truncate(half.len() / 2);
    half[10] ^= 0xff;
    std::fs::write(downloads.join(format!("{}.part", published.sha256)), &half).unwrap();
    let (ok, stdout, stderr) = download(&f, "hello=2.10-3");
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(stdout.trim()).unwrap(), std::fs::read(&published.path).unwrap());
    assert!(stderr.contains("the partial download kept from an earlier run"), "{stderr}");
    assert!(stderr.contains("was bad; discarded it"), "{stderr}");
    assert!(!stderr.contains("mirror"), "the mirror is not to blame: {stderr}");
    let pool = format!("/{}", published.filename);
    let ranges: Vec<_> = f.server.requests().into_iter().filter(|r| r.path == pool).map(|r| r.range_start).collect();
    assert_eq!(ranges, [Some(half.len() as u64), None]);
}
