//! ddslug: the Datadog Agent buildpack for Heroku as a reproducible, content-addressed
//! slug assembler. See DESIGN.md in the steering folder and README.md for the tour.
//!
//! The pipeline, one module per stage:
//! `config` → `apt` (resolve) → `fetch` (into `store`) → `deb` + `recipe` (layer) →
//! `materialize` → `manifest`.

pub mod apt;
pub mod deb;
pub mod fetch;
pub mod hash;
pub mod store;
pub mod treehash;
