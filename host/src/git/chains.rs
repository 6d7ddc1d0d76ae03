//! Reading a workspace's pack in history order, one delta per object.
//!
//! Git stores the newest version of a file whole and each older one as a
//! delta against a newer one; the copy into the vault reads history oldest
//! first (so that the vault's own deltas go forward). gix's cache keeps the
//! object each read produced, never the links of the chain it resolved on
//! the way, so reading a path's versions oldest first re-applies the whole
//! chain for every version: depth² delta applications per path (50² with
//! git's default depth). This reader resolves a chain from its base down,
//! keeping every link in a memory-capped cache: each version is then about
//! one delta application, whatever the order.

use std::path::Path;

use gix::odb::pack::cache::DecodeEntry;
use gix::odb::pack::cache::lru::MemoryCappedHashmap;
use gix::odb::pack::data::decode::entry::ResolvedBase;
use gix::odb::pack::data::entry::Header;
use gix::odb::pack::{Bundle, data};

use crate::ids::{GitOid, ObjectKind};

use super::{to_gix, to_kind};

/// Decoded links kept: enough for every chain that a commit's files open
/// to stay cached until history reaches them.
const LINK_CACHE_BYTES: usize = 32 << 20;

/// Longer chains are left to gix's lookup, which detects cycles: git
/// writes chains of at most 4,095 links, and offset deltas always point
/// back, but ref deltas in a hostile pack could point at each other.
const MAX_CHAIN: usize = 4096;

/// The packs of one workspace, and the links decoded so far.
pub(super) struct Chains {
    bundles: Vec<Bundle>,
    links: MemoryCappedHashmap,
    inflate: gix::zlib::Inflate,
}

impl Chains {
    /// Open every pack in `pack_dir` (none yet is not an error: an object
    /// is then read by the caller's general lookup).
    pub(super) fn open(pack_dir: &Path) -> std::io::Result<Self> {
        let mut bundles = Vec::new();
        let entries = match std::fs::read_dir(pack_dir) {
            Ok(entries) => entries.collect::<Result<Vec<_>, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "idx")
                // A pack that does not open (a leftover of a failed index
                // write) is left to the general lookup, which reports it.
                && let Ok(bundle) = Bundle::at(&path, gix::hash::Kind::Sha1)
            {
                bundles.push(bundle);
            }
        }
        Ok(Self {
            bundles,
            links: MemoryCappedHashmap::new(LINK_CACHE_BYTES),
            inflate: gix::zlib::Inflate::default(),
        })
    }

    /// The object `oid`, if one of the packs holds it and its chain
    /// resolves inside that pack; `None` sends the caller to the general
    /// lookup (which also names any damage).
    pub(super) fn read(&mut self, oid: &GitOid) -> Option<(ObjectKind, Vec<u8>)> {
        let id = to_gix(oid);
        let (bundle, at) = self
            .bundles
            .iter()
            .find_map(|b| Some((b, b.index.lookup(id)?)))?;
        let index = &bundle.index;
        let pack = &bundle.pack;
        let in_pack = |id: &gix::oid| -> Option<data::Entry> {
            let at = index.lookup(id)?;
            pack.entry(index.pack_offset_at_index(at)).ok()
        };
        let target = pack.entry(index.pack_offset_at_index(at)).ok()?;
        let mut out = Vec::new();
        if let Some((kind, _)) = self.links.get(pack.id, target.data_offset, &mut out) {
            return Some((to_kind(kind), out));
        }

        // The chain from the target down to its base or its first cached
        // link (which is left out).
        let mut chain = vec![target];
        while let Some(last) = chain.last() {
            if chain.len() > MAX_CHAIN {
                return None;
            }
            let base = match last.header {
                Header::OfsDelta { base_distance } => pack
                    .entry(last.checked_base_pack_offset(base_distance)?)
                    .ok()?,
                Header::RefDelta { base_id } => in_pack(&base_id)?,
                _ => break,
            };
            if self
                .links
                .get(pack.id, base.data_offset, &mut out)
                .is_some()
            {
                break;
            }
            chain.push(base);
        }

        // Decode from the base end up: each link finds the one below it in
        // the cache and is put there itself. A whole object at the end of
        // the chain is inflated by the link above it.
        let resolve = |id: &gix::oid, _: &mut Vec<u8>| Ok(in_pack(id).map(ResolvedBase::InPack));
        let mut kind = None;
        for (i, entry) in chain.into_iter().enumerate().rev() {
            if i > 0 && !entry.header.is_delta() {
                continue;
            }
            let outcome = pack
                .decode_entry(
                    entry,
                    &mut out,
                    &mut self.inflate,
                    &resolve,
                    &mut self.links,
                )
                .ok()?;
            kind = Some(outcome.kind);
        }
        Some((to_kind(kind?), out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{from_gix, test_git as git};

    /// Every version of a file, read oldest first from a pack whose chains
    /// run newest to oldest (as git writes them), comes out as git has it,
    /// each served by the chain reader itself, and the later versions of a
    /// chain are found already cached.
    #[test]
    fn reads_deep_backward_chains_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path();
        git(repo, &["init", "-q", "-b", "main"]);
        let mut blobs = Vec::new();
        for v in 0..60 {
            // Edits accumulate, as in a real file: a version is closest
            // to the next one, so git bases each older version on the one
            // after it, a chain as deep as git allows.
            let text: String = (0..400)
                .map(|i| {
                    if i % 6 == 0 && i / 6 < v {
                        format!("line {i} as edited in version {}: {}\n", i / 6, i * 7919)
                    } else {
                        format!("line {i} of a file with a long history\n")
                    }
                })
                .collect();
            std::fs::write(repo.join("f.txt"), &text).expect("write");
            git(repo, &["add", "f.txt"]);
            git(repo, &["commit", "-q", "-m", &format!("v{v}")]);
            let id = git(repo, &["rev-parse", "HEAD:f.txt"]);
            blobs.push(String::from_utf8(id).expect("hex").trim().to_string());
        }
        git(repo, &["repack", "-adfq", "--depth=50", "--window=250"]);
        let pack_dir = repo.join(".git/objects/pack");

        // The pack really holds deep chains.
        let idx = std::fs::read_dir(&pack_dir)
            .expect("pack dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .expect("an index");
        let verify = String::from_utf8(git(
            repo,
            &["verify-pack", "-v", idx.to_str().expect("utf-8 path")],
        ))
        .expect("utf-8");
        let deepest = verify
            .lines()
            .filter_map(|l| l.strip_prefix("chain length = "))
            .filter_map(|l| l.split(':').next()?.trim().parse::<u32>().ok())
            .max()
            .expect("delta chains");
        assert!(deepest >= 20, "deepest chain {deepest}");

        let mut chains = Chains::open(&pack_dir).expect("open");
        for hex in &blobs {
            let oid = from_gix(&gix::ObjectId::from_hex(hex.as_bytes()).expect("id"));
            let (kind, data) = chains.read(&oid).expect("read by the chain reader");
            assert_eq!(kind, ObjectKind::Blob);
            assert_eq!(data, git(repo, &["cat-file", "blob", hex]), "{hex}");
        }
        // The newest version was decoded on the way to the oldest: the
        // cache holds it now.
        let newest = gix::ObjectId::from_hex(blobs[blobs.len() - 2].as_bytes()).expect("id");
        let bundle = &chains.bundles[0];
        let at = bundle.index.lookup(newest).expect("in the pack");
        let entry = bundle
            .pack
            .entry(bundle.index.pack_offset_at_index(at))
            .expect("entry");
        let mut out = Vec::new();
        assert!(
            chains
                .links
                .get(bundle.pack.id, entry.data_offset, &mut out)
                .is_some()
        );

        // An id no pack holds is left to the general lookup.
        assert!(chains.read(&crate::ids::GitOid([7; 20])).is_none());
    }

    /// A pack damaged after it was indexed never yields a wrong object or
    /// a panic: what cannot be decoded is left to gix's lookup, which
    /// names the damage.
    #[test]
    fn a_damaged_pack_is_left_to_the_general_lookup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path();
        git(repo, &["init", "-q", "-b", "main"]);
        let mut blobs = Vec::new();
        for v in 0..30 {
            let text: String = (0..300)
                .map(|i| format!("line {i} of version {}\n", if i < v { v } else { 0 }))
                .collect();
            std::fs::write(repo.join("f.txt"), &text).expect("write");
            git(repo, &["add", "f.txt"]);
            git(repo, &["commit", "-q", "-m", &format!("v{v}")]);
            let id = git(repo, &["rev-parse", "HEAD:f.txt"]);
            let hex = String::from_utf8(id).expect("hex").trim().to_string();
            let content = git(repo, &["cat-file", "blob", &hex]);
            blobs.push((hex, content));
        }
        git(repo, &["repack", "-adfq", "--depth=50"]);
        let pack_dir = repo.join(".git/objects/pack");
        let pack = std::fs::read_dir(&pack_dir)
            .expect("pack dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "pack"))
            .expect("a pack");
        // Flip every byte of the middle of the pack, past its header.
        let mut bytes = std::fs::read(&pack).expect("read pack");
        let len = bytes.len();
        for b in &mut bytes[len / 3..2 * len / 3] {
            *b = !*b;
        }
        // git's packs are read-only: replace the file.
        std::fs::remove_file(&pack).expect("remove pack");
        std::fs::write(&pack, &bytes).expect("damage pack");

        let mut chains = Chains::open(&pack_dir).expect("open");
        let mut left = 0;
        for (hex, content) in &blobs {
            let oid = from_gix(&gix::ObjectId::from_hex(hex.as_bytes()).expect("id"));
            match chains.read(&oid) {
                Some((_, data)) => assert_eq!(&data, content, "{hex} read wrong"),
                None => left += 1,
            }
        }
        assert!(left > 0, "no version was found damaged");
    }
}
