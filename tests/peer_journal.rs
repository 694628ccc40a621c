//! The peer journal, end to end with the real kernel and the real `lwtun` command:
//! - changes made by this process (a pinned `Tunnel`) and by `lwtun peer add|replace|del`
//!   (another process, its pid known) are read by a `PeerJournal` each once, in order, with the
//!   writer's pid and command name, and the reader's view ends equal to the kernel's tables;
//! - a reader that falls further behind than the ring holds gets `Resync` first, then a diff
//!   that turns its old view into exactly the tables the kernel holds; a write behind lwtun's
//!   back (a raw map update) is found by `verify`;
//! - a folder without a journal (as lwtun 0.2.0 pinned them) is adopted and edited; its first
//!   edit makes the journal, which a reader opened before reads from the first record; a resize
//!   keeps it; unloading removes the journal with the rest.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use lwtun::netlink::Netlink;
use lwtun::peer::{Encap, EncapPeer, PeerChange, PeerJournal, ResyncReason};
use lwtun::tunnel::{Tunnel, TunnelTables, PIN_LAYOUT};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn peer(remote: &str, encap: Encap) -> EncapPeer {
    EncapPeer::new(remote.parse().unwrap(), "192.0.2.1".parse().unwrap(), encap)
}

/// A change as (kind, prefix, new peer, writer pid) for comparing sequences.
fn summary(c: &PeerChange) -> (char, IpNetwork, Option<EncapPeer>, Option<u32>) {
    let pid = c.origin().map(|o| o.writer.pid);
    match c {
        PeerChange::Added { prefix, peer, .. } => ('+', *prefix, Some(*peer), pid),
        PeerChange::Removed { prefix, .. } => ('-', *prefix, None, pid),
        PeerChange::Changed { prefix, new, .. } => ('~', *prefix, Some(*new), pid),
        other => panic!("unexpected {other:?}"),
    }
}

/// Applies synthesized or journaled changes to a view.
fn apply(view: &mut BTreeMap<IpNetwork, EncapPeer>, changes: &[PeerChange]) {
    for c in changes {
        match c {
            PeerChange::Added { prefix, peer, .. } => {
                assert!(view.insert(*prefix, *peer).is_none(), "{c:?} twice");
            }
            PeerChange::Removed { prefix, peer, .. } => {
                assert_eq!(view.remove(prefix), Some(*peer), "{c:?}");
            }
            PeerChange::Changed {
                prefix, old, new, ..
            } => {
                assert_eq!(view.insert(*prefix, *new), Some(*old), "{c:?}");
            }
            _ => {}
        }
    }
}

#[test]
fn changes_from_two_processes_are_read_once_in_order_with_their_writers() {
    require!();
    let pin = common::PinDir::new("journal");
    let p = pin.arg();
    let me = std::process::id();
    let my_comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string();

    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    let mut journal = PeerJournal::open(&pin.0).unwrap();
    assert!(journal.poll().unwrap().is_empty(), "nothing changed yet");
    let gre = peer(
        "192.0.2.2",
        Encap::Gre {
            key: Some(7),
            checksum: false,
        },
    );
    let ipip = peer("192.0.2.3", Encap::Ipip);
    let v6 = peer("2001:db8::2", Encap::Ipip);
    let v6_local: IpAddr = "2001:db8::1".parse().unwrap();
    let v6 = EncapPeer {
        local: v6_local,
        ..v6
    };

    // This process: a single insert, a replace, a replace that changes nothing (not a change),
    // a batch, a removal.
    let peers = tunnel.peers_mut();
    peers.insert(net("10.1.0.0/16"), gre).unwrap();
    peers.replace(net("10.1.0.0/16"), ipip).unwrap();
    peers.replace(net("10.1.0.0/16"), ipip).unwrap();
    peers
        .insert_batch(&[
            (net("10.3.0.0/16"), gre),
            (net("fd00:1::/64"), v6),
            (net("10.2.0.0/16"), ipip),
        ])
        .unwrap();
    let first = journal.poll().unwrap();
    peers.remove(net("10.3.0.0/16")).unwrap();
    tunnel.keep_pinned();
    drop(tunnel);

    // Another process: the command, one edit per run, then a batch file of two.
    let words = ["remote", "192.0.2.4", "local", "192.0.2.1", "encap", "ipip"];
    let mut add = vec!["peer", "add", "--pin", p, "10.9.0.0/16"];
    add.extend(words);
    let cli_add = cli::lwtun_pid(&add);
    let mut replace = vec!["peer", "replace", "--pin", p, "10.1.0.0/16"];
    replace.extend([
        "remote",
        "192.0.2.5",
        "local",
        "192.0.2.1",
        "encap",
        "udp",
        "port",
        "5555",
    ]);
    let cli_replace = cli::lwtun_pid(&replace);
    let cli_del = cli::lwtun_pid(&["peer", "del", "--pin", p, "10.2.0.0/16"]);
    let file = cli::TempFile::new(
        "journal-batch",
        "10.11.0.0/16 remote 192.0.2.6 local 192.0.2.1 encap ipip\n\
         10.10.0.0/16 remote 192.0.2.6 local 192.0.2.1 encap ipip\n",
    );
    let cli_batch = cli::lwtun_pid(&["peer", "add", "--pin", p, "-b", file.arg()]);
    let second = journal.poll().unwrap();
    assert!(journal.poll().unwrap().is_empty(), "each change once");

    let udp = peer("192.0.2.5", Encap::Udp { port: 5555 });
    let cli_peer = |last: u8| peer(&format!("192.0.2.{last}"), Encap::Ipip);
    let expected = [
        ('+', net("10.1.0.0/16"), Some(gre), Some(me)),
        ('~', net("10.1.0.0/16"), Some(ipip), Some(me)),
        // A batch in table order: IPv4 by prefix, then IPv6.
        ('+', net("10.2.0.0/16"), Some(ipip), Some(me)),
        ('+', net("10.3.0.0/16"), Some(gre), Some(me)),
        ('+', net("fd00:1::/64"), Some(v6), Some(me)),
        ('-', net("10.3.0.0/16"), None, Some(me)),
        ('+', net("10.9.0.0/16"), Some(cli_peer(4)), Some(cli_add)),
        ('~', net("10.1.0.0/16"), Some(udp), Some(cli_replace)),
        ('-', net("10.2.0.0/16"), None, Some(cli_del)),
        ('+', net("10.10.0.0/16"), Some(cli_peer(6)), Some(cli_batch)),
        ('+', net("10.11.0.0/16"), Some(cli_peer(6)), Some(cli_batch)),
    ];
    let all: Vec<PeerChange> = first.iter().chain(&second).cloned().collect();
    let got: Vec<_> = all.iter().map(summary).collect();
    assert_eq!(got, expected);
    assert_eq!(
        first.len(),
        5,
        "the first poll read what was written before it"
    );

    // Sequence numbers run 1, 2, … without a gap; the writers name themselves; times ascend.
    let origins: Vec<_> = all.iter().map(|c| c.origin().unwrap().clone()).collect();
    assert_eq!(
        origins.iter().map(|o| o.seq).collect::<Vec<_>>(),
        (1..=expected.len() as u64).collect::<Vec<_>>()
    );
    for o in &origins {
        let want = if o.writer.pid == me {
            my_comm.as_str()
        } else {
            "lwtun"
        };
        assert_eq!(o.writer.command.as_deref(), Some(want), "{o:?}");
    }
    assert!(origins.windows(2).all(|w| w[0].time <= w[1].time));
    // The old peers are the ones replaced and removed.
    assert!(matches!(all[1], PeerChange::Changed { old, .. } if old == gre));
    assert!(matches!(all[5], PeerChange::Removed { peer, .. } if peer == gre));
    assert!(matches!(all[8], PeerChange::Removed { peer, .. } if peer == ipip));

    // The reader's view is the kernel's tables.
    let all_before_unload = common::kernel_peers(&pin.0);
    assert_eq!(journal.peers(), &all_before_unload);
    assert!(
        journal.verify().unwrap().is_empty(),
        "nothing behind lwtun's back"
    );

    // `lwtun tunnel unload` removes the journal with the rest of the pins.
    assert!(pin.0.join("peer_journal").exists());
    cli::ok(&["tunnel", "unload", "--pin", p]);
    assert!(!pin.0.exists(), "the folder and its journal are gone");
    assert!(journal.poll().unwrap().is_empty(), "nothing more to read");

    // A tunnel pinned anew in the folder has a new journal: the reader resyncs to it.
    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    tunnel.peers_mut().insert(net("10.5.0.0/16"), gre).unwrap();
    let changes = journal.poll().unwrap();
    assert_eq!(changes[0], PeerChange::Resync(ResyncReason::Replaced));
    let mut view = all_before_unload;
    apply(&mut view, &changes[1..]);
    assert_eq!(view, common::kernel_peers(&pin.0));
    assert_eq!(view.len(), 1);
    tunnel.peers_mut().remove(net("10.5.0.0/16")).unwrap();
    let changes = journal.poll().unwrap();
    assert_eq!(
        summary(&changes[0]),
        ('-', net("10.5.0.0/16"), None, Some(me))
    );
    assert_eq!(changes[0].origin().unwrap().seq, 2);
}

#[test]
fn a_reader_left_behind_resyncs_to_the_real_table() {
    require!();
    let pin = common::PinDir::new("journal-flood");
    let mut tunnel = Tunnel::builder()
        .capacity(32_768)
        .pin(&pin.0)
        .load()
        .unwrap();
    let host = |i: u32, key: u32| common::flood_host(40, i, key);
    let start: Vec<_> = (0..300).map(|i| host(i, 0)).collect();
    tunnel.peers_mut().insert_batch(&start).unwrap();
    let mut journal = PeerJournal::open(&pin.0).unwrap();
    let before = journal.peers().clone();
    assert_eq!(before.len(), 300);

    // More changes than the ring holds (16384): 20000 new peers, 100 removed, 50 changed.
    let flood: Vec<_> = (300..20_300).map(|i| host(i, 0)).collect();
    tunnel.peers_mut().insert_batch(&flood).unwrap();
    let gone: Vec<IpNetwork> = (0..100).map(|i| host(i, 0).0).collect();
    tunnel.peers_mut().remove_batch(&gone).unwrap();
    for i in 100..150 {
        let (prefix, peer) = host(i, 9);
        tunnel.peers_mut().replace(prefix, peer).unwrap();
    }

    // A resync whose read of the tables fails (the table's pin gone for a moment) is not
    // lost: the next poll starts with it again.
    let v4_pin = pin.0.join("peers_v4");
    let mut held = MapHandle::from_pinned_path(&v4_pin).unwrap();
    std::fs::remove_file(&v4_pin).unwrap();
    let failed = journal.poll();
    held.pin(&v4_pin).unwrap();
    assert_eq!(failed.unwrap_err().kind(), lwtun::ErrorKind::NotFound);

    let changes = journal.poll().unwrap();
    let PeerChange::Resync(ResyncReason::Overflow { missed }) = changes[0] else {
        panic!("no resync first: {:?}", &changes[..1]);
    };
    assert!(missed > 0);
    assert!(changes[1..].iter().all(|c| c.origin().is_none()));
    assert_eq!(
        changes.len() - 1,
        20_000 + 100 + 50,
        "the diff, change by change"
    );
    // The diff turns the old view into the tables the kernel holds.
    let mut view = before;
    apply(&mut view, &changes[1..]);
    let kernel = common::kernel_peers(&pin.0);
    assert_eq!(kernel.len(), 20_200);
    assert_eq!(view, kernel);
    assert_eq!(journal.peers(), &kernel);

    // After the resync the journal is read record by record again.
    let (prefix, peer) = host(30_000, 1);
    tunnel.peers_mut().insert(prefix, peer).unwrap();
    let next = journal.poll().unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        summary(&next[0]),
        ('+', prefix, Some(peer), Some(std::process::id()))
    );

    // A peer written behind lwtun's back (a raw map update, as bpftool does) is not
    // journaled; verify finds it.
    assert!(journal.poll().unwrap().is_empty());
    let v4 = MapHandle::from_pinned_path(pin.0.join("peers_v4")).unwrap();
    let mut key = vec![32, 0, 0, 0];
    key.extend([10, 40, 0, 0]); // host 0, removed above
    let mut copy = vec![32, 0, 0, 0];
    copy.extend([10, 40, 0, 200]);
    let value = v4.lookup(&copy, MapFlags::ANY).unwrap().unwrap();
    v4.update(&key, &value, MapFlags::NO_EXIST).unwrap();
    assert!(journal.poll().unwrap().is_empty(), "not journaled");
    let found = journal.verify().unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], PeerChange::Resync(ResyncReason::Untracked));
    assert!(
        matches!(found[1], PeerChange::Added { prefix, origin: None, .. } if prefix == net("10.40.0.0/32"))
    );
    v4.delete(&key).unwrap();
}

#[test]
fn a_folder_without_journal_is_adopted_and_journaled_from_its_first_edit() {
    require!();
    let pin = common::PinDir::new("journal-old");
    let p = pin.arg();
    let gre = peer(
        "192.0.2.2",
        Encap::Gre {
            key: None,
            checksum: false,
        },
    );
    // A folder as lwtun 0.2.0 left it: the tables and a peer, no journal, no programs.
    {
        let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
        tunnel.peers_mut().insert(net("10.1.0.0/16"), gre).unwrap();
        tunnel.keep_pinned();
    }
    for name in PIN_LAYOUT.programs().iter().chain(PIN_LAYOUT.optional()) {
        let _ = std::fs::remove_file(pin.0.join(name));
    }
    assert!(!pin.0.join("peer_journal").exists());
    let seen = lwtun::pins::inspect(&pin.0).unwrap().unwrap();
    assert!(seen.complete, "a journal is not part of the complete set");

    // A reader opened before the journal exists.
    let mut journal = PeerJournal::open(&pin.0).unwrap();
    assert_eq!(journal.peers().len(), 1);
    assert!(journal.poll().unwrap().is_empty());

    // The command's first edit makes it, under the folder's lock.
    let mut add = vec!["peer", "add", "--pin", p, "10.2.0.0/16"];
    add.extend(["remote", "192.0.2.3", "local", "192.0.2.1", "encap", "ipip"]);
    let cli = cli::lwtun_pid(&add);
    assert!(pin.0.join("peer_journal").exists());
    let changes = journal.poll().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        summary(&changes[0]),
        (
            '+',
            net("10.2.0.0/16"),
            Some(peer("192.0.2.3", Encap::Ipip)),
            Some(cli)
        )
    );
    assert_eq!(changes[0].origin().unwrap().seq, 1);

    // Resizing the tables (new maps pinned over the old) keeps the journal going.
    let ns = common::netns("journal");
    let mut tables = TunnelTables::open(&pin.0).unwrap();
    tables
        .resize(&mut Netlink::open_in(&ns).unwrap(), 8192)
        .unwrap();
    tables.peers_mut().insert(net("10.3.0.0/16"), gre).unwrap();
    drop(tables);
    let changes = journal.poll().unwrap();
    assert_eq!(
        summary(&changes[0]),
        ('+', net("10.3.0.0/16"), Some(gre), Some(std::process::id()))
    );
    assert_eq!(changes[0].origin().unwrap().seq, 2);

    // A library owner adopts the folder and its journal and goes on from there.
    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    assert!(tunnel.adopted());
    assert_eq!(tunnel.peers().len(), 3);
    tunnel.peers_mut().remove(net("10.1.0.0/16")).unwrap();
    let changes = journal.poll().unwrap();
    assert_eq!(
        summary(&changes[0]),
        ('-', net("10.1.0.0/16"), None, Some(std::process::id()))
    );
    assert_eq!(changes[0].origin().unwrap().seq, 3);
    assert_eq!(journal.peers(), &common::kernel_peers(&pin.0));
    drop(tunnel);
    assert!(!pin.0.exists(), "unloading removed the journal too");
}

#[test]
fn a_reader_polling_while_a_writer_writes_sees_each_record_intact_or_resyncs() {
    require!();
    let pin = common::PinDir::new("journal-race");
    let mut tunnel = Tunnel::builder().capacity(4096).pin(&pin.0).load().unwrap();
    let mut journal = PeerJournal::open(&pin.0).unwrap();
    let local: IpAddr = "192.0.2.1".parse().unwrap();
    let at = move |i: u32, round: u32| {
        (
            IpNetwork::new([10, 50, (i >> 8) as u8, i as u8].into(), 32).unwrap(),
            EncapPeer::new(
                [192, 0, 2, 2].into(),
                local,
                Encap::Gre {
                    key: Some(round),
                    checksum: false,
                },
            ),
        )
    };
    // 40000 single writes: 2000 peers added, then replaced 19 times over (each a record);
    // it says when 20000 are written.
    let (halfway, at_half) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        for round in 0..20 {
            if round == 10 {
                halfway.send(()).unwrap();
            }
            for i in 0..2000 {
                let (prefix, peer) = at(i, round);
                tunnel.peers_mut().replace(prefix, peer).unwrap();
            }
        }
        tunnel
    });
    let mut view = journal.peers().clone();
    let (mut records, mut resyncs, mut last_seq) = (0u64, 0u64, 0u64);
    // Records written while a resync read the tables may be folded into its diff: the poll
    // after a resync may skip sequence numbers, no other.
    let mut resynced_before = false;
    let mut poll = |journal: &mut PeerJournal, view: &mut BTreeMap<IpNetwork, EncapPeer>| {
        let changes = journal.poll().unwrap();
        let resynced = matches!(changes.first(), Some(PeerChange::Resync(_)));
        for c in &changes {
            match c {
                PeerChange::Resync(_) => resyncs += 1,
                c => match c.origin() {
                    Some(o) => {
                        // In order, and without a gap unless a resync said so.
                        assert!(o.seq > last_seq, "{} after {last_seq}", o.seq);
                        assert!(
                            resynced_before || o.seq == last_seq + 1,
                            "gap before {}",
                            o.seq
                        );
                        last_seq = o.seq;
                        records += 1;
                    }
                    None => assert!(resynced, "a synthesized change without a resync"),
                },
            }
        }
        resynced_before = resynced;
        apply(view, &changes);
    };
    let mut polls = 0;
    // Too slowly for the ring at first (20000 records pass unread, more than it holds), then
    // as fast as it can while the writer writes.
    at_half.recv().unwrap();
    while !writer.is_finished() {
        poll(&mut journal, &mut view);
        polls += 1;
    }
    let tunnel = writer.join().unwrap();
    poll(&mut journal, &mut view);
    let kernel = common::kernel_peers(&pin.0);
    assert_eq!(kernel.len(), 2000);
    assert_eq!(view, kernel, "the changes read add up to the tables");
    assert_eq!(journal.peers(), &kernel);
    eprintln!("{polls} polls: {records} records read, {resyncs} resyncs, last #{last_seq}");
    assert!(resyncs >= 1, "the ring overflowed once at least");
    assert!(records > 0 && last_seq == 40_000, "the last record read");
    drop(tunnel);
}
