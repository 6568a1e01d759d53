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
