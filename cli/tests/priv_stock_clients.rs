//! Stock gRPC clients of other languages against the four real services,
//! exactly as another tool would dial them: Python `grpcio` (C-core: sends
//! the socket path as `:authority`) and Node `@grpc/grpc-js`, default
//! options. Each lists services by reflection (v1 and v1alpha) and must see
//! exactly what that socket serves, checks `grpc.health.v1`, and calls every
//! unary and server-streaming method of the socket's API, which must answer
//! with a real status (`proto/tests/clients/stock_client.{py,js}`). Then
//! hostile HTTP/2 and gRPC input (`hostile_client.py`) must leave the same
//! process healthy.
//!
//! Privileged tier: `banger up` starts netd, which makes a bridge, so the
//! whole test runs in a network namespace of its own. The clients come from
//! `target/clients` (`scripts/setup.sh --deps` installs them); missing
//! clients fail the test loudly rather than skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

use banger_test_support::fixtures::repo_root as repo;
use banger_test_support::netns::in_new_netns;

const SERVICES: [(&str, &str); 4] = [
    ("kernelcat", "banger.kernelcat.v1.KernelCat"),
    ("imagestore", "banger.imagestore.v1.ImageStore"),
    ("netd", "banger.netd.v1.Netd"),
    ("vmm", "banger.vmm.v1.Vmm"),
];

/// Errors a client branches on: (service, method, field=value, code, ErrorInfo reason).
const REASONS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "banger.vmm.v1.Vmm",
        "GetVm",
        "name=no-such-vm",
        "NOT_FOUND",
        "VM_MISSING",
    ),
    (
        "banger.kernelcat.v1.KernelCat",
        "GetKernel",
        "name=no-such-kernel",
        "NOT_FOUND",
        "KERNEL_MISSING",
    ),
    (
        "banger.imagestore.v1.ImageStore",
        "GetImage",
        "name=no-such-image",
        "NOT_FOUND",
        "IMAGE_MISSING",
    ),
];

fn client_dir(what: &str) -> PathBuf {
    let dir = repo().join("target/clients").join(what);
    assert!(
        dir.join(".installed").is_file(),
        "{} is missing: run scripts/setup.sh --deps (installs the stock {what} gRPC client)",
        dir.display()
    );
    dir
}

fn banger(home: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BANGER_HOME")
        .output()
        .expect("run banger");
    assert!(
        out.status.success(),
        "banger {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one client; returns its JSON summary after checking it really
/// called methods and found nothing wrong.
fn run_client(mut cmd: Command, service: &str) -> serde_json::Value {
    let out = cmd.output().expect("start the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary for {service}:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "client failed against {service}: {summary:#}\n{stderr}"
    );
    let called = summary["called"].as_object().expect("called");
    assert!(!called.is_empty(), "no method called on {service}");
    assert_eq!(summary["failures"], serde_json::json!([]));
    summary
}

#[test]
fn python_and_node_clients_work_on_every_socket() {
    banger_test_support::gate!(Priv, ROOT);
    let python = client_dir("py").join("bin/python");
    let node_modules = client_dir("node").join("node_modules");
    let clients = repo().join("proto/tests/clients");
    in_new_netns(move || {
        let home = tempfile::tempdir().unwrap();
        let home = home.path();
        banger(home, &["up"]);
        for (name, service) in SERVICES {
            let socket = home.join("run").join(format!("{name}.sock"));
            let mut py = Command::new(&python);
            py.arg(clients.join("stock_client.py"))
                .arg(&socket)
                .arg(service);
            let reasons = REASONS.iter().filter(|r| r.0 == service);
            for (_, method, assignment, code, reason) in reasons.clone() {
                py.args(["--error", method, assignment, code, reason]);
            }
            let summary = run_client(py, service);
            for (_, method, _, _, reason) in reasons {
                assert_eq!(
                    summary["called"][format!("{method}:error")],
                    *reason,
                    "{service}: the ErrorInfo reason was checked"
                );
            }
            eprintln!("python {service}: {}", summary["called"]);

            let mut js = Command::new("node");
            js.arg(clients.join("stock_client.js"))
                .arg(repo().join("proto"))
                .arg(&socket)
                .arg(service)
                .env("NODE_PATH", &node_modules);
            let summary = run_client(js, service);
            eprintln!("node {service}: {}", summary["called"]);
        }
        // Hostile input on the privileged service's socket and on vmm's (one
        // runtime serves all four): each case ends without a hang, and the
        // same process stays healthy for everyone else.
        for name in ["netd", "vmm"] {
            let socket = home.join("run").join(format!("{name}.sock"));
            let service = SERVICES.iter().find(|s| s.0 == name).unwrap().1;
            let mut hostile = Command::new(&python);
            hostile
                .arg(clients.join("hostile_client.py"))
                .arg(&socket)
                .arg(service);
            let out = hostile.output().expect("run the hostile client");
            let stdout = String::from_utf8_lossy(&out.stdout);
            eprintln!("hostile {service}: {stdout}");
            assert!(
                out.status.success(),
                "hostile input hurt {service}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let summary: serde_json::Value =
                serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
            assert_eq!(summary["results"]["silent_connection"], "closed");
            assert_eq!(summary["results"]["huge_path"], "closed");
        }
        banger(home, &["down"]);
    });
}
