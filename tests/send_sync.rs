//! lwtun's handles of kernel objects can move to another thread (`Send`) and be shared between
//! threads (`Sync`): checked at compile time for every such type, and at run time by threads that
//! look peers up in one `Tunnel` (the kernel's LPM table through its own lookup code, by `&self`)
//! while another thread edits its peers (`&mut self`).
mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

fn send_sync<T: Send + Sync>() {}

/// Every type that holds a kernel object (a socket, a namespace, a program, a map, a pin folder,
/// an attachment, an installed route): a new field that is `Cell`/`Rc`-based fails this build.
#[test]
fn handles_of_kernel_objects_are_send_and_sync() {
    send_sync::<lwtun::netlink::Netlink>();
    send_sync::<lwtun::netns::NetNs>();
    send_sync::<lwtun::device::Device>();
    send_sync::<lwtun::tunnel::Tunnel>();
    send_sync::<lwtun::tunnel::PinnedTunnel>();
    send_sync::<lwtun::tunnel::TunnelTables>();
    send_sync::<lwtun::peer::PeerTable>();
    send_sync::<lwtun::decap::Decap>();
    send_sync::<lwtun::route::LwtRoute>();
    send_sync::<lwtun::route::InstalledRoute>();
    send_sync::<lwtun::nexthop::LwtNexthop>();
    send_sync::<lwtun::nexthop::InstalledNexthop>();
    send_sync::<lwtun::program::LwtProgram>();
    send_sync::<lwtun::chain::ProgChain>();
    send_sync::<lwtun::chain::Dispatcher>();
    send_sync::<lwtun::chain::CountingStage>();
    send_sync::<lwtun::chain::TableStage>();
    send_sync::<lwtun::tc::TcAttachment>();
    send_sync::<lwtun::xdp::XdpAttachment>();
    send_sync::<lwtun::xdp::XdpProgram>();
    send_sync::<lwtun::xdp::XdpRouter>();
    send_sync::<lwtun::xdp::XdpRedirect>();
    send_sync::<lwtun::xdp::XdpPass>();
    send_sync::<lwtun::xdp::DevMap>();
    send_sync::<lwtun::xdp::StatsMap>();
    send_sync::<lwtun::xdp::TrafficGen>();
    send_sync::<lwtun::xdp::IcmpEcho>();
    send_sync::<lwtun::seg6::Seg6Tag>();
    send_sync::<lwtun::seg6::Seg6EndX>();
    send_sync::<lwtun::seg6::Seg6EndDt6>();
    send_sync::<lwtun::lwt_redirect::LwtRedirect>();
    send_sync::<lwtun::tunnel_redirect::TunnelRedirect>();
    send_sync::<lwtun::table::Table>();
    send_sync::<lwtun::table::MapOfMaps>();
    send_sync::<lwtun::pins::PinnedFolder>();
    send_sync::<lwtun::netlink::route::RouteBatch>();
    send_sync::<lwtun::Error>();
    #[cfg(feature = "capture")]
    send_sync::<lwtun::capture::Capture>();
    #[cfg(feature = "tokio")]
    {
        send_sync::<lwtun::aio::AsyncNetlink>();
        send_sync::<lwtun::aio::AsyncCapture>();
    }
}

/// The GRE key the data plane puts on a packet to `dst` (its own LPM lookup and header code, run
/// by BPF_PROG_TEST_RUN through `Tunnel::preview`), or `None` on a miss.
fn preview_key(t: &Tunnel, dst: Ipv4Addr) -> Option<u32> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 30, 0, 1]);
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
    let h = t.preview(&f).unwrap()?;
    // The GRE key follows the 20-byte outer IPv4 header and 4 GRE bytes (flags, protocol).
    Some(u32::from_be_bytes(h[24..28].try_into().unwrap()))
}

fn peer(key: u32) -> EncapPeer {
    EncapPeer::new(
        "192.0.2.2".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
        Encap::Gre {
            key: Some(key),
            checksum: false,
        },
    )
}

/// Four reader threads share a `Tunnel` through `Arc<RwLock<_>>` and ask the data plane (by
/// `&self`) where packets go, while a writer inserts and removes peers (by `&mut self`): every
/// answer is the key of the peer the reader saw in the table at that moment (never another
/// reader's result, never a half-written peer), and after the writer is done every reader sees
/// its final table.
#[test]
fn readers_share_a_tunnel_with_a_writer() {
    require!();
    const PEERS: u32 = 64;
    let tunnel = Arc::new(RwLock::new(Tunnel::load().unwrap()));
    let prefix = |i: u32| format!("10.61.{i}.0/24").parse().unwrap();
    let dst = |i: u32| Ipv4Addr::new(10, 61, i as u8, 9);
    let done = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4u32)
        .map(|r| {
            let (tunnel, done, answers) = (tunnel.clone(), done.clone(), answers.clone());
            std::thread::spawn(move || {
                let mut i = r;
                while !done.load(Ordering::Acquire) {
                    let t = tunnel.read().unwrap();
                    let n = i % PEERS;
                    let want = t.peers().get(prefix(n)).map(|p| match p.encap {
                        Encap::Gre { key, .. } => key.unwrap(),
                        _ => unreachable!("only GRE peers here"),
                    });
                    assert_eq!(preview_key(&t, dst(n)), want, "reader {r}, {}", dst(n));
                    answers.fetch_add(1, Ordering::Relaxed);
                    i += 7;
                }
            })
        })
        .collect();
    // After each edit, let the readers answer a few times (a writer-preferring lock would
    // otherwise run all edits before any reader).
    let interleave = || {
        let seen = answers.load(Ordering::Relaxed);
        let until = Instant::now() + common::patient(Duration::from_secs(10));
        while answers.load(Ordering::Relaxed) < seen + 4 {
            assert!(Instant::now() < until, "the readers stopped answering");
            std::thread::yield_now();
        }
    };
    for round in 0..3u32 {
        for i in 0..PEERS {
            let mut t = tunnel.write().unwrap();
            t.peers_mut()
                .insert(prefix(i), peer(1000 * round + i))
                .unwrap();
            drop(t);
            interleave();
        }
        for i in (0..PEERS).step_by(2) {
            tunnel
                .write()
                .unwrap()
                .peers_mut()
                .remove(prefix(i))
                .unwrap();
            interleave();
        }
        for i in (1..PEERS).step_by(2) {
            tunnel
                .write()
                .unwrap()
                .peers_mut()
                .remove(prefix(i))
                .unwrap();
            interleave();
        }
    }
    for i in 0..PEERS {
        let mut t = tunnel.write().unwrap();
        t.peers_mut().insert(prefix(i), peer(7000 + i)).unwrap();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().expect("a reader failed");
    }
    assert!(
        answers.load(Ordering::Relaxed) >= 4 * 3 * 2 * PEERS as u64,
        "the readers answered between the edits"
    );
    let t = tunnel.read().unwrap();
    for i in 0..PEERS {
        assert_eq!(preview_key(&t, dst(i)), Some(7000 + i));
    }
    assert_eq!(preview_key(&t, Ipv4Addr::new(10, 62, 0, 1)), None);
}
