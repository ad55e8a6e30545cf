//! The standard agent repository used by the compile tests and the demo: Datadog-like
//! components `6` and `7`, with versions on both sides of every rule boundary
//! (6.14, 6.52, 7.52, 7.68), a `datadog-heroku-agent` build, and the pinned versions.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::agent::{Scale, agent_deb};
use crate::repo::{RepoSpec, WrittenRepo, write_repo};
use crate::signing::{KeyKind, SigningKey};

/// Agent 6 versions in the test repository (as apt lists them, with epoch).
pub const AGENT6: [&str; 5] = ["1:6.13.0-1", "1:6.14.0-1", "1:6.51.0-1", "1:6.52.0-1", "1:6.53.1-1"];
/// Agent 7 versions of `datadog-agent`.
pub const AGENT7: [&str; 5] = ["1:7.51.0-1", "1:7.52.0-1", "1:7.67.0-1", "1:7.68.0-1", "1:7.81.2-1"];
/// Versions of `datadog-heroku-agent` in component 6.
pub const HEROKU6: [&str; 1] = ["1:6.40.0-1"];
/// Versions of `datadog-heroku-agent` in component 7.
pub const HEROKU7: [&str; 2] = ["1:7.50.0-1", "1:7.81.2-1"];

/// A written agent repository and the keyring file that verifies it.
pub struct AgentRepo {
    pub repo: WrittenRepo,
    pub keyring: PathBuf,
    pub key: SigningKey,
}

/// Writes the standard agent repository under `dir/repo`, its public key as `dir/keyring.asc`.
pub fn agent_repository(dir: &Path, scale: Scale) -> Result<AgentRepo> {
    let key = SigningKey::generate(KeyKind::Ed25519, "ddslug test agent repository")?;
    let mut six: Vec<_> = AGENT6.iter().map(|v| agent_deb("datadog-agent", v, scale)).collect();
    six.extend(HEROKU6.iter().map(|v| agent_deb("datadog-heroku-agent", v, scale)));
    let mut seven: Vec<_> = AGENT7.iter().map(|v| agent_deb("datadog-agent", v, scale)).collect();
    seven.extend(HEROKU7.iter().map(|v| agent_deb("datadog-heroku-agent", v, scale)));
    let spec = RepoSpec::new("stable").component("6", six).component("7", seven);
    let repo = write_repo(&dir.join("repo"), &spec, &key)?;
    let keyring = dir.join("keyring.asc");
    std::fs::write(&keyring, key.public_armored()?)?;
    Ok(AgentRepo { repo, keyring, key })
}
