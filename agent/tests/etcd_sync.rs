//! The agent's etcd loop against a real etcd, without privileges: an [`Agent`] writing a
//! [`MemoryTable`], watched through its status file. It publishes itself under a lease (gone
//! at once on shutdown), follows puts and deletes of other hosts, drops a host whose lease
//! expires, reports hostile values, and keeps its table and catches up across an etcd restart;
//! its lease outlives a table write that blocks its loop for longer than the TTL.

mod support;

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use lwtun_agent::agent::{Agent, AgentConfig, Control};
use lwtun_agent::dataplane::MemoryTable;
use lwtun_agent::fleet::Fleet;
use lwtun_agent::layout::Layout;
use lwtun_agent::record::HostRecord;
use lwtun_agent::status::Status;
use support::{runtime, Etcd, TempDir};

fn wait(path: &std::path::Path, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = Status::read(path).ok();
        if let Some(s) = s.as_ref().filter(|s| done(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached, status {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remotes(s: &Status) -> Vec<(String, String)> {
    s.peers
        .iter()
        .map(|p| (p.prefix.clone(), p.remote.clone()))
        .collect()
}

#[test]
fn agent_follows_etcd_through_leases_bad_values_and_a_restart() {
    if !support::etcd_installed("agent_follows_etcd_through_leases_bad_values_and_a_restart") {
        return;
    }
    let dir = TempDir::new("sync");
    let mut etcd = Etcd::start(&dir.0);
    let status = dir.0.join("a.status");
    let layout = Layout::new("/lwtun/fleet", "sync").unwrap();
    let record = HostRecord::decode(
        br#"{"endpoint":"10.99.0.1","encap":"udp","udp_port":6081,"prefixes":["10.200.1.0/24"]}"#,
    )
    .unwrap();
    let config = AgentConfig {
        etcd: vec![etcd.url()],
        host: "a".into(),
        record: record.clone(),
        lease_ttl: 2,
        status: Some(status.clone()),
    };
    let fleet = Fleet::new(layout.clone(), "a", record.endpoint);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let agent = std::thread::spawn(move || {
        let mut agent = Agent::new(config, fleet, MemoryTable::default());
        runtime()
            .block_on(agent.run(rx))
            .map(|()| agent.sink().clone())
    });

    let rt = runtime();
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();
    let key = |h: &str| layout.host_key(h).unwrap();
    wait(&status, "connected", |s| s.connected);
    // its own record is in etcd, under a lease
    let got = rt.block_on(client.get(key("a"), None)).unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(HostRecord::decode(kv.value()).unwrap(), record);
    assert_ne!(kv.lease(), 0, "own record without a lease");

    // another host comes, changes, and a third one's lease expires
    let b = r#"{"endpoint":"10.99.0.2","encap":"gre","gre_key":5,"prefixes":["10.200.2.0/24"]}"#;
    rt.block_on(client.put(key("b"), b, None)).unwrap();
    let s = wait(&status, "b added", |s| s.peers.len() == 1);
    assert_eq!(s.peers[0].encap, "gre:5");
    assert_eq!(s.decap_peers, vec!["10.99.0.2".to_string()]);
    let b2 = b.replace("10.99.0.2", "10.99.0.3");
    rt.block_on(client.put(key("b"), b2, None)).unwrap();
    wait(&status, "b moved", |s| {
        remotes(s) == [("10.200.2.0/24".into(), "10.99.0.3".into())]
            && s.decap_peers == ["10.99.0.3"]
    });
    let lease = rt.block_on(client.lease_grant(2, None)).unwrap().id();
    let c = r#"{"endpoint":"10.99.0.4","encap":"ipip","prefixes":["10.200.4.0/24"]}"#;
    rt.block_on(client.put(key("c"), c, Some(PutOptions::new().with_lease(lease))))
        .unwrap();
    wait(&status, "c added", |s| s.peers.len() == 2);
    let t = Instant::now();
    wait(&status, "c expired", |s| s.peers.len() == 1);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "c left before its lease expired"
    );

    // a hostile value is refused and reported; the table keeps b only
    rt.block_on(client.put(key("d"), "{\"endpoint\":\"::\"", None))
        .unwrap();
    rt.block_on(client.put(
        key("e"),
        r#"{"endpoint":"10.99.0.5","encap":"ipip","prefixes":["10.200.1.0/24"]}"#,
        None,
    ))
    .unwrap();
    let s = wait(&status, "d refused", |s| s.rejected.contains_key("d"));
    assert_eq!(s.peers.len(), 1, "{s:?}");
    assert!(
        !s.peers.iter().any(|p| p.prefix == "10.200.1.0/24"),
        "own prefix became a peer: {s:?}"
    );

    // etcd restarts: the table stays, the watch resumes, the lease survives
    let before = Status::read(&status).unwrap();
    etcd.kill();
    let s = wait(&status, "disconnected", |s| !s.connected);
    assert_eq!(
        remotes(&s),
        remotes(&before),
        "table changed while etcd was away"
    );
    etcd.restart();
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();
    rt.block_on(client.delete(key("b"), None)).unwrap();
    let s = wait(&status, "b deleted after the restart", |s| {
        s.connected && s.peers.is_empty()
    });
    assert!(s.reconnects >= 1);
    std::thread::sleep(Duration::from_secs(3));
    let got = rt.block_on(client.get(key("a"), None)).unwrap();
    assert_eq!(got.kvs().len(), 1, "own record lost across the restart");

    // shutdown revokes the lease: the record goes at once
    rt.block_on(tx.send(Control::Shutdown)).unwrap();
    let table = agent.join().unwrap().unwrap();
    assert!(table.peers.is_empty());
    let got = rt.block_on(client.get(key("a"), None)).unwrap();
    assert!(got.kvs().is_empty(), "own record left after shutdown");
}

/// A fleet whose records add up to more than gRPC's default 4 MiB answer: four hosts of
/// 60 000 prefixes each (about 1.2 MB per record, under etcd's 1.5 MiB request limit), put
/// before the agent starts, so its first Get carries them all.
#[test]
fn a_fleet_larger_than_the_default_grpc_message_syncs_in_one_get() {
    if !support::etcd_installed("a_fleet_larger_than_the_default_grpc_message_syncs_in_one_get") {
        return;
    }
    let dir = TempDir::new("large");
    let etcd = Etcd::start(&dir.0);
    let layout = Layout::new("/lwtun/fleet", "large").unwrap();
    let rt = runtime();
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();
    let mut bytes = 0;
    for h in 0..4u32 {
        let prefixes: Vec<String> = (0..60_000u32)
            .map(|k| format!("\"10.{}.{}.{}/32\"", 100 + h, k / 256, k % 256))
            .collect();
        let value = format!(
            r#"{{"endpoint":"10.99.1.{}","encap":"ipip","prefixes":[{}]}}"#,
            h + 1,
            prefixes.join(",")
        );
        bytes += value.len();
        rt.block_on(client.put(layout.host_key(&format!("h{h}")).unwrap(), value, None))
            .unwrap();
    }
    assert!(bytes > 4 << 20, "{bytes} bytes");
    let status = dir.0.join("a.status");
    let record =
        HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":[]}"#).unwrap();
    let config = AgentConfig {
        etcd: vec![etcd.url()],
        host: "a".into(),
        record: record.clone(),
        lease_ttl: 5,
        status: Some(status.clone()),
    };
    let fleet = Fleet::new(layout, "a", record.endpoint);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let agent = std::thread::spawn(move || {
        let mut agent = Agent::new(config, fleet, MemoryTable::default());
        runtime()
            .block_on(agent.run(rx))
            .map(|()| agent.sink().clone())
    });
    let s = wait(&status, "240k peers", |s| {
        s.peers.len() == 240_000 || s.reconnects > 0
    });
    assert_eq!(s.reconnects, 0, "{:?}", s.last_error);
    rt.block_on(tx.send(Control::Shutdown)).unwrap();
    let table = agent.join().unwrap().unwrap();
    assert_eq!(table.peers.len(), 240_000);
    assert_eq!(table.batches, 1, "the initial sync is one batch");
}

/// A table whose first write of a peer blocks the agent's loop for `stall`, as a large initial
/// sync or a host short of CPU does.
struct SlowTable {
    table: MemoryTable,
    stall: Option<Duration>,
}

impl lwtun_agent::dataplane::PeerSink for SlowTable {
    fn current(&self) -> lwtun_agent::fleet::PeerMap {
        self.table.current()
    }

    fn apply(&mut self, diff: &lwtun_agent::fleet::Diff) -> Result<(), lwtun_agent::AgentError> {
        if !diff.insert.is_empty() {
            if let Some(stall) = self.stall.take() {
                // a blocking call, as the kernel's table writes are: the runtime cannot run
                // anything else on this thread meanwhile
                std::thread::sleep(stall);
            }
        }
        self.table.apply(diff)
    }

    fn set_remote_endpoints(
        &mut self,
        endpoints: &std::collections::BTreeSet<std::net::IpAddr>,
    ) -> Result<(), lwtun_agent::AgentError> {
        self.table.set_remote_endpoints(endpoints)
    }

    fn remote_endpoints(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.table.remote_endpoints()
    }
}

#[test]
fn the_lease_outlives_a_table_write_longer_than_its_ttl() {
    if !support::etcd_installed("the_lease_outlives_a_table_write_longer_than_its_ttl") {
        return;
    }
    let dir = TempDir::new("slow");
    let etcd = Etcd::start(&dir.0);
    let status = dir.0.join("a.status");
    let layout = Layout::new("/lwtun/fleet", "slow").unwrap();
    let record = HostRecord::decode(
        br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":["10.200.1.0/24"]}"#,
    )
    .unwrap();
    // the write stalls for 2.5 TTLs
    let (ttl, stall) = (2, Duration::from_secs(5));
    let config = AgentConfig {
        etcd: vec![etcd.url()],
        host: "a".into(),
        record: record.clone(),
        lease_ttl: ttl,
        status: Some(status.clone()),
    };
    let fleet = Fleet::new(layout.clone(), "a", record.endpoint);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let agent = std::thread::spawn(move || {
        let sink = SlowTable {
            table: MemoryTable::default(),
            stall: Some(stall),
        };
        let mut agent = Agent::new(config, fleet, sink);
        runtime().block_on(agent.run(rx))
    });
    let rt = runtime();
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();
    let key = |h: &str| layout.host_key(h).unwrap();
    wait(&status, "connected", |s| s.connected);
    let lease = rt.block_on(client.get(key("a"), None)).unwrap().kvs()[0].lease();

    // b arrives: a's loop is stuck in the table write for `stall`
    let b = r#"{"endpoint":"10.99.0.2","encap":"ipip","prefixes":["10.200.2.0/24"]}"#;
    rt.block_on(client.put(key("b"), b, None)).unwrap();
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < stall + Duration::from_millis(500) {
        let got = rt.block_on(client.get(key("a"), None)).unwrap();
        assert_eq!(
            got.kvs().first().map(|kv| kv.lease()),
            Some(lease),
            "a's record (lease {lease:x}) gone {:?} into a {stall:?} stall of its loop, TTL {ttl} s",
            started.elapsed()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = wait(&status, "b's peer written", |s| s.peers.len() == 1);
    assert_eq!(s.reconnects, 0, "the session was lost: {s:?}");
    assert!(s.connected);
    assert!(checks > 30, "a's record checked {checks} times only");
    tx.blocking_send(Control::Shutdown).unwrap();
    agent.join().unwrap().unwrap();
}
