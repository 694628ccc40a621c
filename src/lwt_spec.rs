//! What an LWT route and an LWT nexthop share, below both ([`crate::route`] and
//! [`crate::nexthop`]): the programs a builder gathered, checked against their hooks and made
//! into the `encap bpf` attribute, and the protocol lwtun tags what it installs with.

use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::netlink::route::BpfEncap;
use crate::program::{Hook, LwtProgram};

/// The route protocol lwtun tags its routes and nexthops with (`ip route show proto 76`).
pub const RTPROT_LWTUN: u8 = 76;

/// The programs a builder gathered, checked against their hooks: the LWT BPF encap they make
/// (without headroom), the seg6local End.BPF program if one was given, and the programs.
pub(crate) fn collect_programs(
    programs: Vec<(Hook, Result<LwtProgram>)>,
    op: &str,
    object: &str,
) -> Result<(
    BpfEncap,
    Option<crate::netlink::route::ProgRef>,
    Vec<LwtProgram>,
)> {
    let mut bpf = BpfEncap::default();
    let mut seg6 = None;
    let mut owned = Vec::new();
    for (hook, program) in programs {
        let program = program?;
        if program.hook() != hook {
            return Err(Error::invalid_input(
                op,
                format!(
                    "program {} is of type {}, but the {hook} hook runs only {hook} programs",
                    program.name(),
                    program.hook()
                ),
            )
            .with_object(object));
        }
        let r = Some(program.prog_ref());
        match hook {
            Hook::In => bpf.input = r,
            Hook::Out => bpf.output = r,
            Hook::Xmit => bpf.xmit = r,
            Hook::Seg6Local => {
                crate::probe::Feature::Seg6Local
                    .require(op)
                    .map_err(|e| e.with_object(object))?;
                seg6 = r
            }
        }
        owned.push(program);
    }
    Ok((bpf, seg6, owned))
}

/// Takes a reference of its own to `program` for a builder's program list, refusing what is not
/// an LWT program for `hook` by both types' names (a program of another LWT type is refused by
/// [`collect_programs`], which names the object too).
pub(crate) fn take_program(hook: Hook, program: impl AsFd) -> Result<LwtProgram> {
    let op = "take LWT program";
    let fd = program.as_fd();
    let info = crate::program::program_info(fd)?;
    let lwt = [Hook::In, Hook::Out, Hook::Xmit, Hook::Seg6Local]
        .iter()
        .any(|h| h.program_type() as u32 == info.prog_type);
    if !lwt {
        return Err(Error::invalid_input(
            op,
            format!(
                "program {} (id {}) is of type {}, not an LWT type: the {hook} hook runs only \
                 {} programs (section SEC(\"{hook}\"))",
                info.name,
                info.id,
                crate::bpf_fd::prog_type_name(info.prog_type),
                crate::bpf_fd::prog_type_name(hook.program_type() as u32),
            ),
        ));
    }
    fd.try_clone_to_owned()
        .map_err(|e| Error::io(op, e))
        .and_then(LwtProgram::from_fd)
}
