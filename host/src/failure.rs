//! Whether a failed backup is worth trying again. The kind is decided where
//! the error happens (a git server's answer, a full disk) and carried with
//! it to the worker, which retries transient failures, fails permanent
//! ones at once and waits out a full disk.

use serde::{Deserialize, Serialize};

/// What kind of failure a backup met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Trying again cannot help until an operator changes something: the
    /// git server refused the token (401/403), the repository does not exist
    /// (404), a plugin's configuration is invalid. Not retried.
    Permanent,
    /// May pass on a later attempt: a 5xx answer, a refused or timed-out
    /// connection, a plugin trap. Retried up to `worker.max_attempts`.
    Transient,
    /// The disk is full: retried until space returns, never counted as an
    /// attempt.
    NoSpace,
}

impl FailureKind {
    /// The word shown in listings (`permanent`, `transient`, `no-space`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Transient => "transient",
            Self::NoSpace => "no-space",
        }
    }
}

/// Whether an IO error is the disk being full (ENOSPC, or a quota: EDQUOT).
pub(crate) fn is_storage_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || error.raw_os_error() == Some(28)
}

/// `NoSpace` when an IO error in `error`'s chain of causes is a full disk,
/// otherwise `Transient`: the kind of an error that does not decide its
/// own.
pub(crate) fn of_chain(error: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if is_storage_full(io) {
                return FailureKind::NoSpace;
            }
            if let Some(inner) = io.get_ref()
                && of_chain(inner) == FailureKind::NoSpace
            {
                return FailureKind::NoSpace;
            }
        }
        cause = e.source();
    }
    FailureKind::Transient
}

/// An error that knows whether trying again can help.
pub(crate) trait Classify: std::fmt::Display {
    fn kind(&self) -> FailureKind;
}

impl Classify for crate::git::GitError {
    fn kind(&self) -> FailureKind {
        crate::git::GitError::kind(self)
    }
}

impl Classify for crate::vault::VaultError {
    fn kind(&self) -> FailureKind {
        crate::vault::VaultError::kind(self)
    }
}

impl<E: Classify> Classify for crate::vault::PutError<E> {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Vault(e) => e.kind(),
            Self::Source(e) => e.kind(),
        }
    }
}

/// A failed attempt: what happened, in words an operator acts on, and
/// whether trying again can help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Transient, message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_anywhere_in_the_chain_is_no_space() {
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(of_chain(&full), FailureKind::NoSpace);
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(28));
        assert_eq!(of_chain(&wrapped), FailureKind::NoSpace);
        let other = std::io::Error::from_raw_os_error(5);
        assert_eq!(of_chain(&other), FailureKind::Transient);
    }
}
