//! The unpack stage: a verified .deb becomes a stripped tree, streaming and in parallel.
//!
//! `ar` reads the .deb container as strictly as dpkg-deb; `tarstream` decompresses with
//! bounds and yields tar entries; `xzseek` decodes only the xz blocks an unpack needs;
//! `recipe` holds the strip rules (recipes/*.toml) the unpack applies as it goes; `extract`
//! writes entries safely and `filewriter` writes file contents on worker threads; `deb`
//! drives them for one package.

pub mod ar;
pub mod deb;
pub mod extract;
pub mod filewriter;
pub mod recipe;
pub mod tarstream;
pub mod xzseek;
