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

mod dispatcher;
mod prog_chain;
mod stage;
mod table_stage;

pub use dispatcher::{member_counter, set_member_verdict, Dispatcher, MemberId, DISPATCH_SLOTS};
pub use prog_chain::{ChainHook, ProgChain, StageId, StageInfo};
pub use stage::{CountingStage, StageStats};
pub use table_stage::{ForwardTable, TableStage, TABLE_TAGS};
