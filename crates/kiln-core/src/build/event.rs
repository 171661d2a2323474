//! What a build reports while it runs: owned, serialisable events, so that a build running in
//! another process (a server, a worker) can stream them to whoever watches.

use serde::{Deserialize, Serialize};

use kiln_toe::events::OwnedEvent;

use crate::record::{ComponentRecord, ImageRecord, State};

/// Something a build reports while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BuildEvent {
    /// The build has a number and is starting.
    Started {
        /// Its record as stored (PENDING).
        record: Box<ImageRecord>,
    },
    /// A new stage.
    Stage {
        /// BUILDING, TESTING, DISTRIBUTING.
        state: State,
    },
    /// The builder the components run on, and why (who owns them): told once, after
    /// [`BuildEvent::Started`].
    Builder {
        /// The choice, as the record keeps it.
        choice: crate::trust::BuilderChoice,
    },
    /// A line about what is happening (bootstrap output, capture, distribution).
    Progress {
        /// The line.
        message: String,
    },
    /// A component starts (or is taken from the cache).
    ComponentStarted {
        /// 0-based.
        index: usize,
        /// How many.
        total: usize,
        /// Its name.
        name: String,
        /// Whether it comes from the cache.
        cached: bool,
    },
    /// A component is done.
    ComponentFinished {
        /// 0-based.
        index: usize,
        /// What happened.
        record: ComponentRecord,
    },
    /// An event of the component engine (steps, output).
    Step {
        /// The event.
        event: OwnedEvent,
    },
    /// The build's logs were shipped (`logging.localPath`, `logging.s3Logs`).
    LogsShipped {
        /// Where to: a folder, or `s3://BUCKET/PREFIX`.
        to: String,
        /// How many files.
        files: usize,
        /// Uploaded (true) or copied (false).
        uploaded: bool,
    },
    /// Something went wrong that does not change how the build ended.
    Warning {
        /// What.
        message: String,
    },
    /// The build ended (AVAILABLE, FAILED or CANCELLED).
    Finished {
        /// Its final record.
        record: Box<ImageRecord>,
    },
}

/// Receives build events.
pub trait BuildObserver: Send + Sync {
    /// One event.
    fn event(&self, e: &BuildEvent);
}

/// An observer that ignores everything.
pub struct Unobserved;

impl BuildObserver for Unobserved {
    fn event(&self, _: &BuildEvent) {}
}

/// Forwards the component engine's events to a build observer.
pub(crate) struct Forward(pub std::sync::Arc<dyn BuildObserver>);

impl kiln_toe::events::Observer for Forward {
    fn event(&self, e: &kiln_toe::events::Event<'_>) {
        self.0.event(&BuildEvent::Step { event: e.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_json_and_come_back_the_same() {
        let events = vec![
            BuildEvent::Stage {
                state: State::Testing,
            },
            BuildEvent::ComponentStarted {
                index: 1,
                total: 3,
                name: "nginx".into(),
                cached: false,
            },
            BuildEvent::Step {
                event: OwnedEvent::Output {
                    step: kiln_toe::events::StepId {
                        depth: 0,
                        document: "nginx".into(),
                        phase: "build".into(),
                        step: "Install".into(),
                        action: kiln_toe::action::Action::ExecuteBash,
                    },
                    stream: kiln_instance::Stream::Stderr,
                    line: "E: unable to locate package".into(),
                },
            },
            BuildEvent::LogsShipped {
                to: "s3://logs/builds".into(),
                files: 4,
                uploaded: true,
            },
        ];
        for e in events {
            let text = serde_json::to_string(&e).unwrap();
            let back: BuildEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(back, e, "{text}");
        }
        let text = serde_json::to_string(&BuildEvent::Stage {
            state: State::Building,
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"stage","state":"BUILDING"}"#);
    }
}
