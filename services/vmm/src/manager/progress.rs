//! Progress of a create (or a start): phases that start and end, with
//! their durations. The manager reports to a [`Progress`]; the service
//! turns the events into its stream, and callers without a stream pass
//! [`NoProgress`]. A [`Progress`] also says whether its caller went away,
//! which stops a create (work only that caller wanted) at its next step.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// One phase started (`seconds` = None), moved on (an update: `seconds` =
/// None, `total` > 0 or a new message) or ended (`seconds` = its duration).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhaseEvent {
    pub phase: &'static str,
    pub message: String,
    pub seconds: Option<f64>,
    /// Items of the phase done so far, of `total` (0 = not counted).
    pub done: u64,
    pub total: u64,
}

/// Where progress goes, and whether its caller still waits.
#[tonic::async_trait]
pub trait Progress: Send + Sync {
    /// Reports one event. May wait for a slow receiver; never fails (a
    /// receiver that went away does not stop the operation).
    async fn report(&self, event: PhaseEvent);

    /// Whether the caller of work only it wanted went away (the operation
    /// stops and undoes itself). Never, unless the progress says so.
    fn caller_gone(&self) -> bool {
        false
    }

    /// Resolves once [`Progress::caller_gone`]; by default never.
    async fn gone(&self) {
        std::future::pending::<()>().await;
    }
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

#[tonic::async_trait]
impl Progress for NoProgress {
    async fn report(&self, _: PhaseEvent) {}
}

#[tonic::async_trait]
impl Progress for mpsc::Sender<PhaseEvent> {
    async fn report(&self, event: PhaseEvent) {
        let _ = self.send(event).await;
    }
}

/// Reports phase starts and ends with durations, and opens one span per
/// phase, so an operator reads `vm create` step by step in one trace.
pub(crate) struct Phases<'a> {
    progress: &'a dyn Progress,
    vm: String,
    /// The running phase, when it started, and its span.
    current: Mutex<Option<(&'static str, Instant, tracing::Span)>>,
}

impl<'a> Phases<'a> {
    pub(crate) fn new(progress: &'a dyn Progress, vm: &str) -> Self {
        Phases {
            progress,
            vm: vm.to_owned(),
            current: Mutex::new(None),
        }
    }

    /// The running phase's span; calls to other services made under it
    /// become its children in the trace.
    pub(crate) fn span(&self) -> tracing::Span {
        self.current
            .lock()
            .expect("phase lock")
            .as_ref()
            .map(|(_, _, span)| span.clone())
            .unwrap_or_else(tracing::Span::none)
    }

    /// `Err(CallerGone)` once the caller went away: a create checks it
    /// before each step and rolls back.
    pub(crate) fn check(&self) -> Result<()> {
        if self.progress.caller_gone() {
            return Err(Error::CallerGone {
                name: self.vm.clone(),
            });
        }
        Ok(())
    }

    /// Resolves with `CallerGone` once the caller went away (never for
    /// shared work): the long waits of a create race it.
    pub(crate) async fn gone(&self) -> Error {
        self.progress.gone().await;
        Error::CallerGone {
            name: self.vm.clone(),
        }
    }

    pub(crate) async fn start(&self, phase: &'static str, message: String) {
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("vm {phase}"),
            step = phase,
            vm = %self.vm,
        );
        *self.current.lock().expect("phase lock") = Some((phase, Instant::now(), span));
        tracing::info!(phase, "{message}");
        self.progress
            .report(PhaseEvent {
                phase,
                message,
                ..PhaseEvent::default()
            })
            .await;
    }

    /// Reports how the running phase is getting on (e.g. a preparation's
    /// package installs), without ending it.
    pub(crate) async fn update(&self, message: String, done: u64, total: u64) {
        let phase = self
            .current
            .lock()
            .expect("phase lock")
            .as_ref()
            .map(|(p, _, _)| *p);
        if let Some(phase) = phase {
            self.progress
                .report(PhaseEvent {
                    phase,
                    message,
                    seconds: None,
                    done,
                    total,
                })
                .await;
        }
    }

    pub(crate) async fn end(&self) {
        self.end_with(String::new()).await;
    }

    /// Ends the phase saying how it went (e.g. the disk phase: `reflink`).
    pub(crate) async fn end_with(&self, message: String) {
        let cur = self.current.lock().expect("phase lock").take();
        if let Some((phase, started, _span)) = cur {
            self.progress
                .report(PhaseEvent {
                    phase,
                    message,
                    seconds: Some(started.elapsed().as_secs_f64()),
                    ..PhaseEvent::default()
                })
                .await;
        }
    }
}
