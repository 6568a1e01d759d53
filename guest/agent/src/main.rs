//! `banger-agent`: runs inside every VM and answers the host over AF_VSOCK.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("banger-agent: the guest agent is not implemented in this version of banger");
    ExitCode::FAILURE
}
