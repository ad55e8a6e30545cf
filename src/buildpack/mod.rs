//! Buildpack entry points, thin over the pipeline: `classic` is bin/compile's step (Cedar).

pub mod classic;
