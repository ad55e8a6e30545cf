//! Downloads have deadlines: a connect timeout, a low-speed limit (like curl's
//! --speed-limit/--speed-time) and an overall deadline, each a documented setting; a broken
//! or stalled transfer is retried and resumed, and a long one prints its progress. The
//! settings here are short so that each case takes seconds; nothing asserts on how fast a
//! run was, only on how it ended and what it said (a run still going after two minutes is
//! killed and fails its test: the defect these tests guard against is a download that
//! never ends).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ddslug_testsupport::agent::noise;
use ddslug_testsupport::hostile::{Measured, run_measured};
use ddslug_testsupport::repo::{PublishedDeb, WrittenRepo};
use ddslug_testsupport::{DebSpec, Fault, KeyKind, RepoSpec, Server, SigningKey, Unanswering, write_repo};

struct Fixture {
    dir: tempfile::TempDir,
    _repo: WrittenRepo,
    server: Server,
    keyring: PathBuf,
    deb: PublishedDeb,
}

/// A repository with one package of about 300 kB that does not compress.
fn fixture() -> Fixture {
    let deb = DebSpec::new("hello", "3.0-1").file("usr/lib/hello/blob.bin", 0o644, noise(1, 300_000));
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(KeyKind::Ed25519, "ddslug deadline tests").unwrap();
    let repo = write_repo(&dir.path().join("repo"), &RepoSpec::new("stable").component("main", vec![deb]), &key).unwrap();
    let keyring = dir.path().join("key.asc");
    std::fs::write(&keyring, key.public_armored().unwrap()).unwrap();
    let server = Server::start(&repo.root).unwrap();
    let deb = repo.deb("hello", "3.0-1").unwrap().clone();
    Fixture { dir, _repo: repo, server, keyring, deb }
}

impl Fixture {
    fn pool(&self) -> String {
        format!("/{}", self.deb.filename)
    }

    /// The next `times` requests for the package meet `fault`.
    fn fault_pool(&self, times: usize, fault: Fault) {
        for _ in 0..times {
            self.server.inject(&self.pool(), fault.clone());
        }
    }

    /// The `download hello=3.0-1` command from `url`, to run as the caller wishes.
    fn download_command_from(&self, url: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ddslug"));
        cmd.args(["download", "--repo", url, "--suite", "stable", "--component", "main", "--keyring"])
            .arg(&self.keyring)
            .arg("--out")
            .arg(self.dir.path().join("out"))
            .arg("--cache")
            .arg(self.dir.path().join("cache"))
            .arg("hello=3.0-1");
        cmd
    }

    fn download_command(&self) -> Command {
        self.download_command_from(&self.server.url())
    }

    /// `ddslug download hello=3.0-1` from `url` with the given settings in the environment.
    fn download_from(&self, url: &str, settings: &[(&str, &str)]) -> Measured {
        let mut cmd = self.download_command_from(url);
        cmd.envs(settings.iter().copied());
        run_measured(&mut cmd, Duration::from_secs(120)).unwrap()
    }

    fn download(&self, settings: &[(&str, &str)]) -> Measured {
        self.download_from(&self.server.url(), settings)
    }

    /// A download with `settings` that must fail saying each of `expected`.
    fn download_fails(&self, settings: &[(&str, &str)], expected: &[&str]) -> Measured {
        let run = self.download(settings);
        assert_fails_with(&run, expected);
        run
    }

    fn pool_requests(&self) -> Vec<(Option<u64>, u16)> {
        self.server.requests().into_iter().filter(|r| r.path == self.pool()).map(|r| (r.range_start, r.status)).collect()
    }
}

fn assert_fails_with(run: &Measured, expected: &[&str]) {
    // Shown with --nocapture: what the user sees.
    eprintln!("{}", run.text());
    assert!(!run.status.success(), "expected a failure: {}", run.text());
    for e in expected {
        assert!(run.stderr.contains(e), "no {e:?} in: {}", run.text());
    }
}

#[test]
fn a_mirror_trickling_one_byte_a_second_hits_the_overall_deadline() {
    let f = fixture();
    f.fault_pool(5, Fault::Trickle(1));
    // 1 byte/s is above this low-speed limit: only the deadline can end it.
    let settings = [("DD_DOWNLOAD_TIMEOUT", "3"), ("DD_DOWNLOAD_LOW_SPEED_LIMIT", "1")];
    f.download_fails(&settings, &[&f.deb.filename, "did not finish within 3 s", "DD_DOWNLOAD_TIMEOUT"]);
    assert!(!f.dir.path().join("out/hello_3.0-1_amd64.deb").exists());
}

#[test]
fn a_slow_mirror_hits_the_low_speed_limit_on_each_attempt() {
    let f = fixture();
    f.fault_pool(5, Fault::Trickle(200));
    let settings = [("DD_DOWNLOAD_LOW_SPEED_LIMIT", "1000"), ("DD_DOWNLOAD_LOW_SPEED_TIME", "1"), ("DD_DOWNLOAD_ATTEMPTS", "2")];
    let run = f.download_fails(&settings, &[&f.deb.filename, "slower than 1000 bytes/s", "DD_DOWNLOAD_LOW_SPEED_LIMIT", "after 2 attempts"]);
    // The second attempt resumed where the first one stopped, and the user was told.
    let requests = f.pool_requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].0.is_some_and(|from| from > 0), "{requests:?}");
    assert!(run.stderr.contains("retrying"), "{}", run.text());
}

#[test]
fn a_stalled_connection_is_given_up_and_resumed() {
    let f = fixture();
    f.fault_pool(1, Fault::StallAfter(100_000));
    let run = f.download(&[("DD_DOWNLOAD_LOW_SPEED_TIME", "1")]);
    assert!(run.status.success(), "{}", run.text());
    assert_eq!(std::fs::read(run.stdout.trim()).unwrap(), std::fs::read(&f.deb.path).unwrap());
    assert_eq!(f.pool_requests(), [(None, 200), (Some(100_000), 206)]);
    assert!(run.stderr.contains("no data for 1 s"), "{}", run.text());
}

#[test]
fn a_stall_on_every_attempt_fails_naming_the_setting() {
    let f = fixture();
    f.fault_pool(3, Fault::StallAfter(1000));
    let settings = [("DD_DOWNLOAD_LOW_SPEED_TIME", "1"), ("DD_DOWNLOAD_ATTEMPTS", "3")];
    f.download_fails(&settings, &[&f.deb.filename, "no data for 1 s", "DD_DOWNLOAD_LOW_SPEED_TIME", "after 3 attempts"]);
}

#[test]
fn a_server_that_never_answers_is_given_up() {
    let f = fixture();
    f.server.inject("/dists/stable/InRelease", Fault::Delay(Duration::from_secs(60)));
    let settings = [("DD_DOWNLOAD_LOW_SPEED_TIME", "1"), ("DD_DOWNLOAD_ATTEMPTS", "1")];
    f.download_fails(&settings, &["/dists/stable/InRelease", "no response within 1 s", "DD_DOWNLOAD_LOW_SPEED_TIME"]);
}

#[test]
fn a_connection_that_is_never_accepted_hits_the_connect_timeout() {
    let f = fixture();
    let silent = Unanswering::start().unwrap();
    let run = f.download_from(&silent.url(), &[("DD_DOWNLOAD_CONNECT_TIMEOUT", "1"), ("DD_DOWNLOAD_ATTEMPTS", "2")]);
    assert_fails_with(&run, &[&silent.url(), "could not connect within 1 s", "DD_DOWNLOAD_CONNECT_TIMEOUT", "after 2 attempts"]);
}

#[test]
fn a_long_download_prints_its_progress() {
    let f = fixture();
    // About three seconds at 100 kB/s, progress every second.
    f.fault_pool(1, Fault::Trickle(100_000));
    let run = f.download(&[("DD_DOWNLOAD_PROGRESS_INTERVAL", "1")]);
    assert!(run.status.success(), "{}", run.text());
    eprintln!("{}", run.text());
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("hello_3.0-1_amd64.deb: ") && l.contains("/s")).collect();
    assert!(lines.len() >= 2, "expected progress lines: {}", run.text());
    assert!(lines[0].contains(" of 30"), "bytes of the total: {}", lines[0]);
}

#[test]
fn download_settings_are_checked() {
    let f = fixture();
    for (name, value) in [("DD_DOWNLOAD_TIMEOUT", "soon"), ("DD_DOWNLOAD_LOW_SPEED_TIME", "0"), ("DD_DOWNLOAD_ATTEMPTS", "1000")] {
        f.download_fails(&[(name, value)], &[&format!("{name}={value:?}"), "heroku config:set"]);
        assert!(f.server.requests().is_empty(), "a request was made with {name}={value}");
    }
}

#[test]
fn a_download_waiting_for_the_cache_lock_says_who_holds_it() {
    let f = fixture();
    // The first download holds the cache lock for about three seconds.
    f.fault_pool(1, Fault::Trickle(100_000));
    let mut first = f.download_command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    // It asks for the package only once it holds the lock.
    let asked = std::time::Instant::now();
    while f.pool_requests().is_empty() {
        assert!(asked.elapsed() < Duration::from_secs(60), "the first download never asked for the package");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run_measured(&mut f.download_command(), Duration::from_secs(120)).unwrap();
    assert!(first.wait().unwrap().success());
    assert!(second.status.success(), "{}", second.text());
    let note = format!("waiting for the cache lock {}: held by pid {} (ddslug download)", f.dir.path().join("cache/ddslug/v1/lock").display(), first.id());
    assert!(second.stderr.contains(&note), "no {note:?} in: {}", second.text());
}

#[test]
fn the_datadog_key_download_has_the_same_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("DATADOG_APT_KEY_CURRENT.public"), vec![b'k'; 100_000]).unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.inject("/DATADOG_APT_KEY_CURRENT.public", Fault::StallAfter(10));
    let limits = ddslug::fetch::Limits { low_speed_time: Duration::from_secs(1), attempts: 1, ..Default::default() };
    let fetcher = ddslug::fetch::Fetcher::new(ddslug::fetch::FetchOptions { limits, ..Default::default() });
    let e = ddslug::apt::datadog_keys::datadog_keyring(&fetcher, &server.url()).unwrap_err().to_string();
    assert!(e.contains("DATADOG_APT_KEY_CURRENT.public: no data for 1 s (DD_DOWNLOAD_LOW_SPEED_TIME)"), "{e}");
}
