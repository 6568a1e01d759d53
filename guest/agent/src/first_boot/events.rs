//! Where first boot says what it does: [`FirstBootEvent`] lines for the
//! host (`@@banger-first-boot@@ {json}`) and human `banger-first-boot: ...`
//! lines, both on the console. As PID 1 stdout is the console; as a oneshot
//! unit `/dev/console` when it is writable (so the host sees the events on
//! the serial line), else stderr (the journal).

use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;

use banger_proto::guest::FirstBootEvent;

/// A line sink shared by the steps (and the threads reading a package
/// manager's output).
pub struct Console {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Console {
    /// Stdout: PID 1's console.
    pub fn stdout() -> Console {
        Console::new(Box::new(std::io::stdout()))
    }

    /// Stderr (tests, and oneshot runs without a writable console).
    pub fn stderr() -> Console {
        Console::new(Box::new(std::io::stderr()))
    }

    /// `/dev/console` if it opens for writing, else stderr.
    pub fn console_or_stderr() -> Console {
        match std::fs::OpenOptions::new().write(true).open("/dev/console") {
            Ok(f) => Console::new(Box::new(f)),
            Err(_) => Console::stderr(),
        }
    }

    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            out: Mutex::new(out),
        }
    }

    fn line(&self, line: &str) {
        // A poisoned lock only means another thread panicked mid-line: keep
        // printing, the console is all we have.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }

    /// `banger-first-boot: {msg}`.
    pub fn log(&self, msg: impl Display) {
        self.line(&format!("banger-first-boot: {msg}"));
    }

    /// `banger-first-boot: warning: {msg}`.
    pub fn warn(&self, msg: impl Display) {
        self.line(&format!("banger-first-boot: warning: {msg}"));
    }

    /// One event line for the host.
    pub fn event(&self, event: &FirstBootEvent) {
        self.line(&event.to_console_line());
    }
}
