//! The app's own agent configuration (`datadog/conf.d`, `datadog/checks.d`) copied into the
//! agent's configuration directory, as the classic start script copies it: each directory of
//! conf.d, then each `conf.d/<name>.yaml` as `<name>.d/conf.yaml`, then `checks.d/*.yaml`
//! into conf.d and `checks.d/*.py` into checks.d.
//!
//! Contract: the app's files are read through a cap-std `Dir` rooted at the app's datadog
//! folder. A symlink that stays inside it is followed; one that leads out (to /etc, /proc,
//! another folder of the dyno) is skipped with a warning naming it, and so is anything that is
//! not a regular file or a directory (a FIFO would block). Reads are bounded in bytes per file,
//! entries and depth, and a limit hit is named. Writes go through [`Tree`], so nothing the app
//! ships can send a write out of the agent's configuration.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::confdir::{Keep, Missing, Tree};
use super::{Level, Log};

/// The largest app file copied (agent configs and custom checks are kilobytes).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most entries read from the app's datadog folder in all.
pub const MAX_ENTRIES: usize = 10_000;
/// The deepest directory copied below conf.d (a symlink loop ends here).
pub const MAX_DEPTH: usize = 16;

/// What one dyno start may still read from the app.
struct Budget {
    entries: usize,
}

/// Copies the app's conf.d and checks.d from `app_datadog` into `conf` (the agent's
/// configuration directory). A missing app folder copies nothing.
pub fn copy_app_configs(app_datadog: &Path, conf: &Tree, log: &mut Log) -> Result<()> {
    let Ok(app) = Tree::open_ambient(app_datadog) else { return Ok(()) };
    let mut budget = Budget { entries: MAX_ENTRIES };
    let conf_d = conf.subdir("conf.d", Missing::Create, Keep::Restore)?;
    let app_conf = Path::new("conf.d");
    let entries = list(&app, app_conf, &mut budget, log)?;
    for (name, kind) in &entries {
        if *kind == Kind::Dir {
            copy_dir(&app, &app_conf.join(name), &conf_d.subdir(name, Missing::Create, Keep::Restore)?, 1, &mut budget, log)?;
        }
    }
    // The older form: conf.d/<name>.yaml becomes <name>.d/conf.yaml.
    for (name, kind) in &entries {
        let path = Path::new(name);
        if path.extension() != Some(OsStr::new("yaml")) {
            continue;
        }
        if *kind == Kind::Other {
            log.say(Level::Warn, &format!("{}: not a regular file; not copied", app.path().join(app_conf).join(name).display()));
        }
        if *kind == Kind::File {
            let mut dir_name = path.file_stem().unwrap_or_default().to_os_string();
            dir_name.push(".d");
            if let Some(bytes) = read(&app, &app_conf.join(name), log) {
                conf_d.subdir(&dir_name, Missing::Create, Keep::Restore)?.write_private("conf.yaml", &bytes)?;
            }
        }
    }
    let app_checks = Path::new("checks.d");
    let checks = conf.subdir("checks.d", Missing::Create, Keep::Restore)?;
    for (name, kind) in list(&app, app_checks, &mut budget, log)? {
        let dest = match Path::new(&name).extension().and_then(OsStr::to_str) {
            Some("yaml") => &conf_d,
            Some("py") => &checks,
            _ => continue,
        };
        if kind == Kind::Other {
            log.say(Level::Warn, &format!("{}: not a regular file; not copied", app.path().join(app_checks).join(&name).display()));
        } else if kind == Kind::File && let Some(bytes) = read(&app, &app_checks.join(&name), log) {
            dest.write_private(&name, &bytes)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    File,
    Dir,
    /// Not copied: a FIFO, a socket, a device.
    Other,
    /// Not copied, and already warned about: a link out of the app's folder, a loop.
    Refused,
}

/// The entries of the app's directory `rel` with what they are (symlinks followed inside the
/// app's folder), sorted by name; a missing directory has none.
fn list(app: &Tree, rel: &Path, budget: &mut Budget, log: &mut Log) -> Result<Vec<(OsString, Kind)>> {
    let Ok(entries) = app.dir().read_dir(rel) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        if budget.entries == 0 {
            bail!("{} has more than {MAX_ENTRIES} entries, the most dyno start copies", app.path().display());
        }
        budget.entries -= 1;
        let name = entry.file_name();
        let kind = match app.dir().metadata(rel.join(&name)) {
            Ok(m) if m.is_dir() => Kind::Dir,
            Ok(m) if m.is_file() => Kind::File,
            Ok(_) => Kind::Other,
            Err(e) => {
                log.say(Level::Warn, &format!("{}: {e}; not copied (a link must stay inside {})", app.path().join(rel).join(&name).display(), app.path().display()));
                Kind::Refused
            }
        };
        out.push((name, kind));
    }
    out.sort();
    Ok(out)
}

/// The app's file `rel`, or `None` (with a warning) if it cannot be read within the limits.
fn read(app: &Tree, rel: &Path, log: &mut Log) -> Option<Vec<u8>> {
    match app.read_bounded(rel, MAX_FILE_BYTES) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            log.say(Level::Warn, &format!("{e:#}; not copied"));
            None
        }
    }
}

/// Copies the app's directory `rel` (as `cp -R` would, but regular files and directories
/// only) into `dest`.
fn copy_dir(app: &Tree, rel: &Path, dest: &Tree, depth: usize, budget: &mut Budget, log: &mut Log) -> Result<()> {
    for (name, kind) in list(app, rel, budget, log)? {
        let from: PathBuf = rel.join(&name);
        match kind {
            Kind::Dir if depth >= MAX_DEPTH => {
                log.say(Level::Warn, &format!("{}: deeper than {MAX_DEPTH} directories; not copied", app.path().join(&from).display()));
            }
            Kind::Dir => copy_dir(app, &from, &dest.subdir(&name, Missing::Create, Keep::Restore)?, depth + 1, budget, log)?,
            Kind::File => {
                if let Some(bytes) = read(app, &from, log) {
                    dest.write_private(&name, &bytes)?;
                }
            }
            Kind::Other => log.say(Level::Warn, &format!("{}: not a regular file or directory; not copied", app.path().join(&from).display())),
            Kind::Refused => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn copies_like_the_classic_and_skips_what_leads_out() {
        let t = tempfile::tempdir().unwrap();
        let (app, agent, outside) = (t.path().join("app/datadog"), t.path().join("agent"), t.path().join("outside"));
        fs::create_dir_all(app.join("conf.d/nginx.d/sub")).unwrap();
        fs::create_dir_all(app.join("checks.d")).unwrap();
        fs::create_dir_all(app.join("shared")).unwrap();
        fs::create_dir_all(&agent).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.yaml"), "secret").unwrap();
        fs::write(app.join("shared/real.yaml"), "real").unwrap();
        fs::write(app.join("conf.d/nginx.d/conf.yaml"), "n").unwrap();
        fs::write(app.join("conf.d/nginx.d/sub/deep"), "d").unwrap();
        fs::write(app.join("conf.d/legacy.yaml"), "l").unwrap();
        fs::write(app.join("conf.d/ignored.txt"), "i").unwrap();
        symlink(outside.join("secret.yaml"), app.join("conf.d/leak.yaml")).unwrap();
        symlink(&outside, app.join("conf.d/out.d")).unwrap();
        symlink("../shared/real.yaml", app.join("conf.d/inside.yaml")).unwrap();
        symlink("../../../../outside/secret.yaml", app.join("conf.d/nginx.d/up")).unwrap();
        symlink("..", app.join("conf.d/nginx.d/sub/loop")).unwrap();
        fs::write(app.join("checks.d/c.py"), "py").unwrap();
        fs::write(app.join("checks.d/c.yaml"), "y").unwrap();
        fs::write(app.join("checks.d/other.txt"), "o").unwrap();
        symlink(outside.join("secret.yaml"), app.join("checks.d/leak.py")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, app.join("checks.d/fifo.py"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        let conf = Tree::open_ambient(&agent).unwrap();
        let mut log = Log { level: Level::Off };
        copy_app_configs(&app, &conf, &mut log).unwrap();
        let read = |p: &str| fs::read_to_string(agent.join(p)).ok();
        assert_eq!(read("conf.d/nginx.d/conf.yaml").as_deref(), Some("n"));
        assert_eq!(read("conf.d/nginx.d/sub/deep").as_deref(), Some("d"));
        assert_eq!(read("conf.d/legacy.d/conf.yaml").as_deref(), Some("l"));
        assert_eq!(read("conf.d/inside.d/conf.yaml").as_deref(), Some("real"));
        assert_eq!(read("conf.d/c.yaml").as_deref(), Some("y"));
        assert_eq!(read("checks.d/c.py").as_deref(), Some("py"));
        for absent in ["conf.d/leak.d", "conf.d/out.d", "conf.d/nginx.d/up", "checks.d/leak.py", "checks.d/fifo.py", "conf.d/ignored.txt", "conf.d/other.txt"] {
            assert!(fs::symlink_metadata(agent.join(absent)).is_err(), "{absent} was copied");
        }
        // The loop through `sub/loop` stops at the depth limit.
        let mut deepest = agent.join("conf.d/nginx.d/sub");
        let mut depth = 1;
        while deepest.join("loop/sub").is_dir() {
            deepest = deepest.join("loop/sub");
            depth += 2;
        }
        assert!(depth <= MAX_DEPTH, "{depth}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing was written outside");
    }

    #[test]
    fn limits_are_named() {
        let t = tempfile::tempdir().unwrap();
        let (app, agent) = (t.path().join("datadog"), t.path().join("agent"));
        fs::create_dir_all(app.join("conf.d/big.d")).unwrap();
        fs::create_dir_all(&agent).unwrap();
        fs::write(app.join("conf.d/big.d/conf.yaml"), vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let conf = Tree::open_ambient(&agent).unwrap();
        copy_app_configs(&app, &conf, &mut Log { level: Level::Off }).unwrap();
        assert!(!agent.join("conf.d/big.d/conf.yaml").exists());
        for i in 0..=MAX_ENTRIES {
            fs::write(app.join(format!("conf.d/f{i}")), "").unwrap();
        }
        let err = copy_app_configs(&app, &conf, &mut Log { level: Level::Off }).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("more than {MAX_ENTRIES} entries")), "{err:#}");
    }
}
