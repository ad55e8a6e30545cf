//! `ddslug image`: a slug's agent as an OCI image layout (image-spec 1.1) holding one layer:
//! `/app/.apt/...`, `/app/.profile.d/datadog.sh` and `/app/.ddslug/` (the binary, the
//! manifest, the entry list, the SBOM and whatever else the build put there).
//!
//! Reproducible: the layer follows [`super::tarball`]'s rules with every mtime clamped to
//! the package's time ([`package_time`]); the config, manifest and index are canonical JSON
//! (keys sorted, no whitespace) with no build time in them (`created` is the package's
//! time). The same lock and recipe give the same layer, config and manifest digests.
//!
//! Contract: the slug is only read, and must be what its manifest says (the caller checks it
//! with [`crate::slug::verify`]). The layout directory is written through directory
//! descriptors ([`crate::fsat::Dir`]): blobs go to a temp file of a fresh name and are renamed
//! to their digest; `index.json` is replaced whole, keeping the other images it lists.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_DESCRIPTION, ANNOTATION_REF_NAME, ANNOTATION_TITLE, ANNOTATION_VERSION, Arch, ConfigBuilder, Descriptor,
    DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};

use super::tarball::{LayerBlob, LayerTree, TarballError};
use crate::buildpack::classic::AGENT_WRAPPER_PATH;
use crate::fsat::Dir;
use crate::hash::Sha256;
use crate::slug::manifest::Manifest;

/// Where the slug goes in the image: Heroku's HOME.
pub const APP: &str = "/app";
/// The largest `index.json` of an existing layout read (ours are a few hundred bytes).
pub const MAX_INDEX_BYTES: u64 = 4 << 20;
/// Label and annotation keys of ddslug's own (the `org.opencontainers.image.*` ones too).
pub const LABEL_AGENT_VERSION: &str = "ddslug.agent.version";
pub const LABEL_LAYER_KEY: &str = "ddslug.layer.key";
pub const LABEL_TREE_HASH: &str = "ddslug.tree.hash";
pub const LABEL_DDSLUG_VERSION: &str = "ddslug.version";

/// What was written.
#[derive(Clone, Debug)]
pub struct ImageWritten {
    pub tag: String,
    pub manifest_digest: Sha256,
    pub manifest_size: u64,
    pub config_digest: Sha256,
    pub layer_digest: Sha256,
    pub layer_diff_id: Sha256,
    pub layer_size: u64,
    /// Seconds since the epoch: the package's time, every mtime's upper bound.
    pub created: i64,
}

/// The default tag: the agent's version without its epoch (`7.81.2-1`), made a valid tag.
pub fn default_tag(manifest: &Manifest) -> String {
    let version = manifest.lock.packages.first().map(|p| p.version.as_str()).unwrap_or("latest");
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    let tag: String = version.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    tag.trim_start_matches(['.', '-']).chars().take(128).collect()
}

/// Whether `tag` is a tag as the distribution spec allows: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The slug's time for mtimes: the newest mtime among the files and symlinks below `.apt`
/// that came from the package as it is (all but the agent-wrapper and the pkg-config files
/// ddslug rewrote, which carry the build's time). Every entry of the image is clamped to it.
pub fn package_time(tree: &LayerTree, manifest: &Manifest) -> Option<i64> {
    let apt = format!("{}/.apt/", &APP[1..]);
    let written: Vec<String> = std::iter::once(AGENT_WRAPPER_PATH.to_string()).chain(manifest.pkgconfig.iter().cloned()).map(|p| format!("{apt}{p}")).collect();
    tree.newest_mtime(apt.as_bytes(), |path| written.iter().any(|w| w.as_bytes() == path))
}

/// Writes the image of the slug in `build_dir` (whose manifest is `manifest`) into the OCI
/// layout at `layout` (made if missing) under `tag`.
pub fn write_image(build_dir: &Path, manifest: &Manifest, layout: &Path, tag: &str) -> Result<ImageWritten> {
    if !valid_tag(tag) {
        bail!("--tag {tag:?} is not a valid tag: use letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-')");
    }
    let app = &APP[1..];
    let at = |rel: &str| format!("{app}/{rel}").into_bytes();
    let mut tree = LayerTree::new();
    // What the build made (not the package's tree below .apt) gets modes no umask decides;
    // mtimes are all clamped to the package's time below.
    tree.add_dir(app.as_bytes(), 0o755, 0)?;
    tree.add_tree(&at(".apt"), &build_dir.join(".apt")).map_err(unreadable)?;
    tree.set_mode(&at(".apt"), 0o755);
    tree.add_dir(&at(".profile.d"), 0o755, 0)?;
    tree.add_file(&at(".profile.d/datadog.sh"), &build_dir.join(".profile.d/datadog.sh")).map_err(unreadable)?;
    tree.add_tree(&at(".ddslug"), &build_dir.join(".ddslug")).map_err(unreadable)?;
    tree.normalize_modes(&at(".profile.d"));
    tree.normalize_modes(&at(".ddslug"));
    let created = package_time(&tree, manifest).ok_or_else(|| anyhow!("{}/.apt holds no file from the package", build_dir.display()))?;
    tree.set_mtime(app.as_bytes(), created);
    tree.set_mtime(&at(".profile.d"), created);

    std::fs::create_dir_all(layout).with_context(|| format!("creating the OCI layout directory {}", layout.display()))?;
    let root = Dir::open_given(layout).with_context(|| format!("opening {}", layout.display()))?;
    let fresh = check_layout(&root, layout)?;
    let written = write_into(&root, layout, &tree, manifest, tag, created);
    if written.is_err() && fresh {
        // The directory was empty: leave it so (a layout existing before keeps its index,
        // and at worst a blob nothing lists).
        let _ = root.remove_all(OsStr::new("blobs"));
    }
    written
}

/// Writes the blobs, then `oci-layout` and `index.json` (replaced whole, last).
fn write_into(root: &Dir, layout: &Path, tree: &LayerTree, manifest: &Manifest, tag: &str, created: i64) -> Result<ImageWritten> {
    let blobs = root.make_dirs_beneath(Path::new("blobs/sha256")).with_context(|| format!("{}/blobs/sha256", layout.display()))?;
    let blobs_path = layout.join("blobs/sha256");

    let layer = write_layer_blob(tree, created, &blobs, &blobs_path)?;
    let config = config_json(manifest, &layer, created)?;
    let config_digest = put_blob(&blobs, &blobs_path, &config)?;
    let annotations = annotations(manifest, created);
    let image_manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_digest, config.len() as u64, None)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer.digest, layer.size, None)?])
        .annotations(annotations.into_iter().collect::<std::collections::HashMap<_, _>>())
        .build()?;
    let manifest_json = canonical(&image_manifest)?;
    let manifest_digest = put_blob(&blobs, &blobs_path, &manifest_json)?;

    let mut index = read_index(root, layout)?;
    let entry = descriptor(MediaType::ImageManifest, &manifest_digest, manifest_json.len() as u64, Some(tag))?;
    // Other images the layout lists stay; one of the same tag is replaced.
    let mut listed = index.manifests().clone();
    listed.retain(|d| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)).is_none_or(|t| t != tag));
    listed.push(entry);
    index.set_manifests(listed);
    root.write_via(OsStr::new("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644, root).with_context(|| format!("{}/oci-layout", layout.display()))?;
    root.write_via(OsStr::new("index.json"), &canonical(&index)?, 0o644, root).with_context(|| format!("{}/index.json", layout.display()))?;
    Ok(ImageWritten {
        tag: tag.to_string(),
        manifest_digest,
        manifest_size: manifest_json.len() as u64,
        config_digest,
        layer_digest: layer.digest,
        layer_diff_id: layer.diff_id,
        layer_size: layer.size,
        created,
    })
}

/// A slug entry this user may not read (a package's 0000 directory or file, when not root)
/// named with what to do.
fn unreadable(e: TarballError) -> anyhow::Error {
    match &e {
        TarballError::Io { error, .. } if error.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow!("{e}; the image holds every file of the slug: run ddslug image as root or as a user who may read them all")
        }
        _ => e.into(),
    }
}

/// Refuses a directory that holds something but is not an OCI layout; `true` when empty.
fn check_layout(root: &Dir, layout: &Path) -> Result<bool> {
    let entries = root.entries().with_context(|| format!("listing {}", layout.display()))?;
    if !entries.is_empty() && !entries.iter().any(|(name, _)| name == "oci-layout") {
        bail!("--oci-layout {}: the directory is neither empty nor an OCI image layout (no oci-layout file); give a new or empty directory", layout.display());
    }
    Ok(entries.is_empty())
}

/// The layout's `index.json`, or an empty index when there is none.
fn read_index(root: &Dir, layout: &Path) -> Result<ImageIndex> {
    let path = layout.join("index.json");
    let file = match root.open_regular(OsStr::new("index.json")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(Vec::new()).build()?);
        }
        other => other.with_context(|| path.display().to_string())?,
    };
    let mut bytes = Vec::new();
    file.take(MAX_INDEX_BYTES + 1).read_to_end(&mut bytes).with_context(|| path.display().to_string())?;
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        bail!("{} is larger than {MAX_INDEX_BYTES} bytes, ddslug's limit for an image index; give a new directory", path.display());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not an OCI image index; give a new directory", path.display()))
}

/// Writes the layer into a temp file in `blobs` and renames it to its digest.
fn write_layer_blob(tree: &LayerTree, created: i64, blobs: &Dir, blobs_path: &Path) -> Result<LayerBlob> {
    let (temp, file) = blobs.create_temp(".layer.", 0o644).with_context(|| format!("creating a temp file in {}", blobs_path.display()))?;
    let written = (|| -> Result<LayerBlob> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let layer = tree.write(&mut out, created).map_err(unreadable)?;
        out.flush().context("writing the layer")?;
        let file = out.into_inner().map_err(|e| e.into_error()).context("writing the layer")?;
        file.sync_all().context("writing the layer")?;
        blobs.rename(&temp, blobs, OsStr::new(&layer.digest.hex())).with_context(|| format!("naming the layer {}", layer.digest))?;
        Ok(layer)
    })();
    if written.is_err() {
        let _ = blobs.remove_all(&temp);
    }
    written.with_context(|| format!("writing the layer into {}", blobs_path.display()))
}

/// Writes `bytes` as the blob named by their digest.
fn put_blob(blobs: &Dir, blobs_path: &Path, bytes: &[u8]) -> Result<Sha256> {
    let digest = Sha256::of(bytes);
    blobs.write_via(OsStr::new(&digest.hex()), bytes, 0o644, blobs).with_context(|| format!("{}/{}", blobs_path.display(), digest.hex()))?;
    Ok(digest)
}

fn descriptor(media_type: MediaType, digest: &Sha256, size: u64, tag: Option<&str>) -> Result<Descriptor> {
    let digest: Digest = format!("sha256:{}", digest.hex()).parse()?;
    let mut d = DescriptorBuilder::default().media_type(media_type).digest(digest).size(size);
    if let Some(tag) = tag {
        d = d.annotations([(ANNOTATION_REF_NAME.to_string(), tag.to_string())].into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    Ok(d.build()?)
}

/// Labels of the config and annotations of the manifest: what the image holds.
fn annotations(manifest: &Manifest, created: i64) -> BTreeMap<String, String> {
    let agent = manifest.lock.packages.first();
    let version = agent.map(|p| p.version.clone()).unwrap_or_default();
    let name = agent.map(|p| p.name.clone()).unwrap_or_default();
    BTreeMap::from([
        (ANNOTATION_TITLE.to_string(), format!("{name} (ddslug)")),
        (ANNOTATION_DESCRIPTION.to_string(), format!("{name} {version}, stripped by ddslug, at {APP}: COPY --from this image {APP}/ {APP}/")),
        (ANNOTATION_VERSION.to_string(), version.clone()),
        (ANNOTATION_CREATED.to_string(), rfc3339(created)),
        (LABEL_AGENT_VERSION.to_string(), version),
        (LABEL_LAYER_KEY.to_string(), manifest.layer_key.hex()),
        (LABEL_TREE_HASH.to_string(), manifest.tree_hash.to_string()),
        (LABEL_DDSLUG_VERSION.to_string(), manifest.ddslug_version.clone()),
    ])
}

/// The image config: platform, the environment the agent's tools need at `/app`, labels,
/// the layer's diff_id.
fn config_json(manifest: &Manifest, layer: &LayerBlob, created: i64) -> Result<Vec<u8>> {
    let env = crate::runtime::Env::from_iter([("HOME".to_string(), APP.to_string())]);
    let paths = crate::runtime::Paths::from_env(&env);
    let apt = paths.apt.display();
    let vars = vec![
        format!("PATH={apt}/usr/bin:{}:{APP}/.ddslug/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", paths.bin_dir.display()),
        format!("HOME={APP}"),
        format!("DD_BIN_DIR={}", paths.bin_dir.display()),
        format!("DATADOG_CONF={}", paths.datadog_yaml().display()),
        format!("DD_AGENT_MAJOR_VERSION={}", manifest.lock.options.major),
    ];
    let config = ConfigBuilder::default()
        .env(vars)
        .working_dir(APP)
        .labels(annotations(manifest, created).into_iter().collect::<std::collections::HashMap<_, _>>())
        .build()?;
    let image = ImageConfigurationBuilder::default()
        .created(rfc3339(created))
        .architecture(Arch::from(oci_arch(&manifest.lock.architecture)))
        .os(Os::Linux)
        .config(config)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![format!("sha256:{}", layer.diff_id.hex())]).build()?)
        .build()?;
    canonical(&image)
}

/// Debian's architecture name as Go's (GOARCH), which OCI uses.
fn oci_arch(debian: &str) -> &str {
    match debian {
        "i386" => "386",
        "armhf" | "armel" => "arm",
        "ppc64el" => "ppc64le",
        other => other,
    }
}

/// JSON with every object's keys sorted and no whitespace: the same value, the same bytes
/// (the OCI types keep annotations in hash maps, whose order varies from run to run).
pub fn canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    // serde_json's Map is a BTreeMap (its `preserve_order` feature is off): keys come out sorted.
    let value = serde_json::to_value(value).context("encoding JSON")?;
    serde_json::to_vec(&value).context("encoding JSON")
}

/// Seconds since the epoch as RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::apt::release::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn tags_from_versions_are_valid() {
        assert!(valid_tag("7.81.2-1") && valid_tag("_x") && valid_tag("latest"));
        for bad in ["", ".x", "-x", "a:b", "a/b", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn canonical_json_does_not_depend_on_insertion_order() {
        let pairs: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let forward: std::collections::HashMap<_, _> = pairs.iter().cloned().collect();
        let backward: std::collections::HashMap<_, _> = pairs.iter().rev().cloned().collect();
        let a = canonical(&ConfigBuilder::default().labels(forward).build().unwrap()).unwrap();
        let b = canonical(&ConfigBuilder::default().labels(backward).build().unwrap()).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with(r#"{"Labels":{"k0":"v0","k1":"v1","k10":"v10""#), "{text}");
    }
}
