//! The SBOM of a compile (`.ddslug/sbom.cdx.json`, `ddslug sbom`), built from a signed
//! repository whose agent packages ship Python distributions and an Omnibus build manifest
//! (`ddslug_testsupport::agent::with_python_distributions`): valid against the official
//! CycloneDX 1.6 JSON schema (vendored in `tests/data/cyclonedx/`, checked with the Python
//! `jsonschema` validator), listing what the package holds (checked against the package's
//! entries and the slug's `.apt`), byte-identical for identical inputs, and guarded by the
//! manifest.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin_compile, bin_compile_unprivileged, text};
use ddslug::hash::Sha256;
use ddslug_testsupport::agent::{PYTHON_DISTS, Scale, agent_deb, site_packages_dirs, with_python_distributions};
use ddslug_testsupport::repo::{RepoSpec, WrittenRepo, sha256_hex, write_repo};
use ddslug_testsupport::{DebSpec, KeyKind, Server, SigningKey};
use serde_json::Value;

const DDSLUG: &str = env!("CARGO_BIN_EXE_ddslug");
const AGENT7: &str = "1:7.81.2-1";
const AGENT6: &str = "1:6.53.1-1";

/// Agents 7 and 6 with Python distributions, signed and served on 127.0.0.1.
struct Repo {
    dir: tempfile::TempDir,
    repo: WrittenRepo,
    debs: Vec<DebSpec>,
    keyring: PathBuf,
    server: Server,
}

impl Repo {
    fn serve() -> Repo {
        Repo::serve_with(|d| d)
    }

    /// [`Repo::serve`] with agent 7 changed by `edit`.
    fn serve_with(edit: impl FnOnce(DebSpec) -> DebSpec) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyKind::Ed25519, "ddslug sbom tests").unwrap();
        let seven = edit(with_python_distributions(agent_deb("datadog-agent", AGENT7, Scale::SMALL)));
        let six = with_python_distributions(agent_deb("datadog-agent", AGENT6, Scale::SMALL));
        let spec = RepoSpec::new("stable").component("7", vec![seven.clone()]).component("6", vec![six.clone()]);
        let repo = write_repo(&dir.path().join("repo"), &spec, &key).unwrap();
        let keyring = dir.path().join("keyring.asc");
        fs::write(&keyring, key.public_armored().unwrap()).unwrap();
        let server = Server::start(&repo.root).unwrap();
        Repo { dir, repo, debs: vec![seven, six], keyring, server }
    }

    fn fresh(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        path
    }

    fn env(&self, name: &str, pairs: &[(&str, &str)]) -> PathBuf {
        let env = self.fresh(&format!("env-{name}"));
        fs::write(env.join("DD_APT_REPO_URL"), self.server.url()).unwrap();
        fs::write(env.join("DD_APT_KEYRING"), self.keyring.to_str().unwrap()).unwrap();
        for (k, v) in pairs {
            fs::write(env.join(k), v).unwrap();
        }
        env
    }

    /// Compiles into a fresh BUILD_DIR `name` with `cache`.
    fn compile(&self, name: &str, cache: &Path, pairs: &[(&str, &str)]) -> PathBuf {
        let build = self.fresh(&format!("build-{name}"));
        let out = bin_compile(&build, cache, &self.env(name, pairs));
        assert!(out.status.success(), "{}", text(&out));
        build
    }
}

fn ddslug(args: &[&str]) -> Output {
    Command::new(DDSLUG).args(args).output().unwrap()
}

fn sbom_of(build: &Path) -> Value {
    serde_json::from_slice(&fs::read(build.join(".ddslug/sbom.cdx.json")).unwrap()).unwrap()
}

/// Validates `doc` against the vendored CycloneDX 1.6 schema with Python's `jsonschema`
/// (the reference implementation; `.ci/run` installs it). Returns the validator's complaints.
fn schema_errors(doc: &Value) -> Vec<String> {
    const CHECK: &str = r#"
import json, pathlib, sys
import jsonschema
here = pathlib.Path(sys.argv[1])
load = lambda name: json.loads((here / name).read_text())
schema = load("bom-1.6.schema.json")
refs = {"http://cyclonedx.org/schema/" + n: load(n) for n in ("spdx.schema.json", "jsf-0.82.schema.json")}
try:
    from referencing import Registry, Resource
    registry = Registry().with_resources([(uri, Resource.from_contents(s)) for uri, s in refs.items()])
    validator = jsonschema.Draft7Validator(schema, registry=registry, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
except ImportError:  # jsonschema before 4.18 (Debian's python3-jsonschema)
    resolver = jsonschema.RefResolver.from_schema(schema, store=refs)
    validator = jsonschema.Draft7Validator(schema, resolver=resolver, format_checker=jsonschema.draft7_format_checker)
doc = json.load(sys.stdin)
for error in sorted(validator.iter_errors(doc), key=str):
    print(list(error.absolute_path), error.message)
"#;
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cyclonedx");
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .arg(&schemas)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the CycloneDX schema check");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(doc).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the schema check did not run (python3 with jsonschema is needed; .ci/run installs it): {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn property<'a>(component: &'a Value, name: &str) -> Option<&'a str> {
    component["properties"].as_array()?.iter().find(|p| p["name"] == name)?["value"].as_str()
}

/// What the package's entries and the slug's `.apt` say each distribution should be listed as.
struct Expected {
    location: String,
    name: String,
    version: String,
    kept: bool,
}

fn expected_distributions(deb: &DebSpec, apt: &Path) -> Vec<Expected> {
    let mut out = Vec::new();
    for site in &site_packages_dirs(deb) {
        for dist in PYTHON_DISTS {
            let record = format!("{site}/{}.{}", dist.stem, if dist.egg { "egg-info" } else { "dist-info" });
            // In the package, with its METADATA headers.
            let meta = format!("{record}/{}", if dist.egg { "PKG-INFO" } else { "METADATA" });
            assert!(deb.entries.iter().any(|(p, _)| p == meta.as_bytes()), "{meta} is in the package");
            let header = |key: &str| dist.headers.lines().find_map(|l| l.strip_prefix(&format!("{key}: "))).unwrap().to_string();
            // Kept: its record and some file it installs are still in the slug.
            let kept = apt.join(&record).is_dir() && dist.installs.iter().any(|f| apt.join(site).join(f).exists());
            out.push(Expected { location: record, name: header("Name"), version: header("Version"), kept });
        }
    }
    out
}

/// Checks the SBOM of `build` against the package `deb` it installed and the slug itself.
fn check_sbom(build: &Path, deb: &DebSpec, repo: &WrittenRepo) {
    let sbom = sbom_of(build);
    let errors = schema_errors(&sbom);
    assert!(errors.is_empty(), "not valid CycloneDX 1.6: {errors:#?}");
    assert_eq!((sbom["bomFormat"].as_str(), sbom["specVersion"].as_str()), (Some("CycloneDX"), Some("1.6")));
    let manifest: Value = serde_json::from_slice(&fs::read(build.join(".ddslug/manifest.json")).unwrap()).unwrap();

    // The agent package: what was published, by hash.
    let published = repo.deb(&deb.package, &deb.version).unwrap();
    let agent = &sbom["metadata"]["component"];
    assert_eq!(agent["name"], deb.package.as_str());
    assert_eq!(agent["version"], deb.version.as_str());
    assert_eq!(agent["purl"], format!("pkg:deb/datadog/{}@{}?arch=amd64", deb.package, deb.version).as_str());
    assert_eq!(agent["hashes"][0]["alg"], "SHA-256");
    assert_eq!(agent["hashes"][0]["content"], published.sha256.as_str());
    assert_eq!(published.sha256, sha256_hex(&fs::read(&published.path).unwrap()));
    let meta_props = &sbom["metadata"];
    assert_eq!(property(meta_props, "ddslug:tree-hash"), manifest["tree_hash"].as_str());
    assert_eq!(property(meta_props, "ddslug:layer-key"), manifest["layer_key"].as_str());

    // Every distribution of the package, kept or removed as the slug shows.
    let apt = build.join(".apt");
    let components = sbom["components"].as_array().unwrap();
    let expected = expected_distributions(deb, &apt);
    assert!(expected.iter().any(|e| e.kept) && expected.iter().any(|e| !e.kept), "the case has kept and removed distributions");
    let pypi: Vec<&Value> = components.iter().filter(|c| c["purl"].as_str().is_some_and(|p| p.starts_with("pkg:pypi/"))).collect();
    assert_eq!(pypi.len(), expected.len(), "one component per distribution: {pypi:#?}");
    for e in &expected {
        let c = pypi
            .iter()
            .find(|c| c["evidence"]["occurrences"][0]["location"] == e.location.as_str())
            .unwrap_or_else(|| panic!("no component found at {}", e.location));
        assert_eq!((c["name"].as_str(), c["version"].as_str()), (Some(e.name.as_str()), Some(e.version.as_str())), "{}", e.location);
        assert_eq!(c["purl"], format!("pkg:pypi/{}@{}", e.name.to_lowercase(), e.version).as_str());
        assert_eq!(property(c, "ddslug:recipe"), Some(if e.kept { "kept" } else { "removed" }), "{}: {c:#}", e.location);
        assert_eq!(c["scope"].as_str(), (!e.kept).then_some("excluded"), "{}", e.location);
    }
    // Licences from the metadata of distributions still in the slug.
    // (In Python 3's site-packages: agent 6 has Python 2.7's too.)
    let location = |c: &Value| c["evidence"]["occurrences"][0]["location"].as_str().unwrap().to_string();
    let at = |record: &str| {
        let found = pypi.iter().find(|c| location(c).contains("/python3.") && location(c).ends_with(&format!("/site-packages/{record}")));
        *found.unwrap_or_else(|| panic!("no component for {record} in Python 3"))
    };
    let requests = at("requests-2.32.3.dist-info");
    assert_eq!(requests["licenses"][0]["expression"], "Apache-2.0");
    assert_eq!(at("six-1.16.0.dist-info")["licenses"][0]["license"]["name"], "MIT License");
    assert_eq!(at("simplejson-3.6.5-py2.7.egg-info")["licenses"][0]["license"]["name"], "MIT License");
    // The rules: botocore kept with its data cut, kubernetes removed though its record stays.
    assert_eq!(property(at("botocore-1.34.0.dist-info"), "ddslug:recipe:rules"), Some("botocore-data"));
    let kubernetes = at("kubernetes-29.0.0.dist-info");
    assert!(apt.join(location(kubernetes)).is_dir(), "the record stays");
    assert_eq!((property(kubernetes, "ddslug:recipe"), property(kubernetes, "ddslug:recipe:rules")), (Some("removed"), Some("python-packages")));

    // What Omnibus built in, from its manifest.
    let omnibus: Vec<&Value> = components.iter().filter(|c| c["purl"].as_str().is_some_and(|p| p.starts_with("pkg:generic/"))).collect();
    let names: Vec<&str> = omnibus.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datadog-agent", "openssl3", "preparation", "zlib"]);
    assert_eq!(omnibus[1]["version"], "3.0.15");
    assert_eq!(omnibus[1]["licenses"][0]["license"]["name"], "Apache-2.0");
    assert!(omnibus[2].get("version").is_none() && omnibus[2].get("licenses").is_none(), "{:#}", omnibus[2]);
    assert_eq!(property(omnibus[0], "ddslug:recipe"), Some("unmapped"));

    // Sorted by bom-ref, every one distinct; the agent depends on what is kept.
    let refs: Vec<&str> = components.iter().map(|c| c["bom-ref"].as_str().unwrap()).collect();
    assert!(refs.windows(2).all(|w| w[0] < w[1]), "sorted, distinct: {refs:#?}");
    let depends: Vec<&str> = sbom["dependencies"][0]["dependsOn"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let kept: Vec<&str> = components.iter().filter(|c| c.get("scope").is_none()).map(|c| c["bom-ref"].as_str().unwrap()).collect();
    assert_eq!(depends, kept);

    // `ddslug sbom` prints exactly the file; verify accepts the slug.
    let out = ddslug(&["sbom", build.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, fs::read(build.join(".ddslug/sbom.cdx.json")).unwrap());
    let out = ddslug(&["verify", build.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn sboms_list_the_package_and_what_it_embeds() {
    let repo = Repo::serve();
    let cache = repo.fresh("cache");
    // Agent 7: distributions kept, stripped in part, removed with their record kept.
    let seven = repo.compile("seven", &cache, &[]);
    check_sbom(&seven, &repo.debs[0], &repo.repo);
    // Agent 6 on Python 3: its whole Python 2.7 is removed while the package streams, so
    // those distributions are known only by their directory names.
    let six = repo.compile("six", &cache, &[("DD_AGENT_MAJOR_VERSION", "6"), ("DD_PYTHON_VERSION", "3")]);
    check_sbom(&six, &repo.debs[1], &repo.repo);
    let sbom = sbom_of(&six);
    let py2: Vec<&Value> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["evidence"]["occurrences"][0]["location"].as_str().is_some_and(|l| l.contains("/python2.7/")))
        .collect();
    assert_eq!(py2.len(), PYTHON_DISTS.len());
    for c in py2 {
        assert_eq!((property(c, "ddslug:recipe"), property(c, "ddslug:recipe:rules")), (Some("removed"), Some("python2")), "{c:#}");
        assert!(c.get("licenses").is_none(), "a removed distribution's METADATA is never read: {c:#}");
    }
}

#[test]
fn identical_inputs_give_identical_sboms() {
    let repo = Repo::serve();
    let (cache_a, cache_b) = (repo.fresh("cache-a"), repo.fresh("cache-b"));
    let a = repo.compile("a", &cache_a, &[]);
    let b = repo.compile("b", &cache_b, &[]);
    let bytes = fs::read(a.join(".ddslug/sbom.cdx.json")).unwrap();
    assert_eq!(bytes, fs::read(b.join(".ddslug/sbom.cdx.json")).unwrap(), "two caches, one SBOM");
    // A warm build (the layer reused: only its stored inventory is rendered) gives it too, and
    // so does a build as a user who is not root, in a cache of its own.
    let warm = repo.compile("warm", &cache_a, &[]);
    assert_eq!(bytes, fs::read(warm.join(".ddslug/sbom.cdx.json")).unwrap(), "cold and warm");
    // The warm build copied what the store kept; one rendered for another lock or ddslug
    // version (another serial number) is rendered again from the layer's inventory.
    let key = sbom_of(&a)["metadata"]["properties"][0]["value"].as_str().unwrap().to_string();
    let kept = cache_a.join(format!("ddslug/v1/layers/{key}.cdx.json"));
    assert_eq!(fs::read(&kept).unwrap(), bytes);
    let serial = sbom_of(&a)["serialNumber"].as_str().unwrap().to_string();
    let other = String::from_utf8(bytes.clone()).unwrap().replace(&serial, "urn:uuid:00000000-0000-8000-8000-000000000000");
    fs::write(&kept, other).unwrap();
    let again = repo.compile("again", &cache_a, &[]);
    assert_eq!(bytes, fs::read(again.join(".ddslug/sbom.cdx.json")).unwrap(), "rendered again");
    assert_eq!(fs::read(&kept).unwrap(), bytes, "and kept again");
    // Without its inventory a stored layer is incomplete: it is built again.
    fs::remove_file(cache_a.join(format!("ddslug/v1/layers/{key}.sbom.json"))).unwrap();
    fs::remove_file(&kept).unwrap();
    let rebuilt = repo.compile("rebuilt", &cache_a, &[]);
    assert_eq!(bytes, fs::read(rebuilt.join(".ddslug/sbom.cdx.json")).unwrap(), "after a rebuild of the layer");
    assert!(cache_a.join(format!("ddslug/v1/layers/{key}.sbom.json")).is_file(), "the layer was built again, with its inventory");
    let (build, cache) = (repo.fresh("build-user"), repo.fresh("cache-user"));
    let out = bin_compile_unprivileged(&build, &cache, &repo.env("user", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bytes, fs::read(build.join(".ddslug/sbom.cdx.json")).unwrap(), "not root");
    assert!(!String::from_utf8_lossy(&bytes).contains("timestamp"), "no timestamps");
    // Other settings: another layer, another SBOM, another serial number.
    let other = repo.compile("other", &cache_a, &[("DD_APM_ENABLED", "false")]);
    let (one, two) = (sbom_of(&a), sbom_of(&other));
    assert_ne!(one["serialNumber"], two["serialNumber"]);
    assert_eq!(one["components"], two["components"], "the same package declares the same components");
}

#[test]
fn an_edited_sbom_is_caught() {
    let repo = Repo::serve();
    let cache = repo.fresh("cache");
    let build = repo.compile("edit", &cache, &[]);
    let path = build.join(".ddslug/sbom.cdx.json");
    let rebuild = |build: &Path| ddslug(&["verify", build.to_str().unwrap(), "--rebuild", "--cache", cache.to_str().unwrap(), "--offline"]);
    let out = rebuild(&build);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("the rebuilt layer's SBOM is the slug's, byte for byte"), "{}", text(&out));
    let original = fs::read(&path).unwrap();
    let mut doc = sbom_of(&build);
    // The validator rejects what the schema forbids (so its silence above means something)...
    doc["components"][0]["type"] = "not-a-type".into();
    assert!(!schema_errors(&doc).is_empty(), "the schema check can fail");
    // ...and verify and `ddslug sbom` reject an SBOM edited after the build.
    doc["components"][0]["type"] = "library".into();
    doc["components"][0]["version"] = "0.0.1".into();
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = ddslug(&["verify", build.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(".ddslug/sbom.cdx.json (the SBOM) changed"), "{}", text(&out));
    let out = ddslug(&["sbom", build.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("changed after the build") && out.stdout.is_empty(), "{}", text(&out));
    // An SBOM forged together with the manifest's record of it passes verify, but not the
    // rebuild from the locked blobs.
    let forged = Sha256::of(&fs::read(&path).unwrap()).hex();
    let manifest_path = build.join(".ddslug/manifest.json");
    let mut manifest: Value = serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    manifest["sbom_sha256"] = forged.into();
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let out = ddslug(&["verify", build.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rebuild(&build);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("! the rebuilt layer's SBOM differs from .ddslug/sbom.cdx.json"), "{}", text(&out));
    fs::remove_file(&path).unwrap();
    let out = ddslug(&["verify", build.to_str().unwrap()]);
    assert!(text(&out).contains(".ddslug/sbom.cdx.json (the SBOM) is missing"), "{}", text(&out));
    fs::write(&path, original).unwrap();
    assert!(!ddslug(&["sbom", build.to_str().unwrap()]).status.success(), "the manifest still records the forged SBOM");
}

#[test]
fn a_cnb_build_writes_the_same_sbom_beside_its_agent_layer() {
    let repo = Repo::serve();
    let cedar = repo.compile("cedar", &repo.fresh("cache"), &[]);
    let root = repo.fresh("cnb");
    let mut lc = ddslug_testsupport::lifecycle::Lifecycle::new(&root, Path::new(env!("CARGO_MANIFEST_DIR")), "amd64").unwrap();
    lc.vars.push(("DDSLUG_BIN".into(), DDSLUG.into()));
    lc.set_env("DD_APT_REPO_URL", &repo.server.url()).unwrap();
    lc.set_env("DD_APT_KEYRING", repo.keyring.to_str().unwrap()).unwrap();
    // The driver checks the file's name against buildpack.toml's sbom-formats.
    let built = lc.build().unwrap();
    assert!(built.build.status.success(), "{}", text(&built.build));
    let cnb = fs::read(lc.layers().join("agent.sbom.cdx.json")).unwrap();
    assert_eq!(cnb, fs::read(cedar.join(".ddslug/sbom.cdx.json")).unwrap(), "one lock, one SBOM, Cedar or CNB");
    // A rebuild that keeps the layer keeps the SBOM the lifecycle restored with it.
    let kept = lc.build().unwrap();
    assert!(kept.build.status.success() && text(&kept.build).contains("Keeping the agent layer"), "{}", text(&kept.build));
    assert_eq!(fs::read(lc.layers().join("agent.sbom.cdx.json")).unwrap(), cnb, "restored and kept");
    // Other settings replace the layer, and its SBOM with one for the new contents.
    lc.set_env("DD_APM_ENABLED", "false").unwrap();
    let built = lc.build().unwrap();
    assert!(built.build.status.success(), "{}", text(&built.build));
    let replaced: Value = serde_json::from_slice(&fs::read(lc.layers().join("agent.sbom.cdx.json")).unwrap()).unwrap();
    let options = replaced["metadata"]["properties"].as_array().unwrap().iter().find(|p| p["name"] == "ddslug:options").unwrap();
    assert_eq!(options["value"], "major=7 python=3 apm=false process_agent=false");
    assert!(schema_errors(&replaced).is_empty());
}

#[test]
fn metadata_behind_symlinks_is_never_read() {
    // Records that lead out of the tree: a dist-info that is a symlink to /etc, METADATA and
    // RECORD that are symlinks to files outside, and a version manifest that is one too.
    let site = "opt/datadog-agent/embedded/lib/python3.12/site-packages";
    let repo = Repo::serve_with(|d| {
        let mut d = d.symlink(&format!("{site}/evil-6.6.6.dist-info"), "/etc");
        d = d.symlink(&format!("{site}/sneaky-1.0.dist-info/METADATA"), "/etc/passwd");
        d = d.symlink(&format!("{site}/sneaky-1.0.dist-info/RECORD"), "../../../../../../../etc/passwd");
        d.entries.retain(|(p, _)| p != b"opt/datadog-agent/version-manifest.json");
        d.symlink("opt/datadog-agent/version-manifest.json", "/etc/os-release")
    });
    let build = repo.compile("links", &repo.fresh("cache"), &[]);
    let sbom = sbom_of(&build);
    assert!(schema_errors(&sbom).is_empty());
    let text = serde_json::to_string(&sbom).unwrap();
    assert!(!text.contains("root:") && !text.contains("PRETTY_NAME"), "nothing read through a link: {text}");
    let component = |name: &str| sbom["components"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("{name}"));
    let evil = component("evil");
    assert_eq!((evil["version"].as_str(), property(&evil, "ddslug:recipe")), (Some("6.6.6"), Some("kept")), "named by its directory");
    assert!(evil.get("licenses").is_none());
    assert_eq!(component("sneaky")["version"], "1.0");
    assert!(!text.contains("pkg:generic/"), "no Omnibus components from a linked manifest");
}

/// A Go executable built by Debian's Go (`golang-go`, which `.ci/run` installs) from a
/// module `example.com/agent` that requires `example.com/lib v1.4.2` (served by a file-based
/// module proxy, so the build records its go.sum checksum) and `example.com/forked v0.3.0`
/// (replaced by a directory), and what `go version -m` prints of it.
fn go_executable(dir: &Path) -> (Vec<u8>, String) {
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    // The proxy: a module zip holds its files under `<module>@<version>/`.
    let lib_mod = "module example.com/lib\n\ngo 1.19\n";
    write("proxy/example.com/lib/@v/list", "v1.4.2\n");
    write("proxy/example.com/lib/@v/v1.4.2.info", r#"{"Version":"v1.4.2","Time":"2024-01-02T03:04:05Z"}"#);
    write("proxy/example.com/lib/@v/v1.4.2.mod", lib_mod);
    let zipped = Command::new("python3")
        .args(["-c", "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nz.writestr('example.com/lib@v1.4.2/go.mod', sys.argv[2])\nz.writestr('example.com/lib@v1.4.2/lib.go', 'package lib\\n\\nfunc Name() string { return \"lib\" }\\n')\nz.close()"])
        .arg(dir.join("proxy/example.com/lib/@v/v1.4.2.zip"))
        .arg(lib_mod)
        .output()
        .unwrap();
    assert!(zipped.status.success(), "{}", text(&zipped));
    write("src/fork/go.mod", "module example.com/forked\n\ngo 1.19\n");
    write("src/fork/fork.go", "package forked\n\nfunc Name() string { return \"fork\" }\n");
    write(
        "src/agent/go.mod",
        "module example.com/agent\n\ngo 1.19\n\nrequire (\n\texample.com/forked v0.3.0\n\texample.com/lib v1.4.2\n)\n\nreplace example.com/forked => ../fork\n",
    );
    write("src/agent/main.go", "package main\n\nimport (\n\t\"example.com/forked\"\n\t\"example.com/lib\"\n)\n\nfunc main() { println(lib.Name(), forked.Name()) }\n");
    let go = |args: &[&str]| {
        let out = Command::new("go")
            .args(args)
            .current_dir(dir.join("src/agent"))
            .env("GOPROXY", format!("file://{}", dir.join("proxy").display()))
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "on")
            .output()
            .expect("go runs (Debian package golang-go; .ci/run installs it)");
        assert!(out.status.success(), "go {args:?}: {}", text(&out));
        out
    };
    go(&["build", "-trimpath", "-o", "agent", "."]);
    let printed = String::from_utf8(go(&["version", "-m", "agent"]).stdout).unwrap();
    (fs::read(dir.join("src/agent/agent")).unwrap(), printed)
}

#[test]
fn go_modules_in_the_agents_executables_are_listed_as_go_prints_them() {
    let work = tempfile::tempdir().unwrap();
    let (exe, printed) = go_executable(work.path());
    let agent = "opt/datadog-agent/bin/agent/agent";
    let probe = "opt/datadog-agent/embedded/bin/system-probe";
    // The Go executable replaces the fixture's agent, and system-probe (which the recipe removes).
    let repo = Repo::serve_with(|mut d| {
        d.entries.retain(|(path, _)| path != agent.as_bytes() && path != probe.as_bytes());
        d.file(agent, 0o755, exe.clone()).file(probe, 0o755, exe.clone())
    });
    let cache = repo.fresh("cache");
    let build = repo.compile("go", &cache, &[]);
    let sbom = sbom_of(&build);
    assert_eq!(schema_errors(&sbom), Vec::<String>::new());
    // What `go version -m` printed: "<file>: go1.x.y", then "\t<kind>\t<fields...>" lines.
    let go_version = printed.lines().next().unwrap().rsplit(' ').next().unwrap().to_string();
    let mut expected: Vec<(String, String, Option<String>, Option<String>)> = vec![("stdlib".into(), go_version.clone(), None, None)];
    for line in printed.lines().skip(1) {
        let fields: Vec<&str> = line.trim_start_matches('\t').split('\t').collect();
        match fields.as_slice() {
            ["dep", path, version, rest @ ..] => expected.push((path.to_string(), version.to_string(), rest.first().filter(|s| !s.is_empty()).map(|s| s.to_string()), None)),
            ["=>", path, rest @ ..] => {
                let version = rest.first().filter(|v| !v.is_empty()).map_or(String::new(), |v| format!(" {v}"));
                expected.last_mut().unwrap().3 = Some(format!("{path}{version}"));
            }
            _ => {}
        }
    }
    expected.sort();
    assert_eq!(expected.len(), 3, "stdlib and two modules: {printed}");
    assert!(expected.iter().any(|e| e.0 == "example.com/lib" && e.2.as_deref().is_some_and(|s| s.starts_with("h1:"))), "{printed}");
    let listed: Vec<&Value> = sbom["components"].as_array().unwrap().iter().filter(|c| c["purl"].as_str().is_some_and(|p| p.starts_with("pkg:golang/"))).collect();
    let mut got: Vec<(String, String, Option<String>, Option<String>)> = listed
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("name"), s("version"), property(c, "ddslug:go:sum").map(str::to_string), property(c, "ddslug:go:replaced-by").map(str::to_string))
        })
        .collect();
    got.sort();
    assert_eq!(got, expected, "{printed}");
    for c in &listed {
        // Found in the agent only: system-probe was removed while the package streamed.
        assert_eq!(c["evidence"]["occurrences"], serde_json::json!([{ "location": agent }]), "{c:#}");
        assert_eq!(property(c, "ddslug:recipe"), Some("kept"));
        let version = c["version"].as_str().unwrap();
        let purl_version = if c["name"] == "stdlib" { version.trim_start_matches("go") } else { version };
        assert_eq!(c["purl"].as_str().unwrap(), format!("pkg:golang/{}@{purl_version}", c["name"].as_str().unwrap()));
        assert_eq!(c["bom-ref"], c["purl"]);
    }
    // The main module, built from a checkout, is the agent itself: not a component.
    assert!(printed.contains("\tmod\texample.com/agent\t(devel)"), "{printed}");
    assert!(!listed.iter().any(|c| c["name"] == "example.com/agent"));
    // A rebuild from the same inputs gives the same SBOM.
    let first = fs::read(build.join(".ddslug/sbom.cdx.json")).unwrap();
    let again = repo.compile("go-again", &repo.fresh("cache-again"), &[]);
    assert_eq!(fs::read(again.join(".ddslug/sbom.cdx.json")).unwrap(), first);
    // And as a user who is not root, as Heroku builds.
    let (user_build, user_cache) = (repo.fresh("build-go-user"), repo.fresh("cache-go-user"));
    let out = bin_compile_unprivileged(&user_build, &user_cache, &repo.env("go-user", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read(user_build.join(".ddslug/sbom.cdx.json")).unwrap(), first, "not root");
    // A layer stored by a ddslug from before Go modules were listed (its inventory,
    // `<key>.sbom.json`, has none, and no SBOM is rendered yet): a warm build reads them from
    // the stored tree.
    let layers = cache.join("ddslug/v1/layers");
    let mut edited = 0;
    for entry in fs::read_dir(&layers).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".cdx.json") {
            fs::remove_file(&path).unwrap();
        } else if name.ends_with(".sbom.json") {
            let mut inventory: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            assert!(inventory["go"].as_array().is_some_and(|go| go.len() == 1), "{inventory:#}");
            inventory.as_object_mut().unwrap().remove("go");
            fs::write(&path, serde_json::to_vec(&inventory).unwrap()).unwrap();
            edited += 1;
        }
    }
    assert_eq!(edited, 1);
    let warm = repo.fresh("build-go-warm");
    let out = bin_compile(&warm, &cache, &repo.env("go-warm", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read(warm.join(".ddslug/sbom.cdx.json")).unwrap(), first);
}
