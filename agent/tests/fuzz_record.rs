//! etcd values and keys are outside bytes (any host, or anyone with write access to the
//! prefix, writes them): mutated records and keys never panic the decoders, and every record
//! accepted survives its own encoding unchanged. `LWTUN_FUZZ_ITERATIONS` sets the count
//! (default 50 000); no privileges needed.

use lwtun_agent::layout::Layout;
use lwtun_agent::record::HostRecord;

/// xorshift64*, repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) as usize
    }
}

const SEEDS: [&str; 6] = [
    r#"{"endpoint":"10.99.0.1","encap":"udp","udp_port":6081,"prefixes":["10.200.1.0/24","10.201.0.0/16"]}"#,
    r#"{"endpoint":"fd99::1","encap":"gre","gre_key":7,"prefixes":["fd20::/64","::/0"]}"#,
    r#"{"endpoint":"10.99.0.2","encap":"ipip","prefixes":["0.0.0.0/0"],"extra":[1,{"a":null}]}"#,
    r#"{"endpoint":"10.99.0.3","encap":"gre","prefixes":[]}"#,
    // two endpoints (agent 0.2): `endpoints` lists both, `endpoint` is one of them
    r#"{"endpoint":"10.99.0.4","endpoints":["10.99.0.4","fd99::4"],"encap":"udp","udp_port":6081,"prefixes":["fd20:4::/64"]}"#,
    r#"{"endpoint":"fd99::5","endpoints":["10.99.0.5","fd99::5"],"encap":"ipip","prefixes":["10.200.5.0/24"]}"#,
];

/// Bytes JSON cares about, to make mutations that stay close to JSON.
const JSON_BYTES: &[u8] = b"{}[]\":,0123456789.-/e\\ nulltruefalse";

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.next() % 4 {
        let len = v.len();
        match rng.next() % 6 {
            0 if len > 0 => v[rng.next() % len] ^= 1 << (rng.next() % 8),
            1 => v.truncate(rng.next() % (len + 1)),
            2 if len > 0 => {
                let at = rng.next() % len;
                v.insert(at, JSON_BYTES[rng.next() % JSON_BYTES.len()]);
            }
            3 => {
                let at = rng.next() % (len + 1);
                let from = rng.next() % (other.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
            4 if len > 0 => {
                // Deep nesting: the decoder must refuse it, not overflow its stack.
                let at = rng.next() % len;
                let depth = rng.next() % 2000;
                v.splice(at..at, std::iter::repeat_n(b'[', depth));
            }
            _ => {
                // A number out of every range.
                let at = rng.next() % (len + 1);
                v.splice(at..at, b"99999999999999999999".iter().copied());
            }
        }
    }
    v
}

fn iterations() -> usize {
    std::env::var("LWTUN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

#[test]
fn mutated_records_never_panic_and_accepted_ones_round_trip() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut accepted, mut two, n) = (0, 0, iterations());
    for _ in 0..n {
        let seed = SEEDS[rng.next() % SEEDS.len()].as_bytes();
        let other = SEEDS[rng.next() % SEEDS.len()].as_bytes();
        let value = mutate(&mut rng, seed, other);
        if let Ok(r) = HostRecord::decode(&value) {
            let again = HostRecord::decode(r.encode().as_bytes()).unwrap_or_else(|e| {
                panic!(
                    "{:?} decoded, but its encoding does not: {e}",
                    String::from_utf8_lossy(&value)
                )
            });
            assert_eq!(again, r, "{:?}", String::from_utf8_lossy(&value));
            accepted += 1;
            two += usize::from(r.other_endpoint.is_some());
        }
    }
    assert!(accepted > 0, "no mutation decoded: the seeds are broken");
    assert!(two > 0, "no mutation with two endpoints decoded");
    eprintln!("{n} mutated records: {accepted} accepted, the rest refused, none panicked");
}

#[test]
fn mutated_keys_never_panic_and_hosts_are_valid_names() {
    let layout = Layout::new("/lwtun/fleet/", "f").unwrap();
    let mut rng = Rng(0x0bad_c0de_0000_0001);
    let seed = b"/lwtun/fleet/f/hosts/host-1.example";
    for _ in 0..iterations() {
        let key = mutate(&mut rng, seed, b"/lwtun/fleet/g/hosts/");
        if let Some(host) = layout.host_of(&key) {
            let rebuilt = layout.host_key(host).unwrap();
            assert_eq!(rebuilt.as_bytes(), key.as_slice());
        }
    }
}
