//! The agent layer's exec.d program: what `.profile.d/datadog.sh` does on a Cedar dyno, at
//! every process launch of a CNB image (Buildpack API 0.10, "Exec.d").
//!
//! The launcher runs `<layers>/<buildpack>/agent/exec.d/ddslug` with file descriptor 3 open
//! and reads it until it closes, then applies the TOML written there (`NAME = "value"`) to
//! the process it starts. This program:
//! - takes fd 3 first and marks it close-on-exec, so that nothing it starts (bash, the
//!   agents, which outlive it) holds it: an inherited copy would keep the launcher waiting;
//! - finds its layer from its own path (`<layer>/exec.d/ddslug`; the launcher unsets
//!   `CNB_LAYERS_DIR`);
//! - runs the classic start script itself in bash: `dyno prepare`, the app's
//!   `datadog/prerun.sh` sourced in the same shell, `dyno start` (the agents in the
//!   background, once per container, see [`crate::runtime::launch`]), so prerun.sh keeps its
//!   classic semantics (what it assigns, exported or not, is what the start sees);
//! - writes on fd 3 every variable the shell exports afterwards that differs from this
//!   program's own environment: what the classic script exported into the app's shell
//!   (DD_TAGS, DD_VERSION, DD_HOSTNAME, DD_HEROKU_DYNO, PATH, ...) and what prerun.sh exported.
//!
//! Contract: the app always starts. Whatever fails is reported on stderr (never a value: no
//! secret is printed) and the program exits 0 with what it could write; only a missing fd 3
//! (the program was not started by a launcher) is an error.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::buildpack::classic::PROFILE_SCRIPT;
use crate::runtime::{CNB_AGENT_LAYER, CNB_APP_DIR};

/// The largest environment read back from the start script (a dyno's is a few KB).
const ENV_LIMIT: u64 = 4 << 20;
/// Variables of ours that only the start script's steps see.
const INTERNAL: [&str; 4] = [CNB_AGENT_LAYER, CNB_APP_DIR, "DDSLUG_EXE", "DDSLUG_ENV_OUT"];
/// What bash itself sets in every shell: not the app's business.
const SHELL_OWN: [&str; 4] = ["_", "SHLVL", "PWD", "OLDPWD"];

/// Whether this process was started as an exec.d program: `.../exec.d/<name>` with no
/// arguments (the launcher passes none).
pub fn invoked_as_exec_d() -> bool {
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return false };
    args.next().is_none() && Path::new(&argv0).parent().and_then(Path::file_name) == Some(OsStr::new("exec.d"))
}

/// Runs the exec.d program; the exit code for the launcher.
pub fn main() -> ExitCode {
    let mut out = match claim_fd3() {
        Ok(file) => file,
        Err(e) => {
            eprintln!("[datadog] [ERROR] {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let vars = match start() {
        Ok(vars) => vars,
        Err(e) => {
            eprintln!("[datadog] [ERROR] the Datadog Agent will not start: {e:#}");
            BTreeMap::new()
        }
    };
    if let Err(e) = out.write_all(exec_d_toml(&vars).as_bytes()) {
        eprintln!("[datadog] [ERROR] could not hand the agent's variables to the launcher (fd 3): {e}");
    }
    ExitCode::SUCCESS
}

/// File descriptor 3, owned from now on and closed on exec.
fn claim_fd3() -> Result<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if std::fs::symlink_metadata("/proc/self/fd/3").is_err() {
        bail!(
            "file descriptor 3 is not open: this exec.d program is run by the CNB launcher, which reads the app's \
             variables from it. To start the agent by hand in a container, run /cnb/lifecycle/launcher <command>"
        );
    }
    // SAFETY: the launcher opens fd 3 for exec.d programs (Buildpack API, Exec.d); it was just
    // seen open, nothing else in this process owns it, and it is taken once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(std::io::Error::from).context("marking fd 3 close-on-exec")?;
    Ok(std::fs::File::from(fd))
}

/// Runs the start script; the variables the app must see.
fn start() -> Result<BTreeMap<String, String>> {
    let exe = std::env::current_exe().context("locating this exec.d program")?;
    let layer = layer_of(&exe)?;
    let app = std::env::current_dir().context("reading the working directory (the app)")?;
    let out = tempfile::Builder::new().prefix("ddslug-env.").tempfile().context("creating a temp file for the start script's environment")?;
    let status = Command::new("bash")
        .arg("-c")
        .arg(start_script()?)
        .env("DDSLUG_EXE", &exe)
        .env(CNB_AGENT_LAYER, &layer)
        .env(CNB_APP_DIR, &app)
        .env("DDSLUG_ENV_OUT", out.path())
        .stdin(Stdio::null())
        .status()
        .context("running bash for the agent's start script")?;
    if !status.success() {
        bail!("the start script (the app's datadog/prerun.sh included) failed: {status}");
    }
    let mut bytes = Vec::new();
    out.as_file().take(ENV_LIMIT + 1).read_to_end(&mut bytes).context("reading the start script's environment")?;
    if bytes.len() as u64 > ENV_LIMIT {
        bail!("the environment after the start script is larger than {}, the most read back", crate::report::limit(ENV_LIMIT));
    }
    let own: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    Ok(changed(&bytes, &own))
}

/// The agent layer of the program at `exe` (`<layer>/exec.d/<name>`).
fn layer_of(exe: &Path) -> Result<PathBuf> {
    let layer = exe.parent().filter(|d| d.file_name() == Some(OsStr::new("exec.d"))).and_then(Path::parent);
    match layer {
        Some(layer) if layer.join(".ddslug/manifest.json").is_file() => Ok(layer.to_path_buf()),
        _ => bail!("{} is not in the exec.d directory of a ddslug agent layer (no .ddslug/manifest.json beside it)", exe.display()),
    }
}

/// `.profile.d/datadog.sh` with the binary and the app directory of a CNB image in place of
/// the slug's (`$HOME/.ddslug/bin/ddslug`, `$HOME/datadog`), followed by a dump of the
/// exported environment.
pub fn start_script() -> Result<String> {
    let mut script = PROFILE_SCRIPT.to_string();
    for (slug, image) in [
        ("__ddslug=\"$HOME/.ddslug/bin/ddslug\"", "__ddslug=\"$DDSLUG_EXE\""),
        ("${DD_HEROKU_CONF_FOLDER:-$HOME/datadog}", "${DD_HEROKU_CONF_FOLDER:-$DDSLUG_APP_DIR/datadog}"),
    ] {
        if script.matches(slug).count() != 1 {
            bail!("assets/datadog.sh no longer has `{slug}` once; the CNB start (src/buildpack/cnb/execd.rs) must follow it");
        }
        script = script.replace(slug, image);
    }
    script.push_str("__ddslug_out=$DDSLUG_ENV_OUT\nunset DDSLUG_EXE DDSLUG_ENV_OUT DDSLUG_AGENT_LAYER DDSLUG_APP_DIR\nenv -0 >\"$__ddslug_out\"\n");
    Ok(script)
}

/// The variables of `env -0` output that are new or differ from `own`, except ours and the
/// shell's own; names that cannot be TOML bare keys or values that are not UTF-8 are left
/// out with a warning naming the variable (never its value).
fn changed(dump: &[u8], own: &BTreeMap<OsString, OsString>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in dump.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else { continue };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        if own.get(OsStr::from_bytes(name)).map(|v| v.as_bytes()) == Some(value) {
            continue;
        }
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if INTERNAL.contains(&name) || SHELL_OWN.contains(&name) {
            continue;
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            eprintln!("[datadog] [WARN] {name:?} cannot be handed to the app by exec.d (not a plain variable name); left out");
            continue;
        }
        match String::from_utf8(value.to_vec()) {
            Ok(value) => {
                out.insert(name.to_string(), value);
            }
            Err(_) => eprintln!("[datadog] [WARN] {name}'s value is not UTF-8 and cannot be handed to the app by exec.d; left out"),
        }
    }
    out
}

/// The Exec.d Output TOML: `NAME = "value"` lines, each value a basic string.
pub fn exec_d_toml(vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in vars {
        out.push_str(name);
        out.push_str(" = \"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push_str("\"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `env -0` dump of these pairs.
    fn dump(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        pairs.iter().flat_map(|(k, v)| [*k, b"=", *v, b"\0"].concat()).collect()
    }

    #[test]
    fn toml_round_trips_any_value_as_basic_strings() {
        let mut vars = BTreeMap::new();
        for (i, value) in ["plain", "a \"quoted\" \\ back", "line\nbreak\ttab\r", "\u{1}\u{7f}é ünï", "", "'single'"].iter().enumerate() {
            vars.insert(format!("V_{i}"), value.to_string());
        }
        let text = exec_d_toml(&vars);
        for line in text.lines() {
            let (_, value) = line.split_once(" = ").unwrap();
            assert!(value.starts_with('"') && value.ends_with('"'), "not a basic string: {line}");
        }
        let back: BTreeMap<String, String> = toml::from_str(&text).unwrap();
        assert_eq!(back, vars);
    }

    #[test]
    fn only_changed_plain_variables_are_handed_on() {
        let own: BTreeMap<OsString, OsString> =
            [("PATH", "/bin"), ("DD_API_KEY", "secret"), ("KEEP", "same")].iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let env = dump(&[
            (b"PATH", b"/layer/usr/bin:/bin"),
            (b"DD_API_KEY", b"secret"),
            (b"KEEP", b"same"),
            (b"DD_TAGS", b"dyno:web.1 a:b"),
            (b"SHLVL", b"2"),
            (b"_", b"/usr/bin/env"),
            (b"DDSLUG_APP_DIR", b"/workspace"),
            (b"BAD-NAME", b"x"),
            (b"NOT_UTF8", b"\xff"),
            (b"FROM_PRERUN", b"exported"),
        ]);
        let got = changed(&env, &own);
        let want: BTreeMap<String, String> =
            [("DD_TAGS", "dyno:web.1 a:b"), ("FROM_PRERUN", "exported"), ("PATH", "/layer/usr/bin:/bin")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_start_script_is_the_profile_script_with_the_layer_in_place_of_home() {
        let script = start_script().unwrap();
        assert!(!script.contains("$HOME"), "{script}");
        assert!(script.contains("__ddslug=\"$DDSLUG_EXE\""));
        assert!(script.contains("source \"$__ddslug_app/prerun.sh\""));
        assert!(script.ends_with("env -0 >\"$__ddslug_out\"\n"));
    }

    #[test]
    fn exec_d_invocation_is_recognised_by_path() {
        assert!(layer_of(Path::new("/layers/x/agent/bin/ddslug")).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agent/.ddslug")).unwrap();
        std::fs::write(dir.path().join("agent/.ddslug/manifest.json"), "{}").unwrap();
        assert_eq!(layer_of(&dir.path().join("agent/exec.d/ddslug")).unwrap(), dir.path().join("agent"));
    }
}
