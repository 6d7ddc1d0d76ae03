//! The bytes of format 2 (FORMAT.md): the config file, the envelope of
//! index/snapshot/document files, record headers, checks, path keys, and the
//! zstd codec for whole and delta ("patch-from") frames. Pure functions; no
//! I/O.

use integer_encoding::VarInt;
use serde::{Deserialize, Serialize};

use super::crypto::{MasterKey, Purpose};
use crate::ids::{ObjectKind, RecordId};

pub const FORMAT_VERSION: u32 = 2;
pub const DATA_MAGIC: &[u8; 8] = b"HVDATA\x00\x02";
pub const INDEX_MAGIC: &[u8; 8] = b"HVINDX\x00\x02";
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"HVSNAP\x00\x02";
pub const DOCUMENT_MAGIC: &[u8; 8] = b"HVDOCU\x00\x02";

/// The highest zstd level a recompression uses: above it zstd's "ultra"
/// levels need windows (and memory) far beyond a record's.
pub const MAX_RECOMPRESS_LEVEL: i32 = 19;

/// A data file's magic with its seventh byte set to `level`: the zstd level
/// every record in the file was recompressed at, at least, or 0 for a file
/// whose records are as a backup wrote them.
pub fn data_magic(level: u8) -> [u8; 8] {
    let mut magic = *DATA_MAGIC;
    magic[6] = level;
    magic
}

/// The recompression level a data file's first bytes name (see
/// [`data_magic`]); `None` if they are not a data file's magic.
pub fn data_file_level(head: &[u8]) -> Option<u8> {
    let head = head.get(..DATA_MAGIC.len())?;
    (head[..6] == DATA_MAGIC[..6] && head[7] == DATA_MAGIC[7]).then_some(head[6])
}

/// Deltas never chain deeper than this; a record whose base is this deep is
/// stored whole.
pub const MAX_DEPTH: u8 = 32;
/// Bases larger than this are not used (the decoder's window must hold base
/// and content).
pub const MAX_DELTA_BASE: usize = 64 << 20;
/// zstd's largest window (2^31) is the decoder's limit.
const MAX_WINDOW_LOG: u32 = 31;

/// The high bit of a record's first byte: the frame needs its base.
const FLAG_DELTA: u8 = 0x80;

/// A malformed byte sequence; the caller adds which file and offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FormatError(pub String);

fn bad(message: impl Into<String>) -> FormatError {
    FormatError(message.into())
}

/// The `config` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultConfig {
    pub format: u32,
    /// Random, 64 hex digits: tells vaults apart.
    pub id: String,
    pub created_ms: u64,
    /// `null`, or the cipher of an encrypted vault (FORMAT.md, "Encryption").
    pub encryption: Option<serde_json::Value>,
}

/// The canonical encoding's header: `"<kind> <size>\0"`.
fn canonical_header(kind: ObjectKind, size: usize) -> String {
    format!("{} {size}\0", kind.as_str())
}

/// The id of a record that is not a git object: BLAKE3-160 of its canonical
/// encoding.
pub fn record_id(kind: ObjectKind, content: &[u8]) -> RecordId {
    record_id_keyed(kind, content, None)
}

/// [`record_id`], keyed in an encrypted vault (`id_key`, derived from the
/// master key), so an id tells nothing about content to whoever lacks it.
pub fn record_id_keyed(kind: ObjectKind, content: &[u8], id_key: Option<&[u8; 32]>) -> RecordId {
    let mut hasher = match id_key {
        Some(key) => blake3::Hasher::new_keyed(key),
        None => blake3::Hasher::new(),
    };
    hasher.update(canonical_header(kind, content.len()).as_bytes());
    hasher.update(content);
    let mut id = [0u8; 20];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..20]);
    RecordId(id)
}

/// Whether `content` of `kind` is the record `id` names: a git object's id
/// is git's SHA-1 of its canonical encoding, any other record's the BLAKE3
/// of it, so every record is checked against its own id and no separate
/// check is stored.
pub fn matches_id(id: &RecordId, kind: ObjectKind, content: &[u8]) -> bool {
    matches_id_keyed(id, kind, content, None)
}

/// [`matches_id`] with the vault's id key (see [`record_id_keyed`]).
pub fn matches_id_keyed(
    id: &RecordId,
    kind: ObjectKind,
    content: &[u8],
    id_key: Option<&[u8; 32]>,
) -> bool {
    match crate::git::from_kind(kind) {
        Some(git_kind) => gix::objs::compute_hash(gix::hash::Kind::Sha1, git_kind, content)
            .is_ok_and(|computed| computed.as_bytes() == id.0.as_slice()),
        None => record_id_keyed(kind, content, id_key) == *id,
    }
}

/// The path key of `path` for records of `kind` (FORMAT.md, Terms).
pub fn path_key(kind: ObjectKind, path: &str) -> u64 {
    path_key_keyed(kind, path, None)
}

/// [`path_key`], keyed in an encrypted vault.
pub fn path_key_keyed(kind: ObjectKind, path: &str, id_key: Option<&[u8; 32]>) -> u64 {
    let mut hasher = match id_key {
        Some(key) => blake3::Hasher::new_keyed(key),
        None => blake3::Hasher::new(),
    };
    hasher.update(kind.as_str().as_bytes());
    hasher.update(b":");
    hasher.update(path.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

/// The version a delta of version `v` is based on: `v − 16^k`, where `16^k`
/// is the largest power of 16 dividing `v`. `None` for version 0.
pub fn skip_delta_base(v: u32) -> Option<u32> {
    if v == 0 {
        return None;
    }
    let k = v.trailing_zeros() / 4;
    Some(v - (1u32 << (4 * k)))
}

/// The header of a record in a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: ObjectKind,
    pub delta: bool,
    pub raw_size: u64,
}

impl RecordHeader {
    /// One byte of kind and flag, then the raw size; the frame is the
    /// rest of the record, whose length the index gives.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind.code() | if self.delta { FLAG_DELTA } else { 0 });
        push_varint(out, self.raw_size);
    }

    /// Parse a header at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), FormatError> {
        let first = *bytes
            .first()
            .ok_or_else(|| bad("record header is truncated"))?;
        let code = first & !FLAG_DELTA;
        let kind = ObjectKind::from_code(code)
            .ok_or_else(|| bad(format!("unknown record kind {code}")))?;
        let mut at = 1;
        let raw_size = read_varint(bytes, &mut at)?;
        Ok((
            Self {
                kind,
                delta: first & FLAG_DELTA != 0,
                raw_size,
            },
            at,
        ))
    }
}

pub fn push_varint(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; 10];
    let n = value.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

pub fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, FormatError> {
    let rest = bytes.get(*at..).ok_or_else(|| bad("truncated"))?;
    let (value, n) = u64::decode_var(rest).ok_or_else(|| bad("truncated or invalid varint"))?;
    *at += n;
    Ok(value)
}

pub fn read_bytes<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], FormatError> {
    let end = at.checked_add(n).ok_or_else(|| bad("length overflows"))?;
    let out = bytes.get(*at..end).ok_or_else(|| bad("truncated"))?;
    *at = end;
    Ok(out)
}

/// Wrap a body in the envelope of `magic` (zstd frame).
pub fn seal(magic: &[u8; 8], body: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    seal_keyed(magic, body, level, None)
}

/// Envelope kind byte (the seventh) of an encrypted file.
const ENVELOPE_SEALED: u8 = 1;

/// [`seal`], and with `key` the zstd frame encrypted: kind 1, then
/// `nonce ‖ AEAD(frame) ‖ tag`.
pub fn seal_keyed(
    magic: &[u8; 8],
    body: &[u8],
    level: i32,
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let mut out = magic.to_vec();
    let frame = zstd::bulk::compress(body, level).map_err(|e| bad(format!("zstd: {e}")))?;
    match key {
        None => out.extend_from_slice(&frame),
        Some(key) => {
            out[6] = ENVELOPE_SEALED;
            let mut header = [0u8; 8];
            header.copy_from_slice(&out);
            out.extend_from_slice(
                &key.seal(Purpose::File(header), &frame)
                    .map_err(|e| bad(e.to_string()))?,
            );
        }
    }
    Ok(out)
}

/// [`open_envelope`] of a file of a vault that `key` encrypts (or that is
/// not encrypted, with `None`). A plain file in an encrypted vault is
/// refused: it can only have been put there by someone without the key.
pub fn open_envelope_keyed(
    magic: &[u8; 8],
    bytes: &[u8],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let (Some(key), Some(head)) = (key, bytes.get(..8)) else {
        return open_envelope(magic, bytes);
    };
    if head[..6] != magic[..6] {
        return Err(bad("wrong magic: not a file of this type"));
    }
    if head[6] != ENVELOPE_SEALED {
        return Err(bad(
            "not encrypted, in an encrypted vault (not written by this vault's writers)",
        ));
    }
    let mut header = [0u8; 8];
    header.copy_from_slice(head);
    let frame = key
        .open(Purpose::File(header), &bytes[8..])
        .map_err(|e| bad(e.to_string()))?;
    let mut plain = magic.to_vec();
    plain[7] = head[7];
    plain.extend_from_slice(&frame);
    open_envelope(magic, &plain)
}

/// A record as the data file holds it: `header ‖ frame`, sealed with
/// `key` (see [`seal_record`]).
pub fn encode_record(
    header: RecordHeader,
    frame: &[u8],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let mut record = Vec::with_capacity(frame.len() + 24);
    header.encode(&mut record);
    record.extend_from_slice(frame);
    seal_record(record, key)
}

/// A record (header and frame) as the data file holds it: with `key`,
/// `nonce ‖ AEAD(header ‖ frame) ‖ tag`, so not even kinds and sizes show.
pub fn seal_record(record: Vec<u8>, key: Option<&MasterKey>) -> Result<Vec<u8>, FormatError> {
    match key {
        None => Ok(record),
        Some(key) => key
            .seal(Purpose::Record, &record)
            .map_err(|e| bad(e.to_string())),
    }
}

/// The header and frame of a record as the data file holds it.
pub fn open_record<'a>(
    bytes: &'a [u8],
    key: Option<&MasterKey>,
) -> Result<std::borrow::Cow<'a, [u8]>, FormatError> {
    match key {
        None => Ok(std::borrow::Cow::Borrowed(bytes)),
        Some(key) => key
            .open(Purpose::Record, bytes)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| bad(e.to_string())),
    }
}

/// Largest body an envelope may claim (index files of very large vaults
/// stay far below this).
const MAX_ENVELOPE_BODY: u64 = 1 << 32;

/// Unwrap an envelope, checking its magic.
pub fn open_envelope(magic: &[u8; 8], bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let Some(head) = bytes.get(..8) else {
        return Err(bad("file is shorter than its header"));
    };
    if head[..6] != magic[..6] {
        return Err(bad("wrong magic: not a file of this type"));
    }
    if head[6] != 0 {
        return Err(bad(format!(
            "envelope kind {} is not supported (encrypted vaults need a newer hookvault)",
            head[6]
        )));
    }
    if head[7] != magic[7] {
        return Err(bad(format!(
            "file format {} (this hookvault reads {FORMAT_VERSION})",
            head[7]
        )));
    }
    let frame = &bytes[8..];
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .ok_or_else(|| bad("body is not a complete zstd frame"))?;
    if size > MAX_ENVELOPE_BODY {
        return Err(bad(format!("body claims {size} bytes")));
    }
    let size = usize::try_from(size).map_err(|_| bad("body size too large"))?;
    let mut dctx = zstd::zstd_safe::DCtx::create();
    let body = decode_frame(&mut dctx, frame, size).map_err(|e| bad(format!("body: {}", e.0)))?;
    if body.len() != size {
        return Err(bad(format!(
            "body decompressed to {} bytes, its frame says {size}",
            body.len()
        )));
    }
    Ok(body)
}

fn window_log_for(total: usize) -> u32 {
    let needed = usize::BITS - total.max(1).leading_zeros();
    needed.clamp(10, MAX_WINDOW_LOG)
}

/// Compress `content` as one zstd frame, against `base` as reference prefix
/// when given.
pub fn compress(content: &[u8], base: Option<&[u8]>, level: i32) -> Result<Vec<u8>, FormatError> {
    Compressor::new(level).compress(content, base)
}

/// A zstd context reused across records: creating one costs about nine
/// times what compressing a small git object does. `'a` is the lifetime of
/// the bases it is given, which must outlive the context (zstd keeps a
/// pointer to a prefix until the next frame starts).
pub struct Compressor<'a> {
    cctx: zstd::zstd_safe::CCtx<'a>,
    level: i32,
    /// Long-distance matching for every delta, not only past `BULK_WINDOW`.
    always_long_distance: bool,
}

/// Base and content up to this size are compressed without long-distance
/// matching by a bulk copy.
const BULK_WINDOW: usize = 1 << 20;

impl<'a> Compressor<'a> {
    pub fn new(level: i32) -> Self {
        Self {
            cctx: zstd::zstd_safe::CCtx::create(),
            level,
            always_long_distance: true,
        }
    }

    /// Deltas without long-distance matching where base and content
    /// together are at most `BULK_WINDOW` bytes: for a backup's bulk copy,
    /// where it took a fifth of the compression time on the corpus and
    /// saved 2% of the vault at level 3 (the level's own match finder
    /// already sees most of what a new version shares with the one
    /// before; beyond a MiB it loses runs, see the tests). The decoder
    /// needs nothing different.
    pub fn without_long_distance(mut self) -> Self {
        self.always_long_distance = false;
        self
    }

    /// One frame, against `base` as reference prefix when given. Every
    /// parameter is set again for each frame.
    pub fn compress(
        &mut self,
        content: &[u8],
        base: Option<&'a [u8]>,
    ) -> Result<Vec<u8>, FormatError> {
        use zstd::zstd_safe::{CParameter, FrameFormat, ResetDirective};
        let zerr = |code: usize| bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)));
        let cctx = &mut self.cctx;
        cctx.reset(ResetDirective::SessionAndParameters)
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::CompressionLevel(self.level))
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::ContentSizeFlag(true))
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zerr)?;
        // A record is a frame by its header; zstd's 4-byte magic would only
        // repeat that, once per record.
        cctx.set_parameter(CParameter::Format(FrameFormat::Magicless))
            .map_err(zerr)?;
        if let Some(base) = base {
            cctx.set_parameter(CParameter::WindowLog(window_log_for(
                base.len() + content.len(),
            )))
            .map_err(zerr)?;
            // Long-distance matching finds the long runs a new version
            // shares with its base (zstd's own --patch-from does the same);
            // a bulk copy goes without it (`without_long_distance`).
            let long_distance =
                self.always_long_distance || base.len() + content.len() > BULK_WINDOW;
            cctx.set_parameter(CParameter::EnableLongDistanceMatching(long_distance))
                .map_err(zerr)?;
            cctx.ref_prefix(base).map_err(zerr)?;
        }
        let mut out: Vec<u8> = Vec::with_capacity(zstd::zstd_safe::compress_bound(content.len()));
        cctx.compress2(&mut out, content).map_err(zerr)?;
        Ok(out)
    }
}

/// zstd's magic number for a formatted dictionary, little-endian.
const ZSTD_DICT_MAGIC: [u8; 4] = 0xEC30_A437u32.to_le_bytes();

thread_local! {
    /// One decompression context per thread, reused: creating one maps and
    /// zero-fills about 160 KiB, which cost a restore a third of its time
    /// when done for every record.
    static DCTX: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}

/// Decompress one frame to exactly `raw_size` bytes, with `base` as the
/// reference prefix for a delta.
///
/// The base is loaded into the thread's reused context as a copied
/// raw-content dictionary, which zstd decodes exactly as a reference
/// prefix. zstd would take a base that starts with its dictionary magic
/// for a formatted dictionary, so such a base (a blob can start with any
/// bytes) is referenced as a prefix in a context of its own.
pub fn decompress(
    frame: &[u8],
    base: Option<&[u8]>,
    raw_size: u64,
) -> Result<Vec<u8>, FormatError> {
    use zstd::zstd_safe::{DCtx, ResetDirective};
    let size = usize::try_from(raw_size).map_err(|_| bad("raw size too large"))?;
    let out = match base {
        Some(base) if base.starts_with(&ZSTD_DICT_MAGIC) => {
            let mut dctx = DCtx::create();
            set_record_parameters(&mut dctx)?;
            dctx.ref_prefix(base).map_err(zerr)?;
            decode_frame(&mut dctx, frame, size)?
        }
        _ => DCTX.with(|cell| {
            let mut dctx = cell
                .try_borrow_mut()
                .map_err(|_| bad("zstd context in use"))?;
            // Clears the previous frame's dictionary and any half-decoded
            // state an error left.
            dctx.reset(ResetDirective::SessionAndParameters)
                .map_err(zerr)?;
            set_record_parameters(&mut dctx)?;
            if let Some(base) = base {
                dctx.load_dictionary(base).map_err(zerr)?;
            }
            let out = decode_frame(&mut dctx, frame, size);
            // Frees the copied base now rather than at the next frame.
            let _ = dctx.reset(ResetDirective::SessionAndParameters);
            out
        })?,
    };
    if out.len() != size {
        return Err(bad(format!(
            "frame decompressed to {} bytes, record says {size}",
            out.len()
        )));
    }
    Ok(out)
}

/// How every record frame is read: magicless, with a bounded window.
fn set_record_parameters(dctx: &mut zstd::zstd_safe::DCtx<'_>) -> Result<(), FormatError> {
    use zstd::zstd_safe::{DParameter, FrameFormat};
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(zerr)?;
    dctx.set_parameter(DParameter::Format(FrameFormat::Magicless))
        .map_err(zerr)?;
    Ok(())
}

fn zerr(code: usize) -> FormatError {
    bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// Records up to this size are decoded into a buffer of their stated size
/// at once; larger ones into a buffer grown by what the frame really
/// yields.
const DECODE_STEP: usize = 8 << 20;

/// Decode one frame of at most `limit` bytes. Memory follows what the frame
/// yields, not what a size field says: a damaged record claiming 2^50
/// bytes is refused as damage after its frame runs out, instead of asking
/// the allocator for 2^50 bytes (which aborts the process).
fn decode_frame(
    dctx: &mut zstd::zstd_safe::DCtx<'_>,
    frame: &[u8],
    limit: usize,
) -> Result<Vec<u8>, FormatError> {
    use zstd::zstd_safe::{InBuffer, OutBuffer};
    if limit <= DECODE_STEP {
        let mut out = Vec::with_capacity(limit);
        dctx.decompress(&mut out, frame).map_err(zerr)?;
        return Ok(out);
    }
    let mut out: Vec<u8> = Vec::with_capacity(DECODE_STEP);
    let mut input = InBuffer::around(frame);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(bad(format!(
                    "frame decompresses to more than {limit} bytes"
                )));
            }
            let more = (limit - out.len()).min(out.capacity());
            out.reserve_exact(more);
        }
        let (read, written) = (input.pos(), out.len());
        let hint = {
            let mut output = OutBuffer::around_pos(&mut out, written);
            dctx.decompress_stream(&mut output, &mut input)
                .map_err(zerr)?
        };
        if hint == 0 {
            return Ok(out);
        }
        if input.pos() == read && out.len() == written {
            return Err(bad("frame is truncated"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_delta_bases_follow_the_radix_16_rule() {
        assert_eq!(skip_delta_base(0), None);
        assert_eq!(skip_delta_base(1), Some(0));
        assert_eq!(skip_delta_base(15), Some(14));
        assert_eq!(skip_delta_base(16), Some(0));
        assert_eq!(skip_delta_base(17), Some(16));
        assert_eq!(skip_delta_base(32), Some(16));
        assert_eq!(skip_delta_base(256), Some(0));
        assert_eq!(skip_delta_base(0x2300), Some(0x2200));
        // Chain length from v is the sum of its hex digits.
        let mut v = 0x1ffu32;
        let mut depth = 0;
        while let Some(b) = skip_delta_base(v) {
            v = b;
            depth += 1;
        }
        assert_eq!(depth, 1 + 15 + 15);
    }

    #[test]
    fn a_reused_compressor_writes_the_frames_a_fresh_one_does() {
        let base: Vec<u8> = (0..5_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut changed = base.clone();
        changed[100] ^= 1;
        let small = b"tree 100644 a.txt".repeat(4);
        let mut reused = Compressor::new(3);
        for (content, base) in [
            (&changed[..], Some(&base[..])),
            (&small[..], None),
            (&changed[..], None),
            (&small[..], Some(&base[..])),
        ] {
            let fresh = compress(content, base, 3).expect("fresh");
            assert_eq!(reused.compress(content, base).expect("reused"), fresh);
            let back = decompress(&fresh, base, content.len() as u64).expect("decompress");
            assert_eq!(back, content);
        }
    }

    /// A base of `len` pseudo-random bytes and a new version of it with
    /// its first `moved` bytes moved to the end.
    fn moved_version(len: usize, moved: usize) -> (Vec<u8>, Vec<u8>) {
        let mut base: Vec<u8> = Vec::new();
        let mut x = 0x9e37_79b9u32;
        while base.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            base.extend_from_slice(&x.to_le_bytes());
        }
        let mut content = base[moved..].to_vec();
        content.extend_from_slice(&base[..moved]);
        (base, content)
    }

    /// A bulk copy's frames decode as any other and stay deltas: without
    /// long-distance matching up to `BULK_WINDOW` bytes of base and
    /// content, with it beyond (where level 3's own tables lose a moved
    /// run of a 4 MiB base).
    #[test]
    fn a_bulk_copy_goes_without_long_distance_matching_only_where_its_tables_reach() {
        for (len, moved, same) in [(256 << 10, 16 << 10, false), (4 << 20, 64 << 10, true)] {
            let (base, content) = moved_version(len, moved);
            let thorough = Compressor::new(3)
                .compress(&content, Some(&base))
                .expect("thorough");
            let bulk = Compressor::new(3)
                .without_long_distance()
                .compress(&content, Some(&base))
                .expect("bulk");
            assert_eq!(
                bulk == thorough,
                same,
                "{len} bytes: long-distance matching {}",
                if same { "not kept" } else { "not switched off" }
            );
            for frame in [&bulk, &thorough] {
                assert!(
                    frame.len() * 50 < content.len(),
                    "{len} bytes: not a delta: {} bytes",
                    frame.len()
                );
                let back =
                    decompress(frame, Some(&base), content.len() as u64).expect("decompress");
                assert!(back == content);
            }
        }
    }

    #[test]
    fn delta_frames_need_their_base_and_round_trip() {
        let base: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut content = base.clone();
        content[4000..4010].copy_from_slice(b"0123456789");
        let whole = compress(&content, None, 3).expect("whole");
        let delta = compress(&content, Some(&base), 3).expect("delta");
        assert!(
            delta.len() * 10 < whole.len(),
            "{} vs {}",
            delta.len(),
            whole.len()
        );
        let back = decompress(&delta, Some(&base), content.len() as u64).expect("decode");
        assert_eq!(back, content);
        assert!(decompress(&delta, None, content.len() as u64).is_err());
        assert!(decompress(&whole, None, content.len() as u64 + 1).is_err());
    }

    #[test]
    fn the_reused_context_keeps_no_base_between_frames_and_takes_any_base() {
        // A base that starts like a zstd dictionary is still a prefix.
        let mut odd_base = ZSTD_DICT_MAGIC.to_vec();
        odd_base.extend((0..5_000u32).flat_map(|i| (i * 7).to_le_bytes()));
        let plain_base: Vec<u8> = (0..5_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for base in [&odd_base, &plain_base] {
            let mut content = base.clone();
            content[100..110].copy_from_slice(b"0123456789");
            let delta = compress(&content, Some(base), 3).expect("delta");
            // Alternate delta and whole frames on the same thread: a base
            // left behind by one frame would break (or silently serve)
            // the next.
            for _ in 0..3 {
                let back = decompress(&delta, Some(base), content.len() as u64).expect("delta");
                assert_eq!(back, content);
                assert!(decompress(&delta, None, content.len() as u64).is_err());
                let whole = compress(base, None, 3).expect("whole");
                assert_eq!(
                    decompress(&whole, None, base.len() as u64).expect("whole"),
                    *base
                );
            }
        }
    }

    #[test]
    fn record_frames_carry_no_zstd_magic() {
        let frame = compress(b"hello hello hello", None, 3).expect("compress");
        assert!(!frame.starts_with(&0xFD2F_B528u32.to_le_bytes()));
        // A plain zstd decoder does not take it; ours does.
        assert!(zstd::bulk::decompress(&frame, 64).is_err());
        assert_eq!(
            decompress(&frame, None, 17).expect("decode"),
            b"hello hello hello"
        );
    }

    #[test]
    fn a_damaged_size_never_allocates_what_the_frame_does_not_hold() {
        let content = b"tiny".repeat(10);
        let frame = compress(&content, None, 3).expect("compress");
        // Sizes a flipped varint bit could claim: refused, never allocated
        // (a 2^50-byte allocation would abort the process).
        for claimed in [1u64 << 50, 1 << 40, (DECODE_STEP as u64) + 1, 41, 39] {
            let err = decompress(&frame, None, claimed).expect_err("wrong size refused");
            assert!(!err.0.is_empty());
        }
        assert_eq!(decompress(&frame, None, 40).expect("exact"), content);
    }

    #[test]
    fn records_larger_than_one_step_decode_through_the_growing_buffer() {
        let mut big: Vec<u8> = (0..(DECODE_STEP as u32 / 2 + 77))
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect();
        big.truncate(2 * DECODE_STEP + 12_345);
        let whole = compress(&big, None, 1).expect("whole");
        assert_eq!(
            decompress(&whole, None, big.len() as u64).expect("whole"),
            big
        );
        let mut next = big.clone();
        next[DECODE_STEP + 5] ^= 0xff;
        let delta = compress(&next, Some(&big), 1).expect("delta");
        assert!(delta.len() < 4096, "{} bytes", delta.len());
        assert_eq!(
            decompress(&delta, Some(&big), next.len() as u64).expect("delta"),
            next
        );
        assert!(decompress(&whole, None, big.len() as u64 - 1).is_err());
        assert!(decompress(&whole, None, big.len() as u64 + 1).is_err());
        assert!(decompress(&whole[..whole.len() / 2], None, big.len() as u64).is_err());
    }

    #[test]
    fn headers_and_envelopes_round_trip_and_refuse_damage() {
        let header = RecordHeader {
            kind: ObjectKind::Tree,
            delta: true,
            raw_size: 1 << 40,
        };
        let mut bytes = Vec::new();
        header.encode(&mut bytes);
        assert_eq!(
            RecordHeader::decode(&bytes).expect("decode"),
            (header, bytes.len())
        );
        bytes[0] = 99;
        assert!(RecordHeader::decode(&bytes).is_err());
        let sealed = seal(INDEX_MAGIC, b"body", 3).expect("seal");
        assert_eq!(open_envelope(INDEX_MAGIC, &sealed).expect("open"), b"body");
        assert!(open_envelope(SNAPSHOT_MAGIC, &sealed).is_err());
        let mut future = sealed.clone();
        future[7] = 3;
        let err = open_envelope(INDEX_MAGIC, &future).expect_err("future version");
        assert!(err.0.contains("file format 3"), "{err}");
        assert!(open_envelope(INDEX_MAGIC, &sealed[..sealed.len() - 2]).is_err());
    }

    #[test]
    fn records_are_checked_against_their_ids() {
        // `git hash-object` of "hello\n" as a blob.
        let hello = RecordId(
            hex::decode("ce013625030ba8dba906f756967f9e9ca394464a")
                .expect("hex")
                .try_into()
                .expect("20 bytes"),
        );
        assert!(matches_id(&hello, ObjectKind::Blob, b"hello\n"));
        assert!(!matches_id(&hello, ObjectKind::Blob, b"hello!"));
        assert!(!matches_id(&hello, ObjectKind::Tree, b"hello\n"));
        let doc = record_id(ObjectKind::Document, b"{}");
        assert!(matches_id(&doc, ObjectKind::Document, b"{}"));
        assert!(!matches_id(&doc, ObjectKind::Refs, b"{}"));
        assert!(!matches_id(&doc, ObjectKind::Document, b"{ }"));
        assert_ne!(
            path_key(ObjectKind::Blob, "a"),
            path_key(ObjectKind::Tree, "a")
        );
    }
}
