//! The CLI's lock, fetch, verify, diff and gc commands: call the library, print, exit code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use ddslug::compile::{Reuse, build_layer, fetcher_for, load_config, plan};
use ddslug::config::{Settings, download_limits};
use ddslug::fetch::{Downloaded, FetchOptions, Fetcher};
use ddslug::manifest::{read_lock, to_json};
use ddslug::report::{Reporter, bytes};
use ddslug::store::Store;
use ddslug::treehash::TreeDiff;
use ddslug::verify::{diff_slugs, entry_size, rebuild, verify as verify_slug};

use crate::SettingsArgs;

fn resolve_store(settings: &SettingsArgs) -> Result<(Store, Option<tempfile_dir::TempDir>)> {
    match &settings.resolve_cache {
        Some(dir) => Ok((Store::open(dir)?, None)),
        None => {
            let tmp = tempfile_dir::TempDir::new()?;
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
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
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
    let (lock, limits) = match lock_file {
        Some(path) => {
            // Only the download settings matter with a lock: the rest is in the lock.
            let mut values = Settings::load(settings.env_dir.as_deref()).context("reading the settings")?;
            for (name, value) in &overrides {
                values.set(name, value);
            }
            (read_lock(&path)?, download_limits(&values)?)
        }
        None => {
            let config = load_config(settings.env_dir.as_deref(), &overrides, &report)?;
            (plan(&config, &fetcher_for(&config, &report), &store, &report, false)?, config.download)
        }
    };
    let offline = settings.offline.then(|| "--offline".to_string());
    let fetcher = Fetcher::new(FetchOptions { offline, limits, report, ..FetchOptions::default() });
    // Building the layer too means the later compile only copies.
    build_layer(&store, &fetcher, &lock, &report, Reuse::Checked)?;
    for p in &lock.packages {
        let ok = store.check_blob(Downloaded { sha256: p.sha256, size: p.size })?;
        println!("{} {} {}", if ok { "cached" } else { "MISSING" }, p.name, p.version);
    }
    Ok(())
}

pub fn verify(build_dir: &Path, rebuild_too: bool, cache: Option<PathBuf>, offline: bool, json: bool) -> Result<()> {
    let report = verify_slug(build_dir)?;
    let rebuilt = if rebuild_too {
        Some(rebuild(build_dir, cache.as_deref(), offline.then(|| "--offline".to_string()))?)
    } else {
        None
    };
    let ok = report.identical && rebuilt.as_ref().is_none_or(|r| r.matches);
    if json {
        println!("{}", serde_json::json!({ "ok": ok, "verify": report, "rebuild": rebuilt }));
    } else {
        let d = &report.diff;
        println!(
            "{}: {} ({} added, {} missing, {} changed)",
            build_dir.display(),
            if report.identical { "identical to its manifest" } else { "DIFFERS from its manifest" },
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        );
        print_tree_diff(d, ["added   ", "missing ", "changed "]);
        if !report.written_at_dyno_start.is_empty() {
            println!("  ({} paths written at dyno start, not counted)", report.written_at_dyno_start.len());
        }
        if let Some(r) = &rebuilt {
            println!(
                "rebuild from the blobs in an empty store: tree hash {} {} the manifest's {}",
                r.rebuilt_tree_hash,
                if r.matches { "equals" } else { "DIFFERS from" },
                r.manifest_tree_hash
            );
            if r.matches {
                println!("a cache purge would change nothing");
            }
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

pub fn diff(a: &Path, b: &Path, json: bool) -> Result<()> {
    let d = diff_slugs(a, b)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    for line in &d.summary {
        println!("{line}");
    }
    if let Some(tree) = &d.tree {
        print_tree_diff(tree, ["+", "-", "~"]);
    }
    Ok(())
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

/// A temporary directory removed on drop (no extra dependency for one use).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let path = std::env::temp_dir().join(format!("ddslug-resolve.{}", std::process::id()));
            std::fs::create_dir_all(&path)?;
            Ok(TempDir(path))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
