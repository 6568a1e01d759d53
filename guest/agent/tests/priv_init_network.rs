//! The init mode's network setup (rtnetlink, what IP_PNP would do) against
//! the real kernel, in a private network namespace with one end of a veth
//! pair standing in for the guest's eth0. Privileged tier.

use std::process::Command;

use banger_agent::init::config::IpConfig;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn configures_address_link_and_default_route() {
    banger_test_support::gate!(Priv, ROOT);
    banger_test_support::netns::in_new_netns(|| {
        ip(&["link", "set", "lo", "down"]);
        ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["link", "set", "peer0", "up"]);
        let config = IpConfig::parse("10.20.30.5::10.20.30.1:255.255.255.0::eth0:off")
            .unwrap()
            .unwrap();
        banger_agent::init::configure_network(&config).unwrap();
        let addr = ip(&["-4", "addr", "show", "eth0"]);
        assert!(
            addr.contains("inet 10.20.30.5/24 brd 10.20.30.255"),
            "{addr}"
        );
        assert!(ip(&["link", "show", "eth0"]).contains(",UP"));
        assert!(
            ip(&["link", "show", "lo"]).contains(",UP"),
            "lo is up again"
        );
        let routes = ip(&["-4", "route"]);
        assert!(
            routes.contains("default via 10.20.30.1 dev eth0"),
            "{routes}"
        );
        // Idempotent: a second run replaces instead of failing with EEXIST.
        banger_agent::init::configure_network(&config).unwrap();

        // A gateway off every subnet is the kernel's ENETUNREACH, named.
        let bad = IpConfig::parse("10.20.30.5::192.0.2.1:255.255.255.0::eth0:off")
            .unwrap()
            .unwrap();
        let err = banger_agent::init::configure_network(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default route via 192.0.2.1 dev eth0"),
            "{err}"
        );
        // A missing interface is waited for, then named.
        let missing = IpConfig::parse("10.20.30.5:::255.255.255.0::eth9:off")
            .unwrap()
            .unwrap();
        let err = banger_agent::init::configure_network(&missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("interface eth9 did not appear"), "{err}");
    });
}

#[test]
fn init_mode_refuses_to_run_outside_pid_1() {
    banger_test_support::gate!(Priv);
    let out = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .arg("init")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as PID 1 in an initramfs"), "{err}");
}
