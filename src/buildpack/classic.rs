//! The buildpack compile step, end to end:
//! settings → signed index → exact package → verified blob → layer (cached by its inputs)
//! → BUILD_DIR/.apt → manifest.
//!
//! Contract: nothing is written to BUILD_DIR until the layer is complete and hashed; the
//! slug is assembled in a staging directory inside BUILD_DIR and moved into place at the
//! end ([`crate::slug::install`]), so a failed build leaves BUILD_DIR as it was. The store lock
//! is held throughout. A package with a symlink where ddslug writes after unpacking is
//! refused ([`crate::store::layer`]); nothing is ever written through a symlink.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::apt::client::{AptSource, load_index};
use crate::apt::datadog_keys::{KEY_SERVER, datadog_keyring};
use crate::apt::resolve::{AGENT, HEROKU_AGENT, resolve_agent};
use crate::apt::signature::Keyring;
use crate::config::{Config, KeyringSetting, Settings, effective_python};
use crate::fetch::{Downloaded, FetchOptions, Fetcher, Progress};
use crate::hash::Sha256;
use crate::oci::cache::SharedCache;
use crate::store::layer::{self, DebInput, LAYER_FORMAT, LayerInputs};
use crate::slug::manifest::{Lock, LockedPackage, Manifest, Removed, SCHEMA, read_lock};
use crate::store::layerindex::LayerIndex;
use crate::unpack::recipe::{Options, Recipe};
use crate::report::{Reporter, bytes, seconds};
use crate::fsat::{Dir, Stat};
use crate::slug::install::{check_build_dir, install, remove_stale_staging};
use crate::store::{Blob, Store};

/// The strip recipe shipped with this binary.
pub const RECIPE: &str = include_str!("../../recipes/datadog-agent.toml");
/// The agent CLI wrapper installed in `.apt/opt/datadog-agent/bin/agent/`.
pub const AGENT_WRAPPER: &str = include_str!("../../assets/agent-wrapper");
/// Where the wrapper goes, relative to `.apt`.
pub const AGENT_WRAPPER_PATH: &str = "opt/datadog-agent/bin/agent/agent-wrapper";
/// The dyno start script installed as `.profile.d/datadog.sh`.
pub const PROFILE_SCRIPT: &str = include_str!("../../assets/datadog.sh");

/// The directories of a buildpack compile.
#[derive(Clone, Debug)]
pub struct CompileArgs {
    pub build_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub env_dir: Option<PathBuf>,
    /// Settings given on the command line; they override ENV_DIR and the environment.
    pub overrides: Vec<(String, String)>,
    /// The ddslug binary to ship in the slug.
    pub self_exe: PathBuf,
}

/// What a compile did, beyond the manifest.
#[derive(Clone, Debug)]
pub struct CompileOutcome {
    pub manifest: Manifest,
    pub downloaded: bool,
    pub layer_reused: bool,
}

/// Where an app commits its lock, relative to BUILD_DIR.
pub const APP_LOCK: &str = "datadog/ddslug.lock";

/// Reads settings (ENV_DIR, environment, overrides) into a validated configuration.
pub fn load_config(env_dir: Option<&Path>, overrides: &[(String, String)], report: &Reporter) -> Result<Config> {
    let mut settings = Settings::load(env_dir).context("reading ENV_DIR")?;
    for (name, value) in overrides {
        settings.set(name, value);
    }
    let config = Config::from_settings(&settings)?;
    for warning in &config.warnings {
        report.warn(warning);
    }
    Ok(config)
}

/// A fetcher that honours the configuration's offline and download settings, telling
/// retries and progress through `report`.
pub fn fetcher_for(config: &Config, report: &Reporter) -> Fetcher {
    Fetcher::new(FetchOptions { offline: config.offline.clone(), limits: config.download, report: *report, ..FetchOptions::default() })
}

/// Runs the whole compile step.
pub fn compile(args: &CompileArgs, report: &Reporter) -> Result<CompileOutcome> {
    let started = Instant::now();
    report.topic(&format!("Datadog Agent (ddslug {})", env!("CARGO_PKG_VERSION")));
    if !args.build_dir.is_dir() {
        anyhow::bail!("BUILD_DIR {} is not a directory; bin/compile takes BUILD_DIR CACHE_DIR ENV_DIR", args.build_dir.display());
    }
    // BUILD_DIR comes from the app: refuse what the slug cannot be written into before any
    // work, and clear what builds killed midway left.
    let build = Dir::open_given(&args.build_dir).with_context(|| format!("opening BUILD_DIR {}", args.build_dir.display()))?;
    check_build_dir(&build, &args.build_dir)?;
    let config = load_config(args.env_dir.as_deref(), &args.overrides, report)?;
    let fetcher = fetcher_for(&config, report);
    let store = Store::open(&args.cache_dir)?;
    let _lock = store.lock()?;
    let stale = remove_stale_staging(&build, &args.build_dir)?;
    if stale > 0 {
        report.detail(&format!("removed {stale} staging director{} left in BUILD_DIR by interrupted builds", if stale == 1 { "y" } else { "ies" }));
    }

    let lock = lock_for(&args.build_dir, &config, &fetcher, &store, report)?;
    let shared = shared_cache(&config, report);
    let mut built = build_layer_shared(&store, &fetcher, &lock, report, Reuse::CheckWhileLinking, shared.as_ref())?;
    report.topic("Installing into the slug");
    let mut t = Instant::now();
    let mut manifest = manifest_for(&lock, &config, &built);
    if !install(args, &store, &built, &mut manifest)? {
        report.warn(&layer_changed(&built.info.key));
        built = build_layer_shared(&store, &fetcher, &lock, report, Reuse::Never, shared.as_ref())?;
        manifest = manifest_for(&lock, &config, &built);
        report.topic("Installing into the slug");
        t = Instant::now();
        if !install(args, &store, &built, &mut manifest)? {
            anyhow::bail!("layer {} changed while it was being installed; run the build again", &built.info.key.hex()[..12]);
        }
    }
    report.detail(&format!(
        "{} files, {} in .apt (in place in {}); tree hash {}",
        built.info.files,
        bytes(built.info.bytes),
        seconds(t.elapsed()),
        built.info.tree_hash
    ));
    report.topic(&format!("Datadog Agent {} installed in {}", lock.packages[0].version, seconds(started.elapsed())));
    Ok(CompileOutcome { manifest, downloaded: built.downloaded, layer_reused: built.reused })
}

/// The lock a build installs: the app's `datadog/ddslug.lock` when it commits one (checked
/// against this ddslug and the settings), else the settings resolved ([`plan`]).
pub fn lock_for(app_dir: &Path, config: &Config, fetcher: &Fetcher, store: &Store, report: &Reporter) -> Result<Lock> {
    let app_lock = app_dir.join(APP_LOCK);
    if app_lock.exists() {
        report.topic(&format!("Using {APP_LOCK}"));
        let lock = read_lock(&app_lock)?;
        check_lock_against(&lock, config, report)?;
        Ok(lock)
    } else {
        plan(config, fetcher, store, report, true)
    }
}

pub(crate) fn manifest_for(lock: &Lock, config: &Config, built: &BuiltLayer) -> Manifest {
    Manifest {
        schema: SCHEMA,
        ddslug_version: env!("CARGO_PKG_VERSION").into(),
        lock: lock.clone(),
        stack: config.stack.clone(),
        layer_key: built.info.key,
        tree_hash: built.info.tree_hash,
        files: built.info.files,
        bytes: built.info.bytes,
        removed: built.info.removed.iter().map(Removed::from).collect(),
        pkgconfig: built.info.pkgconfig.clone(),
        start_script_sha256: Some(Sha256::of(PROFILE_SCRIPT.as_bytes())),
        // Hashed from the slug's own copies when they are in place (see `seal_manifest`).
        tree_json_sha256: None,
        binary_sha256: None,
        sbom_sha256: None,
        // Set by the install, which sees what other buildpacks put in `.apt`.
        foreign_json_sha256: None,
    }
}

/// A manifest with the SHA-256s of the slug's entry list and binary, and those files' stats.
pub(crate) type Sealed = (Manifest, Vec<(Stat, Sha256)>);

/// Records in `manifest` the SHA-256 of the entry list, the SBOM and the binary as staged for the
/// slug (`ddslug_dir` is the staged `.ddslug`), so that `verify` can check them against
/// something the slug's own files do not provide. `None` when the entry list is not the
/// one the layer stored: the layer changed on disk. `known` holds SHA-256s by inode, of
/// files found unchanged before they were linked here (see [`crate::store::seen`]): those
/// are not read again. Returns, with the manifest, each file's stat and SHA-256.
pub(crate) fn seal_manifest(manifest: &Manifest, built: &BuiltLayer, ddslug_dir: &Path, known: &[(u64, Sha256)]) -> Result<Option<Sealed>> {
    let digest = |rel: &str| -> Result<(Stat, Sha256)> {
        let path = ddslug_dir.join(rel);
        let st = fs::symlink_metadata(&path).map(|m| Stat::of_metadata(&m)).with_context(|| format!("reading {}", path.display()))?;
        match known.iter().find(|(ino, _)| st.is_file() && *ino == st.ino) {
            Some(&(_, sha256)) => Ok((st, sha256)),
            None => Ok((st, Sha256::of_file(&path).with_context(|| format!("reading {}", path.display()))?)),
        }
    };
    let tree_json = digest("tree.json")?;
    if built.info.entries_sha256.is_some_and(|recorded| recorded != tree_json.1) {
        return Ok(None);
    }
    let binary = digest("bin/ddslug")?;
    // The SBOM is written fresh by every build: nothing to remember of its inode.
    let (_, sbom) = digest(crate::sbom::SLUG_FILE)?;
    let sealed = Manifest { tree_json_sha256: Some(tree_json.1), binary_sha256: Some(binary.1), sbom_sha256: Some(sbom), ..manifest.clone() };
    Ok(Some((sealed, vec![tree_json, binary])))
}

/// A lock committed by the app pins packages, recipe and options; settings that would now
/// give other options are reported, not silently applied.
fn check_lock_against(lock: &Lock, config: &Config, report: &Reporter) -> Result<()> {
    if lock.schema != SCHEMA {
        anyhow::bail!("{APP_LOCK}: schema {} is not supported (expected {SCHEMA}); regenerate it with `ddslug lock`", lock.schema);
    }
    let recipe_sha256 = Sha256::of(RECIPE.as_bytes());
    if lock.recipe_sha256 != recipe_sha256 {
        anyhow::bail!(
            "{APP_LOCK} was made with recipe {} but this ddslug has recipe {recipe_sha256}; \
             regenerate it with `ddslug lock` (or use the ddslug version that made it)",
            lock.recipe_sha256
        );
    }
    if lock.architecture != config.arch {
        anyhow::bail!(
            "{APP_LOCK} was made for architecture {} but this build targets {}; make a lock for {} with `ddslug lock` \
             (or build for {})",
            lock.architecture,
            config.arch,
            config.arch,
            lock.architecture
        );
    }
    let Some(package) = lock.packages.first() else {
        anyhow::bail!("{APP_LOCK} lists no package; regenerate it with `ddslug lock`");
    };
    let wanted_options = options_for(config, &package.version, report)?;
    if wanted_options != lock.options {
        report.warn(&format!(
            "{APP_LOCK} was made for other settings ({}); building exactly what it says. Run `ddslug lock` to update it.",
            describe_options(&lock.options)
        ));
    }
    report.detail(&format!("{} {} from {} (locked)", package.name, package.version, lock.repository));
    Ok(())
}

fn describe_options(o: &Options) -> String {
    format!("python {}, apm {}, process_agent {}", o.python, o.apm, o.process_agent)
}

/// The recipe options for this configuration and agent version.
fn options_for(config: &Config, version: &str, report: &Reporter) -> Result<Options> {
    let version_parts = version
        .parse::<crate::apt::version::DebVersion>()
        .with_context(|| format!("agent version {version:?}"))?
        .upstream_numeric_parts();
    let (python, python_warning) = effective_python(&version_parts, config.major, config.python_requested);
    if let Some(warning) = python_warning {
        report.warn(&warning);
    }
    Ok(Options { version: version_parts, major: config.major, python, apm: config.apm_enabled, process_agent: config.process_agent })
}

/// Resolves the configuration to a complete lock: exact package, recipe hash, options.
/// With `use_memo`, a resolution made before for the same repository, keys and version is
/// reused, so a warm build needs no network.
pub fn plan(config: &Config, fetcher: &Fetcher, store: &Store, report: &Reporter, use_memo: bool) -> Result<Lock> {
    let wanted = config.wanted_version().to_string();
    let (base, package) = resolve(config, fetcher, store, &wanted, report, use_memo)?;
    let options = options_for(config, &package.version, report)?;
    Ok(Lock { recipe_sha256: Sha256::of(RECIPE.as_bytes()), options, packages: vec![package], ..base })
}

/// A layer ready in the store.
pub struct BuiltLayer {
    pub info: layer::LayerInfo,
    /// The layer's index: what the slug is made of.
    pub index: LayerIndex,
    /// A reused layer whose files are still to be checked against the index (see [`Reuse`]).
    pub unchecked: bool,
    pub downloaded: bool,
    pub reused: bool,
    /// Pulled from a shared layer cache (and verified) rather than built here.
    pub pulled: bool,
}

/// Whether [`build_layer`] may reuse a stored layer, and who checks it first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Reuse a stored layer after checking its files against its index.
    Checked,
    /// Reuse a stored layer; the caller checks it while linking it into a slug (one pass
    /// over the layer instead of two).
    CheckWhileLinking,
    /// Build it again, as when the check failed.
    Never,
}

/// The shared layer cache the settings ask for (`DD_CACHE_REGISTRY`), unless network access
/// is disabled.
pub fn shared_cache(config: &Config, report: &Reporter) -> Option<SharedCache> {
    let settings = config.cache.as_ref()?;
    if let Some(why) = &config.offline {
        report.detail(&format!("not using the shared layer cache {}: network access is disabled ({why})", settings.repo));
        return None;
    }
    Some(SharedCache::new(settings, config.download))
}

/// Builds (or reuses) the layer the locked blobs and the recipe make. A layer already in the
/// store (and unchanged on disk) needs no blob at all; otherwise the blobs are fetched and
/// verified first.
pub fn build_layer(store: &Store, fetcher: &Fetcher, lock: &Lock, report: &Reporter, reuse: Reuse) -> Result<BuiltLayer> {
    build_layer_shared(store, fetcher, lock, report, reuse, None)
}

/// [`build_layer`], with a shared layer cache: a layer the store lacks is pulled from it
/// when it has a trusted one ([`SharedCache::pull`]), and one built here is pushed to it.
pub fn build_layer_shared(store: &Store, fetcher: &Fetcher, lock: &Lock, report: &Reporter, reuse: Reuse, shared: Option<&SharedCache>) -> Result<BuiltLayer> {
    let recipe = Recipe::parse(RECIPE, "recipes/datadog-agent.toml")?;
    let inputs = layer_inputs(lock);
    let key = inputs.key();
    let stored = if reuse == Reuse::Never { None } else { layer::load(store, &key)? };
    let existing = match stored {
        Some(info) => match layer::load_index(store, &key) {
            Some(index) if reuse == Reuse::CheckWhileLinking => Some((info, index, true)),
            Some(index) if crate::slug::materialize::check_index(&layer::layer_dir(store, &key), &index) => Some((info, index, false)),
            Some(_) => {
                report.warn(&layer_changed(&key));
                None
            }
            None => {
                report.warn(&format!("layer {} has no usable index of its files; rebuilding it", &key.hex()[..12]));
                None
            }
        },
        None => None,
    };
    let (mut downloaded, mut pulled) = (false, false);
    let (info, index, unchecked, reused) = match existing {
        Some((info, index, unchecked)) => {
            report.topic(&format!("Reusing layer {} (nothing to download or unpack)", &key.hex()[..12]));
            (info, index, unchecked, true)
        }
        None => match shared.and_then(|cache| cache.pull(store, &inputs, report)) {
            // Verified against its signature and tree hash while it was installed.
            Some((info, index)) => {
                pulled = true;
                (info, index, false, true)
            }
            None => {
                let (built, fetched) = fetch_and_build(store, fetcher, lock, &inputs, &recipe, report, &key)?;
                downloaded = fetched;
                for xz in &built.xz_blocks {
                    let ahead = xz.decoded.saturating_sub(xz.used);
                    report.detail(&format!(
                        "used {} of {} xz blocks, the others held only stripped files ({} decoded ahead and not needed)",
                        xz.used, xz.blocks, ahead
                    ));
                }
                if let Some(cache) = shared {
                    cache.push(store, &built.info, &built.index, report);
                }
                (built.info, built.index, false, false)
            }
        },
    };
    layer::touch(store, &key);
    for removed in info.removed.iter().filter(|r| !r.paths.is_empty()) {
        report.detail(&format!(
            "removed {:<22} {:>6} files {:>10}  ({})",
            removed.rule,
            removed.files,
            bytes(removed.bytes),
            removed.why
        ));
    }
    Ok(BuiltLayer { info, index, unchecked, downloaded, reused, pulled })
}

/// Everything that decides the content of the layer `lock` makes: its key is
/// `layer_inputs(lock).key()`, known before anything is fetched.
pub fn layer_inputs(lock: &Lock) -> LayerInputs {
    LayerInputs {
        format: LAYER_FORMAT,
        debs: lock
            .packages
            .iter()
            .map(|p| DebInput { package: p.name.clone(), version: p.version.clone(), sha256: p.sha256 })
            .collect(),
        recipe_sha256: lock.recipe_sha256,
        options: lock.options.clone(),
        wrapper_sha256: Sha256::of(AGENT_WRAPPER.as_bytes()),
    }
}

/// Fetches what the store lacks and builds the layer from the blobs. A blob being
/// downloaded is unpacked as it arrives (a multi-block data.tar.xz block by block, as the
/// block headers come in); the layer is stored only once every download has matched its
/// SHA-256. Returns whether anything was downloaded.
fn fetch_and_build(
    store: &Store,
    fetcher: &Fetcher,
    lock: &Lock,
    inputs: &LayerInputs,
    recipe: &Recipe,
    report: &Reporter,
    key: &Sha256,
) -> Result<(layer::Built, bool)> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for package in &lock.packages {
        // A .deb listed twice is fetched and unpacked once: two writers of one partial file
        // would garble it, and unpacking it again would change nothing.
        if !seen.insert(package.sha256) {
            continue;
        }
        let expected = Downloaded { sha256: package.sha256, size: package.size };
        let url = format!("{}/{}", lock.repository.trim_end_matches('/'), package.filename);
        let blob = store.find_blob(fetcher, &url, expected)?;
        match &blob {
            Blob::Stored { .. } => {
                report.topic(&format!("Fetching {}", file_name(&package.filename)));
                report.detail(&format!("already in the cache; {}, SHA-256 {}", bytes(package.size), package.sha256));
            }
            Blob::Missing { .. } => report.topic(&format!("Fetching {} (unpacking it as it arrives)", file_name(&package.filename))),
        }
        found.push((package, url, expected, blob));
    }
    let progress: Vec<Progress> = found.iter().map(|_| Progress::default()).collect();
    report.topic(&format!("Building layer {}", &key.hex()[..12]));
    let t = Instant::now();
    let (built, downloads) = std::thread::scope(|scope| {
        let downloads: Vec<_> = found
            .iter()
            .zip(&progress)
            .filter_map(|((package, url, expected, blob), progress)| match blob {
                Blob::Stored { .. } => None,
                Blob::Missing { part, file } => Some((
                    package,
                    part,
                    *expected,
                    scope.spawn(move || {
                        // Whatever happens here, the unpacker waiting for bytes hears the end.
                        let _finish = FinishOnDrop(progress);
                        let t = Instant::now();
                        let result = store.dir("tmp/downloads").map_err(anyhow::Error::from).and_then(|downloads| {
                            let name = part.file_name().unwrap_or_default();
                            let at = crate::fetch::Part { dir: &downloads, name, path: part, file };
                            Ok(fetcher.download(url, at, Some(*expected), Some(progress))?)
                        });
                        progress.finish(result.is_ok());
                        result.map(|_| t.elapsed())
                    }),
                )),
            })
            .collect();
        let debs: Vec<layer::DebBlob> = found
            .iter()
            .zip(&progress)
            .map(|((package, .., blob), progress)| {
                let label = file_name(&package.filename).to_string();
                match blob {
                    Blob::Stored { path, file } => layer::DebBlob { path: path.clone(), file, label, downloading: None },
                    Blob::Missing { part, file } => layer::DebBlob { path: part.clone(), file, label, downloading: Some(progress) },
                }
            })
            .collect();
        let built = layer::build(store, inputs, &debs, recipe, (AGENT_WRAPPER_PATH, AGENT_WRAPPER.as_bytes()));
        let downloads: Vec<_> = downloads.into_iter().map(|(package, part, expected, handle)| (package, part, expected, handle.join())).collect();
        (built, downloads)
    });
    // A failed download explains a failed unpack: it is reported first. A good one is kept
    // (moved into the store only now: the unpacker read it by its partial name).
    let downloaded = !downloads.is_empty();
    for (package, part, expected, result) in downloads {
        let took = result.map_err(|_| anyhow::anyhow!("the download of {} panicked", package.filename))??;
        store.keep_part(part, expected)?;
        report.detail(&format!("{}: downloaded in {}; {}, SHA-256 {}", file_name(&package.filename), seconds(took), bytes(package.size), package.sha256));
    }
    let built = built?;
    report.detail(&format!("unpacked and stripped in {}", seconds(t.elapsed())));
    Ok((built, downloaded))
}

/// Marks a download failed if it ends without saying (a panic): an unpacker waiting for
/// its bytes must not wait forever.
struct FinishOnDrop<'a>(&'a Progress);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        if !self.0.is_done() {
            self.0.finish(false);
        }
    }
}

fn layer_changed(key: &Sha256) -> String {
    format!("layer {} was changed on disk; rebuilding it", &key.hex()[..12])
}

fn resolve(
    config: &Config,
    fetcher: &Fetcher,
    store: &Store,
    wanted: &str,
    report: &Reporter,
    use_memo: bool,
) -> Result<(Lock, LockedPackage)> {
    let source = AptSource::new(&config.repo_url, &config.suite, &config.component(), &config.arch);
    let keyring_id = match &config.keyring {
        KeyringSetting::DatadogDefault => "datadog-pinned".to_string(),
        KeyringSetting::File(path) => {
            use std::io::Read;
            let limit = crate::apt::signature::KEYRING_LIMIT;
            let mut bytes = Vec::new();
            fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut bytes)).with_context(|| {
                format!(
                    "DD_APT_KEYRING={}: cannot read the keyring; point it at a readable OpenPGP keyring \
                     (armored or binary), or unset it to use Datadog's pinned keys",
                    path.display()
                )
            })?;
            if bytes.len() as u64 > limit {
                anyhow::bail!(
                    "DD_APT_KEYRING={}: the keyring is larger than {}, the limit for a keyring; point it at the \
                     repository's public signing key alone",
                    path.display(),
                    crate::report::limit(limit)
                );
            }
            Sha256::of(&bytes).hex()
        }
    };
    let memo_key = Sha256::of(format!("{}\n{}\n{}\n{}\n{}\n{}", source.url, source.suite, source.component, source.arch, keyring_id, wanted).as_bytes());
    report.topic(&format!("Resolving Datadog Agent {wanted} ({} {} {})", source.url, source.suite, source.component));
    let memo_name = format!("{}.json", memo_key.hex());
    if use_memo || fetcher.is_offline() {
        if let Some(text) = read_memo(store, &memo_name)
            && let Ok((lock, package)) = serde_json::from_slice::<(Lock, LockedPackage)>(&text) {
                report.detail(&format!("{} {} (resolved before; signed by {})", package.name, package.version, lock.signed_by));
                return Ok((lock, package));
            }
        if fetcher.is_offline() {
            anyhow::bail!(
                "network access is disabled ({}) and the cache has no resolution of agent {wanted} from {}; \
                 run `ddslug fetch` with the same settings and network access first, or commit a lock ({APP_LOCK})",
                config.offline.as_deref().unwrap_or("offline"),
                source.url
            );
        }
    }
    let keyring = match &config.keyring {
        KeyringSetting::File(path) => Keyring::load(path).with_context(|| "DD_APT_KEYRING".to_string())?,
        KeyringSetting::DatadogDefault => datadog_keyring(fetcher, KEY_SERVER)?,
    };
    let index = load_index(fetcher, &source, &keyring, &[HEROKU_AGENT, AGENT])?;
    let entry = resolve_agent(&index, wanted)?;
    report.detail(&format!("{} {} (signed by {})", entry.package, entry.version, index.signer));
    let package = LockedPackage {
        name: entry.package.clone(),
        version: entry.version.to_string(),
        filename: entry.filename.clone(),
        size: entry.size,
        sha256: entry.sha256,
    };
    let lock = Lock {
        schema: SCHEMA,
        repository: source.url.clone(),
        suite: source.suite.clone(),
        component: source.component.clone(),
        architecture: source.arch.clone(),
        signed_by: index.signer.clone(),
        packages: Vec::new(),
        recipe_sha256: Sha256::of(b""),
        options: Options { version: Vec::new(), major: config.major, python: 0, apm: false, process_agent: false },
    };
    store.put("indexes", &memo_name, &serde_json::to_vec(&(&lock, &package))?)?;
    Ok((lock, package))
}

/// A resolution stored before (`indexes/<hash>.json`), if there and readable: a regular
/// file (not a symlink) of at most 1 MiB (a real one is under 1 KB).
fn read_memo(store: &Store, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = store.dir("indexes").ok()?.open_regular(OsStr::new(name)).ok()?;
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
