//! `make demo`: generates a signed agent repository, serves it on 127.0.0.1, and runs the
//! buildpack's bin/compile into a scratch BUILD_DIR twice (cold, then cached), showing what
//! a Heroku user would see.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ddslug_testsupport::Server;
use ddslug_testsupport::agent::Scale;
use ddslug_testsupport::fixtures::agent_repository;

fn main() -> Result<()> {
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let bin = std::env::var_os("DDSLUG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| project.join("target/release/ddslug"));
    if !bin.exists() {
        bail!("{} is missing: run `cargo build --release` (make demo does)", bin.display());
    }
    let work = project.join("target/demo");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    println!("== Generating a signed Datadog-like apt repository in {}", work.display());
    let scale = Scale { modules_per_package: 20, packages: 20, binary_bytes: 200_000 };
    let fixture = agent_repository(&work, scale)?;
    let server = Server::start(&fixture.repo.root)?;
    println!("== Serving it on {}", server.url());

    let env_dir = work.join("env");
    std::fs::create_dir_all(&env_dir)?;
    std::fs::write(env_dir.join("DD_APT_REPO_URL"), server.url())?;
    std::fs::write(env_dir.join("DD_APT_KEYRING"), fixture.keyring.to_string_lossy().as_bytes())?;
    std::fs::write(env_dir.join("DD_API_KEY"), "demo-api-key")?;
    let cache = work.join("cache");
    for (round, label) in [(1, "cold cache"), (2, "warm cache, fresh BUILD_DIR")] {
        let build = work.join(format!("build{round}"));
        std::fs::create_dir_all(&build)?;
        println!("\n== bin/compile #{round} ({label})\n");
        let started = Instant::now();
        run_compile(&project, &bin, &build, &cache, &env_dir)?;
        println!("\n== compile #{round} took {:.2} s", started.elapsed().as_secs_f64());
    }
    println!("\nSlugs: {}/build1 and build2 (see .ddslug/manifest.json); cache: {}", work.display(), cache.display());
    Ok(())
}

fn run_compile(project: &Path, bin: &Path, build: &Path, cache: &Path, env_dir: &Path) -> Result<()> {
    let status = Command::new(project.join("bin/compile"))
        .arg(build)
        .arg(cache)
        .arg(env_dir)
        .env("DDSLUG_BIN", bin)
        .env("STACK", "heroku-24")
        .status()
        .context("running bin/compile")?;
    if !status.success() {
        bail!("bin/compile failed ({status})");
    }
    Ok(())
}
