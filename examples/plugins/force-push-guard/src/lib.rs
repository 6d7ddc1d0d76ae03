//! Guard protected branches: when a push rewrites one (a force-push) or
//! deletes it, raise a critical alert that names who did it, the previous
//! tip, and the exact `hookvault undo` command that shows it and puts it
//! back. The push is still backed up: the previous tip stays in the
//! earlier snapshots, which is what the command restores from.
//!
//! Config, in hookvault.toml:
//!
//! ```toml
//! [[plugins]]
//! name = "force-push-guard"
//! kind = "filter"
//! path = "examples/plugins/force-push-guard/target/wasm32-wasip2/release/force_push_guard.wasm"
//! config = { protected = ["refs/heads/main", "refs/heads/release/*"] }
//!
//! [[alerts.webhooks]]
//! url = { env = "SLACK_WEBHOOK_URL" }
//! format = "slack"
//! ```
//!
//! Without `protected`, every branch is guarded.

use hookvault_plugin::alerts::{self, Severity};
use hookvault_plugin::filter::{Decision, Filter};
use hookvault_plugin::{Event, Patterns, RefChange};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Glob patterns of the refs to guard.
    protected: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protected: vec!["refs/heads/*".into()],
        }
    }
}

/// The alert for one rewritten or deleted protected ref, if `change` is one.
fn alert_for(event: &Event, change: &RefChange) -> Option<(String, String)> {
    let previous = change.old_target.as_deref()?;
    let what = if change.is_deleted() {
        "deleted"
    } else if change.is_forced() {
        "force-pushed"
    } else {
        return None;
    };
    let who = event.actor.as_deref().unwrap_or("someone");
    let title = format!("{} was {what} in {}", change.short_name(), event.repository);
    let undo = format!(
        "hookvault undo --repo {} --ref {} --before {}",
        event.repository,
        change.name,
        event.received_at_rfc3339()
    );
    let message = format!(
        "{who} {what} {} (it was at {previous}). The previous tip is in the vault: `{undo}` shows it, and with `--push URL` puts it back.",
        change.name
    );
    Some((title, message))
}

struct ForcePushGuard;

impl Filter for ForcePushGuard {
    type Config = Config;

    fn filter(event: &Event, config: &Config) -> Result<Decision, String> {
        let protected = Patterns::new(&config.protected)?;
        for change in event.changes.iter().filter(|c| protected.is_match(&c.name)) {
            if let Some((title, message)) = alert_for(event, change) {
                let previous = change.old_target.as_deref().unwrap_or("");
                let actor = event.actor.as_deref().unwrap_or("");
                alerts::raise(
                    Severity::Critical,
                    &title,
                    &message,
                    &[
                        ("ref", &change.name),
                        ("previous", previous),
                        ("actor", actor),
                    ],
                );
            }
        }
        Ok(Decision::Keep)
    }
}

hookvault_plugin::export_filter!(ForcePushGuard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_and_deletions_name_the_undo_command_and_updates_do_not() {
        let mut event = Event::test_push("acme/widgets")
            .by("Mallory")
            .force_pushing("refs/heads/main", "1111111", "2222222")
            .deleting("refs/heads/release/1.x", "3333333")
            .updating("refs/heads/dev", "4444444", "5555555");
        event.received_at_ms = 1_764_936_000_000;
        let (title, message) = alert_for(&event, &event.changes[0]).unwrap();
        assert_eq!(title, "main was force-pushed in acme/widgets");
        assert!(
            message.starts_with("Mallory force-pushed refs/heads/main (it was at 1111111)"),
            "{message}"
        );
        assert!(
            message.contains("`hookvault undo --repo acme/widgets --ref refs/heads/main --before 2025-12-05T12:00:00Z`"),
            "{message}"
        );
        let (title, _) = alert_for(&event, &event.changes[1]).unwrap();
        assert_eq!(title, "release/1.x was deleted in acme/widgets");
        assert!(alert_for(&event, &event.changes[2]).is_none());
        // The guard never holds a backup back.
        assert_eq!(
            ForcePushGuard::filter(&event, &Config::default()),
            Ok(Decision::Keep)
        );
    }
}
