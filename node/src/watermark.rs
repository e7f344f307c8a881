//! The store's watermark of acknowledged writes: how a node notices, when it starts, that its
//! store lost writes it had told callers were on disk.
//!
//! sled checks each log message's checksum when it recovers, and a damaged message ends the
//! log there: what was written after it is gone, and the store opens without an error. One bit
//! flipped in a 186 KB log lost a deployed function and all 200 acknowledged async results,
//! and the node served on as if they had never existed. So every flush first writes a
//! sequence number into the store ([`Watermark::stamp`]), and once sled reports the flush
//! durable the number goes into a small file beside the store, synced
//! ([`Watermark::seal`]). At open, a store whose number is below the file's has lost
//! acknowledged writes, and opening fails with [`StoreError::LostWrites`]: the node refuses
//! to start rather than serve without them.
//!
//! What it cannot see: damage to a record older than the last flush that sled skips without
//! ending the log there (a record that fails to decode is quarantined and counted instead),
//! and a loss of the writes of the very last flushes when the file was damaged in the same
//! way. Removing the file is how an operator accepts what the store still holds.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::StoreError;

/// sled tree holding the store's side of the watermark.
const TREE: &str = "store_watermark";
const KEY: &[u8] = b"acknowledged";
/// The file beside the store (`<data>/`), and its layout: magic, the number, and its
/// complement (so a damaged file is told from a number).
pub const FILE: &str = "store.acknowledged";
const MAGIC: &[u8; 8] = b"ternwm01";
const FILE_LEN: usize = 24;

/// The file's bytes for `seq`.
fn encode(seq: u64) -> [u8; FILE_LEN] {
    let mut out = [0; FILE_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..].copy_from_slice(&(!seq).to_le_bytes());
    out
}

/// The number in the file's bytes, or what is wrong with them.
fn decode(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != FILE_LEN {
        return Err(format!("{} bytes, not {FILE_LEN}", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a watermark file".into());
    }
    let word = |range: std::ops::Range<usize>| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[range]);
        u64::from_le_bytes(w)
    };
    let (seq, check) = (word(8..16), word(16..24));
    if check != !seq {
        return Err("its number and check disagree".into());
    }
    Ok(seq)
}

/// What [`Watermark::open`] compares: the number the store holds against the file's.
fn judge(found: u64, acknowledged: Option<u64>) -> Result<u64, (u64, u64)> {
    match acknowledged {
        Some(a) if a > found => Err((a, found)),
        Some(a) => Ok(a.max(found)),
        // No file: a new data directory, a store from before the watermark, or an operator
        // who removed it to accept what the store holds.
        None => Ok(found),
    }
}

/// See the module documentation.
pub struct Watermark {
    tree: sled::Tree,
    /// The last number stamped. Held while writing it, so the store's value only grows.
    stamped: Mutex<u64>,
    /// The file, and the number it holds.
    file: Mutex<(File, u64)>,
    path: PathBuf,
}

impl Watermark {
    /// Compares the store's number with the file in `data_dir`, creating the file if it is
    /// missing.
    pub fn open(db: &sled::Db, data_dir: &Path) -> Result<Self, StoreError> {
        let tree = db.open_tree(TREE)?;
        let path = data_dir.join(FILE);
        let damaged = |detail: String| StoreError::WatermarkDamaged {
            path: path.display().to_string(),
            detail,
        };
        let found = match tree.get(KEY)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    damaged(format!("the store's number is {} bytes, not 8", v.len()))
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        let io = |source: std::io::Error| StoreError::Watermark {
            path: path.display().to_string(),
            source,
        };
        let acknowledged = match std::fs::read(&path) {
            Ok(bytes) => Some(decode(&bytes).map_err(damaged)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let now =
            judge(found, acknowledged).map_err(|(acknowledged, found)| StoreError::LostWrites {
                acknowledged,
                found,
                path: path.display().to_string(),
            })?;
        if acknowledged != Some(now) {
            // The store's number may sit in the page cache only (the process died before
            // sled synced it): durable first, or a power cut would leave the file ahead.
            db.flush()?;
            // Whole or not at all: a new file is written aside, synced, and renamed into
            // place, so a crash meanwhile never leaves a short file that reads as damage.
            let aside = data_dir.join(format!("{FILE}.new"));
            let mut new = File::create(&aside).map_err(io)?;
            std::io::Write::write_all(&mut new, &encode(now)).map_err(io)?;
            new.sync_all().map_err(io)?;
            std::fs::rename(&aside, &path).map_err(io)?;
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            tree,
            stamped: Mutex::new(now),
            file: Mutex::new((file, now)),
            path,
        })
    }

    /// Writes the next number into the store, before a flush: once the flush is durable, so
    /// is this number, and [`Watermark::seal`] may record it.
    pub fn stamp(&self) -> Result<u64, StoreError> {
        let mut stamped = tern_sync::poison::lock(&self.stamped);
        let next = *stamped + 1;
        self.tree.insert(KEY, &next.to_be_bytes())?;
        *stamped = next;
        Ok(next)
    }

    /// Records `seq` (stamped before a flush that has finished) in the file, unless a flush
    /// that finished earlier recorded a larger one already (it covered this one).
    pub fn seal(&self, seq: u64) -> Result<(), StoreError> {
        let mut file = tern_sync::poison::lock(&self.file);
        if file.1 >= seq {
            return Ok(());
        }
        let io = |source: std::io::Error| StoreError::Watermark {
            path: self.path.display().to_string(),
            source,
        };
        // 24 bytes in place in one block: no allocation, so even a full disk takes it.
        file.0.write_all_at(&encode(seq), 0).map_err(io)?;
        file.0.sync_data().map_err(io)?;
        file.1 = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_named() {
        for seq in [0, 1, 77, u64::MAX] {
            assert_eq!(decode(&encode(seq)).unwrap(), seq);
        }
        let mut flipped = encode(41);
        flipped[9] ^= 0x10;
        assert!(decode(&flipped).unwrap_err().contains("disagree"));
        assert!(decode(&encode(41)[..20]).unwrap_err().contains("20 bytes"));
        let mut foreign = encode(41);
        foreign[0] = b'X';
        assert!(decode(&foreign).unwrap_err().contains("not a watermark"));
    }

    #[test]
    fn a_store_behind_its_acknowledged_number_lost_writes_and_one_ahead_did_not() {
        assert_eq!(judge(10, Some(11)), Err((11, 10)));
        assert_eq!(judge(0, Some(3)), Err((3, 0)));
        // Flushed, but stopped before the file was written.
        assert_eq!(judge(12, Some(11)), Ok(12));
        assert_eq!(judge(11, Some(11)), Ok(11));
        assert_eq!(judge(5, None), Ok(5));
    }

    #[test]
    fn stamps_grow_and_seal_keeps_the_largest_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let mark = Watermark::open(&db, dir.path()).unwrap();
        let (a, b) = (mark.stamp().unwrap(), mark.stamp().unwrap());
        assert!(b > a);
        db.flush().unwrap();
        mark.seal(b).unwrap();
        mark.seal(a).unwrap(); // a later finisher with an older number
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        assert_eq!(decode(&bytes).unwrap(), b);
        drop(mark);
        // Reopened: the store holds b, the file b.
        let mark = Watermark::open(&db, dir.path()).unwrap();
        assert_eq!(mark.stamp().unwrap(), b + 1);
    }
}
