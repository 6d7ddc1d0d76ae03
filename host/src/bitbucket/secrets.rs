//! Webhook secrets that `hookvault hooks register` generated or was given,
//! kept beside the store in `<store>/hook-secrets/<source>` (one per line,
//! mode 0600). The receiver accepts them in addition to the configured
//! ones, and re-reads the file when a signature matches nothing, so a hook
//! registered while the service runs is accepted at once.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::SecretString;

#[derive(Debug, thiserror::Error)]
#[error("hook secrets file {path}: {source}")]
pub struct HookSecretError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub fn path(store_dir: &Path, source: &str) -> PathBuf {
    store_dir.join("hook-secrets").join(source)
}

/// The secrets registered for a source (none when the file is absent).
pub fn load(store_dir: &Path, source: &str) -> Result<Vec<SecretString>, HookSecretError> {
    let path = path(store_dir, source);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| SecretString::new(l.to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(HookSecretError { path, source }),
    }
}

/// Append a secret (durably) unless it is already there.
pub fn add(store_dir: &Path, source: &str, secret: &SecretString) -> Result<(), HookSecretError> {
    let path = path(store_dir, source);
    let err = |source| HookSecretError {
        path: path.clone(),
        source,
    };
    if load(store_dir, source)?
        .iter()
        .any(|s| s.expose() == secret.expose())
    {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(err)?;
    writeln!(file, "{}", secret.expose()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// A new random secret: 32 bytes from the OS, as 64 hex digits.
pub fn generate() -> Result<SecretString, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(SecretString::new(hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_idempotent_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = generate().expect("random");
        assert_eq!(secret.expose().len(), 64);
        add(dir.path(), "cloud", &secret).expect("add");
        add(dir.path(), "cloud", &secret).expect("add again");
        let loaded = load(dir.path(), "cloud").expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].expose(), secret.expose());
        assert!(load(dir.path(), "other").expect("absent").is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path(dir.path(), "cloud"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
