//! `tests/data/locks/` holds locks for the project's own test repository, produced by `ddslug lock`
//! (regenerate with `DDSLUG_REGENERATE_LOCKS=1 cargo test --test lockfiles`). The generated
//! packages are deterministic, so the committed package hashes, recipe hash and options must
//! still be what the tool resolves today; the repository URL and signing key are those of the
//! run that wrote the files (each test run serves on a new port with a new key), which is why
//! they are test data and not in `lockfiles/` (locks users can rely on; see its README).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Served, text};
use ddslug::slug::manifest::{Lock, read_lock};

const LOCKS: &[(&str, &[(&str, &str)])] = &[
    ("agent7-default", &[]),
    ("agent7.67-process-agent", &[("DD_AGENT_VERSION", "7.67.0-1"), ("DD_PROCESS_AGENT", "true")]),
    ("agent6-python3-no-apm", &[("DD_AGENT_MAJOR_VERSION", "6"), ("DD_PYTHON_VERSION", "3"), ("DD_APM_ENABLED", "false")]),
];

#[test]
fn committed_locks_match_what_the_tool_resolves() {
    let served = Served::start();
    let regenerate = std::env::var_os("DDSLUG_REGENERATE_LOCKS").is_some();
    for (name, settings) in LOCKS {
        let env = served.env_dir(name, settings);
        let out = Command::new(env!("CARGO_BIN_EXE_ddslug")).args(["lock", "--env-dir", env.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let fresh: Lock = serde_json::from_slice(&out.stdout).unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/locks").join(format!("{name}.lock"));
        if regenerate {
            std::fs::write(&path, &out.stdout).unwrap();
            continue;
        }
        let committed = read_lock(&path).unwrap();
        assert_eq!(committed.packages, fresh.packages, "{name}: packages");
        assert_eq!(committed.recipe_sha256, fresh.recipe_sha256, "{name}: recipe (regenerate the locks after editing it)");
        assert_eq!(committed.options, fresh.options, "{name}: options");
        assert_eq!((committed.suite.as_str(), committed.component.as_str()), (fresh.suite.as_str(), fresh.component.as_str()));
    }
}
