//! How far a long operation (verify, restore, prune) is, told to whoever
//! shows it: the CLI draws a bar on a terminal and nothing otherwise; the
//! service passes [`quiet`].

/// One step of a long operation.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// A phase begins: what it does, and how many items (0: not known).
    Start(&'static str, u64),
    /// Items done so far in this phase.
    At(u64),
    /// The phase is over.
    Done,
}

/// Shows nothing.
pub fn quiet(_: Progress) {}

/// Where `serve` tells how far each backup's copy is (a bar per
/// repository on a terminal).
pub type BackupProgress = std::sync::Arc<dyn Fn(&crate::ids::RepoName, Progress) + Send + Sync>;

/// A copy of at least this many objects (a first backup, a big push)
/// shows progress.
pub const BACKUP_PROGRESS_FROM: usize = 500;
