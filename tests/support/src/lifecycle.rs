//! A CNB lifecycle driver for one component buildpack, following the Buildpack API 0.10
//! specification (buildpacks/spec, branch buildpack/0.10, buildpack.md) closely enough to test
//! a buildpack without pack, the lifecycle or Docker:
//!
//! - detect: `bin/detect` in the app directory with `CNB_BUILDPACK_DIR`, `CNB_PLATFORM_DIR`,
//!   `CNB_BUILD_PLAN_PATH` and `CNB_TARGET_*`, the platform's `env/` files as variables; exit
//!   0 passes, 100 fails, anything else is an error; the plan written must be TOML of
//!   `provides`/`requires`/`or` entries.
//! - analysis and restore ("Layer Types"): `<layer>.toml` without `[types]`; launch+cache
//!   layers get metadata from the image and content from the cache, both only when the two
//!   hold the same layer; cache-only layers get both from the cache; launch-only layers get
//!   metadata only.
//! - build: `bin/build` in the app directory with `CNB_LAYERS_DIR`, `CNB_PLATFORM_DIR`,
//!   `CNB_BP_PLAN_PATH`, `CNB_BUILDPACK_DIR` and `CNB_TARGET_*`, the buildpack directory
//!   read-only, then checks of every file the spec constrains ([`Lifecycle::check_layers`]).
//! - export: launch layers into the image (a launch layer left without a directory reuses
//!   the previous image's, which must exist), cached layers into the cache.
//! - launch: layer `bin`/`lib` paths, then every `exec.d` program of every launch layer with
//!   fd 3 open on a pipe, read until it closes (a copy left open by a program's children is
//!   an error, not a hang), its TOML applied, then the process.
#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// Files of the buildpack copied into its read-only directory.
const BUILDPACK_FILES: [&str; 5] = ["buildpack.toml", "bin/detect", "bin/build", "bin/compile", "bin/ddslug.release"];

/// One app built and launched by one buildpack, with the image and cache kept between builds.
pub struct Lifecycle {
    pub root: PathBuf,
    /// The read-only copy of the buildpack.
    pub buildpack: PathBuf,
    pub buildpack_id: String,
    pub app: PathBuf,
    pub platform: PathBuf,
    /// `CNB_TARGET_ARCH`.
    pub arch: String,
    /// Variables every phase gets (e.g. `DDSLUG_BIN`), besides PATH and HOME.
    pub vars: Vec<(String, String)>,
    /// Run every phase as this uid and gid (setpriv); the tree is given to that user.
    pub user: Option<u32>,
    /// How many exports so far: names the snapshots that tie a cached layer to the image's.
    exports: u32,
}

/// What a build left, as exported.
#[derive(Clone, Debug)]
pub struct Built {
    pub build: Output,
    /// `<layer>.toml` of each layer exported to the image.
    pub image_layers: BTreeMap<String, toml::Table>,
}

impl Lifecycle {
    /// A fresh tree under `root`: a read-only copy of the buildpack at `source`, an empty app
    /// and platform directory.
    pub fn new(root: &Path, source: &Path, arch: &str) -> Result<Lifecycle> {
        let buildpack = root.join("buildpack");
        for file in BUILDPACK_FILES {
            let to = buildpack.join(file);
            fs::create_dir_all(to.parent().unwrap())?;
            fs::copy(source.join(file), &to).with_context(|| format!("copying {file}"))?;
        }
        let descriptor: toml::Table = fs::read_to_string(buildpack.join("buildpack.toml"))?.parse()?;
        ensure!(descriptor.get("api").and_then(|a| a.as_str()) == Some("0.10"), "buildpack.toml: api must be \"0.10\"");
        let id = descriptor["buildpack"]["id"].as_str().context("buildpack.id")?.to_string();
        ensure!(id.chars().all(|c| c.is_ascii_alphanumeric() || "./-".contains(c)), "buildpack id {id:?}");
        for dir in ["app", "platform/env", "image", "cache"] {
            fs::create_dir_all(root.join(dir))?;
        }
        read_only(&buildpack)?;
        Ok(Lifecycle {
            root: root.into(),
            buildpack,
            buildpack_id: id,
            app: root.join("app"),
            platform: root.join("platform"),
            arch: arch.into(),
            vars: Vec::new(),
            user: None,
            exports: 0,
        })
    }

    /// Sets a user-provided build variable (`<platform>/env/<name>`).
    pub fn set_env(&self, name: &str, value: &str) -> Result<()> {
        Ok(fs::write(self.platform.join("env").join(name), value)?)
    }

    /// The buildpack's layers directory during a build.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers").join(self.buildpack_id.replace('/', "_"))
    }

    /// A layer as exported into the image (what launch sees).
    pub fn image_layer(&self, name: &str) -> PathBuf {
        self.root.join("image").join(name)
    }

    /// Forgets the cache, as a platform does when it has none.
    pub fn lose_cache(&self) -> Result<()> {
        fs::remove_dir_all(self.root.join("cache"))?;
        Ok(fs::create_dir_all(self.root.join("cache"))?)
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self.user {
            Some(id) => {
                let mut cmd = Command::new("setpriv");
                cmd.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", self.root.join("home"));
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The platform's `env/` files as variables (user-provided variables override).
    fn platform_env(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.platform.join("env"))? {
            let entry = entry?;
            out.push((entry.file_name().to_string_lossy().into_owned(), fs::read_to_string(entry.path())?));
        }
        Ok(out)
    }

    fn targets(&self, cmd: &mut Command) {
        cmd.env("CNB_TARGET_OS", "linux").env("CNB_TARGET_ARCH", &self.arch);
        cmd.env("CNB_TARGET_DISTRO_NAME", "ubuntu").env("CNB_TARGET_DISTRO_VERSION", "24.04");
    }

    /// The detect phase: whether the buildpack passes, and the plan it wrote.
    pub fn detect(&self) -> Result<(bool, toml::Table)> {
        self.give()?;
        let plan = self.root.join("plan.toml");
        fs::write(&plan, "")?;
        self.give_path(&plan)?;
        let mut cmd = self.command(&self.buildpack.join("bin/detect"));
        cmd.current_dir(&self.app).envs(self.platform_env()?);
        cmd.env("CNB_BUILDPACK_DIR", &self.buildpack).env("CNB_PLATFORM_DIR", &self.platform).env("CNB_BUILD_PLAN_PATH", &plan);
        self.targets(&mut cmd);
        let out = cmd.output()?;
        let passed = match out.status.code() {
            Some(0) => true,
            Some(100) => false,
            other => bail!("bin/detect errored ({other:?}): {}", String::from_utf8_lossy(&out.stderr)),
        };
        let plan: toml::Table = fs::read_to_string(&plan)?.parse().context("the build plan is not TOML")?;
        for key in plan.keys() {
            ensure!(["provides", "requires", "or"].contains(&key.as_str()), "build plan: unexpected {key}");
        }
        Ok((passed, plan))
    }

    /// Restores the layers directory from the image and the cache ("Layer Types").
    fn restore(&self) -> Result<()> {
        let layers = self.layers();
        if layers.exists() {
            make_writable(&layers)?;
            fs::remove_dir_all(&layers)?;
        }
        fs::create_dir_all(&layers)?;
        let image = read_layer_tomls(&self.root.join("image"))?;
        let cache = read_layer_tomls(&self.root.join("cache"))?;
        let mut names: Vec<&String> = image.keys().chain(cache.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (in_image, in_cache) = (image.get(name), cache.get(name));
            let types = |t: Option<&toml::Table>, k: &str| t.and_then(|t| t.get("types")).and_then(|t| t.get(k)).and_then(|v| v.as_bool()) == Some(true);
            let launch = types(in_image, "launch") || types(in_cache, "launch");
            let cached = types(in_cache, "cache");
            let same_layer = || snapshot_id(&self.root.join("image"), name) == snapshot_id(&self.root.join("cache"), name);
            let (image_dir, cache_dir) = (self.root.join("image"), self.root.join("cache"));
            let (metadata, content, from) = match (launch, cached) {
                (true, true) if in_image.is_some() && in_cache.is_some() && same_layer() => (in_image, true, &image_dir),
                // Launch layers without a matching cached copy: metadata only (from the image).
                (true, _) => (in_image, false, &image_dir),
                (false, true) => (in_cache, true, &cache_dir),
                (false, false) => (None, false, &cache_dir),
            };
            let Some(metadata) = metadata else { continue };
            let mut restored = metadata.clone();
            restored.remove("types");
            fs::write(layers.join(format!("{name}.toml")), toml::to_string(&restored)?)?;
            // The layer's SBOM files come back with its metadata, from the same place.
            copy_sboms(from, &layers, name)?;
            if content {
                copy_tree(&self.root.join("cache").join(name), &layers.join(name))?;
            }
        }
        Ok(())
    }

    /// Restore, build, check and export: one build of the app.
    pub fn build(&mut self) -> Result<Built> {
        self.restore()?;
        self.give()?;
        let plan = self.root.join("bp-plan.toml");
        fs::write(&plan, "")?;
        let mut cmd = self.command(&self.buildpack.join("bin/build"));
        cmd.current_dir(&self.app).envs(self.platform_env()?);
        cmd.env("CNB_LAYERS_DIR", self.layers()).env("CNB_PLATFORM_DIR", &self.platform).env("CNB_BP_PLAN_PATH", &plan);
        cmd.env("CNB_BUILDPACK_DIR", &self.buildpack);
        self.targets(&mut cmd);
        let out = cmd.output()?;
        if !out.status.success() {
            return Ok(Built { build: out, image_layers: BTreeMap::new() });
        }
        self.check_layers()?;
        let image_layers = self.export()?;
        Ok(Built { build: out, image_layers })
    }

    /// Checks every file of the layers directory the spec constrains.
    pub fn check_layers(&self) -> Result<()> {
        let layers = self.layers();
        let descriptor: toml::Table = fs::read_to_string(self.buildpack.join("buildpack.toml"))?.parse()?;
        let formats: Vec<&str> = descriptor["buildpack"].get("sbom-formats").and_then(|f| f.as_array()).map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        for entry in fs::read_dir(&layers)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                ensure!(!["build", "launch", "store"].contains(&name.as_str()), "layer directory {name}: the spec reserves the name");
                if layers.join(format!("{name}.toml")).exists() {
                    check_layer_dir(&path)?;
                }
                continue;
            }
            if let Some(ext) = name.split_once(".sbom.").map(|(_, e)| e) {
                let media = match ext {
                    "cdx.json" => "application/vnd.cyclonedx+json",
                    "spdx.json" => "application/spdx+json",
                    "syft.json" => "application/vnd.syft+json",
                    other => bail!("{name}: unknown SBOM extension {other}"),
                };
                ensure!(formats.contains(&media), "{name}: {media} is not in buildpack.toml's sbom-formats {formats:?}");
                serde_json_check(&path)?;
                continue;
            }
            let text = fs::read_to_string(&path)?;
            let table: toml::Table = text.parse().with_context(|| format!("{name} is not TOML"))?;
            match name.as_str() {
                "launch.toml" => check_keys(&table, &["labels", "processes", "slices"], &name)?,
                "build.toml" => check_keys(&table, &["unmet"], &name)?,
                "store.toml" => check_keys(&table, &["metadata"], &name)?,
                _ if name.ends_with(".toml") => {
                    check_keys(&table, &["types", "metadata"], &name)?;
                    if let Some(types) = table.get("types") {
                        let types = types.as_table().with_context(|| format!("{name}: [types] is not a table"))?;
                        for (k, v) in types {
                            ensure!(["launch", "build", "cache"].contains(&k.as_str()) && v.is_bool(), "{name}: [types] {k} = {v}");
                        }
                    }
                }
                _ => bail!("{name}: the spec names no such file in the layers directory"),
            }
        }
        Ok(())
    }

    /// Exports launch layers into the image and cached layers into the cache.
    fn export(&mut self) -> Result<BTreeMap<String, toml::Table>> {
        self.exports += 1;
        let layers = self.layers();
        let tomls = read_layer_tomls(&layers)?;
        let (image, cache) = (self.root.join("image"), self.root.join("cache"));
        let previous_image = read_layer_tomls(&image)?;
        let mut exported = BTreeMap::new();
        let mut new_cache = BTreeMap::new();
        for (name, table) in &tomls {
            let flag = |k: &str| table.get("types").and_then(|t| t.get(k)).and_then(|v| v.as_bool()) == Some(true);
            let dir = layers.join(name);
            if flag("launch") {
                remove_sboms(&image, name)?;
                copy_sboms(&layers, &image, name)?;
                if dir.is_dir() {
                    replace_tree(&dir, &image.join(name))?;
                    fs::write(image.join(format!("{name}.snapshot")), self.exports.to_string())?;
                } else {
                    ensure!(previous_image.contains_key(name) && image.join(name).is_dir(), "export: launch layer {name} has no directory and the previous image none");
                }
                exported.insert(name.clone(), table.clone());
            }
            if flag("cache") && dir.is_dir() {
                new_cache.insert(name.clone(), table.clone());
            }
        }
        // The image holds exactly this build's launch layers.
        for name in previous_image.keys().filter(|n| !exported.contains_key(*n)) {
            let _ = fs::remove_dir_all(image.join(name));
            let _ = fs::remove_file(image.join(format!("{name}.toml")));
            remove_sboms(&image, name)?;
        }
        for (name, table) in &exported {
            fs::write(image.join(format!("{name}.toml")), toml::to_string(table)?)?;
        }
        make_writable(&cache)?;
        fs::remove_dir_all(&cache)?;
        fs::create_dir_all(&cache)?;
        for (name, table) in &new_cache {
            copy_tree(&layers.join(name), &cache.join(name))?;
            fs::write(cache.join(format!("{name}.toml")), toml::to_string(table)?)?;
            copy_sboms(&layers, &cache, name)?;
            let id = if exported.contains_key(name) { fs::read_to_string(image.join(format!("{name}.snapshot")))? } else { self.exports.to_string() };
            fs::write(cache.join(format!("{name}.snapshot")), id)?;
        }
        Ok(exported)
    }

    /// The launch phase: exec.d programs of the image's launch layers, then `process` (with
    /// `vars` as the platform's runtime environment). Returns the process's output and what
    /// each exec.d program printed.
    pub fn launch(&self, vars: &[(&str, &str)], process: &[&str]) -> Result<(Output, Vec<Output>)> {
        let image = self.root.join("image");
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert("HOME".into(), self.root.join("home").to_string_lossy().into_owned());
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let layers: Vec<String> = read_layer_tomls(&image)?.into_keys().collect();
        for name in &layers {
            let dir = image.join(name);
            ensure!(!dir.join("env").exists() && !dir.join("env.launch").exists(), "layer {name}: env files are not applied by this driver");
            for (var, sub) in [("PATH", "bin"), ("LD_LIBRARY_PATH", "lib")] {
                if dir.join(sub).is_dir() {
                    let old = env.get(var).cloned().unwrap_or_default();
                    env.insert(var.into(), format!("{}:{old}", dir.join(sub).display()).trim_end_matches(':').to_string());
                }
            }
        }
        let mut exec_d_outputs = Vec::new();
        for name in &layers {
            let exec_d = image.join(name).join("exec.d");
            let Ok(entries) = fs::read_dir(&exec_d) else { continue };
            let mut programs: Vec<PathBuf> = entries.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
            programs.sort();
            for program in programs.iter().filter(|p| p.is_file()) {
                let (out, vars) = self.run_exec_d(program, &env)?;
                exec_d_outputs.push(out);
                env.extend(vars);
            }
        }
        let mut cmd = self.command(Path::new(process[0]));
        cmd.args(&process[1..]).current_dir(&self.app).env_clear().envs(&env);
        Ok((cmd.output()?, exec_d_outputs))
    }

    /// Runs one exec.d program with fd 3 on a pipe; its output and the variables it wrote.
    fn run_exec_d(&self, program: &Path, env: &BTreeMap<String, String>) -> Result<(Output, BTreeMap<String, String>)> {
        ensure!(fs::metadata(program)?.permissions().mode() & 0o111 != 0, "{}: exec.d programs must be executable", program.display());
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        ensure!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2");
        let (read_fd, write_fd) = (fds[0], fds[1]);
        let mut cmd = self.command(program);
        cmd.current_dir(&self.app).env_clear().envs(env).stdin(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; the new fd 3 has no close-on-exec flag.
        unsafe {
            cmd.pre_exec(move || if libc::dup2(write_fd, 3) == 3 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
        }
        // Files, not pipes: the agents an exec.d program starts keep its stdout and stderr
        // (the container's, on a platform) long after it exits.
        let logs = tempfile::tempdir_in(&self.root)?;
        let (stdout, stderr) = (logs.path().join("stdout"), logs.path().join("stderr"));
        let child = cmd.stdout(fs::File::create(&stdout)?).stderr(fs::File::create(&stderr)?).spawn();
        // SAFETY: the parent's copy of the write end is closed once; read_fd is owned below.
        unsafe { libc::close(write_fd) };
        use std::os::fd::FromRawFd;
        // SAFETY: read_fd is a fresh pipe end owned by nothing else.
        let mut reader = unsafe { fs::File::from_raw_fd(read_fd) };
        let status = child?.wait()?;
        let out = Output { status, stdout: fs::read(&stdout)?, stderr: fs::read(&stderr)? };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = tx.send(reader.read_to_string(&mut text).map(|_| text));
        });
        let text = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(read) => read?,
            Err(_) => bail!("{}: fd 3 was still open 10 s after the program exited (a process it started inherited it): the launcher would hang", program.display()),
        };
        ensure!(out.status.success(), "{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr));
        let table: toml::Table = text.parse().with_context(|| format!("{}: fd 3 output is not TOML: {text}", program.display()))?;
        let mut vars = BTreeMap::new();
        for (k, v) in table {
            let v = v.as_str().with_context(|| format!("{}: {k} is not a string", program.display()))?.to_string();
            vars.insert(k, v);
        }
        Ok((out, vars))
    }

    /// Gives the tree to [`Lifecycle::user`], if any.
    fn give(&self) -> Result<()> {
        match self.user {
            Some(id) => {
                let out = Command::new("chown").args(["-R", &format!("{id}:{id}")]).arg(&self.root).output()?;
                ensure!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
                fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn give_path(&self, path: &Path) -> Result<()> {
        if let Some(id) = self.user {
            std::os::unix::fs::chown(path, Some(id), Some(id))?;
        }
        Ok(())
    }
}

/// `<name>.toml` files of a directory, by layer name (launch.toml and the like excluded).
fn read_layer_tomls(dir: &Path) -> Result<BTreeMap<String, toml::Table>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(layer) = name.strip_suffix(".toml").filter(|n| !["launch", "build", "store"].contains(n)) {
            out.insert(layer.to_string(), fs::read_to_string(dir.join(&name))?.parse()?);
        }
    }
    Ok(out)
}

fn snapshot_id(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(format!("{name}.snapshot"))).ok()
}

fn check_keys(table: &toml::Table, allowed: &[&str], name: &str) -> Result<()> {
    for key in table.keys() {
        ensure!(allowed.contains(&key.as_str()), "{name}: unexpected top-level key {key} (allowed: {allowed:?})");
    }
    Ok(())
}

/// A layer directory's exec.d programs are executable regular files.
fn check_layer_dir(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir.join("exec.d")) {
        for entry in entries {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            ensure!(meta.is_dir() || (meta.is_file() && meta.permissions().mode() & 0o111 != 0), "{}: not an executable file", path.display());
        }
    }
    Ok(())
}

fn serde_json_check(path: &Path) -> Result<()> {
    let text = fs::read_to_string(path)?;
    ensure!(text.trim_start().starts_with('{'), "{}: not a JSON object", path.display());
    Ok(())
}

/// `cp -a`: modes, links and hard links inside the tree kept.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output()?;
    ensure!(out.status.success(), "cp -a {} {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn replace_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        make_writable(to)?;
        fs::remove_dir_all(to)?;
    }
    copy_tree(from, to)
}

/// u+rwx on every directory below `dir` (a package's 0555 ones), so that it can be removed.
fn make_writable(dir: &Path) -> Result<()> {
    let out = Command::new("chmod").args(["-R", "u+rwX"]).arg(dir).output()?;
    ensure!(out.status.success(), "chmod: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Makes the buildpack copy read-only, as platforms mount it.
fn read_only(dir: &Path) -> Result<()> {
    let out = Command::new("chmod").args(["-R", "a-w"]).arg(dir).output()?;
    ensure!(out.status.success(), "chmod: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The layer `name`'s SBOM files (`<name>.sbom.<ext>`) in `dir`.
fn sboms(dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let prefix = format!("{name}.sbom.");
    let Ok(entries) = fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) && entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Copies the layer `name`'s SBOM files from `from` to `to` (spec: "Layer Types": they are
/// restored with the layer's metadata, and only those associated with a layer).
fn copy_sboms(from: &Path, to: &Path, name: &str) -> Result<()> {
    for path in sboms(from, name)? {
        fs::copy(&path, to.join(path.file_name().unwrap_or_default()))?;
    }
    Ok(())
}

fn remove_sboms(dir: &Path, name: &str) -> Result<()> {
    for path in sboms(dir, name)? {
        fs::remove_file(path)?;
    }
    Ok(())
}
