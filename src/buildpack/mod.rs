//! Buildpack entry points, thin over the pipeline: `classic` is bin/compile's step (Cedar),
//! `cnb` is the Cloud Native Buildpack's bin/build step and the agent layer's exec.d program
//! (Heroku Fir and other CNB platforms).

pub mod classic;
pub mod cnb;
