//! Durable state in sled: deployed functions, module bytes by hash, and the journal of accepted
//! asynchronous invocations. Values are `tern-wire` bincode with byte limits, so a corrupted
//! store yields typed errors, never a panic.

use std::path::Path;

use serde::Serialize;
use tern_wire::peer::RegistryEntry;
use tern_wire::{FunctionName, InvocationId, InvocationRecord, ModuleHash};

/// Largest record we ever decode from the store (a journaled input is at most the body cap).
const RECORD_LIMIT: usize = tern_wire::codec::MAX_MESSAGE;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt {what} record {key:?} in the store: {detail}")]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("cannot encode a {what} record: {detail}")]
    Encode { what: &'static str, detail: String },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    functions: sled::Tree,
    modules: sled::Tree,
    invocations: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("db");
        // sled drops its directory lock from a background thread after the last handle goes,
        // so an in-process restart (tests, embedders) may briefly find it still held.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new().path(&path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_contention(&e) && attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        Ok(Self {
            functions: db.open_tree("functions")?,
            modules: db.open_tree("modules")?,
            invocations: db.open_tree("invocations")?,
            db,
        })
    }

    /// Opens (creating if needed) another tree of the same database, for state kept by other
    /// modules (e.g. the client API's idempotency keys).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<(), StoreError> {
        if !self.modules.contains_key(hash.0)? {
            self.modules.insert(hash.0, bytes)?;
        }
        Ok(())
    }

    pub fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.modules.get(hash.0)?.map(|v| v.to_vec()))
    }

    /// Writes a function's registry entry (a deployment or a removal tombstone).
    pub fn put_function(&self, entry: &RegistryEntry) -> Result<(), StoreError> {
        let bytes = encode("function", entry)?;
        self.functions
            .insert(entry.info.name.as_str().as_bytes(), bytes)?;
        Ok(())
    }

    /// The registry entry of `name`, tombstones included.
    pub fn function(&self, name: &FunctionName) -> Result<Option<RegistryEntry>, StoreError> {
        self.functions
            .get(name.as_str().as_bytes())?
            .map(|v| decode("function", name.as_str(), &v))
            .transpose()
    }

    /// Every registry entry, tombstones included.
    pub fn functions(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        self.functions
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("function", &String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    pub fn put_invocation(&self, record: &InvocationRecord) -> Result<(), StoreError> {
        let bytes = encode("invocation", record)?;
        self.invocations
            .insert(record.id.as_str().as_bytes(), bytes)?;
        Ok(())
    }

    pub fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, StoreError> {
        self.invocations
            .get(id.as_str().as_bytes())?
            .map(|v| decode("invocation", id.as_str(), &v))
            .transpose()
    }

    pub fn remove_invocation(&self, id: &InvocationId) -> Result<(), StoreError> {
        self.invocations.remove(id.as_str().as_bytes())?;
        Ok(())
    }

    /// Every journaled invocation. Corrupt records are reported, not skipped silently.
    pub fn invocations(&self) -> Result<Vec<InvocationRecord>, StoreError> {
        self.invocations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("invocation", &String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }
}

fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    tern_wire::encode(value, RECORD_LIMIT).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    tern_wire::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_wire::{FunctionInfo, InvocationStatus};

    fn entry(name: &str) -> RegistryEntry {
        RegistryEntry {
            info: info(name),
            removed: false,
            origin: "n1".into(),
        }
    }

    fn info(name: &str) -> FunctionInfo {
        FunctionInfo {
            name: name.parse().unwrap(),
            hash: ModuleHash([7; 32]),
            version: 3,
            timeout_ms: 100,
            memory_mb: 64,
            size_bytes: 10,
            deployed_at_ms: 5,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_function(&entry("a")).unwrap();
            s.put_module(&ModuleHash([7; 32]), b"\0asm").unwrap();
            s.put_invocation(&InvocationRecord {
                id: "x-1".parse().unwrap(),
                function: "a".parse().unwrap(),
                map: false,
                status: InvocationStatus::Pending,
                input: b"in".to_vec(),
                output: None,
                error: None,
                accepted_at_ms: 1,
                finished_at_ms: None,
                attempts: 0,
            })
            .unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.functions().unwrap(), vec![entry("a")]);
        assert_eq!(s.module(&ModuleHash([7; 32])).unwrap().unwrap(), b"\0asm");
        assert_eq!(s.invocations().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_record_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.functions.insert(b"bad", &b"\xff\xff\xff"[..]).unwrap();
        assert!(matches!(
            s.functions(),
            Err(StoreError::Corrupt {
                what: "function",
                ..
            })
        ));
    }

    #[test]
    fn garbage_directory_is_refused_or_opened_empty_never_a_panic() {
        for conf in [&b"garbage"[..], &b"\xde\xad\xbe\xef garbage"[..], &[][..]] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("db")).unwrap();
            std::fs::write(dir.path().join("db").join("conf"), conf).unwrap();
            std::fs::write(dir.path().join("db").join("db"), vec![0xAB; 4096]).unwrap();
            let opened = std::panic::catch_unwind(|| Store::open(dir.path()))
                .expect("opening a damaged store must not panic");
            // Either a typed error, or a store holding nothing it did not acknowledge.
            if let Ok(store) = opened {
                assert!(store.functions().unwrap().is_empty());
                assert!(store.invocations().unwrap().is_empty());
            }
        }
    }
}
