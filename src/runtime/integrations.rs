//! The app's integration configs (datadog/conf.d, checks.d) and the Postgres and Redis
//! integrations built from Heroku's database URLs. Passwords go into the config files the
//! agent reads, never into a message.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Env, Level, Log, is_true};

/// Copies `datadog/conf.d/<dir>/`, the older `conf.d/<name>.yaml` form (to `<name>.d/conf.yaml`),
/// and `checks.d/*.yaml` / `*.py` into the agent's configuration.
pub fn copy_app_configs(app_datadog: &Path, conf_dir: &Path) -> Result<()> {
    let app_conf = app_datadog.join("conf.d");
    let agent_conf = conf_dir.join("conf.d");
    for entry in sorted_entries(&app_conf) {
        let path = entry;
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        if path.is_dir() {
            copy_dir(&path, &agent_conf.join(&name))?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let dest = agent_conf.join(format!("{stem}.d"));
            fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
            fs::copy(&path, dest.join("conf.yaml")).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    let checks = app_datadog.join("checks.d");
    for path in sorted_entries(&checks) {
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let dest = match ext.as_str() {
            "yaml" => agent_conf.join(name),
            "py" => conf_dir.join("checks.d").join(name),
            _ => continue,
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(&path, &dest).with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for path in sorted_entries(from) {
        let dest = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            fs::copy(&path, &dest).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// A setting with its deprecated name as fallback (warning when the old name is used).
fn with_deprecated(env: &Env, log: &mut Log, name: &str, old: &str) -> Option<String> {
    if let Some(v) = env.get(old).filter(|v| !v.is_empty()) {
        log.say(Level::Warn, &format!("{old} is deprecated and will be removed; use {name} instead"));
        if env.get(name).is_none_or(|v| v.is_empty()) {
            return Some(v.clone());
        }
    }
    env.get(name).cloned()
}

/// A parsed `postgres://user:password@host:port/db` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct PgUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: String,
    pub db: String,
}

/// Parses a Heroku Postgres URL (both `postgres://` and `postgresql://`).
pub fn parse_pg(url: &str) -> Option<PgUrl> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let (auth, hostpart) = rest.rsplit_once('@')?;
    let (user, password) = auth.split_once(':')?;
    let (hostport, db) = hostpart.split_once('/')?;
    let (host, port) = hostport.rsplit_once(':')?;
    if user.is_empty() || password.is_empty() || host.is_empty() || port.is_empty() {
        return None;
    }
    Some(PgUrl { user: user.into(), password: password.into(), host: host.into(), port: port.into(), db: db.into() })
}

/// A parsed `redis[s]://[user]:password@host:port[/db]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: String,
    pub db: String,
}

/// Parses a Heroku Redis URL.
pub fn parse_redis(url: &str) -> Option<RedisUrl> {
    let (tls, rest) = match url.strip_prefix("rediss://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("redis://")?),
    };
    let (auth, hostpart) = rest.rsplit_once('@')?;
    let (user, password) = auth.split_once(':')?;
    let (hostport, db) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let (host, port) = hostport.rsplit_once(':')?;
    if password.is_empty() || host.is_empty() || port.is_empty() {
        return None;
    }
    Some(RedisUrl { tls, user: user.into(), password: password.into(), host: host.into(), port: port.into(), db: db.into() })
}

/// One database integration: its settings (current and deprecated names) and URL form.
struct Database<T> {
    label: &'static str,
    enable: (&'static str, &'static str),
    url_vars: (&'static str, &'static str),
    default_var: &'static str,
    form: &'static str,
    parse: fn(&str) -> Option<T>,
}

impl<T> Database<T> {
    /// `None` when the integration is off; else each usable URL, by the variable naming it.
    /// Unset or malformed variables are skipped with a warning that never shows the URL.
    fn urls(&self, env: &Env, log: &mut Log) -> Option<Vec<(String, T)>> {
        let enabled = with_deprecated(env, log, self.enable.0, self.enable.1);
        if !enabled.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let vars = with_deprecated(env, log, self.url_vars.0, self.url_vars.1).unwrap_or_else(|| self.default_var.into());
        let mut found = Vec::new();
        for var in vars.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let Some(url) = env.get(var).filter(|u| !u.is_empty()) else {
                log.say(Level::Warn, &format!("{} integration: {var} is not set; skipping it", self.label));
                continue;
            };
            match (self.parse)(url) {
                Some(parsed) => found.push((var.to_string(), parsed)),
                None => log.say(Level::Warn, &format!("{} integration: {var} is not a {} URL; skipping it", self.label, self.form)),
            }
        }
        Some(found)
    }
}

const POSTGRES: Database<PgUrl> = Database {
    label: "Postgres",
    enable: ("DD_ENABLE_HEROKU_POSTGRES", "ENABLE_HEROKU_POSTGRES"),
    url_vars: ("DD_POSTGRES_URL_VAR", "POSTGRES_URL_VAR"),
    default_var: "DATABASE_URL",
    form: "postgres://user:password@host:port/db",
    parse: parse_pg,
};

const REDIS: Database<RedisUrl> = Database {
    label: "Redis",
    enable: ("DD_ENABLE_HEROKU_REDIS", "ENABLE_HEROKU_REDIS"),
    url_vars: ("DD_REDIS_URL_VAR", "REDIS_URL_VAR"),
    default_var: "REDIS_URL",
    form: "redis[s]://[user]:password@host:port[/db]",
    parse: parse_redis,
};

/// Writes postgres.d/conf.yaml and redisdb.d/conf.yaml when their integrations are enabled.
pub fn database_integrations(env: &Env, conf_dir: &Path, log: &mut Log) -> Result<()> {
    if let Some(urls) = POSTGRES.urls(env, log) {
        let mut yaml = String::from("init_config: \ninstances: \n\n");
        for (var, pg) in urls {
            yaml += &format!(
                "  - host: {}\n    username: {}\n    password: {}\n    port: {}\n    dbname: {}\n    ssl: require\n    disable_generic_tags: false\n",
                pg.host, pg.user, pg.password, pg.port, pg.db
            );
            if is_true(env, "DD_ENABLE_DBM") {
                yaml += "    dbm: true\n";
            }
            log.say(Level::Debug, &format!("Postgres integration: {var} -> {}:{}/{}", pg.host, pg.port, pg.db));
        }
        write(&conf_dir.join("conf.d/postgres.d/conf.yaml"), &yaml)?;
    }
    if let Some(urls) = REDIS.urls(env, log) {
        let mut yaml = String::from("init_config: \ninstances: \n\n");
        for (var, r) in urls {
            yaml += &format!("  - host: {}\n    password: {}\n    port: {}\n", r.host, r.password, r.port);
            if r.tls {
                yaml += "    ssl: true\n    ssl_cert_reqs: 0\n";
            }
            if !r.user.is_empty() {
                yaml += &format!("    username: {}\n", r.user);
            }
            if !r.db.is_empty() {
                yaml += &format!("    db: {}\n", r.db);
            }
            log.say(Level::Debug, &format!("Redis integration: {var} -> {}:{}", r.host, r.port));
        }
        write(&conf_dir.join("conf.d/redisdb.d/conf.yaml"), &yaml)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let pg = parse_pg("postgres://u:p@ss@h.example:5432/db1").unwrap();
        assert_eq!((pg.user.as_str(), pg.password.as_str(), pg.host.as_str(), pg.db.as_str()), ("u", "p@ss", "h.example", "db1"));
        assert!(parse_pg("mysql://u:p@h:1/d").is_none());
        assert!(parse_pg("postgres://u@h:1/d").is_none());
        let r = parse_redis("rediss://:pw@r.example:6380").unwrap();
        assert!(r.tls && r.user.is_empty() && r.db.is_empty() && r.port == "6380");
        let r = parse_redis("redis://default:pw@r:6379/2").unwrap();
        assert_eq!((r.user.as_str(), r.db.as_str(), r.tls), ("default", "2", false));
        assert!(parse_redis("redis://r:6379").is_none());
    }
}
