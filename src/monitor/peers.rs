//! The peer journals a [`super::Monitor`] watches, read into [`Event`]s.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Event, ResyncReason};
use crate::error::Result;
use crate::peer::{PeerChange, PeerJournal};

/// The journals, in the order their folders were given.
#[derive(Debug, Default)]
pub(super) struct Watched {
    journals: Vec<PeerJournal>,
}

impl Watched {
    /// Opens the journal of the tunnel pinned in `folder`; false when it is watched already.
    pub(super) fn watch(&mut self, folder: &Path) -> Result<bool> {
        if self.journals.iter().any(|j| j.folder() == folder) {
            return Ok(false);
        }
        self.journals.push(PeerJournal::open(folder)?);
        Ok(true)
    }

    pub(super) fn folders(&self) -> impl Iterator<Item = &Path> {
        self.journals.iter().map(PeerJournal::folder)
    }

    /// Reads every journal, folder by folder, queueing its changes as events read at `time`
    /// and counting their resyncs in `resyncs`. A journal that fails stops the round with its error
    /// (the changes read before it stay queued; the next round reads it again).
    pub(super) fn poll(
        &mut self,
        time: SystemTime,
        out: &mut VecDeque<(Event, SystemTime)>,
        resyncs: &mut u64,
    ) -> Result<()> {
        for journal in &mut self.journals {
            let changes = journal.poll()?;
            let folder = journal.folder();
            for (i, change) in changes.iter().enumerate() {
                let event = match change {
                    PeerChange::Resync(reason) => {
                        *resyncs += 1;
                        let missed = changes[i + 1..]
                            .iter()
                            .take_while(|c| !matches!(c, PeerChange::Resync(_)))
                            .count();
                        Event::Resync {
                            reason: ResyncReason::Journal(*reason),
                            missed,
                        }
                    }
                    other => match peer_event(folder, other) {
                        Some(e) => e,
                        None => continue,
                    },
                };
                out.push_back((event, time));
            }
        }
        Ok(())
    }
}

/// The event of one journaled or synthesized change.
fn peer_event(folder: &Path, change: &PeerChange) -> Option<Event> {
    let folder: PathBuf = folder.to_path_buf();
    Some(match change.clone() {
        PeerChange::Added {
            prefix,
            peer,
            origin,
        } => Event::PeerAdded {
            folder,
            prefix,
            peer,
            origin,
        },
        PeerChange::Changed {
            prefix,
            old,
            new,
            origin,
        } => Event::PeerChanged {
            folder,
            prefix,
            old,
            new,
            origin,
        },
        PeerChange::Removed {
            prefix,
            peer,
            origin,
        } => Event::PeerRemoved {
            folder,
            prefix,
            peer,
            origin,
        },
        _ => return None,
    })
}
