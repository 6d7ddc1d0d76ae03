//! Append-only pack files: `packs/<id:08>.hvpack`.
//!
//! A pack is an 8-byte header (`HVPACK\0\x01`) followed by records:
//!
//! ```text
//! content id   32 bytes   BLAKE3 of "<kind> <size>\0<content>"
//! kind          1 byte    1 commit, 2 tree, 3 blob, 4 tag
//! raw size      8 bytes   u64 big-endian, uncompressed content length
//! stored size   4 bytes   u32 big-endian, length of the zstd frame
//! data          n bytes   one zstd frame of the content
//! ```
//!
//! Records are self-describing, so the index can be rebuilt from the packs.
//! Bytes are never rewritten; a crash can only leave an unreferenced tail.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::ids::{ContentId, ObjectKind};

pub const PACK_MAGIC: &[u8; 8] = b"HVPACK\0\x01";
pub const RECORD_HEADER: u64 = 32 + 1 + 8 + 4;
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pack {path} at offset {offset}: {message}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        message: String,
    },
}

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u64,
    pub kind: ObjectKind,
}

impl Location {
    pub const ENCODED_LEN: usize = 4 + 8 + 4 + 8 + 1;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..4].copy_from_slice(&self.pack.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..16].copy_from_slice(&self.stored_len.to_be_bytes());
        out[16..24].copy_from_slice(&self.raw_len.to_be_bytes());
        out[24] = self.kind.code();
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        Some(Self {
            pack: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[4..12].try_into().ok()?),
            stored_len: u32::from_be_bytes(bytes[12..16].try_into().ok()?),
            raw_len: u64::from_be_bytes(bytes[16..24].try_into().ok()?),
            kind: ObjectKind::from_code(bytes[24])?,
        })
    }
}

pub fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.hvpack"))
}

/// The content id of an object: BLAKE3 over its canonical git encoding.
pub fn content_id(kind: ObjectKind, data: &[u8]) -> ContentId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(data.len().to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(data);
    ContentId(*hasher.finalize().as_bytes())
}

/// Appends records to one pack file.
pub struct PackWriter {
    pub id: u32,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// A write or sync failed: the file may hold bytes `len` does not
    /// count, so no further record may be appended (a new pack is started).
    failed: bool,
}

impl PackWriter {
    pub fn create(dir: &Path, id: u32) -> Result<Self, PackError> {
        let path = pack_path(dir, id);
        let io = |source| PackError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(PACK_MAGIC).map_err(io)?;
        // The new file's directory entry must survive a crash before any
        // index entry points into it.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| PackError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            id,
            path,
            out,
            len: PACK_MAGIC.len() as u64,
            failed: false,
        })
    }

    /// Whether a write or sync failed; such a writer must be replaced.
    pub fn failed(&self) -> bool {
        self.failed
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= PACK_MAGIC.len() as u64
    }

    /// Compress and append one object; returns where it went.
    pub fn append(
        &mut self,
        id: &ContentId,
        kind: ObjectKind,
        data: &[u8],
    ) -> Result<Location, PackError> {
        let result = self.append_inner(id, kind, data);
        self.failed |= result.is_err();
        result
    }

    fn append_inner(
        &mut self,
        id: &ContentId,
        kind: ObjectKind,
        data: &[u8],
    ) -> Result<Location, PackError> {
        let compressed =
            zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|source| PackError::Io {
                path: self.path.clone(),
                source,
            })?;
        let stored_len = u32::try_from(compressed.len()).map_err(|_| PackError::Corrupt {
            path: self.path.clone(),
            offset: self.len,
            message: format!("object {id} compresses to more than 4 GiB"),
        })?;
        let offset = self.len;
        let io = |source| PackError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&id.0).map_err(io)?;
        self.out.write_all(&[kind.code()]).map_err(io)?;
        self.out
            .write_all(&(data.len() as u64).to_be_bytes())
            .map_err(io)?;
        self.out.write_all(&stored_len.to_be_bytes()).map_err(io)?;
        self.out.write_all(&compressed).map_err(io)?;
        self.len += RECORD_HEADER + u64::from(stored_len);
        Ok(Location {
            pack: self.id,
            offset,
            stored_len,
            raw_len: data.len() as u64,
            kind,
        })
    }

    /// Make everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), PackError> {
        let path = self.path.clone();
        let result = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(|source| PackError::Io { path, source });
        // After a failed fsync the kernel may have dropped the data: never
        // trust this file again.
        self.failed |= result.is_err();
        result
    }
}

/// Read one record and check it against its content id.
pub fn read_record(
    file: &File,
    path: &Path,
    expected: &ContentId,
    location: &Location,
) -> Result<Vec<u8>, PackError> {
    let corrupt = |message: String| PackError::Corrupt {
        path: path.to_path_buf(),
        offset: location.offset,
        message,
    };
    let mut header = [0u8; RECORD_HEADER as usize];
    file.read_exact_at(&mut header, location.offset)
        .map_err(|source| PackError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if header[..32] != expected.0 {
        return Err(corrupt(format!("record is not object {expected}")));
    }
    let mut compressed = vec![0u8; location.stored_len as usize];
    file.read_exact_at(&mut compressed, location.offset + RECORD_HEADER)
        .map_err(|source| PackError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let capacity =
        usize::try_from(location.raw_len).map_err(|_| corrupt("object too large".into()))?;
    let data = zstd::bulk::decompress(&compressed, capacity)
        .map_err(|e| corrupt(format!("object {expected} does not decompress: {e}")))?;
    if content_id(location.kind, &data) != *expected {
        return Err(corrupt(format!("object {expected} fails its BLAKE3 check")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_round_trips() {
        let loc = Location {
            pack: 7,
            offset: 1 << 40,
            stored_len: 99,
            raw_len: 12345,
            kind: ObjectKind::Tree,
        };
        assert_eq!(Location::decode(&loc.encode()), Some(loc));
        assert_eq!(Location::decode(&[0u8; 3]), None);
    }

    #[test]
    fn write_then_read_and_detect_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = PackWriter::create(dir.path(), 1).expect("create");
        let data = b"hello hookvault".repeat(10);
        let id = content_id(ObjectKind::Blob, &data);
        let loc = writer.append(&id, ObjectKind::Blob, &data).expect("append");
        writer.sync().expect("sync");
        let path = pack_path(dir.path(), 1);
        let file = File::open(&path).expect("open");
        assert_eq!(read_record(&file, &path, &id, &loc).expect("read"), data);

        // Flip one byte of the compressed data: the read must fail loudly.
        let mut bytes = std::fs::read(&path).expect("read file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let file = File::open(&path).expect("open");
        assert!(read_record(&file, &path, &id, &loc).is_err());
    }
}
