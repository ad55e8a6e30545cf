//! Layers shared through an OCI registry (`DD_CACHE_REGISTRY`): before building a layer the
//! local store lacks, a build looks it up by its layer key, pulls it, verifies it and
//! installs it into the store; after building one, it pushes it.
//!
//! A shared layer is an OCI 1.1 artifact, tagged `layer-<layer key>` in the repository:
//!
//! ```text
//! manifest  application/vnd.oci.image.manifest.v1+json, artifactType application/vnd.ddslug.layer.v1
//!   config  application/vnd.ddslug.layer.record.v1+json  the record: key, inputs, tree hash, counts,
//!                                                        what the recipe removed, relocated pkg-config files,
//!                                                        the SBOM inventory
//!   layers  [application/vnd.oci.image.layer.v1.tar+zstd] the tree, as oci::tarball writes it (exact modes;
//!                                                        zstd frames of whole entries, whose sizes the
//!                                                        record lists; +gzip is read too)
//!   annotations  dev.ddslug.layer-key, dev.ddslug.tree-hash, dev.ddslug.signature (NAME:BASE64 over
//!                [`sign::statement`]: the layer key, the tree hash, both blobs' digests and sizes)
//! ```
//!
//! Contract: the registry is not trusted. A pulled layer is installed only when its
//! signature is valid and by a key in `DD_CACHE_TRUSTED_KEYS` (checked before any blob is
//! fetched), both blobs match the digests and sizes the signed manifest gives, its record
//! names exactly the inputs this build wants, and the tree unpacked (through the .deb
//! unpacker's safe, bounded path into a staging directory; frame by frame on every core when
//! the record lists frames that add up to the blob) hashes to the signed tree hash;
//! otherwise nothing is stored. Any fault (registry down, refused, missing, slow, wrong)
//! costs one warning line and the build goes on from the apt repository; a failed push
//! costs one warning line too. Two builders pushing one layer at once both upload the same
//! content-addressed blobs before their manifest, so the tag ends on one complete artifact.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{Descriptor, Digest, ImageManifest, ImageManifestBuilder, MediaType};

use crate::fetch::Limits;
use crate::hash::Sha256;
use crate::oci::registry::{BlobRef, Credentials, Registry, RegistryError, RepoRef};
use crate::oci::sign::{self, PublicKey, SecretKey};
use crate::oci::tarball::Compressor;
use crate::report::Reporter;
use crate::store::Store;
use crate::store::layer::{self, LayerInfo, LayerInputs};
use crate::store::layerindex::LayerIndex;
use crate::store::treehash::TreeHash;
use crate::unpack::ar::Compression;
use crate::unpack::extract::DirModes;
use crate::unpack::recipe::RuleOutcome;

/// The artifact type of a shared layer's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.ddslug.layer.v1";
/// The media type of its record (the manifest's config).
pub const RECORD_TYPE: &str = "application/vnd.ddslug.layer.record.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const KEY_ANNOTATION: &str = "dev.ddslug.layer-key";
pub const TREE_HASH_ANNOTATION: &str = "dev.ddslug.tree-hash";
pub const SIGNATURE_ANNOTATION: &str = "dev.ddslug.signature";
/// The largest record read (a real one is a few KB).
const RECORD_LIMIT: u64 = 16 << 20;
/// The largest layer blob read (the agent's is about 60 MB).
const LAYER_LIMIT: u64 = 8 << 30;
/// Frames a layer blob is read in, at most (the bench's agent layer has 24).
const MAX_FRAMES: usize = 1 << 16;
/// Decompressed bytes accepted beyond the file bytes the record gives (tar headers of
/// up to a million entries, padding).
const TAR_OVERHEAD: u64 = 1 << 30;

/// The shared cache settings (`DD_CACHE_*`), validated by [`crate::config`].
#[derive(Clone)]
pub struct CacheSettings {
    pub repo: RepoRef,
    pub credentials: Option<Credentials>,
    pub trusted: Vec<PublicKey>,
    pub signing: Option<Arc<SecretKey>>,
}

impl fmt::Debug for CacheSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials and the signing key are never printed.
        let signing = self.signing.as_ref().map(|k| k.name.as_str());
        write!(f, "CacheSettings({}, user {:?}, {} trusted keys, signing key {signing:?})", self.repo, self.credentials.as_ref().map(|c| &c.user), self.trusted.len())
    }
}

/// What a shared layer's config blob says about it: everything a build takes from a layer
/// besides its tree (the manifest of a slug records it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub key: Sha256,
    pub inputs: LayerInputs,
    pub tree_hash: TreeHash,
    pub files: u64,
    pub bytes: u64,
    pub removed: Vec<RuleOutcome>,
    pub pkgconfig: Vec<String>,
    /// What the package's files declare (the SBOM's inventory), as the pushing builder read
    /// it while unpacking the .deb: a pulled layer's SBOM says what a built one's would.
    pub components: crate::sbom::Inventory,
    /// Bytes of each zstd frame of the layer blob, in order: frames hold whole entries, so
    /// a pull unpacks them on every core. Absent from records of builders before it (their
    /// blobs are one frame, unpacked as one stream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<u64>,
}

/// The tag a layer is shared under.
pub fn tag_for(key: &Sha256) -> String {
    format!("layer-{}", key.hex())
}

/// Why a shared layer was not used or not pushed: one line for the build log.
#[derive(Debug)]
pub enum Miss {
    /// The registry does not have it (the normal first build).
    Absent,
    Registry(RegistryError),
    /// The artifact is not what a shared layer is, or does not match this build.
    Garbage(String),
    Untrusted(sign::Untrusted),
    Install(String),
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Absent => write!(f, "it is not there yet"),
            Miss::Registry(e) => write!(f, "{e}"),
            Miss::Garbage(why) => write!(f, "what it holds under that tag is not a usable ddslug layer ({why})"),
            Miss::Untrusted(why) => write!(f, "{why}"),
            Miss::Install(why) => write!(f, "the layer did not install ({why})"),
        }
    }
}

impl From<RegistryError> for Miss {
    fn from(e: RegistryError) -> Self {
        Miss::Registry(e)
    }
}

/// A registry used as a shared layer cache.
pub struct SharedCache {
    registry: Registry,
    trusted: Vec<PublicKey>,
    signing: Option<Arc<SecretKey>>,
}

impl SharedCache {
    pub fn new(settings: &CacheSettings, limits: Limits) -> SharedCache {
        SharedCache {
            registry: Registry::new(settings.repo.clone(), settings.credentials.clone(), limits),
            trusted: settings.trusted.clone(),
            signing: settings.signing.clone(),
        }
    }

    /// The registry client (for `ddslug image --push`, which shares its settings).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Pulls, verifies and stores the layer of `inputs`. `None` (after one line saying why
    /// and what to do) when the registry has no usable one: the caller builds it.
    pub fn pull(&self, store: &Store, inputs: &LayerInputs, report: &Reporter) -> Option<(LayerInfo, LayerIndex)> {
        let key = inputs.key();
        let short = &key.hex()[..12];
        if self.trusted.is_empty() {
            report.warn(&format!(
                "shared layer cache {}: not looking up layer {short}: DD_CACHE_TRUSTED_KEYS is empty, so no pulled layer could be trusted; \
                 set it to the public keys of the builders that push (`ddslug cache keygen` makes a pair)",
                self.registry.repo
            ));
            return None;
        }
        report.topic(&format!("Looking up layer {short} in {}", self.registry.repo));
        let t = std::time::Instant::now();
        match self.try_pull(store, inputs) {
            Ok((info, index, signer, took)) => {
                report.detail(&format!(
                    "pulled and verified in {} ({} blob {}{} downloaded, unpacked and hashed in {}, stored in {}; signed by {}, tree hash {})",
                    crate::report::seconds(t.elapsed()),
                    took.blob_kind,
                    crate::report::bytes(took.blob_bytes),
                    took.frames.map_or(String::new(), |n| format!(" in {n} frames")),
                    crate::report::seconds(took.unpack),
                    crate::report::seconds(took.store),
                    signer.name,
                    info.tree_hash
                ));
                Some((info, index))
            }
            Err(Miss::Absent) => {
                report.detail(&format!("not in {} yet: building it from the apt repository", self.registry.repo));
                None
            }
            Err(miss) => {
                report.warn(&format!(
                    "shared layer cache {}: layer {short} not used: {miss}; building it from the apt repository instead",
                    self.registry.repo
                ));
                None
            }
        }
    }

    fn try_pull(&self, store: &Store, inputs: &LayerInputs) -> Result<(LayerInfo, LayerIndex, PublicKey, Took), Miss> {
        let key = inputs.key();
        let Some((_, bytes)) = self.registry.get_manifest(&tag_for(&key), &[MANIFEST_TYPE])? else { return Err(Miss::Absent) };
        let artifact = Artifact::parse(&bytes).map_err(Miss::Garbage)?;
        if artifact.key != key {
            return Err(Miss::Garbage(format!("it is annotated as layer {}", artifact.key)));
        }
        // Trust first: nothing is downloaded for a layer no trusted key vouches for.
        let statement = sign::statement(&key, &artifact.tree_hash, (&artifact.layer.digest, artifact.layer.size), (&artifact.record.digest, artifact.record.size));
        let signer = sign::check(artifact.signature.as_deref(), &statement, &self.trusted).map_err(Miss::Untrusted)?;
        let record_bytes = self.registry.get_blob_bytes(artifact.record, RECORD_LIMIT)?.ok_or_else(|| Miss::Garbage("its record blob is missing".into()))?;
        let record: Record = serde_json::from_slice(&record_bytes).map_err(|e| Miss::Garbage(format!("its record is not a ddslug layer record: {e}")))?;
        if record.key != key || record.inputs != *inputs || record.tree_hash != artifact.tree_hash {
            return Err(Miss::Garbage("its record describes another layer".into()));
        }
        let staging = store.staging("pull").map_err(|e| Miss::Install(e.to_string()))?;
        let result = self.fetch_and_install(store, &staging, &artifact, record);
        let removed = staging.remove().map_err(|e| Miss::Install(e.to_string()));
        let (info, index, took) = result?;
        removed?;
        Ok((info, index, signer, took))
    }

    fn fetch_and_install(&self, store: &Store, staging: &crate::store::Staging, artifact: &Artifact, record: Record) -> Result<(LayerInfo, LayerIndex, Took), Miss> {
        let t = std::time::Instant::now();
        let install = |e: &dyn fmt::Display| Miss::Install(e.to_string());
        let limit = record.bytes.saturating_add(TAR_OVERHEAD);
        let left = AtomicU64::new(limit);
        let label = format!("shared layer {}", &record.key.hex()[..12]);
        let tree = staging.path.join("tree");
        // Made and filled through the staging directory's descriptor, never by path.
        let tree_dir = staging.dir.make_dirs_beneath(Path::new("tree")).map_err(|e| install(&format!("{}: {e}", tree.display())))?;
        let frames = record.frames.len() > 1 && artifact.compression == Compression::Zstd;
        let (report, deferred) = if frames {
            (self.unpack_frames(staging, artifact, &record.frames, (tree_dir, &tree), &label, (&left, limit))?, Vec::new())
        } else {
            self.unpack_stream(artifact, (tree_dir, &tree), &label, (&left, limit))?
        };
        if !deferred.is_empty() || !report.skipped.is_empty() {
            return Err(Miss::Garbage("its layer has entries a ddslug layer never has".into()));
        }
        let unpack = t.elapsed();
        let inputs = record.inputs.clone();
        let (info, index) = layer::store_tree(store, staging, &inputs, record.removed, record.pkgconfig, record.components, &report.digests, &report.dir_modes, Some(record.tree_hash))
            .map_err(|e| install(&e))?;
        let took = Took { blob_kind: artifact.compression.name(), frames: frames.then_some(record.frames.len()), blob_bytes: artifact.layer.size, unpack, store: t.elapsed() - unpack };
        Ok((info, index, took))
    }

    /// Unpacks the layer blob as one stream as it arrives: downloading, decompressing (a
    /// thread each) and writing overlap. It is used only if all of it then matches its
    /// signed digest (the download checks that at its end); until then only the staging
    /// directory holds it.
    fn unpack_stream(
        &self,
        artifact: &Artifact,
        tree: (crate::fsat::Dir, &Path),
        label: &str,
        (left, limit): (&AtomicU64, u64),
    ) -> Result<(crate::unpack::deb::UnpackReport, Vec<crate::unpack::extract::Deferred>), Miss> {
        let (tx, rx) = std::sync::mpsc::sync_channel(ARRIVING_CHUNKS);
        let (recycle, recycled) = std::sync::mpsc::channel();
        let (downloaded, unpacked) = std::thread::scope(|scope| {
            let download = scope.spawn(move || {
                let mut sink = Arriving { tx: Some(tx), recycled };
                self.registry.get_blob(artifact.layer, LAYER_LIMIT, &mut sink)
            });
            let body = io::BufReader::with_capacity(1 << 17, crate::unpack::deb::ChunkReader::new(rx, recycle));
            let unpacked = (|| {
                // gzip's own CRC adds nothing to the blob's digest. zstd's decoder refuses a
                // window over its default limit (128 MiB), as for a .deb.
                let decompressed: Box<dyn Read + Send> = match artifact.compression {
                    Compression::Gzip => Box::new(crate::unpack::tarstream::gzip_unchecked(body)?),
                    other => crate::unpack::tarstream::decompressor(other, body)?,
                };
                crate::unpack::deb::pipelined(Box::new(Bounded { inner: decompressed, left, limit }), |tar| crate::unpack::extract::unpack_tar_into(tar, tree, label, None, DirModes::Stored))
                    .map_err(|e| io::Error::other(e.to_string()))
            })();
            (download.join(), unpacked)
        });
        settle(downloaded, unpacked)
    }

    /// Unpacks a blob of several zstd frames (each whole entries; sizes from the signed
    /// record) on every core: the blob is downloaded into the staging directory, and each
    /// worker decodes and writes the next frame as soon as its bytes are there. Used only if
    /// all of it then matches its signed digest, as [`SharedCache::unpack_stream`].
    fn unpack_frames(
        &self,
        staging: &crate::store::Staging,
        artifact: &Artifact,
        frames: &[u64],
        tree: (crate::fsat::Dir, &Path),
        label: &str,
        (left, limit): (&AtomicU64, u64),
    ) -> Result<crate::unpack::deb::UnpackReport, Miss> {
        let total = frames.iter().try_fold(0u64, |sum, &f| if f == 0 { None } else { sum.checked_add(f) });
        if frames.len() > MAX_FRAMES || total != Some(artifact.layer.size) {
            return Err(Miss::Garbage(format!("its record's {} frame sizes do not describe its {}-byte layer blob", frames.len(), artifact.layer.size)));
        }
        let starts: Vec<u64> = frames.iter().scan(0u64, |at, &f| Some(std::mem::replace(at, *at + f))).collect();
        let name = std::ffi::OsStr::new(BLOB_FILE);
        let at = |e: io::Error| Miss::Install(format!("{}: {e}", staging.path.join(BLOB_FILE).display()));
        // Written through one descriptor, read through another (the writer's is write-only).
        let (blob, reading) = staging.dir.create_new(name, 0o600).and_then(|w| Ok((w, staging.dir.open_regular(name)?))).map_err(at)?;
        let progress = crate::fetch::Progress::default();
        let (downloaded, unpacked) = std::thread::scope(|scope| {
            let download = scope.spawn(|| {
                let mut sink = ToFile { file: &blob, written: 0, progress: &progress };
                let got = self.registry.get_blob(artifact.layer, LAYER_LIMIT, &mut sink);
                // Readers waiting for bytes that will not come stop here.
                progress.finish(matches!(got, Ok(true)));
                got
            });
            let open = |k: usize| -> io::Result<Box<dyn Read + Send + '_>> {
                // (zstd's decoder buffers what it reads itself.)
                let range = crate::fetch::FileRange { file: &reading, pos: starts[k], end: starts[k] + frames[k], growing: Some(&progress) };
                let frame = crate::unpack::tarstream::decompressor(Compression::Zstd, range)?;
                Ok(Box::new(Bounded { inner: frame, left, limit }))
            };
            let unpacked = crate::unpack::extract::unpack_tar_parts(frames.len(), &open, tree, label, DirModes::Stored);
            (download.join(), unpacked)
        });
        settle(downloaded, unpacked)
    }

    /// Pushes a layer just built: its tarball and record (each only when the registry
    /// lacks it), then the signed manifest under its tag. One warning line when it fails.
    pub fn push(&self, store: &Store, info: &LayerInfo, index: &LayerIndex, report: &Reporter) {
        let short = &info.key.hex()[..12];
        let Some(signing) = &self.signing else {
            report.detail(&format!("not pushing layer {short} to {}: DD_CACHE_SIGNING_KEY is not set (other builders only use signed layers)", self.registry.repo));
            return;
        };
        let t = std::time::Instant::now();
        match self.try_push(store, info, index, signing) {
            Ok((uploaded, packed)) => report.detail(&format!(
                "pushed layer {short} to {} in {} (tarball written in {}; {})",
                self.registry.repo,
                crate::report::seconds(t.elapsed()),
                crate::report::seconds(packed),
                if uploaded { "uploaded" } else { "the registry had its blobs already" }
            )),
            Err(e) => report.warn(&format!(
                "shared layer cache {}: could not push layer {short}: {e}; the build goes on (other builders will build it themselves)",
                self.registry.repo
            )),
        }
    }

    fn try_push(&self, store: &Store, info: &LayerInfo, index: &LayerIndex, signing: &SecretKey) -> Result<(bool, std::time::Duration), Miss> {
        let install = |e: &dyn fmt::Display| Miss::Install(e.to_string());
        let staging = store.staging("push").map_err(|e| install(&e))?;
        let result = (|| -> Result<(bool, std::time::Duration), Miss> {
            let blob_path = staging.path.join(BLOB_FILE);
            let t = std::time::Instant::now();
            let (layer, frames) = write_tarball(store, info, index, &staging, &blob_path).map_err(|e| install(&e))?;
            let packed = t.elapsed();
            // Stored with every layer built (format 5); a layer without is not pushed.
            let components = info.components.clone().ok_or_else(|| Miss::Install("the layer has no SBOM inventory".into()))?;
            let record = Record {
                components,
                key: info.key,
                inputs: info.inputs.clone(),
                tree_hash: info.tree_hash,
                files: info.files,
                bytes: info.bytes,
                removed: info.removed.clone(),
                pkgconfig: info.pkgconfig.clone(),
                frames,
            };
            let record_bytes = serde_json::to_vec(&record).map_err(|e| install(&e))?;
            let record_ref = BlobRef { digest: Sha256::of(&record_bytes), size: record_bytes.len() as u64 };
            let mut uploaded = self.registry.push_blob(layer, &mut || Ok(Box::new(staging.dir.open_regular(std::ffi::OsStr::new(BLOB_FILE))?) as Box<dyn Read>))?;
            let body = record_bytes.clone();
            uploaded |= self.registry.push_blob(record_ref, &mut || Ok(Box::new(io::Cursor::new(body.clone())) as Box<dyn Read>))?;
            let statement = sign::statement(&info.key, &info.tree_hash, (&layer.digest, layer.size), (&record_ref.digest, record_ref.size));
            let manifest = manifest_bytes(&info.key, &info.tree_hash, layer, record_ref, &signing.sign(&statement)).map_err(Miss::Garbage)?;
            self.registry.put_manifest(&tag_for(&info.key), MANIFEST_TYPE, &manifest)?;
            Ok((uploaded, packed))
        })();
        let removed = staging.remove();
        let uploaded = result?;
        removed.map_err(|e| install(&e))?;
        Ok(uploaded)
    }
}

/// What a pull's download and unpack threads came to. A join error is a panic in the download
/// thread: resumed here, as if it were ours. A download that failed explains an unpack that
/// failed with it (a truncated stream), so its error comes first.
fn settle<T>(downloaded: std::thread::Result<Result<bool, RegistryError>>, unpacked: Result<T, impl fmt::Display>) -> Result<T, Miss> {
    let downloaded = downloaded.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    if !downloaded? {
        return Err(Miss::Garbage("its layer blob is missing".into()));
    }
    unpacked.map_err(|e| Miss::Install(e.to_string()))
}

/// Where a pull's time went (for the build log and the benchmark).
struct Took {
    blob_kind: &'static str,
    /// How many frames were unpacked side by side (`None`: one stream).
    frames: Option<usize>,
    blob_bytes: u64,
    /// Downloading, decompressing, writing and hashing the files (overlapped).
    unpack: std::time::Duration,
    /// Checking the tree hash and storing the layer's index.
    store: std::time::Duration,
}

/// Chunks of a blob in flight between its download and its decompression (128 KiB each).
const ARRIVING_CHUNKS: usize = 16;

/// The download's end of a blob being unpacked as it arrives: chunks go to a
/// [`crate::unpack::deb::ChunkReader`] (in buffers it hands back). When the unpacker stops
/// reading (it failed, or what follows the tar is not needed) the rest is still downloaded,
/// and dropped: the blob's digest covers every byte.
struct Arriving {
    tx: Option<std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl io::Write for Arriving {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(tx) = &self.tx {
            let mut chunk = self.recycled.try_recv().unwrap_or_default();
            chunk.clear();
            chunk.extend_from_slice(bytes);
            if tx.send(Ok(chunk)).is_err() {
                self.tx = None;
            }
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a shared layer's tarball is compressed. Measured with the bench's agent tree (194 MB of
/// tar, 24,000 files; 2-core VM, release build): with gzip level 1 (flate2/zlib-rs) the blob was
/// 95.1 MB and a pull spent 1.3-1.5 s unpacking it, mostly inflating; with zstd level 3 the blob
/// is 68.7 MB and the pull's unpacking took 1.0 s. The command-line tools on the same tar agree:
/// `zstd -dc` 0.32 s against `gzip -dc` 1.46 s, and `zstd -3 -T1` 0.90 s against `gzip -1`
/// 4.16 s to compress. Fixed, so that every builder of a layer pushes the same bytes.
/// Cut into frames of 4 MiB of tar (a frame holding a bigger file is that file's size), so
/// that a pull decodes and writes frames on every core: the bench's blob is 24 frames and
/// 68.6 MB (one frame: 68.7 MB), and five by-hand pulls alternating with the one-stream
/// unpacker took 1.10-1.49 s (mean 1.23) against 1.14-1.51 s (mean 1.37).
const SHARED_COMPRESSOR: Compressor = Compressor::Zstd { level: 3, frame: 4 << 20 };

/// Writes the layer's tree as a reproducible tarball (exact directory modes from its
/// index) into `path`, a new file in `staging`.
fn write_tarball(store: &Store, info: &LayerInfo, index: &LayerIndex, staging: &crate::store::Staging, path: &Path) -> Result<(BlobRef, Vec<u64>), String> {
    let mut tree = crate::oci::tarball::LayerTree::new();
    tree.add_tree(b"", &layer::layer_dir(store, &info.key)).map_err(|e| e.to_string())?;
    for group in index.groups.iter().filter(|g| !g.is_root()) {
        tree.set_mode(index.rel(group), group.mode);
    }
    // Every mtime clamped to the package's own newest (as `ddslug image` does): what the build
    // wrote (the wrapper, relocated pkg-config files, directories the recipe changed) does not
    // carry the build's time, so every builder of a layer pushes the same bytes.
    let written: Vec<&[u8]> = std::iter::once(crate::buildpack::classic::AGENT_WRAPPER_PATH.as_bytes()).chain(info.pkgconfig.iter().map(|p| p.as_bytes())).collect();
    let clamp = tree.newest_mtime(b"", |path| written.contains(&path)).unwrap_or(i64::MAX);
    let file = staging.dir.create_new(std::ffi::OsStr::new(BLOB_FILE), 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
    let blob = tree.write_compressed(io::BufWriter::with_capacity(1 << 17, file), clamp, SHARED_COMPRESSOR).map_err(|e| e.to_string())?;
    Ok((BlobRef { digest: blob.digest, size: blob.size }, blob.frames))
}

fn digest_of(sha: &Sha256) -> Result<Digest, String> {
    format!("sha256:{sha}").parse::<Digest>().map_err(|e| e.to_string())
}

/// The manifest of a shared layer, as canonical JSON (keys sorted): the same layer, record
/// and signature give the same bytes.
fn manifest_bytes(key: &Sha256, tree_hash: &TreeHash, layer: BlobRef, record: BlobRef, signature: &str) -> Result<Vec<u8>, String> {
    let annotations: HashMap<String, String> = [
        (KEY_ANNOTATION.to_string(), format!("sha256:{key}")),
        (TREE_HASH_ANNOTATION.to_string(), tree_hash.to_string()),
        (SIGNATURE_ANNOTATION.to_string(), signature.to_string()),
    ]
    .into();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(ARTIFACT_TYPE.into()))
        .config(Descriptor::new(MediaType::Other(RECORD_TYPE.into()), record.size, digest_of(&record.digest)?))
        .layers(vec![Descriptor::new(SHARED_COMPRESSOR.media_type(), layer.size, digest_of(&layer.digest)?)])
        .annotations(annotations)
        .build()
        .map_err(|e| e.to_string())?;
    // Through a Value: serde_json's maps are sorted, the HashMap's order is not.
    let value = serde_json::to_value(&manifest).map_err(|e| e.to_string())?;
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

/// What a shared layer's manifest says, checked for shape.
#[derive(Debug)]
struct Artifact {
    key: Sha256,
    tree_hash: TreeHash,
    record: BlobRef,
    layer: BlobRef,
    /// How the layer blob is compressed (its media type).
    compression: Compression,
    signature: Option<String>,
}

impl Artifact {
    fn parse(bytes: &[u8]) -> Result<Artifact, String> {
        let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not an OCI image manifest: {}", crate::report::excerpt(&e.to_string(), 200)))?;
        if manifest.artifact_type().as_ref().map(|t| t.to_string()).as_deref() != Some(ARTIFACT_TYPE) {
            return Err(format!("its artifactType is not {ARTIFACT_TYPE}"));
        }
        let blob = |d: &Descriptor| -> Result<BlobRef, String> {
            let digest = d.as_digest_sha256().and_then(|hex| hex.parse::<Sha256>().ok()).ok_or("a blob digest is not sha256")?;
            Ok(BlobRef { digest, size: d.size() })
        };
        let config = manifest.config();
        if config.media_type().as_ref() != RECORD_TYPE {
            return Err(format!("its config is {}, not {RECORD_TYPE}", crate::report::excerpt(config.media_type().as_ref(), 100)));
        }
        let record = blob(config)?;
        let [layer] = manifest.layers().as_slice() else { return Err("it does not have exactly one layer".into()) };
        // zstd is what ddslug pushes; gzip was, before, and is read still.
        let compression = match layer.media_type() {
            MediaType::ImageLayerZstd => Compression::Zstd,
            MediaType::ImageLayerGzip => Compression::Gzip,
            other => return Err(format!("its layer is {}, not a zstd or gzip tarball", crate::report::excerpt(other.as_ref(), 100))),
        };
        let layer = blob(layer)?;
        let annotations = manifest.annotations().clone().unwrap_or_default();
        let key = annotations
            .get(KEY_ANNOTATION)
            .and_then(|k| k.strip_prefix("sha256:"))
            .and_then(|k| k.parse::<Sha256>().ok())
            .ok_or("no layer-key annotation")?;
        let tree_hash = annotations.get(TREE_HASH_ANNOTATION).and_then(|t| t.parse::<Sha256>().ok()).map(TreeHash).ok_or("no tree-hash annotation")?;
        Ok(Artifact { key, tree_hash, record, layer, compression, signature: annotations.get(SIGNATURE_ANNOTATION).cloned() })
    }
}

/// The name of a layer blob in its staging directory while it is pulled or pushed.
const BLOB_FILE: &str = "layer.blob";

/// A decompressed stream that fails (naming its limit) past `limit` bytes, instead of ending
/// early as `take` would.
struct Bounded<'l, R> {
    inner: R,
    /// What all readers of one layer may still decompress (its frames share it).
    left: &'l AtomicU64,
    limit: u64,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n as u64)).is_err() {
            return Err(io::Error::other(format!(
                "the layer decompresses to more than {} (its files' bytes plus {} of tar headers), the limit for a shared layer",
                crate::report::limit(self.limit),
                crate::report::limit(TAR_OVERHEAD)
            )));
        }
        Ok(n)
    }
}

/// The download's end of a blob unpacked frame by frame: the file in the staging directory,
/// and how far it has got for the readers of frames.
struct ToFile<'a> {
    file: &'a std::fs::File,
    written: u64,
    progress: &'a crate::fetch::Progress,
}

impl io::Write for ToFile<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_all_at(self.file, bytes, self.written)?;
        self.written += bytes.len() as u64;
        self.progress.set_written(self.written);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_are_canonical() {
        let key = Sha256::of(b"key");
        let tree = TreeHash(Sha256::of(b"tree"));
        let layer = BlobRef { digest: Sha256::of(b"layer"), size: 5 };
        let record = BlobRef { digest: Sha256::of(b"record"), size: 6 };
        let a = manifest_bytes(&key, &tree, layer, record, "k:sig").unwrap();
        assert_eq!(a, manifest_bytes(&key, &tree, layer, record, "k:sig").unwrap());
        let parsed = Artifact::parse(&a).unwrap();
        assert_eq!((parsed.key, parsed.tree_hash, parsed.layer, parsed.record), (key, tree, layer, record));
        assert_eq!(parsed.signature.as_deref(), Some("k:sig"));
        for garbage in [&b"{}"[..], b"not json", br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#] {
            assert!(Artifact::parse(garbage).is_err());
        }
        let text = String::from_utf8(a).unwrap().replace(ARTIFACT_TYPE, "application/vnd.other");
        assert!(Artifact::parse(text.as_bytes()).unwrap_err().contains("artifactType"));
    }

    #[test]
    fn bounded_fails_past_its_limit_and_frames_share_it() {
        let left = AtomicU64::new(4);
        let mut r = Bounded { inner: &b"0123456789"[..], left: &left, limit: 4 };
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err().to_string();
        assert!(e.contains("the limit for a shared layer"), "{e}");
        // Two readers of one layer: each within the limit alone, not together.
        let left = AtomicU64::new(12);
        let (mut a, mut b) = (Bounded { inner: &b"0123456789"[..], left: &left, limit: 12 }, Bounded { inner: &b"0123456789"[..], left: &left, limit: 12 });
        assert_eq!(a.read_to_end(&mut Vec::new()).unwrap(), 10);
        assert!(b.read_to_end(&mut Vec::new()).is_err());
    }
}
