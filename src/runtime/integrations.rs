//! The Postgres and Redis integrations built from Heroku's database URLs
//! (`DD_ENABLE_HEROKU_POSTGRES`, `DD_POSTGRES_URL_VAR`, and the Redis and deprecated forms).
//!
//! Contract: every URL part goes into conf.yaml through [`quote`] (ports and database numbers
//! as integers when they are canonical decimals), so any value reads back exactly; URL parts are
//! not percent-decoded, as the classic script did not decode them. A URL that YAML cannot hold
//! (bytes that are not UTF-8, a NUL) is skipped with a warning naming its variable, and the
//! agent starts without that instance, as the classic skipped a URL its pattern did not match.
//! The files are written 0600 through [`Tree`]. Passwords and URLs never go into a message.

use anyhow::Result;

use super::confdir::{Keep, Missing, Tree};
use super::yaml::{Unrepresentable, number_or_quote, quote};
use super::{Env, Level, Log, is_true};

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
            if env.is_not_utf8(var) {
                log.say(
                    Level::Warn,
                    &format!("{} integration: {var} is not valid UTF-8, which the agent's configuration cannot hold; skipping it (fix the value of {var})", self.label),
                );
                continue;
            }
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

/// Writes postgres.d/conf.yaml and redisdb.d/conf.yaml into `conf` (the agent's configuration
/// directory) when their integrations are enabled.
pub fn database_integrations(env: &Env, conf: &Tree, log: &mut Log) -> Result<()> {
    let header = "init_config: \ninstances: \n\n";
    if let Some(urls) = POSTGRES.urls(env, log) {
        let mut yaml = String::from(header);
        for (var, pg) in urls {
            match postgres_instance(&pg, is_true(env, "DD_ENABLE_DBM")) {
                Ok(instance) => yaml += &instance,
                Err((part, _)) => {
                    refused(log, POSTGRES.label, part, &var);
                    continue;
                }
            }
            log.say(Level::Debug, &format!("Postgres integration: {var} -> {}:{}/{}", pg.host.escape_debug(), pg.port.escape_debug(), pg.db.escape_debug()));
        }
        conf.subdir("conf.d/postgres.d", Missing::Create, Keep::Restore)?.write_private("conf.yaml", yaml.as_bytes())?;
    }
    if let Some(urls) = REDIS.urls(env, log) {
        let mut yaml = String::from(header);
        for (var, r) in urls {
            match redis_instance(&r) {
                Ok(instance) => yaml += &instance,
                Err((part, _)) => {
                    refused(log, REDIS.label, part, &var);
                    continue;
                }
            }
            log.say(Level::Debug, &format!("Redis integration: {var} -> {}:{}", r.host.escape_debug(), r.port.escape_debug()));
        }
        conf.subdir("conf.d/redisdb.d", Missing::Create, Keep::Restore)?.write_private("conf.yaml", yaml.as_bytes())?;
    }
    Ok(())
}

/// Which URL part could not be written.
type Refusal = (&'static str, Unrepresentable);

fn refused(log: &mut Log, label: &str, part: &str, var: &str) {
    log.say(
        Level::Warn,
        &format!("{label} integration: the {part} in {var} has a character the agent's configuration cannot hold (NUL); skipping it (fix {var})"),
    );
}

fn field(part: &'static str, value: &str) -> Result<String, Refusal> {
    quote(value).map_err(|e| (part, e))
}

fn number(part: &'static str, value: &str) -> Result<String, Refusal> {
    number_or_quote(value).map_err(|e| (part, e))
}

/// One `instances:` item of postgres.d/conf.yaml, the classic's keys in the classic's order.
fn postgres_instance(pg: &PgUrl, dbm: bool) -> Result<String, Refusal> {
    let mut out = format!(
        "  - host: {}\n    username: {}\n    password: {}\n    port: {}\n    dbname: {}\n    ssl: require\n    disable_generic_tags: false\n",
        field("host", &pg.host)?,
        field("user", &pg.user)?,
        field("password", &pg.password)?,
        number("port", &pg.port)?,
        field("database name", &pg.db)?,
    );
    if dbm {
        out += "    dbm: true\n";
    }
    Ok(out)
}

/// One `instances:` item of redisdb.d/conf.yaml.
fn redis_instance(r: &RedisUrl) -> Result<String, Refusal> {
    let mut out = format!("  - host: {}\n    password: {}\n    port: {}\n", field("host", &r.host)?, field("password", &r.password)?, number("port", &r.port)?);
    if r.tls {
        out += "    ssl: true\n    ssl_cert_reqs: 0\n";
    }
    if !r.user.is_empty() {
        out += &format!("    username: {}\n", field("user", &r.user)?);
    }
    if !r.db.is_empty() {
        out += &format!("    db: {}\n", number("database number", &r.db)?);
    }
    Ok(out)
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

    #[test]
    fn instances_read_back_exactly() {
        use yaml_rust2::YamlLoader;
        let pg = parse_pg("postgres://u\n- x:p: w\n  #{*&!%'\"@h: 1:0123/d b").unwrap();
        let text = format!("instances:\n{}", postgres_instance(&pg, true).unwrap());
        let docs = YamlLoader::load_from_str(&text).unwrap();
        let i = &docs[0]["instances"][0];
        assert_eq!(i["username"].as_str(), Some("u\n- x"));
        assert_eq!(i["password"].as_str(), Some("p: w\n  #{*&!%'\""));
        assert_eq!(i["host"].as_str(), Some("h: 1"));
        assert_eq!(i["port"].as_str(), Some("0123"), "not a canonical number: kept as the exact string");
        assert_eq!(i["dbname"].as_str(), Some("d b"));
        assert_eq!(i["dbm"].as_bool(), Some(true));
        let r = parse_redis("rediss://us er:p\nw@h:6380/3").unwrap();
        let docs = YamlLoader::load_from_str(&format!("instances:\n{}", redis_instance(&r).unwrap())).unwrap();
        let i = &docs[0]["instances"][0];
        assert_eq!((i["password"].as_str(), i["username"].as_str(), i["port"].as_i64(), i["db"].as_i64()), (Some("p\nw"), Some("us er"), Some(6380), Some(3)));
        let nul = PgUrl { password: "a\0b".into(), ..pg };
        assert_eq!(postgres_instance(&nul, false).unwrap_err().0, "password");
    }
}
