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

/// A ref table cut into chunks: each chunk's encoding and the first ref
/// name in it.
pub type Chunks<'a> = Vec<(Vec<u8>, &'a str)>;

/// Cut a sorted ref table into encoded chunks.
pub fn chunk(refs: &BTreeMap<String, GitOid>) -> Chunks<'_> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut first = "";
    let mut in_current = 0;
    for (name, target) in refs {
        if in_current == 0 {
            first = name.as_str();
        }
        push_varint(&mut current, name.len() as u64);
        current.extend_from_slice(name.as_bytes());
        current.extend_from_slice(&target.0);
        in_current += 1;
        if ends_chunk(name) || in_current == MAX_REFS_PER_CHUNK {
            chunks.push((std::mem::take(&mut current), first));
            in_current = 0;
        }
    }
    if !current.is_empty() {
        chunks.push((current, first));
    }
    chunks
}

/// The path of a chunk's line of versions: a later table's chunk that
/// starts at the same ref of the same repository is stored as a delta
/// against it, so moving one ref of a chunk adds tens of bytes, not the
/// chunk's every target again.
pub fn chunk_path(source: &str, repository: &str, first: &str) -> String {
    format!("{source}/{repository}:{first}")
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
        let (old, new) = (table(10_000, None), table(10_000, Some(5_000)));
        let (before, after) = (chunk(&old), chunk(&new));
        assert!(before.len() > 10, "{} chunks", before.len());
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
        // The chunk that changed starts at the same ref: its line of versions.
        assert!(before.iter().zip(&after).all(|((_, a), (_, b))| a == b));
        let biggest = after.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        assert!(biggest < 64 * 1024, "largest chunk {biggest} bytes");
        let mut back = BTreeMap::new();
        for (c, _) in &after {
            decode_chunk(c, &mut back).expect("decode");
        }
        assert_eq!(back, table(10_000, Some(5_000)));
        let (first, _) = &after[0];
        assert!(decode_chunk(&first[..first.len() - 1], &mut back).is_err());
    }
}
