//! The embedded index (`index.redb`): blob access times, pins,
//! attestations by build key, partial-download progress and named tables
//! of durable records for the roles (queue, outbox, results).
//!
//! This module only moves bytes in and out of redb tables; it does not
//! decide what is evicted, verified or valid. Not for blob bytes.

// The closures run inside a transaction return redb's own error (160 bytes,
// as redb itself allows); it is boxed into `StoreError` right after.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_protocol::Hash;
use redb::{
    Database, DatabaseError, Durability, MultimapTableDefinition, ReadTransaction, ReadableMultimapTable,
    ReadableTable, TableDefinition, WriteTransaction,
};

use crate::error::{Result, StoreError};

/// Blob hash → last access, Unix milliseconds.
const ACCESS: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("blob_access_ms");
/// Blob hash → why it is pinned.
const PINS: TableDefinition<'_, [u8; 32], &str> = TableDefinition::new("pins");
/// Build key → encoded `Signed<Attestation>`s, deduplicated by bytes.
const ATTESTATIONS: MultimapTableDefinition<'_, [u8; 32], &[u8]> = MultimapTableDefinition::new("attestations");
/// Blob hash → encoded progress of a partial download.
const PARTIALS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("partials");

/// A named table of durable records, keyed and valued by bytes the caller
/// encodes. One per role that must survive a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordTable {
    /// The coordinator's pending jobs.
    Queue,
    /// Emails not yet sent.
    Outbox,
    /// Finished builds the coordinator has answered for.
    Results,
    /// The builds this worker ran (`kiln contributions`), keyed by end
    /// time then build key.
    Builds,
    /// Blob bytes this node served to peers, by day.
    Served,
    /// Per worker key: results that agreed with independent builds in a
    /// row, disagreements, and builds accepted on its word alone
    /// (`--verify auto`), as the coordination set keeps them.
    Streaks,
}

impl RecordTable {
    pub const ALL: [RecordTable; 6] = [
        RecordTable::Queue,
        RecordTable::Outbox,
        RecordTable::Results,
        RecordTable::Builds,
        RecordTable::Served,
        RecordTable::Streaks,
    ];

    /// The table's name inside the index.
    pub fn name(self) -> &'static str {
        match self {
            RecordTable::Queue => "records.queue",
            RecordTable::Outbox => "records.outbox",
            RecordTable::Results => "records.results",
            RecordTable::Builds => "records.builds",
            RecordTable::Served => "records.served",
            RecordTable::Streaks => "records.streaks",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Outcome of adding an attestation.
pub(crate) enum Added {
    New,
    Duplicate,
    Full,
}

pub(crate) struct Index {
    db: Database,
    path: PathBuf,
}

impl Index {
    /// Opens (or creates) the database and every table, so that readers
    /// never meet a missing table.
    pub(crate) fn open(path: &Path, data_dir: &Path) -> Result<Index> {
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                dir: data_dir.to_path_buf(),
            },
            other => StoreError::index("opening", path, other),
        })?;
        let index = Index {
            db,
            path: path.to_path_buf(),
        };
        // An index that has every table already needs no write (a commit
        // is an fsync, paid by every short-lived client on its data dir).
        if index.has_every_table()? {
            return Ok(index);
        }
        index.write("creating tables", Durability::Immediate, |txn| {
            txn.open_table(ACCESS)?;
            txn.open_table(PINS)?;
            txn.open_multimap_table(ATTESTATIONS)?;
            txn.open_table(PARTIALS)?;
            for table in RecordTable::ALL {
                txn.open_table(table.definition())?;
            }
            Ok(())
        })?;
        Ok(index)
    }

    fn has_every_table(&self) -> Result<bool> {
        self.read("checking tables", |txn| {
            let exists = |r: Result<(), redb::TableError>| match r {
                Ok(()) => Ok(true),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(redb::Error::from(e)),
            };
            let mut all = exists(txn.open_table(ACCESS).map(|_| ()))?
                && exists(txn.open_table(PINS).map(|_| ()))?
                && exists(txn.open_multimap_table(ATTESTATIONS).map(|_| ()))?
                && exists(txn.open_table(PARTIALS).map(|_| ()))?;
            for table in RecordTable::ALL {
                all = all && exists(txn.open_table(table.definition()).map(|_| ()))?;
            }
            Ok(all)
        })
    }

    fn write<T>(
        &self,
        operation: &'static str,
        durability: Durability,
        body: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::index(operation, &self.path, e))?;
        txn.set_durability(durability);
        let value = body(&txn).map_err(|e| StoreError::index(operation, &self.path, e))?;
        txn.commit().map_err(|e| StoreError::index(operation, &self.path, e))?;
        Ok(value)
    }

    fn read<T>(
        &self,
        operation: &'static str,
        body: impl FnOnce(&ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::index(operation, &self.path, e))?;
        body(&txn).map_err(|e| StoreError::index(operation, &self.path, e))
    }

    pub(crate) fn access_times(&self) -> Result<HashMap<Hash, u64>> {
        self.read("reading access times", |txn| {
            let table = txn.open_table(ACCESS)?;
            let mut out = HashMap::new();
            for entry in table.iter()? {
                let (hash, at_ms) = entry?;
                out.insert(Hash::from_bytes(hash.value()), at_ms.value());
            }
            Ok(out)
        })
    }

    /// Records access times. Not fsynced: losing the latest ones in a crash
    /// only makes eviction order slightly less exact.
    pub(crate) fn set_access_times(&self, times: &[(Hash, u64)]) -> Result<()> {
        self.write("recording access times", Durability::Eventual, |txn| {
            let mut table = txn.open_table(ACCESS)?;
            for (hash, at_ms) in times {
                table.insert(hash.as_bytes(), at_ms)?;
            }
            Ok(())
        })
    }

    pub(crate) fn remove_access_times(&self, hashes: &[Hash]) -> Result<()> {
        self.write("forgetting removed blobs", Durability::Eventual, |txn| {
            let mut table = txn.open_table(ACCESS)?;
            for hash in hashes {
                table.remove(hash.as_bytes())?;
            }
            Ok(())
        })
    }

    pub(crate) fn pin(&self, hash: &Hash, reason: &str) -> Result<()> {
        self.write("pinning", Durability::Immediate, |txn| {
            txn.open_table(PINS)?.insert(hash.as_bytes(), reason)?;
            Ok(())
        })
    }

    pub(crate) fn unpin(&self, hash: &Hash) -> Result<bool> {
        self.write("unpinning", Durability::Immediate, |txn| {
            Ok(txn.open_table(PINS)?.remove(hash.as_bytes())?.is_some())
        })
    }

    pub(crate) fn pins(&self) -> Result<Vec<(Hash, String)>> {
        self.read("reading pins", |txn| {
            let table = txn.open_table(PINS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (hash, reason) = entry?;
                out.push((Hash::from_bytes(hash.value()), reason.value().to_string()));
            }
            Ok(out)
        })
    }

    /// Adds encoded attestation bytes under a build key, keeping at most
    /// `limit` per key.
    pub(crate) fn add_attestation(&self, build_key: &Hash, bytes: &[u8], limit: u64) -> Result<Added> {
        self.write("storing an attestation", Durability::Immediate, |txn| {
            let mut table = txn.open_multimap_table(ATTESTATIONS)?;
            let existing = table.get(build_key.as_bytes())?;
            let count = existing.len();
            for entry in existing {
                if entry?.value() == bytes {
                    return Ok(Added::Duplicate);
                }
            }
            if count >= limit {
                return Ok(Added::Full);
            }
            table.insert(build_key.as_bytes(), bytes)?;
            Ok(Added::New)
        })
    }

    pub(crate) fn attestations(&self, build_key: &Hash) -> Result<Vec<Vec<u8>>> {
        self.read("reading attestations", |txn| {
            let table = txn.open_multimap_table(ATTESTATIONS)?;
            let mut out = Vec::new();
            for entry in table.get(build_key.as_bytes())? {
                out.push(entry?.value().to_vec());
            }
            Ok(out)
        })
    }

    pub(crate) fn attested_build_keys(&self) -> Result<Vec<Hash>> {
        self.read("listing attested builds", |txn| {
            let table = txn.open_multimap_table(ATTESTATIONS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (build_key, _) = entry?;
                out.push(Hash::from_bytes(build_key.value()));
            }
            Ok(out)
        })
    }

    pub(crate) fn partial(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        self.read("reading partial progress", |txn| {
            Ok(txn
                .open_table(PARTIALS)?
                .get(hash.as_bytes())?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Records progress of a partial blob; the caller has fsynced the data
    /// it describes first.
    pub(crate) fn set_partial(&self, hash: &Hash, progress: &[u8]) -> Result<()> {
        self.write("recording partial progress", Durability::Immediate, |txn| {
            txn.open_table(PARTIALS)?.insert(hash.as_bytes(), progress)?;
            Ok(())
        })
    }

    pub(crate) fn remove_partial(&self, hash: &Hash) -> Result<()> {
        self.write("forgetting partial progress", Durability::Immediate, |txn| {
            txn.open_table(PARTIALS)?.remove(hash.as_bytes())?;
            Ok(())
        })
    }

    pub(crate) fn partials(&self) -> Result<Vec<(Hash, Vec<u8>)>> {
        self.read("listing partial blobs", |txn| {
            let table = txn.open_table(PARTIALS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (hash, progress) = entry?;
                out.push((Hash::from_bytes(hash.value()), progress.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Inserts or replaces a record; returns whether one was replaced.
    pub(crate) fn put_record(&self, table: RecordTable, key: &[u8], value: &[u8]) -> Result<bool> {
        self.write("storing a record", Durability::Immediate, |txn| {
            Ok(txn.open_table(table.definition())?.insert(key, value)?.is_some())
        })
    }

    pub(crate) fn get_record(&self, table: RecordTable, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read("reading a record", |txn| {
            Ok(txn
                .open_table(table.definition())?
                .get(key)?
                .map(|v| v.value().to_vec()))
        })
    }

    pub(crate) fn remove_record(&self, table: RecordTable, key: &[u8]) -> Result<bool> {
        self.write("removing a record", Durability::Immediate, |txn| {
            Ok(txn.open_table(table.definition())?.remove(key)?.is_some())
        })
    }

    pub(crate) fn records_after(
        &self,
        table: RecordTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read("listing records", |txn| {
            let opened = txn.open_table(table.definition())?;
            let mut out = Vec::new();
            let range = match after {
                Some(after) => opened.range::<&[u8]>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
                None => opened.range::<&[u8]>(..)?,
            };
            for entry in range.take(limit) {
                let (key, value) = entry?;
                out.push((key.value().to_vec(), value.value().to_vec()));
            }
            Ok(out)
        })
    }

    pub(crate) fn records(&self, table: RecordTable) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read("listing records", |txn| {
            let opened = txn.open_table(table.definition())?;
            let mut out = Vec::new();
            for entry in opened.iter()? {
                let (key, value) = entry?;
                out.push((key.value().to_vec(), value.value().to_vec()));
            }
            Ok(out)
        })
    }
}
