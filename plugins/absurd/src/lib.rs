//! A backup plugin that calls the host with absurd arguments, chosen by its
//! config: `{"mode": "walk-million" | "copy-unknown" | "copy-garbage" |
//! "commit-unknown"}`. hookvault's tests run it to prove that each gets a
//! clear answer (an error the plugin can return, or a bounded result),
//! never a stuck or crashed host.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit/plugin@0.1.0",
    world: "backup",
});

use hookvault::plugin::config;
use hookvault::plugin::git_source;
use hookvault::plugin::store::{self, SnapshotRequest, StoredRef};

#[derive(serde::Deserialize)]
struct Settings {
    mode: String,
}

fn report(written: u64) -> Report {
    Report {
        snapshot_id: None,
        objects_written: written,
        objects_present: 0,
        stored_bytes: 0,
    }
}

/// The 40-hex id of `n`, which no repository holds.
fn fake_id(n: u64) -> String {
    format!("{n:040x}")
}

struct Absurd;

impl Guest for Absurd {
    fn backup(_event: Event) -> Result<Report, String> {
        let settings: Settings =
            serde_json::from_str(&config::get()).map_err(|e| format!("bad config: {e}"))?;
        let remote = git_source::fetch()?;
        match settings.mode.as_str() {
            "walk-million" => {
                let tips: Vec<String> = (1..=1_000_000).map(fake_id).collect();
                let objects = git_source::walk(&tips, &[])?;
                Ok(report(objects.len() as u64))
            }
            "copy-unknown" => {
                let stats = store::copy_objects(&[fake_id(1)])?;
                Ok(report(stats.written))
            }
            "copy-garbage" => {
                let stats = store::copy_objects(&["not an object id".to_string()])?;
                Ok(report(stats.written))
            }
            "commit-unknown" => {
                let mut refs: Vec<StoredRef> = remote
                    .into_iter()
                    .map(|r| StoredRef {
                        name: r.name,
                        target: r.target,
                    })
                    .collect();
                refs.push(StoredRef {
                    name: "refs/heads/ghost".into(),
                    target: fake_id(7),
                });
                let id = store::commit_snapshot(&SnapshotRequest {
                    refs,
                    updates: Vec::new(),
                })?;
                Ok(Report {
                    snapshot_id: Some(id),
                    ..report(0)
                })
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Absurd);
