//! The two steps `.profile.d/datadog.sh` runs around the app's prerun.sh: `prepare`
//! (configuration, hostname, paths) and `start` (tags, then the agents in the background).
//!
//! Every write into the slug goes through [`Tree`] (no symlink followed, files 0600 and
//! renamed into place, read-only directories opened up for a non-root dyno user).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow};

use super::appconf::copy_app_configs;
use super::confdir::{Keep, Missing, Tree};
use super::integrations::database_integrations;
use super::yaml::{YamlSettings, edit, install_info};
use super::{Env, Level, Log, Paths, agent_version, assign_line, dyno_host, export_line, is_true, normalize_tags, rfc1123};
use crate::unpack::recipe::cmp_version;

/// The buildpack version reported in tags and install_info.
pub const BUILDPACK_VERSION: &str = concat!("ddslug-", env!("CARGO_PKG_VERSION"));

/// The most dyno start reads of the package's datadog.yaml.example (the real one is ~100 KB).
pub const MAX_EXAMPLE_BYTES: u64 = 4 << 20;

/// Below `.apt`: the directories dyno start writes into.
const CONF_DIR: &str = "etc/datadog-agent";
const RUN_DIR: &str = "opt/datadog-agent/run";
const LOG_DIR: &str = "var/log/datadog";

/// Writes the agent's configuration; returns the lines for the shell to eval.
pub fn prepare(env: &Env, log: &mut Log) -> Result<Vec<String>> {
    let paths = Paths::from_env(env);
    let (version, major) = agent_version(&paths)?;
    let mut exports = Vec::new();
    let mut export = |name: &str, value: &str| exports.push(export_line(name, value));

    let apt = paths.open_apt()?;
    // The agent writes auth_token and its IPC certificate next to datadog.yaml: kept writable.
    let conf = apt.subdir(CONF_DIR, Missing::Fail, Keep::Writable)?;
    let example = conf.read_bounded("datadog.yaml.example", MAX_EXAMPLE_BYTES)?;
    let example = String::from_utf8(example).map_err(|_| anyhow!("{}/datadog.yaml.example from the agent package is not UTF-8", conf.path().display()))?;
    let python = python_dir(&paths.dd_dir);
    let python_major = python.as_deref().and_then(|p| p.strip_prefix("python")).and_then(|p| p.chars().next());
    let process_log = paths.log_dir.join("datadog-proc.log").to_string_lossy().into_owned();
    let apm_log = paths.log_dir.join("datadog-apm.log").to_string_lossy().into_owned();
    let (conf_dir, run_dir) = (paths.conf_dir.to_string_lossy(), paths.run_dir.to_string_lossy());
    let settings = YamlSettings {
        conf_dir: &conf_dir,
        run_dir: &run_dir,
        apm_log: &apm_log,
        process_log: is_true(env, "DD_PROCESS_AGENT").then_some(process_log.as_str()),
        // The classic script's version test is inverted and leaves this out; agent 6 on
        // Python 3 needs it.
        python3_on_agent6: major == 6 && python_major == Some('3'),
    };
    let yaml = edit(&example, &settings).map_err(|e| anyhow!("the agent's path ({}) cannot go into datadog.yaml: {e}", paths.apt.display()))?;
    conf.write_private("datadog.yaml", yaml.as_bytes())?;
    conf.write_private("install_info", install_info(BUILDPACK_VERSION)?.as_bytes())?;
    apt.subdir(RUN_DIR, Missing::Create, Keep::Writable)?;
    apt.subdir(LOG_DIR, Missing::Create, Keep::Writable)?;
    copy_app_configs(&paths.app_datadog, &conf, log)?;

    let host = dyno_host(env);
    let dyno = env.get("DYNO").cloned().unwrap_or_default();
    let dynotype = dyno.split('.').next().unwrap_or_default().to_string();
    export("DYNOTYPE", &dynotype);
    export("DD_HOST_ALIASES", &host);
    match env.get("DD_HOSTNAME").filter(|h| !h.is_empty()) {
        Some(_) => log.say(
            Level::Debug,
            "DD_HOSTNAME is set; it may cause metrics errors. To remove it: heroku config:unset DD_HOSTNAME",
        ),
        None if is_true(env, "DD_DYNO_HOST") => {
            let app = env.get("HEROKU_APP_NAME").cloned().unwrap_or_default();
            let safe_app = rfc1123(&app, false);
            if safe_app != app {
                log.say(Level::Debug, &format!("the app name {app:?} has characters a host name cannot have; using {safe_app:?}"));
            }
            export("DD_HOSTNAME", &format!("{safe_app}.{}", rfc1123(&dyno, true)));
        }
        None => export("DD_HOSTNAME", &rfc1123(&host, false)),
    }

    if is_true(env, "DD_DISABLE_HOST_METRICS") {
        disable_host_checks(&conf.subdir("conf.d", Missing::Create, Keep::Restore)?, 0)?;
    }
    if let Some(python) = &python {
        restore_symlinks(&apt, python_major == Some('3'))?;
        export("DD_PYTHONPATH", &python_path(&paths.dd_dir, python));
    }
    database_integrations(env, &conf, log)?;

    let dd = paths.dd_dir.to_string_lossy();
    let apt_path = paths.apt.to_string_lossy();
    export("DD_BIN_DIR", &paths.bin_dir.to_string_lossy());
    export("DATADOG_CONF", &paths.datadog_yaml().to_string_lossy());
    // The multiarch directory of the machine the agent runs on (this binary is built for it).
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    export("DD_LD_LIBRARY_PATH", &format!("{dd}/embedded/lib:{apt_path}/usr/lib/{multiarch}:{apt_path}/usr/lib"));
    export("DD_LOG_FILE", &paths.log_dir.join("datadog.log").to_string_lossy());
    let path = env.get("PATH").cloned().unwrap_or_default();
    export("PATH", &format!("{apt_path}/usr/bin:{}:{path}", paths.bin_dir.display()));
    export("DD_AGENT_VERSION_RUNNING", &version.iter().map(u64::to_string).collect::<Vec<_>>().join("."));
    // As the classic script: a shell variable (exported only if it already was) that prerun.sh
    // may change and `start` reads back.
    exports.push(assign_line("DD_AGENT_MAJOR_VERSION", &major.to_string()));
    Ok(exports)
}

/// After prerun.sh: final tags, then the agents (unless `agents` is false: `prepare` failed).
/// Returns the `export` lines.
///
/// `env` is the shell's view after prerun.sh (datadog.sh passes unexported settings too). The
/// agents inherit this process's environment with the tags, version, dyno marker and their own
/// library paths set, as the classic started them with the shell's exports.
pub fn start(env: &Env, log: &mut Log, agents: bool) -> Result<Vec<String>> {
    let paths = Paths::from_env(env);
    let (version, manifest_major) = agent_version(&paths)?;
    // The classic compares DD_AGENT_MAJOR_VERSION (set before prerun.sh, which may change it)
    // with "6" only.
    let major = match env.get("DD_AGENT_MAJOR_VERSION").map(String::as_str) {
        Some("6") => 6,
        Some(_) => 7,
        None => manifest_major,
    };
    let dyno = env.get("DYNO").cloned().unwrap_or_default();
    let dynotype = dyno.split('.').next().unwrap_or_default();
    let mut tags = format!("dyno:{dyno} dynotype:{dynotype} buildpackversion:{BUILDPACK_VERSION}");
    if let Some(app) = env.get("HEROKU_APP_NAME").filter(|a| !a.is_empty()) {
        tags += &format!(" appname:{app}");
    }
    if let Some(user) = env.get("DD_TAGS").filter(|t| !t.is_empty()) {
        tags += " ";
        tags += &normalize_tags(user);
    }
    log.say(Level::Debug, &format!("normalized tags: {tags}"));
    let dd_version = env.get("DD_VERSION").cloned().unwrap_or_default();
    let exports = vec![export_line("DD_TAGS", &tags), export_line("DD_VERSION", &dd_version), export_line("DD_HEROKU_DYNO", "true")];
    let disabled = env.get("DISABLE_DATADOG_AGENT").is_some_and(|v| !v.is_empty());
    let no_key = env.get("DD_API_KEY").is_none_or(|k| k.is_empty());
    if no_key {
        log.say(Level::Error, "DD_API_KEY is not set, so the Datadog Agent will not start. Run: heroku config:add DD_API_KEY=<your API key>");
        return Ok(exports);
    }
    if disabled {
        log.say(Level::Info, "The Datadog Agent is disabled by DISABLE_DATADOG_AGENT; unset it to start the agent.");
        return Ok(exports);
    }
    if !agents {
        // `prepare` failed and said why: no configuration to start the agents with.
        return Ok(exports);
    }
    // In a CNB image the launcher runs exec.d for every process it starts in the container:
    // the agents are started by the first only (they hold the lock for as long as they run).
    let _running = match env.get(super::CNB_AGENT_LAYER).filter(|l| !l.is_empty()) {
        Some(_) => match claim_agents_lock(&paths)? {
            Some(lock) => Some(lock),
            None => {
                log.say(Level::Info, "The Datadog Agent is already running in this container; not starting it again.");
                return Ok(exports);
            }
        },
        None => None,
    };
    let ld = env.get("DD_LD_LIBRARY_PATH").cloned().unwrap_or_else(|| format!("{}/embedded/lib", paths.dd_dir.display()));
    let agent_env = [
        ("DD_TAGS", tags),
        ("DD_VERSION", dd_version),
        ("DD_HEROKU_DYNO", "true".to_string()),
        ("PYTHONPATH", env.get("DD_PYTHONPATH").cloned().unwrap_or_default()),
        ("LD_LIBRARY_PATH", ld),
    ];
    let conf = paths.datadog_yaml().to_string_lossy().into_owned();
    for (program, args) in launches(&paths, env, &version, major)? {
        log.say(Level::Debug, &format!("starting {} {}", program.display(), args.join(" ")));
        spawn(&program, &args.iter().map(|a| a.replace("{conf}", &conf)).collect::<Vec<_>>(), &agent_env)?;
    }
    Ok(exports)
}

/// The file in the run directory whose lock the agents of a CNB container hold.
pub const AGENTS_LOCK: &str = "ddslug-agents.lock";

/// Takes the agents' lock (`run/ddslug-agents.lock`, `flock`), made inheritable so that the
/// agents about to start keep it held for as long as any of them runs; `None` when agents
/// started earlier in this container hold it.
fn claim_agents_lock(paths: &Paths) -> Result<Option<std::fs::File>> {
    use rustix::fs::{FlockOperation, flock};
    use rustix::io::{Errno, FdFlags, fcntl_setfd};
    let run = paths.open_apt()?.subdir(RUN_DIR, Missing::Create, Keep::Writable)?;
    let file = run.open_lock_file(AGENTS_LOCK)?;
    let path = paths.run_dir.join(AGENTS_LOCK);
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Ok(None),
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display())),
    }
    fcntl_setfd(&file, FdFlags::empty()).map_err(std::io::Error::from).with_context(|| format!("handing {} to the agents", path.display()))?;
    Ok(Some(file))
}

/// Which programs to start, with which arguments (`{conf}` stands for datadog.yaml).
pub fn launches(paths: &Paths, env: &Env, version: &[u64], major: u64) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let at_least = |v6: &[u64], v7: &[u64]| cmp_version(version, if major == 6 { v6 } else { v7 }).is_ge();
    let mut out = Vec::new();
    let run = if cmp_version(version, &[6, 4, 1]).is_lt() { "start" } else { "run" };
    out.push((paths.bin_dir.join("agent"), vec![run.to_string(), "-c".into(), "{conf}".into()]));
    let apm_off = env.get("DD_APM_ENABLED").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    if !apm_off {
        let flag = if at_least(&[6, 48], &[7, 48]) { "--config" } else { "-config" };
        out.push((paths.dd_dir.join("embedded/bin/trace-agent"), vec![flag.into(), "{conf}".into()]));
    }
    let separate_process_agent = major == 6 || cmp_version(version, &[7, 68]).is_lt();
    if is_true(env, "DD_PROCESS_AGENT") && separate_process_agent {
        let flag = if at_least(&[6, 36], &[7, 36]) { "--cfgpath" } else { "--config" };
        let program = if at_least(&[6, 52], &[7, 52]) {
            // The combined binary acts as the process agent when called by that name.
            let bin = paths.open_apt()?.subdir("opt/datadog-agent/bin/agent", Missing::Fail, Keep::Restore)?;
            bin.symlink("agent", "process-agent")?;
            paths.bin_dir.join("process-agent")
        } else {
            paths.dd_dir.join("embedded/bin/process-agent")
        };
        out.push((program, vec![flag.into(), "{conf}".into()]));
    }
    Ok(out)
}

fn spawn(program: &Path, args: &[String], env: &[(&str, String)]) -> Result<()> {
    // The agents write to the dyno's log stream (our stderr), never to the stdout the shell
    // is capturing for `eval`, and run on after ddslug exits.
    use std::os::fd::AsFd;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().context("duplicating stderr")?;
    let stderr2 = stderr.try_clone().context("duplicating stderr")?;
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::from(stderr2))
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(())
}

/// `python2.7` or `python3.12`: the one Python directory the recipe left.
fn python_dir(dd_dir: &Path) -> Option<String> {
    let mut found: Vec<String> = fs::read_dir(dd_dir.join("embedded/lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("python").is_some_and(|v| {
                let mut parts = v.split('.');
                matches!(parts.next(), Some("2" | "3")) && parts.next().is_some_and(|m| m.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .collect();
    found.sort();
    found.pop()
}

fn python_path(dd: &Path, python: &str) -> String {
    let lib = dd.join("embedded/lib").join(python);
    let site = lib.join("site-packages");
    let mut parts = vec![
        dd.join("embedded/lib"),
        dd.join("bin/agent/dist"),
        lib.join("lib-dynload"),
        lib.join("lib-tk"),
        lib.join("plat-linux2"),
        lib.clone(),
        site.clone(),
    ];
    // pip and setuptools eggs, as the classic script adds them.
    for prefix in ["setuptools", "pip"] {
        if let Ok(entries) = fs::read_dir(&site) {
            let mut eggs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    n.starts_with(prefix) && n.ends_with("egg")
                })
                .collect();
            eggs.sort();
            parts.extend(eggs);
        }
    }
    parts.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":")
}

/// The symlinks the build removed because they were absolute into /opt, made again. They are
/// relative (the classic wrote absolute ones into the dyno's path): the same file whatever
/// the slug's location, and never a way out of it.
fn restore_symlinks(apt: &Tree, python3: bool) -> Result<()> {
    let mut links = vec![("opt/datadog-agent/embedded/ssl", "certs/cacert.pem", "cert.pem")];
    let bin = "opt/datadog-agent/embedded/bin";
    if python3 {
        links.extend([(bin, "python3", "python"), (bin, "python3-config", "python-config"), (bin, "pip3", "pip")]);
    } else {
        links.push((bin, "pip2", "pip"));
    }
    for (dir, target, link) in links {
        if !apt.dir().is_dir(dir) {
            continue;
        }
        let dir = apt.subdir(dir, Missing::Fail, Keep::Restore)?;
        if dir.dir().symlink_metadata(target).is_ok() {
            dir.symlink(target, link)?;
        }
    }
    Ok(())
}

/// The deepest directory below conf.d that [`disable_host_checks`] walks.
const MAX_CONF_DEPTH: usize = 32;
/// The most entries it reads in one directory.
const MAX_CONF_ENTRIES: usize = 100_000;

/// Renames every `conf.yaml.default` (as `find -name` would, symlinks not followed) so the host
/// checks (which read the host, not the dyno) do not run.
fn disable_host_checks(dir: &Tree, depth: usize) -> Result<()> {
    for name in dir.names(MAX_CONF_ENTRIES)? {
        let Ok(meta) = dir.dir().symlink_metadata(&name) else { continue };
        if meta.is_dir() && depth < MAX_CONF_DEPTH {
            disable_host_checks(&dir.subdir(&name, Missing::Fail, Keep::Restore)?, depth + 1)?;
        } else if name == "conf.yaml.default" {
            dir.rename(&name, "conf.yaml.default_disabled".as_ref())?;
        }
    }
    Ok(())
}
