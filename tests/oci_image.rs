//! `ddslug image` against real tools: two builds in separate directories with separate
//! caches give the same digests (and so do a lock and a compiled slug); `umoci unpack`
//! accepts the layout and its rootfs has the slug's tree hash; `skopeo` copies it to a real
//! registry (Debian's docker-registry on 127.0.0.1) and inspects it; `--push` puts the same
//! manifest there.

mod common;
mod dyno_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Served, as_unprivileged, give_to_unprivileged, running_as_root, text};
use ddslug::slug::manifest::read_manifest;
use ddslug::store::treehash::scan_tree;
use ddslug_testsupport::registry::Registry;

const DDSLUG: &str = env!("CARGO_BIN_EXE_ddslug");

/// Runs ddslug with `args`, without the settings a developer's shell might carry.
fn ddslug(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(DDSLUG);
    for a in args {
        cmd.arg(a);
    }
    cmd.env_remove("STACK").env_remove("DD_AGENT_VERSION").env_remove("DD_AGENT_MAJOR_VERSION").env_remove("DD_CACHE_REGISTRY");
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// The layout's index, and the digest and bytes of the one manifest it lists under `tag`.
fn image_of(layout: &Path, tag: &str) -> (String, String, serde_json::Value) {
    let index_text = fs::read_to_string(layout.join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index_text).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index_text}"))
        .clone();
    let digest = entry["digest"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(layout, &digest)).unwrap()).unwrap();
    (index_text, digest, manifest)
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

const TAG: &str = "7.81.2-1";

#[test]
fn same_digests_from_two_builds_a_lock_and_a_compiled_slug() {
    let served = Served::start();
    let env = served.env_dir("img", &[]);
    let mut images = Vec::new();
    for name in ["one", "two"] {
        // Separate directories and separate caches: nothing shared but the repository.
        let dir = served.dir.path().join(name);
        let out = ok(ddslug(&[&"image", &"--env-dir", &env, &"--cache", &dir.join("cache"), &"--oci-layout", &dir.join("layout")]));
        assert!(out.contains("-----> Writing the OCI image") && out.contains("tree hash "), "{out}");
        images.push(image_of(&dir.join("layout"), TAG));
    }
    let (index, digest, manifest) = images[0].clone();
    assert_eq!(images[1].0, index, "index.json differs between two builds");
    let layout = served.dir.path().join("one/layout");
    assert_eq!(fs::read_to_string(layout.join("oci-layout")).unwrap(), r#"{"imageLayoutVersion":"1.0.0"}"#);
    // Every blob is named by its digest and has the size its descriptor gives.
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    for d in [&manifest["config"], layer] {
        let bytes = fs::read(blob(&layout, d["digest"].as_str().unwrap())).unwrap();
        assert_eq!(format!("sha256:{}", ddslug::hash::Sha256::of(&bytes)), d["digest"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, d["size"].as_u64().unwrap());
    }
    // The config: the package's time as `created`, the agent's environment, labels.
    let config: serde_json::Value = serde_json::from_slice(&fs::read(blob(&layout, manifest["config"]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "1:7.81.2-1");
    assert_eq!(labels["ddslug.agent.version"], "1:7.81.2-1");
    assert_eq!(manifest["annotations"]["ddslug.tree.hash"], labels["ddslug.tree.hash"]);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    let env_vars: Vec<&str> = config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env_vars.contains(&"DATADOG_CONF=/app/.apt/etc/datadog-agent/datadog.yaml"), "{env_vars:?}");
    assert!(env_vars.iter().any(|v| v.starts_with("PATH=/app/.apt/usr/bin:")), "{env_vars:?}");

    // From a lock made of the same settings, and from a slug compile made: the same image.
    let lock = served.dir.path().join("ddslug.lock");
    ok(ddslug(&[&"lock", &"--env-dir", &env, &"--out", &lock]));
    let from_lock = served.dir.path().join("from-lock");
    let out = ddslug(&[&"image", &"--lock", &lock, &"--oci-layout", &from_lock, &"--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // --json: stdout is one object, the build's lines are not on it.
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(written["manifest_digest"], digest.as_str(), "a lock gives another image");
    assert_eq!((written["tag"].as_str(), written["layer_digest"].as_str()), (Some(TAG), layer["digest"].as_str()));
    assert_eq!(written["tree_hash"], manifest["annotations"]["ddslug.tree.hash"]);
    assert_eq!(image_of(&from_lock, TAG).1, digest);
    let build = served.build_dir("compiled");
    ok(ddslug(&[&"compile", &build, &served.dir.path().join("compile-cache"), &env]));
    let from_slug = served.dir.path().join("from-slug");
    ok(ddslug(&[&"image", &build, &"--oci-layout", &from_slug, &"--tag", &"mine"]));
    assert_eq!(image_of(&from_slug, "mine").1, digest, "a compiled slug gives another image");
    // A second image in the same layout keeps the first.
    ok(ddslug(&[&"image", &build, &"--oci-layout", &from_slug]));
    assert_eq!(image_of(&from_slug, TAG).1, digest);
    assert_eq!(image_of(&from_slug, "mine").1, digest);
}

#[test]
fn umoci_unpacks_it_and_the_rootfs_has_the_slugs_tree_hash() {
    let served = Served::start();
    let env = served.env_dir("umoci", &[("DD_PROCESS_AGENT", "true")]);
    let layout = served.dir.path().join("layout");
    ok(ddslug(&[&"image", &"--env-dir", &env, &"--oci-layout", &layout, &"--tag", &"agent"]));
    let bundle = served.dir.path().join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !running_as_root() {
        cmd.arg("--rootless");
    }
    let out = cmd.arg("--image").arg(format!("{}:agent", layout.display())).arg(&bundle).output().expect("umoci (Debian package umoci) is installed");
    assert!(out.status.success(), "umoci unpack: {}", text(&out));
    let app = bundle.join("rootfs/app");
    let manifest = read_manifest(&app.join(".ddslug/manifest.json")).unwrap();
    assert_eq!(scan_tree(&app.join(".apt")).unwrap().hash, manifest.tree_hash, "the unpacked .apt is not the slug's tree");
    assert!(manifest.lock.options.process_agent);
    assert_eq!(fs::read_to_string(app.join(".profile.d/datadog.sh")).unwrap(), ddslug::buildpack::classic::PROFILE_SCRIPT);
    // The binary that runs dyno start, and the entry list verify reads.
    assert_eq!(Some(ddslug::hash::Sha256::of_file(&app.join(".ddslug/bin/ddslug")).unwrap()), manifest.binary_sha256);
    assert_eq!(Some(ddslug::hash::Sha256::of_file(&app.join(".ddslug/tree.json")).unwrap()), manifest.tree_json_sha256);
    // The SBOM the build wrote, as the manifest records it.
    let sbom = app.join(".ddslug").join(ddslug::sbom::SLUG_FILE);
    assert_eq!(Some(ddslug::hash::Sha256::of_file(&sbom).unwrap()), manifest.sbom_sha256);
    // What it unpacked verifies as a slug.
    let out = ddslug(&[&"verify", &app]);
    assert!(out.status.success(), "verify of the unpacked image: {}", text(&out));

    // And it starts as a container would start it: the image's own binary as the entry point
    // (`dyno run -- COMMAND`), with recorders in place of the agents.
    let dd = app.join(".apt/opt/datadog-agent");
    for program in ["bin/agent/agent", "embedded/bin/trace-agent"] {
        fs::remove_file(dd.join(program)).unwrap();
        fs::write(dd.join(program), dyno_support::FAKE_AGENT).unwrap();
        fs::set_permissions(dd.join(program), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let record = served.dir.path().join("record");
    fs::create_dir_all(&record).unwrap();
    let out = Command::new(app.join(".ddslug/bin/ddslug"))
        .args(["dyno", "run", "--", "sh", "-c", r#"echo "app sees $DD_TAGS" > "$RECORD_DIR/app.txt""#])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", "/root")
        .env("RECORD_DIR", &record)
        .env("DD_API_KEY", "k")
        .env("DD_TAGS", "env:container")
        .env("DDSLUG_HOSTNAME_OVERRIDE", "container-host")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records = || fs::read_dir(&record).unwrap().filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')).count();
    while records() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut names: Vec<String> = fs::read_dir(&record).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}\n{}", text(&out));
    assert!(names[0].starts_with("agent.") && names[1] == "app.txt" && names[2].starts_with("trace-agent."), "{names:?}");
    assert!(fs::read_to_string(record.join("app.txt")).unwrap().trim_end().ends_with(" env:container"));
    assert!(fs::read_to_string(app.join(".apt/etc/datadog-agent/datadog.yaml")).unwrap().contains(&app.display().to_string()));
}

#[test]
fn skopeo_copies_it_to_a_registry_and_push_puts_the_same_manifest() {
    let served = Served::start();
    let registry = Registry::start(&served.dir.path().join("registry")).unwrap();
    let build = served.build_dir("push");
    ok(ddslug(&[&"compile", &build, &served.dir.path().join("cache"), &served.env_dir("push", &[])]));
    let layout = served.dir.path().join("layout");
    ok(ddslug(&[&"image", &build, &"--oci-layout", &layout]));
    let (_, digest, manifest) = image_of(&layout, TAG);
    let skopeo = |args: &[&str]| -> String {
        let out = Command::new("skopeo").args(args).output().expect("skopeo (Debian package skopeo) is installed");
        assert!(out.status.success(), "skopeo {args:?}: {}\nregistry log:\n{}", text(&out), registry.log_text());
        String::from_utf8(out.stdout).unwrap()
    };
    let copied = format!("docker://{}/ddslug/agent:{TAG}", registry.host());
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:{TAG}", layout.display()), &copied]);
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &copied])).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str(), "skopeo changed the manifest on the way: {inspected}");
    assert_eq!(inspected["Labels"]["ddslug.tree.hash"], manifest["annotations"]["ddslug.tree.hash"]);
    assert_eq!(inspected["Layers"][0], manifest["layers"][0]["digest"]);

    // ddslug's own push: the same manifest, the blobs the repository has are not sent again.
    let pushed = format!("{}/ddslug/pushed:{TAG}", registry.host());
    let out = ok(ddslug(&[&"image", &build, &"--oci-layout", &layout, &"--push", &pushed]));
    assert!(out.contains(&format!("manifest {digest}; 2 blobs uploaded")), "{out}");
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &format!("docker://{pushed}")])).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{pushed}")]);
    assert_eq!(raw.as_bytes(), fs::read(blob(&layout, &digest)).unwrap(), "the registry holds other manifest bytes");
    let again = ok(ddslug(&[&"image", &build, &"--oci-layout", &layout, &"--push", &pushed]));
    assert!(again.contains("0 blobs uploaded"), "{again}");
    // And back: what the registry serves unpacks to the slug's tree.
    let back = served.dir.path().join("back");
    skopeo(&["copy", "--src-tls-verify=false", &format!("docker://{pushed}"), &format!("oci:{}:x", back.display())]);
    assert_eq!(image_of(&back, "x").1, digest);
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let served = Served::start();
    let env = served.env_dir("bad", &[]);
    let build = served.build_dir("bad");
    ok(ddslug(&[&"compile", &build, &served.dir.path().join("cache"), &env]));
    // A layout directory that holds something else.
    let other = served.dir.path().join("not-a-layout");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("notes.txt"), "mine").unwrap();
    let out = ddslug(&[&"image", &build, &"--oci-layout", &other]);
    assert!(!out.status.success() && text(&out).contains("neither empty nor an OCI image layout"), "{}", text(&out));
    assert_eq!(fs::read_dir(&other).unwrap().count(), 1, "something was written into it");
    // A tag the distribution spec does not allow.
    let layout = served.dir.path().join("layout");
    let out = ddslug(&[&"image", &build, &"--oci-layout", &layout, &"--tag", &"a:b"]);
    assert!(!out.status.success() && text(&out).contains("--tag \"a:b\" is not a valid tag"), "{}", text(&out));
    // A bad --push reference, before any work.
    let out = ddslug(&[&"image", &build, &"--oci-layout", &layout, &"--push", &"http://registry.example.com/agent"]);
    assert!(!out.status.success() && text(&out).contains("--push"), "{}", text(&out));
    assert!(!layout.join("index.json").exists());
    // A layout whose blobs directory is a symlink out of it: refused, nothing written there.
    let trap = served.dir.path().join("trap");
    fs::create_dir_all(&trap).unwrap();
    let linked = served.dir.path().join("linked-layout");
    fs::create_dir_all(&linked).unwrap();
    fs::write(linked.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::os::unix::fs::symlink(&trap, linked.join("blobs")).unwrap();
    let out = ddslug(&[&"image", &build, &"--oci-layout", &linked]);
    assert!(!out.status.success() && text(&out).contains("blobs/sha256"), "{}", text(&out));
    assert_eq!(fs::read_dir(&trap).unwrap().count(), 0, "a blob was written through the symlink");
    // A slug dyno start has run in (datadog.yaml and the rest written into it).
    let started = served.build_dir("started");
    ok(ddslug(&[&"compile", &started, &served.dir.path().join("cache"), &env]));
    let prepared = Command::new(DDSLUG).args(["dyno", "prepare"]).env("HOME", &started).env("DYNO", "web.1").output().unwrap();
    assert!(prepared.status.success(), "{}", text(&prepared));
    let out = ddslug(&[&"image", &started, &"--oci-layout", &layout]);
    assert!(!out.status.success() && text(&out).contains("dyno start has run in this slug"), "{}", text(&out));
    assert!(!layout.join("index.json").exists());
    // A slug changed since compile.
    let changed = build.join(".apt/opt/datadog-agent/bin/agent/agent");
    let bytes = fs::read(&changed).unwrap();
    fs::remove_file(&changed).unwrap();
    fs::write(&changed, [&bytes[..], b"x"].concat()).unwrap();
    let out = ddslug(&[&"image", &build, &"--oci-layout", &layout]);
    assert!(!out.status.success() && text(&out).contains("is not what its manifest says"), "{}", text(&out));
    assert!(!layout.join("index.json").exists());
}

/// Heroku-like builders are not root, and umasks differ: the same image all the same.
#[test]
fn an_unprivileged_user_with_another_umask_writes_the_same_image() {
    let served = Served::start();
    let env = served.env_dir("user", &[]);
    let root_layout = served.dir.path().join("as-root");
    ok(ddslug(&[&"image", &"--env-dir", &env, &"--oci-layout", &root_layout]));
    let layout = served.dir.path().join("as-user");
    let script = r#"umask 077; exec "$0" image --env-dir "$1" --oci-layout "$2""#;
    if running_as_root() {
        // The test's directories, opened to the user (the server reads them as root).
        give_to_unprivileged(served.dir.path());
    }
    let out = as_unprivileged("sh").arg("-c").arg(script).arg(DDSLUG).arg(&env).arg(&layout).env_remove("STACK").env("HOME", served.dir.path()).output().unwrap();
    let out = ok(out);
    assert!(out.contains("-----> Writing the OCI image"), "{out}");
    assert_eq!(image_of(&layout, TAG).0, image_of(&root_layout, TAG).0, "another user or umask gives another image");
}

/// `--push` to a registry that wants basic auth: refused without credentials (the status
/// named), accepted with DD_REGISTRY_USER / DD_REGISTRY_PASSWORD or a Docker config.json;
/// the password never printed.
#[test]
fn push_with_credentials_from_settings_or_a_docker_config() {
    let served = Served::start();
    let registry = Registry::start_with_auth(&served.dir.path().join("registry"), "builder", "s3cret-pw").unwrap();
    let build = served.build_dir("auth");
    ok(ddslug(&[&"compile", &build, &served.dir.path().join("cache"), &served.env_dir("auth", &[])]));
    let layout = served.dir.path().join("layout");
    let target = format!("{}/team/agent", registry.host());
    let push = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(DDSLUG);
        cmd.args(["image"]).arg(&build).arg("--oci-layout").arg(&layout).args(["--push", &target]);
        cmd.env_remove("DD_REGISTRY_USER").env_remove("DD_REGISTRY_PASSWORD").env("DOCKER_CONFIG", served.dir.path().join("no-docker"));
        cmd.envs(vars.iter().copied()).output().unwrap()
    };
    let out = push(&[]);
    assert!(!out.status.success() && text(&out).contains("401"), "{}", text(&out));
    let out = push(&[("DD_REGISTRY_USER", "builder")]);
    assert!(!out.status.success() && text(&out).contains("DD_REGISTRY_PASSWORD"), "{}", text(&out));
    let out = push(&[("DD_REGISTRY_USER", "builder"), ("DD_REGISTRY_PASSWORD", "wrong")]);
    assert!(!out.status.success() && text(&out).contains("401") && !text(&out).contains("wrong"), "{}", text(&out));
    let out = ok(push(&[("DD_REGISTRY_USER", "builder"), ("DD_REGISTRY_PASSWORD", "s3cret-pw")]));
    assert!(out.contains("2 blobs uploaded") && !out.contains("s3cret-pw"), "{out}");
    // The same from a Docker config.json (base64 of user:password for the registry's host).
    let docker = served.dir.path().join("docker");
    fs::create_dir_all(&docker).unwrap();
    fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"YnVpbGRlcjpzM2NyZXQtcHc="}}}}}}"#, registry.host())).unwrap();
    let mut cmd = Command::new(DDSLUG);
    cmd.args(["image"]).arg(&build).arg("--oci-layout").arg(&layout).args(["--push", &format!("{target}:again")]);
    let out = ok(cmd.env_remove("DD_REGISTRY_USER").env_remove("DD_REGISTRY_PASSWORD").env("DOCKER_CONFIG", &docker).output().unwrap());
    assert!(out.contains("0 blobs uploaded"), "{out}");
}

/// A package file its owner may not read (mode 0000) stops an image made by a user who is
/// not root, with the file named and what to do; nothing is listed in the layout.
#[test]
fn an_unreadable_package_file_is_named_for_a_builder_that_is_not_root() {
    let served = Served::with_agent(|deb| deb.file("opt/datadog-agent/unreadable", 0o000, "a file no one may read"));
    let env = served.env_dir("unreadable", &[]);
    let layout = served.dir.path().join("layout");
    let script = r#"exec "$0" image --env-dir "$1" --oci-layout "$2""#;
    if running_as_root() {
        // The test's directories, opened to the user (the server reads them as root).
        give_to_unprivileged(served.dir.path());
    }
    let out = as_unprivileged("sh").arg("-c").arg(script).arg(DDSLUG).arg(&env).arg(&layout).env_remove("STACK").env("HOME", served.dir.path()).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("opt/datadog-agent/unreadable") && said.contains("run ddslug image as root"), "{said}");
    assert_eq!(fs::read_dir(&layout).unwrap().count(), 0, "the failed run left the layout directory as it found it (empty)");
    // Root reads it, and the image holds it with its mode.
    if running_as_root() {
        let out = ok(ddslug(&[&"image", &"--env-dir", &env, &"--oci-layout", &layout, &"--json"]));
        assert!(out.contains("\"manifest_digest\":\"sha256:"), "{out}");
    }
}

/// Names that are not UTF-8 and longer than a tar header holds, a long symlink target, a hard
/// link and a setuid file: umoci (Go's tar reader) unpacks them to the slug's tree hash.
#[test]
fn unusual_entries_unpack_to_the_same_tree() {
    let long = "n".repeat(120);
    let dir = format!("opt/datadog-agent/embedded/{long}");
    let odd = [dir.as_bytes(), b"/caf\xe9-", long.as_bytes()].concat();
    let served = Served::with_agent(|deb| {
        deb.dir(&dir, 0o755)
            .file(&odd, 0o644, "latin-1 name")
            .file(&format!("{dir}/setuid"), 0o4755, "#!/bin/sh\n")
            .hardlink(&format!("{dir}/same"), &format!("{dir}/setuid"))
            .symlink("opt/datadog-agent/far", &format!("embedded/{long}/setuid"))
    });
    let layout = served.dir.path().join("layout");
    ok(ddslug(&[&"image", &"--env-dir", &served.env_dir("odd", &[]), &"--oci-layout", &layout, &"--tag", &"odd"]));
    let bundle = served.dir.path().join("bundle");
    let out = Command::new("umoci").arg("unpack").args(if running_as_root() { &[][..] } else { &["--rootless"][..] }).arg("--image").arg(format!("{}:odd", layout.display())).arg(&bundle).output().unwrap();
    assert!(out.status.success(), "umoci unpack: {}", text(&out));
    let app = bundle.join("rootfs/app");
    let manifest = read_manifest(&app.join(".ddslug/manifest.json")).unwrap();
    let scan = scan_tree(&app.join(".apt")).unwrap();
    assert_eq!(scan.hash, manifest.tree_hash);
    let paths: Vec<&[u8]> = scan.entries.iter().map(|e| e.path.as_bytes()).collect();
    assert!(paths.contains(&&odd[..]), "the name that is not UTF-8 is missing");
    use std::os::unix::fs::MetadataExt;
    let setuid = app.join(".apt").join(&dir).join("setuid");
    if running_as_root() {
        assert_eq!(fs::symlink_metadata(&setuid).unwrap().mode() & 0o7777, 0o4755);
    }
}
