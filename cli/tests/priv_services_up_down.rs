//! `banger up` / `status` / `down` with the real service binaries in a temp
//! home, inside a private network namespace (netd owns a bridge there), and
//! each socket checked through server reflection alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use banger_test_support::netns::in_new_netns;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICES: [(&str, &str); 4] = [
    ("kernelcat", "banger.kernelcat.v1.KernelCat"),
    ("imagestore", "banger.imagestore.v1.ImageStore"),
    ("netd", "banger.netd.v1.Netd"),
    ("vmm", "banger.vmm.v1.Vmm"),
];

fn banger() -> PathBuf {
    banger_test_support::cli::bin_dir(env!("CARGO_BIN_EXE_banger"), false).join("banger")
}

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(banger())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BANGER_HOME")
        .output()
        .expect("run banger")
}

fn ok(home: &Path, args: &[&str]) -> Output {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "banger {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn status_json(home: &Path) -> (bool, serde_json::Value) {
    let out = run(home, &["--json", "status"]);
    let value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    (out.status.success(), value)
}

async fn reflected_services(socket: &Path) -> Vec<String> {
    let channel = banger_proto::rpc::connect(socket).await.expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = stream.message().await.unwrap().expect("a response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[test]
fn up_status_down_in_a_temp_home() {
    banger_test_support::gate!(Priv, ROOT);
    in_new_netns(|| {
        let home = tempfile::tempdir().unwrap();
        let home = home.path();

        let (all_up, _) = status_json(home);
        assert!(!all_up, "status must fail while nothing runs");

        let doctor = |home: &Path| -> serde_json::Value {
            let out = run(home, &["--json", "doctor"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
            assert_eq!(v["ok"].as_bool(), Some(out.status.success()), "{v:#}");
            v
        };
        let service_rows = |v: &serde_json::Value| -> Vec<String> {
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["check"].as_str().unwrap().starts_with("service "))
                .map(|c| c["severity"].as_str().unwrap().to_owned())
                .collect()
        };
        let before_up = doctor(home);
        assert_eq!(before_up["ok"], false, "doctor must fail with no services");
        assert_eq!(service_rows(&before_up), ["fail"; 4]);

        ok(home, &["up"]);
        let (all_up, statuses) = status_json(home);
        assert!(all_up, "status after up: {statuses:#}");
        let after_up = doctor(home);
        assert_eq!(
            service_rows(&after_up),
            ["ok"; 4],
            "doctor sees the services"
        );
        // doctor renders the vmm's own choice of backend (GetHypervisors):
        // `auto` by default, and never Firecracker where KVM cannot run guests.
        let hv = after_up["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "hypervisor")
            .expect("a hypervisor row from the vmm");
        let detail = hv["detail"].as_str().unwrap();
        assert!(detail.contains("(auto: "), "{detail}");
        if !banger_proto::host::probe_kvm().runs_guests() {
            assert!(
                detail.starts_with("vmm creates VMs on qemu (auto: not Firecracker because "),
                "{detail}"
            );
        }
        let statuses = statuses.as_array().unwrap();
        assert_eq!(statuses.len(), 4);
        for s in statuses {
            assert_eq!(s["health"], "serving", "{s}");
            assert_eq!(s["version"], banger_proto::VERSION, "{s}");
            assert!(s["pid"].as_u64().is_some(), "{s}");
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (name, api) in SERVICES {
            let socket = home.join("run").join(format!("{name}.sock"));
            let services = rt.block_on(reflected_services(&socket));
            assert!(
                services.iter().any(|s| s == api),
                "{name}: {api} not in {services:?}"
            );
            assert!(
                services.iter().any(|s| s == "grpc.health.v1.Health"),
                "{services:?}"
            );
        }
        // Close our connections, as a well-behaved client does before `down`.
        drop(rt);

        // `up` again is harmless: same pids.
        let pids = |v: &serde_json::Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s["pid"].as_u64().unwrap())
                .collect()
        };
        let before = pids(&status_json(home).1);
        ok(home, &["up"]);
        assert_eq!(
            pids(&status_json(home).1),
            before,
            "second up restarted services"
        );

        // A crashed service leaves a stale socket and pid file; `up` recovers.
        let netd_pid = before[2] as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(netd_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        while std::fs::read_to_string(format!("/proc/{netd_pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            home.join("run/netd.sock").exists(),
            "SIGKILL leaves the socket behind"
        );
        let (all_up, _) = status_json(home);
        assert!(!all_up, "status must notice the dead netd");
        ok(home, &["up"]);
        let (all_up, statuses) = status_json(home);
        assert!(all_up, "after recovery: {statuses:#}");
        assert_ne!(pids(&statuses)[2], before[2], "netd was restarted");

        ok(home, &["down"]);
        for (name, _) in SERVICES {
            assert!(
                !home.join(format!("run/{name}.sock")).exists(),
                "{name} socket left"
            );
            assert!(
                !home.join(format!("run/{name}.pid")).exists(),
                "{name} pid file left"
            );
        }
        let (all_up, _) = status_json(home);
        assert!(!all_up);
        ok(home, &["down"]);
    });
}

/// One `banger status` is one trace: the CLI's root span is the parent of
/// every service's server span, across processes, received by a real OTLP
/// collector.
#[test]
fn one_command_is_one_trace_across_processes() {
    banger_test_support::gate!(Priv, ROOT);
    in_new_netns(|| {
        // Multi-threaded, so the receiver answers while this thread waits
        // for a command; its threads inherit this thread's namespace.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let collector = rt.block_on(banger_test_support::otlp::Collector::start());
        let home = tempfile::tempdir().unwrap();
        let home = home.path();
        let with_otel = |args: &[&str]| {
            let out = Command::new(banger())
                .arg("--home")
                .arg(home)
                .args(args)
                .env_remove("BANGER_HOME")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        with_otel(&["up"]);
        with_otel(&["status"]);
        // Services export in batches; give them a moment while the receiver runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let find = || {
            let spans = collector.spans();
            let root = spans
                .iter()
                .find(|s| s.service == "banger" && s.name == "banger status")
                .cloned();
            (spans, root)
        };
        let (mut spans, mut root) = find();
        while std::time::Instant::now() < deadline {
            let children = root.as_ref().map_or(0, |r| {
                spans
                    .iter()
                    .filter(|s| s.parent_span_id == r.span_id)
                    .count()
            });
            if children >= 8 {
                break;
            }
            rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(200)).await });
            (spans, root) = find();
        }
        let root = root.unwrap_or_else(|| {
            let names: Vec<_> = spans
                .iter()
                .map(|s| format!("{}: {}", s.service, s.name))
                .collect();
            panic!("no `banger status` root span among {names:#?}")
        });
        for (name, _) in SERVICES {
            let service = format!("banger-{name}");
            let children: Vec<_> = spans
                .iter()
                .filter(|s| s.service == service && s.parent_span_id == root.span_id)
                .collect();
            assert!(
                children.len() >= 2,
                "{service}: expected its Info and Health server spans under the CLI root, got {children:#?}"
            );
            for child in children {
                assert_eq!(
                    child.trace_id, root.trace_id,
                    "{service} joined another trace"
                );
            }
        }
        ok(home, &["down"]);
    });
}
