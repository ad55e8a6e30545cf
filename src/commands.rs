//! The CLI's lock, fetch, verify, diff and gc commands: call the library, print, exit code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use ddslug::buildpack::classic::{Reuse, build_layer_shared, fetcher_for, load_config, plan, shared_cache};
use ddslug::config::{Settings, cache_settings, download_limits};
use ddslug::oci::cache::SharedCache;
use ddslug::fetch::{Downloaded, FetchOptions, Fetcher};
use ddslug::slug::manifest::{read_lock, to_json};
use ddslug::report::{Reporter, bytes};
use ddslug::store::Store;
use ddslug::store::treehash::TreeDiff;
use ddslug::slug::verify::{Outcome, diff_slugs, entry_size, rebuild, verify as verify_slug};

use crate::SettingsArgs;

/// The store a resolution uses: `--resolve-cache`, else a scratch one in a fresh temporary
/// directory (an unpredictable name, made exclusively; removed on drop).
fn resolve_store(settings: &SettingsArgs) -> Result<(Store, Option<tempfile::TempDir>)> {
    match &settings.resolve_cache {
        Some(dir) => Ok((Store::open(dir)?, None)),
        None => {
            let tmp = tempfile::Builder::new().prefix("ddslug-resolve.").tempdir().context("creating a temporary directory")?;
            Ok((Store::open(tmp.path())?, Some(tmp)))
        }
    }
}

pub fn lock(settings: SettingsArgs, out: Option<PathBuf>, check: Option<PathBuf>, json: bool) -> Result<()> {
    let report = Reporter { quiet: true };
    let config = load_config(settings.env_dir.as_deref(), &settings.overrides()?, &report)?;
    let fetcher = fetcher_for(&config, &report);
    let (store, _tmp) = resolve_store(&settings)?;
    let _guard = store.lock()?;
    let lock = plan(&config, &fetcher, &store, &report, false)?;
    if let Some(path) = check {
        let existing = read_lock(&path)?;
        let current = existing == lock;
        if json {
            println!("{}", serde_json::json!({ "lock": path, "current": current, "resolved": lock }));
        } else if current {
            println!("{} is current", path.display());
        } else {
            println!("{} is out of date; the settings now resolve to:", path.display());
            for p in &lock.packages {
                println!("  {} {} sha256:{}", p.name, p.version, p.sha256);
            }
            println!("Update it with: ddslug lock --out {}", path.display());
        }
        if !current {
            std::process::exit(1);
        }
        return Ok(());
    }
    let text = to_json(&lock);
    match out {
        Some(path) => {
            crate::write_replacing(&path, text.as_bytes(), 0o644)?;
            if json {
                println!("{}", serde_json::json!({ "written": path, "lock": lock }));
            } else {
                println!("wrote {}", path.display());
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

pub fn fetch(settings: SettingsArgs, cache: PathBuf, lock_file: Option<PathBuf>) -> Result<()> {
    let report = Reporter::default();
    let store = Store::open(&cache)?;
    let _guard = store.lock()?;
    let overrides = settings.overrides()?;
    let (lock, limits, shared) = match lock_file {
        Some(path) => {
            // Only the download and shared cache settings matter with a lock: the rest is in the lock.
            let mut values = Settings::load(settings.env_dir.as_deref()).context("reading the settings")?;
            for (name, value) in &overrides {
                values.set(name, value);
            }
            let limits = download_limits(&values)?;
            let mut warnings = Vec::new();
            let cache = cache_settings(&values, &mut warnings)?;
            for warning in &warnings {
                report.warn(warning);
            }
            let shared = match cache {
                Some(c) if !settings.offline => Some(SharedCache::new(&c, limits)),
                _ => None,
            };
            (read_lock(&path)?, limits, shared)
        }
        None => {
            let config = load_config(settings.env_dir.as_deref(), &overrides, &report)?;
            let shared = shared_cache(&config, &report);
            (plan(&config, &fetcher_for(&config, &report), &store, &report, false)?, config.download, shared)
        }
    };
    let offline = settings.offline.then(|| "--offline".to_string());
    let fetcher = Fetcher::new(FetchOptions { offline, limits, report, ..FetchOptions::default() });
    // Building the layer too means the later compile only copies.
    let built = build_layer_shared(&store, &fetcher, &lock, &report, Reuse::Checked, shared.as_ref())?;
    for p in &lock.packages {
        let ok = store.check_blob(Downloaded { sha256: p.sha256, size: p.size })?;
        // A layer pulled from a shared cache needs no package: compile reuses the layer.
        let state = if ok { "cached" } else if built.pulled { "layer-cached" } else { "MISSING" };
        println!("{state} {} {}", p.name, p.version);
    }
    Ok(())
}

/// `ddslug verify`: exits 0 identical, 1 differs, 2 could not check (as Nix's `store verify`).
pub fn verify(build_dir: &Path, rebuild_too: bool, cache: Option<PathBuf>, offline: bool, json: bool) -> Result<()> {
    let code = match verify_and_print(build_dir, rebuild_too, cache, offline, json) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("ddslug: error: {e:#}");
            eprintln!("ddslug: could not check {}", build_dir.display());
            Outcome::CouldNotCheck.exit_code()
        }
    };
    std::process::exit(code.into());
}

fn verify_and_print(build_dir: &Path, rebuild_too: bool, cache: Option<PathBuf>, offline: bool, json: bool) -> Result<Outcome> {
    // Dyno start reads the app's configuration from here too.
    let app_datadog = std::env::var_os("DD_HEROKU_CONF_FOLDER").filter(|v| !v.is_empty()).map(PathBuf::from);
    let report = verify_slug(build_dir, app_datadog.as_deref())?;
    // `None` without --rebuild; the error text when the rebuild could not be made.
    // The rebuild downloads with the same limits as a build (DD_DOWNLOAD_* from the environment).
    let fetch = || -> Result<ddslug::fetch::FetchOptions> {
        let limits = download_limits(&Settings::load(None)?)?;
        Ok(ddslug::fetch::FetchOptions { offline: offline.then(|| "--offline".to_string()), limits, ..Default::default() })
    };
    let rebuilt = rebuild_too.then(|| fetch().and_then(|f| rebuild(&report, cache.as_deref(), f)).map_err(|e| format!("{e:#}")));
    let outcome = match &rebuilt {
        None => report.outcome,
        Some(Ok(r)) => report.outcome.and(r.outcome),
        Some(Err(_)) => report.outcome.and(Outcome::CouldNotCheck),
    };
    if json {
        let rebuild_json = match &rebuilt {
            None => serde_json::Value::Null,
            Some(Ok(r)) => serde_json::to_value(r)?,
            Some(Err(why)) => serde_json::json!({ "error": why }),
        };
        println!("{}", serde_json::json!({ "ok": outcome == Outcome::Identical, "outcome": outcome, "verify": report, "rebuild": rebuild_json }));
        return Ok(outcome);
    }
    let d = &report.diff;
    println!(
        "{}: {} ({} added, {} missing, {} changed)",
        build_dir.display(),
        match report.outcome {
            Outcome::Identical => "identical to its manifest",
            Outcome::Differs => "DIFFERS from its manifest",
            Outcome::CouldNotCheck => "not fully checked against its manifest",
        },
        d.added.len(),
        d.removed.len(),
        d.changed.len()
    );
    print_tree_diff(d, ["added   ", "missing ", "changed "]);
    for problem in &report.problems {
        println!("  ! {problem}");
    }
    for what in &report.unchecked {
        println!("  ? {what}");
    }
    if !report.written_at_dyno_start.is_empty() {
        println!("  ({} paths written at dyno start, not counted)", report.written_at_dyno_start.len());
    }
    match &rebuilt {
        Some(Ok(r)) => {
            println!(
                "rebuild from the blobs in an empty store: tree hash {} {} the slug's {}",
                r.rebuilt_tree_hash,
                if r.matches_slug { "equals" } else { "DIFFERS from" },
                r.slug_tree_hash
            );
            print_tree_diff(&r.diff, ["extra   ", "missing ", "changed "]);
            if !r.matches_manifest {
                println!(
                    "  ! the manifest records tree hash {} and layer {}; the rebuild gives {} and {}",
                    r.manifest_tree_hash, r.manifest_layer_key, r.rebuilt_tree_hash, r.rebuilt_layer_key
                );
            }
            match (r.sbom_matches, &r.sbom_note) {
                (Some(true), _) => println!("the rebuilt layer's SBOM is the slug's, byte for byte"),
                (Some(false), _) => println!("  ! the rebuilt layer's SBOM differs from .ddslug/sbom.cdx.json"),
                (None, Some(why)) => println!("  ? SBOM not compared: {why}"),
                (None, None) => {}
            }
            if r.matches {
                println!("a cache purge would change nothing");
            }
        }
        Some(Err(why)) => println!("could not rebuild: {why}"),
        None => {}
    }
    Ok(outcome)
}

/// `ddslug diff`: exits 0 when nothing differs, 1 when something does, 2 when a side could
/// not be read.
pub fn diff(a: &Path, b: &Path, json: bool) -> Result<()> {
    let d = match diff_slugs(a, b) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ddslug: error: {e:#}");
            std::process::exit(Outcome::CouldNotCheck.exit_code().into());
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        for line in &d.summary {
            println!("{line}");
        }
        if let Some(tree) = &d.tree {
            print_tree_diff(tree, ["+", "-", "~"]);
        }
    }
    let outcome = if d.identical { Outcome::Identical } else { Outcome::Differs };
    std::process::exit(outcome.exit_code().into());
}

/// One line per added, removed and changed path, with sizes; `marks` label the three kinds.
fn print_tree_diff(d: &TreeDiff, [added, removed, changed]: [&str; 3]) {
    for e in &d.added {
        println!("  {added} {} ({})", e.path, bytes(entry_size(e)));
    }
    for e in &d.removed {
        println!("  {removed} {} ({})", e.path, bytes(entry_size(e)));
    }
    for (old, new) in &d.changed {
        println!("  {changed} {} ({} -> {})", new.path, bytes(entry_size(old)), bytes(entry_size(new)));
    }
}

pub fn gc(cache: &Path, days: u64, delete: bool) -> Result<()> {
    let store = Store::open(cache)?;
    let _guard = store.lock()?;
    let garbage = store.gc(days, delete)?;
    let total: u64 = garbage.iter().map(|g| g.bytes).sum();
    for g in &garbage {
        println!("{} {} ({}, unused for {} days)", if delete { "removed" } else { "would remove" }, g.path.display(), bytes(g.bytes), g.idle_days);
    }
    println!(
        "{} {} in {} items{}",
        if delete { "freed" } else { "would free" },
        bytes(total),
        garbage.len(),
        if delete { "" } else { "; run with --delete to remove them" }
    );
    Ok(())
}

/// Where `ddslug image` takes its slug from.
pub enum ImageSource {
    /// A slug compile made.
    Slug(PathBuf),
    /// A build in a temporary directory from these settings (or this lock).
    Build { env_dir: Option<PathBuf>, overrides: Vec<(String, String)>, lock: Option<PathBuf>, cache: Option<PathBuf> },
}

/// `ddslug image`: the slug (checked, or built now) as an OCI image layout; `--push` too.
pub fn image(source: ImageSource, layout: &Path, tag: Option<&str>, push: Option<&str>, insecure: bool, json: bool) -> Result<()> {
    // With --json, stdout carries one JSON object; the build's lines are not shown.
    let report = Reporter { quiet: json };
    use ddslug::oci::{image, push as pusher};
    // Checked before any work: a bad reference should not cost a build.
    let push_ref = push.map(|r| pusher::parse_ref(r, insecure)).transpose()?;
    let (build_dir, manifest, _scratch) = match source {
        ImageSource::Slug(dir) => {
            let report = verify_slug(&dir, None).with_context(|| format!("checking the slug in {}", dir.display()))?;
            if !report.written_at_dyno_start.is_empty() {
                anyhow::bail!(
                    "{}: dyno start has run in this slug (it wrote {} paths, datadog.yaml among them); an image must hold the slug as compile made it: compile into a fresh directory, or give --env-dir or --lock instead",
                    dir.display(),
                    report.written_at_dyno_start.len()
                );
            }
            if report.outcome != Outcome::Identical {
                anyhow::bail!("{}: the slug is not what its manifest says (run `ddslug verify {}` to see how); compile it again", dir.display(), dir.display());
            }
            (dir, report.manifest, None)
        }
        ImageSource::Build { env_dir, overrides, lock, cache } => {
            let scratch = tempfile::Builder::new().prefix("ddslug-image.").tempdir().context("creating a temporary directory")?;
            let build = scratch.path().join("build");
            std::fs::create_dir(&build).with_context(|| format!("creating {}", build.display()))?;
            if let Some(lock) = &lock {
                // Read first: a bad lock is named as the user gave it.
                read_lock(lock)?;
                let app_lock = build.join(ddslug::buildpack::classic::APP_LOCK);
                std::fs::create_dir_all(app_lock.parent().unwrap_or(&build)).with_context(|| format!("creating {}", build.display()))?;
                std::fs::copy(lock, &app_lock).with_context(|| format!("copying {} into the build", lock.display()))?;
            }
            let args = ddslug::buildpack::classic::CompileArgs {
                build_dir: build.clone(),
                cache_dir: cache.unwrap_or_else(|| scratch.path().join("cache")),
                env_dir,
                overrides,
                self_exe: std::env::current_exe().context("locating the ddslug binary")?,
            };
            let outcome = ddslug::buildpack::classic::compile(&args, &report)?;
            (build, outcome.manifest, Some(scratch))
        }
    };
    let tag = tag.map(str::to_string).unwrap_or_else(|| image::default_tag(&manifest));
    report.topic(&format!("Writing the OCI image {}:{tag}", layout.display()));
    let written = image::write_image(&build_dir, &manifest, layout, &tag)?;
    report.detail(&format!("manifest sha256:{} ({} bytes)", written.manifest_digest, written.manifest_size));
    report.detail(&format!("config   sha256:{}", written.config_digest));
    report.detail(&format!("layer    sha256:{} ({}; diff_id sha256:{})", written.layer_digest, bytes(written.layer_size), written.layer_diff_id));
    report.detail(&format!("tree hash {} (layer {})", manifest.tree_hash, &manifest.layer_key.hex()[..12]));
    let mut pushed = None;
    if let Some(to) = push_ref {
        let settings = Settings::load(None).context("reading the settings")?;
        let credentials = pusher::credentials(&to.repo.host)?;
        let registry = ddslug::oci::registry::Registry::new(to.repo.clone(), credentials, download_limits(&settings)?);
        let push_tag = to.tag.clone().unwrap_or_else(|| tag.clone());
        report.topic(&format!("Pushing to {}:{push_tag}", to.repo));
        let (digest, uploaded) = pusher::push(layout, &tag, &registry, &push_tag)?;
        report.detail(&format!("manifest sha256:{digest}; {uploaded} blob{} uploaded, the others were there", if uploaded == 1 { "" } else { "s" }));
        pushed = Some(serde_json::json!({ "repository": to.repo.to_string(), "tag": push_tag, "manifest_digest": format!("sha256:{digest}"), "blobs_uploaded": uploaded }));
    }
    if json {
        let digest = |d: &ddslug::hash::Sha256| format!("sha256:{d}");
        let out = serde_json::json!({
            "layout": layout,
            "tag": written.tag,
            "manifest_digest": digest(&written.manifest_digest),
            "manifest_size": written.manifest_size,
            "config_digest": digest(&written.config_digest),
            "layer_digest": digest(&written.layer_digest),
            "layer_diff_id": digest(&written.layer_diff_id),
            "layer_size": written.layer_size,
            "created": ddslug::oci::image::rfc3339(written.created),
            "tree_hash": manifest.tree_hash,
            "layer_key": manifest.layer_key,
            "pushed": pushed,
        });
        println!("{out}");
    }
    Ok(())
}
