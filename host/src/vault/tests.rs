use super::*;

fn oid(n: u32) -> GitOid {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&n.to_be_bytes());
    GitOid(b)
}

/// The git id of `content` as an object of `kind`: reads check records
/// against their ids, so test objects need real ones.
fn git_id(kind: gix::object::Kind, content: &[u8]) -> GitOid {
    let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, content).expect("hash");
    GitOid(id.as_bytes().try_into().expect("20 bytes"))
}

fn blob_id(content: &[u8]) -> GitOid {
    git_id(gix::object::Kind::Blob, content)
}

/// A push snapshot of `refs` for `repo`, the rest fixed.
fn new_snapshot(repo: &RepoName, refs: BTreeMap<String, GitOid>) -> NewSnapshot {
    NewSnapshot {
        repository: repo.clone(),
        source: "cloud".into(),
        time_ms: 1,
        delivery_id: "d".into(),
        event_key: "repo:push".into(),
        actor: None,
        refs,
        updates: vec![],
        stats: CopyStats::default(),
    }
}

fn open(dir: &Path) -> Vault {
    Vault::open_local(dir, Create::IfMissing, WriteOptions::default()).expect("open")
}

/// A vault that must already exist.
fn reopen(dir: &Path) -> Vault {
    Vault::open_local(dir, Create::Never, WriteOptions::default()).expect("reopen")
}

/// A ref table of one branch, `main`, at `tip`.
fn main_at(tip: GitOid) -> BTreeMap<String, GitOid> {
    [("refs/heads/main".to_string(), tip)].into()
}

/// A file of `lines` numbered lines with line `changed` altered.
fn version_text(lines: usize, changed: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            if i == changed {
                format!("line {i} changed in version {changed}\n")
            } else {
                format!("line {i} of a source file that changes slowly\n")
            }
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn deltas_along_a_path_read_back_after_reopen_and_stay_shallow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids: Vec<GitOid> = (0..300u32)
        .map(|v| blob_id(&version_text(2000, v as usize)))
        .collect();
    let contents: HashMap<GitOid, Vec<u8>> = (0..300u32)
        .map(|v| (ids[v as usize], version_text(2000, v as usize)))
        .collect();
    let whole_size: usize = contents
        .values()
        .map(|c| zstd::bulk::compress(c, 3).map(|f| f.len()).unwrap_or(0))
        .sum();
    let vault = open(dir.path());
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, contents[o].clone()))
    };
    // One push per version, like real history.
    let mut stored = 0;
    for v in 0..300u32 {
        let stats = vault
            .put_objects(&[(ids[v as usize], Some("src/main.rs"))], read)
            .expect("put");
        assert_eq!(stats.written, 1);
        stored += stats.stored_bytes;
    }
    assert!(
        (stored as usize) * 5 < whole_size,
        "deltas should be far smaller: {stored} vs {whole_size}"
    );
    let again = vault
        .put_objects(&[(ids[7], Some("src/main.rs"))], read)
        .expect("put");
    assert_eq!((again.written, again.present), (0, 1));
    drop(vault);
    let vault = reopen(dir.path());
    let index = vault.inner.index.read().expect("index");
    let deepest = index.entries().map(|(_, e)| e.depth).max().unwrap_or(0);
    assert!(deepest <= MAX_DEPTH && deepest > 1, "depth {deepest}");
    drop(index);
    for v in [0u32, 1, 15, 16, 255, 299] {
        assert_eq!(
            *vault.read_object(&ids[v as usize]).expect("read").1,
            contents[&ids[v as usize]]
        );
    }
    assert_eq!(
        vault.missing(&[ids[1], oid(9999)]).expect("missing"),
        vec![oid(9999)]
    );
}

#[test]
fn a_flipped_byte_is_reported_as_damage_naming_the_record_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let id = blob_id(&version_text(100, 1));
    vault
        .put_objects(&[(id, Some("a"))], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, version_text(100, 1)))
        })
        .expect("put");
    assert_eq!(
        *vault.read_object(&id).expect("intact").1,
        version_text(100, 1)
    );
    drop(vault);
    let data = LocalBackend::open(dir.path())
        .list(FileType::Data)
        .expect("list");
    let path = dir.path().join(FileType::Data.path_of(&data[0].0));
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    let vault = open(dir.path());
    let err = vault.read_object(&id).expect_err("damaged");
    let text = err.to_string();
    assert!(matches!(err, VaultError::Damaged { .. }), "{text}");
    assert!(
        text.contains(&id.to_hex()) && text.contains(data[0].0.as_str()),
        "{text}"
    );
}

#[test]
fn snapshots_chain_refuse_missing_objects_and_keep_ref_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let repo = RepoName::parse("acme/app").expect("name");
    let new = |refs: BTreeMap<String, GitOid>| new_snapshot(&repo, refs);
    let refs: BTreeMap<String, GitOid> = [("refs/heads/main".to_string(), oid(7))].into();
    let err = vault
        .commit_snapshot(new(refs.clone()))
        .expect_err("object missing");
    assert!(
        matches!(err, VaultError::IncompleteSnapshot { .. }),
        "{err}"
    );
    vault
        .put_objects(&[(oid(7), None)], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Commit, b"tree x\n".to_vec()))
        })
        .expect("put");
    let first = vault.commit_snapshot(new(refs.clone())).expect("commit");
    let second = vault.commit_snapshot(new(refs.clone())).expect("commit");
    assert_eq!(second.body.parent, Some(first.id));
    assert_eq!(second.body.seq, 2);
    assert_eq!(vault.snapshot_refs(&second).expect("refs"), refs);
    drop(vault);
    let vault = reopen(dir.path());
    let listed = vault.snapshots(&repo).expect("list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![first.id, second.id]
    );
    let prefix = &second.id.to_hex()[..8];
    assert_eq!(
        vault.find_snapshot(&repo, Some(prefix)).expect("find").id,
        second.id
    );
    assert!(vault.find_snapshot(&repo, Some("zzzz")).is_err());
}

#[test]
fn many_refs_one_push_writes_a_few_kib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let repo = RepoName::parse("acme/big").expect("name");
    // Every branch at its own commit, as in a real repository: targets are
    // 20 random-looking bytes each, which no compressor shrinks.
    let blobs: Vec<Vec<u8>> = (0..10_001)
        .map(|i| format!("tip {i}").into_bytes())
        .collect();
    let ids: Vec<(GitOid, Option<&str>)> = blobs.iter().map(|b| (blob_id(b), None)).collect();
    let by_id: HashMap<GitOid, &Vec<u8>> = ids.iter().map(|(id, _)| *id).zip(&blobs).collect();
    vault
        .put_objects(&ids, |o| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, by_id[o].clone()))
        })
        .expect("put");
    let mut refs: BTreeMap<String, GitOid> = (0..10_000)
        .map(|i| (format!("refs/heads/branch-{i:05}"), ids[i].0))
        .collect();
    let snap = |refs: &BTreeMap<String, GitOid>| new_snapshot(&repo, refs.clone());
    let first = vault.commit_snapshot(snap(&refs)).expect("first");
    let before = vault.stats().expect("stats").total_bytes;
    refs.insert("refs/heads/branch-04321".into(), ids[10_000].0);
    let second = vault.commit_snapshot(snap(&refs)).expect("second");
    let growth = vault.stats().expect("stats").total_bytes - before;
    assert!(
        growth < 16 * 1024,
        "one moved ref grew the vault by {growth} bytes"
    );
    // The one chunk that changed is a delta on its previous version: a
    // few dozen bytes, not its ~256 targets again.
    assert!(
        second.body.stats.stored_bytes < 200,
        "the changed ref chunk took {} bytes (the first table {})",
        second.body.stats.stored_bytes,
        first.body.stats.stored_bytes
    );
    assert_eq!(vault.snapshot_refs(&second).expect("refs"), refs);
    // And it reads back from the files alone.
    drop(vault);
    let reopened = reopen(dir.path());
    assert_eq!(reopened.snapshot_refs(&second).expect("refs"), refs);
}

#[test]
fn read_commands_never_create_a_vault_and_unknown_formats_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let err =
        Vault::open_local(&missing, Create::Never, WriteOptions::default()).expect_err("no vault");
    assert!(matches!(err, VaultError::NoVault { .. }), "{err}");
    assert!(!missing.exists());
    drop(open(dir.path()));
    std::fs::write(
        dir.path().join("config"),
        br#"{"format": 9, "id": "x", "created_ms": 0, "encryption": null}"#,
    )
    .expect("write");
    let err = Vault::open_local(dir.path(), Create::Never, WriteOptions::default())
        .expect_err("format 9");
    assert!(err.to_string().contains("format 9"), "{err}");
}

#[test]
fn documents_keep_versions_and_skip_unchanged_puts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let repo = RepoName::parse("acme/app").expect("name");
    vault
        .put_document(&repo, "pull-requests", "1", br#"{"v":1}"#, "d1", 100)
        .expect("put");
    vault
        .put_document(&repo, "pull-requests", "1", br#"{"v":1}"#, "d2", 150)
        .expect("same");
    vault
        .put_document(&repo, "pull-requests", "1", br#"{"v":2}"#, "d3", 200)
        .expect("put");
    assert!(
        vault
            .put_document(&repo, "pull-requests", "../x", b"{}", "d", 1)
            .is_err()
    );
    drop(vault);
    let vault = open(dir.path());
    assert_eq!(
        vault
            .document_history(&repo, "pull-requests", "1")
            .expect("history")
            .len(),
        2
    );
    let at = vault
        .document_at(&repo, "pull-requests", "1", Some(170))
        .expect("at")
        .expect("some");
    assert_eq!(vault.read_document(&at).expect("read"), br#"{"v":1}"#);
    let all = vault
        .documents_at(&repo, "pull-requests", None)
        .expect("all");
    assert_eq!(vault.read_document(&all[0]).expect("read"), br#"{"v":2}"#);
}

#[test]
fn the_file_cache_is_used_checked_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault_dir = dir.path().join("vault");
    let cache_dir = dir.path().join("cache");
    let repo = RepoName::parse("acme/app").expect("name");
    let open = || {
        let backend = Box::new(LocalBackend::create(&vault_dir).expect("backend"));
        let files = cache::FileCache::open(&cache_dir).expect("cache");
        Vault::open_with_cache(
            backend,
            Create::IfMissing,
            WriteOptions::default(),
            Some(files),
        )
        .expect("open")
    };
    let vault = open();
    let commit = git_id(gix::object::Kind::Commit, b"tree x\n");
    vault
        .put_objects(&[(commit, None)], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Commit, b"tree x\n".to_vec()))
        })
        .expect("put");
    let refs = main_at(commit);
    let snapshot = vault
        .commit_snapshot(new_snapshot(&repo, refs))
        .expect("snapshot");
    // Two index files (objects, ref chunk) and one snapshot file.
    assert_eq!(vault.cached_files(), Some(3));
    drop(vault);

    // A damaged entry is noticed and read again from the vault.
    {
        let files = cache::FileCache::open(&cache_dir).expect("cache");
        let name = FileName::from_hash(&snapshot.id.0);
        files.put(FileType::Snapshot, &name, b"garbage");
        assert!(files.get(FileType::Snapshot, &name).is_none());
        files.put(FileType::Snapshot, &name, b"garbage");
        files.flush();
    }
    let vault = open();
    assert_eq!(vault.snapshots(&repo).expect("list")[0].id, snapshot.id);
    drop(vault);

    // Deleted, it is rebuilt on the next open.
    cache::FileCache::clear(&cache_dir).expect("clear");
    assert!(!cache_dir.exists());
    let vault = open();
    assert_eq!(vault.cached_files(), Some(3));
    assert_eq!(vault.snapshots(&repo).expect("list").len(), 1);
    assert_eq!(
        vault.read_object(&commit).expect("read").1.as_slice(),
        b"tree x\n"
    );
}

/// A first backup stores a path's whole history in one call: records are
/// compressed in batches on several threads, with bases inside the same
/// batch. The result reads back, stays within the depth cap, and is as
/// small as storing the history in calls of 500 versions (each at least
/// `BULK_FROM`, so the same compression effort; each call's records in
/// one batch).
#[test]
fn one_call_with_a_whole_history_compresses_in_batches_as_well_as_in_short_calls() {
    let versions = 2500u32;
    // Each version a line longer, with one line changed: all distinct.
    let ids: Vec<GitOid> = (0..versions)
        .map(|v| blob_id(&version_text(150 + v as usize, v as usize % 150)))
        .collect();
    let contents: HashMap<GitOid, Vec<u8>> = (0..versions)
        .map(|v| {
            (
                ids[v as usize],
                version_text(150 + v as usize, v as usize % 150),
            )
        })
        .collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, contents[o].clone()))
    };
    let all: Vec<(GitOid, Option<&str>)> = (0..versions)
        .map(|v| (ids[v as usize], Some("src/lib.rs")))
        .collect();

    let batched_dir = tempfile::tempdir().expect("tempdir");
    let batched = open(batched_dir.path());
    let stats = batched.put_objects(&all, read).expect("put");
    assert_eq!(stats.written, u64::from(versions));

    let single_dir = tempfile::tempdir().expect("tempdir");
    let single = open(single_dir.path());
    let mut single_bytes = 0;
    assert!(500 >= BULK_FROM && versions.is_multiple_of(500));
    for objects in all.chunks(500) {
        single_bytes += single.put_objects(objects, read).expect("put").stored_bytes;
    }
    // Each call writes an index file; compare the data alone.
    let record_bytes = |vault: &Vault| -> u64 {
        let index = vault.inner.index.read().expect("index");
        index.entries().map(|(_, e)| e.len).sum()
    };
    assert!(
        record_bytes(&batched) <= record_bytes(&single) + record_bytes(&single) / 20,
        "batched {} vs in short calls {} (of {single_bytes} with index files)",
        record_bytes(&batched),
        record_bytes(&single)
    );
    drop(batched);
    let batched = Vault::open_local(batched_dir.path(), Create::Never, WriteOptions::default())
        .expect("reopen");
    let index = batched.inner.index.read().expect("index");
    let deepest = index.entries().map(|(_, e)| e.depth).max().unwrap_or(0);
    let deltas = index.entries().filter(|(_, e)| e.depth > 0).count();
    drop(index);
    assert!(deepest <= MAX_DEPTH && deepest > 1, "depth {deepest}");
    assert!(deltas as u32 > versions * 9 / 10, "only {deltas} deltas");
    for v in (0..versions).step_by(97).chain([versions - 1]) {
        assert_eq!(
            *batched.read_object(&ids[v as usize]).expect("read").1,
            contents[&ids[v as usize]]
        );
    }
}

/// A deterministic stream of pseudo-random numbers (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `valid` truncated, with bytes flipped, or with random bytes spliced
    /// in: the damage a disk, a network or an attacker gives a file.
    fn mangle(&mut self, valid: &[u8]) -> Vec<u8> {
        let mut bytes = valid.to_vec();
        match self.below(3) {
            0 => bytes.truncate(self.below(valid.len() + 1)),
            1 => {
                for _ in 0..=self.below(4) {
                    if !bytes.is_empty() {
                        let at = self.below(bytes.len());
                        bytes[at] ^= 1 << self.below(8);
                    }
                }
            }
            _ => {
                let at = self.below(bytes.len() + 1);
                let junk: Vec<u8> = (0..self.below(64)).map(|_| self.next() as u8).collect();
                bytes.splice(at..at, junk);
            }
        }
        bytes
    }
}

/// Every parser of vault bytes, fed thousands of mangled copies of valid
/// input, answers with a value or an error and never panics; a data file
/// mangled on disk reads back either exactly right or as an error.
#[test]
fn mangled_vault_bytes_give_errors_never_panics_or_wrong_content() {
    let mut noise = Noise(0x0005_eed0_f0dd_ba11);
    let content = version_text(300, 7);
    let base = version_text(300, 8);

    let header = {
        let mut out = Vec::new();
        format::RecordHeader {
            kind: ObjectKind::Blob,
            delta: true,
            raw_size: 12_345,
        }
        .encode(&mut out);
        out
    };
    let frame = format::compress(&content, Some(&base), 3).expect("compress");
    let envelope = format::seal(format::INDEX_MAGIC, &content, 3).expect("seal");
    let table: BTreeMap<_, _> = (0..300)
        .map(|i| (format!("refs/heads/b{i}"), oid(i)))
        .collect();
    let chunks = refs::chunk(&table);

    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let id = blob_id(&content);
    vault
        .put_objects(&[(id, Some("f"))], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, content.clone()))
        })
        .expect("put");
    let repo = RepoName::parse("acme/app").expect("name");
    vault
        .commit_snapshot(new_snapshot(
            &repo,
            [("refs/heads/main".to_string(), id)].into(),
        ))
        .expect("snapshot");
    let blob_file = {
        let index = vault.inner.index.read().expect("index");
        index
            .get(&RecordId::from(id))
            .expect("indexed")
            .file
            .clone()
    };
    drop(vault);
    let backend = LocalBackend::open(dir.path());
    let file = |t: FileType| {
        let (name, _) = backend.list(t).expect("list").remove(0);
        let bytes = std::fs::read(dir.path().join(t.path_of(&name))).expect("read");
        (name, bytes)
    };
    let (_, index_bytes) = file(FileType::Index);
    let (snapshot_name, snapshot_bytes) = file(FileType::Snapshot);
    // The data file holding the blob (the ref chunk has one of its own).
    let data_path = dir.path().join(FileType::Data.path_of(&blob_file));
    let data_bytes = std::fs::read(&data_path).expect("read");
    assert!(index::decode_index_file(&index_bytes, None).is_ok());
    assert!(snapshot::Snapshot::open(&snapshot_name, &snapshot_bytes, None).is_ok());

    for _ in 0..2000 {
        let _ = format::RecordHeader::decode(&noise.mangle(&header));
        let _ = format::decompress(&noise.mangle(&frame), Some(&base), content.len() as u64);
        let _ = format::open_envelope(format::INDEX_MAGIC, &noise.mangle(&envelope));
        let _ = index::decode_index_file(&noise.mangle(&index_bytes), None);
        let _ = snapshot::Snapshot::open(&snapshot_name, &noise.mangle(&snapshot_bytes), None);
        let (chunk, _) = &chunks[noise.below(chunks.len())];
        let _ = refs::decode_chunk(&noise.mangle(chunk), &mut BTreeMap::new());
    }
    let mut refused = 0;
    for _ in 0..200 {
        let mangled = noise.mangle(&data_bytes);
        std::fs::write(&data_path, &mangled).expect("write");
        let vault =
            Vault::open_local(dir.path(), Create::Never, WriteOptions::default()).expect("open");
        match vault.read_object(&id) {
            Ok((kind, read)) => {
                assert_eq!(
                    (kind, read.as_slice()),
                    (ObjectKind::Blob, content.as_slice())
                )
            }
            Err(e) => {
                assert!(matches!(e, VaultError::Damaged { .. }), "{e}");
                refused += 1;
            }
        }
    }
    // Most mangles touch the one record; those are all caught.
    assert!(refused > 100, "only {refused} of 200 mangled files refused");
}

#[test]
fn data_files_no_index_names_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let content = b"kept".to_vec();
    let id = blob_id(&content);
    vault
        .put_objects(&[(id, Some("a.txt"))], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, content.clone()))
        })
        .expect("put");
    // A writer killed after its data file and before its index file.
    let orphan = b"HVDATA\x00\x02 half a backup".to_vec();
    let name = FileName::from_hash(blake3::hash(&orphan).as_bytes());
    vault
        .inner
        .backend
        .write(FileType::Data, &name, &orphan)
        .expect("write");
    assert_eq!(
        vault
            .inner
            .backend
            .list(FileType::Data)
            .expect("list")
            .len(),
        2
    );
    let (files, bytes) = vault.remove_unindexed_data().expect("remove");
    assert_eq!((files, bytes), (1, orphan.len() as u64));
    let left = vault.inner.backend.list(FileType::Data).expect("list");
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].0, name);
    assert_eq!(*vault.read_object(&id).expect("still readable").1, content);
    assert_eq!(vault.remove_unindexed_data().expect("again"), (0, 0));
}

/// Prune everything not in `live`, rewriting any data file with garbage.
fn prune_all(vault: &Vault, live: &HashSet<RecordId>) -> Result<prune::PruneReport, VaultError> {
    vault.prune_records(
        live,
        prune::PruneOptions {
            max_unused_percent: 0,
            dry_run: false,
            recompress_level: None,
        },
        &crate::progress::quiet,
    )
}

/// The links from `id` to a whole record, following the index.
fn chain_length(vault: &Vault, id: &RecordId) -> u8 {
    let index = vault.inner.index.read().expect("index");
    let mut at = *id;
    let mut links = 0;
    while let Some(entry) = index.get(&at) {
        let base = entry
            .path
            .filter(|_| entry.depth > 0)
            .and_then(|(key, v)| index.version(key, format::skip_delta_base(v)?));
        match base {
            Some(base) => {
                at = base;
                links += 1;
            }
            None => break,
        }
    }
    links
}

#[test]
fn prune_re_encodes_deltas_whose_base_goes_and_writers_go_on_after_it() {
    let texts: Vec<Vec<u8>> = (0..41).map(|v| version_text(1500, v)).collect();
    let ids: Vec<GitOid> = texts.iter().map(|t| blob_id(t)).collect();
    let contents: HashMap<GitOid, Vec<u8>> = ids.iter().copied().zip(texts).collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, contents[o].clone()))
    };
    // Kept: a middle run of versions (their bases below go), then all but
    // the newest versions (the next write takes a freed version number).
    for keep in [12..32usize, 0..30] {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = open(dir.path());
        for id in &ids[..40] {
            vault
                .put_objects(&[(*id, Some("f.rs"))], read)
                .expect("put");
        }
        let live: HashSet<RecordId> = ids[keep.clone()]
            .iter()
            .map(|o| RecordId::from(*o))
            .collect();
        let dry = vault
            .prune_records(
                &live,
                prune::PruneOptions {
                    max_unused_percent: 0,
                    dry_run: true,
                    recompress_level: None,
                },
                &crate::progress::quiet,
            )
            .expect("dry run");
        let report = prune_all(&vault, &live).expect("prune");
        // Only versions whose base is below the kept run are written again.
        assert_eq!(
            report.records_reencoded > 0,
            keep.start > 0,
            "{keep:?}: {report:?}"
        );
        assert_eq!(
            (
                dry.records_reencoded,
                dry.bytes_reclaimed,
                dry.data_bytes_after
            ),
            (
                report.records_reencoded,
                report.bytes_reclaimed,
                report.data_bytes_after
            ),
            "{keep:?}: a dry run reports what the prune does"
        );
        assert_eq!(report.records_kept, keep.len() as u64);
        vault
            .put_objects(&[(ids[40], Some("f.rs"))], read)
            .expect("a write after prune");
        drop(vault);
        let vault = reopen(dir.path());
        assert_eq!(vault.stats().expect("stats").records, keep.len() as u64 + 1);
        for (v, id) in ids.iter().enumerate() {
            if keep.contains(&v) || v == 40 {
                assert_eq!(
                    *vault.read_object(id).expect("read").1,
                    contents[id],
                    "version {v}"
                );
                let entry = vault
                    .inner
                    .index
                    .read()
                    .expect("index")
                    .get(&RecordId::from(*id))
                    .cloned();
                assert_eq!(
                    entry.expect("indexed").depth,
                    chain_length(&vault, &RecordId::from(*id)),
                    "{keep:?}: version {v}'s depth is its chain"
                );
            } else {
                assert!(!vault.has(id).expect("has"), "version {v} is gone");
            }
        }
    }
}

/// Every file of one type, name and bytes.
fn files_of(dir: &Path, vault: &Vault, t: FileType) -> Vec<(FileName, Vec<u8>)> {
    vault
        .inner
        .backend
        .list(t)
        .expect("list")
        .into_iter()
        .map(|(name, _)| {
            let bytes = std::fs::read(dir.join(t.path_of(&name))).expect("read");
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_prune_killed_before_it_removed_the_old_files_leaves_no_dropped_record_indexed() {
    let texts: Vec<Vec<u8>> = (0..40).map(|v| version_text(800, v)).collect();
    let ids: Vec<GitOid> = texts.iter().map(|t| blob_id(t)).collect();
    let contents: HashMap<GitOid, Vec<u8>> = ids.iter().copied().zip(texts).collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, contents[o].clone()))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    for id in &ids {
        vault
            .put_objects(&[(*id, Some("f.rs"))], read)
            .expect("put");
    }
    let old_index = files_of(dir.path(), &vault, FileType::Index);
    let old_data = files_of(dir.path(), &vault, FileType::Data);
    assert!(old_index.len() >= 40);
    // A second handle that read the index before the prune.
    let reader = open(dir.path());
    let keep = 12..32usize;
    let live: HashSet<RecordId> = ids[keep.clone()]
        .iter()
        .map(|o| RecordId::from(*o))
        .collect();
    prune_all(&vault, &live).expect("prune");
    let dropped = |v: &Vault, what: &str| {
        for (n, id) in ids.iter().enumerate() {
            if keep.contains(&n) {
                assert_eq!(
                    *v.read_object(id).expect("read").1,
                    contents[id],
                    "{what}: {n}"
                );
            } else {
                assert!(
                    !v.has(id).expect("has"),
                    "{what}: version {n} is still indexed"
                );
            }
        }
    };
    // The handle opened before it reads the index again when a file it
    // read is replaced.
    reader.refresh().expect("refresh");
    dropped(&reader, "a handle opened before the prune");
    drop((vault, reader));

    // The state of a prune killed after its index file, before it removed
    // anything: every old index and data file is back beside the new ones
    // (one old index file damaged: superseded, it is no damage that stops
    // a prune or the removal of unindexed data).
    for (t, files) in [(FileType::Index, &old_index), (FileType::Data, &old_data)] {
        for (n, (name, bytes)) in files.iter().enumerate() {
            let mut bytes = bytes.clone();
            if t == FileType::Index && n == 0 {
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
            }
            std::fs::write(dir.path().join(t.path_of(name)), bytes).expect("put back");
        }
    }
    let vault = open(dir.path());
    dropped(&vault, "after the kill");
    assert!(vault.damaged_files().expect("damaged").is_empty());
    let (files, _) = vault.remove_unindexed_data().expect("remove");
    assert!(files > 0, "the old data files are unindexed");
    dropped(&vault, "after removing unindexed data");
    // A repair now replaces the prune's index file: the old ones stay
    // superseded.
    let fixed = ids[12];
    assert_eq!(
        vault
            .replace_records(&[(
                RecordId::from(fixed),
                ObjectKind::Blob,
                contents[&fixed].clone()
            )])
            .expect("repair"),
        1
    );
    dropped(&vault, "after a repair");
    drop(vault);
    let vault = open(dir.path());
    dropped(&vault, "reopened after a repair");
    // A write takes the freed version numbers; the next prune removes what
    // is left of the old index files.
    vault
        .put_objects(&[(ids[35], Some("f.rs"))], read)
        .expect("a write after the kill");
    let report = prune_all(&vault, &live).expect("prune again");
    assert!(
        report.index_files_removed as usize > old_index.len(),
        "{report:?}"
    );
    assert_eq!(files_of(dir.path(), &vault, FileType::Index).len(), 1);
    drop(vault);
    dropped(&open(dir.path()), "after the second prune");
}

#[test]
fn two_writers_that_give_one_path_the_same_versions_both_read_back_and_prune() {
    // Two writers of one vault (two services sharing a bucket), each
    // opened before the other wrote, store versions of the same path:
    // each gives versions 0, 1, 2, ... to its own records.
    let ours: Vec<Vec<u8>> = (0..40).map(|v| version_text(600, v)).collect();
    // Their first version is our version 25: one object, stored by both,
    // at two places (theirs whole at version 0, ours a delta at version
    // 25, which only we gave and which our version 26 is built on).
    let theirs: Vec<Vec<u8>> = (0..20)
        .map(|v| {
            if v == 0 {
                return ours[25].clone();
            }
            let mut t = version_text(600, v + 7);
            t.extend_from_slice(b"theirs\n");
            t
        })
        .collect();
    let all: Vec<Vec<u8>> = ours.iter().chain(&theirs).cloned().collect();
    let ids: Vec<GitOid> = all.iter().map(|t| blob_id(t)).collect();
    let contents: HashMap<GitOid, Vec<u8>> = ids.iter().copied().zip(all).collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, contents[o].clone()))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(dir.path());
    let b = open(dir.path());
    for n in 0..40 {
        a.put_objects(&[(ids[n], Some("f.rs"))], read).expect("a");
        if n < 20 {
            b.put_objects(&[(ids[40 + n], Some("f.rs"))], read)
                .expect("b");
        }
    }
    drop((a, b));
    let vault = open(dir.path());
    {
        let index = vault.inner.index.read().expect("index");
        let (key, _) = index
            .get(&RecordId::from(ids[1]))
            .and_then(|e| e.path)
            .expect("a path");
        let shared = (0..20)
            .filter(|&v| index.versions(key, v).len() == 2)
            .count();
        assert_eq!(shared, 20, "both writers gave every version");
        assert_eq!(
            index.get(&RecordId::from(ids[25])).and_then(|e| e.path),
            Some((key, 0)),
            "the shared object's entry is their whole copy"
        );
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            *vault.read_object(id).expect("read").1,
            contents[id],
            "record {n}"
        );
    }
    // A prune keeping some of each writes the ones on a shared base
    // version whole; what it keeps reads back after reopen.
    let keep: Vec<usize> = (3..15).chain(20..30).chain(45..60).collect();
    let live: HashSet<RecordId> = keep.iter().map(|&n| RecordId::from(ids[n])).collect();
    let report = prune_all(&vault, &live).expect("prune");
    assert_eq!(report.records_kept, live.len() as u64, "{report:?}");
    drop(vault);
    let vault = open(dir.path());
    for (n, id) in ids.iter().enumerate() {
        if live.contains(&RecordId::from(*id)) {
            assert_eq!(
                *vault.read_object(id).expect("read").1,
                contents[id],
                "record {n}"
            );
        } else {
            assert!(!vault.has(id).expect("has"), "record {n} is pruned");
        }
    }
}

#[test]
fn an_encrypted_vault_keys_its_ids_and_reads_back_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = || WriteOptions {
        passphrase: Some(crypto::Passphrase::new("pw")),
        ..WriteOptions::default()
    };
    let vault = Vault::open_local(dir.path(), Create::IfMissing, options()).expect("create");
    let repo = RepoName::parse("acme/app").expect("name");
    let json = br#"{"title":"a pull request"}"#;
    let id = vault
        .put_document(&repo, "pull-requests", "1", json, "d1", 100)
        .expect("put");
    // Keyed: not the id a plain vault gives the same bytes.
    assert_ne!(id, format::record_id(ObjectKind::Document, json));
    let texts: Vec<Vec<u8>> = (0..20).map(|v| version_text(300, v)).collect();
    let ids: Vec<GitOid> = texts.iter().map(|t| blob_id(t)).collect();
    let contents: HashMap<GitOid, Vec<u8>> = ids.iter().copied().zip(texts).collect();
    for id in &ids {
        vault
            .put_objects(&[(*id, Some("src/lib.rs"))], |o: &GitOid| {
                Ok::<_, std::io::Error>((ObjectKind::Blob, contents[o].clone()))
            })
            .expect("put");
    }
    drop(vault);
    let vault = Vault::open_local(dir.path(), Create::Never, options()).expect("reopen");
    let version = vault
        .document_at(&repo, "pull-requests", "1", None)
        .expect("documents")
        .expect("the document");
    assert_eq!(vault.read_document(&version).expect("read"), json);
    for id in &ids {
        assert_eq!(*vault.read_object(id).expect("read").1, contents[id]);
    }
    let deepest = vault.deepest_record().expect("records");
    assert!(
        deepest.1 > 1,
        "deltas along the keyed path: depth {}",
        deepest.1
    );
    drop(vault);
    assert!(matches!(
        Vault::open_local(dir.path(), Create::Never, WriteOptions::default()),
        Err(VaultError::NeedsPassphrase { .. })
    ));
}

/// The files of `file_type` in the local vault at `dir`.
fn count_files(dir: &Path, file_type: FileType) -> usize {
    LocalBackend::open(dir).list(file_type).expect("list").len()
}

#[test]
fn staged_objects_reach_disk_with_the_snapshot_and_only_uncommitted_ones_are_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let repo = RepoName::parse("acme/app").expect("name");
    let blob = |text: &str| (blob_id(text.as_bytes()), text.as_bytes().to_vec());
    let stage = |vault: &Vault, (id, content): &(GitOid, Vec<u8>)| {
        vault
            .stage_objects(&[(*id, Some("notes.txt"))], |_| {
                Ok::<_, std::io::Error>((ObjectKind::Blob, content.clone()))
            })
            .expect("stage")
    };
    let pushed = blob("pushed and committed\n");
    assert_eq!(stage(&vault, &pushed).written, 1);
    // Staged: not yet on disk or in the index, and not stored twice.
    assert!(!vault.has(&pushed.0).expect("has"));
    assert_eq!(count_files(dir.path(), FileType::Data), 0);
    let again = stage(&vault, &pushed);
    assert_eq!((again.written, again.present), (0, 1));

    let refs: BTreeMap<String, GitOid> = [("refs/heads/main".to_string(), pushed.0)].into();
    let snapshot = vault
        .commit_snapshot(new_snapshot(&repo, refs.clone()))
        .expect("commit");
    // The object's data and index files, and the ref chunk's apart: a
    // lost index file loses objects or a ref table, never both.
    assert_eq!(count_files(dir.path(), FileType::Data), 2);
    assert_eq!(count_files(dir.path(), FileType::Index), 2);
    assert!(vault.has(&pushed.0).expect("has"));
    assert!(snapshot.body.stats.stored_bytes > 0);

    // Staged and never committed: gone after a restart, nothing else is.
    let abandoned = blob("copied by a backup that failed\n");
    stage(&vault, &abandoned);
    drop(vault);
    let vault = open(dir.path());
    assert!(!vault.has(&abandoned.0).expect("has"));
    assert_eq!(vault.snapshot_refs(&snapshot).expect("refs"), refs);
    assert_eq!(*vault.read_object(&pushed.0).expect("read").1, pushed.1);

    // Any other write seals what is staged: here a document.
    let documented = blob("staged before a document\n");
    stage(&vault, &documented);
    vault
        .put_document(&repo, "pull-requests", "1", br#"{"v":1}"#, "d1", 100)
        .expect("document");
    assert!(vault.has(&documented.0).expect("has"));
    drop(vault);
    let vault = open(dir.path());
    assert_eq!(
        *vault.read_object(&documented.0).expect("read").1,
        documented.1
    );
}

#[test]
fn a_copy_that_fails_half_way_gives_back_its_path_versions_and_the_next_one_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let repo = RepoName::parse("acme/app").expect("name");
    let first = b"version 1 of the notes\n".to_vec();
    let second = b"version 2 of the notes\n".to_vec();
    let (first_id, second_id) = (blob_id(&first), blob_id(&second));
    let failed = vault.stage_objects(
        &[
            (first_id, Some("notes.txt")),
            (second_id, Some("notes.txt")),
        ],
        |oid| {
            if *oid == second_id {
                Err(std::io::Error::other("the source went away"))
            } else {
                Ok((ObjectKind::Blob, first.clone()))
            }
        },
    );
    assert!(matches!(failed, Err(PutError::Source(_))));
    // The second copy stores both versions again, one a delta on the
    // other, and they read back after the snapshot and a restart.
    let stats = vault
        .stage_objects(
            &[
                (first_id, Some("notes.txt")),
                (second_id, Some("notes.txt")),
            ],
            |oid| {
                Ok::<_, std::io::Error>((
                    ObjectKind::Blob,
                    if *oid == first_id {
                        first.clone()
                    } else {
                        second.clone()
                    },
                ))
            },
        )
        .expect("stage");
    assert_eq!(stats.written, 2);
    let refs = main_at(second_id);
    vault
        .commit_snapshot(new_snapshot(&repo, refs))
        .expect("commit");
    drop(vault);
    let vault = open(dir.path());
    assert_eq!(*vault.read_object(&first_id).expect("read").1, first);
    assert_eq!(*vault.read_object(&second_id).expect("read").1, second);
    // The failed copy left no path version behind: the path's first
    // stored version is 0, and the second is a delta on it.
    let placed = |oid| vault.placement(oid).expect("placement").expect("placed");
    assert_eq!(placed(&first_id).path.map(|(_, v)| v), Some(0));
    assert_eq!(placed(&second_id).path.map(|(_, v)| v), Some(1));
    assert_eq!(placed(&second_id).base, Some(first_id));
}

/// Two backups share the writer: one whose copy fails must not take away
/// what the other staged for its snapshot.
#[test]
fn a_failed_copy_keeps_what_another_backup_staged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let (app, lib) = (
        RepoName::parse("acme/app").expect("name"),
        RepoName::parse("acme/lib").expect("name"),
    );
    let app_blob = b"the app's readme\n".to_vec();
    let app_id = blob_id(&app_blob);
    vault
        .stage_objects(&[(app_id, Some("README"))], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, app_blob.clone()))
        })
        .expect("stage the app's blob");
    let lib_blob = b"the lib's readme\n".to_vec();
    let lib_id = blob_id(&lib_blob);
    let failed = vault.stage_objects(&[(lib_id, Some("README"))], |_| {
        Err::<(ObjectKind, Vec<u8>), _>(std::io::Error::other("the source went away"))
    });
    assert!(matches!(failed, Err(PutError::Source(_))));
    // The app's backup commits what it staged before the other failed.
    let refs = main_at(app_id);
    vault
        .commit_snapshot(new_snapshot(&app, refs))
        .expect("the app's staged blob is still there");
    // The lib's backup, tried again, stores its blob and commits too.
    let stats = vault
        .stage_objects(&[(lib_id, Some("README"))], |_| {
            Ok::<_, std::io::Error>((ObjectKind::Blob, lib_blob.clone()))
        })
        .expect("stage");
    assert_eq!(stats.written, 1);
    let refs = main_at(lib_id);
    vault
        .commit_snapshot(new_snapshot(&lib, refs))
        .expect("commit");
    drop(vault);
    let vault = open(dir.path());
    assert_eq!(*vault.read_object(&app_id).expect("read").1, app_blob);
    assert_eq!(*vault.read_object(&lib_id).expect("read").1, lib_blob);
}

/// A file renamed and then changed continues the line of what it was,
/// when that is its line's latest version; otherwise it starts its own.
#[test]
fn a_renamed_and_changed_file_is_a_delta_of_what_it_was() {
    let texts: Vec<Vec<u8>> = (0..3).map(|v| version_text(2000, v)).collect();
    let ids: Vec<GitOid> = texts.iter().map(|t| blob_id(t)).collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        let at = ids.iter().position(|id| id == o).expect("known id");
        Ok((ObjectKind::Blob, texts[at].clone()))
    };
    let renamed = |like: Option<GitOid>| {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = open(dir.path());
        vault
            .put_objects(&[(ids[0], Some("old/x.rs"))], read)
            .expect("put");
        let stats = vault
            .put_objects(&[(ids[1], Some("new/x.rs"), like)], read)
            .expect("put");
        drop(vault);
        let vault = reopen(dir.path());
        assert_eq!(*vault.read_object(&ids[1]).expect("read").1, texts[1]);
        stats.stored_bytes
    };
    let (hinted, unhinted) = (renamed(Some(ids[0])), renamed(None));
    assert!(
        hinted * 10 < unhinted,
        "a delta of the old content: {hinted} vs {unhinted} bytes"
    );

    // The old path changed after: its line is not shared.
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    for id in [ids[0], ids[1]] {
        vault
            .put_objects(&[(id, Some("old/x.rs"))], read)
            .expect("put");
    }
    let copy = vault
        .put_objects(&[(ids[2], Some("copy/x.rs"), Some(ids[0]))], read)
        .expect("put");
    assert!(
        copy.stored_bytes * 2 > unhinted,
        "stored whole on its own line: {} bytes",
        copy.stored_bytes
    );
    assert_eq!(*vault.read_object(&ids[2]).expect("read").1, texts[2]);
}

/// Every data file's size, summed.
fn data_bytes(vault: &Vault) -> u64 {
    vault
        .inner
        .backend
        .list(FileType::Data)
        .expect("list")
        .iter()
        .map(|(_, size)| size)
        .sum()
}

/// A prune that keeps `live` and recompresses at `level`.
fn recompress(vault: &Vault, live: &HashSet<RecordId>, level: i32) -> prune::PruneReport {
    let options = prune::PruneOptions {
        max_unused_percent: 20,
        dry_run: false,
        recompress_level: Some(level),
    };
    vault
        .prune_records(live, options, &crate::progress::quiet)
        .expect("recompress")
}

#[test]
fn recompressing_makes_the_vault_smaller_reads_back_and_is_done_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    // Real text stored whole (this crate's own sources, one path each) and
    // a history of deltas along one path, each version its own push.
    let sources: Vec<Vec<u8>> = ["mod.rs", "prune.rs", "format.rs", "index.rs", "tests.rs"]
        .iter()
        .map(|f| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/vault")
                    .join(f),
            )
            .expect("source")
        })
        .collect();
    let mut contents: HashMap<GitOid, Vec<u8>> = HashMap::new();
    for (n, text) in sources.iter().enumerate() {
        let id = blob_id(text);
        contents.insert(id, text.clone());
        let path = format!("src/{n}.rs");
        vault
            .put_objects(&[(id, Some(path.as_str()))], |_| {
                Ok::<_, std::io::Error>((ObjectKind::Blob, text.clone()))
            })
            .expect("put");
    }
    let history: Vec<GitOid> = (0..40).map(|v| blob_id(&version_text(1500, v))).collect();
    for (v, id) in history.iter().enumerate() {
        contents.insert(*id, version_text(1500, v));
        vault
            .put_objects(&[(*id, Some("f.rs"))], |_| {
                Ok::<_, std::io::Error>((ObjectKind::Blob, version_text(1500, v)))
            })
            .expect("put");
    }
    let live: HashSet<RecordId> = contents.keys().map(|o| RecordId::from(*o)).collect();
    let before = data_bytes(&vault);
    let files_before = count_files(dir.path(), FileType::Data);
    let report = recompress(&vault, &live, 19);
    assert_eq!(report.records_recompressed, live.len() as u64, "{report:?}");
    assert_eq!(report.data_files_recompressed, files_before as u64);
    assert_eq!(report.data_files_written, 1, "{report:?}");
    let after = data_bytes(&vault);
    assert_eq!(after, report.data_bytes_after);
    assert!(
        after * 100 < before * 95,
        "level 19 should be at least 5% smaller: {after} vs {before}"
    );
    for (_, bytes) in files_of(dir.path(), &vault, FileType::Data) {
        assert_eq!(format::data_file_level(&bytes), Some(19));
    }
    drop(vault);

    let vault = reopen(dir.path());
    for (id, content) in &contents {
        assert_eq!(*vault.read_object(id).expect("read").1, *content);
        let record = RecordId::from(*id);
        let depth = vault
            .inner
            .index
            .read()
            .expect("index")
            .get(&record)
            .map(|e| e.depth);
        assert_eq!(depth, Some(chain_length(&vault, &record)));
    }
    let deepest = vault
        .inner
        .index
        .read()
        .expect("index")
        .entries()
        .map(|(_, e)| e.depth)
        .max();
    assert!(deepest > Some(1), "deltas stay deltas: {deepest:?}");
    // Done once: a second pass at the same level (or a lower one) finds
    // nothing to do; a higher one would.
    for level in [19, 9] {
        let again = recompress(&vault, &live, level);
        assert_eq!(
            (again.records_recompressed, again.data_files_written),
            (0, 0),
            "{again:?}"
        );
    }
    let out_of_range = vault.prune_records(
        &live,
        prune::PruneOptions {
            max_unused_percent: 20,
            dry_run: false,
            recompress_level: Some(22),
        },
        &crate::progress::quiet,
    );
    assert!(
        out_of_range
            .expect_err("level 22 is refused")
            .to_string()
            .contains("outside 1-19")
    );
}

/// A first backup's bulk copy compresses without long-distance matching
/// (`Effort::Bulk`): on a file of near-identical lines edited one line at
/// a time that costs several times what one push per version stores,
/// still a small delta per version, and a recompression at the same level
/// (which compresses thoroughly) brings it back.
#[test]
fn a_bulk_copy_stays_deltas_and_a_recompression_makes_it_thorough() {
    let versions = 300u32;
    let contents: Vec<(GitOid, Vec<u8>)> = (0..versions)
        .map(|v| {
            let text = version_text(2000, v as usize);
            (blob_id(&text), text)
        })
        .collect();
    let by_id: HashMap<GitOid, Vec<u8>> = contents.iter().cloned().collect();
    let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
        Ok((ObjectKind::Blob, by_id[o].clone()))
    };
    let objects: Vec<(GitOid, Option<&str>)> = contents
        .iter()
        .map(|(id, _)| (*id, Some("src/main.rs")))
        .collect();
    assert!(objects.len() >= BULK_FROM);
    let raw: u64 = contents.iter().map(|(_, c)| c.len() as u64).sum();

    let one_by_one = tempfile::tempdir().expect("tempdir");
    let vault = open(one_by_one.path());
    let mut thorough = 0;
    for object in &objects {
        thorough += vault
            .put_objects(&[*object], read)
            .expect("put")
            .stored_bytes;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = open(dir.path());
    let stats = vault.put_objects(&objects, read).expect("put");
    assert_eq!(stats.written, u64::from(versions));
    let bulk = stats.stored_bytes;
    assert!(
        bulk > thorough,
        "bulk {bulk} vs {thorough}: long-distance matching was used"
    );
    assert!(bulk * 100 < raw, "bulk {bulk} bytes of {raw}: not deltas");
    for (id, content) in &contents {
        assert_eq!(*vault.read_object(id).expect("read").1, *content);
    }

    let live: HashSet<RecordId> = by_id.keys().map(|o| RecordId::from(*o)).collect();
    let report = recompress(&vault, &live, 3);
    assert_eq!(
        report.records_recompressed,
        u64::from(versions),
        "{report:?}"
    );
    let recompressed = data_bytes(&vault);
    assert!(
        recompressed * 4 < bulk && recompressed * 4 <= thorough * 5,
        "recompressed {recompressed} bytes, bulk {bulk}, one push per version {thorough}"
    );
    for (id, content) in &contents {
        assert_eq!(*vault.read_object(id).expect("read").1, *content);
    }
}
