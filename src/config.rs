//! DD_* settings for a build, read from ENV_DIR files first, then the environment,
//! validated once here so that every later stage sees plain, typed values.
//!
//! Contract: every rejection names the setting, the value, what was expected and the
//! `heroku config:set` command that fixes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fetch::{self, Limits};

/// Pinned agent versions used when no exact version is set (DD_AGENT_MAJOR_VERSION picks).
pub const PINNED_AGENT_6: &str = "6.53.1-1";
/// See [`PINNED_AGENT_6`].
pub const PINNED_AGENT_7: &str = "7.81.2-1";

/// Datadog's agent apt repository.
pub const DEFAULT_APT_REPO: &str = "https://apt.datadoghq.com";
/// Suite used in the Datadog repository.
pub const DEFAULT_APT_SUITE: &str = "stable";

/// A setting was given a value ddslug cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {expected}. Fix it with: heroku config:set {name}={example}")]
pub struct SettingError {
    pub name: String,
    pub value: String,
    pub expected: String,
    pub example: String,
}

/// Where the repository's signing keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyringSetting {
    /// Datadog's keys from Datadog's key server, accepted only with pinned fingerprints.
    DatadogDefault,
    /// A keyring file given by DD_APT_KEYRING.
    File(PathBuf),
}

/// Everything a build reads from its settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Exact version asked for with DD_AGENT_VERSION (suffix `_amd64` removed).
    pub agent_version: Option<String>,
    /// 6 or 7: the repository component and the default pin.
    pub major: u64,
    /// DD_PYTHON_VERSION as given (2 or 3), if given.
    pub python_requested: Option<u64>,
    pub apm_enabled: bool,
    pub process_agent: bool,
    pub repo_url: String,
    pub suite: String,
    pub keyring: KeyringSetting,
    pub arch: String,
    pub stack: Option<String>,
    /// Why network access is forbidden (e.g. "DD_OFFLINE=true"), if it is.
    pub offline: Option<String>,
    /// Timeouts, low-speed limit, deadline and attempts of every download.
    pub download: Limits,
    /// The shared layer cache (`DD_CACHE_REGISTRY` and its companions), if one is set.
    pub cache: Option<crate::oci::cache::CacheSettings>,
    /// Things the user should fix but that do not stop the build.
    pub warnings: Vec<String>,
}

/// The largest value a setting in ENV_DIR may have (Heroku allows 32 KB for all of an app's
/// config vars together).
pub const MAX_SETTING_BYTES: u64 = 1 << 20;

/// The value of the setting `name` from its ENV_DIR file `path`: at most
/// [`MAX_SETTING_BYTES`], UTF-8; an error names the setting and what to do.
fn read_setting(path: &Path, name: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_SETTING_BYTES + 1).read_to_end(&mut bytes)?;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
    if bytes.len() as u64 > MAX_SETTING_BYTES {
        return Err(invalid(format!(
            "{name} is longer than {MAX_SETTING_BYTES} bytes, ddslug's limit for a setting; set it to a shorter value (heroku config:set {name}=...)"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| invalid(format!("{name} is not UTF-8 text; set it again as text (heroku config:set {name}=...)")))
}

/// The raw settings: ENV_DIR files override nothing, they come first; the environment fills gaps.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Settings {
    /// Reads `DD_*` (and a few other) settings from ENV_DIR (one file per variable, as Heroku
    /// writes them), then from the process environment for names ENV_DIR lacks.
    pub fn load(env_dir: Option<&Path>) -> std::io::Result<Settings> {
        let mut values = BTreeMap::new();
        if let Some(dir) = env_dir
            && dir.is_dir() {
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    if is_ours(&name) && entry.file_type()?.is_file() {
                        let value = read_setting(&entry.path(), &name)?;
                        values.insert(name, value.trim_end_matches(['\n', '\r']).to_string());
                    }
                }
            }
        for (name, value) in std::env::vars() {
            if is_ours(&name) {
                values.entry(name).or_insert(value);
            }
        }
        Ok(Settings { values })
    }

    /// The settings of a Cloud Native Buildpack build: `CNB_PLATFORM_DIR/env/` files (the
    /// platform's ENV_DIR, same names and one file per variable), then the environment, then
    /// the app's `project.toml` table `[com.datadoghq.ddslug]` for names neither sets (the
    /// environment wins).
    pub fn load_cnb(platform_env: Option<&Path>, project_toml: &Path) -> Result<Settings, ProjectTomlError> {
        let mut settings = Settings::load(platform_env).map_err(|e| ProjectTomlError::Read {
            path: platform_env.map(Path::to_path_buf).unwrap_or_default(),
            cause: e.to_string(),
        })?;
        for (name, value) in project_settings(project_toml)? {
            settings.values.entry(name).or_insert(value);
        }
        Ok(settings)
    }

    /// Settings from explicit pairs (tests, flags).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        Settings { values: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// Sets one value, replacing what was read.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.into(), value.into());
    }

    /// A non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// The table of an app's `project.toml` that holds ddslug settings.
pub const PROJECT_TABLE: &str = "com.datadoghq.ddslug";
/// The largest `project.toml` read (a real one is a few KB).
pub const PROJECT_TOML_LIMIT: u64 = 1 << 20;

/// The app's `project.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProjectTomlError {
    #[error("{path}: cannot read it ({cause}); fix its permissions or remove it")]
    Read { path: PathBuf, cause: String },
    #[error("{path} is larger than {limit}, the limit for a project.toml; keep it to the project descriptor")]
    TooLarge { path: PathBuf, limit: String },
    #[error("{path} is not valid TOML ({cause}); fix it (see the project descriptor specification)")]
    Syntax { path: PathBuf, cause: String },
    #[error("{path}: [{PROJECT_TABLE}] {detail}")]
    Setting { path: PathBuf, detail: String },
}

/// `[com.datadoghq.ddslug]` of `project.toml` as setting names and values: strings as they
/// are, booleans and integers as text. A missing file or table is no setting.
fn project_settings(path: &Path) -> Result<Vec<(String, String)>, ProjectTomlError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(|e| ProjectTomlError::Read { path: path.into(), cause: e.to_string() })?,
    };
    let mut bytes = Vec::new();
    file.take(PROJECT_TOML_LIMIT + 1).read_to_end(&mut bytes).map_err(|e| ProjectTomlError::Read { path: path.into(), cause: e.to_string() })?;
    if bytes.len() as u64 > PROJECT_TOML_LIMIT {
        return Err(ProjectTomlError::TooLarge { path: path.into(), limit: crate::report::limit(PROJECT_TOML_LIMIT) });
    }
    let text = String::from_utf8(bytes).map_err(|_| ProjectTomlError::Syntax { path: path.into(), cause: "it is not UTF-8".into() })?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ProjectTomlError::Syntax { path: path.into(), cause: e.message().to_string() })?;
    // `com.datadoghq.ddslug` is a dotted key: tables `com` → `datadoghq` → `ddslug`.
    let mut table = Some(&doc);
    for part in PROJECT_TABLE.split('.') {
        table = table.and_then(|t| t.get(part)).and_then(toml::Value::as_table);
    }
    let Some(table) = table else { return Ok(Vec::new()) };
    let bad = |detail: String| ProjectTomlError::Setting { path: path.into(), detail };
    let mut out = Vec::new();
    for (name, value) in table {
        if !is_ours(name) || name == "STACK" {
            return Err(bad(format!("{name}: not a ddslug setting; only DD_* settings go here (e.g. DD_AGENT_VERSION = \"{PINNED_AGENT_7}\")")));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            other => return Err(bad(format!("{name} = {other}: expected a string, a boolean or a whole number"))),
        };
        out.push((name.clone(), text));
    }
    Ok(out)
}

/// The build targets an architecture the agent is not packaged for.
#[derive(Debug, thiserror::Error)]
#[error(
    "CNB_TARGET_ARCH={0:?}: the Datadog Agent is packaged for amd64 and arm64 only; build the app for one of them \
     (the platform sets CNB_TARGET_ARCH from the run image)"
)]
pub struct ArchError(pub String);

/// The Debian architecture of a CNB target (`CNB_TARGET_ARCH`, as OCI names it): `amd64` or
/// `arm64`, whose apt indexes are `binary-amd64` and `binary-arm64`. Unset (a platform that
/// does not pass targets), it is the architecture this binary runs on.
pub fn cnb_arch(target: Option<&str>) -> Result<String, ArchError> {
    match target {
        Some(arch @ ("amd64" | "arm64")) => Ok(arch.to_string()),
        None | Some("") => Ok(if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }.to_string()),
        Some(other) => Err(ArchError(other.into())),
    }
}

fn is_ours(name: &str) -> bool {
    name.starts_with("DD_") || name == "STACK"
}

fn bad(name: &str, value: &str, expected: &str, example: &str) -> SettingError {
    SettingError { name: name.into(), value: value.into(), expected: expected.into(), example: example.into() }
}

/// Parses a boolean setting case-insensitively; absent means `default`.
pub fn bool_setting(s: &Settings, name: &str, default: bool) -> Result<bool, SettingError> {
    match s.get(name).map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "yes" | "1" | "on") => Ok(true),
        Some("false" | "no" | "0" | "off") => Ok(false),
        Some(_) => Err(bad(name, s.get(name).unwrap_or(""), "expected true or false", if default { "false" } else { "true" })),
    }
}

/// A whole number within `range`; absent means `default`.
fn number_setting(s: &Settings, name: &str, range: std::ops::RangeInclusive<u64>, default: u64, unit: &str) -> Result<u64, SettingError> {
    let Some(raw) = s.get(name) else { return Ok(default) };
    match raw.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(bad(
            name,
            raw,
            &format!("expected a whole number of {unit} from {} to {}", range.start(), range.end()),
            &default.to_string(),
        )),
    }
}

/// The download settings (`DD_DOWNLOAD_*`): connect timeout, low-speed limit and window,
/// overall deadline, attempts, progress interval.
pub fn download_limits(s: &Settings) -> Result<Limits, SettingError> {
    let d = Limits::default();
    let seconds = |name, range, default: Duration| number_setting(s, name, range, default.as_secs(), "seconds").map(Duration::from_secs);
    Ok(Limits {
        connect_timeout: seconds(fetch::CONNECT_TIMEOUT, 1..=600, d.connect_timeout)?,
        low_speed_limit: number_setting(s, fetch::LOW_SPEED_LIMIT, 0..=1 << 30, d.low_speed_limit, "bytes per second (0: no limit)")?,
        low_speed_time: seconds(fetch::LOW_SPEED_TIME, 1..=3600, d.low_speed_time)?,
        deadline: seconds(fetch::TIMEOUT, 1..=86_400, d.deadline)?,
        attempts: number_setting(s, fetch::ATTEMPTS, 1..=20, d.attempts.into(), "attempts")? as u32,
        // At least every 10 s: a build log that says nothing for longer looks hung.
        progress_interval: seconds(fetch::PROGRESS_INTERVAL, 1..=10, d.progress_interval)?,
    })
}

impl Config {
    /// Validates settings into a build configuration.
    pub fn from_settings(s: &Settings) -> Result<Config, SettingError> {
        let mut warnings = Vec::new();
        let agent_version = match s.get("DD_AGENT_VERSION") {
            None => None,
            Some(raw) => {
                let version = match raw.strip_suffix("_amd64") {
                    Some(stripped) => {
                        warnings.push(format!(
                            "DD_AGENT_VERSION={raw} uses the old form with an architecture suffix; \
                             set it without: heroku config:set DD_AGENT_VERSION={stripped}"
                        ));
                        stripped
                    }
                    None => raw,
                };
                let plain = version.split_once(':').map(|(_, v)| v).unwrap_or(version);
                let major: Option<u64> = plain.split('.').next().and_then(|m| m.parse().ok());
                let looks_right = plain.contains('.') && plain.chars().all(|c| c.is_ascii_alphanumeric() || ".-~+".contains(c));
                if !looks_right || !matches!(major, Some(6 | 7)) {
                    return Err(bad(
                        "DD_AGENT_VERSION",
                        raw,
                        "expected an exact agent 6 or 7 version such as 7.81.2-1",
                        PINNED_AGENT_7,
                    ));
                }
                Some(version.to_string())
            }
        };
        let major_setting = match s.get("DD_AGENT_MAJOR_VERSION") {
            None => None,
            Some(v @ ("6" | "7")) => v.parse().ok(),
            Some(v) => return Err(bad("DD_AGENT_MAJOR_VERSION", v, "expected 6 or 7", "7")),
        };
        let version_major = agent_version
            .as_deref()
            .map(|v| v.split_once(':').map(|(_, v)| v).unwrap_or(v))
            .and_then(|v| v.split('.').next()?.parse::<u64>().ok());
        let major = match (version_major, major_setting) {
            (Some(from_version), Some(setting)) if from_version != setting => {
                warnings.push(format!(
                    "DD_AGENT_MAJOR_VERSION={setting} is ignored because DD_AGENT_VERSION asks for agent {from_version}; \
                     unset one of them: heroku config:unset DD_AGENT_MAJOR_VERSION"
                ));
                from_version
            }
            (Some(v), _) => v,
            (None, Some(v)) => v,
            (None, None) => 7,
        };
        let python_requested = match s.get("DD_PYTHON_VERSION") {
            None => None,
            Some(v @ ("2" | "3")) => v.parse().ok(),
            Some(v) => return Err(bad("DD_PYTHON_VERSION", v, "expected 2 or 3 (agent 7 always uses 3)", "3")),
        };
        if major == 7 && python_requested == Some(2) {
            return Err(bad(
                "DD_PYTHON_VERSION",
                "2",
                "agent 7 ships Python 3 only; use 3, or pin agent 6 with DD_AGENT_MAJOR_VERSION=6",
                "3",
            ));
        }
        let keyring = match s.get("DD_APT_KEYRING") {
            None => KeyringSetting::DatadogDefault,
            Some(path) => KeyringSetting::File(PathBuf::from(path)),
        };
        let offline = if bool_setting(s, "DD_OFFLINE", false)? { Some("DD_OFFLINE=true".to_string()) } else { None };
        Ok(Config {
            agent_version,
            major,
            python_requested,
            apm_enabled: bool_setting(s, "DD_APM_ENABLED", true)?,
            process_agent: bool_setting(s, "DD_PROCESS_AGENT", false)?,
            repo_url: s.get("DD_APT_REPO_URL").unwrap_or(DEFAULT_APT_REPO).trim_end_matches('/').to_string(),
            suite: s.get("DD_APT_SUITE").unwrap_or(DEFAULT_APT_SUITE).to_string(),
            keyring,
            arch: "amd64".into(),
            stack: s.get("STACK").map(str::to_string),
            offline,
            download: download_limits(s)?,
            cache: cache_settings(s, &mut warnings)?,
            warnings,
        })
    }

    /// The version to install: the exact one asked for, else the pin for the major version.
    pub fn wanted_version(&self) -> &str {
        match (&self.agent_version, self.major) {
            (Some(v), _) => v,
            (None, 6) => PINNED_AGENT_6,
            (None, _) => PINNED_AGENT_7,
        }
    }

    /// The repository component: the major version.
    pub fn component(&self) -> String {
        self.major.to_string()
    }
}

/// Setting: the shared layer cache, `host[:port]/repository` of an OCI registry.
pub const CACHE_REGISTRY: &str = "DD_CACHE_REGISTRY";

/// The shared layer cache's settings: `DD_CACHE_REGISTRY` (unset: no shared cache),
/// `DD_CACHE_REGISTRY_USER` / `DD_CACHE_REGISTRY_PASSWORD` (else the registry's entry in
/// the Docker `config.json`, if any), `DD_CACHE_REGISTRY_INSECURE` (plain http beyond
/// 127.0.0.1), `DD_CACHE_TRUSTED_KEYS` and `DD_CACHE_SIGNING_KEY`. Secrets never appear in
/// an error: the value shown is `<hidden>`. A Docker `config.json` that cannot be read is a
/// warning (pushed to `warnings`), not an error: the build goes on without credentials.
pub fn cache_settings(s: &Settings, warnings: &mut Vec<String>) -> Result<Option<crate::oci::cache::CacheSettings>, SettingError> {
    use crate::oci::registry::{Credentials, RepoRef};
    use crate::oci::sign::{PublicKey, SecretKey};
    let signing = match s.get("DD_CACHE_SIGNING_KEY") {
        None => None,
        Some(v) => Some(std::sync::Arc::new(SecretKey::from_setting(v, "DD_CACHE_SIGNING_KEY").map_err(|e| {
            bad("DD_CACHE_SIGNING_KEY", "<hidden>", &e.to_string(), "\"$(cat builder.secret)\"")
        })?)),
    };
    let trusted = match s.get("DD_CACHE_TRUSTED_KEYS") {
        None => Vec::new(),
        Some(v) => PublicKey::parse_list(v, "DD_CACHE_TRUSTED_KEYS").map_err(|e| bad("DD_CACHE_TRUSTED_KEYS", v, &e.to_string(), "\"$(cat builder.pub)\""))?,
    };
    let Some(value) = s.get(CACHE_REGISTRY) else { return Ok(None) };
    let insecure = bool_setting(s, "DD_CACHE_REGISTRY_INSECURE", false)?;
    let repo = RepoRef::parse(value, CACHE_REGISTRY, insecure).map_err(|e| {
        let expected = match e {
            crate::oci::registry::RegistryError::Setting { expected, .. } => expected,
            other => other.to_string(),
        };
        bad(CACHE_REGISTRY, value, &expected, "registry.example.com/team/ddslug-cache")
    })?;
    let credentials = match (s.get("DD_CACHE_REGISTRY_USER"), s.get("DD_CACHE_REGISTRY_PASSWORD")) {
        (Some(user), Some(password)) => Some(Credentials { user: user.into(), password: password.into() }),
        (Some(_), None) => return Err(bad("DD_CACHE_REGISTRY_PASSWORD", "", "DD_CACHE_REGISTRY_USER is set, so the password (or token) must be too", "<password>")),
        (None, Some(_)) => return Err(bad("DD_CACHE_REGISTRY_USER", "", "DD_CACHE_REGISTRY_PASSWORD is set, so the user name must be too", "<user>")),
        (None, None) => {
            let dir = std::env::var_os("DOCKER_CONFIG").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir.map(|dir| Credentials::from_docker_config(&dir.join("config.json"), &repo.host)) {
                Some(Ok(found)) => found,
                Some(Err(e)) => {
                    warnings.push(format!(
                        "{CACHE_REGISTRY}: no credentials taken from the Docker config ({e}); the registry is used without. \
                         Fix the file, or set DD_CACHE_REGISTRY_USER and DD_CACHE_REGISTRY_PASSWORD"
                    ));
                    None
                }
                None => None,
            }
        }
    };
    Ok(Some(crate::oci::cache::CacheSettings { repo, credentials, trusted, signing }))
}

/// The Python the agent will run, from its version and DD_PYTHON_VERSION: agents before
/// 6.14 have only Python 2 (a request for 3 is ignored with a warning, as the classic
/// buildpack ignores it), agent 6 from 6.14 defaults to 2, agent 7 is always 3.
pub fn effective_python(version: &[u64], major: u64, requested: Option<u64>) -> (u64, Option<String>) {
    let before_614 = crate::unpack::recipe::cmp_version(version, &[6, 14]).is_lt();
    match (major, before_614, requested) {
        (7, _, _) => (3, None),
        (_, true, Some(3)) => (
            2,
            Some(
                "DD_PYTHON_VERSION=3 is ignored: agents before 6.14 only ship Python 2. \
                 Pin 6.14 or newer to use Python 3: heroku config:set DD_AGENT_VERSION=6.53.1-1"
                    .into(),
            ),
        ),
        (_, _, Some(p)) => (p, None),
        (_, _, None) => (2, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_dir_values_are_bounded_and_errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("DD_TAGS"), b"team:caf\xe9").unwrap();
        let err = Settings::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("DD_TAGS is not UTF-8 text") && err.contains("heroku config:set DD_TAGS="), "{err}");
        std::fs::write(dir.path().join("DD_TAGS"), vec![b'a'; MAX_SETTING_BYTES as usize + 1]).unwrap();
        let err = Settings::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("DD_TAGS is longer than 1048576 bytes"), "{err}");
        std::fs::write(dir.path().join("DD_TAGS"), "team:x\n").unwrap();
        assert_eq!(Settings::load(Some(dir.path())).unwrap().get("DD_TAGS"), Some("team:x"));
    }

    fn config(pairs: &[(&str, &str)]) -> Result<Config, SettingError> {
        Config::from_settings(&Settings::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!((c.major, c.wanted_version(), c.component()), (7, PINNED_AGENT_7, "7".to_string()));
        assert!(c.apm_enabled && !c.process_agent);
        let c6 = config(&[("DD_AGENT_MAJOR_VERSION", "6")]).unwrap();
        assert_eq!(c6.wanted_version(), PINNED_AGENT_6);
    }

    #[test]
    fn amd64_suffix_warns_with_the_fix() {
        let c = config(&[("DD_AGENT_VERSION", "6.20.0-1_amd64")]).unwrap();
        assert_eq!(c.wanted_version(), "6.20.0-1");
        assert_eq!(c.major, 6);
        assert!(c.warnings[0].contains("heroku config:set DD_AGENT_VERSION=6.20.0-1"), "{:?}", c.warnings);
    }

    #[test]
    fn rejections_name_the_setting() {
        let e = config(&[("DD_PYTHON_VERSION", "4")]).unwrap_err();
        assert!(e.to_string().starts_with("DD_PYTHON_VERSION=\"4\": expected 2 or 3"), "{e}");
        assert!(config(&[("DD_AGENT_MAJOR_VERSION", "8")]).is_err());
        assert!(config(&[("DD_AGENT_VERSION", "latest")]).is_err());
        assert!(config(&[("DD_APM_ENABLED", "maybe")]).is_err());
        assert!(config(&[("DD_PYTHON_VERSION", "2")]).is_err());
    }

    #[test]
    fn download_settings_have_defaults_and_bounds() {
        assert_eq!(config(&[]).unwrap().download, Limits::default());
        let c = config(&[("DD_DOWNLOAD_TIMEOUT", "90"), ("DD_DOWNLOAD_LOW_SPEED_LIMIT", "0"), ("DD_DOWNLOAD_ATTEMPTS", "1")]).unwrap();
        assert_eq!((c.download.deadline, c.download.low_speed_limit, c.download.attempts), (Duration::from_secs(90), 0, 1));
        let e = config(&[("DD_DOWNLOAD_TIMEOUT", "ten")]).unwrap_err().to_string();
        assert_eq!(
            e,
            "DD_DOWNLOAD_TIMEOUT=\"ten\": expected a whole number of seconds from 1 to 86400. \
             Fix it with: heroku config:set DD_DOWNLOAD_TIMEOUT=600"
        );
        for (name, value) in [
            ("DD_DOWNLOAD_CONNECT_TIMEOUT", "0"),
            ("DD_DOWNLOAD_LOW_SPEED_TIME", "-1"),
            ("DD_DOWNLOAD_ATTEMPTS", "21"),
            ("DD_DOWNLOAD_PROGRESS_INTERVAL", "60"),
        ] {
            let e = config(&[(name, value)]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{name}={value:?}: expected a whole number")), "{e}");
        }
    }

    #[test]
    fn cache_settings_are_validated_and_secrets_never_shown() {
        assert!(config(&[]).unwrap().cache.is_none());
        let key = crate::oci::sign::SecretKey::generate("ci").unwrap();
        let public = key.public().to_string();
        let c = config(&[
            ("DD_CACHE_REGISTRY", "127.0.0.1:5000/ddslug/cache"),
            ("DD_CACHE_REGISTRY_USER", "me"),
            ("DD_CACHE_REGISTRY_PASSWORD", "hunter2"),
            ("DD_CACHE_TRUSTED_KEYS", &public),
            ("DD_CACHE_SIGNING_KEY", &key.to_text()),
        ])
        .unwrap();
        let cache = c.cache.as_ref().unwrap();
        assert_eq!((cache.repo.scheme, cache.trusted.len()), ("http", 1));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains(&key.to_text()), "{shown}");
        let e = config(&[("DD_CACHE_REGISTRY", "http://registry.example.com/c")]).unwrap_err().to_string();
        assert!(e.starts_with("DD_CACHE_REGISTRY=\"http://registry.example.com/c\": plain http") && e.contains("heroku config:set"), "{e}");
        let e = config(&[("DD_CACHE_REGISTRY", "h/c"), ("DD_CACHE_REGISTRY_USER", "me")]).unwrap_err().to_string();
        assert!(e.starts_with("DD_CACHE_REGISTRY_PASSWORD"), "{e}");
        let secret_text = format!("{}x", key.to_text());
        let e = config(&[("DD_CACHE_SIGNING_KEY", &secret_text)]).unwrap_err().to_string();
        assert!(e.starts_with("DD_CACHE_SIGNING_KEY=\"<hidden>\"") && !e.contains(&key.to_text()), "{e}");
    }

    #[test]
    fn booleans_are_case_insensitive() {
        let c = config(&[("DD_APM_ENABLED", "FALSE"), ("DD_PROCESS_AGENT", "True")]).unwrap();
        assert!(!c.apm_enabled && c.process_agent);
    }

    #[test]
    fn project_toml_table_fills_what_the_environment_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project.toml");
        std::fs::write(
            &project,
            "[_]\nschema-version = \"0.2\"\n\n[com.datadoghq.ddslug]\nDD_AGENT_VERSION = \"7.68.0-1\"\nDD_APM_ENABLED = false\nDD_DOWNLOAD_ATTEMPTS = 3\n",
        )
        .unwrap();
        let env = dir.path().join("env");
        std::fs::create_dir(&env).unwrap();
        std::fs::write(env.join("DD_APM_ENABLED"), "true\n").unwrap();
        let s = Settings::load_cnb(Some(&env), &project).unwrap();
        assert_eq!(s.get("DD_AGENT_VERSION"), Some("7.68.0-1"));
        assert_eq!(s.get("DD_APM_ENABLED"), Some("true"), "the platform's env wins over project.toml");
        assert_eq!(s.get("DD_DOWNLOAD_ATTEMPTS"), Some("3"));
        // No project.toml, or one without the table: no settings from it.
        assert!(Settings::load_cnb(None, &dir.path().join("missing.toml")).is_ok());
        std::fs::write(&project, "[_]\nid = \"app\"\n").unwrap();
        assert!(Settings::load_cnb(None, &project).unwrap().get("DD_AGENT_VERSION").is_none());
    }

    #[test]
    fn project_toml_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project.toml");
        std::fs::write(&project, "[com.datadoghq.ddslug]\nPATH = \"/x\"\n").unwrap();
        let e = Settings::load_cnb(None, &project).unwrap_err().to_string();
        assert!(e.contains("project.toml: [com.datadoghq.ddslug] PATH: not a ddslug setting"), "{e}");
        std::fs::write(&project, "[com.datadoghq.ddslug]\nDD_TAGS = [\"a\"]\n").unwrap();
        let e = Settings::load_cnb(None, &project).unwrap_err().to_string();
        assert!(e.contains("DD_TAGS = [\"a\"]: expected a string, a boolean or a whole number"), "{e}");
        std::fs::write(&project, "[com.datadoghq.ddslug\n").unwrap();
        let e = Settings::load_cnb(None, &project).unwrap_err().to_string();
        assert!(e.contains("project.toml is not valid TOML"), "{e}");
        std::fs::write(&project, vec![b'#'; PROJECT_TOML_LIMIT as usize + 1]).unwrap();
        let e = Settings::load_cnb(None, &project).unwrap_err().to_string();
        assert!(e.contains("the limit for a project.toml"), "{e}");
    }

    #[test]
    fn cnb_architectures() {
        assert_eq!(cnb_arch(Some("arm64")).unwrap(), "arm64");
        assert_eq!(cnb_arch(Some("amd64")).unwrap(), "amd64");
        let e = cnb_arch(Some("ppc64le")).unwrap_err().to_string();
        assert!(e.starts_with("CNB_TARGET_ARCH=\"ppc64le\": the Datadog Agent is packaged for amd64 and arm64 only"), "{e}");
    }

    #[test]
    fn python_rules() {
        assert_eq!(effective_python(&[6, 13, 0], 6, None), (2, None));
        let (python, warning) = effective_python(&[6, 13, 0], 6, Some(3));
        assert_eq!(python, 2);
        assert!(warning.unwrap().contains("before 6.14"));
        assert_eq!(effective_python(&[6, 14, 0], 6, Some(3)).0, 3);
        assert_eq!(effective_python(&[6, 53, 1], 6, None).0, 2);
        assert_eq!(effective_python(&[7, 81, 2], 7, None).0, 3);
    }
}
