//! The one renderer of every streamed long operation: kernel pull and
//! import, image pull, import and prepare, VM create.
//!
//! Its input is [`Update`], a small CLI-side struct; the one conversion
//! from the wire's common progress message (`banger.runtime.v1.Progress`,
//! each stream event's `update`, read through
//! `banger_proto::rpc::progress::LongEvent::into_step`) is the `From` impl
//! below and lives nowhere else. On a terminal it draws a spinner (or a byte bar) for the
//! operation and one byte bar per item (an image layer); without a
//! terminal (logs, CI) it prints lines instead: one per new message and per
//! quarter of a count. Under `--json` it draws nothing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use banger_proto::runtime::v1::{self as rt, ProgressUnit};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output;

/// What an update's `done` and `total` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unit {
    /// Steps, files, packages…
    #[default]
    Items,
    Bytes,
}

/// One progress update of a long operation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Update {
    /// The phase, e.g. `downloading`, `booting`.
    pub phase: String,
    /// Free-form detail for people; may be empty.
    pub message: String,
    /// The part of the operation this is about (an image layer's short
    /// digest); empty for the operation as a whole.
    pub item: String,
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
    pub unit: Unit,
    /// Seconds the phase took, set (> 0) once, when it ends: such an
    /// update only records a timing.
    pub seconds: f64,
}

/// Every service's update: the common `banger.runtime.v1.Progress` (an
/// image layer's updates name it in `subject`).
impl From<&rt::Progress> for Update {
    fn from(p: &rt::Progress) -> Self {
        Update {
            phase: p.phase.clone(),
            message: p.message.clone(),
            item: output::short_digest(&p.subject),
            done: p.done,
            total: p.total,
            unit: match p.unit() {
                ProgressUnit::Bytes => Unit::Bytes,
                ProgressUnit::Items | ProgressUnit::Unspecified => Unit::Items,
            },
            seconds: p.seconds,
        }
    }
}

/// A phase that ended: name, seconds, and how it went (e.g. the disk
/// phase's `reflink`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Timing {
    pub phase: String,
    pub seconds: f64,
    pub detail: String,
}

/// The renderer of one operation; [`Progress::finish`] or
/// [`Progress::abandon`] ends it.
pub struct Progress {
    sink: Sink,
    timings: Vec<Timing>,
}

enum Sink {
    /// `--json`: nothing is drawn.
    Hidden,
    Terminal {
        multi: MultiProgress,
        main: ProgressBar,
        /// Whether `main` currently has the byte-bar style.
        main_is_bar: bool,
        items: HashMap<String, ProgressBar>,
    },
    Lines(Lines),
}

impl Progress {
    /// Draws on stderr, as lines when it is not a terminal; nothing when
    /// `hidden` (`--json`).
    pub fn new(hidden: bool) -> Progress {
        let sink = if hidden {
            Sink::Hidden
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::new();
            let main = multi.add(ProgressBar::new_spinner());
            main.set_style(spinner_style());
            main.enable_steady_tick(Duration::from_millis(120));
            Sink::Terminal {
                multi,
                main,
                main_is_bar: false,
                items: HashMap::new(),
            }
        } else {
            Sink::Lines(Lines::default())
        };
        Progress {
            sink,
            timings: Vec::new(),
        }
    }

    /// One update: a phase that ended (`seconds` > 0), or one that
    /// started or moved on.
    pub fn update(&mut self, update: impl Into<Update>) {
        let u = update.into();
        if u.seconds > 0.0 {
            self.timings.push(Timing {
                phase: u.phase,
                seconds: u.seconds,
                detail: u.message,
            });
            return;
        }
        match &mut self.sink {
            Sink::Hidden => {}
            Sink::Lines(lines) => {
                if let Some(line) = lines.line(&u) {
                    eprintln!("banger: {line}");
                }
            }
            Sink::Terminal { multi, items, .. } if !u.item.is_empty() => {
                let bar = items.entry(u.item.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(u.total));
                    bar.set_style(item_style());
                    bar.set_prefix(u.item.clone());
                    bar
                });
                if u.total > 0 {
                    bar.set_length(u.total);
                }
                // An item's count only grows: a later phase's update without
                // one (an image layer's `unpacking`) keeps what was counted.
                bar.set_position(bar.position().max(u.done));
                bar.set_message(u.phase.clone());
            }
            Sink::Terminal {
                main, main_is_bar, ..
            } => {
                let as_bar = u.unit == Unit::Bytes && u.total > 0;
                if as_bar != *main_is_bar {
                    main.set_style(if as_bar {
                        bytes_style()
                    } else {
                        spinner_style()
                    });
                    *main_is_bar = as_bar;
                }
                if as_bar {
                    main.set_length(u.total);
                    main.set_position(u.done);
                    main.set_message(text(&u));
                } else {
                    main.set_message(counted(&u));
                }
            }
        }
    }

    /// The phases that ended so far, in order (for `--timings`).
    pub fn timings(&self) -> &[Timing] {
        &self.timings
    }

    /// The operation succeeded: the spinner goes, item bars stay as done.
    pub fn finish(&self) {
        if let Sink::Terminal { main, items, .. } = &self.sink {
            for bar in items.values() {
                bar.finish_with_message("done");
            }
            main.finish_and_clear();
        }
    }

    /// The operation failed or was cancelled: the bars stay, saying `why`.
    pub fn abandon(&self, why: &str) {
        if let Sink::Terminal { main, items, .. } = &self.sink {
            for bar in items.values() {
                bar.abandon();
            }
            main.abandon_with_message(why.to_owned());
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("static template")
    .progress_chars("=> ")
}

fn item_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>14} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
        .expect("static template")
}

/// `phase`, or `phase: message`, with the item in front when there is one.
fn text(u: &Update) -> String {
    let mut t = if u.message.is_empty() {
        u.phase.clone()
    } else {
        format!("{}: {}", u.phase, u.message)
    };
    if !u.item.is_empty() {
        t = format!("{} {t}", u.item);
    }
    t
}

/// [`text`] with the count: `(3/10)` or `(1.0 MiB/4.0 MiB)`.
fn counted(u: &Update) -> String {
    let t = text(u);
    let n = |v: u64| match u.unit {
        Unit::Items => v.to_string(),
        Unit::Bytes => output::human_bytes(v),
    };
    match (u.total, u.unit) {
        (0, Unit::Bytes) if u.done > 0 => format!("{t} ({})", n(u.done)),
        (0, _) => t,
        (total, _) => format!("{t} ({}/{})", n(u.done), n(total)),
    }
}

/// Line output without a terminal: per item (and for the operation), the
/// last text printed and the quarter of its count reached.
#[derive(Debug, Default)]
struct Lines {
    last: HashMap<String, (String, u64)>,
}

impl Lines {
    /// The line to print for `u`, if any: a new text, or a count past the
    /// next quarter.
    fn line(&mut self, u: &Update) -> Option<String> {
        let t = text(u);
        let q = (u.done * 4).checked_div(u.total).unwrap_or(0);
        let (last, quarter) = self.last.entry(u.item.clone()).or_default();
        if *last != t || q > *quarter {
            *last = t;
            *quarter = q;
            Some(counted(u))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(phase: &str, message: &str, done: u64, total: u64) -> Update {
        Update::from(&rt::Progress::phase(phase, message).counted(done, total, ProgressUnit::Items))
    }

    #[test]
    fn lines_print_new_messages_and_quarters_only() {
        let mut lines = Lines::default();
        let printed: Vec<String> = [
            step("booting", "", 0, 0),
            step("booting", "", 0, 0),
            step("disk", "copying", 1, 100),
            step("disk", "copying", 20, 100),
            step("disk", "copying", 26, 100),
            step("disk", "copying", 100, 100),
        ]
        .iter()
        .filter_map(|u| lines.line(u))
        .collect();
        assert_eq!(
            printed,
            [
                "booting",
                "disk: copying (1/100)",
                "disk: copying (26/100)",
                "disk: copying (100/100)"
            ]
        );
    }

    #[test]
    fn image_layers_are_items_counted_in_bytes() {
        let layer = |phase: &str, done| {
            Update::from(
                &rt::Progress::phase(phase, "")
                    .counted(done, 2048, ProgressUnit::Bytes)
                    .about("sha256:0123456789abcdef0123"),
            )
        };
        let mut lines = Lines::default();
        assert_eq!(
            lines.line(&layer("downloading", 1024)).as_deref(),
            Some("0123456789ab downloading (1.0 KiB/2.0 KiB)")
        );
        assert_eq!(
            lines.line(&layer("unpacking", 0)).as_deref(),
            Some("0123456789ab unpacking (0 B/2.0 KiB)")
        );
        let whole = Update::from(&rt::Progress::phase("building", ""));
        assert_eq!(whole.item, "");
        assert_eq!(lines.line(&whole).as_deref(), Some("building"));
    }

    #[test]
    fn kernel_pulls_count_bytes() {
        let u = Update::from(&rt::Progress::phase("downloading", "").counted(
            3 << 20,
            0,
            ProgressUnit::Bytes,
        ));
        assert_eq!(
            (u.unit, counted(&u).as_str()),
            (Unit::Bytes, "downloading (3.0 MiB)")
        );
    }

    #[test]
    fn ended_phases_are_timings_not_drawn() {
        let mut p = Progress::new(true);
        p.update(step("booting", "", 0, 0));
        p.update(&rt::Progress::phase("disk", "reflink").ended(0.5));
        assert_eq!(
            p.timings(),
            [Timing {
                phase: "disk".into(),
                seconds: 0.5,
                detail: "reflink".into()
            }]
        );
    }
}
