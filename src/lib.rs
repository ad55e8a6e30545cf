//! ddslug: the Datadog Agent buildpack for Heroku as a reproducible, content-addressed
//! slug assembler.
//!
//! The pipeline, one module per stage, each handing a plain value to the next:
//!
//! ```text
//! config ──► apt (signed index → exact package) ──► fetch + store (verified blob)
//!        ──► deb + recipe (layer, cached by its inputs) ──► materialize ──► manifest
//! ```
//!
//! `compile` runs it end to end for `bin/compile` (`install` puts the layer into BUILD_DIR);
//! the other commands use stages alone.
//! Helpers of the unpack stage: `ar` (the .deb container, as strict as dpkg-deb),
//! `tarstream` (bounded decompression and tar entries), `extract` (entries written safely),
//! `xzseek` (decode only the xz blocks an unpack needs), `filewriter` (files written on
//! worker threads), `fsat` (directory-relative stat and link for whole trees, and writes that never follow
//! a symlink), `pathbytes`
//! (names as bytes, shown escaped); of the layer stage: `layerindex` (the binary
//! per-directory record a warm build checks and links from).

pub mod apt;
pub mod ar;
pub mod compile;
pub mod config;
pub mod deb;
pub mod fetch;
pub mod extract;
pub mod filewriter;
pub mod fsat;
pub mod hash;
pub mod install;
pub mod layer;
pub mod layerindex;
pub mod manifest;
pub mod materialize;
pub mod pathbytes;
pub mod recipe;
pub mod report;
pub mod runtime;
pub mod store;
pub mod tarstream;
pub mod treehash;
pub mod verify;
pub mod xzseek;
