//! The agent as OCI artifacts: reproducible layer tarballs ([`tarball`]) and the image
//! layout `ddslug image` writes ([`image`]).
//!
//! Same lock and recipe, same bytes: a layer's `diff_id` and digest, and the manifest's
//! digest, depend only on what the layer holds (see [`tarball`] for the rules), never on the
//! machine, the directories or the day of the build.

pub mod tarball;
pub mod image;
pub mod push;
// The shared layer cache: the registry client, signatures, and lookup/pull/push of layers.
pub mod cache;
pub mod registry;
pub mod sign;
