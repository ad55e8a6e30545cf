//! The Cloud Native Buildpack (Buildpack API 0.10): `bin/build`'s step over the same pipeline
//! as the classic compile ([`crate::buildpack::classic`]): settings → lock → layer in the store
//! → the `agent` launch layer, started at launch by an exec.d program ([`execd`]).
//!
//! Layers (in `CNB_LAYERS_DIR`):
//! - `agent` (launch, cache): the stripped agent tree laid out like a slug's `.apt`, plus
//!   `.ddslug/manifest.json` and `.ddslug/tree.json` (as a slug has them) and `exec.d/ddslug`.
//!   Its metadata holds the layer key, the tree hash, the binary's hash and the lock. When the
//!   restored metadata has this build's layer key and the layer is there with a manifest of that
//!   key, it is kept as it is: nothing is downloaded or unpacked.
//! - `ddslug-cache` (cache only): the store (CACHE_DIR's `ddslug/v1`: verified blobs and
//!   resolutions; its unpacked layers are removed once the agent layer holds the tree) and the
//!   pinned ddslug binary bin/build fetched, so that `DD_OFFLINE=true` builds and rebuilds from
//!   the locked blobs work as on Cedar.
//!
//! Contract: the app directory is only read (`datadog/ddslug.lock`, `project.toml`); every
//! write into the layers directory goes through directory descriptors that do not follow
//! symlinks ([`crate::fsat`]); a failed build leaves no `agent.toml` naming a half-made layer.
//! Settings have the names, defaults and errors of the classic ones ([`crate::config`]).

pub mod execd;
pub mod layers;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use self::layers::{AGENT_LAYER, AgentMetadata, CACHE_LAYER, CacheMetadata, Types};
use crate::buildpack::classic::{BuiltLayer, Reuse, build_layer_shared, fetcher_for, layer_inputs, lock_for, manifest_for, shared_cache};
use crate::config::{Config, Settings, cnb_arch};
use crate::fsat::Dir;
use crate::hash::Sha256;
use crate::report::{Reporter, seconds};
use crate::slug::manifest::{Lock, Manifest, read_manifest, to_json};
use crate::slug::materialize::{Materialize, Materialized, materialize_index};
use crate::store::{Store, layer};

/// Where the exec.d program goes in the agent layer.
pub const EXEC_D_PROGRAM: &str = "exec.d/ddslug";
/// The store layout the cache layer holds.
const STORE_LAYOUT: &str = "ddslug/v1";

/// What `bin/build` is given (Buildpack API 0.10 passes it in the environment).
#[derive(Clone, Debug)]
pub struct BuildArgs {
    pub layers_dir: PathBuf,
    pub platform_dir: Option<PathBuf>,
    /// The working directory: the app.
    pub app_dir: PathBuf,
    /// `CNB_TARGET_ARCH`.
    pub target_arch: Option<String>,
    /// The ddslug binary to install as the exec.d program.
    pub self_exe: PathBuf,
}

impl BuildArgs {
    /// From the environment the lifecycle sets (`CNB_LAYERS_DIR`, `CNB_PLATFORM_DIR`,
    /// `CNB_TARGET_ARCH`) and the working directory.
    pub fn from_env() -> Result<BuildArgs> {
        let layers_dir = std::env::var_os("CNB_LAYERS_DIR").filter(|v| !v.is_empty()).map(PathBuf::from).context(
            "CNB_LAYERS_DIR is not set: `ddslug cnb build` is the Cloud Native Buildpack's build step, run by the CNB \
             lifecycle (bin/build); on Cedar use bin/compile",
        )?;
        Ok(BuildArgs {
            layers_dir,
            platform_dir: std::env::var_os("CNB_PLATFORM_DIR").filter(|v| !v.is_empty()).map(PathBuf::from),
            app_dir: std::env::current_dir().context("reading the working directory (the app)")?,
            target_arch: std::env::var("CNB_TARGET_ARCH").ok(),
            self_exe: std::env::current_exe().context("locating the ddslug binary")?,
        })
    }
}

/// What a build did.
#[derive(Clone, Debug)]
pub struct BuildOutcome {
    pub metadata: AgentMetadata,
    /// The agent layer was kept as restored.
    pub layer_kept: bool,
    pub downloaded: bool,
}

/// Reads the settings of a CNB build: `CNB_PLATFORM_DIR/env/`, the environment, the app's
/// `project.toml`, and the target architecture.
pub fn load_config(args: &BuildArgs, report: &Reporter) -> Result<Config> {
    let env_dir = args.platform_dir.as_ref().map(|p| p.join("env"));
    let settings = Settings::load_cnb(env_dir.as_deref(), &args.app_dir.join("project.toml"))?;
    let mut config = Config::from_settings(&settings)?;
    config.arch = cnb_arch(args.target_arch.as_deref())?;
    for warning in &config.warnings {
        report.warn(warning);
    }
    Ok(config)
}

/// The build step.
pub fn build(args: &BuildArgs, report: &Reporter) -> Result<BuildOutcome> {
    let started = Instant::now();
    report.topic(&format!("Datadog Agent (ddslug {}, Cloud Native Buildpack)", env!("CARGO_PKG_VERSION")));
    let layers = Dir::open_given(&args.layers_dir).with_context(|| format!("opening CNB_LAYERS_DIR {}", args.layers_dir.display()))?;
    let config = load_config(args, report)?;
    let fetcher = fetcher_for(&config, report);
    layers.make_dirs_beneath(Path::new(CACHE_LAYER)).with_context(|| format!("creating {}", args.layers_dir.join(CACHE_LAYER).display()))?;
    let store = Store::open(&args.layers_dir.join(CACHE_LAYER))?;
    let _lock = store.lock()?;
    // The cache layer is kept whatever happens next: a failed build keeps what it fetched.
    layers::write(&layers, &args.layers_dir, CACHE_LAYER, Types { cache: true, ..Types::default() }, &CacheMetadata { store: STORE_LAYOUT.into() })?;

    let lock = lock_for(&args.app_dir, &config, &fetcher, &store, report)?;
    let key = layer_inputs(&lock).key();
    let binary = Sha256::of_file(&args.self_exe).with_context(|| format!("reading {}", args.self_exe.display()))?;
    let agent_types = Types { launch: true, cache: true, build: false };
    if let Some((mut metadata, manifest)) = restored_agent(&layers, &args.layers_dir, &key) {
        report.topic(&format!("Keeping the agent layer {} (nothing to download or unpack)", &key.hex()[..12]));
        if metadata.ddslug_sha256 != binary {
            // Another buildpack version: its binary starts the agent, and the manifest says so.
            let program = install_program(&layers, &args.layers_dir, &args.self_exe)?;
            let manifest = Manifest { binary_sha256: Some(program), ddslug_version: env!("CARGO_PKG_VERSION").into(), ..manifest };
            write_manifest(&layers, &args.layers_dir, &manifest)?;
            report.detail(&format!("exec.d/ddslug replaced by this buildpack's ddslug {}", env!("CARGO_PKG_VERSION")));
            metadata.ddslug_sha256 = binary;
        }
        metadata.lock = lock;
        layers::write(&layers, &args.layers_dir, AGENT_LAYER, agent_types, &metadata)?;
        prune_store_layers(&store)?;
        // The kept layer's SBOM is the one the lifecycle restored beside it (spec: "Layer Types").
        report.topic(&format!("Datadog Agent {} ready in {}", agent_version(&metadata.lock), seconds(started.elapsed())));
        return Ok(BuildOutcome { metadata, layer_kept: true, downloaded: false });
    }

    // A layer another builder pushed to the shared cache (DD_CACHE_REGISTRY) is pulled and
    // checked instead of built; one built here is pushed, as on Cedar.
    let shared = shared_cache(&config, report);
    let built = build_layer_shared(&store, &fetcher, &lock, report, Reuse::Checked, shared.as_ref())?;
    report.topic("Installing the agent layer");
    let t = Instant::now();
    // No metadata may name a layer being replaced: forget it first.
    layers::forget(&layers, &args.layers_dir, AGENT_LAYER)?;
    let manifest = install_layer(&layers, &args.layers_dir, &store, &built, manifest_for(&lock, &config, &built), &args.self_exe)?;
    write_sbom(&layers, &args.layers_dir, &store, &lock, &built)?;
    let metadata = AgentMetadata { layer_key: key, tree_hash: built.info.tree_hash, ddslug_sha256: binary, lock };
    layers::write(&layers, &args.layers_dir, AGENT_LAYER, agent_types, &metadata)?;
    prune_store_layers(&store)?;
    report.detail(&format!("{} files in {}; tree hash {}", manifest.files, seconds(t.elapsed()), manifest.tree_hash));
    report.topic(&format!("Datadog Agent {} installed in {}", agent_version(&metadata.lock), seconds(started.elapsed())));
    Ok(BuildOutcome { metadata, layer_kept: false, downloaded: built.downloaded })
}

/// The locked agent's version, for messages.
fn agent_version(lock: &Lock) -> &str {
    lock.packages.first().map_or("(none)", |p| p.version.as_str())
}

/// Writes `<layers>/agent.sbom.cdx.json` (a media type buildpack.toml's `sbom-formats`
/// declares): the same bytes as a Cedar slug's `.ddslug/sbom.cdx.json` for the same lock
/// ([`crate::sbom::for_stored_layer`]), replacing the SBOM of a layer this build replaced.
fn write_sbom(layers: &Dir, layers_dir: &Path, store: &Store, lock: &Lock, built: &BuiltLayer) -> Result<()> {
    let name = format!("{AGENT_LAYER}.{}", crate::sbom::SLUG_FILE);
    let bytes = crate::sbom::for_stored_layer(store, lock, &built.info)?;
    layers.write_via(OsStr::new(&name), &bytes, 0o644, layers).with_context(|| format!("writing {}", layers_dir.join(&name).display()))?;
    Ok(())
}

/// The restored agent layer's metadata, when it names `key` and the layer is there with the
/// manifest of that key (the lifecycle restores metadata and content of a cached layer
/// together, or neither; this holds even when it did not).
fn restored_agent(layers: &Dir, layers_dir: &Path, key: &Sha256) -> Option<(AgentMetadata, Manifest)> {
    let restored = layers::read::<AgentMetadata>(layers, AGENT_LAYER)?;
    if restored.metadata.layer_key != *key || layers.kind(OsStr::new(AGENT_LAYER)).ok()? != crate::fsat::Kind::Dir {
        return None;
    }
    let manifest = read_manifest(&layers_dir.join(AGENT_LAYER).join(".ddslug/manifest.json")).ok()?;
    (manifest.layer_key == *key && manifest.tree_hash == restored.metadata.tree_hash).then_some((restored.metadata, manifest))
}

/// Writes the agent layer's `.ddslug/manifest.json` (all at once, through the layer's
/// descriptors).
fn write_manifest(layers: &Dir, layers_dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = layers_dir.join(AGENT_LAYER).join(".ddslug/manifest.json");
    let ddslug = layers.make_dirs_beneath(&Path::new(AGENT_LAYER).join(".ddslug")).with_context(|| path.display().to_string())?;
    ddslug.write_via(OsStr::new("manifest.json"), to_json(manifest).as_bytes(), 0o644, &ddslug).with_context(|| path.display().to_string())?;
    Ok(())
}

/// Makes `<layers>/agent` from the stored layer: the tree (hard links into the cache layer
/// where the filesystem allows), `.ddslug/tree.json` and `manifest.json`, `exec.d/ddslug`.
fn install_layer(layers: &Dir, layers_dir: &Path, store: &Store, built: &BuiltLayer, manifest: Manifest, self_exe: &Path) -> Result<Manifest> {
    let agent_path = layers_dir.join(AGENT_LAYER);
    layers.remove_all(OsStr::new(AGENT_LAYER)).with_context(|| format!("removing the old {}", agent_path.display()))?;
    let key = built.info.key;
    match materialize_index(&layer::layer_dir(store, &key), &agent_path, &built.index, Materialize::from_env(), false, None)? {
        Materialized::Done(_) => {}
        Materialized::SourceChanged => anyhow::bail!("layer {} changed while it was being installed; run the build again", &key.hex()[..12]),
    }
    let agent = layers.dir_beneath(Path::new(AGENT_LAYER)).with_context(|| agent_path.display().to_string())?;
    let ddslug = agent.make_dirs_beneath(Path::new(".ddslug")).with_context(|| agent_path.join(".ddslug").display().to_string())?;
    let tree_json = OsStr::new("tree.json");
    let entries = layer::entries_path(store, &key);
    store
        .dir("layers")?
        .copy_file(entries.file_name().unwrap_or_default(), &ddslug, tree_json, 0o644)
        .with_context(|| format!("copying {} into the agent layer", entries.display()))?;
    let program = install_program(layers, layers_dir, self_exe)?;
    let manifest = Manifest {
        tree_json_sha256: Some(Sha256::of_file(&agent_path.join(".ddslug/tree.json")).context("hashing the agent layer's tree.json")?),
        binary_sha256: Some(program),
        ..manifest
    };
    write_manifest(layers, layers_dir, &manifest)?;
    Ok(manifest)
}

/// Puts this ddslug binary in the agent layer as its exec.d program (0755, replacing one
/// there); returns its SHA-256.
fn install_program(layers: &Dir, layers_dir: &Path, self_exe: &Path) -> Result<Sha256> {
    let path = layers_dir.join(AGENT_LAYER).join(EXEC_D_PROGRAM);
    let exec_d = layers.make_dirs_beneath(&Path::new(AGENT_LAYER).join("exec.d")).with_context(|| format!("creating {}", path.display()))?;
    let name = OsStr::new("ddslug");
    exec_d.remove_all(name).with_context(|| format!("replacing {}", path.display()))?;
    exec_d.copy_in(self_exe, name).with_context(|| format!("copying {} to {}", self_exe.display(), path.display()))?;
    exec_d.set_mode_of(name, 0o755).with_context(|| path.display().to_string())?;
    Sha256::of_file(&path).with_context(|| format!("reading {}", path.display()))
}

/// Removes the store's unpacked layers from the cache layer once the agent layer holds the
/// tree: the lifecycle caches the agent layer itself, and each copy in the store would be
/// cached again beside it (the real agent's is ~190 MB), one more for every version ever
/// built. The verified blobs and resolutions stay: a changed setting or version rebuilds from
/// them without a download, offline too. Called with the store lock held.
fn prune_store_layers(store: &Store) -> Result<()> {
    let layers = store.dir("layers")?;
    let path = store.root().join("layers");
    for (name, _) in layers.entries().with_context(|| format!("listing {}", path.display()))? {
        // Descriptions first: a layer without one is never reused, even if removal stops midway.
        if name.as_encoded_bytes().ends_with(b".json") && !name.as_encoded_bytes().ends_with(b".tree.json") {
            layers.remove_all(&name).with_context(|| format!("removing {}", path.join(&name).display()))?;
        }
    }
    for (name, _) in layers.entries().with_context(|| format!("listing {}", path.display()))? {
        layers.remove_all(&name).with_context(|| format!("removing {}", path.join(&name).display()))?;
    }
    Ok(())
}

/// The lock recorded in an agent layer's metadata file (for tests and tools).
pub fn recorded_lock(layers_dir: &Path) -> Option<Lock> {
    let layers = Dir::open_given(layers_dir).ok()?;
    layers::read::<AgentMetadata>(&layers, AGENT_LAYER).map(|t| t.metadata.lock)
}
