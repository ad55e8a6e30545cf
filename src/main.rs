//! The ddslug command line: parses arguments, calls the library, prints, sets the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use ddslug::apt::client::{AptSource, load_index};
use ddslug::apt::resolve;
use ddslug::apt::signature::Keyring;
use ddslug::buildpack::classic::{CompileArgs, compile};
use ddslug::report::Reporter;
use ddslug::runtime;
use ddslug::fetch::{Downloaded, FetchOptions, Fetcher};
use ddslug::store::Store;

/// Reproducible, content-addressed installs of the Datadog Agent into Heroku slugs.
#[derive(Parser)]
#[command(name = "ddslug", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the versions of a package that a signed apt repository offers, newest first.
    Versions {
        #[command(flatten)]
        repo: RepoArgs,
        /// Package name, e.g. datadog-agent.
        package: String,
    },
    /// Download one package, verified by signature and hash, into a directory.
    Download {
        #[command(flatten)]
        repo: RepoArgs,
        /// Directory to put the .deb in.
        #[arg(long)]
        out: PathBuf,
        /// Cache directory holding the blob store (default: $XDG_CACHE_HOME or ~/.cache).
        #[arg(long, env = "DDSLUG_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// PACKAGE=VERSION, e.g. datadog-agent=1:7.81.2-1.
        spec: String,
    },
    /// The buildpack compile step: install the Datadog Agent into BUILD_DIR/.apt.
    Compile {
        build_dir: PathBuf,
        cache_dir: PathBuf,
        /// Heroku's ENV_DIR (one file per config var); the environment fills the gaps.
        env_dir: Option<PathBuf>,
        /// Override a setting, e.g. --set DD_APM_ENABLED=false (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Share layers through this OCI registry repository (host[:port]/repository): the
        /// same as DD_CACHE_REGISTRY.
        #[arg(long = "cache-registry", value_name = "HOST/REPOSITORY")]
        cache_registry: Option<String>,
    },
    /// Write the agent as an OCI image layout (one layer at /app: .apt, .profile.d/datadog.sh,
    /// .ddslug), from a compiled slug or from a build of the settings or a lock.
    Image {
        /// A slug made by compile (it must verify against its manifest); without it, a slug is
        /// built in a temporary directory from --env-dir/--set or --lock.
        #[arg(conflicts_with_all = ["env_dir", "set", "lock", "cache", "cache_registry"])]
        build_dir: Option<PathBuf>,
        /// Heroku-style ENV_DIR (one file per variable); the environment fills the gaps.
        #[arg(long)]
        env_dir: Option<PathBuf>,
        /// Override a setting, e.g. --set DD_APM_ENABLED=false (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Build exactly what this lock file says (as an app's datadog/ddslug.lock).
        #[arg(long, value_name = "LOCKFILE")]
        lock: Option<PathBuf>,
        /// The build's cache directory (CACHE_DIR; default: a temporary one).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Share layers through this OCI registry repository: the same as DD_CACHE_REGISTRY.
        #[arg(long = "cache-registry", value_name = "HOST/REPOSITORY")]
        cache_registry: Option<String>,
        /// The OCI image layout directory to write (made if missing; other images it holds stay).
        #[arg(long, value_name = "DIR")]
        oci_layout: PathBuf,
        /// The image's tag in the layout (default: the agent's version, e.g. 7.81.2-1).
        #[arg(long)]
        tag: Option<String>,
        /// Also push the image to host[:port]/repository[:tag] (credentials from
        /// DD_REGISTRY_USER / DD_REGISTRY_PASSWORD or the Docker config.json).
        #[arg(long, value_name = "REF")]
        push: Option<String>,
        /// Allow plain http for --push beyond 127.0.0.1 and localhost.
        #[arg(long)]
        insecure: bool,
        /// Print what was written (digests, sizes, tag, tree hash) as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Resolve the settings to an exact lock file (packages, hashes, recipe, options).
    Lock {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Write the lock here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not write: say whether this lock file is still current for the settings.
        #[arg(long, value_name = "LOCKFILE")]
        check: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fill a cache directory so that a later compile needs no network.
    Fetch {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Cache directory (CACHE_DIR of the later compile).
        #[arg(long)]
        cache: PathBuf,
        /// Fetch exactly what this lock file names instead of resolving the settings.
        #[arg(long)]
        lock: Option<PathBuf>,
    },
    /// Check a slug against its manifest (exit 0 only when identical).
    Verify {
        build_dir: PathBuf,
        /// Also rebuild the layer from the blobs in an empty scratch store and compare.
        #[arg(long)]
        rebuild: bool,
        /// Take blobs from this cache when it has them (else download them).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Forbid network access.
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a slug's CycloneDX SBOM (.ddslug/sbom.cdx.json), checked against its manifest.
    Sbom { build_dir: PathBuf },
    /// Compare two slugs or manifests.
    Diff {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs and layers no build used recently (dry run unless --delete).
    Gc {
        #[arg(long)]
        cache: PathBuf,
        /// Unused for this many days.
        #[arg(long, default_value_t = 30)]
        days: u64,
        #[arg(long)]
        delete: bool,
    },
    /// The Cloud Native Buildpack's steps (run by bin/build; settings from CNB_* variables).
    Cnb {
        #[command(subcommand)]
        step: CnbStep,
    },
    /// Dyno start steps run by .profile.d/datadog.sh (prints `export` lines to eval).
    Dyno {
        #[command(subcommand)]
        step: DynoStep,
    },
    /// The shared layer cache (DD_CACHE_REGISTRY).
    Cache {
        #[command(subcommand)]
        step: CacheStep,
    },
    /// Extract the data archive of a .deb into a directory, like `dpkg-deb -x`.
    Unpack {
        /// The .deb file.
        deb: PathBuf,
        /// Target directory (created if missing).
        dir: PathBuf,
    },
}

/// Settings for commands that resolve like compile does.
#[derive(Args)]
struct SettingsArgs {
    /// Heroku-style ENV_DIR (one file per variable); the environment fills the gaps.
    #[arg(long)]
    env_dir: Option<PathBuf>,
    /// Override a setting, e.g. --set DD_AGENT_VERSION=7.81.2-1 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Cache directory for the resolution (default: a temporary one).
    #[arg(long = "resolve-cache")]
    resolve_cache: Option<PathBuf>,
    /// Forbid network access.
    #[arg(long)]
    offline: bool,
    /// Share layers through this OCI registry repository (host[:port]/repository): the
    /// same as DD_CACHE_REGISTRY.
    #[arg(long = "cache-registry", value_name = "HOST/REPOSITORY")]
    cache_registry: Option<String>,
}

impl SettingsArgs {
    fn overrides(&self) -> Result<Vec<(String, String)>> {
        let mut out = parse_pairs(&self.set)?;
        if self.offline {
            out.push(("DD_OFFLINE".into(), "true".into()));
        }
        if let Some(registry) = &self.cache_registry {
            out.push((ddslug::config::CACHE_REGISTRY.into(), registry.clone()));
        }
        Ok(out)
    }
}

#[derive(Subcommand)]
enum CacheStep {
    /// Make an Ed25519 key pair for signing shared layers: DIR/NAME.secret (for
    /// DD_CACHE_SIGNING_KEY, keep it secret) and DIR/NAME.pub (for DD_CACHE_TRUSTED_KEYS).
    Keygen {
        /// The key's name, e.g. ci-1 (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Where to write the two files.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

fn parse_pairs(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').with_context(|| format!("--set {pair:?}: expected NAME=VALUE"))?;
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

#[derive(Subcommand)]
enum DynoStep {
    /// Write datadog.yaml, conf.d, hostname and paths; before the app's prerun.sh.
    Prepare,
    /// Final tags, then launch the agents; after the app's prerun.sh.
    Start {
        /// `prepare` failed: print the exports only, start no agent.
        #[arg(long)]
        no_agents: bool,
    },
    /// In a container (no .profile.d is sourced there): source the slug's .profile.d scripts
    /// in bash as a dyno does (prepare, the app's prerun.sh, start), then exec the command.
    Run {
        /// The app's command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum CnbStep {
    /// Build the `agent` launch layer and the `ddslug-cache` layer in CNB_LAYERS_DIR (the
    /// working directory is the app). Positional arguments of older Buildpack APIs are ignored.
    Build {
        #[arg(hide = true)]
        legacy: Vec<PathBuf>,
    },
}

/// Where to read packages from.
#[derive(Args)]
struct RepoArgs {
    /// Repository base URL (http, https or file).
    #[arg(long)]
    repo: String,
    /// Suite (dists/<suite>), e.g. stable or bookworm.
    #[arg(long)]
    suite: String,
    /// Component, e.g. main or 7.
    #[arg(long)]
    component: String,
    /// OpenPGP keyring (armored or binary) whose keys must have signed the repository.
    #[arg(long)]
    keyring: PathBuf,
    /// Debian architecture.
    #[arg(long, default_value = "amd64")]
    arch: String,
}

impl RepoArgs {
    fn source(&self) -> AptSource {
        AptSource::new(&self.repo, &self.suite, &self.component, &self.arch)
    }
}

fn main() -> ExitCode {
    // Installed in a CNB agent layer as `exec.d/ddslug`, the launcher runs this binary with no
    // arguments before every process.
    if ddslug::buildpack::cnb::execd::invoked_as_exec_d() {
        return ddslug::buildpack::cnb::execd::main();
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddslug: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Versions { repo, package } => {
            let keyring = Keyring::load(&repo.keyring)?;
            let fetcher = env_fetcher()?;
            let index = load_index(&fetcher, &repo.source(), &keyring, &[&package])?;
            let versions = resolve::available(&index, &package);
            if versions.is_empty() {
                anyhow::bail!("{package} is not in {}; check the package name and the component", index.packages_url);
            }
            for entry in versions {
                println!("{}", entry.version);
            }
        }
        Command::Download { repo, out, cache, spec } => {
            let (package, version) = spec
                .split_once('=')
                .with_context(|| format!("{spec:?}: expected PACKAGE=VERSION, e.g. datadog-agent=1:7.81.2-1"))?;
            let keyring = Keyring::load(&repo.keyring)?;
            let fetcher = env_fetcher()?;
            let source = repo.source();
            let index = load_index(&fetcher, &source, &keyring, &[package])?;
            let entry = resolve::find(&index, package, version)?;
            let cache = cache.or_else(default_cache_dir).context("no cache directory: pass --cache DIR (or set DDSLUG_CACHE_DIR, XDG_CACHE_HOME or HOME)")?;
            let store = Store::open(&cache)?;
            let _lock = store.lock()?;
            let expected = Downloaded { sha256: entry.sha256, size: entry.size };
            let (blob, _) = store.ensure_blob(&fetcher, &source.pool_url(&entry.filename), expected)?;
            let name = Path::new(&entry.filename).file_name().context("Packages Filename has no file name")?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let dest = out.join(name);
            copy_out(&blob, &dest)?;
            println!("{}", dest.display());
        }
        Command::Image { build_dir, env_dir, set, lock, cache, cache_registry, oci_layout, tag, push, insecure, json } => {
            let mut overrides = parse_pairs(&set)?;
            if let Some(registry) = cache_registry {
                overrides.push((ddslug::config::CACHE_REGISTRY.into(), registry));
            }
            let source = match build_dir {
                Some(dir) => commands::ImageSource::Slug(dir),
                None => commands::ImageSource::Build { env_dir, overrides, lock, cache },
            };
            return commands::image(source, &oci_layout, tag.as_deref(), push.as_deref(), insecure, json);
        }
        Command::Lock { settings, out, check, json } => return commands::lock(settings, out, check, json),
        Command::Fetch { settings, cache, lock } => return commands::fetch(settings, cache, lock),
        Command::Verify { build_dir, rebuild, cache, offline, json } => {
            return commands::verify(&build_dir, rebuild, cache, offline, json);
        }
        Command::Diff { a, b, json } => return commands::diff(&a, &b, json),
        Command::Sbom { build_dir } => {
            use std::io::Write;
            let bytes = ddslug::sbom::read_from_slug(&build_dir)?;
            std::io::stdout().write_all(&bytes).context("writing the SBOM to standard output")?;
        }
        Command::Gc { cache, days, delete } => return commands::gc(&cache, days, delete),
        Command::Cache { step: CacheStep::Keygen { name, out_dir } } => {
            let public = ddslug::oci::sign::keygen(&out_dir, &name)?;
            println!("wrote {} (keep it secret: DD_CACHE_SIGNING_KEY) and {}", out_dir.join(format!("{name}.secret")).display(), out_dir.join(format!("{name}.pub")).display());
            println!("public key, for DD_CACHE_TRUSTED_KEYS: {public}");
        }
        Command::Compile { build_dir, cache_dir, env_dir, set, cache_registry } => {
            let mut overrides = parse_pairs(&set)?;
            if let Some(registry) = cache_registry {
                overrides.push((ddslug::config::CACHE_REGISTRY.into(), registry));
            }
            let args = CompileArgs {
                build_dir,
                cache_dir,
                env_dir: env_dir.filter(|p| !p.as_os_str().is_empty()),
                overrides,
                self_exe: std::env::current_exe().context("locating the ddslug binary")?,
            };
            if let Err(e) = compile(&args, &Reporter::default()) {
                // Heroku shows " !     " lines as errors; keep the message to one clear block.
                for line in format!("{e:#}").lines() {
                    eprintln!(" !     {line}");
                }
                std::process::exit(1);
            }
        }
        Command::Dyno { step: DynoStep::Run { command } } => return runtime::container::run(&command),
        Command::Cnb { step: CnbStep::Build { legacy: _ } } => {
            let result = ddslug::buildpack::cnb::BuildArgs::from_env().and_then(|args| ddslug::buildpack::cnb::build(&args, &Reporter::default()));
            if let Err(e) = result {
                for line in format!("{e:#}").lines() {
                    eprintln!(" !     {line}");
                }
                std::process::exit(1);
            }
        }
        Command::Dyno { step } => {
            let env = runtime::process_env();
            let mut log = runtime::Log::new(&env);
            let result = match step {
                DynoStep::Prepare => runtime::launch::prepare(&env, &mut log),
                DynoStep::Start { no_agents } => runtime::launch::start(&env, &mut log, !no_agents),
                DynoStep::Run { .. } => unreachable!("handled above"),
            };
            match result {
                Ok(exports) => {
                    for line in exports {
                        println!("{line}");
                    }
                }
                // The app must start even when the agent cannot: report, and tell datadog.sh
                // (which then starts no agent) by the exit status.
                Err(e) => {
                    log.say(runtime::Level::Error, &format!("the Datadog Agent will not start: {e:#}"));
                    std::process::exit(1);
                }
            }
        }
        Command::Unpack { deb, dir } => {
            let report = ddslug::unpack::deb::unpack_deb(&deb, &dir)?;
            for warning in &report.skipped {
                eprintln!("ddslug: warning: {warning}");
            }
        }
    }
    Ok(())
}

mod commands;

/// A fetcher for the commands that take no ENV_DIR: download settings (`DD_DOWNLOAD_*`)
/// from the environment; retries and progress on stderr (stdout is the result).
fn env_fetcher() -> Result<Fetcher> {
    let settings = ddslug::config::Settings::load(None).context("reading the settings")?;
    let limits = ddslug::config::download_limits(&settings)?;
    Ok(Fetcher::new(FetchOptions { limits, report: Reporter { quiet: true }, ..FetchOptions::default() }))
}

/// `$XDG_CACHE_HOME`, else `~/.cache`; `None` without either (a fixed name in the shared
/// temp dir would be a cache anyone could plant files in).
fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
}

/// Makes `dest` hold `bytes` (mode `mode`), all at once: a temp file of an unpredictable name,
/// made exclusively beside it, renamed over it. A symlink at `dest` is replaced, not followed.
fn write_replacing(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new().prefix(".ddslug.").tempfile_in(dir).with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.persist(dest).map_err(|e| e.error).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// Copies a stored blob out (by reflink where possible), writable like any download: into a
/// temp file of an unpredictable name, made exclusively in the same directory, then renamed
/// over `dest` (a symlink there is replaced, never written through).
fn copy_out(blob: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".ddslug.").suffix(".deb").tempfile_in(dir).with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let mut src = std::fs::File::open(blob).with_context(|| format!("reading {}", blob.display()))?;
    if rustix::fs::ioctl_ficlone(tmp.as_file(), &src).is_err() {
        std::io::copy(&mut src, tmp.as_file_mut()).with_context(|| format!("copying {} to {}", blob.display(), tmp.path().display()))?;
    }
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dest).map_err(|e| e.error).with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(())
}
