//! Index files (FORMAT.md, "Index files") and the in-process index built
//! from them: record id → where the record is, and (path key, version) →
//! record id, which is how a delta finds its base.

use std::collections::HashMap;

use super::backend::FileName;
use super::crypto::MasterKey;
use super::format::{self, FormatError, INDEX_MAGIC, push_varint, read_bytes, read_varint};
use crate::ids::{ObjectKind, RecordId};

/// Where one record is, and its place in its path's line of versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: ObjectKind,
    /// Links to a whole record (0 = stored whole).
    pub depth: u8,
    pub file: FileName,
    pub offset: u64,
    pub len: u64,
    /// (path key, version), for records that have a path.
    pub path: Option<(u64, u32)>,
}

/// One index file, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub entries: Vec<(RecordId, Entry)>,
    /// Index files this one replaces (written by prune and repair, which
    /// remove them next): a reader that finds one of them still present
    /// leaves it out, so a run killed while it removes them leaves no
    /// entry of a record it dropped.
    pub supersedes: Vec<FileName>,
}

/// Where a data file's first record is: after its magic.
const FIRST_OFFSET: u64 = format::DATA_MAGIC.len() as u64;

/// A signed difference as an unsigned varint value (0, −1, 1, −2, …).
/// A difference of two offsets beyond 2^63 apart does not fit: refused,
/// never written as another value.
fn zigzag(d: i128) -> Result<u64, FormatError> {
    let z = if d < 0 { (-d) * 2 - 1 } else { d * 2 };
    u64::try_from(z).map_err(|_| FormatError(format!("index entry difference {d} out of range")))
}

fn unzigzag(z: u64) -> i128 {
    let z = i128::from(z);
    if z % 2 == 1 { -(z + 1) / 2 } else { z / 2 }
}

/// Encode the body of an index file and seal it.
pub fn encode_index_file(
    entries: &[(RecordId, Entry)],
    supersedes: &[FileName],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let mut files: Vec<&FileName> = Vec::new();
    let mut file_ord: HashMap<&FileName, u64> = HashMap::new();
    let mut paths: Vec<u64> = Vec::new();
    let mut path_ord: HashMap<u64, u64> = HashMap::new();
    for (_, e) in entries {
        if !file_ord.contains_key(&e.file) {
            file_ord.insert(&e.file, files.len() as u64);
            files.push(&e.file);
        }
        if let Some((key, _)) = e.path
            && !path_ord.contains_key(&key)
        {
            path_ord.insert(key, paths.len() as u64);
            paths.push(key);
        }
    }
    let mut body = Vec::with_capacity(entries.len() * 32 + files.len() * 32);
    push_varint(&mut body, files.len() as u64);
    for f in &files {
        body.extend_from_slice(
            &f.hash()
                .ok_or_else(|| FormatError("bad data file name".into()))?,
        );
    }
    push_varint(&mut body, paths.len() as u64);
    for p in &paths {
        body.extend_from_slice(&p.to_le_bytes());
    }
    // Column by column (FORMAT.md): each column is alike, so the
    // envelope's zstd frame packs it; places and versions are stored as
    // what differs from the expected one.
    push_varint(&mut body, entries.len() as u64);
    for (id, _) in entries {
        body.extend_from_slice(&id.0);
    }
    body.extend(entries.iter().map(|(_, e)| e.kind.code()));
    body.extend(entries.iter().map(|(_, e)| e.depth));
    for (_, e) in entries {
        push_varint(&mut body, file_ord[&e.file]);
    }
    let mut ends: HashMap<&FileName, u64> = HashMap::new();
    for (_, e) in entries {
        let expected = ends.get(&e.file).copied().unwrap_or(FIRST_OFFSET);
        push_varint(
            &mut body,
            zigzag(i128::from(e.offset) - i128::from(expected))?,
        );
        ends.insert(&e.file, e.offset.saturating_add(e.len));
    }
    for (_, e) in entries {
        push_varint(&mut body, e.len);
    }
    for (_, e) in entries {
        push_varint(&mut body, e.path.map_or(0, |(key, _)| path_ord[&key] + 1));
    }
    let mut next: HashMap<u64, u32> = HashMap::new();
    for (_, e) in entries {
        if let Some((key, version)) = e.path {
            let expected = next.get(&key).copied().unwrap_or(0);
            push_varint(
                &mut body,
                zigzag(i128::from(version) - i128::from(expected))?,
            );
            next.insert(key, version.saturating_add(1));
        }
    }
    push_varint(&mut body, supersedes.len() as u64);
    for f in supersedes {
        body.extend_from_slice(
            &f.hash()
                .ok_or_else(|| FormatError("bad index file name".into()))?,
        );
    }
    format::seal_keyed(INDEX_MAGIC, &body, 3, key)
}

/// Decode an index file (whole, as stored).
pub fn decode_index_file(bytes: &[u8], key: Option<&MasterKey>) -> Result<IndexFile, FormatError> {
    let body = format::open_envelope_keyed(INDEX_MAGIC, bytes, key)?;
    let mut at = 0;
    let count = |at: &mut usize, what: &str| -> Result<usize, FormatError> {
        let n = read_varint(&body, at)?;
        // Each item takes at least one byte: a count beyond the body is damage.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= body.len())
            .ok_or_else(|| FormatError(format!("{what} count {n} exceeds the file")))
    };
    let names = |at: &mut usize, what: &str| -> Result<Vec<FileName>, FormatError> {
        let n = count(at, what)?;
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            let raw = read_bytes(&body, at, 32)?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(raw);
            names.push(FileName::from_hash(&hash));
        }
        Ok(names)
    };
    let files = names(&mut at, "data file")?;
    let npaths = count(&mut at, "path")?;
    let mut paths = Vec::with_capacity(npaths);
    for _ in 0..npaths {
        let raw = read_bytes(&body, &mut at, 8)?;
        let mut key = [0u8; 8];
        key.copy_from_slice(raw);
        paths.push(u64::from_le_bytes(key));
    }
    let nentries = count(&mut at, "entry")?;
    let ids = read_bytes(&body, &mut at, nentries * 20)?;
    let kinds = read_bytes(&body, &mut at, nentries)?;
    let depths = read_bytes(&body, &mut at, nentries)?;
    let mut entry_files = Vec::with_capacity(nentries);
    for _ in 0..nentries {
        let file = usize::try_from(read_varint(&body, &mut at)?)
            .ok()
            .and_then(|i| files.get(i))
            .ok_or_else(|| FormatError("entry names a data file out of range".into()))?;
        entry_files.push(file);
    }
    let mut offsets = Vec::with_capacity(nentries);
    for _ in 0..nentries {
        offsets.push(unzigzag(read_varint(&body, &mut at)?));
    }
    let mut lens = Vec::with_capacity(nentries);
    for _ in 0..nentries {
        lens.push(read_varint(&body, &mut at)?);
    }
    let mut entry_paths = Vec::with_capacity(nentries);
    for _ in 0..nentries {
        entry_paths.push(match read_varint(&body, &mut at)? {
            0 => None,
            p => Some(
                usize::try_from(p - 1)
                    .ok()
                    .and_then(|i| paths.get(i))
                    .copied()
                    .ok_or_else(|| FormatError("entry names a path out of range".into()))?,
            ),
        });
    }
    let mut out = Vec::with_capacity(nentries);
    let mut ends: HashMap<&FileName, u64> = HashMap::new();
    let mut next: HashMap<u64, u32> = HashMap::new();
    for n in 0..nentries {
        let mut id = [0u8; 20];
        id.copy_from_slice(&ids[n * 20..n * 20 + 20]);
        let kind = ObjectKind::from_code(kinds[n])
            .ok_or_else(|| FormatError(format!("unknown kind {}", kinds[n])))?;
        let file = entry_files[n];
        let expected = ends.get(file).copied().unwrap_or(FIRST_OFFSET);
        let offset = u64::try_from(i128::from(expected) + offsets[n])
            .map_err(|_| FormatError("offset out of range".into()))?;
        let len = lens[n];
        ends.insert(file, offset.saturating_add(len));
        let path = match entry_paths[n] {
            None => None,
            Some(key) => {
                let expected = next.get(&key).copied().unwrap_or(0);
                let version =
                    u32::try_from(i128::from(expected) + unzigzag(read_varint(&body, &mut at)?))
                        .map_err(|_| FormatError("version out of range".into()))?;
                next.insert(key, version.saturating_add(1));
                Some((key, version))
            }
        };
        out.push((
            RecordId(id),
            Entry {
                kind,
                depth: depths[n],
                file: file.clone(),
                offset,
                len,
                path,
            },
        ));
    }
    let supersedes = names(&mut at, "superseded index file")?;
    if at != body.len() {
        return Err(FormatError(format!(
            "{} bytes after the list of superseded index files",
            body.len() - at
        )));
    }
    Ok(IndexFile {
        entries: out,
        supersedes,
    })
}

/// The index of a vault, in memory: the union of its index files.
#[derive(Debug, Default)]
pub struct MemIndex {
    records: HashMap<RecordId, Entry>,
    /// Usually one record per (path key, version); two writers that did
    /// not see each other's index files may each have given the same one.
    versions: HashMap<(u64, u32), Vec<RecordId>>,
    next_version: HashMap<u64, u32>,
    files: std::collections::HashSet<FileName>,
    superseded: std::collections::HashSet<FileName>,
}

impl MemIndex {
    pub fn get(&self, id: &RecordId) -> Option<&Entry> {
        self.records.get(id)
    }

    pub fn contains(&self, id: &RecordId) -> bool {
        self.records.contains_key(id)
    }

    pub fn version(&self, path: u64, version: u32) -> Option<RecordId> {
        self.versions
            .get(&(path, version))
            .and_then(|ids| ids.first())
            .copied()
    }

    /// Every record indexed at (path, version): more than one where two
    /// writers gave the same version (a reader tries each as a base; the
    /// content check tells which one a delta was built on).
    pub fn versions(&self, path: u64, version: u32) -> &[RecordId] {
        self.versions
            .get(&(path, version))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The version the next record of `path` gets.
    pub fn next_version(&self, path: u64) -> u32 {
        self.next_version.get(&path).copied().unwrap_or(0)
    }

    pub fn has_file(&self, name: &FileName) -> bool {
        self.files.contains(name)
    }

    /// Whether an index file read here replaces `name`.
    pub fn is_superseded(&self, name: &FileName) -> bool {
        self.superseded.contains(name)
    }

    /// Remember index files that one read here replaces. The caller leaves
    /// them out (and rebuilds the index if one was already read).
    pub fn supersede(&mut self, names: impl IntoIterator<Item = FileName>) {
        self.superseded.extend(names);
    }

    /// Add the entries of one index file. An id already indexed keeps the
    /// entry with the shorter chain (both are valid; while a prune that
    /// re-encoded a record whole removes the old index files, the old entry
    /// may need a base whose entry is already gone).
    pub fn insert_file(&mut self, name: FileName, entries: Vec<(RecordId, Entry)>) {
        for (id, entry) in entries {
            if let Some((key, version)) = entry.path {
                let ids = self.versions.entry((key, version)).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
                let next = self.next_version.entry(key).or_insert(0);
                *next = (*next).max(version.saturating_add(1));
            }
            match self.records.entry(id) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    if entry.depth < held.get().depth {
                        held.insert(entry);
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
            }
        }
        self.files.insert(name);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&RecordId, &Entry)> {
        self.records.iter()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_files_round_trip_and_refuse_damage() {
        let f1 = FileName::from_hash(&[1; 32]);
        let f2 = FileName::from_hash(&[2; 32]);
        let entries = vec![
            (
                RecordId([9; 20]),
                Entry {
                    kind: ObjectKind::Blob,
                    depth: 3,
                    file: f1.clone(),
                    offset: 8,
                    len: 100,
                    path: Some((42, 7)),
                },
            ),
            (
                RecordId([8; 20]),
                Entry {
                    kind: ObjectKind::Tag,
                    depth: 0,
                    file: f2,
                    offset: 1 << 33,
                    len: 5,
                    path: None,
                },
            ),
        ];
        let old = FileName::from_hash(&[3; 32]);
        let bytes = encode_index_file(&entries, std::slice::from_ref(&old), None).expect("encode");
        let decoded = decode_index_file(&bytes, None).expect("decode");
        assert_eq!(decoded.entries, entries);
        assert_eq!(decoded.supersedes, vec![old]);
        let mut index = MemIndex::default();
        index.insert_file(f1, entries);
        assert_eq!(index.version(42, 7), Some(RecordId([9; 20])));
        assert_eq!(index.next_version(42), 8);
        assert_eq!(index.next_version(41), 0);
        assert!(decode_index_file(&bytes[..bytes.len() - 3], None).is_err());
    }

    /// Offsets and versions are stored as differences from the expected
    /// ones: whatever the order, gaps, overlaps and version jumps, every
    /// entry reads back as it was; a backup's entries (back to back, each
    /// path's versions in a row) cost far less than their ids.
    #[test]
    fn entries_in_any_order_round_trip_and_a_backups_entries_cost_little_but_ids() {
        let files: Vec<FileName> = (1..4u8).map(|n| FileName::from_hash(&[n; 32])).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut scrambled = Vec::new();
        for n in 0..500u32 {
            let r = next();
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&r.to_le_bytes());
            id[8..12].copy_from_slice(&n.to_le_bytes());
            scrambled.push((
                RecordId(id),
                Entry {
                    kind: ObjectKind::from_code((r % 4) as u8 + 1).expect("kind"),
                    depth: (r >> 8) as u8 % 33,
                    file: files[(r >> 16) as usize % 3].clone(),
                    offset: if n % 7 == 0 {
                        u64::from(u32::MAX) << 8
                    } else {
                        (r >> 20) % (1 << 26)
                    },
                    len: (r >> 40) % 5000,
                    path: (n % 5 != 0).then_some(((r >> 24) % 9, (r >> 32) as u32 % 40_000)),
                },
            ));
        }
        let bytes = encode_index_file(&scrambled, &[], None).expect("encode");
        assert_eq!(
            decode_index_file(&bytes, None).expect("decode").entries,
            scrambled
        );

        // A backup's: back to back in one file, each path's versions in a row.
        let mut offset = FIRST_OFFSET;
        let mut written = Vec::new();
        for n in 0..2000u32 {
            let mut id = [0u8; 20];
            for chunk in id.chunks_mut(8) {
                let r = next().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            let len = 40 + next() % 3000;
            written.push((
                RecordId(id),
                Entry {
                    kind: ObjectKind::Blob,
                    depth: (n % 16) as u8,
                    file: files[0].clone(),
                    offset,
                    len,
                    path: Some((u64::from(n % 50), n / 50)),
                },
            ));
            offset += len;
        }
        let bytes = encode_index_file(&written, &[], None).expect("encode");
        assert_eq!(
            decode_index_file(&bytes, None).expect("decode").entries,
            written
        );
        let ids = 20 * written.len();
        assert!(
            bytes.len() < ids + ids / 5,
            "{} bytes for {ids} bytes of ids",
            bytes.len()
        );
    }

    /// An offset too far from the expected one to store as a difference is
    /// refused, not written as another value.
    #[test]
    fn an_offset_beyond_what_a_difference_holds_is_refused() {
        let entry = Entry {
            kind: ObjectKind::Blob,
            depth: 0,
            file: FileName::from_hash(&[1; 32]),
            offset: u64::MAX,
            len: 1,
            path: None,
        };
        let refused = encode_index_file(&[(RecordId([1; 20]), entry)], &[], None);
        assert!(refused.is_err(), "{refused:?}");
    }
}
