//! The delivery a plugin is called for, with accessors.

pub use crate::filter::bindings::hookvault::plugin0_1_0::types::{Event, RefChange, RefKind};

impl Event {
    /// A push: Cloud's `repo:push` or Data Center's `repo:refs_changed`.
    pub fn is_push(&self) -> bool {
        matches!(self.event_key.as_str(), "repo:push" | "repo:refs_changed")
    }

    /// The changed branches.
    pub fn branches(&self) -> impl Iterator<Item = &RefChange> {
        self.changes.iter().filter(|c| c.kind == RefKind::Branch)
    }

    /// The changed tags.
    pub fn tags(&self) -> impl Iterator<Item = &RefChange> {
        self.changes.iter().filter(|c| c.kind == RefKind::Tag)
    }

    /// When hookvault received the delivery, as RFC 3339 in UTC (to the
    /// millisecond when it has one): what `hookvault undo --before` and
    /// `restore --at` take. A snapshot of this delivery is committed after
    /// it, so `--before` this moment is the state the push changed.
    pub fn received_at_rfc3339(&self) -> String {
        let nanos = i128::from(self.received_at_ms) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| format!("@{}", self.received_at_ms))
    }

    /// The change to one ref, by its full name.
    pub fn change(&self, name: &str) -> Option<&RefChange> {
        self.changes.iter().find(|c| c.name == name)
    }
}

/// Events for a plugin's native unit tests:
///
/// ```
/// use hookvault_plugin::Event;
/// let event = Event::test_push("acme/widgets")
///     .by("Dana Okafor")
///     .force_pushing("refs/heads/main", "1111111", "2222222")
///     .deleting("refs/heads/old", "3333333");
/// assert_eq!(event.changes.len(), 2);
/// ```
impl Event {
    /// A push to `repository` (`workspace/slug`) that changes nothing yet.
    pub fn test_push(repository: &str) -> Self {
        Event {
            delivery_id: "test-delivery".into(),
            source: "cloud".into(),
            event_key: "repo:push".into(),
            repository: repository.into(),
            actor: None,
            changes: Vec::new(),
            excluded_refs: Vec::new(),
            received_at_ms: 0,
        }
    }

    /// Pushed by `actor` (a display name).
    pub fn by(mut self, actor: &str) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// `name` moves from `old` to `new`.
    pub fn updating(self, name: &str, old: &str, new: &str) -> Self {
        self.with_change(name, Some(old), Some(new), false)
    }

    /// `name` is rewritten from `old` to `new` (a force-push).
    pub fn force_pushing(self, name: &str, old: &str, new: &str) -> Self {
        self.with_change(name, Some(old), Some(new), true)
    }

    /// `name` is created at `new`.
    pub fn creating(self, name: &str, new: &str) -> Self {
        self.with_change(name, None, Some(new), false)
    }

    /// `name`, at `old`, is deleted.
    pub fn deleting(self, name: &str, old: &str) -> Self {
        self.with_change(name, Some(old), None, false)
    }

    fn with_change(
        mut self,
        name: &str,
        old: Option<&str>,
        new: Option<&str>,
        forced: bool,
    ) -> Self {
        let kind = if name.starts_with("refs/heads/") {
            RefKind::Branch
        } else if name.starts_with("refs/tags/") {
            RefKind::Tag
        } else {
            RefKind::Other
        };
        self.changes.push(RefChange {
            name: name.into(),
            kind,
            old_target: old.map(String::from),
            new_target: new.map(String::from),
            forced,
        });
        self
    }
}

impl RefChange {
    /// The name without `refs/heads/` or `refs/tags/`.
    pub fn short_name(&self) -> &str {
        self.name
            .strip_prefix("refs/heads/")
            .or_else(|| self.name.strip_prefix("refs/tags/"))
            .unwrap_or(&self.name)
    }

    pub fn is_branch(&self) -> bool {
        self.kind == RefKind::Branch
    }

    pub fn is_tag(&self) -> bool {
        self.kind == RefKind::Tag
    }

    /// The ref did not exist before this push.
    pub fn is_created(&self) -> bool {
        self.old_target.is_none() && self.new_target.is_some()
    }

    /// The push deleted the ref.
    pub fn is_deleted(&self) -> bool {
        self.old_target.is_some() && self.new_target.is_none()
    }

    /// Bitbucket reports that history was rewritten (a force-push).
    pub fn is_forced(&self) -> bool {
        self.forced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_read_the_changes() {
        let event = Event::test_push("acme/widgets")
            .by("Dana")
            .force_pushing("refs/heads/main", "a", "b")
            .deleting("refs/heads/old", "c")
            .creating("refs/tags/v1", "d");
        assert!(event.is_push());
        assert_eq!(event.actor.as_deref(), Some("Dana"));
        let branches: Vec<&str> = event.branches().map(RefChange::short_name).collect();
        assert_eq!(branches, ["main", "old"]);
        assert_eq!(event.tags().count(), 1);
        let main = event.change("refs/heads/main").unwrap();
        assert!(main.is_forced() && main.is_branch() && !main.is_created());
        assert!(event.change("refs/heads/old").unwrap().is_deleted());
        let tag = event.change("refs/tags/v1").unwrap();
        assert!(tag.is_created() && tag.is_tag());
        assert!(event.change("refs/heads/none").is_none());
        let mut at = event.clone();
        at.received_at_ms = 1_764_936_000_123;
        assert_eq!(at.received_at_rfc3339(), "2025-12-05T12:00:00.123Z");
        at.received_at_ms = 1_764_936_000_000;
        assert_eq!(at.received_at_rfc3339(), "2025-12-05T12:00:00Z");
    }
}
