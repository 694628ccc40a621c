//! Program chains: programs of one type joined by `bpf_tail_call`, in an order the caller sets and
//! changes while traffic flows.
//!
//! ```text
//!  hook (XDP, tc, LWT route)
//!     │
//!     ▼
//!  entry program ──tail call──▶ stage A ──▶ stage B ──▶ … ──▶ exit hook (capture, when attached)
//!        chain_progs (prog array)  chain_next (slot → next slot)
//! ```
//!
//! A [`ProgChain`] owns the prog array and the entry program (a prog array's entries are cleared
//! when its last user-space reference goes away), and keeps every stage program loaded while it
//! is in the chain. Stages that know the chain (built on `bpf/chain.h`, like [`CountingStage`] and
//! the capture program) go on with `lwtun_chain_next()`; any other program of the chain's type can
//! be a stage too, and ends the chain with its own verdict.
//!
//! A [`Dispatcher`] is the other shape of the same machinery: a root per hook and up to 8 member
//! slots run in slot order, where each member's verdict and its slot's continue set decide whether
//! the next member runs (`bpf/dispatch.h`, all tail calls: see the `dispatcher` module's notes on
//! why not freplace).

mod dispatcher;
mod membership;
mod prog_chain;
mod stage;
mod table_stage;

pub use dispatcher::{
    member_stats, set_member_verdict, Dispatcher, MemberId, MemberInfo, MemberStats,
    DISPATCH_SLOTS, DISPATCH_VERSION,
};
pub use prog_chain::{ChainHook, ProgChain, StageId, StageInfo};
pub use stage::{CountingStage, StageStats};
pub use table_stage::{ForwardTable, TableStage, TABLE_TAGS};
