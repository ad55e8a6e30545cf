//! The shared layer cache against a real registry (Debian's `docker-registry`, started here
//! on 127.0.0.1) and the served, signed agent repository: a cold builder pushes, a second
//! builder with an empty cache pulls and makes a bit-identical slug without downloading the
//! .deb; every registry fault (down, 401/403, 404, 5xx, stall, truncated or wrong blob,
//! garbage manifest, unknown or lying signer, failed push) falls back to the apt repository
//! with one line and never installs a bad layer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Served, bin_compile_unprivileged_with, text};
use ddslug::fetch::Limits;
use ddslug::hash::Sha256;
use ddslug::oci::registry::{BlobRef, Registry as Client, RepoRef};
use ddslug::oci::sign::{self, SecretKey};
use ddslug::store::treehash::{TreeHash, scan_tree};
use ddslug_testsupport::faultproxy::{FaultProxy, ProxyFault};
use ddslug_testsupport::lifecycle::Lifecycle;
use ddslug_testsupport::registry::{Registry, free_port};

const REPO: &str = "ddslug/cache";

/// Runs `ddslug compile BUILD CACHE ENV` with `vars` added to a clean environment.
fn compile(build: &Path, cache: &Path, env: &Path, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ddslug"));
    command.arg("compile").arg(build).arg(cache).arg(env).env("STACK", "heroku-24");
    for (name, _) in std::env::vars() {
        if name.starts_with("DD_") || name == "DOCKER_CONFIG" {
            command.env_remove(name);
        }
    }
    // No Docker config.json of the machine's is read.
    command.env("HOME", build).envs(vars.iter().copied()).output().unwrap()
}

/// The lines about the shared cache that are warnings (" !     " lines).
fn cache_warnings(out: &Output) -> Vec<String> {
    text(out).lines().filter(|l| l.starts_with(" !     ") && l.contains("shared layer cache")).map(str::to_string).collect()
}

/// The one warning a faulty registry costs; the build went on from the apt repository.
fn assert_fell_back(out: &Output, mentions: &[&str]) -> String {
    assert!(out.status.success(), "{}", text(out));
    let warnings = cache_warnings(out);
    assert_eq!(warnings.len(), 1, "expected one warning: {}", text(out));
    for m in mentions {
        assert!(warnings[0].contains(m), "warning does not mention {m:?}: {}", warnings[0]);
    }
    assert!(warnings[0].contains("building it from the apt repository instead"), "{}", warnings[0]);
    assert!(text(out).contains("Building layer"), "{}", text(out));
    warnings[0].clone()
}

struct Keys {
    secret: String,
    public: String,
}

fn keys(name: &str) -> Keys {
    let secret = SecretKey::generate(name).unwrap();
    Keys { public: secret.public().to_string(), secret: secret.to_text() }
}

/// An agent repository, a registry, and a signing key, plus a first builder's slug.
struct World {
    served: Served,
    registry: Registry,
    keys: Keys,
}

impl World {
    fn start() -> World {
        let served = Served::start();
        let registry = Registry::start(&served.dir.path().join("registry")).unwrap();
        World { served, registry, keys: keys("ci-1") }
    }

    /// An ENV_DIR using the registry at `host`, trusting and signing as `keys` says.
    fn env(&self, name: &str, host: &str, trusted: &str, signing: Option<&str>, more: &[(&str, &str)]) -> PathBuf {
        let registry = format!("{host}/{REPO}");
        let mut pairs = vec![("DD_CACHE_REGISTRY", registry.as_str()), ("DD_CACHE_TRUSTED_KEYS", trusted)];
        if let Some(secret) = signing {
            pairs.push(("DD_CACHE_SIGNING_KEY", secret));
        }
        pairs.extend_from_slice(more);
        self.served.env_dir(name, &pairs)
    }

    fn cache(&self, name: &str) -> PathBuf {
        self.served.dir.path().join(format!("cache-{name}"))
    }

    /// A cold build that pushes its layer; returns its BUILD_DIR.
    fn push_first(&self) -> PathBuf {
        let build = self.served.build_dir("first");
        let env = self.env("first", &self.registry.host(), &self.keys.public, Some(&self.keys.secret), &[]);
        let out = compile(&build, &self.cache("first"), &env, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("not in 127.0.0.1:"), "the first lookup finds nothing: {}", text(&out));
        assert!(text(&out).contains("pushed layer"), "{}", text(&out));
        assert!(cache_warnings(&out).is_empty(), "{}", text(&out));
        build
    }

    fn client(&self, host: &str) -> Client {
        Client::new(RepoRef::parse(&format!("{host}/{REPO}"), "test", false).unwrap(), None, Limits::default())
    }

    /// The shared layer's manifest as JSON (there is one layer in these tests).
    fn manifest(&self) -> (String, serde_json::Value) {
        let tags = self.registry.storage().join("docker/registry/v2/repositories/ddslug/cache/_manifests/tags");
        let tag = std::fs::read_dir(&tags).unwrap().next().unwrap().unwrap().file_name().into_string().unwrap();
        let (_, bytes) = self.client(&self.registry.host()).get_manifest(&tag, &["application/vnd.oci.image.manifest.v1+json"]).unwrap().unwrap();
        (tag, serde_json::from_slice(&bytes).unwrap())
    }
}

fn digest_of(descriptor: &serde_json::Value) -> BlobRef {
    let digest = descriptor["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().parse().unwrap();
    BlobRef { digest, size: descriptor["size"].as_u64().unwrap() }
}

/// Every file of the slug, byte for byte: the tree hash of the whole BUILD_DIR.
fn slug_hash(build: &Path) -> TreeHash {
    scan_tree(build).unwrap().hash
}

#[test]
fn a_second_builder_pulls_a_bit_identical_slug_without_downloading_the_package() {
    let world = World::start();
    let first = world.push_first();
    let downloads = world.served.pool_requests();
    assert_eq!(downloads, 1);
    // A second builder, not root (as on Heroku), with an empty cache, trusting the key.
    let second = world.served.build_dir("second");
    let env = world.env("second", &world.registry.host(), &world.keys.public, None, &[]);
    let out = bin_compile_unprivileged_with(&second, &world.cache("second"), &env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert!(text(&out).contains("signed by ci-1"), "{}", text(&out));
    assert!(!text(&out).contains("Building layer"), "{}", text(&out));
    assert!(cache_warnings(&out).is_empty(), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads, "the second builder downloaded the .deb");
    assert_eq!(slug_hash(&first), slug_hash(&second), "the slugs differ");
    assert_eq!(std::fs::read(first.join(".ddslug/manifest.json")).unwrap(), std::fs::read(second.join(".ddslug/manifest.json")).unwrap());
    // The SBOM too: the pulled layer's inventory is the one its builder read from the .deb.
    let sbom = std::fs::read(first.join(".ddslug/sbom.cdx.json")).unwrap();
    assert!(sbom.len() > 100 && sbom == std::fs::read(second.join(".ddslug/sbom.cdx.json")).unwrap());
    let verify = Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(&second).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    // The pulled layer is in the second cache now: a third build there reuses it, no request.
    let third = world.served.build_dir("third");
    let out = bin_compile_unprivileged_with(&third, &world.cache("second"), &env, &[]);
    assert!(text(&out).contains("Reusing layer"), "{}", text(&out));
    assert_eq!(slug_hash(&third), slug_hash(&first));
    // `ddslug fetch --cache-registry` fills a cache from the registry too (the flag is
    // DD_CACHE_REGISTRY's; here the ENV_DIR has none).
    let env = world.served.env_dir("fetch", &[("DD_CACHE_TRUSTED_KEYS", &world.keys.public)]);
    let cache = world.cache("fetch");
    let out = Command::new(env!("CARGO_BIN_EXE_ddslug"))
        .args(["fetch", "--cache"])
        .arg(&cache)
        .arg("--env-dir")
        .arg(&env)
        .args(["--cache-registry", &format!("{}/{REPO}", world.registry.host())])
        .env_remove("DD_CACHE_REGISTRY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("layer-cached datadog-heroku-agent 1:7.81.2-1"), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads, "fetch downloaded the .deb");
}

#[test]
fn a_cnb_build_pulls_the_layer_a_cedar_builder_pushed() {
    let world = World::start();
    let first = world.push_first();
    let downloads = world.served.pool_requests();
    // The Cloud Native Buildpack, through the spec-following lifecycle driver, with the
    // registry and the trusted key in the platform's env.
    let dir = tempfile::tempdir().unwrap();
    let mut lc = Lifecycle::new(dir.path(), Path::new(env!("CARGO_MANIFEST_DIR")), "amd64").unwrap();
    lc.vars.push(("DDSLUG_BIN".into(), env!("CARGO_BIN_EXE_ddslug").into()));
    for (name, value) in [
        ("DD_APT_REPO_URL", world.served.server.url()),
        ("DD_APT_KEYRING", world.served.fixture.keyring.to_str().unwrap().to_string()),
        ("DD_CACHE_REGISTRY", format!("{}/{REPO}", world.registry.host())),
        ("DD_CACHE_TRUSTED_KEYS", world.keys.public.clone()),
    ] {
        lc.set_env(name, &value).unwrap();
    }
    let built = lc.build().unwrap();
    let out = text(&built.build);
    assert!(built.build.status.success(), "{out}");
    assert!(out.contains("pulled and verified") && out.contains("signed by ci-1"), "{out}");
    assert!(!out.contains("Building layer"), "{out}");
    assert_eq!(world.served.pool_requests(), downloads, "the CNB build downloaded the .deb");
    // The agent layer holds the Cedar slug's tree.
    let cedar = ddslug::slug::manifest::read_manifest(&first.join(".ddslug/manifest.json")).unwrap();
    let agent = built.image_layers["agent"]["metadata"]["tree_hash"].as_str().unwrap().to_string();
    assert_eq!(agent, cedar.tree_hash.to_string());
}

#[test]
fn registry_faults_fall_back_to_the_apt_repository_with_one_warning() {
    let world = World::start();
    let first = world.push_first();
    let (_, manifest) = world.manifest();
    let layer = digest_of(&manifest["layers"][0]);
    let layer_path = format!("/blobs/sha256:{}", layer.digest);
    let proxy = FaultProxy::start(&world.registry.host()).unwrap();
    // A transient status is asked again (DD_DOWNLOAD_ATTEMPTS, here 2): it is met twice.
    let cases: Vec<(&str, ProxyFault, usize, &str, &[&str])> = vec![
        ("403", ProxyFault::Status(403), 1, "/manifests/", &["HTTP 403", "DD_CACHE_REGISTRY_USER"]),
        ("503", ProxyFault::Status(503), 2, "/manifests/", &["HTTP 503 2 times"]),
        ("500-blob", ProxyFault::Status(500), 2, &layer_path, &["HTTP 500 2 times"]),
        ("garbage", ProxyFault::Replace("application/vnd.oci.image.manifest.v1+json", b"{\"schemaVersion\": 2, garbage".to_vec()), 1, "/manifests/", &["not a usable ddslug layer"]),
        ("not-ours", ProxyFault::Replace("application/vnd.oci.image.manifest.v1+json", br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec()), 1, "/manifests/", &["artifactType"]),
        ("truncated", ProxyFault::Truncate(1000), 1, &layer_path, &["bytes"]),
        ("corrupt", ProxyFault::Corrupt(500), 1, &layer_path, &["instead of the", "SHA-256"]),
        ("stall", ProxyFault::StallAfter(100), 1, &layer_path, &["DD_DOWNLOAD_LOW_SPEED_TIME"]),
    ];
    let mut downloads = world.served.pool_requests();
    for (name, fault, times, path, mentions) in cases {
        proxy.inject("GET", path, fault, Some(times));
        let build = world.served.build_dir(name);
        let env = world.env(name, &proxy.host(), &world.keys.public, None, &[("DD_DOWNLOAD_LOW_SPEED_TIME", "2"), ("DD_DOWNLOAD_ATTEMPTS", "2")]);
        let cache = world.cache(name);
        let out = compile(&build, &cache, &env, &[]);
        let warning = assert_fell_back(&out, mentions);
        assert!(!warning.contains(&world.keys.secret), "{warning}");
        downloads += 1;
        assert_eq!(world.served.pool_requests(), downloads, "{name}: the .deb was not downloaded");
        assert_eq!(slug_hash(&build), slug_hash(&first), "{name}: the slug differs");
        // Nothing of the pull is left in the cache's staging.
        let tmp = cache.join("ddslug/v1/tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "downloads").collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
    // No fault left unused (each was met by the build it was meant for).
    let faulted = proxy.requests().iter().filter(|(_, _, status)| *status != 200 && *status != 404).count();
    assert!(faulted >= 5, "{:?}", proxy.requests());
}

#[test]
fn transient_registry_errors_are_asked_again_not_warned() {
    let world = World::start();
    let proxy = FaultProxy::start(&world.registry.host()).unwrap();
    // What the reference registry answers for a moment when two builders push the same blob
    // (its link file is rewritten in place); an upload stored but answered 500 (the retried
    // PUT then finds the upload gone, the blob there); a manifest PUT refused once.
    proxy.inject("HEAD", "/blobs/sha256:", ProxyFault::Status(500), Some(1));
    proxy.inject("PUT", "/blobs/uploads/", ProxyFault::StatusAfterPassing(500), Some(1));
    proxy.inject("PUT", "/manifests/", ProxyFault::Status(503), Some(1));
    let first = world.served.build_dir("push");
    let env = world.env("push", &proxy.host(), &world.keys.public, Some(&world.keys.secret), &[]);
    let out = compile(&first, &world.cache("push"), &env, &[]);
    assert!(out.status.success() && text(&out).contains("pushed layer"), "{}", text(&out));
    assert!(cache_warnings(&out).is_empty(), "{}", text(&out));
    // A pull met by a 503 for the manifest and a 502 for the layer's blob.
    let (_, manifest) = world.manifest();
    let layer = digest_of(&manifest["layers"][0]);
    proxy.inject("GET", "/manifests/", ProxyFault::Status(503), Some(1));
    proxy.inject("GET", &format!("/blobs/sha256:{}", layer.digest), ProxyFault::Status(502), Some(1));
    let second = world.served.build_dir("pull");
    let downloads = world.served.pool_requests();
    let env = world.env("pull", &proxy.host(), &world.keys.public, None, &[]);
    let out = compile(&second, &world.cache("pull"), &env, &[]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert!(cache_warnings(&out).is_empty(), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads);
    assert_eq!(slug_hash(&second), slug_hash(&first));
    // Every fault was met.
    let faulted: Vec<_> = proxy.requests().into_iter().filter(|(_, _, status)| *status >= 500).map(|(method, _, status)| (method, status)).collect();
    let expected: Vec<(String, u16)> = [("HEAD", 500), ("PUT", 500), ("PUT", 503), ("GET", 503), ("GET", 502)].map(|(m, s)| (m.to_string(), s)).to_vec();
    assert_eq!(faulted, expected, "{:?}", proxy.requests());
}

#[test]
fn a_missing_layer_is_one_line_and_is_pushed_after_the_build() {
    let world = World::start();
    let build = world.served.build_dir("miss");
    let env = world.env("miss", &world.registry.host(), &world.keys.public, Some(&world.keys.secret), &[]);
    let out = compile(&build, &world.cache("miss"), &env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Besides the step's heading ("-----> Looking up layer ...").
    let lines: Vec<_> = text(&out).lines().filter(|l| l.contains(&format!("/{REPO}")) && !l.starts_with("----->")).map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "one line for the miss, one for the push: {lines:#?}");
    assert!(lines[0].contains("not in") && lines[0].contains("building it from the apt repository"), "{}", lines[0]);
    assert!(lines[1].contains("pushed layer"), "{}", lines[1]);
    assert!(cache_warnings(&out).is_empty());
    // Another builder (same key, its own cache, a later second: the wrapper it writes has
    // another mtime) builds the same layer and pushes the same bytes: nothing to upload.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = world.served.build_dir("miss-again");
    let env = world.env("miss-again", &world.registry.host(), "", Some(&world.keys.secret), &[]);
    let out = compile(&again, &world.cache("miss-again"), &env, &[]);
    assert!(text(&out).contains("the registry had its blobs already"), "{}", text(&out));
}

#[test]
fn a_registry_down_falls_back_and_one_restarted_serves_again() {
    let mut world = World::start();
    let first = world.push_first();
    world.registry.stop();
    let build = world.served.build_dir("down");
    let env = world.env("down", &world.registry.host(), &world.keys.public, None, &[]);
    let out = compile(&build, &world.cache("down"), &env, &[]);
    assert_fell_back(&out, &["Connection refused"]);
    world.registry.restart().unwrap();
    let again = world.served.build_dir("up");
    let downloads = world.served.pool_requests();
    let out = compile(&again, &world.cache("up"), &env, &[]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads);
    assert_eq!(slug_hash(&again), slug_hash(&first));
    // Nothing listens there at all: the same.
    let nowhere = format!("127.0.0.1:{}", free_port().unwrap());
    let env = world.env("nowhere", &nowhere, &world.keys.public, None, &[]);
    let out = compile(&world.served.build_dir("nowhere"), &world.cache("nowhere"), &env, &[]);
    assert_fell_back(&out, &["Connection refused"]);
    // A host that never answers (SYNs dropped): the connect timeout, named.
    let silent = ddslug_testsupport::Unanswering::start().unwrap();
    let host = silent.url().trim_start_matches("http://").to_string();
    let env = world.env("silent", &host, &world.keys.public, None, &[("DD_DOWNLOAD_CONNECT_TIMEOUT", "1"), ("DD_DOWNLOAD_LOW_SPEED_TIME", "1")]);
    let started = std::time::Instant::now();
    let out = compile(&world.served.build_dir("silent"), &world.cache("silent"), &env, &[]);
    assert_fell_back(&out, &["could not connect within 1 s (DD_DOWNLOAD_CONNECT_TIMEOUT)"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
}

#[test]
fn untrusted_or_lying_signatures_are_never_installed() {
    let world = World::start();
    let first = world.push_first();
    // Signed by a key this builder does not trust.
    let other = keys("someone-else");
    let build = world.served.build_dir("unknown");
    let env = world.env("unknown", &world.registry.host(), &other.public, None, &[]);
    let out = compile(&build, &world.cache("unknown"), &env, &[]);
    assert_fell_back(&out, &["signed by key \"ci-1\"", "DD_CACHE_TRUSTED_KEYS"]);
    // No trusted key at all: no lookup, one line saying how to trust.
    let env = world.env("none", &world.registry.host(), "", None, &[]);
    let out = compile(&world.served.build_dir("none"), &world.cache("none"), &env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let warnings = cache_warnings(&out);
    assert!(warnings.len() == 1 && warnings[0].contains("DD_CACHE_TRUSTED_KEYS is empty"), "{}", text(&out));

    // A trusted signer that lies: its record and signature claim another tree hash than
    // the layer's. The layer is downloaded and unpacked, its tree hashed, and refused.
    let (tag, mut manifest) = world.manifest();
    let client = world.client(&world.registry.host());
    let record_ref = digest_of(&manifest["config"]);
    let mut record: serde_json::Value = serde_json::from_slice(&client.get_blob_bytes(record_ref, 1 << 20).unwrap().unwrap()).unwrap();
    let forged = TreeHash(Sha256::of(b"another tree"));
    record["tree_hash"] = serde_json::json!(forged.to_string());
    let record_bytes = serde_json::to_vec(&record).unwrap();
    let new_record = BlobRef { digest: Sha256::of(&record_bytes), size: record_bytes.len() as u64 };
    client.push_blob(new_record, &mut || Ok(Box::new(std::io::Cursor::new(record_bytes.clone())) as Box<dyn std::io::Read>)).unwrap();
    let key: Sha256 = tag.strip_prefix("layer-").unwrap().parse().unwrap();
    let layer = digest_of(&manifest["layers"][0]);
    let secret = SecretKey::parse(&world.keys.secret, "test").unwrap();
    let signature = secret.sign(&sign::statement(&key, &forged, (&layer.digest, layer.size), (&new_record.digest, new_record.size)));
    manifest["config"]["digest"] = serde_json::json!(format!("sha256:{}", new_record.digest));
    manifest["config"]["size"] = serde_json::json!(new_record.size);
    manifest["annotations"]["dev.ddslug.tree-hash"] = serde_json::json!(forged.to_string());
    manifest["annotations"]["dev.ddslug.signature"] = serde_json::json!(signature);
    client.put_manifest(&tag, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap()).unwrap();
    let build = world.served.build_dir("lying");
    let env = world.env("lying", &world.registry.host(), &world.keys.public, None, &[]);
    let downloads = world.served.pool_requests();
    let out = compile(&build, &world.cache("lying"), &env, &[]);
    assert_fell_back(&out, &["did not install", &format!("not {forged} as recorded")]);
    assert_eq!(world.served.pool_requests(), downloads + 1);
    assert_eq!(slug_hash(&build), slug_hash(&first));
}

#[test]
fn basic_auth_from_settings_or_docker_config_and_a_clear_401_without() {
    let served = Served::start();
    let registry = Registry::start_with_auth(&served.dir.path().join("registry"), "builder", "s3cret-pass").unwrap();
    let world = World { served, registry, keys: keys("ci-auth") };
    // No credentials: 401, one warning naming the settings, and the push warns too.
    let build = world.served.build_dir("anon");
    let env = world.env("anon", &world.registry.host(), &world.keys.public, Some(&world.keys.secret), &[]);
    let out = compile(&build, &world.cache("anon"), &env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let warnings = cache_warnings(&out);
    assert_eq!(warnings.len(), 2, "{}", text(&out));
    assert!(warnings[0].contains("HTTP 401") && warnings[0].contains("DD_CACHE_REGISTRY_USER"), "{}", warnings[0]);
    assert!(warnings[1].contains("could not push") && warnings[1].contains("HTTP 401"), "{}", warnings[1]);
    // With the settings: pushed.
    let first = world.served.build_dir("user");
    let creds = [("DD_CACHE_REGISTRY_USER", "builder"), ("DD_CACHE_REGISTRY_PASSWORD", "s3cret-pass")];
    let env = world.env("user", &world.registry.host(), &world.keys.public, Some(&world.keys.secret), &creds);
    let out = compile(&first, &world.cache("user"), &env, &[]);
    assert!(text(&out).contains("pushed layer"), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-pass"));
    // From a Docker config.json: pulled.
    let docker = world.served.dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64_of(b"builder:s3cret-pass");
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, world.registry.host())).unwrap();
    let second = world.served.build_dir("docker");
    let env = world.env("docker", &world.registry.host(), &world.keys.public, None, &[]);
    let downloads = world.served.pool_requests();
    let out = compile(&second, &world.cache("docker"), &env, &[("DOCKER_CONFIG", docker.to_str().unwrap())]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads);
    assert_eq!(slug_hash(&second), slug_hash(&first));
    // Wrong password: 401 again, named.
    let env = world.env("wrong", &world.registry.host(), &world.keys.public, None, &[("DD_CACHE_REGISTRY_USER", "builder"), ("DD_CACHE_REGISTRY_PASSWORD", "nope")]);
    let out = compile(&world.served.build_dir("wrong"), &world.cache("wrong"), &env, &[]);
    let warning = assert_fell_back(&out, &["HTTP 401", "check DD_CACHE_REGISTRY_USER"]);
    assert!(!warning.contains("nope"), "{warning}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_failed_push_warns_and_the_build_goes_on() {
    let world = World::start();
    for (name, method, path, status) in [("upload", "POST", "/blobs/uploads/", 500), ("manifest", "PUT", "/manifests/", 503)] {
        let proxy = FaultProxy::start(&world.registry.host()).unwrap();
        proxy.inject(method, path, ProxyFault::Status(status), None);
        let build = world.served.build_dir(name);
        let env = world.env(name, &proxy.host(), &world.keys.public, Some(&world.keys.secret), &[("DD_DOWNLOAD_ATTEMPTS", "2")]);
        let out = compile(&build, &world.cache(name), &env, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let warnings = cache_warnings(&out);
        assert_eq!(warnings.len(), 1, "{}", text(&out));
        assert!(warnings[0].contains("could not push") && warnings[0].contains(&format!("HTTP {status} 2 times")), "{}", warnings[0]);
        assert!(warnings[0].contains("the build goes on"), "{}", warnings[0]);
        assert!(build.join(".ddslug/manifest.json").exists());
    }
}

#[test]
fn two_builders_pushing_at_once_leave_one_valid_artifact() {
    let world = World::start();
    // Each builder has its own key (both trusted), cache and BUILD_DIR; they race.
    let (a, b) = (keys("builder-a"), keys("builder-b"));
    let trusted = format!("{} {}", a.public, b.public);
    let runs: Vec<_> = [("a", &a), ("b", &b)]
        .into_iter()
        .map(|(name, k)| (world.served.build_dir(name), world.cache(name), world.env(name, &world.registry.host(), &trusted, Some(&k.secret), &[])))
        .collect();
    let outs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs.iter().map(|(build, cache, env)| scope.spawn(move || compile(build, cache, env, &[]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outs {
        assert!(out.status.success(), "{}", text(out));
        assert!(text(out).contains("pushed layer"), "{}", text(out));
        assert!(cache_warnings(out).is_empty(), "{}", text(out));
    }
    // Both built the same layer and pushed the same bytes (mtimes clamped to the package's):
    // the registry holds one layer blob and one record, and a manifest per signer.
    let blobs = walk(&world.registry.storage().join("docker/registry/v2/blobs")).into_iter().filter(|p| p.ends_with("data")).count();
    assert_eq!(blobs, 4, "layer, record and two manifests");
    // One tag, and what it names verifies: a third builder pulls it.
    let (tag, _) = world.manifest();
    assert!(tag.starts_with("layer-"));
    let c = world.served.build_dir("c");
    let env = world.env("c", &world.registry.host(), &trusted, None, &[]);
    let downloads = world.served.pool_requests();
    let out = compile(&c, &world.cache("c"), &env, &[]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert_eq!(world.served.pool_requests(), downloads);
    assert_eq!(slug_hash(&c), slug_hash(&runs[0].0));
}

#[test]
fn token_auth_as_the_distribution_spec_describes() {
    let world = World::start();
    let proxy = FaultProxy::start_with_token_auth(&world.registry.host(), "builder", "t0ken-pass").unwrap();
    let creds = [("DD_CACHE_REGISTRY_USER", "builder"), ("DD_CACHE_REGISTRY_PASSWORD", "t0ken-pass")];
    let first = world.served.build_dir("token-push");
    let env = world.env("token-push", &proxy.host(), &world.keys.public, Some(&world.keys.secret), &creds);
    let out = compile(&first, &world.cache("token-push"), &env, &[]);
    assert!(text(&out).contains("pushed layer"), "{}", text(&out));
    let second = world.served.build_dir("token-pull");
    let env = world.env("token-pull", &proxy.host(), &world.keys.public, None, &creds);
    let out = compile(&second, &world.cache("token-pull"), &env, &[]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert_eq!(slug_hash(&second), slug_hash(&first));
    // Tokens were asked for (and each used more than once: not one per request).
    let requests = proxy.requests();
    let tokens = requests.iter().filter(|(_, path, status)| path.starts_with("/token") && *status == 200).count();
    assert!(tokens >= 2 && tokens * 3 < requests.len(), "{requests:?}");
    assert!(requests.iter().any(|(_, path, _)| path.contains("scope=repository%3Addslug%2Fcache%3Apull%2Cpush")), "{requests:?}");
    // Without credentials the token service refuses: one warning naming the settings.
    let env = world.env("token-anon", &proxy.host(), &world.keys.public, None, &[]);
    let out = compile(&world.served.build_dir("token-anon"), &world.cache("token-anon"), &env, &[]);
    assert_fell_back(&out, &["HTTP 401", "DD_CACHE_REGISTRY_USER"]);
}

#[test]
fn the_client_uploads_in_chunks_only_what_is_missing_and_checks_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry")).unwrap();
    let repo = RepoRef::parse(&format!("{}/{REPO}", registry.host()), "test", false).unwrap();
    let client = Client::new(repo, None, Limits::default()).with_chunk_size(1000);
    let bytes: Vec<u8> = (0..4500u32).map(|i| (i * 7 % 251) as u8).collect();
    let blob = BlobRef { digest: Sha256::of(&bytes), size: bytes.len() as u64 };
    let mut opened = 0;
    let mut open = || {
        opened += 1;
        Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn std::io::Read>)
    };
    assert!(!client.has_blob(blob, false).unwrap());
    assert!(client.push_blob(blob, &mut open).unwrap(), "uploaded");
    assert!(client.has_blob(blob, false).unwrap());
    assert!(!client.push_blob(blob, &mut open).unwrap(), "the second push uploads nothing");
    assert_eq!(opened, 1);
    assert_eq!(client.get_blob_bytes(blob, 1 << 20).unwrap().unwrap(), bytes);
    // Asked for with the wrong size or digest: refused, whatever the registry sends.
    let e = client.get_blob_bytes(BlobRef { size: 4000, ..blob }, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("instead of the 4000 bytes"), "{e}");
    let e = client.get_blob_bytes(blob, 100).unwrap_err().to_string();
    assert!(e.contains("larger than") && e.contains("the limit for this blob"), "{e}");
    assert_eq!(client.get_blob_bytes(BlobRef { digest: Sha256::of(b"absent"), size: 6 }, 100).unwrap(), None);
}

/// A raw tar entry: name, type byte, link target, content (written verbatim: the tar
/// crate refuses to write `..` itself).
type RawEntry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_mode(if *kind == b'5' { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn a_hostile_layer_from_a_trusted_signer_goes_through_the_safe_unpacker_and_is_refused() {
    let world = World::start();
    let first = world.push_first();
    let (tag, mut manifest) = world.manifest();
    let client = world.client(&world.registry.host());
    let key: Sha256 = tag.strip_prefix("layer-").unwrap().parse().unwrap();
    let secret = SecretKey::parse(&world.keys.secret, "test").unwrap();
    let record_ref = digest_of(&manifest["config"]);
    let tree_hash: TreeHash = TreeHash(manifest["annotations"]["dev.ddslug.tree-hash"].as_str().unwrap().parse().unwrap());
    // (case, layer media type, blob, what the build log says): ddslug pushes zstd and still
    // reads gzip, so both decompressors feed the same safe unpacker.
    let zstd = |tar: Vec<u8>| zstd::encode_all(tar.as_slice(), 3).unwrap();
    let cases: [(&str, &str, Vec<u8>, &str); 5] = [
        ("dotdot", ZSTD, zstd(raw_tar(&[(b"../../../../../escaped", b'0', b"", b"out")])), "refusing to unpack"),
        ("link-out", ZSTD, zstd(raw_tar(&[(b"opt", b'2', b"/", b""), (b"opt/escaped", b'0', b"", b"out")])), "refusing to unpack"),
        ("gzip-link-out", GZIP, gzip(raw_tar(&[(b"opt", b'2', b"/", b""), (b"opt/escaped", b'0', b"", b"out")])), "refusing to unpack"),
        ("not-zstd", ZSTD, b"this is no zstd stream".to_vec(), "did not install"),
        ("not-gzip", GZIP, b"this is no gzip stream".to_vec(), "did not install"),
    ];
    for (name, media_type, blob_bytes, says) in cases {
        let layer = BlobRef { digest: Sha256::of(&blob_bytes), size: blob_bytes.len() as u64 };
        client.push_blob(layer, &mut || Ok(Box::new(std::io::Cursor::new(blob_bytes.clone())) as Box<dyn std::io::Read>)).unwrap();
        let signature = secret.sign(&sign::statement(&key, &tree_hash, (&layer.digest, layer.size), (&record_ref.digest, record_ref.size)));
        manifest["layers"][0]["mediaType"] = serde_json::json!(media_type);
        manifest["layers"][0]["digest"] = serde_json::json!(format!("sha256:{}", layer.digest));
        manifest["layers"][0]["size"] = serde_json::json!(layer.size);
        manifest["annotations"]["dev.ddslug.signature"] = serde_json::json!(signature);
        client.put_manifest(&tag, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap()).unwrap();
        let build = world.served.build_dir(name);
        let env = world.env(name, &world.registry.host(), &world.keys.public, None, &[]);
        let out = compile(&build, &world.cache(name), &env, &[]);
        assert_fell_back(&out, &["did not install", says]);
        assert_eq!(slug_hash(&build), slug_hash(&first), "{name}");
        // Nothing was written outside the staging directory the pull unpacked into.
        let escaped: Vec<_> = walk(world.served.dir.path()).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "escaped")).collect();
        assert!(escaped.is_empty(), "{name}: {escaped:?}");
        assert!(!Path::new("/escaped").exists(), "{name}: written through the link to /");
    }
}

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `tar` as a gzip stream, as ddslug pushed layers before it pushed zstd.
fn gzip(tar: Vec<u8>) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_layer_pushed_as_gzip_by_an_older_builder_is_still_pulled() {
    let world = World::start();
    let first = world.push_first();
    let (tag, mut manifest) = world.manifest();
    assert_eq!(manifest["layers"][0]["mediaType"], ZSTD, "ddslug pushes zstd");
    let client = world.client(&world.registry.host());
    let key: Sha256 = tag.strip_prefix("layer-").unwrap().parse().unwrap();
    let secret = SecretKey::parse(&world.keys.secret, "test").unwrap();
    let record_ref = digest_of(&manifest["config"]);
    let tree_hash: TreeHash = TreeHash(manifest["annotations"]["dev.ddslug.tree-hash"].as_str().unwrap().parse().unwrap());
    // The same tar, recompressed with gzip and signed again, as an older ddslug pushed it.
    let zstd_blob = client.get_blob_bytes(digest_of(&manifest["layers"][0]), 1 << 30).unwrap().unwrap();
    let blob_bytes = gzip(zstd::decode_all(zstd_blob.as_slice()).unwrap());
    let layer = BlobRef { digest: Sha256::of(&blob_bytes), size: blob_bytes.len() as u64 };
    client.push_blob(layer, &mut || Ok(Box::new(std::io::Cursor::new(blob_bytes.clone())) as Box<dyn std::io::Read>)).unwrap();
    let signature = secret.sign(&sign::statement(&key, &tree_hash, (&layer.digest, layer.size), (&record_ref.digest, record_ref.size)));
    manifest["layers"][0] = serde_json::json!({ "mediaType": GZIP, "digest": format!("sha256:{}", layer.digest), "size": layer.size });
    manifest["annotations"]["dev.ddslug.signature"] = serde_json::json!(signature);
    client.put_manifest(&tag, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap()).unwrap();
    let build = world.served.build_dir("gzip");
    let env = world.env("gzip", &world.registry.host(), &world.keys.public, None, &[]);
    let out = compile(&build, &world.cache("gzip"), &env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pulled and verified") && text(&out).contains("gzip blob"), "{}", text(&out));
    assert_eq!(slug_hash(&build), slug_hash(&first));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn an_unreadable_docker_config_is_a_warning_not_a_failed_build() {
    let world = World::start();
    let first = world.push_first();
    let docker = world.served.dir.path().join("docker-bad");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), b"{ not json").unwrap();
    let build = world.served.build_dir("bad-docker");
    let env = world.env("bad-docker", &world.registry.host(), &world.keys.public, None, &[]);
    let out = compile(&build, &world.cache("bad-docker"), &env, &[("DOCKER_CONFIG", docker.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let warnings: Vec<_> = text(&out).lines().filter(|l| l.starts_with(" !     ")).map(str::to_string).collect();
    assert_eq!(warnings.len(), 1, "{}", text(&out));
    assert!(warnings[0].contains("config.json") && warnings[0].contains("DD_CACHE_REGISTRY_USER"), "{}", warnings[0]);
    assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
    assert_eq!(slug_hash(&build), slug_hash(&first));
}

/// `tar` cut into zstd frames of `per` entries each (a PAX or GNU name record stays with its
/// entry; the end-of-archive blocks go with the last): the blob and each frame's size.
fn framed(tar: &[u8], per: usize) -> (Vec<u8>, Vec<u64>) {
    let (mut cuts, mut at, mut count) = (vec![0], 0, 0);
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let header = tar::Header::from_byte_slice(&tar[at..at + 512]);
        at += 512 + (header.entry_size().unwrap() as usize).div_ceil(512) * 512;
        if !matches!(header.entry_type(), tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink) {
            count += 1;
            if count % per == 0 {
                cuts.push(at);
            }
        }
    }
    cuts.retain(|&c| c < tar.len());
    cuts.push(tar.len());
    let (mut blob, mut frames) = (Vec::new(), Vec::new());
    for pair in cuts.windows(2) {
        let frame = zstd::encode_all(&tar[pair[0]..pair[1]], 3).unwrap();
        frames.push(frame.len() as u64);
        blob.extend(frame);
    }
    (blob, frames)
}

#[test]
fn a_layer_in_frames_is_unpacked_frame_by_frame_and_its_frames_checked() {
    let world = World::start();
    let first = world.push_first();
    let (tag, manifest) = world.manifest();
    let client = world.client(&world.registry.host());
    let key: Sha256 = tag.strip_prefix("layer-").unwrap().parse().unwrap();
    let secret = SecretKey::parse(&world.keys.secret, "test").unwrap();
    let tree_hash: TreeHash = TreeHash(manifest["annotations"]["dev.ddslug.tree-hash"].as_str().unwrap().parse().unwrap());
    let record: serde_json::Value = serde_json::from_slice(&client.get_blob_bytes(digest_of(&manifest["config"]), 1 << 20).unwrap().unwrap()).unwrap();
    let tar = zstd::decode_all(client.get_blob_bytes(digest_of(&manifest["layers"][0]), 1 << 30).unwrap().unwrap().as_slice()).unwrap();
    // The test package's layer fits in one frame: cut it finer, as a big layer is cut.
    let (blob, frames) = framed(&tar, 7);
    assert!(frames.len() > 10, "{}", frames.len());
    // The same entries and one more that leaves the target, in the last frame.
    let mut hostile_tar = tar[..tar.len() - 1024].to_vec();
    let mut header = tar::Header::new_ustar();
    header.as_ustar_mut().unwrap().name[..20].copy_from_slice(b"../../../../escaped\0");
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    hostile_tar.extend_from_slice(header.as_bytes());
    let mut data = b"out".to_vec();
    data.resize(512, 0);
    hostile_tar.extend_from_slice(&data);
    hostile_tar.extend_from_slice(&[0u8; 1024]);
    let (hostile_blob, hostile_frames) = framed(&hostile_tar, 7);
    // The first boundary one byte late: the same total, but no frame where the record says.
    let mut lying = frames.clone();
    (lying[0], lying[1]) = (frames[0] + 1, frames[1] - 1);
    let short = frames[..frames.len() - 1].to_vec();
    // (case, blob, frame sizes in the record, what the fallback says: None, it is used)
    type Case<'a> = (&'a str, &'a [u8], &'a [u64], Option<&'a str>);
    let cases: [Case; 5] = [
        ("frames", &blob, &frames, None),
        // A record without frame sizes (as builders before them read any): one stream.
        ("unlisted", &blob, &[], None),
        ("lying", &blob, &lying, Some("did not install")),
        ("short", &blob, &short, Some("frame sizes")),
        ("hostile", &hostile_blob, &hostile_frames, Some("refusing to unpack")),
    ];
    for (name, blob, frames, fails) in cases {
        let layer = BlobRef { digest: Sha256::of(blob), size: blob.len() as u64 };
        let mut record = record.clone();
        record["frames"] = serde_json::json!(frames);
        let record_bytes = serde_json::to_vec(&record).unwrap();
        let record_ref = BlobRef { digest: Sha256::of(&record_bytes), size: record_bytes.len() as u64 };
        for (blob_ref, bytes) in [(layer, blob.to_vec()), (record_ref, record_bytes)] {
            client.push_blob(blob_ref, &mut || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn std::io::Read>)).unwrap();
        }
        let mut manifest = manifest.clone();
        manifest["config"]["digest"] = serde_json::json!(format!("sha256:{}", record_ref.digest));
        manifest["config"]["size"] = serde_json::json!(record_ref.size);
        manifest["layers"][0]["digest"] = serde_json::json!(format!("sha256:{}", layer.digest));
        manifest["layers"][0]["size"] = serde_json::json!(layer.size);
        let signature = secret.sign(&sign::statement(&key, &tree_hash, (&layer.digest, layer.size), (&record_ref.digest, record_ref.size)));
        manifest["annotations"]["dev.ddslug.signature"] = serde_json::json!(signature);
        client.put_manifest(&tag, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap()).unwrap();
        let build = world.served.build_dir(name);
        let env = world.env(name, &world.registry.host(), &world.keys.public, None, &[]);
        let out = bin_compile_unprivileged_with(&build, &world.cache(name), &env, &[]);
        match fails {
            None => {
                assert!(out.status.success(), "{}", text(&out));
                assert!(text(&out).contains("pulled and verified"), "{}", text(&out));
                let in_frames = format!("in {} frames downloaded", frames.len());
                assert_eq!(text(&out).contains(&in_frames), !frames.is_empty(), "{name}: {}", text(&out));
                assert!(cache_warnings(&out).is_empty(), "{}", text(&out));
                let verify = Command::new(env!("CARGO_BIN_EXE_ddslug")).arg("verify").arg(&build).output().unwrap();
                assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
            }
            Some(says) => {
                assert_fell_back(&out, &[says]);
            }
        }
        // Fallen back or not, the slug is the first builder's.
        assert_eq!(slug_hash(&build), slug_hash(&first), "{name}");
        let escaped: Vec<_> = walk(world.served.dir.path()).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "escaped")).collect();
        assert!(escaped.is_empty(), "{name}: {escaped:?}");
    }
}
