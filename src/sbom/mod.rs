//! Software bills of materials: CycloneDX 1.6 JSON for every install.
//!
//! API (shared by the Cedar slug and the CNB layer):
//!
//! ```text
//! sbom::for_stored_layer(&store, &lock, &layer_info) -> Result<Vec<u8>, SbomError>
//! sbom::for_layer(&lock, &layer_info, &inventory) -> Vec<u8>
//! ```
//!
//! give the bytes of the SBOM for the layer `layer_info` (a [`LayerInfo`], as
//! [`crate::store::layer::build`] or [`crate::store::layer::load`] return it) built from `lock`.
//! `for_stored_layer` takes them from the store when it rendered them before for the same
//! layer, lock and ddslug version (`layers/<key>.cdx.json`: a warm build only copies them),
//! else renders them from the layer's inventory and keeps them there; `for_layer` renders.
//! Cedar writes them to `BUILD_DIR/.ddslug/sbom.cdx.json` (its SHA-256 goes into the manifest,
//! so `verify` catches an edit); a CNB writes them to `<layers>/agent.sbom.cdx.json`.
//!
//! What it lists:
//! - `metadata.component`: the agent package (name, version, architecture, the .deb's
//!   SHA-256, purl `pkg:deb/datadog/<name>@<version>?arch=<arch>`); further packages of the
//!   lock, if any, as components;
//! - one component per Python distribution the package ships (`*.dist-info`, `*.egg-info`):
//!   name, version and licence from its `METADATA` / `PKG-INFO`, purl `pkg:pypi/<name>@<version>`,
//!   where it was found (`evidence.occurrences`);
//! - one component per piece of software Omnibus built into the package, as its build manifest
//!   `opt/datadog-agent/version-manifest.json` names them (name, version, licence; Omnibus
//!   writes that file into the install directory);
//! - one component per Go module compiled into the agent's executables that the layer keeps,
//!   as the build information the Go linker embeds names it ([`gobuild`]): module path,
//!   version, purl `pkg:golang/<path>@<version>`, its go.sum checksum and replacement as
//!   properties, and the executables holding it; and each Go release they were built with as
//!   `stdlib` (`pkg:golang/stdlib@<release>`).
//!
//! Each component has the property `ddslug:recipe`: `kept` (in the layer), `removed` (the
//! strip recipe took it out; also `scope: excluded`) or `unmapped` (Omnibus entries: the
//! manifest names no files, so what the recipe did to them is not known). A Python
//! distribution is `removed` when its `.dist-info` is gone, or when every top-level name its
//! `RECORD` lists was removed (the recipe removes `site-packages/kubernetes` and leaves
//! `kubernetes-*.dist-info`); `ddslug:recipe:rules` names the rules that removed any of it.
//!
//! What the package's files say is gathered once, while the layer is built
//! ([`collect`]), and stored beside the layer's record (`layers/<key>.sbom.json`): no later
//! build reads a .deb or a tree for it. A distribution the recipe removes while the
//! package streams is never written, so its `METADATA` is never read (reading it would
//! decode the xz blocks the unpacker skips): its name and version come from the directory
//! name (`<name>-<version>.dist-info`), and it has no licence.
//!
//! Deterministic: no timestamps; the serial number is a name-based UUID (version 8, SHA-256,
//! as RFC 9562 B.2 describes) of the layer key, the lock, this ddslug's version and what it
//! lists ([`FORMAT`]);
//! components are sorted by `bom-ref`. Identical inputs give byte-identical SBOMs.

pub mod collect;
pub mod gobuild;
pub mod omnibus;

use std::ffi::OsStr;

use serde::Serialize;

use crate::hash::Sha256;
use crate::slug::manifest::Lock;
use crate::store::layer::LayerInfo;

pub use collect::{Collector, Inventory, License, OmnibusSoftware, PythonDist, SbomError, inventory};
pub use gobuild::GoBinary;

/// What this ddslug lists (2: Go modules too); a part of the serial number, so that an SBOM
/// rendered by a ddslug of the same version that listed less is rendered again.
const FORMAT: u32 = 2;
/// The CycloneDX version written.
pub const SPEC_VERSION: &str = "1.6";
/// The media type a CNB declares for these files (`sbom-formats` in buildpack.toml).
pub const MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";
/// The file name in a slug's `.ddslug`.
pub const SLUG_FILE: &str = "sbom.cdx.json";

/// The largest SBOM read back from a slug or the store (the real agent's is a few hundred KB).
pub const MAX_SLUG_SBOM: u64 = 64 << 20;
/// The largest inventory read back from the store.
pub const MAX_INVENTORY: u64 = 64 << 20;

/// The name of a layer's inventory in the store's `layers/`.
pub fn inventory_file(key: &Sha256) -> String {
    format!("{}.sbom.json", key.hex())
}

/// The name of a layer's last rendered SBOM in the store's `layers/`.
fn rendered_file(key: &Sha256) -> String {
    format!("{}.cdx.json", key.hex())
}

/// The SBOM of the stored layer `info` built from `lock`: the one rendered before for the
/// same layer, lock and ddslug version (its serial number says which), else rendered now
/// from the layer's inventory (in `info` for a layer just built, else `<key>.sbom.json`) and
/// kept for the next build. Files are read and written through the store's directory
/// descriptors (no symlink followed), within [`MAX_SLUG_SBOM`] and [`MAX_INVENTORY`].
pub fn for_stored_layer(store: &crate::store::Store, lock: &Lock, info: &LayerInfo) -> Result<Vec<u8>, SbomError> {
    let layers = store.dir("layers")?;
    let path_of = |name: &str| store.root().join("layers").join(name);
    let serial = serial_number(lock, info);
    let rendered = rendered_file(&info.key);
    if let Some(bytes) = read_regular(&layers, &rendered, MAX_SLUG_SBOM, &path_of(&rendered))? {
        // The serial number, near the top, names the layer, the lock and the writer.
        let head = &bytes[..bytes.len().min(512)];
        if head.windows(serial.len()).any(|w| w == serial.as_bytes()) {
            return Ok(bytes);
        }
    }
    let mut inventory = match &info.components {
        Some(inventory) => inventory.clone(),
        None => {
            let name = inventory_file(&info.key);
            let path = path_of(&name);
            let bytes = read_regular(&layers, &name, MAX_INVENTORY, &path)?
                .ok_or_else(|| SbomError::Io { path: path.clone(), error: std::io::Error::other("missing or larger than ddslug's limit; run the build again (the layer is rebuilt)") })?;
            serde_json::from_slice(&bytes).map_err(|e| SbomError::Io { path, error: std::io::Error::other(e) })?
        }
    };
    if inventory.go.is_none() {
        // Made by a ddslug from before Go modules were listed: read them from the stored tree.
        let hex = info.key.hex();
        let tree = layers.dir_beneath(std::path::Path::new(&hex)).map_err(|error| SbomError::Io { path: path_of(&hex), error })?;
        inventory.go = Some(gobuild::binaries(&tree, &path_of(&hex), &mut inventory.notes)?);
    }
    let bytes = for_layer(lock, info, &inventory);
    // Written under tmp/ (cleared by the next build if this one dies), then renamed into place.
    store.put("layers", &rendered, &bytes)?;
    Ok(bytes)
}

/// The regular file `name` in `dir` (never a symlink), if there and at most `limit` bytes.
fn read_regular(dir: &crate::fsat::Dir, name: &str, limit: u64, path: &std::path::Path) -> Result<Option<Vec<u8>>, SbomError> {
    use std::io::Read;
    let file = match dir.open_regular(OsStr::new(name)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(SbomError::Io { path: path.to_owned(), error: e }),
        Err(_) => return Ok(None),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|error| SbomError::Io { path: path.to_owned(), error })?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The SBOM of the slug at `build_dir` (`.ddslug/sbom.cdx.json`), once its SHA-256 matched
/// what the slug's manifest records: an edited SBOM is an error, not an answer.
pub fn read_from_slug(build_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use crate::slug::manifest::{Bounded, read_bounded, read_manifest};
    let manifest = read_manifest(&build_dir.join(".ddslug/manifest.json"))?;
    let path = build_dir.join(".ddslug").join(SLUG_FILE);
    let Some(recorded) = manifest.sbom_sha256 else {
        anyhow::bail!(
            "{}: the slug's manifest records no SBOM: it was built by a ddslug from before SBOMs. Build the app again \
             to get one",
            build_dir.display()
        );
    };
    let bytes = match read_bounded(&path, MAX_SLUG_SBOM) {
        Ok(bytes) => bytes,
        Err(Bounded::Io(e)) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Err(Bounded::TooBig) => anyhow::bail!("{} is larger than {MAX_SLUG_SBOM} bytes, more than any SBOM ddslug writes", path.display()),
    };
    let digest = Sha256::of(&bytes);
    if digest != recorded {
        anyhow::bail!(
            "{} changed after the build: its SHA-256 is {digest}; the manifest records {recorded}. \
             `ddslug verify {}` lists what else changed; build the app again for a true SBOM",
            path.display(),
            build_dir.display()
        );
    }
    Ok(bytes)
}

/// The SBOM of the layer `info` built from `lock`, whose package's files declare
/// `inventory`, as pretty JSON with a trailing newline.
pub fn for_layer(lock: &Lock, info: &LayerInfo, inventory: &Inventory) -> Vec<u8> {
    let bom = document(lock, info, inventory);
    let mut bytes = serde_json::to_vec_pretty(&bom).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[derive(Serialize)]
struct Bom {
    #[serde(rename = "bomFormat")]
    bom_format: &'static str,
    #[serde(rename = "specVersion")]
    spec_version: &'static str,
    #[serde(rename = "serialNumber")]
    serial_number: String,
    version: u32,
    metadata: Metadata,
    components: Vec<Component>,
    dependencies: Vec<Dependency>,
}

#[derive(Serialize)]
struct Metadata {
    tools: Tools,
    component: Component,
    properties: Vec<Property>,
}

#[derive(Serialize)]
struct Tools {
    components: Vec<Component>,
}

#[derive(Serialize, Default)]
struct Component {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref", skip_serializing_if = "String::is_empty")]
    bom_ref: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<Hash>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    licenses: Vec<LicenseChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<Evidence>,
}

#[derive(Serialize)]
struct Hash {
    alg: &'static str,
    content: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum LicenseChoice {
    License { license: NamedLicense },
    Expression { expression: String },
}

#[derive(Serialize)]
struct NamedLicense {
    name: String,
}

#[derive(Serialize)]
struct Property {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
struct Evidence {
    occurrences: Vec<Occurrence>,
}

#[derive(Serialize)]
struct Occurrence {
    location: String,
}

#[derive(Serialize)]
struct Dependency {
    #[serde(rename = "ref")]
    of: String,
    #[serde(rename = "dependsOn")]
    depends_on: Vec<String>,
}

fn property(name: &'static str, value: impl Into<String>) -> Property {
    Property { name, value: value.into() }
}

fn document(lock: &Lock, info: &LayerInfo, inventory: &Inventory) -> Bom {
    let arch = lock.architecture.as_str();
    let mut debs = lock.packages.iter().map(|p| Component {
        kind: "application",
        bom_ref: deb_purl(&p.name, &p.version, arch),
        name: p.name.clone(),
        version: Some(p.version.clone()),
        hashes: vec![Hash { alg: "SHA-256", content: p.sha256.hex() }],
        purl: Some(deb_purl(&p.name, &p.version, arch)),
        properties: vec![property("ddslug:arch", arch), property("ddslug:filename", p.filename.as_str()), property("ddslug:recipe", "kept")],
        ..Component::default()
    });
    let agent = debs.next().unwrap_or_else(|| Component { kind: "application", name: "datadog-agent".into(), ..Component::default() });
    let mut components: Vec<Component> = debs.collect();
    components.extend(inventory.python.iter().map(python_component));
    components.extend(inventory.omnibus.iter().map(omnibus_component));
    components.extend(go_components(inventory.go.as_deref().unwrap_or_default()));
    components.sort_by(|a, b| a.bom_ref.cmp(&b.bom_ref));
    // bom-refs are unique by construction (paths, names in one JSON object, purls of one
    // lock); a lock naming one package twice is the one way to repeat one.
    components.dedup_by(|a, b| a.bom_ref == b.bom_ref);
    let depends_on = components.iter().filter(|c| c.scope != Some("excluded")).map(|c| c.bom_ref.clone()).collect();
    let o = &lock.options;
    let mut properties = vec![
        property("ddslug:layer-key", info.key.hex()),
        property("ddslug:tree-hash", info.tree_hash.to_string()),
        property("ddslug:recipe-sha256", lock.recipe_sha256.hex()),
        property("ddslug:repository", without_userinfo(&lock.repository)),
        property("ddslug:suite", lock.suite.as_str()),
        property("ddslug:component", lock.component.as_str()),
        property("ddslug:signed-by", lock.signed_by.as_str()),
        property("ddslug:options", format!("major={} python={} apm={} process_agent={}", o.major, o.python, o.apm, o.process_agent)),
    ];
    properties.extend(inventory.notes.iter().map(|n| property("ddslug:note", n.as_str())));
    let tool = Component { kind: "application", name: "ddslug".into(), version: Some(env!("CARGO_PKG_VERSION").into()), ..Component::default() };
    Bom {
        bom_format: "CycloneDX",
        spec_version: SPEC_VERSION,
        serial_number: serial_number(lock, info),
        version: 1,
        dependencies: vec![Dependency { of: agent.bom_ref.clone(), depends_on }],
        metadata: Metadata { tools: Tools { components: vec![tool] }, component: agent, properties },
        components,
    }
}

fn recipe_properties(status: &'static str, rules: &[String]) -> Vec<Property> {
    let mut properties = vec![property("ddslug:recipe", status)];
    if !rules.is_empty() {
        properties.push(property("ddslug:recipe:rules", rules.join(",")));
    }
    properties
}

fn python_component(d: &PythonDist) -> Component {
    let licenses = match &d.license {
        Some(License::Expression(e)) => vec![LicenseChoice::Expression { expression: e.clone() }],
        Some(License::Name(n)) => vec![LicenseChoice::License { license: NamedLicense { name: n.clone() } }],
        None => Vec::new(),
    };
    Component {
        kind: "library",
        bom_ref: format!("ddslug:{}", d.path),
        name: d.name.clone(),
        version: Some(d.version.clone()),
        scope: (!d.kept).then_some("excluded"),
        licenses,
        purl: Some(format!("pkg:pypi/{}@{}", purl_encode(&pypi_normalize(&d.name)), purl_encode(&d.version))),
        properties: recipe_properties(if d.kept { "kept" } else { "removed" }, &d.rules),
        evidence: Some(Evidence { occurrences: vec![Occurrence { location: d.path.clone() }] }),
        ..Component::default()
    }
}

fn omnibus_component(s: &OmnibusSoftware) -> Component {
    Component {
        kind: "library",
        bom_ref: format!("ddslug:{}#{}", s.manifest, s.name),
        name: s.name.clone(),
        version: s.version.clone(),
        licenses: s.license.iter().map(|l| LicenseChoice::License { license: NamedLicense { name: l.clone() } }).collect(),
        purl: Some(match &s.version {
            Some(v) => format!("pkg:generic/{}@{}", purl_encode(&s.name), purl_encode(v)),
            None => format!("pkg:generic/{}", purl_encode(&s.name)),
        }),
        properties: recipe_properties("unmapped", &[]),
        evidence: Some(Evidence { occurrences: vec![Occurrence { location: s.manifest.clone() }] }),
        ..Component::default()
    }
}

/// One component per Go module (by path and version) of the executables `binaries`, and one
/// per Go release they were built with (`stdlib`), each with the executables it is in. A
/// main module built from a checkout (`(devel)`) is the agent itself, not a component.
fn go_components(binaries: &[GoBinary]) -> Vec<Component> {
    /// A module's checksum, replacement and the executables holding it.
    #[derive(Default)]
    struct Seen {
        sum: Option<String>,
        replaced_by: Option<String>,
        locations: Vec<String>,
    }
    let mut modules: std::collections::BTreeMap<(String, String), Seen> = std::collections::BTreeMap::new();
    for binary in binaries {
        let stdlib = ("stdlib".to_string(), binary.go_version.split_whitespace().next().unwrap_or("").to_string());
        modules.entry(stdlib).or_default().locations.push(binary.path.clone());
        for m in binary.modules.iter().filter(|m| !(m.main && m.version == "(devel)")) {
            let seen = modules.entry((m.path.clone(), m.version.clone())).or_default();
            seen.sum = seen.sum.take().or_else(|| m.sum.clone());
            seen.replaced_by = seen.replaced_by.take().or_else(|| m.replaced_by.clone());
            seen.locations.push(binary.path.clone());
        }
    }
    modules
        .into_iter()
        .map(|((path, version), Seen { sum, replaced_by, locations })| {
            let purl_version = if path == "stdlib" { gobuild::release_number(&version).to_string() } else { version.clone() };
            let purl = format!("pkg:golang/{}@{}", path.split('/').map(purl_encode).collect::<Vec<_>>().join("/"), purl_encode(&purl_version));
            let mut properties = recipe_properties("kept", &[]);
            properties.extend(sum.map(|s| property("ddslug:go:sum", s)));
            properties.extend(replaced_by.map(|r| property("ddslug:go:replaced-by", r)));
            Component {
                kind: "library",
                bom_ref: purl.clone(),
                name: path,
                version: Some(version),
                purl: Some(purl),
                properties,
                evidence: Some(Evidence { occurrences: locations.into_iter().map(|location| Occurrence { location }).collect() }),
                ..Component::default()
            }
        })
        .collect()
}

/// The package URL of a Debian package from Datadog's repository.
pub fn deb_purl(name: &str, version: &str, arch: &str) -> String {
    format!("pkg:deb/datadog/{}@{}?arch={}", purl_encode(name), purl_encode(version), purl_encode(arch))
}

/// A PyPI name as package URLs and indexes compare it (PEP 503: lowercase, runs of `-`, `_`
/// and `.` as one `-`).
pub fn pypi_normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Percent-encodes a package URL component: everything but ASCII letters, digits and
/// `.-_~:` (a Debian epoch's `:` may stay as it is).
pub fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL without `user:password@`: a private mirror's credentials stay out of the SBOM.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A name-based UUID (version 8 with SHA-256, RFC 9562 appendix B.2) of what decides the
/// SBOM: the layer key, the lock, this ddslug's version and [`FORMAT`].
fn serial_number(lock: &Lock, info: &LayerInfo) -> String {
    let lock_json = serde_json::to_vec(lock).unwrap_or_default();
    let name = format!("ddslug-sbom\0{}\0{FORMAT}\0{}\0{}", env!("CARGO_PKG_VERSION"), info.key.hex(), Sha256::of(&lock_json).hex());
    let mut b = Sha256::of(name.as_bytes()).0;
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!("urn:uuid:{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_are_encoded_and_normalized() {
        assert_eq!(deb_purl("datadog-agent", "1:7.81.2-1", "amd64"), "pkg:deb/datadog/datadog-agent@1:7.81.2-1?arch=amd64");
        assert_eq!(deb_purl("libstdc++6", "1.0+b1", "arm64"), "pkg:deb/datadog/libstdc%2B%2B6@1.0%2Bb1?arch=arm64");
        assert_eq!(pypi_normalize("Zope.Interface__x"), "zope-interface-x");
        assert_eq!(purl_encode("1.0 beta/2@x"), "1.0%20beta%2F2%40x");
    }

    #[test]
    fn credentials_stay_out() {
        assert_eq!(without_userinfo("https://u:secret@repo.invalid/apt"), "https://repo.invalid/apt");
        assert_eq!(without_userinfo("http://127.0.0.1:8080/a@b"), "http://127.0.0.1:8080/a@b");
        assert_eq!(without_userinfo("not a url"), "not a url");
    }
}
