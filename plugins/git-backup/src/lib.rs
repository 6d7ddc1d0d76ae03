//! hookvault's default backup plugin.
//!
//! For each event it asks the host to fetch the repository, works out the new
//! ref state (the remote's refs, except refs a filter excluded, which keep
//! their previous state), walks the objects that are new since the previous
//! snapshot (metadata only), has the host copy the missing ones into the store
//! and commits a snapshot. Bytes never pass through this module's memory.
//!
//! Config (all optional): `{"batch": 5000}` — how many object ids to hand the
//! host per copy call.

use std::collections::{BTreeMap, BTreeSet};

use hookvault_plugin::backup::store::{self, RefUpdate, SnapshotRequest, StoredRef};
use hookvault_plugin::backup::{Backup, Report, git_source};
use hookvault_plugin::{Event, log};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_batch")]
    batch: usize,
}

fn default_batch() -> usize {
    5000
}

struct GitBackup;

impl Backup for GitBackup {
    type Config = Config;

    fn backup(event: &Event, config: &Config) -> Result<Report, String> {
        let batch = config.batch.max(1);

        let remote = git_source::fetch()?;
        let previous = store::latest_refs();
        let previous: Option<BTreeMap<String, String>> =
            previous.map(|refs| refs.into_iter().map(|r| (r.name, r.target)).collect());

        let excluded: BTreeSet<&str> = event.excluded_refs.iter().map(String::as_str).collect();
        let mut refs: BTreeMap<String, String> = remote
            .into_iter()
            .filter(|r| !excluded.contains(r.name.as_str()))
            .map(|r| (r.name, r.target))
            .collect();
        if let Some(prev) = &previous {
            for name in &excluded {
                if let Some(target) = prev.get(*name) {
                    refs.insert((*name).to_string(), target.clone());
                }
            }
        }

        if previous.as_ref() == Some(&refs) {
            log::info("refs unchanged since the latest snapshot; nothing to record");
            return Ok(Report {
                snapshot_id: None,
                objects_written: 0,
                objects_present: 0,
                stored_bytes: 0,
            });
        }

        let known: Vec<String> = previous
            .as_ref()
            .map(|p| {
                p.values()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        let known_set: BTreeSet<&String> = known.iter().collect();
        let tips: Vec<String> = refs
            .values()
            .filter(|t| !known_set.contains(t))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        let (mut written, mut present, mut stored_bytes) = (0u64, 0u64, 0u64);
        if !tips.is_empty() {
            let objects = git_source::walk(&tips, &known)?;
            let ids: Vec<String> = objects.into_iter().map(|o| o.id).collect();
            let walked = ids.len() as u64;
            let missing = store::missing(&ids)?;
            present += walked - missing.len() as u64;
            for chunk in missing.chunks(batch) {
                let stats = store::copy_objects(chunk)?;
                written += stats.written;
                present += stats.present;
                stored_bytes += stats.stored_bytes;
            }
            log::debug(&format!(
                "walked {walked} objects, wrote {written}, {present} already stored"
            ));
        }

        let updates = ref_updates(previous.as_ref(), &refs, event);
        let snapshot_refs = refs
            .into_iter()
            .map(|(name, target)| StoredRef { name, target })
            .collect();
        let id = store::commit_snapshot(&SnapshotRequest {
            refs: snapshot_refs,
            updates,
        })?;
        Ok(Report {
            snapshot_id: Some(id),
            objects_written: written,
            objects_present: present,
            stored_bytes,
        })
    }
}

/// Every ref whose target differs between the previous snapshot and the new one.
fn ref_updates(
    previous: Option<&BTreeMap<String, String>>,
    refs: &BTreeMap<String, String>,
    event: &Event,
) -> Vec<RefUpdate> {
    let empty = BTreeMap::new();
    let previous = previous.unwrap_or(&empty);
    let names: BTreeSet<&String> = previous.keys().chain(refs.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let old = previous.get(name);
            let new = refs.get(name);
            if old == new {
                return None;
            }
            let forced = event.changes.iter().any(|c| &c.name == name && c.forced);
            Some(RefUpdate {
                name: name.clone(),
                old_target: old.cloned(),
                new_target: new.cloned(),
                forced,
            })
        })
        .collect()
}

hookvault_plugin::export_backup!(GitBackup);
