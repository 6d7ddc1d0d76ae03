//! `metadata` (WIT 0.2.0): the pull request and comments the event
//! carries, read by metadata plugins.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::metadata::hookvault::plugin0_2_0::metadata as wit;
use super::PluginState;
use crate::event::{Comment, Event, EventKind, PullRequest};

/// The event a call is about.
pub trait CurrentEvent: Send {
    fn event(&self) -> &Event;
}

/// Give `linker` the `metadata` interface, served by `X`.
pub fn add_to_linker<X: CurrentEvent + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: CurrentEvent> wit::Host for PluginState<X> {
    fn current_kind(&mut self) -> wit::EventKind {
        match self.extra.event().kind {
            EventKind::Push => wit::EventKind::Push,
            EventKind::PullRequest => wit::EventKind::PullRequest,
            EventKind::Comment => wit::EventKind::Comment,
            EventKind::Repository => wit::EventKind::Repository,
            EventKind::RepositoryDeleted => wit::EventKind::RepositoryDeleted,
            EventKind::Reconcile => wit::EventKind::Reconcile,
        }
    }

    fn current_pull_request(&mut self) -> Option<wit::PullRequest> {
        self.extra
            .event()
            .pull_request
            .clone()
            .map(|p: PullRequest| wit::PullRequest {
                id: p.id,
                title: p.title,
                description: p.description,
                state: p.state,
                author: p.author,
                source_branch: p.source_branch,
                source_commit: p.source_commit,
                destination_branch: p.destination_branch,
                destination_commit: p.destination_commit,
                reviewers: p.reviewers,
                created: p.created,
                updated: p.updated,
            })
    }

    fn current_comments(&mut self) -> Vec<wit::Comment> {
        let event = self.extra.event();
        event
            .comment
            .iter()
            .chain(event.comments.iter())
            .cloned()
            .map(|c: Comment| wit::Comment {
                id: c.id,
                text: c.text,
                author: c.author,
                created: c.created,
                updated: c.updated,
                parent: c.parent,
                path: c.path,
                line: c.line,
                deleted: c.deleted,
            })
            .collect()
    }
}
