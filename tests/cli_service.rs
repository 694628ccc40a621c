//! `lwtun service` end to end: the real binary sets a service (B's address as the VIP, B as
//! its backend), routes it, and pings through it; shows it as JSON; drains and restores the
//! backend (pings stop and come back); refuses a folder a live process owns; unloads it
//! (route and pins gone).
//!
//! ```text
//!  A (10.30.0.1 on lo)  to1 ══ veth ══ to0  B (10.20.0.2 on lo, decap at tc ingress of to0)
//!     10.77.0.1                              10.77.0.2
//!  route 10.20.0.2/32 dev to1 src 10.30.0.1 encap bpf xmit service_xmit (`lwtun service route`)
//! ```

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{fails, json, ok, ping_b, setup};
use lwtun::service::Services;

#[test]
fn set_route_ping_show_drain_restore_unload() {
    require!();
    let (net, _decap) = setup();
    let dir = common::PinDir::new("cli-svc");
    let (a, p) = (net.ns(0).name().to_string(), dir.arg().to_string());
    let set = json(&[
        "-n",
        &a,
        "service",
        "set",
        "--pin",
        &p,
        "10.20.0.2/32",
        "backend",
        "10.77.0.2",
        "local",
        "10.77.0.1",
        "encap",
        "ipip",
        "weight",
        "2",
    ]);
    assert_eq!(set["services"][0]["prefix"], "10.20.0.2/32", "{set}");
    assert_eq!(set["services"][0]["backends"][0]["weight"], 2, "{set}");
    ok(&[
        "-n",
        &a,
        "service",
        "route",
        "--pin",
        &p,
        "10.20.0.2/32",
        "--dev",
        "to1",
        "--src",
        "10.30.0.1",
    ]);
    let routes = common::ip(net.ns(0), &["route", "show", "10.20.0.2"]);
    assert!(routes.contains("encap bpf"), "{routes}");
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{ping:?}");

    let show = json(&["service", "show", "--pin", &p]);
    let b = &show["services"][0]["backends"][0];
    assert_eq!(
        (b["remote"].as_str(), b["state"].as_str()),
        (Some("10.77.0.2"), Some("up"))
    );
    assert!(b["packets"].as_u64().unwrap() >= 3, "{show}");
    let text = ok(&["service", "show", "--pin", &p]);
    assert!(
        text.contains("10.20.0.2/32") && text.contains("10.77.0.2"),
        "{text}"
    );

    // A live owner: the command changes nothing under it and says who it is.
    let mut held = Services::builder().pin(&dir.0).load().unwrap();
    assert!(held.adopted());
    let err = fails(&["service", "drain", "--pin", &p, "10.20.0.2/32", "10.77.0.2"]);
    assert!(err.contains("live process"), "{err}");
    let show = json(&["service", "show", "--pin", &p]);
    assert_eq!(
        show["services"][0]["backends"][0]["state"], "up",
        "show reads while owned"
    );
    held.keep_pinned();
    drop(held);

    // Drained: its only backend out of service, the pings are dropped (and counted).
    let drained = json(&["service", "drain", "--pin", &p, "10.20.0.2/32", "10.77.0.2"]);
    assert_eq!(drained["services"][0]["backends"][0]["state"], "drained");
    let ping = common::ping_with(
        net.ns(0),
        "10.20.0.2".parse().unwrap(),
        2,
        &["-I", "10.30.0.1", "-i", "0.1", "-W", "1"],
    );
    assert_eq!(ping.received, 0, "{ping:?}");
    let show = json(&["service", "show", "--pin", &p]);
    assert!(
        show["counters"]["no_backend"].as_u64().unwrap() >= 2,
        "{show}"
    );
    ok(&[
        "service",
        "restore",
        "--pin",
        &p,
        "10.20.0.2/32",
        "10.77.0.2",
    ]);
    assert_eq!(ping_b(&net, 2).received, 2);

    // Bad words: the usage, and nothing changed.
    let err = fails(&[
        "service",
        "set",
        "--pin",
        &p,
        "10.20.0.2/32",
        "backend",
        "10.77.0.2",
        "encap",
        "ipip",
    ]);
    assert!(err.contains("local"), "{err}");
    let show = json(&["service", "show", "--pin", &p]);
    assert_eq!(show["services"][0]["backends"][0]["weight"], 2, "{show}");

    // Unloaded: the route into the services and the pins go.
    let gone = json(&["-n", &a, "service", "unload", "--pin", &p]);
    assert_eq!(gone["routes_removed"], 1, "{gone}");
    assert!(!dir.0.exists(), "the folder is removed");
    let routes = common::ip(net.ns(0), &["route", "show", "10.20.0.2"]);
    assert!(routes.is_empty(), "{routes}");
}
