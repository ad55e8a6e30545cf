//! `layers/<key>.seen`: when the last build that installed a layer ran, so that the next warm
//! build can trust the layer's files without reading them.
//!
//! A reused layer must be checked by content (a file overwritten in place with its size and
//! mtime kept must not reach a slug), and reading the ~24,000 files of the agent's layer was
//! most of a warm build. But every change to an inode moves its ctime to the current time: a
//! write, a chmod, a link, an unlink. No call sets a ctime back (`touch -d` and `cp -p`, which
//! restore an mtime, set the ctime to now). A build links every file of the layer into its
//! slug, which moves each file's ctime into the time that build ran. So a file whose ctime
//! still lies within the last build's run has not been changed since that build checked and
//! linked it: the next warm build stats it and links it, and reads it only otherwise.
//!
//! The run is bounded by two readings of the filesystem's own clock (the ctime of a file it
//! creates): `from`, before the build checks or links anything, and `until`, after the slug is
//! in place; a file is vouched for when `from <= ctime < until`. A write after `until` gets a
//! ctime at or after it, even where timestamps are coarse (a clock tick), so it is read. An
//! old slug deleted since (its unlinks), a cache restored from an archive or copied (new
//! inodes, new ctimes), a build that failed midway: all move ctimes out of the run, and those
//! files are read and hashed, as is everything when there is no record.
//!
//! What this cannot see, and reading would: a write that races the recording build itself,
//! after it checked the file and before `until` (the cache lock keeps other builds out; a
//! process writing into the store during a build is out of scope, as it could rewrite the
//! index too); a clock set back into a past run and forward again between two builds (a clock
//! that is behind `until` at the next build voids the record); damage below the filesystem (a
//! flipped bit on disk moves no ctime).
//!
//! The record also keeps the SHA-256 of the two other files a slug shares with the store and
//! the buildpack (`tree.json` and the ddslug binary), by inode, size and mtime, vouched for on
//! the same terms, so a warm build does not hash 13 MB again.

use std::ffi::OsStr;
use std::io;

use serde::{Deserialize, Serialize};

use crate::fsat::Stat;
use crate::hash::Sha256;
use crate::store::Store;

/// A filesystem time: seconds and nanoseconds, as a ctime.
type Time = (i64, i64);

/// A file whose SHA-256 the recording build computed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hashed {
    ino: u64,
    size: u64,
    mtime: Time,
    sha256: Sha256,
}

/// A layer's record, as the next build reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Seen {
    from: Time,
    until: Time,
    hashed: Vec<Hashed>,
}

impl Seen {
    /// Whether `st`, a file of the layer found intact (type, mode, size, mtime), has not
    /// changed since the recording build checked and linked it.
    pub fn vouches(&self, st: &Stat) -> bool {
        self.from <= st.ctime && st.ctime < self.until
    }

    /// The SHA-256 of the file `st` describes, if the recording build hashed this inode and
    /// it has not changed since.
    pub fn sha256_of(&self, st: &Stat) -> Option<Sha256> {
        if !self.vouches(st) {
            return None;
        }
        self.hashed.iter().find(|h| (h.ino, h.size, h.mtime) == (st.ino, st.size, st.mtime)).map(|h| h.sha256)
    }
}

impl Seen {
    /// A record of a run from `from` to `until`, with no hashes (for tests elsewhere).
    #[cfg(test)]
    pub(crate) fn run(from: Time, until: Time) -> Seen {
        Seen { from, until, hashed: Vec::new() }
    }
}

/// The start of a build's run, by the store filesystem's clock.
#[derive(Clone, Copy, Debug)]
pub struct Started(Time);

/// Reads the filesystem's clock: the ctime of a file made and removed in the store's `tmp/`.
fn now(store: &Store) -> io::Result<Time> {
    let tmp = store.dir("tmp").map_err(io::Error::other)?;
    let (name, file) = tmp.create_temp(".clock.", 0o600)?;
    let ctime = crate::fsat::stat_file(&file).map(|st| st.ctime);
    let _ = tmp.remove_all(&name);
    ctime
}

/// Marks the start of a build's run; call it before anything of the layer is checked or
/// linked.
pub fn start(store: &Store) -> io::Result<Started> {
    now(store).map(Started)
}

fn file_name(key: &Sha256) -> String {
    format!("{}.seen", key.hex())
}

/// The largest record read; a real one is a few hundred bytes.
const LIMIT: u64 = 64 << 10;

/// The record of the layer `key` for a build that started at `started`; `None` when there is
/// none, it is damaged, or the clock is now behind it (then it proves nothing).
pub fn load(store: &Store, key: &Sha256, started: Started) -> Option<Seen> {
    let bytes = crate::store::layer::read_stored(store, &file_name(key), LIMIT).ok()??;
    let seen: Seen = serde_json::from_slice(&bytes).ok()?;
    (seen.from <= seen.until && seen.until <= started.0).then_some(seen)
}

/// Records that a build which started at `started` has checked the layer `key` and put it
/// in place, with the SHA-256s it computed of other shared files (their stats now, after
/// their links). Call it last, once the slug is in place, with the store lock held. The
/// record only lets the next build skip reads: on an error the caller can ignore it (the
/// stale record it leaves vouches for nothing this build linked).
pub fn record(store: &Store, key: &Sha256, started: Started, hashed: &[(Stat, Sha256)]) -> io::Result<()> {
    let hashed = hashed.iter().map(|(st, sha256)| Hashed { ino: st.ino, size: st.size, mtime: st.mtime, sha256: *sha256 }).collect();
    let seen = Seen { from: started.0, until: now(store)?, hashed };
    let bytes = serde_json::to_vec(&seen).map_err(io::Error::other)?;
    let (tmp, layers) = (store.dir("tmp").map_err(io::Error::other)?, store.dir("layers").map_err(io::Error::other)?);
    layers.write_via(OsStr::new(&file_name(key)), &bytes, 0o644, &tmp).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, ctime: Time) -> Stat {
        Stat { mode: libc::S_IFREG | 0o755, size: 10, mtime: (1, 2), ctime, dev: 1, ino }
    }

    fn sha(byte: u8) -> Sha256 {
        Sha256([byte; 32])
    }

    #[test]
    fn a_file_is_vouched_for_only_while_its_ctime_lies_within_the_recorded_run() {
        let seen = Seen { from: (100, 5), until: (101, 0), hashed: Vec::new() };
        assert!(seen.vouches(&stat(1, (100, 5))), "linked as the run began");
        assert!(seen.vouches(&stat(1, (100, 999_999_999))));
        assert!(!seen.vouches(&stat(1, (100, 4))), "before the run: the build did not link it");
        assert!(!seen.vouches(&stat(1, (101, 0))), "a change in the tick that ended the run may come after it");
        assert!(!seen.vouches(&stat(1, (250, 0))), "changed since");
    }

    #[test]
    fn a_recorded_hash_is_given_for_the_same_inode_size_and_mtime_within_the_run() {
        let seen = Seen { from: (100, 0), until: (200, 0), hashed: vec![Hashed { ino: 7, size: 10, mtime: (1, 2), sha256: sha(9) }] };
        assert_eq!(seen.sha256_of(&stat(7, (150, 0))), Some(sha(9)));
        assert_eq!(seen.sha256_of(&stat(8, (150, 0))), None, "another inode");
        assert_eq!(seen.sha256_of(&stat(7, (300, 0))), None, "changed since");
        let resized = Stat { size: 11, ..stat(7, (150, 0)) };
        assert_eq!(seen.sha256_of(&resized), None);
    }

    #[test]
    fn a_record_proves_nothing_to_a_clock_behind_it_and_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha(1);
        let started = start(&store).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        record(&store, &key, started, &[(stat(3, (0, 0)), sha(4))]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = start(&store).unwrap();
        let seen = load(&store, &key, later).expect("a record from before now");
        assert!(seen.from == started.0 && seen.until > seen.from && seen.until <= later.0);
        assert_eq!(seen.hashed.len(), 1);
        assert!(load(&store, &key, started).is_none(), "a clock behind the record's end");
        assert!(load(&store, &sha(2), later).is_none(), "no record for another layer");
        std::fs::write(dir.path().join(format!("ddslug/v1/layers/{}", file_name(&key))), b"{not json").unwrap();
        assert!(load(&store, &key, later).is_none(), "damaged");
    }
}
