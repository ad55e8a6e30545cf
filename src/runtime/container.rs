//! `ddslug dyno run -- COMMAND...`: dyno start where there is no `.profile.d` to source (a
//! container built from `ddslug image`). It does what a Heroku dyno does before it runs a
//! process type: bash sources every `.profile.d/*.sh` of the slug, ddslug's `datadog.sh`
//! among them (so `dyno prepare`, the app's `datadog/prerun.sh` and `dyno start` run exactly
//! as on a dyno, with the same settings and the same exports), then the shell is replaced
//! by the app's command, which keeps the process (PID 1 in a container gets the signals).
//!
//! The slug's root is where this binary is (`<root>/.ddslug/bin/ddslug`, `/app` in the
//! image), else `HOME` when it holds a slug; `HOME` is set to it, as on a dyno. A failure of
//! the agent's start never stops the app: that is datadog.sh's contract, kept here (without
//! a slug or without bash, one warning line, and the app's command runs alone).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// What bash runs: the profile scripts as Heroku sources them, then the app's command.
const SCRIPT: &str = r#"for __ddslug_profile in "$HOME"/.profile.d/*.sh; do
    if [ -f "$__ddslug_profile" ]; then
        # shellcheck source=/dev/null
        source "$__ddslug_profile"
    fi
done
unset __ddslug_profile
exec "$@""#;

/// The slug root for a binary at `exe` (`<root>/.ddslug/bin/ddslug`), else `home` when it
/// holds a slug's manifest.
pub fn slug_root(exe: &Path, home: Option<&Path>) -> Option<PathBuf> {
    let bin = exe.parent()?;
    let ddslug = bin.parent()?;
    if bin.file_name()? == "bin" && ddslug.file_name()? == ".ddslug" {
        return ddslug.parent().map(Path::to_owned);
    }
    home.filter(|h| h.join(".ddslug/manifest.json").is_file()).map(Path::to_owned)
}

/// Replaces this process with bash sourcing the slug's profile scripts and then `command`
/// (or with `command` alone, after a warning, when there is no slug or no bash). Returns
/// only if the command could not start.
pub fn run(command: &[OsString]) -> Result<()> {
    let Some((program, args)) = command.split_first() else { bail!("dyno run needs the app's command after --, e.g. ddslug dyno run -- bundle exec puma") };
    let exe = std::env::current_exe().unwrap_or_default();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let why_not = match slug_root(&exe, home.as_deref()) {
        None => format!("this ddslug ({}) is not <slug>/.ddslug/bin/ddslug and HOME is no slug; use the one in the slug (/app/.ddslug/bin/ddslug)", exe.display()),
        Some(root) => {
            let error = Command::new("bash").arg("-c").arg(SCRIPT).arg("ddslug-dyno-run").args(command).env("HOME", &root).exec();
            if error.kind() != std::io::ErrorKind::NotFound {
                bail!("starting bash to run {}: {error}", program.to_string_lossy());
            }
            "there is no bash to run .profile.d/datadog.sh with (a bash script, as on Heroku); install bash in the image".to_string()
        }
    };
    eprintln!("[datadog] [ERROR] the Datadog Agent will not start: {why_not}");
    let error = Command::new(program).args(args).exec();
    bail!("starting {}: {error}", program.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slug_is_found_from_the_binary_or_home() {
        assert_eq!(slug_root(Path::new("/app/.ddslug/bin/ddslug"), None), Some(PathBuf::from("/app")));
        assert_eq!(slug_root(Path::new("/usr/local/bin/ddslug"), None), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(slug_root(Path::new("/usr/local/bin/ddslug"), Some(dir.path())), None, "a HOME without a slug");
        std::fs::create_dir_all(dir.path().join(".ddslug")).unwrap();
        std::fs::write(dir.path().join(".ddslug/manifest.json"), "{}").unwrap();
        assert_eq!(slug_root(Path::new("/usr/local/bin/ddslug"), Some(dir.path())), Some(dir.path().to_owned()));
    }
}
