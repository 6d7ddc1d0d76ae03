//! `hookvault verify`: can every snapshot be restored, and is every stored
//! byte what was written?
//!
//! Always checked:
//! * the index, snapshot and document files all open (a damaged one is
//!   left out when the vault opens, and named here);
//! * every record the index places lies inside its data file (a truncated
//!   or deleted data file is found without reading it);
//! * each repository's chain of snapshots: every parent is present and the
//!   sequence numbers have no gap, except where `forget` recorded the
//!   snapshots it removed (a deleted snapshot file breaks both;
//!   the newest one's deletion leaves no trace in the vault, which is why
//!   the delivery queue names each delivery's snapshot too);
//! * every snapshot's ref table, and every object its refs reach: commits,
//!   trees and tags are read (decoded, delta-resolved, re-hashed), blobs
//!   must be indexed.
//!
//! With `read_data`, every record (every blob too) is read from its data
//! file, decompressed, delta-resolved and hashed against its id. A damaged
//! record is reported with its data file and offset; the records whose
//! delta chain runs through it are reported as depending on it.
//!
//! Each object is checked once however many snapshots reach it; a snapshot
//! is damaged when anything it reaches is.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::ids::{GitOid, ObjectKind, RecordId, RepoName};
use crate::vault::{Vault, VaultError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// An index, snapshot or document file that cannot be decoded.
    DamagedFile,
    /// A record the index places outside (or in a missing) data file.
    TruncatedData,
    /// A record whose bytes do not decode to what its id says.
    DamagedRecord,
    /// A record whose delta base is damaged.
    DamagedBase,
    /// An object a snapshot reaches that the vault does not hold.
    MissingObject,
    /// A snapshot whose parent or predecessors are missing.
    BrokenChain,
    /// A snapshot whose ref table cannot be read.
    BadRefTable,
    /// A data file no index file names: left by a writer killed before it
    /// wrote the index (removed by `serve` at start), or the data of a lost
    /// index file. A warning: no snapshot needs it to be readable.
    UnindexedData,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub repository: Option<String>,
    pub snapshot: Option<String>,
    pub object: Option<String>,
    pub file: Option<String>,
    pub offset: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub location: String,
    pub repositories: usize,
    pub snapshots: usize,
    /// Snapshots that reach something damaged or missing.
    pub damaged_snapshots: Vec<String>,
    /// Objects reached from snapshots and checked.
    pub objects: u64,
    /// Records read whole (every one with `read_data`).
    pub records_read: u64,
    /// Raw (decoded) bytes of the records read.
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What to check.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Read every record, not only the objects the walk needs to decode.
    pub read_data: bool,
    /// Only this repository's snapshots (and, with `read_data`, only the
    /// records they reach).
    pub repo: Option<RepoName>,
}

fn problem(kind: ProblemKind, message: impl Into<String>) -> Problem {
    Problem {
        kind,
        repository: None,
        snapshot: None,
        object: None,
        file: None,
        offset: None,
        message: message.into(),
    }
}

/// A damaged-record problem from a read error, or `None` for an error that
/// is not about the record (storage unreachable: the check fails instead).
fn record_problem(id: &RecordId, error: &VaultError) -> Option<Problem> {
    match error {
        VaultError::Damaged {
            id: at,
            file,
            offset,
            message,
            ..
        } => Some(Problem {
            kind: if at == id {
                ProblemKind::DamagedRecord
            } else {
                ProblemKind::DamagedBase
            },
            repository: None,
            snapshot: None,
            object: Some(id.to_string()),
            file: Some(file.clone()),
            offset: Some(*offset),
            message: if at == id {
                message.clone()
            } else {
                format!("its delta chain runs through damaged record {at} ({message})")
            },
        }),
        VaultError::MissingObject { oid } => Some(Problem {
            kind: ProblemKind::DamagedBase,
            object: Some(id.to_string()),
            ..problem(
                ProblemKind::DamagedBase,
                format!("its delta base {oid} is not indexed"),
            )
        }),
        _ => None,
    }
}

/// Check the vault as `options` says. `progress` is told each step's name
/// and size once, then how far it is.
pub fn verify(
    vault: &Vault,
    options: &Options,
    progress: &dyn Fn(Progress),
) -> Result<Report, VaultError> {
    vault.forget_decoded()?;
    let mut report = Report {
        location: vault.location().to_string(),
        ..Report::default()
    };
    for (file_type, name, why) in vault.damaged_files()? {
        report.problems.push(Problem {
            file: Some(format!("{file_type}/{name}")),
            ..problem(
                ProblemKind::DamagedFile,
                format!("{file_type} file left out: {why}"),
            )
        });
    }

    // Every record inside its data file.
    let records = vault.records()?;
    let sizes: HashMap<String, u64> = vault.data_files()?.into_iter().collect();
    let mut cut: HashSet<RecordId> = HashSet::new();
    for r in &records {
        let fits = sizes
            .get(&r.file)
            .is_some_and(|size| r.offset.saturating_add(r.len) <= *size);
        if !fits {
            cut.insert(r.id);
            report.problems.push(Problem {
                object: Some(r.id.to_string()),
                file: Some(r.file.clone()),
                offset: Some(r.offset),
                ..problem(
                    ProblemKind::TruncatedData,
                    match sizes.get(&r.file) {
                        Some(size) => format!(
                            "record of {} bytes at offset {} lies past the end of the data file ({size} bytes)",
                            r.len, r.offset
                        ),
                        None => "its data file is missing".to_string(),
                    },
                )
            });
        }
    }
    let indexed: HashSet<&str> = records.iter().map(|r| r.file.as_str()).collect();
    for (file, size) in &sizes {
        if !indexed.contains(file.as_str()) {
            report.warnings.push(Problem {
                file: Some(file.clone()),
                ..problem(
                    ProblemKind::UnindexedData,
                    format!("data file of {size} bytes that no index file names"),
                )
            });
        }
    }

    // With read_data and no repository: every record, in file order.
    let mut bad: HashSet<RecordId> = cut.clone();
    let whole_read = options.read_data && options.repo.is_none();
    if whole_read {
        let total = records.len() as u64;
        progress(Progress::Start("reading every record", total));
        for (n, r) in records.iter().enumerate() {
            if !cut.contains(&r.id) {
                match vault.check_record(&r.id) {
                    Ok((_, len)) => {
                        report.records_read += 1;
                        report.bytes_read += len;
                    }
                    Err(e) => {
                        bad.insert(r.id);
                        report.problems.push(record_problem(&r.id, &e).ok_or(e)?);
                    }
                }
            }
            progress(Progress::At(n as u64 + 1));
        }
        progress(Progress::Done);
    }

    // Snapshots, their chains and everything they reach.
    let repositories = match &options.repo {
        Some(repo) => vec![repo.clone()],
        None => vault.repositories()?,
    };
    let mut walk = Walk {
        vault,
        memo: HashMap::new(),
        bad: &bad,
        read_blobs: options.read_data && !whole_read,
        reported: HashSet::new(),
        read: 0,
        bytes: 0,
    };
    let count: usize = repositories
        .iter()
        .map(|r| vault.snapshots(r).map(|s| s.len()))
        .sum::<Result<usize, _>>()?;
    progress(Progress::Start("checking snapshots", count as u64));
    let mut done = 0u64;
    for repo in &repositories {
        let snapshots = vault.snapshots(repo)?;
        if snapshots.is_empty() && options.repo.is_some() {
            return Err(VaultError::NoSnapshots { repo: repo.clone() });
        }
        report.repositories += 1;
        let ids: HashSet<_> = snapshots.iter().map(|s| s.id).collect();
        // Snapshots recorded as forgotten leave gaps that are not damage.
        let forgotten_list = vault.forgotten(repo)?;
        let forgotten = crate::vault::prune::forgotten_ids(&forgotten_list);
        let forgotten_seqs: HashSet<u64> = forgotten_list.iter().map(|f| f.seq).collect();
        let mut previous_seq = 0u64;
        for snapshot in &snapshots {
            report.snapshots += 1;
            let at = |kind, message: String| Problem {
                repository: Some(repo.to_string()),
                snapshot: Some(snapshot.id.to_hex()),
                ..problem(kind, message)
            };
            let mut damaged = false;
            if let Some(parent) = &snapshot.body.parent
                && !ids.contains(parent)
                && !forgotten.contains(parent)
            {
                report.problems.push(at(
                    ProblemKind::BrokenChain,
                    format!("its parent snapshot {parent} is missing"),
                ));
            }
            if snapshot.body.seq <= previous_seq
                || (previous_seq + 1..snapshot.body.seq).any(|seq| !forgotten_seqs.contains(&seq))
            {
                report.problems.push(at(
                    ProblemKind::BrokenChain,
                    format!(
                        "sequence number {} follows {previous_seq}: the snapshots in between are missing",
                        snapshot.body.seq
                    ),
                ));
            }
            previous_seq = snapshot.body.seq;
            match vault.snapshot_refs(snapshot) {
                Err(e) => {
                    damaged = true;
                    report
                        .problems
                        .push(at(ProblemKind::BadRefTable, e.to_string()));
                }
                Ok(refs) => {
                    let targets: BTreeSet<GitOid> = refs.values().copied().collect();
                    for target in targets {
                        let found = walk.reach(target)?;
                        for mut p in found {
                            p.repository = Some(repo.to_string());
                            p.snapshot = Some(snapshot.id.to_hex());
                            report.problems.push(p);
                        }
                        damaged |= !walk.memo.get(&target).copied().unwrap_or(false);
                    }
                }
            }
            if damaged {
                report.damaged_snapshots.push(snapshot.id.to_hex());
            }
            done += 1;
            progress(Progress::At(done));
        }
    }
    progress(Progress::Done);
    report.objects = walk.memo.len() as u64;
    if !whole_read {
        report.records_read += walk.read;
        report.bytes_read += walk.bytes;
    }
    Ok(report)
}

pub use crate::progress::Progress;

struct Walk<'a> {
    vault: &'a Vault,
    /// Object → whether it and everything it reaches is sound.
    memo: HashMap<GitOid, bool>,
    /// Records found damaged by the whole read.
    bad: &'a HashSet<RecordId>,
    read_blobs: bool,
    reported: HashSet<GitOid>,
    /// Records read whole by the walk, and their raw bytes.
    read: u64,
    bytes: u64,
}

impl Walk<'_> {
    /// Check what `root` reaches that is not checked yet; the problems
    /// found (each object's once).
    fn reach(&mut self, root: GitOid) -> Result<Vec<Problem>, VaultError> {
        let mut found = Vec::new();
        let mut children: HashMap<GitOid, Vec<GitOid>> = HashMap::new();
        let mut stack = vec![(root, false)];
        while let Some((oid, expanded)) = stack.pop() {
            if expanded {
                let below = children.remove(&oid).unwrap_or_default();
                let sound = below
                    .iter()
                    .all(|c| self.memo.get(c).copied().unwrap_or(false));
                self.memo.insert(oid, sound);
                continue;
            }
            if self.memo.contains_key(&oid) || children.contains_key(&oid) {
                continue;
            }
            match self.check(oid)? {
                Err(p) => {
                    if self.reported.insert(oid) {
                        found.push(p);
                    }
                    self.memo.insert(oid, false);
                }
                Ok(below) => {
                    // Settled once everything above it on the stack is.
                    stack.push((oid, true));
                    for c in &below {
                        if !self.memo.contains_key(c) {
                            stack.push((*c, false));
                        }
                    }
                    children.insert(oid, below);
                }
            }
        }
        Ok(found)
    }

    /// One object itself: what it names, or the problem with it.
    fn check(&mut self, oid: GitOid) -> Result<Result<Vec<GitOid>, Problem>, VaultError> {
        let id = RecordId::from(oid);
        let missing = || Problem {
            object: Some(oid.to_hex()),
            ..problem(ProblemKind::MissingObject, "not in the vault")
        };
        let Some(placement) = self.vault.placement(&oid)? else {
            return Ok(Err(missing()));
        };
        if self.bad.contains(&id) {
            // Reported by the whole read or the data-file check already.
            return Ok(Err(Problem {
                object: Some(oid.to_hex()),
                ..problem(ProblemKind::DamagedRecord, "damaged (see above)")
            }));
        }
        if placement.kind == ObjectKind::Blob && !self.read_blobs {
            return Ok(Ok(Vec::new()));
        }
        let read = if self.read_blobs || placement.kind != ObjectKind::Blob {
            self.vault
                .check_record(&id)
                .and_then(|_| self.vault.read_object(&oid))
        } else {
            self.vault.read_object(&oid)
        };
        let (kind, data) = match read {
            Ok(read) => read,
            Err(e) => return Ok(Err(record_problem(&id, &e).ok_or(e)?)),
        };
        self.read += 1;
        self.bytes += data.len() as u64;
        Ok(match crate::restore::children(oid, kind, &data) {
            Ok(below) => Ok(below),
            Err(e) => Err(Problem {
                object: Some(oid.to_hex()),
                ..problem(ProblemKind::DamagedRecord, e.to_string())
            }),
        })
    }
}
