//! The two sled databases (the delivery queue, and the cache of a bucket's
//! small files) under damage: a copy of each with one byte flipped, at
//! many places in each of its files, is opened and read. sled may then
//! fail, or open and return anything; what must never happen is a hang, a
//! panic, or (for the cache, which has a source of truth) a wrong file.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use crate::pipeline::queue::{Delivery, Filter, Queue, Status};
use crate::vault::backend::{FileName, FileType};
use crate::vault::cache::FileCache;

/// Places flipped in each file, evenly and again in its first 4 KiB.
const PLACES: usize = 24;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Run `check` on copies of `pristine`, each with one byte flipped, each
/// in a thread given 10 s. Returns how many copies ended in an error.
fn each_flipped_copy(
    tmp: &Path,
    pristine: &Path,
    check: impl Fn(PathBuf) -> Result<(), String> + Send + Sync + Clone + 'static,
) -> (usize, usize) {
    let targets = files_under(pristine);
    assert!(!targets.is_empty(), "nothing under {}", pristine.display());
    let (mut cases, mut errors) = (0, 0);
    for target in &targets {
        let rel = target.strip_prefix(pristine).expect("under");
        let len = std::fs::metadata(target).expect("meta").len() as usize;
        // Evenly through the file, and closely through its first 4 KiB
        // (headers, and where a small database's records are).
        let head = len.min(4096);
        let mut places: Vec<usize> = (0..PLACES).map(|k| k * len / PLACES).collect();
        places.extend((0..PLACES).map(|k| k * head / PLACES));
        places.sort_unstable();
        places.dedup();
        for at in places.into_iter().filter(|&at| at < len) {
            let dir = tmp.join(format!("case-{cases}"));
            cases += 1;
            for f in &targets {
                let to = dir.join(f.strip_prefix(pristine).expect("under"));
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(f, &to).expect("copy");
            }
            let victim = dir.join(rel);
            let mut bytes = std::fs::read(&victim).expect("read");
            bytes[at] ^= 0x5a;
            std::fs::write(&victim, &bytes).expect("write");
            let (tx, rx) = channel();
            let check = check.clone();
            std::thread::spawn(move || {
                let _ = tx.send(check(dir));
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.starts_with("wrong") => panic!("{} at {at}: {e}", rel.display()),
                Ok(Err(_)) => errors += 1,
                Err(RecvTimeoutError::Timeout) => panic!("{} at {at}: hangs", rel.display()),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{} at {at}: panics", rel.display())
                }
            }
        }
    }
    (cases, errors)
}

#[test]
fn a_flipped_byte_in_the_file_cache_never_hangs_or_gives_a_wrong_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pristine = tmp.path().join("pristine");
    let contents: Vec<(FileName, Vec<u8>)> = (0..40u32)
        .map(|i| {
            let bytes = format!("file {i} ").repeat(50 + i as usize).into_bytes();
            (FileName::from_hash(blake3::hash(&bytes).as_bytes()), bytes)
        })
        .collect();
    {
        let cache = FileCache::open(&pristine).expect("open");
        for (name, bytes) in &contents {
            cache.put(FileType::Index, name, bytes);
        }
        cache.flush();
    }
    let (cases, errors) = each_flipped_copy(tmp.path(), &pristine, move |dir| {
        // A cache that cannot be opened is deleted and rebuilt, so opening
        // must succeed; what it returns must be right or nothing.
        let cache = FileCache::open(&dir).map_err(|e| format!("wrong: not rebuilt: {e}"))?;
        let wrong = contents
            .iter()
            .filter(|(name, bytes)| {
                cache
                    .get(FileType::Index, name)
                    .is_some_and(|got| got != *bytes)
            })
            .count();
        match wrong {
            0 => Ok(()),
            n => Err(format!("wrong: {n} files differ from what was put")),
        }
    });
    assert!(cases >= PLACES, "{cases} cases");
    assert_eq!(errors, 0);
}

#[test]
fn a_flipped_byte_in_the_queue_never_hangs_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pristine = tmp.path().join("pristine");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let queue = Queue::open_dir(&pristine).expect("queue");
        for i in 0..30 {
            let delivery = Delivery {
                id: format!("d{i}"),
                source: "cloud".into(),
                event_key: "repo:push".into(),
                received_at_ms: i,
                status: Status::Done,
                attempts: 1,
                last_error: None,
                failure: None,
                last_attempt_ms: None,
                event: None,
                snapshot: None,
                entry: None,
            };
            queue.record(delivery).await.expect("record");
        }
        queue.flush_now().expect("flush");
    });
    // The queue is the only copy of what was acknowledged, so a damaged
    // one may fail with an error; it must answer.
    let (cases, errors) = each_flipped_copy(tmp.path(), &pristine, |dir| {
        let queue = Queue::open_dir(&dir).map_err(|e| e.to_string())?;
        queue.counts().map_err(|e| e.to_string())?;
        queue.list(&Filter::default()).map_err(|e| e.to_string())?;
        Ok(())
    });
    assert!(cases >= PLACES, "{cases} cases, {errors} errors");
}
