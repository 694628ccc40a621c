//! Map-in-map tables: typed `ARRAY_OF_MAPS` and `HASH_OF_MAPS`, whose values are whole maps, so a
//! table (a forwarding table, a peer table) is rebuilt aside and swapped in with one update.
//!
//! ```text
//!  outer map (ARRAY_OF_MAPS / HASH_OF_MAPS)       programs look up outer[key], then the inner map
//!   key 0 ──▶ inner table v1   ──swap──▶ inner table v2 (built and filled aside)
//! ```
//!
//! The kernel replaces an outer entry atomically: a packet's program sees the whole old table or
//! the whole new one, never a half-written table. Inner maps must match the outer map's template
//! (type, key and value size, entries): [`InnerSpec`] reads it from a map of the template's kind.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapInfo, MapType};

use crate::error::{Error, Result};

/// The shape of an inner table: what a new table must look like to be swapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerSpec {
    /// The inner map's type (HASH, ARRAY, LPM_TRIE, ...).
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Maximum entries.
    pub max_entries: u32,
    /// Map flags (BPF_F_NO_PREALLOC for LPM tries, for example).
    pub flags: u32,
    /// The BTF types of keys and values, which new tables carry too: the kernel compares them
    /// when a table is swapped in (6.1 refuses, with EINVAL, a table without BTF where the
    /// template has it), and bpftool prints the entries by field.
    pub btf: Option<InnerBtf>,
}

/// The BTF description of an inner table's keys and values: a loaded BTF object (by id) and the
/// type ids in it, as `bpf_map_info` reports them for a map an object created.
///
/// # Examples
///
/// ```no_run
/// use std::os::fd::AsFd;
/// # let map: lwtun::libbpf_rs::MapHandle = todo!();
/// let spec = lwtun::table::InnerSpec::of(map.as_fd())?;
/// if let Some(btf) = spec.btf {
///     println!("values are type {} of BTF object {}", btf.value_type_id, btf.btf_id);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerBtf {
    /// The BTF object's id.
    pub btf_id: u32,
    /// The key's type id in it (0: none).
    pub key_type_id: u32,
    /// The value's type id in it.
    pub value_type_id: u32,
}

impl InnerSpec {
    /// The shape of an existing map (for example the table an object loaded in place).
    ///
    /// # Errors
    ///
    /// InvalidInput when `map` holds something other than a BPF map (a program, a link).
    pub fn of(map: BorrowedFd<'_>) -> Result<Self> {
        crate::bpf_fd::expect_kind("read table shape", map, crate::bpf_fd::FdKind::Map)?;
        let info = MapInfo::new(map).map_err(|e| Error::bpf("read map info", e))?;
        Ok(InnerSpec {
            map_type: info.map_type(),
            key_size: info.info.key_size,
            value_size: info.info.value_size,
            max_entries: info.info.max_entries,
            flags: info.info.map_flags,
            btf: (info.info.btf_id != 0 && info.info.btf_value_type_id != 0).then_some(InnerBtf {
                btf_id: info.info.btf_id,
                key_type_id: info.info.btf_key_type_id,
                value_type_id: info.info.btf_value_type_id,
            }),
        })
    }

    /// Creates an empty table of this shape, to fill and then swap in.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; the kernel's error otherwise.
    pub fn create(&self, name: &str) -> Result<Table> {
        let mut opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: self.flags,
            ..Default::default()
        };
        // Held until the map exists (the kernel takes its own reference).
        let btf_fd = match self.btf {
            Some(btf) => {
                // SAFETY: plain syscall wrapper; a negative return is an error, else a new fd.
                let fd = unsafe { libbpf_rs::libbpf_sys::bpf_btf_get_fd_by_id(btf.btf_id) };
                if fd < 0 {
                    return Err(Error::io(
                        format!("open BTF object {} for table {name}", btf.btf_id),
                        std::io::Error::from_raw_os_error(-fd),
                    ));
                }
                opts.btf_fd = fd as u32;
                opts.btf_key_type_id = btf.key_type_id;
                opts.btf_value_type_id = btf.value_type_id;
                // SAFETY: fd is a new descriptor that nothing else owns.
                Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
            }
            None => None,
        };
        let handle = MapHandle::create(
            self.map_type,
            Some(name),
            self.key_size,
            self.value_size,
            self.max_entries,
            &opts,
        )
        .map_err(|e| Error::bpf("create table", e).with_object(name.to_string()))?;
        drop(btf_fd);
        Ok(Table {
            handle,
            spec: *self,
        })
    }
}

/// An inner table: a map owned by fd, filled before it is swapped into a [`MapOfMaps`]. It may
/// still be edited afterwards (programs see edits at once); dropping it after the swap is fine,
/// the outer map keeps the table alive.
pub struct Table {
    handle: MapHandle,
    spec: InnerSpec,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("spec", &self.spec)
            .field("id", &self.id().ok())
            .finish()
    }
}

impl Table {
    /// The table's shape.
    pub fn spec(&self) -> &InnerSpec {
        &self.spec
    }

    /// The kernel's map id.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map info.
    pub fn id(&self) -> Result<u32> {
        MapInfo::new(self.handle.as_fd())
            .map(|i| i.info.id)
            .map_err(|e| Error::bpf("read table id", e))
    }

    /// Inserts or updates one entry.
    ///
    /// # Errors
    ///
    /// InvalidInput when the key or value size does not match the table; the kernel's error
    /// (E2BIG when the table is full).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check(key, Some(value))?;
        self.handle
            .update(key, value, MapFlags::ANY)
            .map_err(|e| Error::bpf("insert table entry", e))
    }

    /// Inserts or updates `count` entries at once: `keys` and `values` hold them back to back
    /// (one `BPF_MAP_UPDATE_BATCH` call; entry by entry where the kernel has no batch update for
    /// the table's type).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let table: lwtun::table::Table = todo!();
    /// // rows 0..3 of an array table of u32 -> u32
    /// let keys: Vec<u8> = (0u32..3).flat_map(u32::to_ne_bytes).collect();
    /// let values: Vec<u8> = [7u32, 8, 9].iter().flat_map(|v| v.to_ne_bytes()).collect();
    /// table.insert_batch(&keys, &values, 3)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput when the lengths are not `count` keys and values of the table's sizes; the
    /// kernel's error otherwise.
    pub fn insert_batch(&self, keys: &[u8], values: &[u8], count: u32) -> Result<()> {
        let op = "insert table entries";
        let (k, v) = (self.spec.key_size as usize, self.spec.value_size as usize);
        if count == 0 {
            return Ok(());
        }
        if keys.len() != k * count as usize || values.len() != v * count as usize {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{count} entries of {k}-byte keys and {v}-byte values, got {} and {} bytes",
                    keys.len(),
                    values.len()
                ),
            ));
        }
        match self
            .handle
            .update_batch(keys, values, count, MapFlags::ANY, MapFlags::ANY)
        {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    libbpf_rs::ErrorKind::Unsupported | libbpf_rs::ErrorKind::InvalidInput
                ) =>
            {
                for (key, value) in keys.chunks_exact(k).zip(values.chunks_exact(v)) {
                    self.insert(key, value)?;
                }
                Ok(())
            }
            Err(e) => Err(Error::bpf(op, e)),
        }
    }

    /// Removes one entry; `false` when it was not there.
    ///
    /// # Errors
    ///
    /// InvalidInput on a key size mismatch; the kernel's error otherwise.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.check(key, None)?;
        match self.handle.delete(key) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::bpf("remove table entry", e)),
        }
    }

    /// Looks one entry up.
    ///
    /// # Errors
    ///
    /// InvalidInput on a key size mismatch; the kernel's error otherwise.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check(key, None)?;
        self.handle
            .lookup(key, MapFlags::ANY)
            .map_err(|e| Error::bpf("look up table entry", e))
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if key.len() != self.spec.key_size as usize {
            return Err(Error::invalid_input(
                "table entry",
                format!(
                    "key of {} bytes, the table's are {}",
                    key.len(),
                    self.spec.key_size
                ),
            ));
        }
        if let Some(v) = value {
            if v.len() != self.spec.value_size as usize {
                return Err(Error::invalid_input(
                    "table entry",
                    format!(
                        "value of {} bytes, the table's are {}",
                        v.len(),
                        self.spec.value_size
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl AsFd for Table {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// The kind of a [`MapOfMaps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterKind {
    /// `BPF_MAP_TYPE_ARRAY_OF_MAPS`: u32 index keys, every slot exists.
    Array,
    /// `BPF_MAP_TYPE_HASH_OF_MAPS`: keys of any size.
    Hash,
}

/// An `ARRAY_OF_MAPS` or `HASH_OF_MAPS`: its values are tables, swapped in whole.
///
/// Kernel: Linux 4.12+ (`BPF_MAP_TYPE_ARRAY_OF_MAPS` / `HASH_OF_MAPS`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::table::{InnerSpec, MapOfMaps};
/// use lwtun::libbpf_rs::MapType;
///
/// let spec = InnerSpec {
///     map_type: MapType::Hash, key_size: 4, value_size: 8, max_entries: 1024, flags: 0, btf: None,
/// };
/// let outer = MapOfMaps::create_array("fwd", &spec, 1)?;
/// let next = spec.create("fwd_v2")?;
/// next.insert(&[10, 0, 0, 1], &[1, 0, 0, 0, 0, 0, 0, 0])?;
/// outer.swap(&0u32.to_ne_bytes(), &next)?; // programs now see the new table, all at once
/// # Ok::<(), lwtun::Error>(())
/// ```
#[doc(alias = "BPF_MAP_TYPE_ARRAY_OF_MAPS")]
#[doc(alias = "BPF_MAP_TYPE_HASH_OF_MAPS")]
pub struct MapOfMaps {
    handle: MapHandle,
    kind: OuterKind,
    key_size: u32,
    max_entries: u32,
}

impl fmt::Debug for MapOfMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOfMaps")
            .field("kind", &self.kind)
            .field("key_size", &self.key_size)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl MapOfMaps {
    /// Takes an outer map (for example one of a loaded object's maps) by a new reference.
    ///
    /// # Errors
    ///
    /// InvalidInput when the map is neither ARRAY_OF_MAPS nor HASH_OF_MAPS.
    pub fn from_map(map: BorrowedFd<'_>) -> Result<Self> {
        crate::bpf_fd::expect_kind("take map of maps", map, crate::bpf_fd::FdKind::Map)?;
        let info = MapInfo::new(map).map_err(|e| Error::bpf("read map info", e))?;
        let kind = match info.map_type() {
            MapType::ArrayOfMaps => OuterKind::Array,
            MapType::HashOfMaps => OuterKind::Hash,
            other => {
                return Err(Error::invalid_input(
                    "take map of maps",
                    format!("map {} has type {other:?}, not a map of maps", info.info.id),
                ))
            }
        };
        let handle =
            MapHandle::from_map_id(info.info.id).map_err(|e| Error::bpf("open map by id", e))?;
        Ok(MapOfMaps {
            handle,
            kind,
            key_size: info.info.key_size,
            max_entries: info.info.max_entries,
        })
    }

    /// Creates an `ARRAY_OF_MAPS` of `entries` slots whose tables have `inner`'s shape.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; the kernel's error otherwise.
    pub fn create_array(name: &str, inner: &InnerSpec, entries: u32) -> Result<Self> {
        Self::create(name, OuterKind::Array, 4, inner, entries)
    }

    /// Creates a `HASH_OF_MAPS` with keys of `key_size` bytes and tables of `inner`'s shape.
    ///
    /// # Errors
    ///
    /// As [`create_array`](Self::create_array).
    pub fn create_hash(name: &str, key_size: u32, inner: &InnerSpec, entries: u32) -> Result<Self> {
        Self::create(name, OuterKind::Hash, key_size, inner, entries)
    }

    fn create(
        name: &str,
        kind: OuterKind,
        key_size: u32,
        inner: &InnerSpec,
        entries: u32,
    ) -> Result<Self> {
        let template = inner.create(&format!("{name}_tmpl"))?;
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            inner_map_fd: template.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        let map_type = match kind {
            OuterKind::Array => MapType::ArrayOfMaps,
            OuterKind::Hash => MapType::HashOfMaps,
        };
        let handle = MapHandle::create(map_type, Some(name), key_size, 4, entries, &opts)
            .map_err(|e| Error::bpf("create map of maps", e).with_object(name.to_string()))?;
        Ok(MapOfMaps {
            handle,
            kind,
            key_size,
            max_entries: entries,
        })
    }

    /// The outer map's kind.
    pub fn kind(&self) -> OuterKind {
        self.kind
    }

    /// Puts `table` at `key` in one update and returns the id of the table it replaced. Programs
    /// see the old table or the new one, whole.
    ///
    /// # Errors
    ///
    /// InvalidInput on a key size mismatch; the kernel's error (EINVAL when the table's shape does
    /// not match the outer map's template, E2BIG past the array's end).
    pub fn swap(&self, key: &[u8], table: &Table) -> Result<Option<u32>> {
        self.check_key(key)?;
        let old = self.get(key)?;
        let fd = table.as_fd().as_raw_fd() as u32;
        self.handle
            .update(key, &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf("swap table", e))?;
        Ok(old)
    }

    /// The id of the table at `key`, if any.
    ///
    /// # Errors
    ///
    /// InvalidInput on a key size mismatch; the kernel's error otherwise.
    pub fn get(&self, key: &[u8]) -> Result<Option<u32>> {
        self.check_key(key)?;
        let v = self
            .handle
            .lookup(key, MapFlags::ANY)
            .map_err(|e| Error::bpf("look up table", e))?;
        Ok(v.and_then(|b| {
            b.get(..4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4")))
        }))
    }

    /// Removes the table at `key` (programs then find no table there); `false` when none was.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.check_key(key)?;
        match self.handle.delete(key) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::bpf("remove table", e)),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() != self.key_size as usize {
            return Err(Error::invalid_input(
                "map of maps key",
                format!(
                    "key of {} bytes, the map's are {}",
                    key.len(),
                    self.key_size
                ),
            ));
        }
        Ok(())
    }
}

impl AsFd for MapOfMaps {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }
}
