//! Webhook secrets that `hookvault hooks register` generated or was given,
//! kept beside the store in `<store>/hook-secrets/<source>` (mode 0600),
//! one line per hook: `<secret>\t<repository or workspace>\t<hook URL>`
//! (a line of a secret alone is accepted too). The receiver accepts them in
//! addition to the configured ones, and reads the file again whenever a
//! signature matches no configured secret, so a hook registered while the
//! service runs is accepted at once, and one removed by `hooks remove`
//! (which drops its line: [`revoke`]) is refused at once.

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
            .filter_map(|l| l.split('\t').next())
            .filter(|l| !l.is_empty())
            .map(|l| SecretString::new(l.to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(HookSecretError { path, source }),
    }
}

/// The line that binds `secret` to the hook with `url` at `target`.
fn line(secret: &SecretString, target: &str, url: &str) -> String {
    format!("{}\t{target}\t{url}", secret.expose())
}

/// Keep `secret` (durably) for the hook with `url` at `target` (a
/// repository, workspace or project), unless that line is there already.
pub fn add(
    store_dir: &Path,
    source: &str,
    secret: &SecretString,
    target: &str,
    url: &str,
) -> Result<(), HookSecretError> {
    let path = path(store_dir, source);
    let err = |source| HookSecretError {
        path: path.clone(),
        source,
    };
    let wanted = line(secret, target, url);
    if read_lines(&path)?.contains(&wanted) {
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
    writeln!(file, "{wanted}").map_err(err)?;
    file.sync_all().map_err(err)
}

fn read_lines(path: &Path) -> Result<Vec<String>, HookSecretError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(HookSecretError {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Forget the secrets of the hooks with `url` at `target`: deliveries
/// signed with them are refused from now on. The file is replaced whole
/// (written beside it, synced, renamed). Returns how many were dropped.
pub fn revoke(
    store_dir: &Path,
    source: &str,
    target: &str,
    url: &str,
) -> Result<usize, HookSecretError> {
    let path = path(store_dir, source);
    let err = |source| HookSecretError {
        path: path.clone(),
        source,
    };
    let lines = read_lines(&path)?;
    let bound = |l: &String| {
        let mut fields = l.split('\t').skip(1);
        fields.next() == Some(target) && fields.next() == Some(url)
    };
    let kept: Vec<&String> = lines.iter().filter(|l| !bound(l)).collect();
    let dropped = lines.len() - kept.len();
    if dropped == 0 {
        return Ok(0);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    for l in kept {
        writeln!(file, "{l}").map_err(err)?;
    }
    file.as_file().sync_all().map_err(err)?;
    file.persist(&path).map_err(|e| err(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(dropped)
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
        let other = generate().expect("random");
        add(dir.path(), "cloud", &secret, "acme/app", "https://a/h").expect("add");
        add(dir.path(), "cloud", &secret, "acme/app", "https://a/h").expect("add again");
        add(dir.path(), "cloud", &other, "acme", "https://a/h").expect("add other");
        let loaded = load(dir.path(), "cloud").expect("load");
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].expose(), secret.expose());
        // Revoking one hook's secret keeps the other's.
        assert_eq!(
            revoke(dir.path(), "cloud", "acme/app", "https://x").expect("none"),
            0
        );
        assert_eq!(
            revoke(dir.path(), "cloud", "acme/app", "https://a/h").expect("revoke"),
            1
        );
        let loaded = load(dir.path(), "cloud").expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].expose(), other.expose());
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
