//! Typed identifiers. Bare strings and byte arrays never cross module
//! boundaries: a `RepoName` has been validated, a `GitOid` is 20 bytes, a
//! `RecordId` names a record in the vault, a `SnapshotId` names one snapshot.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A repository identity: `workspace/slug` (Cloud) or `PROJECT/slug` (Data
/// Center). Validated so it can safely become a path: two segments, each
/// 1–128 characters of `[A-Za-z0-9._~-]`, never `.` or `..`, never starting
/// with `.`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName {
    owner: String,
    slug: String,
}

/// Why a repository name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid repository name {name:?}: {reason}")]
pub struct InvalidRepoName {
    pub name: String,
    pub reason: &'static str,
}

impl RepoName {
    pub fn parse(name: &str) -> Result<Self, InvalidRepoName> {
        let fail = |reason| InvalidRepoName {
            name: name.chars().take(200).collect(),
            reason,
        };
        let mut parts = name.split('/');
        let (Some(owner), Some(slug), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail("expected exactly one '/' (workspace/slug)"));
        };
        Self::check_segment(owner).map_err(fail)?;
        Self::check_segment(slug).map_err(fail)?;
        Ok(Self {
            owner: owner.to_string(),
            slug: slug.to_string(),
        })
    }

    fn check_segment(segment: &str) -> Result<(), &'static str> {
        if segment.is_empty() {
            return Err("empty segment");
        }
        if segment.len() > 128 {
            return Err("segment longer than 128 characters");
        }
        if segment.starts_with('.') {
            return Err("segment starts with '.'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
        {
            return Err("only letters, digits, '.', '_', '-' and '~' are allowed");
        }
        Ok(())
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn slug(&self) -> &str {
        &self.slug
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.slug)
    }
}

impl TryFrom<String> for RepoName {
    type Error = InvalidRepoName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RepoName> for String {
    fn from(value: RepoName) -> Self {
        value.to_string()
    }
}

/// A full git reference name (`refs/heads/main`, `refs/tags/v1`, `HEAD`),
/// checked as `git check-ref-format` checks it (gix-validate's reference
/// name rules: no `..`, no control characters, no `~^:?*[\\`, no `@{`, no
/// component starting with `.` or ending in `.lock`, ...) and at most
/// [`RefName::MAX_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

/// Why a reference name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid ref name {name:?}: {reason}")]
pub struct InvalidRefName {
    /// The name as given, cut to 200 characters.
    pub name: String,
    pub reason: String,
}

impl RefName {
    /// The longest name accepted, in bytes. Git itself has no limit; a
    /// name must fit in a path on every filesystem a restore writes to
    /// (loose refs are files), and no real branch comes near it.
    pub const MAX_LEN: usize = 1024;

    pub fn parse(name: &str) -> Result<Self, InvalidRefName> {
        let fail = |reason: String| InvalidRefName {
            name: name.chars().take(200).collect(),
            reason,
        };
        if name.len() > Self::MAX_LEN {
            return Err(fail(format!(
                "{} bytes, longer than {} bytes",
                name.len(),
                Self::MAX_LEN
            )));
        }
        gix::validate::reference::name(gix::bstr::BStr::new(name.as_bytes()))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RefName {
    type Error = InvalidRefName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RefName> for String {
    fn from(value: RefName) -> Self {
        value.0
    }
}

impl PartialEq<str> for RefName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RefName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A git object id (SHA-1, 20 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GitOid(pub [u8; 20]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid git object id {0:?}: expected 40 hex digits")]
pub struct InvalidOid(pub String);

impl GitOid {
    pub fn from_hex(hex_str: &str) -> Result<Self, InvalidOid> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(hex_str, &mut bytes)
            .map_err(|_| InvalidOid(hex_str.chars().take(80).collect()))?;
        Ok(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for GitOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for GitOid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for GitOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitOid({self})")
    }
}

/// The id of a record in the vault (20 bytes): a git object's SHA-1, or, for
/// records that are not git objects (documents, ref chunks), the first 20
/// bytes of BLAKE3 of their canonical encoding (FORMAT.md).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub [u8; 20]);

impl RecordId {
    pub fn from_hex(hex_str: &str) -> Result<Self, InvalidOid> {
        GitOid::from_hex(hex_str).map(Self::from)
    }
}

impl From<GitOid> for RecordId {
    fn from(oid: GitOid) -> Self {
        Self(oid.0)
    }
}

impl From<RecordId> for GitOid {
    fn from(id: RecordId) -> Self {
        Self(id.0)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// A snapshot id: BLAKE3 of the snapshot file's bytes, which is also the
/// file's name. Shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub [u8; 32]);

impl SnapshotId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// The first 12 hex digits, as listings show them.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({self})")
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// The kind of a git object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Commit,
    Tree,
    Blob,
    Tag,
    /// Not a git object: a versioned JSON document (pull requests, ...).
    Document,
    /// Not a git object: one chunk of a snapshot's ref table.
    Refs,
}

impl ObjectKind {
    /// The byte stored in the index and pack records (FORMAT.md).
    pub fn code(self) -> u8 {
        match self {
            Self::Commit => 1,
            Self::Tree => 2,
            Self::Blob => 3,
            Self::Tag => 4,
            Self::Document => 5,
            Self::Refs => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Commit,
            2 => Self::Tree,
            3 => Self::Blob,
            4 => Self::Tag,
            5 => Self::Document,
            6 => Self::Refs,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Tree => "tree",
            Self::Blob => "blob",
            Self::Tag => "tag",
            Self::Document => "document",
            Self::Refs => "refs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bitbucket_names() {
        for ok in [
            "acme-eng/billing-service",
            "PAY/repo.name",
            "~dana/dots_and-dashes",
            "a/b",
        ] {
            let name = RepoName::parse(ok).expect("valid name");
            assert_eq!(name.to_string(), ok);
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            "../etc/passwd",
            "acme/..",
            "acme/.",
            "/abs/path",
            "acme/",
            "acme",
            "a/b/c",
            "acme/.hidden",
            "acme/name with space",
            "acme/na\0me",
            "acme\\evil/x",
            "acme/ünïcode",
            "acme/a%2e%2e",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        let long = format!("acme/{}", "x".repeat(129));
        assert!(RepoName::parse(&long).is_err());
    }

    #[test]
    fn accepts_real_ref_names() {
        for ok in [
            "refs/heads/main",
            "refs/heads/feature/old-export",
            "refs/tags/v2.4.0",
            "refs/heads/@",
            "refs/heads/ünïcode",
            "HEAD",
        ] {
            assert_eq!(RefName::parse(ok).expect(ok).as_str(), ok);
        }
        let longest = format!("refs/heads/{}", "x".repeat(RefName::MAX_LEN - 11));
        assert!(RefName::parse(&longest).is_ok());
        let name: RefName = serde_json::from_str("\"refs/heads/main\"").expect("json");
        assert_eq!(
            serde_json::to_string(&name).expect("json"),
            "\"refs/heads/main\""
        );
    }

    #[test]
    fn rejects_what_git_check_ref_format_rejects() {
        for bad in [
            "refs/heads/../../x",
            "refs/heads/a..b",
            "refs/heads/na\0me",
            "refs/heads/new\nline",
            "refs/heads/\u{1b}[31mred",
            "refs/heads/del\u{7f}",
            "refs/heads/sp ace",
            "refs/heads/x.lock",
            "refs/heads/.hidden",
            "refs/heads/trailing/",
            "refs/heads//double",
            "refs/heads/a@{1}",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[b",
            "refs/heads/a\\b",
            "refs/heads/dot.",
            "/refs/heads/x",
            "main",
            "@",
            "",
        ] {
            assert!(RefName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        let long = format!("refs/heads/{}", "x".repeat(5000));
        let err = RefName::parse(&long).expect_err("too long");
        assert!(err.reason.contains("1024"), "{err}");
        assert!(err.name.len() <= 200);
        assert!(serde_json::from_str::<RefName>("\"refs/heads/../x\"").is_err());
    }

    #[test]
    fn oid_round_trips_and_rejects_garbage() {
        let hex_str = "e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f";
        assert_eq!(GitOid::from_hex(hex_str).expect("hex").to_hex(), hex_str);
        assert!(GitOid::from_hex("zz").is_err());
        assert!(GitOid::from_hex(&"a".repeat(41)).is_err());
    }
}
