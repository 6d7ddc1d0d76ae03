//! Ref tables: a snapshot's refs, sorted by name and cut into chunks at
//! boundaries that depend only on ref names (FORMAT.md, "Ref chunks"), so a
//! push that moves one ref of 10,000 stores one new chunk of a few KiB.

use std::collections::BTreeMap;

use super::format::{FormatError, push_varint, read_bytes, read_varint};
use crate::ids::GitOid;

/// A hard cap on refs per chunk, for names that never hit a boundary.
const MAX_REFS_PER_CHUNK: usize = 4096;

fn ends_chunk(name: &str) -> bool {
    blake3::hash(name.as_bytes()).as_bytes()[0] == 0
}

/// Cut a sorted ref table into encoded chunks.
pub fn chunk(refs: &BTreeMap<String, GitOid>) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut in_current = 0;
    for (name, target) in refs {
        push_varint(&mut current, name.len() as u64);
        current.extend_from_slice(name.as_bytes());
        current.extend_from_slice(&target.0);
        in_current += 1;
        if ends_chunk(name) || in_current == MAX_REFS_PER_CHUNK {
            chunks.push(std::mem::take(&mut current));
            in_current = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Decode one chunk into `out`.
pub fn decode_chunk(bytes: &[u8], out: &mut BTreeMap<String, GitOid>) -> Result<(), FormatError> {
    let mut at = 0;
    while at < bytes.len() {
        let len = usize::try_from(read_varint(bytes, &mut at)?)
            .map_err(|_| FormatError("ref name length out of range".into()))?;
        let name = std::str::from_utf8(read_bytes(bytes, &mut at, len)?)
            .map_err(|_| FormatError("ref name is not UTF-8".into()))?
            .to_string();
        let mut oid = [0u8; 20];
        oid.copy_from_slice(read_bytes(bytes, &mut at, 20)?);
        out.insert(name, GitOid(oid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize, bump: Option<usize>) -> BTreeMap<String, GitOid> {
        (0..n)
            .map(|i| {
                let byte = if Some(i) == bump {
                    0xee
                } else {
                    (i % 251) as u8
                };
                (format!("refs/heads/feature-{i:05}"), GitOid([byte; 20]))
            })
            .collect()
    }

    #[test]
    fn one_moved_ref_changes_one_chunk_and_chunks_round_trip() {
        let before = chunk(&table(10_000, None));
        let after = chunk(&table(10_000, Some(5_000)));
        assert!(before.len() > 10, "{} chunks", before.len());
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
        let biggest = after.iter().map(Vec::len).max().unwrap_or(0);
        assert!(biggest < 64 * 1024, "largest chunk {biggest} bytes");
        let mut back = BTreeMap::new();
        for c in &after {
            decode_chunk(c, &mut back).expect("decode");
        }
        assert_eq!(back, table(10_000, Some(5_000)));
        assert!(decode_chunk(&after[0][..after[0].len() - 1], &mut back).is_err());
    }
}
