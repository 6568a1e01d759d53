//! The one shape of a long operation (`PullKernel`, `PullImage`,
//! `ImportImage`, `PrepareImage`, `CreateVm`): a stream of
//! [`banger.runtime.v1.Progress`](crate::runtime::v1::Progress) updates,
//! then one final result.
//!
//! - [`LongEvent`]: each stream's event message, built from (and read as)
//!   the common update or the result. Building one also fills the
//!   deprecated per-service `progress` field from the same values, so
//!   clients older than the common message keep working; this file is the
//!   only place that writes them.
//! - [`stream`] (servers, feature `host`): runs a producer in its own task
//!   and turns what it reports, then its result, into the response stream,
//!   with the one cancellation rule ([`Work`], proto/README.md "Long
//!   operations and cancellation"): a client that goes away cancels
//!   nothing shared; caller-only work is told to stop.

use crate::runtime::v1::{Progress, ProgressUnit};
use crate::{imagestore::v1 as imagestore, kernelcat::v1 as kernelcat, vmm::v1 as vmm};

/// What one event of a long operation's stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<D> {
    /// How the operation is getting on.
    Update(Progress),
    /// Its result: the last event.
    Done(D),
}

/// An event message of a long operation's stream.
pub trait LongEvent: Sized + Send + 'static {
    /// The operation's result (the `done` of the event).
    type Done: Send + 'static;
    /// An update event: `update` and the deprecated `progress`, both from `p`.
    fn update(p: Progress) -> Self;
    /// The final event.
    fn done(d: Self::Done) -> Self;
    /// What the event says: its `update` or its `done`; from a server older
    /// than the common message, the deprecated `progress` read as an
    /// update. `None` for an empty event.
    fn into_step(self) -> Option<Step<Self::Done>>;
}

#[allow(deprecated)] // the one place that writes and reads the old progress shapes
mod events {
    use super::*;

    impl LongEvent for kernelcat::PullKernelEvent {
        type Done = kernelcat::Kernel;
        fn update(p: Progress) -> Self {
            kernelcat::PullKernelEvent {
                event: Some(kernelcat::pull_kernel_event::Event::Progress(
                    kernelcat::PullProgress {
                        phase: p.phase.clone(),
                        bytes_done: p.done,
                        bytes_total: p.total,
                    },
                )),
                update: Some(p),
            }
        }
        fn done(d: Self::Done) -> Self {
            kernelcat::PullKernelEvent {
                event: Some(kernelcat::pull_kernel_event::Event::Done(d)),
                update: None,
            }
        }
        fn into_step(self) -> Option<Step<Self::Done>> {
            use kernelcat::pull_kernel_event::Event;
            match (self.event, self.update) {
                (Some(Event::Done(d)), _) => Some(Step::Done(d)),
                (_, Some(p)) => Some(Step::Update(p)),
                (Some(Event::Progress(old)), None) => Some(Step::Update(Progress {
                    phase: old.phase,
                    done: old.bytes_done,
                    total: old.bytes_total,
                    unit: bytes_if(old.bytes_done, old.bytes_total),
                    ..Progress::default()
                })),
                (None, None) => None,
            }
        }
    }

    impl LongEvent for imagestore::PullImageEvent {
        type Done = imagestore::Image;
        fn update(p: Progress) -> Self {
            imagestore::PullImageEvent {
                event: Some(imagestore::pull_image_event::Event::Progress(
                    imagestore::ImageProgress {
                        phase: p.phase.clone(),
                        layer: p.subject.clone(),
                        bytes_done: p.done,
                        bytes_total: p.total,
                        message: p.message.clone(),
                    },
                )),
                update: Some(p),
            }
        }
        fn done(d: Self::Done) -> Self {
            imagestore::PullImageEvent {
                event: Some(imagestore::pull_image_event::Event::Done(d)),
                update: None,
            }
        }
        fn into_step(self) -> Option<Step<Self::Done>> {
            use imagestore::pull_image_event::Event;
            match (self.event, self.update) {
                (Some(Event::Done(d)), _) => Some(Step::Done(d)),
                (_, Some(p)) => Some(Step::Update(p)),
                (Some(Event::Progress(old)), None) => Some(Step::Update(Progress {
                    phase: old.phase,
                    message: old.message,
                    done: old.bytes_done,
                    total: old.bytes_total,
                    unit: bytes_if(old.bytes_done, old.bytes_total),
                    subject: old.layer,
                    seconds: 0.0,
                })),
                (None, None) => None,
            }
        }
    }

    fn create_vm_progress(p: &Progress) -> vmm::CreateVmProgress {
        vmm::CreateVmProgress {
            phase: p.phase.clone(),
            message: p.message.clone(),
            done: p.done,
            total: p.total,
            seconds: p.seconds,
        }
    }

    fn from_create_vm_progress(old: vmm::CreateVmProgress) -> Progress {
        Progress {
            phase: old.phase,
            message: old.message,
            done: old.done,
            total: old.total,
            unit: if old.total > 0 {
                ProgressUnit::Items
            } else {
                ProgressUnit::Unspecified
            } as i32,
            subject: String::new(),
            seconds: old.seconds,
        }
    }

    impl LongEvent for vmm::CreateVmEvent {
        type Done = vmm::Vm;
        fn update(p: Progress) -> Self {
            vmm::CreateVmEvent {
                event: Some(vmm::create_vm_event::Event::Progress(create_vm_progress(
                    &p,
                ))),
                update: Some(p),
            }
        }
        fn done(d: Self::Done) -> Self {
            vmm::CreateVmEvent {
                event: Some(vmm::create_vm_event::Event::Done(d)),
                update: None,
            }
        }
        fn into_step(self) -> Option<Step<Self::Done>> {
            use vmm::create_vm_event::Event;
            match (self.event, self.update) {
                (Some(Event::Done(d)), _) => Some(Step::Done(d)),
                (_, Some(p)) => Some(Step::Update(p)),
                (Some(Event::Progress(old)), None) => {
                    Some(Step::Update(from_create_vm_progress(old)))
                }
                (None, None) => None,
            }
        }
    }

    impl LongEvent for vmm::PrepareImageEvent {
        type Done = vmm::PreparedImage;
        fn update(p: Progress) -> Self {
            vmm::PrepareImageEvent {
                event: Some(vmm::prepare_image_event::Event::Progress(
                    create_vm_progress(&p),
                )),
                update: Some(p),
            }
        }
        fn done(d: Self::Done) -> Self {
            vmm::PrepareImageEvent {
                event: Some(vmm::prepare_image_event::Event::Done(d)),
                update: None,
            }
        }
        fn into_step(self) -> Option<Step<Self::Done>> {
            use vmm::prepare_image_event::Event;
            match (self.event, self.update) {
                (Some(Event::Done(d)), _) => Some(Step::Done(d)),
                (_, Some(p)) => Some(Step::Update(p)),
                (Some(Event::Progress(old)), None) => {
                    Some(Step::Update(from_create_vm_progress(old)))
                }
                (None, None) => None,
            }
        }
    }

    /// The unit of an old bytes-only update: bytes once any are counted.
    fn bytes_if(done: u64, total: u64) -> i32 {
        if done > 0 || total > 0 {
            ProgressUnit::Bytes as i32
        } else {
            ProgressUnit::Unspecified as i32
        }
    }
}

impl Progress {
    /// An update that starts (or is in) `phase`, with nothing counted.
    pub fn phase(phase: impl Into<String>, message: impl Into<String>) -> Progress {
        Progress {
            phase: phase.into(),
            message: message.into(),
            ..Progress::default()
        }
    }

    /// Counts `done` of `total` (0 = unknown) in `unit`.
    #[must_use]
    pub fn counted(mut self, done: u64, total: u64, unit: ProgressUnit) -> Progress {
        self.done = done;
        self.total = total;
        self.unit = unit as i32;
        self
    }

    /// About `subject` (e.g. a layer digest).
    #[must_use]
    pub fn about(mut self, subject: impl Into<String>) -> Progress {
        self.subject = subject.into();
        self
    }

    /// Ends the phase after `seconds`.
    #[must_use]
    pub fn ended(mut self, seconds: f64) -> Progress {
        self.seconds = seconds;
        self
    }
}

#[cfg(feature = "host")]
pub use server::{Reporter, Work, stream};

#[cfg(feature = "host")]
mod server {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc;
    use tokio_stream::Stream;
    use tonic::Status;
    use tonic::codegen::BoxStream;
    use tracing::Instrument;

    use super::LongEvent;
    use crate::runtime::v1::Progress;

    /// Who a long operation is for; decides what its client going away does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Work {
        /// Others may wait on it (a download, an image build, a
        /// preparation): it runs to its end whoever goes away, and its
        /// result stays for the next caller.
        Shared,
        /// Only its caller wanted it (a VM create): when the client goes
        /// away the producer is told ([`Reporter::cancelled`]) and stops,
        /// undoing what it made and killing its child processes.
        CallerOnly,
    }

    /// The producer's end of a long operation's stream.
    #[derive(Debug)]
    pub struct Reporter<E> {
        tx: mpsc::UnboundedSender<Item<E>>,
        work: Work,
    }

    impl<E> Clone for Reporter<E> {
        fn clone(&self) -> Self {
            Reporter {
                tx: self.tx.clone(),
                work: self.work,
            }
        }
    }

    impl<E: LongEvent> Reporter<E> {
        /// Sends one update. Never waits and never fails: a slow client
        /// does not slow the work (least of all shared work), and one that
        /// went away just misses it.
        pub fn report(&self, p: Progress) {
            let _ = self.tx.send(Item::Event(E::update(p)));
        }

        /// Whether the producer must stop: the operation is caller-only and
        /// its client went away. Always false for shared work.
        pub fn is_cancelled(&self) -> bool {
            self.work == Work::CallerOnly && self.tx.is_closed()
        }

        /// Resolves once [`Reporter::is_cancelled`]; never for shared work.
        pub async fn cancelled(&self) {
            match self.work {
                Work::CallerOnly => self.tx.closed().await,
                Work::Shared => std::future::pending().await,
            }
        }
    }

    enum Item<E> {
        Event(E),
        End(Result<E, Status>),
    }

    impl<E> std::fmt::Debug for Item<E> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Item::Event(_) => "Event",
                Item::End(_) => "End",
            })
        }
    }

    /// Runs `producer` in its own task (in the current span) and streams
    /// what it reports, then its result (`done`) or its error. The task is
    /// never aborted: whatever the client does, the producer runs to its
    /// own end, so nothing is left half-made; with [`Work::CallerOnly`] it
    /// is told when the client went away and ends early. The stream ends
    /// with the result, even if a copy of the reporter lives on.
    pub fn stream<E, F, Fut, Er>(work: Work, producer: F) -> BoxStream<E>
    where
        E: LongEvent,
        F: FnOnce(Reporter<E>) -> Fut,
        Fut: Future<Output = Result<E::Done, Er>> + Send + 'static,
        Er: Into<Status> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            producer(Reporter {
                tx: tx.clone(),
                work,
            })
            .in_current_span(),
        );
        tokio::spawn(async move {
            let end = match task.await {
                Ok(result) => result.map(E::done).map_err(Into::into),
                Err(e) => Err(Status::internal(format!(
                    "the operation's task failed: {e}"
                ))),
            };
            let _ = tx.send(Item::End(end));
        });
        Box::pin(Events { rx, ended: false })
    }

    /// The response stream: events until the end item.
    struct Events<E> {
        rx: mpsc::UnboundedReceiver<Item<E>>,
        ended: bool,
    }

    impl<E> Stream for Events<E> {
        type Item = Result<E, Status>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Item::Event(e))) => Poll::Ready(Some(Ok(e))),
                Poll::Ready(Some(Item::End(r))) => {
                    self.ended = true;
                    Poll::Ready(Some(r))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

#[cfg(all(test, feature = "host"))]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::kernelcat::v1::{Kernel, PullKernelEvent};

    /// A producer that reports once, then waits for `go` (or its
    /// cancellation) and says which came first.
    async fn run(work: Work) -> (Vec<Step<Kernel>>, bool) {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let mut s = stream::<PullKernelEvent, _, _, tonic::Status>(work, |r| async move {
            r.report(Progress::phase("downloading", "").counted(1, 2, ProgressUnit::Bytes));
            let cancelled = tokio::select! {
                _ = go_rx => false,
                () = r.cancelled() => true,
            };
            let _ = seen_tx.send(cancelled || r.is_cancelled());
            Ok(Kernel {
                name: "k".into(),
                ..Kernel::default()
            })
        });
        let first = s.next().await.unwrap().unwrap().into_step().unwrap();
        drop(s); // the client goes away
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = go_tx.send(());
        (vec![first], seen_rx.await.unwrap())
    }

    #[tokio::test]
    async fn a_client_that_goes_away_cancels_caller_only_work_and_nothing_shared() {
        let (steps, cancelled) = run(Work::CallerOnly).await;
        assert!(cancelled, "caller-only work is told to stop");
        let Step::Update(p) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!((p.phase.as_str(), p.done, p.total), ("downloading", 1, 2));
        let (_, cancelled) = run(Work::Shared).await;
        assert!(!cancelled, "shared work runs on");
    }

    #[tokio::test]
    async fn updates_then_the_result_end_the_stream_and_fill_the_old_fields() {
        let keep = std::sync::Arc::new(std::sync::Mutex::new(None));
        let kept = keep.clone();
        let s = stream::<PullKernelEvent, _, _, tonic::Status>(Work::Shared, |r| async move {
            r.report(Progress::phase("resolving", "debian-6.12"));
            // A reporter that outlives the producer does not hold the stream open.
            *kept.lock().unwrap() = Some(r);
            Ok(Kernel::default())
        });
        let events: Vec<_> = s.map(Result::unwrap).collect().await;
        assert_eq!(events.len(), 2);
        #[allow(deprecated)]
        let Some(crate::kernelcat::v1::pull_kernel_event::Event::Progress(old)) = &events[0].event
        else {
            panic!("{events:?}")
        };
        assert_eq!(old.phase, "resolving");
        assert_eq!(events[0].update.as_ref().unwrap().message, "debian-6.12");
        assert!(matches!(events[1].clone().into_step(), Some(Step::Done(_))));
        assert!(keep.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status() {
        let mut s = stream::<PullKernelEvent, _, _, tonic::Status>(Work::Shared, |_| async {
            Err(tonic::Status::not_found("no kernel"))
        });
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(s.next().await.is_none());
    }

    #[test]
    #[allow(deprecated)]
    fn an_event_from_an_older_server_reads_as_an_update() {
        use crate::imagestore::v1::{ImageProgress, PullImageEvent, pull_image_event::Event};
        let old = PullImageEvent {
            event: Some(Event::Progress(ImageProgress {
                phase: "downloading".into(),
                layer: "sha256:ab".into(),
                bytes_done: 5,
                bytes_total: 10,
                message: String::new(),
            })),
            update: None,
        };
        let Some(Step::Update(p)) = old.into_step() else {
            panic!()
        };
        assert_eq!(p.subject, "sha256:ab");
        assert_eq!(p.unit(), ProgressUnit::Bytes);
        assert_eq!((p.done, p.total), (5, 10));
    }
}
