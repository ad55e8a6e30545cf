//! `ddslug image --push REF`: copies one image of an OCI layout to a registry, through the
//! registry client of the shared layer cache ([`super::registry`]): each blob is HEADed
//! first and uploaded only when missing, then the manifest is put under its tag.
//!
//! Contract: only what the layout's own manifest lists is sent, each blob read from the
//! layout within the size its descriptor gives and checked against its digest before the
//! manifest that names it is put (the registry checks the digest too). Credentials come
//! from `DD_REGISTRY_USER` / `DD_REGISTRY_PASSWORD`, else the Docker `config.json`; they are
//! never printed.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};

use super::image::MAX_INDEX_BYTES;
use super::registry::{BlobRef, Credentials, Registry, RepoRef};
use crate::fsat::Dir;
use crate::hash::Sha256;

/// The largest manifest read from a layout (ours are about a kilobyte).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Where to push: a repository and a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRef {
    pub repo: RepoRef,
    pub tag: Option<String>,
}

/// Parses `host[:port]/repository[:tag]` (`--push`'s value). http only for 127.0.0.1 and
/// localhost, or with `insecure`.
pub fn parse_ref(value: &str, insecure: bool) -> Result<PushRef> {
    let (path, tag) = match value.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((name, tag)) => (format!("{head}/{name}"), Some(tag.to_string())),
            None => (value.to_string(), None),
        },
        None => (value.to_string(), None),
    };
    if let Some(tag) = &tag
        && !super::image::valid_tag(tag)
    {
        bail!("--push {value:?}: the tag {tag:?} is not valid: use letters, digits, '_', '.' and '-'");
    }
    let repo = RepoRef::parse(&path, "--push", insecure).map_err(|e| anyhow!("{e} (a tag may follow as :TAG; --insecure allows plain http)"))?;
    Ok(PushRef { repo, tag })
}

/// Credentials for `host`: `DD_REGISTRY_USER` and `DD_REGISTRY_PASSWORD`, else the Docker
/// `config.json` (`$DOCKER_CONFIG` or `~/.docker`), else none.
pub fn credentials(host: &str) -> Result<Option<Credentials>> {
    match (std::env::var("DD_REGISTRY_USER").ok(), std::env::var("DD_REGISTRY_PASSWORD").ok()) {
        (Some(user), Some(password)) => return Ok(Some(Credentials { user, password })),
        (Some(_), None) => bail!("DD_REGISTRY_USER is set, so DD_REGISTRY_PASSWORD (the password or token) must be too"),
        (None, Some(_)) => bail!("DD_REGISTRY_PASSWORD is set, so DD_REGISTRY_USER must be too"),
        (None, None) => {}
    }
    let dir = std::env::var_os("DOCKER_CONFIG").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    match dir {
        Some(dir) => Ok(Credentials::from_docker_config(&dir.join("config.json"), host)?),
        None => Ok(None),
    }
}

/// Pushes the image tagged `tag` in the layout at `layout` to `registry` under `push_tag`;
/// returns the manifest's digest and how many blobs were uploaded (the others were there).
pub fn push(layout: &Path, tag: &str, registry: &Registry, push_tag: &str) -> Result<(Sha256, usize)> {
    let root = Dir::open_given(layout).with_context(|| format!("opening {}", layout.display()))?;
    let index: ImageIndex = serde_json::from_slice(&read_bounded(&root, layout, "index.json", MAX_INDEX_BYTES)?)
        .with_context(|| format!("{}/index.json is not an OCI image index", layout.display()))?;
    let entry = index
        .manifests()
        .iter()
        .find(|d| d.annotations().as_ref().and_then(|a| a.get(oci_spec::image::ANNOTATION_REF_NAME)).is_some_and(|t| t == tag))
        .ok_or_else(|| anyhow!("{}/index.json has no image tagged {tag:?}", layout.display()))?;
    let blobs = root.dir_beneath(Path::new("blobs/sha256")).with_context(|| format!("{}/blobs/sha256", layout.display()))?;
    let blobs_path = layout.join("blobs/sha256");
    let manifest_ref = blob_ref(entry.digest().digest(), entry.size())?;
    let manifest_bytes = read_checked(&blobs, &blobs_path, manifest_ref, MAX_MANIFEST_BYTES)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).with_context(|| format!("{}/{} is not an OCI image manifest", blobs_path.display(), manifest_ref.digest.hex()))?;
    let mut uploaded = 0;
    for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let blob = blob_ref(d.digest().digest(), d.size())?;
        let name = blob.digest.hex();
        let path = blobs_path.join(&name);
        // Checked before anything is sent: a damaged layout is not pushed.
        check_blob(&blobs, &path, &name, blob)?;
        let mut open = || -> std::io::Result<Box<dyn Read>> { Ok(Box::new(blobs.open_regular(OsStr::new(&name))?.take(blob.size))) };
        if registry.push_blob(blob, &mut open).with_context(|| format!("pushing {} to {}", path.display(), registry.repo))? {
            uploaded += 1;
        }
    }
    let media_type = MediaType::ImageManifest.to_string();
    let digest = registry.put_manifest(push_tag, &media_type, &manifest_bytes).with_context(|| format!("putting the manifest {push_tag} to {}", registry.repo))?;
    Ok((digest, uploaded))
}

fn blob_ref(hex: &str, size: u64) -> Result<BlobRef> {
    Ok(BlobRef { digest: hex.parse().map_err(|e| anyhow!("a descriptor's digest {hex:?}: {e}"))?, size })
}

fn read_bounded(dir: &Dir, dir_path: &Path, name: &str, limit: u64) -> Result<Vec<u8>> {
    let path = dir_path.join(name);
    let file = dir.open_regular(OsStr::new(name)).with_context(|| path.display().to_string())?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| path.display().to_string())?;
    if bytes.len() as u64 > limit {
        bail!("{} is larger than {limit} bytes, ddslug's limit for it", path.display());
    }
    Ok(bytes)
}

/// A small blob whole, checked against its descriptor.
fn read_checked(blobs: &Dir, blobs_path: &Path, blob: BlobRef, limit: u64) -> Result<Vec<u8>> {
    let bytes = read_bounded(blobs, blobs_path, &blob.digest.hex(), limit.min(blob.size))?;
    if bytes.len() as u64 != blob.size || Sha256::of(&bytes) != blob.digest {
        bail!("{}/{} does not hold the {} bytes its descriptor gives; the layout is damaged: write it again", blobs_path.display(), blob.digest.hex(), blob.size);
    }
    Ok(bytes)
}

/// Hashes a blob of the layout and compares it with its descriptor.
fn check_blob(blobs: &Dir, path: &Path, name: &str, blob: BlobRef) -> Result<()> {
    let mut file = blobs.open_regular(OsStr::new(name)).with_context(|| path.display().to_string())?.take(blob.size + 1);
    let mut h = crate::hash::Hasher::new();
    h.update_from(&mut file, &mut vec![0u8; 1 << 17]).with_context(|| path.display().to_string())?;
    if h.len() != blob.size || h.finish() != blob.digest {
        bail!("{} does not hold the {} bytes its descriptor gives; the layout is damaged: write it again", path.display(), blob.size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        let r = parse_ref("127.0.0.1:5000/team/agent:7.81.2-1", false).unwrap();
        assert_eq!((r.repo.scheme, r.repo.host.as_str(), r.repo.repository.as_str(), r.tag.as_deref()), ("http", "127.0.0.1:5000", "team/agent", Some("7.81.2-1")));
        let r = parse_ref("registry.example.com/agent", false).unwrap();
        assert_eq!((r.repo.scheme, r.tag), ("https", None));
        let e = parse_ref("127.0.0.1:5000/agent:bad/tag", false).unwrap_err().to_string();
        assert!(e.contains("--push"), "{e}");
        let e = parse_ref("127.0.0.1:5000/agent:.x", false).unwrap_err().to_string();
        assert!(e.contains("not valid"), "{e}");
        assert!(parse_ref("http://registry.example.com/agent", false).is_err());
        assert_eq!(parse_ref("http://registry.example.com/agent", true).unwrap().repo.scheme, "http");
    }
}
