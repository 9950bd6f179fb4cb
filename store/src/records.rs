//! Durable records in the index: signed attestations by build key, and
//! named tables of opaque records for the roles (coordinator queue, email
//! outbox, results).
//!
//! The store checks sizes and signatures; what a record means belongs to
//! the role that wrote it.

use kiln_protocol::{wire, Attestation, Hash, Signed};

use crate::error::{Result, StoreError};
use crate::index::{Added, RecordTable};
use crate::store::Store;
use crate::{ATTESTATIONS_PER_BUILD_MAX, ATTESTATION_BYTES_MAX, RECORD_KEY_BYTES_MAX, RECORD_VALUE_BYTES_MAX};

impl Store {
    /// Keeps a signed attestation under its build key, beside any others
    /// for the same build. The signature is checked first. Returns `false`
    /// if these exact bytes were already kept.
    pub fn put_attestation(&self, signed: &Signed<Attestation>) -> Result<bool> {
        let attestation = signed.verify()?;
        let bytes = wire::canonical(signed);
        if bytes.len() > ATTESTATION_BYTES_MAX {
            return Err(StoreError::RecordTooLarge {
                table: "attestations",
                len_bytes: bytes.len(),
                limit_bytes: ATTESTATION_BYTES_MAX,
            });
        }
        let build_key = attestation.build_key;
        match self
            .inner
            .index
            .add_attestation(&build_key, &bytes, ATTESTATIONS_PER_BUILD_MAX)?
        {
            Added::New => Ok(true),
            Added::Duplicate => Ok(false),
            Added::Full => Err(StoreError::TooManyAttestations {
                build_key,
                limit: ATTESTATIONS_PER_BUILD_MAX,
            }),
        }
    }

    /// Every kept attestation for a build key, each one re-checked; damaged
    /// entries are logged and skipped.
    pub fn attestations(&self, build_key: &Hash) -> Result<Vec<Signed<Attestation>>> {
        let mut out = Vec::new();
        for bytes in self.inner.index.attestations(build_key)? {
            match decode_attestation(&bytes, build_key) {
                Ok(signed) => out.push(signed),
                Err(reason) => {
                    tracing::warn!(build = %build_key, reason, "skipping damaged attestation in the index");
                }
            }
        }
        Ok(out)
    }

    /// Build keys with at least one attestation, sorted.
    pub fn attested_build_keys(&self) -> Result<Vec<Hash>> {
        self.inner.index.attested_build_keys()
    }

    /// Inserts or replaces a record. Returns whether one was replaced.
    pub fn put_record(&self, table: RecordTable, key: &[u8], value: &[u8]) -> Result<bool> {
        check_record_len(table, key.len(), RECORD_KEY_BYTES_MAX)?;
        check_record_len(table, value.len(), RECORD_VALUE_BYTES_MAX)?;
        self.inner.index.put_record(table, key, value)
    }

    pub fn get_record(&self, table: RecordTable, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.index.get_record(table, key)
    }

    /// Removes a record. Returns whether there was one.
    pub fn remove_record(&self, table: RecordTable, key: &[u8]) -> Result<bool> {
        self.inner.index.remove_record(table, key)
    }

    /// At most `limit` records of a table with keys after `after`, sorted
    /// by key bytes: a page, read without scanning the rest of the table.
    pub fn records_after(
        &self,
        table: RecordTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.index.records_after(table, after, limit)
    }

    /// Every record of a table, sorted by key bytes.
    pub fn records(&self, table: RecordTable) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.index.records(table)
    }
}

fn decode_attestation(bytes: &[u8], build_key: &Hash) -> Result<Signed<Attestation>, String> {
    let signed: Signed<Attestation> = wire::decode::<_, ATTESTATION_BYTES_MAX>(bytes).map_err(|e| e.to_string())?;
    let attestation = signed.verify().map_err(|e| e.to_string())?;
    if attestation.build_key != *build_key {
        return Err(format!("it is for build {}", attestation.build_key));
    }
    Ok(signed)
}

fn check_record_len(table: RecordTable, len_bytes: usize, limit_bytes: usize) -> Result<()> {
    if len_bytes > limit_bytes {
        return Err(StoreError::RecordTooLarge {
            table: table.name(),
            len_bytes,
            limit_bytes,
        });
    }
    Ok(())
}
