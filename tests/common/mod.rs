//! Shared by the compile tests: the served agent repository, bin/compile runs, and the
//! normalised tree form compared with the classic buildpack's output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddslug::hash::Sha256;
use ddslug::store::treehash::{EntryKind, TreeEntry, scan_tree};
use ddslug_testsupport::agent::{Scale, agent_deb};
use ddslug_testsupport::{DebSpec, KeyKind, RepoSpec, Server, SigningKey, write_repo};
use ddslug_testsupport::fixtures::{AgentRepo, agent_repository};

/// Settings cases shared by the classic-buildpack oracle and the compile tests. Values use
/// the classic buildpack's spelling (it only honours lowercase `false`/`true`).
pub const CASES: &[(&str, &[(&str, &str)])] = &[
    ("default", &[]),
    ("v7.81-process", &[("DD_PROCESS_AGENT", "true")]),
    ("v7.68-no-apm", &[("DD_AGENT_VERSION", "7.68.0-1"), ("DD_APM_ENABLED", "false")]),
    ("v7.67", &[("DD_AGENT_VERSION", "7.67.0-1")]),
    ("v7.67-process", &[("DD_AGENT_VERSION", "7.67.0-1"), ("DD_PROCESS_AGENT", "true")]),
    ("v7.51", &[("DD_AGENT_VERSION", "7.51.0-1"), ("DD_PROCESS_AGENT", "false")]),
    ("major6", &[("DD_AGENT_MAJOR_VERSION", "6")]),
    ("v6.53-py3", &[("DD_AGENT_VERSION", "6.53.1-1"), ("DD_PYTHON_VERSION", "3")]),
    ("v6.52-process", &[("DD_AGENT_VERSION", "6.52.0-1"), ("DD_PROCESS_AGENT", "true")]),
    ("v6.51", &[("DD_AGENT_VERSION", "6.51.0-1")]),
    ("v6.14-py3", &[("DD_AGENT_VERSION", "6.14.0-1"), ("DD_PYTHON_VERSION", "3")]),
    ("v6.13", &[("DD_AGENT_VERSION", "6.13.0-1")]),
    ("heroku-6.40", &[("DD_AGENT_VERSION", "6.40.0-1"), ("DD_PYTHON_VERSION", "3"), ("DD_APM_ENABLED", "false")]),
    ("heroku-7.50-amd64-suffix", &[("DD_AGENT_VERSION", "7.50.0-1_amd64")]),
];

/// A served agent repository in a temp dir.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub fixture: AgentRepo,
    pub server: Server,
}

impl Served {
    /// Generates and serves the standard agent repository (small scale).
    pub fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let fixture = agent_repository(dir.path(), Scale::SMALL).unwrap();
        let server = Server::start(&fixture.repo.root).unwrap();
        Served { dir, fixture, server }
    }

    /// Serves a repository holding only the agent the default settings install
    /// (`datadog-heroku-agent` 1:7.81.2-1, component 7), changed by `edit`: for packages with
    /// hostile or unusual entries.
    pub fn with_agent(edit: impl FnOnce(DebSpec) -> DebSpec) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyKind::Ed25519, "ddslug test agent repository").unwrap();
        let deb = edit(agent_deb("datadog-heroku-agent", "1:7.81.2-1", Scale::SMALL));
        let spec = RepoSpec::new("stable").component("7", vec![deb]);
        let repo = write_repo(&dir.path().join("repo"), &spec, &key).unwrap();
        let keyring = dir.path().join("keyring.asc");
        std::fs::write(&keyring, key.public_armored().unwrap()).unwrap();
        let server = Server::start(&repo.root).unwrap();
        Served { dir, fixture: AgentRepo { repo, keyring, key }, server }
    }

    /// A fresh ENV_DIR with the repository settings plus `pairs`.
    pub fn env_dir(&self, name: &str, pairs: &[(&str, &str)]) -> PathBuf {
        let env = self.dir.path().join(format!("env-{name}"));
        let _ = std::fs::remove_dir_all(&env);
        std::fs::create_dir_all(&env).unwrap();
        std::fs::write(env.join("DD_APT_REPO_URL"), self.server.url()).unwrap();
        std::fs::write(env.join("DD_APT_KEYRING"), self.fixture.keyring.to_str().unwrap()).unwrap();
        for (k, v) in pairs {
            std::fs::write(env.join(k), v).unwrap();
        }
        env
    }

    /// A fresh, empty BUILD_DIR.
    pub fn build_dir(&self, name: &str) -> PathBuf {
        let build = self.dir.path().join(format!("build-{name}"));
        let _ = std::fs::remove_dir_all(&build);
        std::fs::create_dir_all(&build).unwrap();
        build
    }

    /// How many times the server was asked for any pool file.
    pub fn pool_requests(&self) -> usize {
        self.server.requests().iter().filter(|r| r.path.starts_with("/pool/")).count()
    }
}

/// Runs the buildpack's bin/compile with this build's ddslug binary.
pub fn bin_compile(build: &Path, cache: &Path, env: &Path) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"))
        .arg(build)
        .arg(cache)
        .arg(env)
        .env("DDSLUG_BIN", env!("CARGO_BIN_EXE_ddslug"))
        .env("STACK", "heroku-24")
        .env_remove("DD_AGENT_VERSION")
        .env_remove("DD_AGENT_MAJOR_VERSION")
        .output()
        .unwrap()
}

/// The user compile runs as in [`bin_compile_unprivileged`] when the tests run as root.
pub const UNPRIVILEGED: u32 = 65534;

/// Whether the tests run as root (as CI does).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command running `program` as [`UNPRIVILEGED`] (through `setpriv --reuid --regid
/// --clear-groups`) when the tests run as root, as CI does; as the tests' own user otherwise.
pub fn as_unprivileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if !running_as_root() {
        return Command::new(program);
    }
    let id = UNPRIVILEGED.to_string();
    let mut command = Command::new("setpriv");
    command.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()]).arg(program);
    command
}

/// Runs bin/compile as Heroku does, as a user who is not root: when the tests run as root,
/// through `setpriv --reuid=65534 --regid=65534 --clear-groups`, with BUILD_DIR, CACHE_DIR
/// and ENV_DIR (made if missing) given to that user, and the temp directories above them
/// (0700, root's) opened to it; otherwise directly, as the user the tests run as.
pub fn bin_compile_unprivileged(build: &Path, cache: &Path, env: &Path) -> Output {
    bin_compile_unprivileged_with(build, cache, env, &[])
}

/// [`bin_compile_unprivileged`] with more environment variables.
pub fn bin_compile_unprivileged_with(build: &Path, cache: &Path, env: &Path, vars: &[(&str, &str)]) -> Output {
    if !running_as_root() {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"));
        command.arg(build).arg(cache).arg(env).env("DDSLUG_BIN", env!("CARGO_BIN_EXE_ddslug")).env("STACK", "heroku-24");
        command.env_remove("DD_AGENT_VERSION").env_remove("DD_AGENT_MAJOR_VERSION");
        return command.envs(vars.iter().copied()).output().unwrap();
    }
    std::fs::create_dir_all(cache).unwrap();
    for dir in [build, cache, env] {
        give_to_unprivileged(dir);
        // The temp directories above it, so that the user can reach it.
        for above in dir.ancestors().skip(1).take_while(|a| a.starts_with(std::env::temp_dir()) && *a != std::env::temp_dir()) {
            std::os::unix::fs::chown(above, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
        }
    }
    as_unprivileged(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/compile"))
        .arg(build)
        .arg(cache)
        .arg(env)
        .env("DDSLUG_BIN", env!("CARGO_BIN_EXE_ddslug"))
        .env("STACK", "heroku-24")
        .env("HOME", build)
        .env_remove("DD_AGENT_VERSION")
        .env_remove("DD_AGENT_MAJOR_VERSION")
        .envs(vars.iter().copied())
        .output()
        .expect("setpriv (util-linux) runs the unprivileged compile")
}

/// Hands `path` and everything below it to [`UNPRIVILEGED`] (without following symlinks).
pub fn give_to_unprivileged(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    std::os::unix::fs::lchown(path, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            give_to_unprivileged(&entry.unwrap().path());
        }
    }
}

/// Output as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The tree under `.apt` in a form comparable across buildpacks: pkg-config files and the
/// agent-wrapper (which each buildpack writes its own way) compare by path and mode only.
pub fn normalized_tree(apt: &Path) -> Vec<TreeEntry> {
    let mut entries = scan_tree(apt).unwrap().entries;
    for e in &mut entries {
        if e.path.ends_with(b".pc") || e.path.ends_with(b"bin/agent/agent-wrapper") {
            e.kind = EntryKind::File { sha256: Sha256([0; 32]), size: 0 };
        }
    }
    entries
}

/// Where the classic buildpack's expected tree for a case is stored.
pub fn expected_path(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/classic").join(format!("{case}.json"))
}
