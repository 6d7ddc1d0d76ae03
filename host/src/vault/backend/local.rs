//! The vault in a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, FileName, FileType};

/// Temporary files are written beside their final name with this suffix and
/// renamed when complete; a crash leaves at most a `.tmp` that listings skip
/// and [`LocalBackend::remove_stale_temporaries`] removes.
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    counter: AtomicU64,
}

impl LocalBackend {
    /// A backend rooted at `root`. Creates nothing: see [`LocalBackend::create`].
    pub fn open(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        }
    }

    /// Create the root and the prefix directories.
    pub fn create(root: &Path) -> Result<Self, BackendError> {
        let backend = Self::open(root);
        for t in FileType::ALL {
            let dir = root.join(t.prefix());
            fs::create_dir_all(&dir).map_err(|source| backend.io(&dir, source))?;
        }
        sync_dir(root).map_err(|source| backend.io(root, source))?;
        Ok(backend)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, path: &Path, source: std::io::Error) -> BackendError {
        let path = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string();
        if source.kind() == ErrorKind::NotFound {
            return BackendError::NotFound {
                location: self.location(),
                path,
            };
        }
        if source.raw_os_error() == Some(28) || source.kind() == ErrorKind::StorageFull {
            return BackendError::NoSpace {
                location: self.location(),
                path,
            };
        }
        BackendError::Io {
            location: self.location(),
            path,
            source,
        }
    }

    fn path(&self, file_type: FileType, name: &FileName) -> PathBuf {
        self.root.join(file_type.path_of(name))
    }

    /// Remove `.tmp` files left by a crashed writer. Only safe while no
    /// other process writes to this vault.
    pub fn remove_stale_temporaries(&self) -> Result<u64, BackendError> {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io(&dir, e))?;
                let path = entry.path();
                let file_type = entry.file_type().map_err(|e| self.io(&path, e))?;
                if file_type.is_dir() {
                    dirs.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(TMP_SUFFIX))
                {
                    fs::remove_file(&path).map_err(|e| self.io(&path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A file written and made durable under its temporary name, not yet
/// renamed to its own.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl LocalBackend {
    /// Write `data` to a temporary file beside its final name and fsync it.
    fn stage(
        &self,
        file_type: FileType,
        name: &FileName,
        data: &[u8],
    ) -> Result<Staged, BackendError> {
        let path = self.path(file_type, name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| self.io(&dir, e))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{n}{TMP_SUFFIX}", name, std::process::id()));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| self.io(&tmp, e))?;
            file.write_all(data).map_err(|e| self.io(&tmp, e))?;
            file.sync_all().map_err(|e| self.io(&tmp, e))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Staged { tmp, path, dir })
    }

    /// Give a staged file its name, durably.
    fn publish(&self, staged: Staged) -> Result<(), BackendError> {
        let Staged { tmp, path, dir } = staged;
        let result = fs::rename(&tmp, &path)
            .map_err(|e| self.io(&path, e))
            // The rename must survive a crash before anything points at it.
            .and_then(|()| sync_dir(&dir).map_err(|e| self.io(&dir, e)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, file_type: FileType) -> Result<Vec<(FileName, u64)>, BackendError> {
        let mut out = Vec::new();
        if file_type == FileType::Config {
            let path = self.path(file_type, &FileName::config());
            if let Ok(meta) = fs::metadata(&path) {
                out.push((FileName::config(), meta.len()));
            }
            return Ok(out);
        }
        let top = self.root.join(file_type.prefix());
        let mut dirs = vec![top];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io(&dir, e))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|e| self.io(&path, e))?;
                if kind.is_dir() {
                    if file_type == FileType::Data {
                        dirs.push(path);
                    }
                    continue;
                }
                let Some(name) = entry.file_name().to_str().and_then(FileName::parse) else {
                    continue;
                };
                let len = entry.metadata().map_err(|e| self.io(&path, e))?.len();
                out.push((name, len));
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, file_type: FileType, name: &FileName) -> Result<Vec<u8>, BackendError> {
        let path = self.path(file_type, name);
        fs::read(&path).map_err(|e| self.io(&path, e))
    }

    fn read_range(
        &self,
        file_type: FileType,
        name: &FileName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let path = self.path(file_type, name);
        let file = File::open(&path).map_err(|e| self.io(&path, e))?;
        let len = usize::try_from(len).map_err(|_| {
            self.io(
                &path,
                std::io::Error::new(ErrorKind::InvalidInput, "range too large"),
            )
        })?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                self.io(
                    &path,
                    std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("file ends before byte {}", offset + len as u64),
                    ),
                )
            } else {
                self.io(&path, e)
            }
        })?;
        Ok(buf)
    }

    fn write(&self, file_type: FileType, name: &FileName, data: &[u8]) -> Result<(), BackendError> {
        let staged = self.stage(file_type, name, data)?;
        self.publish(staged)
    }

    /// Each file's bytes are made durable under a temporary name, all at
    /// once (concurrent fsyncs share the filesystem's journal commits);
    /// then the files are renamed one by one, each rename made durable
    /// before the next.
    fn write_in_order(&self, files: &[(FileType, &FileName, &[u8])]) -> Result<(), BackendError> {
        if files.len() < 2 {
            return files
                .iter()
                .try_for_each(|(file_type, name, data)| self.write(*file_type, name, data));
        }
        let staged: Vec<Result<Staged, BackendError>> = std::thread::scope(|scope| {
            let others: Vec<_> = files[1..]
                .iter()
                .map(|(file_type, name, data)| scope.spawn(|| self.stage(*file_type, name, data)))
                .collect();
            let (file_type, name, data) = &files[0];
            let mut staged = vec![self.stage(*file_type, name, data)];
            staged.extend(others.into_iter().map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(self.io(
                        &self.root,
                        std::io::Error::other("a thread writing a vault file panicked"),
                    ))
                })
            }));
            staged
        });
        let mut ready = Vec::with_capacity(staged.len());
        let mut failed = None;
        for result in staged {
            match result {
                Ok(file) => ready.push(file),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            for file in ready {
                let _ = fs::remove_file(&file.tmp);
            }
            return Err(e);
        }
        let mut ready = ready.into_iter();
        while let Some(file) = ready.next() {
            if let Err(e) = self.publish(file) {
                for rest in ready {
                    let _ = fs::remove_file(&rest.tmp);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn remove(&self, file_type: FileType, name: &FileName) -> Result<(), BackendError> {
        let path = self.path(file_type, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_lists_reads_ranges_and_skips_strangers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = LocalBackend::create(dir.path()).expect("create");
        let name = FileName::from_hash(&[0xab; 32]);
        backend
            .write(FileType::Data, &name, b"hello world")
            .expect("write");
        backend
            .write(FileType::Config, &FileName::config(), b"{}")
            .expect("config");
        std::fs::write(dir.path().join("data/ab/stray.tmp"), b"x").expect("stray");
        std::fs::write(dir.path().join("index/README"), b"x").expect("stranger");
        assert_eq!(
            backend.list(FileType::Data).expect("list"),
            vec![(name.clone(), 11)]
        );
        assert!(backend.list(FileType::Index).expect("list").is_empty());
        assert_eq!(backend.list(FileType::Config).expect("list").len(), 1);
        assert_eq!(
            backend
                .read_range(FileType::Data, &name, 6, 5)
                .expect("range"),
            b"world"
        );
        let short = backend
            .read_range(FileType::Data, &name, 6, 50)
            .expect_err("past the end");
        assert!(short.to_string().contains(name.as_str()), "{short}");
        let missing = backend.read(FileType::Index, &name).expect_err("missing");
        assert!(missing.is_not_found());
        backend.remove(FileType::Data, &name).expect("remove");
        backend.remove(FileType::Data, &name).expect("remove twice");
        assert!(backend.list(FileType::Data).expect("list").is_empty());
        assert_eq!(backend.remove_stale_temporaries().expect("clean"), 1);
    }

    /// Every regular file under `dir`, as paths relative to it.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let relative = path.strip_prefix(dir).expect("under");
                    out.push(relative.display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn ordered_writes_publish_all_or_leave_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = LocalBackend::create(dir.path()).expect("create");
        let (data, index, snapshot) = (
            FileName::from_hash(&[0x11; 32]),
            FileName::from_hash(&[0x22; 32]),
            FileName::from_hash(&[0x33; 32]),
        );
        backend
            .write_in_order(&[
                (FileType::Data, &data, b"records"),
                (FileType::Index, &index, b"where they are"),
                (FileType::Snapshot, &snapshot, b"refs"),
            ])
            .expect("write");
        assert_eq!(
            backend.read(FileType::Data, &data).expect("data"),
            b"records"
        );
        assert_eq!(
            backend.read(FileType::Index, &index).expect("index"),
            b"where they are"
        );
        assert_eq!(
            backend
                .read(FileType::Snapshot, &snapshot)
                .expect("snapshot"),
            b"refs"
        );

        // A snapshot that cannot be staged (its directory is a file): the
        // error names it, and nothing of the three becomes visible.
        fs::remove_dir_all(dir.path().join("snapshots")).expect("rm");
        fs::write(dir.path().join("snapshots"), b"in the way").expect("block");
        let (data2, index2) = (
            FileName::from_hash(&[0x44; 32]),
            FileName::from_hash(&[0x55; 32]),
        );
        let before = files_under(dir.path());
        let error = backend
            .write_in_order(&[
                (FileType::Data, &data2, b"more records"),
                (FileType::Index, &index2, b"where"),
                (FileType::Snapshot, &snapshot, b"refs"),
            ])
            .expect_err("snapshots is not a directory");
        assert!(error.to_string().contains("snapshots"), "{error}");
        assert_eq!(files_under(dir.path()), before);
        assert_eq!(backend.remove_stale_temporaries().expect("clean"), 0);
    }

    #[test]
    fn file_names_are_parsed() {
        assert!(FileName::parse(&"a".repeat(64)).is_some());
        assert!(FileName::parse(&"A".repeat(64)).is_none());
        assert!(FileName::parse("../../etc/passwd").is_none());
        assert!(FileName::parse(&"a".repeat(63)).is_none());
    }
}
