//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), weighted: fills a table of `rows` (a prime) with backend indexes
//! so that each backend holds a share of rows proportional to its weight, and adding or
//! removing one backend of N moves about 1/N of the rows.
//!
//! Each backend walks its own permutation of the rows (`offset + j·skip mod rows`, both from a
//! hash of its identity) and, turn by turn, takes the next row of it that is still free. A
//! backend of weight w takes w/max_weight of a turn's row each turn (credits carried over), so
//! with equal weights this is the paper's algorithm. The identity hash is fixed (no per-process
//! seed): every host computes the same table from the same backends, so hosts behind one ECMP
//! group send a flow to the same backend.

/// A row no backend holds (a table of backends all of weight 0, or none).
pub(crate) const NO_BACKEND: u32 = u32::MAX;

/// FNV-1a over `bytes` from `seed`, then splitmix64's finaliser: a fixed 64-bit hash.
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` is prime (trial division: rows are at most a few million).
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The table: for each of `rows` rows (a prime), the index into `backends` (identity bytes and
/// weight) of the backend holding it, or [`NO_BACKEND`] when no backend has a weight.
pub(crate) fn fill(backends: &[(Vec<u8>, u32)], rows: u32) -> Vec<u32> {
    let m = u64::from(rows);
    let mut table = vec![NO_BACKEND; rows as usize];
    let max_weight = backends.iter().map(|b| b.1).max().unwrap_or(0);
    if max_weight == 0 || rows < 2 {
        return table;
    }
    let walk: Vec<(u64, u64)> = backends
        .iter()
        .map(|(id, _)| {
            let offset = hash64(id, 0x6d61_676c_6576_3031) % m;
            let skip = hash64(id, 0x6d61_676c_6576_3032) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut filled = 0u64;
    while filled < m {
        for (i, (_, weight)) in backends.iter().enumerate() {
            credit[i] += u64::from(*weight);
            while credit[i] >= u64::from(max_weight) {
                credit[i] -= u64::from(max_weight);
                let (offset, skip) = walk[i];
                // A permutation of the rows: a free one turns up within `rows` steps.
                loop {
                    let row = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[row] == NO_BACKEND {
                        table[row] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    return table;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n)
            .map(|i| (format!("192.0.2.{i}").into_bytes(), 1))
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / table.len() as f64).collect()
    }

    #[test]
    fn primes_are_told_apart() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(251));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(9));
    }

    #[test]
    fn every_row_is_held_and_equal_weights_share_evenly() {
        let t = fill(&ids(10), 65_537);
        assert!(t.iter().all(|&b| b < 10));
        for s in shares(&t, 10) {
            assert!((s - 0.1).abs() < 0.001, "share {s}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let mut b = ids(3);
        b[0].1 = 1;
        b[1].1 = 2;
        b[2].1 = 5;
        let s = shares(&fill(&b, 65_537), 3);
        for (got, want) in s.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
            assert!((got - want).abs() < 0.002, "share {got}, want {want}");
        }
    }

    #[test]
    fn removing_one_of_ten_moves_little_more_than_its_rows() {
        let all = ids(10);
        let before = fill(&all, 65_537);
        let mut nine = all.clone();
        nine.remove(3);
        let after = fill(&nine, 65_537);
        // Map the nine's indexes back to the ten's.
        let back = |i: u32| if i >= 3 { i + 1 } else { i };
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 3 && **b != back(**a))
            .count() as f64
            / before.len() as f64;
        assert!(moved < 0.02, "rows of surviving backends moved: {moved}");
    }

    #[test]
    fn no_weight_no_rows_and_the_same_input_the_same_table() {
        let mut b = ids(2);
        b[0].1 = 0;
        b[1].1 = 0;
        assert!(fill(&b, 251).iter().all(|&r| r == NO_BACKEND));
        assert_eq!(fill(&ids(4), 251), fill(&ids(4), 251));
    }
}
