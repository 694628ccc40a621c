//! The fleet agent deployed as an operator deploys it, end to end: etcd serving TLS only with
//! client certificates (`--client-cert-auth`, certificates made here with rcgen) and its
//! authentication on (a user whose role covers this fleet's keys only); two hosts (namespaces
//! on a bridged underlay), each running `lwtun-agent --config FILE` from a TOML file that says
//! everything (etcd's https URL, CA, client certificate and key, user and password file,
//! fleet, host, endpoint, encap, prefixes, steer, sources, device, netns, pin, status, metrics
//! address, reconcile interval, log level). Then what the operator sees:
//!
//! - `lwtun-agent check-config --config FILE` accepts each file (exit 0) and prints the
//!   effective settings, without the password;
//! - both agents ready (/readyz 200, the status file has the other host's peer);
//! - the hosts ping each other's inner addresses through the tunnel, and /metrics counts the
//!   echo requests and replies on the per-peer counters, exactly;
//! - the steering route of one agent deleted with `ip route del` is back (time printed),
//!   counted in `lwtun_agent_repairs_total{what="route_restored"}`, and the ping works again.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;
#[path = "support/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::tls::{pki, Pki, TlsEtcd, AGENT_PASSWORD, AGENT_USER};
use world::{endpoint, figure, ms, prefix, service};

const FLEET: &str = "prod";
const STEER: &str = "10.192.0.0/10";
/// Echo requests per direction counted on the peers.
const N: u32 = 5;
/// Bytes of one echo request's inner packet (IPv4 20 + ICMP 8 + 56 data).
const ECHO_BYTES: u64 = 84;

/// etcd with TLS and client certificates, and the certificates it trusts.
struct Store {
    etcd: TlsEtcd,
    pki: Pki,
}

type World = world::World<Store>;

/// Host `i`'s config file: every setting the agent runs with.
fn config_file(w: &World, i: usize, password: &Path) -> PathBuf {
    let pki = &w.etcd.pki;
    let text = format!(
        r#"# lwtun-agent on host h{i}
etcd = ["{url}"]
etcd_ca = "{ca}"
etcd_cert = "{cert}"
etcd_key = "{key}"
etcd_user = "{AGENT_USER}"
etcd_password_file = "{password}"
fleet = "{FLEET}"
host = "h{i}"
endpoint = "{endpoint}"
encap = "udp"
udp_port = 6081
prefixes = ["{prefix}"]
steer = ["{STEER}"]
sources = ["{service}"]
device = "ul0"
netns = "{netns}"
lease_ttl = 3
pin = "{pin}"
status = "{status}"
metrics_address = "127.0.0.1:{metrics}"
reconcile_interval = "300ms"
log_level = "info"
"#,
        url = w.etcd.etcd.url(),
        ca = pki.ca.display(),
        cert = pki.client.0.display(),
        key = pki.client.1.display(),
        password = password.display(),
        endpoint = endpoint(i),
        prefix = prefix(i),
        service = service(i),
        netns = w.hosts[i].name(),
        pin = w.pin(i).display(),
        status = w.status_path(i).display(),
        metrics = w.metrics[i],
    );
    let file = w.dir.0.join(format!("h{i}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// The per-peer counter `name` on host `i` for host `j`'s prefix.
fn peer_series(name: &str, j: usize) -> String {
    format!("{name}{{prefix=\"{}\",host=\"h{j}\"}}", prefix(j))
}

#[test]
fn agents_from_config_files_over_tls_and_auth_serve_metrics_and_put_back_a_deleted_route() {
    let test =
        "agents_from_config_files_over_tls_and_auth_serve_metrics_and_put_back_a_deleted_route";
    if !common::privileged(test) || !support::etcd_installed(test) {
        return;
    }
    let mut w = World::new("prod", 2, |dir| {
        let pki = pki(dir);
        let etcd = TlsEtcd::start(dir, &pki);
        // the agents' user may read and write this fleet's keys, nothing else
        etcd.enable_auth(&pki, &format!("/lwtun/fleet/{FLEET}/"));
        Store { etcd, pki }
    });
    let password = w.dir.0.join("etcd-password");
    std::fs::write(&password, format!("{AGENT_PASSWORD}\n")).unwrap();
    let files: Vec<PathBuf> = (0..2).map(|i| config_file(&w, i, &password)).collect();

    // --- check-config accepts the files it is about to run with ---
    for file in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
            .arg("check-config")
            .arg("--config")
            .arg(file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check-config {}: {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for key in [
            format!("etcd_user = \"{AGENT_USER}\""),
            w.etcd.etcd.url(),
            "reconcile_interval".to_string(),
            "metrics_address".to_string(),
        ] {
            assert!(stdout.contains(&key), "check-config shows {key}: {stdout}");
        }
        assert!(
            !stdout.contains(AGENT_PASSWORD),
            "check-config printed the password: {stdout}"
        );
    }

    // --- the agents, from their files only ---
    let started = Instant::now();
    for file in &files {
        w.spawn([
            std::ffi::OsString::from("--config"),
            file.clone().into_os_string(),
        ]);
    }
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = w.try_get(i, "/readyz").is_some_and(|(code, _)| code == 200);
            let peered = w
                .status(i)
                .is_some_and(|s| s.connected && s.peers.len() == 1 && s.decap_peers.len() == 1);
            if ready && peered {
                break;
            }
            if let Some(Ok(Some(st))) = w.agents.get_mut(i).map(|a| a.0.try_wait()) {
                panic!("h{i} exited ({st}):\n{}", w.logs());
            }
            assert!(
                Instant::now() < deadline,
                "h{i} not ready with one peer after 20 s: readyz {:?}, status {:?}\n{}",
                w.try_get(i, "/readyz"),
                w.status(i),
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    figure(format!(
        "two agents from config files over mutual TLS + auth: both ready (readyz 200, peer \
         in the status) {} after start",
        ms(started.elapsed())
    ));
    assert_eq!(w.get(0, "/healthz").0, 200);
    assert_eq!(w.metric(0, "lwtun_agent_etcd_connected"), 1.0);
    let shown = common::ip(&w.hosts[0], &["route", "show", STEER]);
    assert!(shown.contains("encap bpf"), "h0's steering route: {shown}");
    w.ping(0, 1);
    w.ping(1, 0);

    // --- the per-peer counters count the pings, exactly ---
    let requests = peer_series("lwtun_agent_peer_packets_total", 1);
    let request_bytes = peer_series("lwtun_agent_peer_bytes_total", 1);
    let replies = peer_series("lwtun_agent_peer_packets_total", 0);
    let before = (
        w.metric(0, &requests),
        w.metric(0, &request_bytes),
        w.metric(1, &replies),
    );
    assert!(
        before.0 >= 1.0,
        "h0's first ping to h1 not counted on {requests}"
    );
    let p = common::ping(&w.hosts[0], service(1).parse().unwrap(), N);
    assert_eq!(p.received, N, "{}\n{}", p.output, w.logs());
    let after = (
        w.metric(0, &requests),
        w.metric(0, &request_bytes),
        w.metric(1, &replies),
    );
    assert_eq!(after.0 - before.0, f64::from(N), "h0: {requests}");
    assert_eq!(
        after.1 - before.1,
        (u64::from(N) * ECHO_BYTES) as f64,
        "h0: {request_bytes}"
    );
    assert_eq!(
        after.2 - before.2,
        f64::from(N),
        "h1: {replies} (the replies)"
    );
    assert_eq!(
        w.metric(0, &peer_series("lwtun_agent_peer_errors_total", 1)),
        0.0
    );

    // --- h0's steering route deleted from outside: back, counted, and it carries traffic ---
    let restored = "lwtun_agent_repairs_total{what=\"route_restored\"}";
    assert_eq!(w.metric(0, restored), 0.0, "a repair before any damage");
    common::ip(&w.hosts[0], &["route", "del", STEER]);
    let took = world::time_until("route back", Duration::from_secs(5), || {
        common::try_ip(&w.hosts[0], &["route", "show", STEER])
            .map(|s| s.contains("encap bpf"))
            .unwrap_or(false)
    });
    figure(format!(
        "h0's route {STEER} deleted with `ip route del`, back in `ip route show` after {}",
        ms(took)
    ));
    world::time_until("the restore counted", Duration::from_secs(5), || {
        w.metric(0, restored) == 1.0
    });
    let log = std::fs::read_to_string(w.log_path(0)).unwrap();
    let logged = log
        .lines()
        .find(|l| l.contains("repaired: route") && l.contains(STEER))
        .unwrap_or_else(|| panic!("no repair line in h0's log:\n{log}"));
    figure(format!("h0 logged: {logged}"));
    w.ping(0, 1);
    // past the tokens' 1 s TTL (TlsEtcd): still connected, nothing reconnected
    for i in 0..2 {
        let s = w.status(i).unwrap();
        assert!(s.connected && s.reconnects == 0, "h{i}: {s:?}");
    }
}
