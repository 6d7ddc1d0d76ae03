//! Writing good copies of damaged or missing records (`hookvault repair`,
//! which finds them and fetches their content from the source).
//!
//! Write order, so that a kill at any instant leaves the vault no worse:
//! 1. one new data file with every good copy, each stored whole (depth 0,
//!    with the path and version of the damaged entry, so the records built
//!    on it still find it as their base);
//! 2. one new index file: the good copies, and every other entry of the
//!    index files that named a damaged copy, superseding those files;
//! 3. those index files are removed.
//!
//! The new index file supersedes those it replaces: from the moment it
//! exists readers leave them out, whatever 3 removed before a kill. The
//! damaged bytes stay in their data file, unindexed, until a prune
//! rewrites it.

use std::collections::{HashMap, HashSet};

use super::backend::{FileName, FileType};
use super::format;
use super::index::{self, Entry};
use super::{Vault, VaultError, lock, read};
use crate::ids::{ObjectKind, RecordId};

/// A good copy's place in the new data file, before the file has a name.
struct Placed {
    kind: ObjectKind,
    offset: u64,
    len: u64,
    path: Option<(u64, u32)>,
}

impl Vault {
    /// Store `objects` (id, kind, content; each checked against its id)
    /// again, in place of whatever copy the index names now. Returns how
    /// many were written.
    pub fn replace_records(
        &self,
        objects: &[(RecordId, ObjectKind, Vec<u8>)],
    ) -> Result<usize, VaultError> {
        if objects.is_empty() {
            return Ok(0);
        }
        let _writer = self.sealed_writer()?;
        // Index files written since this handle read the index are
        // replaced too.
        self.refresh()?;
        let backend = &self.inner.backend;
        let mut compressor = format::Compressor::new(self.inner.options.zstd_level);
        let mut buf: Vec<u8> = format::DATA_MAGIC.to_vec();
        // Entries once the data file has its name: (id, entry without it).
        let mut placed: Vec<(RecordId, Placed)> = Vec::new();
        let replaced: HashSet<RecordId> = objects.iter().map(|(id, _, _)| *id).collect();
        {
            let index = read(&self.inner.index)?;
            for (id, kind, content) in objects {
                if !format::matches_id_keyed(id, *kind, content, self.id_key().as_ref()) {
                    return Err(VaultError::BadDocument {
                        message: format!("the copy of {id} given to repair does not match its id"),
                    });
                }
                let offset = buf.len() as u64;
                buf.extend_from_slice(&self.whole_record(&mut compressor, *kind, content)?);
                let len = buf.len() as u64 - offset;
                let path = index.get(id).and_then(|e| e.path);
                placed.push((
                    *id,
                    Placed {
                        kind: *kind,
                        offset,
                        len,
                        path,
                    },
                ));
            }
        }
        let data_name = FileName::from_hash(blake3::hash(&buf).as_bytes());
        backend.write(FileType::Data, &data_name, &buf)?;
        tracing::debug!(file = %data_name, records = placed.len(), "repair: data file written");

        // Every index file that names a replaced record, read again.
        let mut affected: Vec<FileName> = Vec::new();
        // Only the files the index was read from: one left out as damaged
        // adds nothing; one left out as superseded is superseded again.
        let (loaded, lingering): (Vec<FileName>, Vec<FileName>) = {
            let index = read(&self.inner.index)?;
            let listed: Vec<FileName> = backend
                .list(FileType::Index)?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            (
                listed
                    .iter()
                    .filter(|n| index.has_file(n))
                    .cloned()
                    .collect(),
                listed
                    .iter()
                    .filter(|n| index.is_superseded(n))
                    .cloned()
                    .collect(),
            )
        };
        let mut entries: Vec<(RecordId, Entry)> = Vec::new();
        // Every (path, version) the old entries gave a replaced record: two
        // writers may have stored one object at two.
        let mut paths: HashMap<RecordId, Vec<Option<(u64, u32)>>> = HashMap::new();
        for name in loaded {
            let Ok(bytes) = self.read_small(FileType::Index, &name) else {
                continue;
            };
            let Ok(decoded) = index::decode_index_file(&bytes, self.key()) else {
                continue;
            };
            if decoded.entries.iter().any(|(id, _)| replaced.contains(id)) {
                for (id, entry) in decoded.entries {
                    if replaced.contains(&id) {
                        paths.entry(id).or_default().push(entry.path);
                    } else {
                        entries.push((id, entry));
                    }
                }
                affected.push(name);
            }
        }
        for (id, p) in placed {
            let good = Entry {
                kind: p.kind,
                depth: 0,
                file: data_name.clone(),
                offset: p.offset,
                len: p.len,
                path: p.path,
            };
            for path in paths.remove(&id).unwrap_or_else(|| vec![p.path]) {
                entries.push((
                    id,
                    Entry {
                        path,
                        ..good.clone()
                    },
                ));
            }
        }
        // Where two index files named one record at one place, keep the
        // shallower entry, as readers do.
        entries.sort_by_key(|(id, e)| (*id, e.path, e.depth));
        entries.dedup_by_key(|(id, e)| (*id, e.path));
        let mut supersedes = affected.clone();
        supersedes.extend(lingering);
        let bytes = index::encode_index_file(&entries, &supersedes, self.key())
            .map_err(VaultError::Encode)?;
        let new_index = FileName::from_hash(blake3::hash(&bytes).as_bytes());
        self.write_small(FileType::Index, &new_index, &bytes)?;
        tracing::debug!(file = %new_index, entries = entries.len(), "repair: index file written");
        for name in affected.iter().filter(|n| **n != new_index) {
            match backend.remove(FileType::Index, name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(file = %name, "repair: index file removed");
        }

        // The in-memory index, as the files now are.
        self.reload_index()?;
        lock(&self.inner.decoded)?.map.clear();
        Ok(objects.len())
    }
}
