//! How the CLI prints: tables for people, JSON with `--json`, and errors
//! that say what to do.

use std::process::ExitCode;

use comfy_table::{ContentArrangement, Table, presets::NOTHING};

/// A borderless table with the given header.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints an error (with gRPC statuses reduced to their message) and
/// returns the failure exit code.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        eprintln!("banger: {}", status.message());
    } else {
        eprintln!("banger: {err:#}");
    }
    ExitCode::FAILURE
}

/// The one renderer of a long call's phases (`vm create`, `image
/// prepare`): a spinner showing the running phase, its message and count,
/// and the ended phases' durations for `--timings`. Hidden under `--json`.
pub struct PhaseBar {
    bar: Option<indicatif::ProgressBar>,
    /// Without a terminal (logs, CI) progress is printed as lines: the
    /// last one printed, and the quarter of a count it reached.
    lines: Option<(String, u64)>,
    /// Ended phases: name, seconds, and how it went (e.g. the disk
    /// phase's `reflink`).
    pub timings: Vec<(String, f64, String)>,
}

impl PhaseBar {
    pub fn new(hidden: bool) -> PhaseBar {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let lines = (!hidden && !terminal).then(|| (String::new(), 0));
        let bar = (!hidden && terminal).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("valid"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        PhaseBar {
            bar,
            lines,
            timings: Vec::new(),
        }
    }

    /// One progress event: a phase that ended (`seconds` > 0), or one that
    /// started or moved on.
    pub fn event(&mut self, phase: &str, message: &str, done: u64, total: u64, seconds: f64) {
        if seconds > 0.0 {
            self.timings
                .push((phase.to_owned(), seconds, message.to_owned()));
            return;
        }
        let text = if message.is_empty() {
            phase.to_owned()
        } else {
            format!("{phase}: {message}")
        };
        let counted = if total > 0 {
            format!("{text} ({done}/{total})")
        } else {
            text.clone()
        };
        if let Some(bar) = &self.bar {
            bar.set_message(counted);
        } else if let Some((last, quarter)) = &mut self.lines {
            // A new message, or a count past the next quarter: one line.
            let q = (done * 4).checked_div(total).unwrap_or(0);
            if *last != text || q > *quarter {
                eprintln!("banger: {counted}");
                *last = text;
                *quarter = q;
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How long ago unix time `unix` was, e.g. `5m`.
pub fn age(unix: i64) -> String {
    let now = banger_proto::host::now_unix();
    let secs = (now - unix).max(0) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Human-readable byte size, e.g. `8.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(8 * 1024 * 1024), "8.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
