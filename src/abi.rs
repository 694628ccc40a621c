//! The Rust side of `bpf/lwtun.h`: byte conversion for the skeletons' generated types.
//!
//! libbpf-cargo generates `#[repr(C)]` structs from the BTF of `bpf/*.bpf.c` (in
//! `crate::skel::NAME::types`). Maps hand values over as bytes; [`Pod`] marks the generated types
//! that are plain old data, so [`from_bytes`] and [`as_bytes`] can convert with a size check instead of
//! a hand-kept copy of the layout.

/// `LWTUN_MAGIC` of `bpf/lwtun.h` ("LWTN"): the first word of every versioned config map, by
/// which a family knows its own object's maps.
pub(crate) const MAGIC: u32 = 0x4c57_544e;

/// `LWTUN_ABI_VERSION` of `bpf/lwtun.h`: bumped whenever the meaning of a struct's bytes there
/// changes; a family refuses adopted maps of another version.
pub(crate) const ABI_VERSION: u32 = 1;

/// Plain old data: every byte pattern is a valid value, there are no pointers and no padding the
/// kernel would leave undefined (`bpf/lwtun.h` asserts every layout's size).
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types made of integers and arrays of integers.
pub(crate) unsafe trait Pod: Copy + Default + 'static {}

// SAFETY: integers are plain data.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: `struct lwtun_counter` is two u64s (16 bytes, asserted in lwtun.h).
unsafe impl Pod for crate::skel::lwt_count::types::lwtun_counter {}
// SAFETY: `struct lwtun_dispatch_config` is 32-bit integers and an array of them (48 bytes).
unsafe impl Pod for crate::skel::dispatch::types::lwtun_dispatch_config {}
// SAFETY: `struct lwtun_dispatch_member_stats` is four u64s (32 bytes).
unsafe impl Pod for crate::skel::dispatch_member::types::lwtun_dispatch_member_stats {}

/// Reads a `T` from exactly `size_of::<T>()` bytes; `None` on a size mismatch.
pub(crate) fn from_bytes<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches and T: Pod accepts any bytes; read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a `T`.
pub(crate) fn as_bytes<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: T: Pod has no uninitialised padding; the slice covers exactly the value.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::lwt_count::types::lwtun_counter;

    #[test]
    fn counter_round_trips_and_checks_size() {
        let c = lwtun_counter {
            packets: 3,
            bytes: 300,
        };
        let b = as_bytes(&c).to_vec();
        assert_eq!(b.len(), 16);
        let back: lwtun_counter = from_bytes(&b).unwrap();
        assert_eq!((back.packets, back.bytes), (3, 300));
        assert!(from_bytes::<lwtun_counter>(&b[..15]).is_none());
    }
}
