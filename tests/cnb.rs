//! The Cloud Native Buildpack through a spec-following lifecycle driver
//! (`ddslug_testsupport::lifecycle`): detect, restore, bin/build against the served signed
//! repository, the spec's file checks, export, and launch with the agent layer's exec.d
//! program and fake agents that record how they were started.

mod common;
mod dyno_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Served, bin_compile, running_as_root, text};
use ddslug::store::treehash::{hash_entries, scan_tree};
use ddslug_testsupport::lifecycle::{Built, Lifecycle};
use ddslug_testsupport::{RepoSpec, Server, SigningKey, KeyKind, write_repo};
use ddslug_testsupport::agent::{Scale, agent_deb};
use dyno_support::FAKE_AGENT;

/// The buildpack, as checked out.
const BUILDPACK: &str = env!("CARGO_MANIFEST_DIR");

/// A lifecycle for one app against `served`, with its repository settings in the platform env.
fn app(served: &Served, dir: &Path, arch: &str) -> Lifecycle {
    let mut lc = Lifecycle::new(dir, Path::new(BUILDPACK), arch).unwrap();
    lc.vars.push(("DDSLUG_BIN".into(), env!("CARGO_BIN_EXE_ddslug").into()));
    lc.set_env("DD_APT_REPO_URL", &served.server.url()).unwrap();
    lc.set_env("DD_APT_KEYRING", served.fixture.keyring.to_str().unwrap()).unwrap();
    lc
}

fn built_ok(lc: &mut Lifecycle) -> Built {
    let built = lc.build().unwrap();
    assert!(built.build.status.success(), "{}", text(&built.build));
    built
}

fn metadata(built: &Built) -> &toml::Table {
    built.image_layers["agent"]["metadata"].as_table().unwrap()
}

fn key_of(built: &Built) -> String {
    metadata(built)["layer_key"].as_str().unwrap().to_string()
}

/// The tree hash of the agent layer's agent tree (what a slug's `.apt` holds), computed from
/// the files: `exec.d/` and `.ddslug/` are beside the tree, not in it.
fn agent_tree_hash(layer: &Path) -> String {
    let mut entries = scan_tree(layer).unwrap().entries;
    entries.retain(|e| {
        let p: &[u8] = e.path.as_ref();
        !(p == b"exec.d" || p.starts_with(b"exec.d/") || p == b".ddslug" || p.starts_with(b".ddslug/"))
    });
    hash_entries(&entries).to_string()
}

#[test]
fn build_rebuild_version_change_cache_loss_and_offline() {
    let served = Served::start();
    let dir = tempfile::tempdir().unwrap();
    let mut lc = app(&served, dir.path(), "amd64");
    let (passed, plan) = lc.detect().unwrap();
    assert!(passed && plan.is_empty(), "{plan:?}");

    // First build: the agent layer (launch + cache) and the cache-only store layer.
    let first = built_ok(&mut lc);
    let agent = &first.image_layers["agent"];
    assert_eq!(agent["types"].as_table().unwrap().get("launch").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(agent["types"].as_table().unwrap().get("cache").and_then(|v| v.as_bool()), Some(true));
    assert!(!first.image_layers.contains_key("ddslug-cache"), "the store is cache-only: {:?}", first.image_layers.keys());
    let cache_toml: toml::Table = fs::read_to_string(lc.layers().join("ddslug-cache.toml")).unwrap().parse().unwrap();
    let types = cache_toml["types"].as_table().unwrap();
    let flags: Vec<(&str, bool)> = ["launch", "build", "cache"].iter().map(|k| (*k, types[*k].as_bool().unwrap())).collect();
    assert_eq!(flags, [("launch", false), ("build", false), ("cache", true)]);
    // The store in the cache layer keeps blobs, not a second copy of the tree.
    let store_layers = lc.root.join("cache/ddslug-cache/ddslug/v1/layers");
    assert_eq!(fs::read_dir(&store_layers).unwrap().count(), 0, "{}", store_layers.display());
    assert_eq!(fs::read_dir(lc.root.join("cache/ddslug-cache/ddslug/v1/blobs/sha256")).unwrap().count(), 1);
    let lock = metadata(&first)["lock"].as_table().unwrap();
    assert_eq!(lock["architecture"].as_str(), Some("amd64"));
    assert_eq!(lock["packages"][0]["version"].as_str(), Some("1:7.81.2-1"));
    assert!(served.pool_requests() >= 1);

    // The agent tree equals a classic compile's .apt with the same settings, by the recorded
    // tree hash and by hashing both trees.
    let build = served.build_dir("classic");
    let out = bin_compile(&build, &served.dir.path().join("classic-cache"), &served.env_dir("classic", &[]));
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(build.join(".ddslug/manifest.json")).unwrap()).unwrap();
    let tree_hash = metadata(&first)["tree_hash"].as_str().unwrap();
    assert_eq!(manifest["tree_hash"].as_str(), Some(tree_hash));
    assert_eq!(agent_tree_hash(&lc.image_layer("agent")), hash_entries(&scan_tree(&build.join(".apt")).unwrap().entries).to_string());
    assert_eq!(agent_tree_hash(&lc.image_layer("agent")), tree_hash);
    assert!(fs::metadata(lc.image_layer("agent").join("exec.d/ddslug")).unwrap().permissions().mode() & 0o111 != 0);

    // verify: the layer is what its manifest says; rebuilt offline from the cache layer's
    // blobs, it is the same; a file added beside the tree is a difference.
    let (agent_layer, app_dir) = (lc.image_layer("agent"), lc.app.clone());
    let verify = |args: &[&str]| -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(&agent_layer).args(args).current_dir(&app_dir).output().unwrap()
    };
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cache_layer = lc.layers().join("ddslug-cache");
    let out = verify(&["--rebuild", "--offline", "--cache", cache_layer.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    fs::write(lc.image_layer("agent").join("exec.d/extra"), "#!/bin/sh\n").unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("exec.d/extra"), "{}", text(&out));
    fs::remove_file(lc.image_layer("agent").join("exec.d/extra")).unwrap();

    // Rebuild with nothing changed: the layer is kept, and no request at all is made.
    let before = served.server.requests().len();
    let again = built_ok(&mut lc);
    assert_eq!(served.server.requests().len(), before, "a rebuild with nothing changed made requests: {:?}", &served.server.requests()[before..]);
    assert!(text(&again.build).contains("Keeping the agent layer"), "{}", text(&again.build));
    assert_eq!(metadata(&again), metadata(&first));

    // Another buildpack version (another ddslug binary), same layer key: the layer is kept,
    // its exec.d program is the new binary, and the layer still verifies.
    let other = dir.path().join("ddslug-next");
    let mut bytes = fs::read(env!("CARGO_BIN_EXE_ddslug")).unwrap();
    bytes.extend_from_slice(b"another build");
    fs::write(&other, &bytes).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o755)).unwrap();
    lc.vars.retain(|(k, _)| k != "DDSLUG_BIN");
    lc.vars.push(("DDSLUG_BIN".into(), other.to_str().unwrap().into()));
    let before = served.server.requests().len();
    let next = built_ok(&mut lc);
    assert_eq!(served.server.requests().len(), before);
    assert_eq!(key_of(&next), key_of(&first));
    assert_ne!(metadata(&next)["ddslug_sha256"], metadata(&first)["ddslug_sha256"]);
    assert_eq!(fs::read(lc.image_layer("agent").join("exec.d/ddslug")).unwrap(), bytes);
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lc.vars.retain(|(k, _)| k != "DDSLUG_BIN");
    lc.vars.push(("DDSLUG_BIN".into(), env!("CARGO_BIN_EXE_ddslug").into()));

    // A new agent version replaces the layer.
    lc.set_env("DD_AGENT_VERSION", "7.68.0-1").unwrap();
    let changed = built_ok(&mut lc);
    assert_ne!(key_of(&changed), key_of(&first));
    assert_eq!(metadata(&changed)["lock"]["packages"][0]["version"].as_str(), Some("1:7.68.0-1"));
    assert_eq!(agent_tree_hash(&lc.image_layer("agent")), metadata(&changed)["tree_hash"].as_str().unwrap());

    // Offline, with settings that need another layer from a blob the cache layer holds: built
    // from the cache, no request.
    lc.set_env("DD_APM_ENABLED", "false").unwrap();
    lc.set_env("DD_OFFLINE", "true").unwrap();
    let before = served.server.requests().len();
    let offline = built_ok(&mut lc);
    assert_eq!(served.server.requests().len(), before, "{}", text(&offline.build));
    assert_ne!(key_of(&offline), key_of(&changed));
    assert!(!lc.image_layer("agent").join("opt/datadog-agent/embedded/bin/trace-agent").exists(), "DD_APM_ENABLED=false removes the trace-agent");

    // Cache lost: offline cannot build, and says so; online it downloads and builds the same.
    lc.lose_cache().unwrap();
    let failed = lc.build().unwrap();
    assert!(!failed.build.status.success());
    assert!(text(&failed.build).contains("network access is disabled (DD_OFFLINE=true)"), "{}", text(&failed.build));
    fs::remove_file(lc.platform.join("env/DD_OFFLINE")).unwrap();
    let requests = served.pool_requests();
    let rebuilt = built_ok(&mut lc);
    assert!(served.pool_requests() > requests, "the blob had to be fetched again");
    assert_eq!(metadata(&rebuilt)["tree_hash"], metadata(&offline)["tree_hash"]);
}

#[test]
fn arm64_resolves_binary_arm64_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(KeyKind::Ed25519, "ddslug arm64 test repository").unwrap();
    let mut deb = agent_deb("datadog-heroku-agent", "1:7.81.2-1", Scale::SMALL);
    deb.arch = "arm64".into();
    let mut spec = RepoSpec::new("stable").component("7", vec![deb]);
    spec.arch = "arm64".into();
    let repo = write_repo(&dir.path().join("repo"), &spec, &key).unwrap();
    let keyring = dir.path().join("keyring.asc");
    fs::write(&keyring, key.public_armored().unwrap()).unwrap();
    let server = Server::start(&repo.root).unwrap();

    let mut lc = Lifecycle::new(&dir.path().join("app"), Path::new(BUILDPACK), "arm64").unwrap();
    lc.vars.push(("DDSLUG_BIN".into(), env!("CARGO_BIN_EXE_ddslug").into()));
    lc.set_env("DD_APT_REPO_URL", &server.url()).unwrap();
    lc.set_env("DD_APT_KEYRING", keyring.to_str().unwrap()).unwrap();
    let built = built_ok(&mut lc);
    assert_eq!(metadata(&built)["lock"]["architecture"].as_str(), Some("arm64"));
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.iter().any(|p| p.contains("/binary-arm64/")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("/binary-amd64/")), "{paths:?}");

    // The same repository for amd64 has no agent: the error names the architecture's index.
    let mut lc = Lifecycle::new(&dir.path().join("app64"), Path::new(BUILDPACK), "amd64").unwrap();
    lc.vars.push(("DDSLUG_BIN".into(), env!("CARGO_BIN_EXE_ddslug").into()));
    lc.set_env("DD_APT_REPO_URL", &server.url()).unwrap();
    lc.set_env("DD_APT_KEYRING", keyring.to_str().unwrap()).unwrap();
    let failed = lc.build().unwrap();
    assert!(!failed.build.status.success());
    assert!(text(&failed.build).contains("amd64"), "{}", text(&failed.build));

    // The arm64 build's lock, committed by an app built for amd64: refused, naming both.
    let arm_layers = dir.path().join("app").join("layers").join("datadog_ddslug");
    let lock = ddslug::buildpack::cnb::recorded_lock(&arm_layers).unwrap();
    fs::create_dir_all(lc.app.join("datadog")).unwrap();
    fs::write(lc.app.join("datadog/ddslug.lock"), ddslug::slug::manifest::to_json(&lock)).unwrap();
    let failed = lc.build().unwrap();
    assert!(!failed.build.status.success());
    assert!(text(&failed.build).contains("datadog/ddslug.lock was made for architecture arm64 but this build targets amd64"), "{}", text(&failed.build));
}

#[test]
fn bad_settings_fail_with_the_classic_errors() {
    let served = Served::start();
    let dir = tempfile::tempdir().unwrap();
    // The same setting through ENV_DIR on Cedar and CNB_PLATFORM_DIR/env: the same message.
    let build = served.build_dir("bad");
    let classic = bin_compile(&build, &served.dir.path().join("bad-cache"), &served.env_dir("bad", &[("DD_AGENT_MAJOR_VERSION", "8")]));
    assert!(!classic.status.success());
    let expected = "DD_AGENT_MAJOR_VERSION=\"8\": expected 6 or 7. Fix it with: heroku config:set DD_AGENT_MAJOR_VERSION=7";
    assert!(text(&classic).contains(expected), "{}", text(&classic));
    let mut lc = app(&served, &dir.path().join("env"), "amd64");
    lc.set_env("DD_AGENT_MAJOR_VERSION", "8").unwrap();
    let failed = lc.build().unwrap();
    assert!(!failed.build.status.success());
    assert!(text(&failed.build).contains(expected), "{}", text(&failed.build));
    assert!(!lc.layers().join("agent.toml").exists(), "a failed build names no agent layer");

    // project.toml's table: the same names and errors; the platform's env wins over it.
    let mut lc = app(&served, &dir.path().join("project"), "amd64");
    fs::write(lc.app.join("project.toml"), "[com.datadoghq.ddslug]\nDD_PYTHON_VERSION = \"4\"\n").unwrap();
    let failed = lc.build().unwrap();
    assert!(text(&failed.build).contains("DD_PYTHON_VERSION=\"4\": expected 2 or 3"), "{}", text(&failed.build));
    lc.set_env("DD_PYTHON_VERSION", "3").unwrap();
    fs::write(lc.app.join("project.toml"), "[com.datadoghq.ddslug]\nDD_PYTHON_VERSION = \"4\"\nDD_AGENT_VERSION = \"7.67.0-1\"\n").unwrap();
    let built = built_ok(&mut lc);
    assert_eq!(metadata(&built)["lock"]["packages"][0]["version"].as_str(), Some("1:7.67.0-1"));

    // Without DDSLUG_BIN bin/build looks for the pinned binary in the cache layer, and offline
    // (a platform config var) it may not download it: it says where it looked.
    let mut lc = app(&served, &dir.path().join("pinned"), "amd64");
    lc.vars.retain(|(k, _)| k != "DDSLUG_BIN");
    lc.set_env("DD_OFFLINE", "true").unwrap();
    let failed = lc.build().unwrap();
    assert!(!failed.build.status.success());
    let said = text(&failed.build);
    assert!(said.contains("DD_OFFLINE=true forbids downloads") && said.contains("ddslug-cache/ddslug/bin/"), "{said}");
    assert!(said.contains("ddslug 0.1.0 for x86_64"), "the binary for CNB_TARGET_ARCH=amd64: {said}");
    // No aarch64 binary is pinned yet: an arm64 target is told so, whatever machine builds.
    let mut lc = app(&served, &dir.path().join("pinned-arm"), "arm64");
    lc.vars.retain(|(k, _)| k != "DDSLUG_BIN");
    let failed = lc.build().unwrap();
    let said = text(&failed.build);
    assert!(said.contains("pins no ddslug binary for this machine's architecture (aarch64)"), "{said}");

    // An architecture the agent is not packaged for.
    let mut lc = app(&served, &dir.path().join("arch"), "ppc64le");
    let failed = lc.build().unwrap();
    assert!(text(&failed.build).contains("CNB_TARGET_ARCH=\"ppc64le\": the Datadog Agent is packaged for amd64 and arm64 only"), "{}", text(&failed.build));
}

/// A fake agent that records how it was started, then runs on for a while (as agents do): it
/// keeps whatever it inherited open.
fn install_fake_agents(layer: &Path) {
    let dd = layer.join("opt/datadog-agent");
    for program in ["bin/agent/agent", "embedded/bin/trace-agent", "embedded/bin/process-agent"] {
        let path = dd.join(program);
        if path.exists() {
            fs::remove_file(&path).unwrap();
            fs::write(&path, format!("{FAKE_AGENT}exec sleep 15\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// The recorded launches (program → its record), waiting for `expect` of them.
fn launches(record: &Path, expect: usize) -> BTreeMap<String, BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = || -> BTreeMap<String, BTreeMap<String, String>> {
        fs::read_dir(record)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.') && p.file_name().unwrap() != "app.env")
            .map(|p| {
                let text = fs::read_to_string(&p).unwrap();
                let map: BTreeMap<String, String> = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
                (map["PROGRAM"].rsplit("/datadog-agent/").next().unwrap().to_string(), map)
            })
            .collect()
    };
    while read().len() < expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    read()
}

/// Launches `process` recording its environment into `record/app.env`.
fn launch(lc: &Lifecycle, record: &Path, vars: &[(&str, &str)]) -> (BTreeMap<String, String>, String) {
    fs::create_dir_all(record).unwrap();
    if let Some(id) = lc.user {
        std::os::unix::fs::chown(record, Some(id), Some(id)).unwrap();
    }
    let record_dir = record.to_str().unwrap();
    let mut all = vec![("RECORD_DIR", record_dir), ("DYNO", "web.1"), ("DDSLUG_HOSTNAME_OVERRIDE", "1a2b_host")];
    all.extend_from_slice(vars);
    let script = format!("env > {record_dir}/app.env");
    let (out, exec_d) = lc.launch(&all, &["/bin/sh", "-c", &script]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let logs: String = exec_d.iter().map(text).collect();
    let env = fs::read_to_string(record.join("app.env")).unwrap();
    (env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect(), logs)
}

#[test]
fn launch_starts_the_agent_as_the_classic_start_script_does() {
    let served = Served::start();
    let dir = tempfile::tempdir().unwrap();
    let mut lc = app(&served, dir.path(), "amd64");
    lc.set_env("DD_PROCESS_AGENT", "true").unwrap();
    built_ok(&mut lc);
    let layer = lc.image_layer("agent");
    install_fake_agents(&layer);
    let conf = layer.join("etc/datadog-agent/datadog.yaml").display().to_string();

    let record = dir.path().join("record-1");
    let vars = [("DD_API_KEY", "secret-key-1234"), ("HEROKU_APP_NAME", "my_app"), ("DD_TAGS", "env:prod, team:a"), ("DD_PROCESS_AGENT", "true"), ("DATABASE_URL", "postgres://u:p%40ss@db.example:5433/name"), ("DD_ENABLE_HEROKU_POSTGRES", "true"), ("REDIS_URL", "redis://h:r3d1s-pw@redis.example:6380"), ("DD_ENABLE_HEROKU_REDIS", "true")];
    let (env, logs) = launch(&lc, &record, &vars);
    let started = launches(&record, 2);
    let programs: Vec<(&str, &str)> = started.iter().map(|(p, r)| (p.as_str(), r["ARGS"].as_str())).collect();
    assert_eq!(programs, vec![("bin/agent/agent", format!("run -c {conf}").as_str()), ("embedded/bin/trace-agent", format!("--config {conf}").as_str())]);
    // What the classic script exported reaches the app, through the launcher (fd 3).
    assert!(env["DD_TAGS"].starts_with("dyno:web.1 dynotype:web buildpackversion:ddslug-"), "{env:?}");
    assert!(env["DD_TAGS"].ends_with(" appname:my_app env:prod team:a"), "{}", env["DD_TAGS"]);
    assert_eq!(env["DD_HOSTNAME"], "1a2b-host");
    assert_eq!(env["DD_HEROKU_DYNO"], "true");
    assert_eq!(env["DATADOG_CONF"], conf);
    assert!(env["PATH"].contains(&format!("{}/opt/datadog-agent/bin/agent", layer.display())), "agent-wrapper is on PATH: {}", env["PATH"]);
    // The agent's library paths are for the agents only. (The launcher puts the layer's `lib`
    // on every process's LD_LIBRARY_PATH, as the spec says: the agent tree's `lib` holds
    // systemd units only.)
    assert_eq!(env.get("LD_LIBRARY_PATH"), Some(&format!("{}/lib", layer.display())));
    assert!(!env.contains_key("PYTHONPATH") && !env.contains_key("DDSLUG_AGENT_LAYER"), "{env:?}");
    for record in started.values() {
        assert_eq!(record["DD_TAGS"], env["DD_TAGS"]);
        assert!(record["LD_LIBRARY_PATH"].contains(&format!("{}/opt/datadog-agent/embedded/lib", layer.display())));
    }
    assert!(!logs.contains("secret-key-1234") && !logs.contains("p%40ss"), "{logs}");
    let postgres = fs::read_to_string(layer.join("etc/datadog-agent/conf.d/postgres.d/conf.yaml")).unwrap();
    assert!(postgres.contains("\"p%40ss\""), "{postgres}");
    let redis = fs::read_to_string(layer.join("etc/datadog-agent/conf.d/redisdb.d/conf.yaml")).unwrap();
    assert!(redis.contains("\"r3d1s-pw\"") && redis.contains("6380"), "{redis}");
    assert!(!logs.contains("r3d1s-pw"), "{logs}");
    assert_eq!(fs::metadata(&conf).unwrap().permissions().mode() & 0o777, 0o600);

    // After the start (configuration written, the agents' lock held), verify takes back what
    // dyno start wrote by name: the only differences are the fake agents this test put in.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddslug")).args(["verify", "--json"]).arg(&layer).current_dir(&lc.app).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &report["verify"]["diff"];
    let changed: Vec<&str> = d["changed"].as_array().unwrap().iter().map(|c| c["path"].as_str().or(c.as_str()).unwrap_or_default()).collect();
    assert_eq!(d["added"].as_array().unwrap().len() + d["removed"].as_array().unwrap().len(), 0, "{d}");
    assert_eq!(changed.len(), 2, "{d}");
    assert!(report["verify"]["problems"].as_array().unwrap().iter().all(|p| p.as_str().unwrap().contains("tree hash")), "{report}");
    let written = report["verify"]["written_at_dyno_start"].to_string();
    assert!(written.contains("datadog.yaml") && written.contains("ddslug-agents.lock") && written.contains("postgres.d"), "{written}");

    // exec.d again in the same container (another process): the agents run already (they hold
    // their lock), so none is started twice; the app still gets its variables.
    let record2 = dir.path().join("record-2");
    let (env2, logs2) = launch(&lc, &record2, &vars);
    assert_eq!(launches(&record2, 0).len(), 0, "{logs2}");
    assert!(logs2.contains("already running in this container"), "{logs2}");
    assert_eq!(env2["DD_TAGS"], env["DD_TAGS"]);
}

#[test]
fn prerun_disabled_agent_missing_key_and_user_settings() {
    let served = Served::start();
    let dir = tempfile::tempdir().unwrap();
    let mut lc = app(&served, dir.path(), "amd64");
    built_ok(&mut lc);
    install_fake_agents(&lc.image_layer("agent"));

    // prerun.sh sourced by bash: an unexported assignment disables the agent, and what it
    // exports reaches the app.
    fs::create_dir_all(lc.app.join("datadog")).unwrap();
    fs::write(lc.app.join("datadog/prerun.sh"), "DISABLE_DATADOG_AGENT=\"true\"\nexport FROM_PRERUN=\"yes\"\nDD_VERSION=\"1.2.3\"\n").unwrap();
    let record = dir.path().join("prerun");
    let (env, logs) = launch(&lc, &record, &[("DD_API_KEY", "k")]);
    assert_eq!(launches(&record, 0).len(), 0, "{logs}");
    assert!(logs.contains("disabled by DISABLE_DATADOG_AGENT"), "{logs}");
    assert_eq!(env.get("FROM_PRERUN").map(String::as_str), Some("yes"));
    assert_eq!(env["DD_VERSION"], "1.2.3", "read after prerun.sh, exported as the classic did");
    fs::remove_file(lc.app.join("datadog/prerun.sh")).unwrap();

    // DISABLE_DATADOG_AGENT in the environment.
    let record = dir.path().join("disabled");
    let (_, logs) = launch(&lc, &record, &[("DD_API_KEY", "k"), ("DISABLE_DATADOG_AGENT", "1")]);
    assert_eq!(launches(&record, 0).len(), 0, "{logs}");

    // No API key: no agent, the app starts with its variables.
    let record = dir.path().join("nokey");
    let (env, logs) = launch(&lc, &record, &[("DD_DYNO_HOST", "true"), ("HEROKU_APP_NAME", "app_1")]);
    assert_eq!(launches(&record, 0).len(), 0, "{logs}");
    assert!(logs.contains("DD_API_KEY is not set"), "{logs}");
    assert_eq!(env["DD_HOSTNAME"], "app-1.web.1");
}

#[test]
fn builds_and_launches_as_a_user_who_is_not_root() {
    if !running_as_root() {
        eprintln!("not root: the whole suite runs unprivileged already");
    }
    let served = Served::start();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut lc = app(&served, &dir.path().join("app"), "amd64");
    if running_as_root() {
        lc.user = Some(common::UNPRIVILEGED);
        fs::set_permissions(served.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let first = built_ok(&mut lc);
    let before = served.server.requests().len();
    let again = built_ok(&mut lc);
    assert_eq!(served.server.requests().len(), before);
    assert_eq!(metadata(&again), metadata(&first));
    install_fake_agents(&lc.image_layer("agent"));
    if let Some(id) = lc.user {
        let out = std::process::Command::new("chown").args(["-R", &format!("{id}:{id}")]).arg(&lc.root).output().unwrap();
        assert!(out.status.success());
    }
    let record = dir.path().join("record");
    let (env, logs) = launch(&lc, &record, &[("DD_API_KEY", "k")]);
    assert_eq!(launches(&record, 2).len(), 2, "{logs}");
    assert_eq!(env["DD_HEROKU_DYNO"], "true");
}

#[test]
fn make_cnb_packages_the_same_bytes_twice() {
    let dir = tempfile::tempdir().unwrap();
    let package = |dist: &str, umask: &str| -> Vec<u8> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec {BUILDPACK}/.ci/cnb-package"))
            .env("DIST", dir.path().join(dist))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        fs::read(dir.path().join(dist).join(format!("ddslug-cnb-{}.tgz", env!("CARGO_PKG_VERSION")))).unwrap()
    };
    let (a, b) = (package("a", "022"), package("b", "077"));
    assert!(a == b, "two packages of the same commit differ");
    let listing = std::process::Command::new("tar").arg("tvzf").arg(dir.path().join(format!("a/ddslug-cnb-{}.tgz", env!("CARGO_PKG_VERSION")))).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let entries: Vec<(&str, &str)> = listing.lines().map(|l| (l.split_whitespace().next().unwrap(), l.rsplit(' ').next().unwrap())).collect();
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        entries,
        [
            ("drwxr-xr-x", format!("ddslug-cnb-{v}/")),
            ("drwxr-xr-x", format!("ddslug-cnb-{v}/bin/")),
            ("-rwxr-xr-x", format!("ddslug-cnb-{v}/bin/build")),
            ("-rwxr-xr-x", format!("ddslug-cnb-{v}/bin/compile")),
            ("-rw-r--r--", format!("ddslug-cnb-{v}/bin/ddslug.release")),
            ("-rwxr-xr-x", format!("ddslug-cnb-{v}/bin/detect")),
            ("-rw-r--r--", format!("ddslug-cnb-{v}/buildpack.toml")),
        ]
        .iter()
        .map(|(m, p)| (*m, p.as_str()))
        .collect::<Vec<_>>()
    );
    // The packaged buildpack is the one the lifecycle tests run: it builds.
    let unpacked = dir.path().join("a/cnb").join(format!("ddslug-cnb-{v}"));
    let lc = Lifecycle::new(&dir.path().join("app"), &unpacked, "amd64").unwrap();
    assert!(lc.detect().unwrap().0);
}
