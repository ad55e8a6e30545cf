//! Dyno start: what `.profile.d/datadog.sh` asks of the ddslug binary shipped in the slug.
//!
//! The shell file stays thin because the app's `datadog/prerun.sh` must be sourced in the
//! same shell: `ddslug dyno prepare` writes the agent's configuration and prints `export`
//! lines; the shell evals them and sources prerun.sh; `ddslug dyno start` then reads the
//! (possibly changed) environment, prints the final exports and launches the agents in the
//! background with the agent-only library paths.
//!
//! Both steps see the settings as the sourcing shell has them, exported or not: datadog.sh
//! exports them in the subshell that runs each step (never in the app's shell), as the
//! classic script, which read shell variables, saw them.
//!
//! Contract: nothing printed on stdout is anything but `export NAME='value'` or
//! `NAME='value'` lines (the shell evals them); messages go to stderr, gated by DD_LOG_LEVEL;
//! no password, URL or API key is ever printed.

pub mod appconf;
pub mod container;
pub mod confdir;
pub mod integrations;
pub mod launch;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The environment the dyno start sees (tests build their own with `collect`).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Variables whose value is not UTF-8: never read as a setting, named when one is needed.
    not_utf8: BTreeSet<String>,
}

impl Env {
    /// The variable's value; `None` when unset or not UTF-8 (see [`Env::is_not_utf8`]).
    pub fn get(&self, name: &str) -> Option<&String> {
        self.vars.get(name)
    }

    /// Whether `name` is set to bytes that are not UTF-8 (so [`Env::get`] gives `None`).
    pub fn is_not_utf8(&self, name: &str) -> bool {
        self.not_utf8.contains(name)
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Env {
        Env { vars: pairs.into_iter().collect(), not_utf8: BTreeSet::new() }
    }
}

/// Buildpack message levels, from DD_LOG_LEVEL (`TRACE` … `OFF`, default `INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
    Off,
}

impl Level {
    /// Parses DD_LOG_LEVEL case-insensitively (`warning` and `err` accepted); unknown → Info.
    pub fn from_env(env: &Env) -> Level {
        match env.get("DD_LOG_LEVEL").map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("trace") => Level::Trace,
            Some("debug") => Level::Debug,
            Some("warn" | "warning") => Level::Warn,
            Some("error" | "err") => Level::Error,
            Some("critical") => Level::Critical,
            Some("off") => Level::Off,
            _ => Level::Info,
        }
    }
}

/// Messages to stderr, filtered by level.
pub struct Log {
    pub level: Level,
}

impl Log {
    pub fn new(env: &Env) -> Log {
        Log { level: Level::from_env(env) }
    }
    /// Records (and prints to stderr) a message of `level`.
    pub fn say(&mut self, level: Level, text: &str) {
        if level >= self.level && self.level != Level::Off {
            let tag = match level {
                Level::Trace => "TRACE",
                Level::Debug => "DEBUG",
                Level::Info => "INFO",
                Level::Warn => "WARN",
                Level::Error => "ERROR",
                Level::Critical | Level::Off => "CRITICAL",
            };
            eprintln!("[datadog] [{tag}] {text}");
        }
    }
}

/// The variable that tells dyno start it runs in a CNB image: the agent layer's path (set by
/// the exec.d program, [`crate::buildpack::cnb::execd`], for the steps it runs).
pub const CNB_AGENT_LAYER: &str = "DDSLUG_AGENT_LAYER";
/// With [`CNB_AGENT_LAYER`]: the app directory (the exec.d program's working directory).
pub const CNB_APP_DIR: &str = "DDSLUG_APP_DIR";

/// Where things are at run time: in a slug (`$HOME/.apt`, `$HOME/.ddslug`, `$HOME/datadog`)
/// or in a CNB image (the agent layer laid out like `.apt`, with `.ddslug/` in it, and the app
/// directory's `datadog`).
#[derive(Clone, Debug)]
pub struct Paths {
    pub home: PathBuf,
    /// The agent tree: `.apt` of a slug, or the agent layer.
    pub apt: PathBuf,
    /// The manifest of the build that made [`Paths::apt`].
    pub manifest: PathBuf,
    pub dd_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub app_datadog: PathBuf,
}

impl Paths {
    /// From HOME (the slug root, `/app` on a dyno) and DD_HEROKU_CONF_FOLDER; in a CNB image
    /// from [`CNB_AGENT_LAYER`] and [`CNB_APP_DIR`] instead of HOME.
    pub fn from_env(env: &Env) -> Paths {
        let home = PathBuf::from(env.get("HOME").map(String::as_str).unwrap_or("/app"));
        let (apt, manifest, app) = match env.get(CNB_AGENT_LAYER).filter(|l| !l.is_empty()) {
            Some(layer) => {
                let layer = PathBuf::from(layer);
                let app = env.get(CNB_APP_DIR).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/workspace"));
                (layer.clone(), layer.join(".ddslug/manifest.json"), app)
            }
            None => (home.join(".apt"), home.join(".ddslug/manifest.json"), home.clone()),
        };
        let dd_dir = apt.join("opt/datadog-agent");
        Paths {
            bin_dir: dd_dir.join("bin/agent"),
            run_dir: dd_dir.join("run"),
            conf_dir: apt.join("etc/datadog-agent"),
            log_dir: apt.join("var/log/datadog"),
            app_datadog: env
                .get("DD_HEROKU_CONF_FOLDER")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| app.join("datadog")),
            dd_dir,
            apt,
            manifest,
            home,
        }
    }

    /// The agent tree, opened from its parent (a trusted path: HOME, or the buildpack's layers
    /// directory) without following a symlink at its own name.
    pub fn open_apt(&self) -> Result<confdir::Tree> {
        let (Some(parent), Some(name)) = (self.apt.parent(), self.apt.file_name()) else {
            anyhow::bail!("{}: not a directory dyno start can open", self.apt.display());
        };
        confdir::Tree::open_ambient(parent)?.subdir(name, confdir::Missing::Fail, confdir::Keep::Restore)
    }

    pub fn datadog_yaml(&self) -> PathBuf {
        self.conf_dir.join("datadog.yaml")
    }
}

/// `true`, case-insensitively.
pub fn is_true(env: &Env, name: &str) -> bool {
    env.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The agent version and major, from the slug's manifest (no need to run the agent).
pub fn agent_version(paths: &Paths) -> Result<(Vec<u64>, u64)> {
    let manifest = crate::slug::manifest::read_manifest(&paths.manifest)
        .with_context(|| format!("{} is missing or unreadable; was this built by ddslug's bin/compile or bin/build?", paths.manifest.display()))?;
    let version = manifest.lock.options.version.clone();
    let major = version.first().copied().unwrap_or(7);
    Ok((version, major))
}

/// A shell `export` line with the value single-quoted.
pub fn export_line(name: &str, value: &str) -> String {
    format!("export {}", assign_line(name, value))
}

/// A shell assignment with the value single-quoted: the variable is exported only if it
/// already was.
pub fn assign_line(name: &str, value: &str) -> String {
    format!("{name}='{}'", value.replace('\'', r"'\''"))
}

/// Hostname rules: keep `[A-Za-z0-9-]` (and `.` where allowed), replace the rest with `-`,
/// drop a leading `-`.
pub fn rfc1123(text: &str, allow_dot: bool) -> String {
    let mapped: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || (allow_dot && c == '.') { c } else { '-' })
        .collect();
    mapped.trim_start_matches('-').to_string()
}

/// Normalizes DD_TAGS given as `a:b,c:d`, `a:b, c:d` or `a:b c:d` to space-separated form.
pub fn normalize_tags(tags: &str) -> String {
    tags.split([',', ' ']).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The dyno's host name (`hostname`), as the classic script reads it.
/// `DDSLUG_HOSTNAME_OVERRIDE` replaces it (the tests use it: a sandbox's host name is fixed).
pub fn dyno_host(env: &Env) -> String {
    if let Some(h) = env.get("DDSLUG_HOSTNAME_OVERRIDE") {
        return h.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::process::Command::new("hostname").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()))
        .unwrap_or_default()
}

/// Collects the process environment. A value that is not UTF-8 is kept out of the settings
/// (and named if a setting needs it); `std::env::vars` would panic on it.
pub fn process_env() -> Env {
    let mut env = Env::default();
    for (name, value) in std::env::vars_os() {
        // A name that is not UTF-8 cannot be one of our settings.
        let Ok(name) = name.into_string() else { continue };
        match value.into_string() {
            Ok(value) => {
                env.vars.insert(name, value);
            }
            Err(_) => {
                env.not_utf8.insert(name);
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_and_tags() {
        assert_eq!(rfc1123("-my_app!", false), "my-app-");
        assert_eq!(rfc1123("web.1", true), "web.1");
        assert_eq!(rfc1123("web.1", false), "web-1");
        assert_eq!(normalize_tags("env:prod,team:a, region:eu  x:y"), "env:prod team:a region:eu x:y");
        assert_eq!(export_line("A", "it's"), r"export A='it'\''s'");
    }
}
