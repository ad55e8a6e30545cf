//! `make bench`: ddslug against the classic buildpack's mechanics on the same repository,
//! served on 127.0.0.1, alternating, medians of several runs; wall time, CPU time and peak
//! memory of each step (from wait4's rusage of the whole process tree).
//!
//! Environment: BENCH_RUNS (default 5), CLASSIC_BUILDPACK (a directory holding the classic
//! buildpack's extra/datadog.sh, to time its dyno start on the same slug; optional),
//! BENCH_SETTLE_SECS (pause after the classic mechanics' deletions, default 35).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ddslug_testsupport::agent::{Scale, agent_deb};
use ddslug_testsupport::debs::Compression;
use ddslug_testsupport::registry::Registry;
use ddslug_testsupport::repo::{RepoSpec, write_repo};
use ddslug_testsupport::{KeyKind, Server, SigningKey};

const VERSION: &str = "1:7.81.2-1";

/// One timed run of a command.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    max_rss_mb: f64,
}

fn run(cmd: &mut Command) -> Result<Sample> {
    let started = Instant::now();
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed: {err}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // ru_maxrss of a waited child is the largest of its tree's processes, in KiB.
    Ok(Sample { wall, cpu: tv(usage.ru_utime) + tv(usage.ru_stime), max_rss_mb: usage.ru_maxrss as f64 / 1024.0 })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Variant {
    name: &'static str,
    repo: PathBuf,
    keyring: PathBuf,
    deb: PathBuf,
    data_member: &'static str,
    decompress: &'static str,
}

fn generate(work: &Path, name: &'static str, compression: Compression) -> Result<Variant> {
    let dir = work.join(name);
    let marker = dir.join("complete");
    let (data_member, decompress) = match compression {
        Compression::Gzip => ("data.tar.gz", "gzip"),
        _ => ("data.tar.xz", "xz"),
    };
    if !marker.exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        eprintln!("generating the {name} agent package (once; kept in {})", dir.display());
        let mut deb = agent_deb("datadog-agent", VERSION, Scale::REAL);
        deb.compression = compression;
        let key = SigningKey::generate(KeyKind::Ed25519, "ddslug bench")?;
        let spec = RepoSpec { valid_until: None, ..RepoSpec::new("stable").component("7", vec![deb]) };
        write_repo(&dir.join("repo"), &spec, &key)?;
        fs::write(dir.join("keyring.asc"), key.public_armored()?)?;
        fs::write(&marker, "")?;
    }
    let deb = find_deb(&dir.join("repo/pool"))?.context("no .deb in the bench repository")?;
    Ok(Variant { name, repo: dir.join("repo"), keyring: dir.join("keyring.asc"), deb, data_member, decompress })
}

fn find_deb(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find_deb(&path)? {
                return Ok(Some(found));
            }
        } else if path.extension().is_some_and(|e| e == "deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Flushes dirty data (so no step pays for the previous one's writeback), then waits.
fn settle(secs: u64) -> Result<()> {
    Command::new("sync").status()?;
    std::thread::sleep(std::time::Duration::from_secs(secs));
    Ok(())
}

fn fresh(path: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(path);
    fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

fn main() -> Result<()> {
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let bin = project.join("target/release/ddslug");
    if !bin.exists() {
        bail!("{} is missing: run `cargo build --release` (make bench does)", bin.display());
    }
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let work = project.join("target/bench");
    fs::create_dir_all(&work)?;
    let fresh_generation = !work.join("xz/complete").exists() || !work.join("gzip/complete").exists();
    let variants = [generate(&work, "xz", Compression::XzMultiBlock)?, generate(&work, "gzip", Compression::Gzip)?];
    if fresh_generation {
        // Generating grew this process to over a GB; children inherit that peak RSS in their
        // rusage. Measure from a fresh, small process instead.
        let status = Command::new(std::env::current_exe()?).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // Deleting gigabytes of trees slows this VM's file creation for minutes (see
    // bench_variant): a previous run's scratch is moved aside now and deleted after measuring.
    let trash = work.join("trash");
    fs::create_dir_all(&trash)?;
    for v in &variants {
        let scratch = work.join(format!("{}-scratch", v.name));
        if scratch.exists() {
            fs::rename(&scratch, trash.join(format!("{}-{}", v.name, std::process::id())))?;
        }
    }
    let mut report = String::new();
    for variant in &variants {
        report += &bench_variant(&project, &bin, &work, variant, runs)?;
    }
    let _ = fs::remove_dir_all(&trash);
    println!("{report}");
    fs::write(work.join("results.md"), &report)?;
    eprintln!("results written to {}", work.join("results.md").display());
    Ok(())
}

fn bench_variant(project: &Path, bin: &Path, work: &Path, v: &Variant, runs: usize) -> Result<String> {
    let server = Server::start(&v.repo)?;
    let scratch = fresh(&work.join(format!("{}-scratch", v.name)))?;
    let env = fresh(&scratch.join("env"))?;
    fs::write(env.join("DD_APT_REPO_URL"), server.url())?;
    fs::write(env.join("DD_APT_KEYRING"), v.keyring.to_string_lossy().as_bytes())?;
    let member = scratch.join(v.data_member);
    // Through the shell, so this process never holds the member (children inherit its peak RSS).
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("ar p '{}' {} > '{}'", v.deb.display(), v.data_member, member.display()))
        .status()?;
    if !status.success() {
        bail!("extracting {} from {}", v.data_member, v.deb.display());
    }
    let deb_mb = fs::metadata(&v.deb)?.len() as f64 / 1e6;

    let compile = |build: &Path, cache: &Path| {
        let mut c = Command::new(project.join("bin/compile"));
        c.arg(build).arg(cache).arg(&env).env("DDSLUG_BIN", bin);
        c
    };
    // Warm cache for the warm runs.
    let warm_cache = scratch.join("warm-cache");
    run(&mut compile(&fresh(&scratch.join("warm-prep"))?, &warm_cache))?;
    // A registry holding the layer, pushed by a builder that signs, for the runs that start
    // from an empty cache and pull it (DD_CACHE_REGISTRY).
    let registry = Registry::start(&fresh(&scratch.join("registry"))?)?;
    let keys = fresh(&scratch.join("keys"))?;
    let made = Command::new(bin).args(["cache", "keygen", "--name", "bench", "--out-dir"]).arg(&keys).output()?;
    if !made.status.success() {
        bail!("ddslug cache keygen: {}", String::from_utf8_lossy(&made.stderr));
    }
    let pull_env = fresh(&scratch.join("pull-env"))?;
    for name in ["DD_APT_REPO_URL", "DD_APT_KEYRING"] {
        fs::copy(env.join(name), pull_env.join(name))?;
    }
    fs::write(pull_env.join("DD_CACHE_REGISTRY"), format!("{}/ddslug/bench", registry.host()))?;
    fs::write(pull_env.join("DD_CACHE_TRUSTED_KEYS"), fs::read(keys.join("bench.pub"))?)?;
    let push_env = fresh(&scratch.join("push-env"))?;
    for name in ["DD_APT_REPO_URL", "DD_APT_KEYRING", "DD_CACHE_REGISTRY", "DD_CACHE_TRUSTED_KEYS"] {
        fs::copy(pull_env.join(name), push_env.join(name))?;
    }
    fs::write(push_env.join("DD_CACHE_SIGNING_KEY"), keys.join("bench.secret").to_string_lossy().as_bytes())?;
    let with_env = |build: &Path, cache: &Path, env: &Path| {
        let mut c = Command::new(project.join("bin/compile"));
        c.arg(build).arg(cache).arg(env).env("DDSLUG_BIN", bin);
        c
    };
    run(&mut with_env(&fresh(&scratch.join("push-prep"))?, &fresh(&scratch.join("push-cache"))?, &push_env))?;
    let names = [
        "classic mechanics",
        "ddslug compile, cold",
        "ddslug compile, warm",
        "ddslug verify",
        "decompression floor",
        "dyno start (source datadog.sh)",
        "ddslug compile, warm from registry",
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    let settle_secs: u64 = std::env::var("BENCH_SETTLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(65);
    for i in 0..runs {
        settle(0)?;
        eprintln!("{}: run {}/{runs}", v.name, i + 1);
        // New directories every run, nothing deleted while measuring: after a big `rm -rf`
        // (ext4 skips recently freed inodes when allocating, and this disk is mounted with
        // `discard`) every file a step creates costs more, by seconds per step here.
        let build = fresh(&scratch.join(format!("classic-build-{i}")))?;
        let state = fresh(&scratch.join(format!("classic-state-{i}")))?;
        samples[0].push(run(Command::new(project.join("bench/classic-mechanics.sh"))
            .arg(server.url())
            .arg(&v.keyring)
            .arg(&build)
            .arg(&state)
            .arg(format!("datadog-agent={VERSION}")))?);
        // The two builds the pull target compares start alike: after a pause longer than the
        // 60 s during which ext4 passes over the inodes the classic mechanics freed, and with
        // nothing heavy just before (by hand, a pull right after the 5 s decompression floor
        // took more than one 20 s later in six pairs of seven, 0.16-0.76 s, nearly all of it
        // system time; BENCHMARKS.md, issue 16's fifth round).
        settle(settle_secs)?;
        let build = fresh(&scratch.join(format!("cold-build-{i}")))?;
        let cache = fresh(&scratch.join(format!("cold-cache-{i}")))?;
        samples[1].push(run(&mut compile(&build, &cache))?);
        settle(settle_secs)?;
        // An empty CACHE_DIR, the layer in the local registry.
        let build = fresh(&scratch.join(format!("pull-build-{i}")))?;
        let cache = fresh(&scratch.join(format!("pull-cache-{i}")))?;
        samples[6].push(run(&mut with_env(&build, &cache, &pull_env))?);
        settle(0)?;
        let build = fresh(&scratch.join(format!("warm-build-{i}")))?;
        samples[2].push(run(&mut compile(&build, &warm_cache))?);
        samples[3].push(run(Command::new(bin).arg("verify").arg(&build))?);
        samples[4].push(run(Command::new("sh").arg("-c").arg(format!("{} -dc '{}' > /dev/null", v.decompress, member.display())))?);
        samples[5].push(run(&mut dyno_start(&build)?)?);
    }
    let mut table = format!(
        "\n### {} variant ({:.0} MB .deb, data.tar {})\n\n| step | wall (s) | wall, fastest–slowest run (s) | CPU (s) | peak RSS (MB) | wall vs classic |\n|---|---:|---:|---:|---:|---:|\n",
        v.name, deb_mb, v.decompress
    );
    let classic_wall = median(samples[0].iter().map(|s| s.wall).collect());
    for (name, s) in names.iter().zip(&samples) {
        let wall = median(s.iter().map(|x| x.wall).collect());
        let fastest = s.iter().map(|x| x.wall).fold(f64::INFINITY, f64::min);
        let slowest = s.iter().map(|x| x.wall).fold(0.0, f64::max);
        table += &format!(
            "| {name} | {wall:.3} | {fastest:.3}–{slowest:.3} | {:.3} | {:.0} | {:.3}x |\n",
            median(s.iter().map(|x| x.cpu).collect()),
            median(s.iter().map(|x| x.max_rss_mb).collect()),
            wall / classic_wall
        );
    }
    let cold = median(samples[1].iter().map(|x| x.wall).collect());
    let pulled = median(samples[6].iter().map(|x| x.wall).collect());
    table += &format!("\nWarm from registry vs cold: {:.3}x (target at most 0.5x).\n", pulled / cold);
    // Each round's pair too: a round slowed by something outside ddslug shows as one.
    let rounds: Vec<String> = samples[1].iter().zip(&samples[6]).map(|(c, p)| format!("{:.3} s / {:.3} s = {:.3}x", p.wall, c.wall, p.wall / c.wall)).collect();
    table += &format!("Round by round (warm from registry / cold): {}.\n", rounds.join("; "));
    // Where the time goes: the pull's own lines from one more run, started as the timed ones.
    settle(settle_secs)?;
    let out = with_env(&fresh(&scratch.join("pull-build-where"))?, &fresh(&scratch.join("pull-cache-where"))?, &pull_env).output()?;
    let log = String::from_utf8_lossy(&out.stdout);
    for line in log.lines().filter(|l| l.contains("pulled and verified") || l.contains("in place in") || l.contains("installed in")) {
        table += &format!("    {}\n", line.trim());
    }
    let scan = Command::new("du").arg("-sb").arg(scratch.join("warm-build-0/.apt")).output()?;
    let count = Command::new("sh").arg("-c").arg(format!("find '{}' | wc -l", scratch.join("warm-build-0/.apt").display())).output()?;
    table += &format!(
        "\nSlug .apt: {} bytes, {} entries (du -sb, find | wc -l). Medians of {runs} runs.\n",
        String::from_utf8_lossy(&scan.stdout).split_whitespace().next().unwrap_or("?"),
        String::from_utf8_lossy(&count.stdout).trim()
    );
    if let Ok(classic) = std::env::var("CLASSIC_BUILDPACK") {
        table += &classic_dyno_start(&scratch.join("warm-build-0"), Path::new(&classic), runs)?;
    }
    Ok(table)
}

/// Sources the slug's datadog.sh with fake agents (so that only the start logic is timed).
fn dyno_start(build: &Path) -> Result<Command> {
    let fake = "#!/bin/sh\necho 'Agent 7.81.2 - Commit: bench'\n";
    let dd = build.join(".apt/opt/datadog-agent");
    for p in ["bin/agent/agent", "embedded/bin/trace-agent"] {
        // Replace, never write in place: slug files are hard links into the layer cache.
        let _ = fs::remove_file(dd.join(p));
        fs::write(dd.join(p), fake)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dd.join(p), fs::Permissions::from_mode(0o755))?;
    }
    let mut c = Command::new("bash");
    c.arg("-c").arg("source .profile.d/datadog.sh").current_dir(build).env("HOME", build).env("DD_API_KEY", "bench").env("DYNO", "web.1");
    Ok(c)
}

fn classic_dyno_start(build: &Path, classic: &Path, runs: usize) -> Result<String> {
    let script = classic.join("extra/datadog.sh");
    let wrapper = classic.join("extra/agent-wrapper");
    let classic_build = build.with_file_name("classic-dyno");
    let _ = fs::remove_dir_all(&classic_build);
    let status = Command::new("cp").arg("-a").arg(build).arg(&classic_build).status()?;
    if !status.success() {
        bail!("copying the slug");
    }
    fs::copy(&script, classic_build.join(".profile.d/classic-datadog.sh"))?;
    fs::copy(&wrapper, classic_build.join(".apt/opt/datadog-agent/bin/agent/agent-wrapper"))?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..runs {
        ours.push(run(dyno_start(build)?.env("DD_APM_ENABLED", "true"))?.wall);
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg("source .profile.d/classic-datadog.sh")
            .current_dir(&classic_build)
            .env("HOME", &classic_build)
            .env("DD_API_KEY", "bench")
            .env("DYNO", "web.1");
        theirs.push(run(&mut c)?.wall);
    }
    let (o, t) = (median(ours), median(theirs));
    Ok(format!(
        "\nDyno start on the same slug (fake agents): ddslug {o:.3} s, classic datadog.sh {t:.3} s ({:.2}x).\n",
        o / t
    ))
}
