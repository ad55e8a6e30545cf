//! What the dyno start tests share: a slug built by bin/compile with fake agents that record
//! their arguments and environment, and bash sourcing the real `.profile.d/datadog.sh` over it
//! (optionally as an unprivileged user).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Served, bin_compile, text};
use yaml_rust2::{Yaml, YamlLoader};

/// A fake agent program: records its name, arguments and its whole environment, then renames
/// the record into place so that a reader never sees half of it.
pub const FAKE_AGENT: &str = "#!/bin/sh\n{\n  echo \"PROGRAM=$0\"\n  echo \"ARGS=$*\"\n  env\n} > \"$RECORD_DIR/.tmp.$$\"\nmv \"$RECORD_DIR/.tmp.$$\" \"$RECORD_DIR/$(basename \"$0\").$$\"\n";

pub struct Slug {
    pub dir: PathBuf,
}

/// Builds a slug for `settings` and swaps the agent binaries for recorders.
pub fn slug(served: &Served, name: &str, settings: &[(&str, &str)]) -> Slug {
    let build = served.build_dir(name);
    let out = bin_compile(&build, &served.dir.path().join("cache"), &served.env_dir(name, settings));
    assert!(out.status.success(), "{}", text(&out));
    let dd = build.join(".apt/opt/datadog-agent");
    for program in ["bin/agent/agent", "embedded/bin/trace-agent", "embedded/bin/process-agent"] {
        let path = dd.join(program);
        if path.exists() {
            // Replace, never write in place: slug files are hard links into the layer cache.
            fs::remove_file(&path).unwrap();
            fs::write(&path, FAKE_AGENT).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    Slug { dir: build }
}

pub struct Started {
    /// Exported environment of the shell after sourcing (what the app sees).
    pub env: BTreeMap<String, String>,
    /// One map per launched program: PROGRAM, ARGS and its environment.
    pub launches: Vec<BTreeMap<String, String>>,
    pub output: String,
}

/// How to source the profile script.
#[derive(Default)]
pub struct Run<'a> {
    /// Environment variables (values are bytes: some tests need ones that are not UTF-8).
    pub vars: Vec<(&'a str, OsString)>,
    /// Shell code run before sourcing (unexported assignments, a umask).
    pub before: &'a str,
    /// Run as this uid and gid (setpriv), when the test runs as root.
    pub user: Option<u32>,
}

impl<'a> Run<'a> {
    pub fn vars(pairs: &[(&'a str, &str)]) -> Run<'a> {
        Run { vars: pairs.iter().map(|(k, v)| (*k, OsString::from(v))).collect(), ..Run::default() }
    }
}

pub fn source(slug: &Slug, vars: &[(&str, &str)], expect_launches: usize) -> Started {
    run(slug, &Run::vars(vars), expect_launches)
}

pub fn run(slug: &Slug, how: &Run, expect_launches: usize) -> Started {
    let record = slug.dir.join(format!("record-{}", rand_suffix()));
    fs::create_dir_all(&record).unwrap();
    let env_file = record.join("app.env");
    let script = format!("{}\nsource .profile.d/datadog.sh && env > \"$RECORD_DIR/app.env\"", how.before);
    let mut cmd = match how.user {
        Some(id) => {
            std::os::unix::fs::chown(&record, Some(id), Some(id)).unwrap();
            let mut cmd = Command::new("setpriv");
            cmd.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into(), "bash".into()]);
            cmd
        }
        None => Command::new("bash"),
    };
    cmd.arg("-c").arg(&script).current_dir(&slug.dir).env_clear();
    cmd.env("HOME", &slug.dir).env("PATH", std::env::var("PATH").unwrap()).env("RECORD_DIR", &record);
    cmd.env("DYNO", "web.1").env("DDSLUG_HOSTNAME_OVERRIDE", "1a2b_host");
    for (k, v) in &how.vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let records = |record: &Path| -> Vec<PathBuf> {
        fs::read_dir(record)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "app.env" && !p.file_name().unwrap().as_bytes().starts_with(b"."))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&record).len() < expect_launches && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a wrongly launched extra program the chance to show up.
    std::thread::sleep(Duration::from_millis(expect_launches.max(1) as u64 * 50));
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let mut launches: Vec<BTreeMap<String, String>> = records(&record).iter().map(|f| parse(&String::from_utf8_lossy(&fs::read(f).unwrap()))).collect();
    launches.sort_by(|a, b| a["PROGRAM"].cmp(&b["PROGRAM"]));
    Started { env: parse(&String::from_utf8_lossy(&fs::read(&env_file).unwrap())), launches, output: text(&out) }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

pub fn programs(s: &Started) -> Vec<(String, String)> {
    s.launches
        .iter()
        .map(|l| {
            let program = l["PROGRAM"].rsplit("/datadog-agent/").next().unwrap().to_string();
            (program, l["ARGS"].clone())
        })
        .collect()
}

pub fn conf(slug: &Slug) -> String {
    slug.dir.join(".apt/etc/datadog-agent/datadog.yaml").to_string_lossy().into_owned()
}

/// The `instances` of an integration's conf.yaml, read by a YAML parser.
pub fn instances(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
    assert_eq!(docs.len(), 1, "{text}");
    docs[0]["instances"].as_vec().unwrap_or_else(|| panic!("{}: no instances\n{text}", path.display())).clone()
}

/// An instance's keys in order, each with its scalar value as text.
pub fn fields(instance: &Yaml) -> Vec<(String, String)> {
    let scalar = |v: &Yaml| match v {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{other:?}"),
    };
    instance.as_hash().unwrap().iter().map(|(k, v)| (k.as_str().unwrap().to_string(), scalar(v))).collect()
}

pub fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

/// The launched programs with their arguments, and each one's value of `name` (`None`: unset).
pub fn seen(started: &Started, name: &str) -> Vec<Option<String>> {
    started.launches.iter().map(|l| l.get(name).cloned()).collect()
}

/// Whether this test process runs as root (CI does): then the unprivileged cases drop to
/// uid 65534 with setpriv.
pub fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A copy of the slug in a directory an unprivileged user can reach and owns (when root).
pub fn owned_copy(s: &Slug, parent: &tempfile::TempDir, user: Option<u32>) -> Slug {
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("slug");
    let out = Command::new("cp").arg("-a").arg(&s.dir).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    if let Some(id) = user {
        let out = Command::new("chown").args(["-R", &format!("{id}:{id}")]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    Slug { dir }
}

