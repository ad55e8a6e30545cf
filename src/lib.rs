//! ddslug: the Datadog Agent buildpack for Heroku as a reproducible, content-addressed
//! slug assembler.
//!
//! The pipeline, one folder per stage, each handing a plain value to the next:
//!
//! ```text
//! config ──► apt (signed index → exact package) ──► fetch + store (verified blob)
//!        ──► unpack (.deb + recipe) ──► store::layer (cached by its inputs)
//!        ──► slug (materialize, manifest, install; verify proves it exact)
//! ```
//!
//! `buildpack::classic` runs it end to end for `bin/compile`; the other commands use stages
//! alone; `oci` turns a slug into an OCI image (and shares layers through a registry);
//! `runtime` is the dyno side (`.profile.d/datadog.sh` calls it, `dyno run` in a container). Shared helpers:
//! `fsat` (directory-relative file operations that never follow a symlink), `pathbytes`
//! (names as bytes, shown escaped), `hash` (SHA-256 and xxh3), `report` (build output).

pub mod apt;
pub mod buildpack;
pub mod config;
pub mod fetch;
pub mod fsat;
pub mod hash;
pub mod oci;
pub mod pathbytes;
pub mod report;
pub mod runtime;
pub mod sbom;
pub mod slug;
pub mod store;
pub mod unpack;
