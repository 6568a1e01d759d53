//! Following first boot from the host: the guest prints
//! [`FirstBootEvent`] lines on its serial console (the contract is
//! `banger_proto::guest`), the hypervisor writes the console to the VM's
//! `console.log`, and [`ConsoleFollower`] reads the new lines as they land.
//! [`GuestFailure`] is a `Failed` event as the user reads it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use banger_proto::guest::{FailureCause, FirstBootEvent, MAX_EVENT_LINE};

/// Reads a console log incrementally and yields the first-boot events in it.
#[derive(Debug)]
pub struct ConsoleFollower {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl ConsoleFollower {
    pub fn new(path: &Path) -> ConsoleFollower {
        ConsoleFollower {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The events in what was appended since the last call. A log that
    /// shrank (a new boot truncated it) is read again from its start.
    pub fn poll(&mut self) -> Vec<FirstBootEvent> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut fresh = Vec::new();
        // Bounded per call: a guest flooding its console cannot make us
        // buffer without limit; the rest is read on the next poll.
        let read = file
            .take(4 << 20)
            .read_to_end(&mut fresh)
            .unwrap_or_default();
        self.offset += read as u64;
        self.partial.extend_from_slice(&fresh[..read]);
        let mut events = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            if let Some(e) = FirstBootEvent::parse_console_line(&String::from_utf8_lossy(&line)) {
                events.push(e);
            }
        }
        if self.partial.len() > MAX_EVENT_LINE {
            // No event is this long: drop the runaway line.
            self.partial.clear();
        }
        events
    }
}

/// A first boot that reported failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure {
    pub step: String,
    pub cause: FailureCause,
    pub message: String,
    pub excerpt: Vec<String>,
}

impl GuestFailure {
    /// The failure in a `Failed` event, if `event` is one.
    pub fn from_event(event: &FirstBootEvent) -> Option<GuestFailure> {
        match event {
            FirstBootEvent::Failed {
                step,
                cause,
                message,
                excerpt,
            } => Some(GuestFailure {
                step: clean(step, 200),
                cause: *cause,
                message: clean(message, 1000),
                excerpt: excerpt.iter().take(12).map(|l| clean(l, 300)).collect(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed ({}): {}\n{}",
            self.step,
            cause_name(self.cause),
            self.message,
            self.cause.hint()
        )?;
        if !self.excerpt.is_empty() {
            f.write_str("\n--- from the guest ---")?;
            for line in &self.excerpt {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

/// The cause as a user reads it.
pub fn cause_name(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::Dns => "DNS: the mirror's name does not resolve",
        FailureCause::Network => "network: the mirror cannot be reached",
        FailureCause::Mirror => "the mirror answered with errors",
        FailureCause::MissingPackage => "a package is missing",
        FailureCause::DiskFull => "the disk is full",
        FailureCause::NoPackageManager => "no working package manager",
        FailureCause::UnknownDistribution => "unknown distribution",
        FailureCause::WrongArchitecture => "wrong CPU architecture",
        FailureCause::Other => "see the console log",
    }
}

/// Guest text made safe to print: control characters (escape sequences,
/// carriage returns of progress bars) dropped, length capped.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut kept = 0;
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An ANSI sequence: ESC [ params final-byte, or ESC + one char.
            if chars.next_if_eq(&'[').is_some() {
                for p in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&p) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if c.is_control() && c != '\t' {
            continue;
        }
        if kept == max {
            out.push('…');
            break;
        }
        out.push(c);
        kept += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_as_they_are_appended_even_split_mid_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut f = ConsoleFollower::new(&log);
        assert!(f.poll().is_empty(), "no file yet");
        let started = FirstBootEvent::Started {
            version: "1".into(),
        }
        .to_console_line();
        let failed = FirstBootEvent::Failed {
            step: "apt-get update".into(),
            cause: FailureCause::Dns,
            message: "Temporary failure resolving 'deb.debian.org'\x1b[31m".into(),
            excerpt: vec!["W: x\r".into()],
        }
        .to_console_line();
        let (a, b) = failed.split_at(20);
        std::fs::write(&log, format!("[ 0.1] Linux\n{started}\r\n{a}")).unwrap();
        assert_eq!(f.poll().len(), 1);
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        write!(file, "{b}\r\nlogin:").unwrap();
        let events = f.poll();
        assert_eq!(events.len(), 1);
        let failure = GuestFailure::from_event(&events[0]).unwrap();
        let text = failure.to_string();
        assert!(text.contains("apt-get update failed (DNS"), "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        // A new boot truncates the log: read again from the start.
        std::fs::write(&log, format!("{started}\n")).unwrap();
        assert_eq!(f.poll().len(), 1);
    }
}
