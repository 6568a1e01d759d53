//! How the CLI prints: tables for people, JSON with `--json`, and errors
//! that say what to do. Progress of long operations is `crate::progress`.
//!
//! The one `--json` rule: a command that prints a result builds a view
//! type (`#[derive(Serialize)]`, named `…View`, in the command's
//! `render.rs` or beside its handler) from the generated message, and both outputs come
//! from that one value: `--json` is [`print_json`] of it, the table or the
//! `key: value` lines are rendered from its fields, so the two cannot drift
//! and the JSON field names are the CLI's, not the wire's. No
//! `serde_json::json!` literals, no serde on generated types. A command
//! that only deletes prints [`Deleted`]. Progress, notes and warnings go to
//! stderr (progress is silent under `--json`); stdout carries only the
//! result.

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

/// `{"deleted": NAME}`: what `vm rm`, `kernel rm` and `image rm` print
/// under `--json`.
#[derive(Debug, serde::Serialize)]
pub struct Deleted {
    pub deleted: String,
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

/// Unix time `unix` as RFC 3339 (UTC, seconds), or `-` before 1970.
pub fn timestamp(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// The first 12 hex digits of a `sha256:…` digest; other text as it is.
pub fn short_digest(digest: &str) -> String {
    digest
        .split_once(':')
        .map(|(_, h)| h.chars().take(12).collect())
        .unwrap_or_else(|| digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, short_digest, timestamp};

    #[test]
    fn digests_and_times() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest(""), "");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(-1), "-");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(8 * 1024 * 1024), "8.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
