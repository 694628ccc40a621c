//! [`TableStage`]: a chain stage whose IPv4 forwarding table lives in an `ARRAY_OF_MAPS` and is
//! replaced whole (`bpf/chain_table.bpf.c`).

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, Object};

use super::prog_chain::ProgChain;
use crate::error::{Error, Result};
use crate::program::{sum_percpu, Counter};
use crate::table::{InnerSpec, MapOfMaps, Table};

/// Tags a table entry can carry (1..=63; 0 counts misses).
pub const TABLE_TAGS: u32 = 64;

/// A forwarding table for a [`TableStage`]: IPv4 destinations, each with a tag whose hits the
/// stage counts. Build it aside, then [`TableStage::swap`] it in.
#[derive(Debug)]
pub struct ForwardTable {
    table: Table,
}

impl ForwardTable {
    /// Adds (or retags) a destination.
    ///
    /// # Errors
    ///
    /// InvalidInput for tag 0 or a tag above 63; the kernel's error (the table holds 4096).
    pub fn insert(&self, dst: Ipv4Addr, tag: u32) -> Result<()> {
        if tag == 0 || tag >= TABLE_TAGS {
            return Err(Error::invalid_input(
                "insert forwarding entry",
                format!("tag {tag}: use 1..={}", TABLE_TAGS - 1),
            ));
        }
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&tag.to_ne_bytes());
        self.table.insert(&dst.octets(), &value)
    }

    /// Removes a destination; `false` when it was not there.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn remove(&self, dst: Ipv4Addr) -> Result<bool> {
        self.table.remove(&dst.octets())
    }

    /// The kernel's id of the table's map.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn id(&self) -> Result<u32> {
        self.table.id()
    }
}

/// A chain stage that looks each IPv4 packet's destination up in the table in place: a hit
/// counts the entry's tag and goes on along the chain, a miss ends the chain with the drop
/// verdict (counted under tag 0). Non-IPv4 packets at XDP and tc go on untouched.
///
/// Kernel: Linux 5.2+ (global data in `.rodata`; array of maps 4.12).
///
/// # Examples
///
/// ```no_run
/// use lwtun::chain::{ChainHook, ProgChain, TableStage};
///
/// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
/// let stage = TableStage::load(&chain)?;
/// chain.push(stage.program())?;
/// let table = stage.new_table()?;
/// table.insert("10.0.0.2".parse().unwrap(), 1)?;
/// stage.swap(&table)?;
/// println!("{:?}", stage.hits(1)?);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct TableStage {
    object: Object,
    program: OwnedFd,
    outer: MapOfMaps,
    spec: InnerSpec,
}

impl fmt::Debug for TableStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableStage")
            .field("outer", &self.outer)
            .field("spec", &self.spec)
            .finish()
    }
}

impl TableStage {
    /// Loads the stage for `chain`, with an empty table in place (every IPv4 packet misses).
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; Kernel on an ABI mismatch; the verifier's error otherwise.
    pub fn load(chain: &ProgChain) -> Result<Self> {
        let object = chain.open_member(
            "chain_table",
            crate::skel::chain_table::OBJECT,
            std::mem::offset_of!(crate::skel::chain_table::types::rodata, lwtun_chain_abi),
            |_| Ok(()),
        )?;
        let program = chain.member_program(&object, &format!("table_{}", chain.hook()))?;
        let find = |name: &str| {
            object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or_else(|| Error::not_found("load table stage", format!("map {name}")))
        };
        let outer = MapOfMaps::from_map(find("table_outer")?.as_fd())?;
        let spec = InnerSpec::of(find("table_initial")?.as_fd())?;
        Ok(TableStage {
            object,
            program,
            outer,
            spec,
        })
    }

    /// The stage program, for [`ProgChain::insert`].
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// A new, empty table of the stage's shape, to fill before [`swap`](Self::swap).
    ///
    /// # Errors
    ///
    /// The kernel's error creating the map.
    pub fn new_table(&self) -> Result<ForwardTable> {
        Ok(ForwardTable {
            table: self.spec.create("lwtun_fwd")?,
        })
    }

    /// Puts `table` in place in one update; returns the id of the table it replaced.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn swap(&self, table: &ForwardTable) -> Result<Option<u32>> {
        self.outer.swap(&0u32.to_ne_bytes(), &table.table)
    }

    /// The id of the table in place.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn current(&self) -> Result<Option<u32>> {
        self.outer.get(&0u32.to_ne_bytes())
    }

    /// Packets and bytes that hit entries tagged `tag` (0: misses), summed over the CPUs.
    ///
    /// # Errors
    ///
    /// InvalidInput for a tag above 63; the kernel's error otherwise.
    pub fn hits(&self, tag: u32) -> Result<Counter> {
        if tag >= TABLE_TAGS {
            return Err(Error::invalid_input(
                "read table hits",
                format!("tag {tag} above {}", TABLE_TAGS - 1),
            ));
        }
        let map = self
            .object
            .maps()
            .find(|m| m.name().to_str() == Some("table_hits"))
            .ok_or_else(|| Error::not_found("read table hits", "map table_hits"))?;
        sum_percpu(&map, tag, "read table hits")
    }
}
