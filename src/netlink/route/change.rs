//! Changing routes: add, replace and delete one, and batches of many, pipelined (every item
//! tried, failures reported by index) or all or nothing.

use std::collections::HashMap;
use std::fmt;

use super::Route;
use crate::error::{Error, Result};
use crate::netlink::Netlink;

/// What a [`RouteBatch`] item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp {
    /// Add; fails if the route exists.
    Add,
    /// Add or replace.
    Replace,
    /// Delete.
    Delete,
}

impl BatchOp {
    /// What the change is called in errors ("add route", ...).
    fn what(self) -> &'static str {
        match self {
            BatchOp::Add => "add route",
            BatchOp::Replace => "replace route",
            BatchOp::Delete => "delete route",
        }
    }
}

/// Many route changes sent pipelined: up to 256 requests (32 KiB) per `sendmsg`, one ACK per
/// window, every failure reported by index.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::{Netlink, route::{Route, RouteBatch}};
///
/// let mut nl = Netlink::open()?;
/// let mut batch = RouteBatch::new();
/// for i in 0..1000u32 {
///     let mut r = Route::new(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap());
///     r.oif = Some(2);
///     batch.add(r);
/// }
/// let report = nl.apply_batch(&batch)?;
/// assert!(report.is_complete(), "{report}");
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteBatch {
    items: Vec<(BatchOp, Route)>,
}

impl RouteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an add.
    pub fn add(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Add, route));
        self
    }

    /// Queues an add-or-replace.
    pub fn replace(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Replace, route));
        self
    }

    /// Queues a delete.
    pub fn delete(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Delete, route));
        self
    }

    /// The queued items, in order.
    pub fn items(&self) -> &[(BatchOp, Route)] {
        &self.items
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The outcome of [`Netlink::apply_batch`]: which items failed, and why.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BatchReport {
    /// Items the kernel applied.
    pub applied: usize,
    /// Failed items: their index in the batch and the error.
    pub failures: Vec<(usize, Error)>,
}

impl BatchReport {
    /// Whether every item was applied.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// Turns a partial outcome into an error naming the first failure and the count.
    pub fn into_result(self) -> Result<usize> {
        match self.failures.into_iter().next() {
            None => Ok(self.applied),
            Some((i, e)) => Err(Error::other(
                e.kind(),
                "apply route batch",
                format!("item {i} failed: {e} ({} applied)", self.applied),
            )),
        }
    }
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} applied, {} failed",
            self.applied,
            self.failures.len()
        )?;
        for (i, e) in self.failures.iter().take(5) {
            write!(f, "; #{i}: {e}")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Adds a route; fails with [`ErrorKind::Exists`](crate::ErrorKind::Exists) if it is there.
    ///
    /// # Errors
    ///
    /// InvalidInput for a route [`Route::validate`] refuses (nothing is sent); the kernel's
    /// error otherwise (NotFound for an unknown device, Exists, InvalidInput with its ext-ack
    /// text, Unsupported where the kernel lacks LWT BPF).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.change_route(BatchOp::Add, route)
    }

    /// Adds a route, or replaces the one with the same destination, table, tos and metric.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.change_route(BatchOp::Replace, route)
    }

    /// Deletes the route matching `route`'s destination, table, tos, protocol, metric and device.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.change_route(BatchOp::Delete, route)
    }

    /// Sends one change and waits for its answer: the bytes a batch item is written with.
    fn change_route(&mut self, op: BatchOp, route: &Route) -> Result<()> {
        if op != BatchOp::Delete {
            route.validate()?;
        }
        self.request_raw(op.what(), route, |seq, out| {
            route.write_request(out, op, 0, seq)
        })
        .map(drop)
        .map_err(|e| self.explain(e, route, &mut HashMap::new()))
    }

    /// A refused route change as a user reads it: the device by name (`dev veth0`, not
    /// `dev#2`) and, for a route in the way or a missing one, the `ip` command that shows
    /// what is there.
    /// `names` caches device names by index across the failures of one batch.
    fn explain(
        &mut self,
        e: Error,
        route: &Route,
        names: &mut HashMap<u32, Option<String>>,
    ) -> Error {
        let Some(errno) = e.errno() else {
            return e;
        };
        let dev = route.oif.and_then(|index| {
            names
                .entry(index)
                .or_insert_with(|| self.link_by_index(index).ok().map(|link| link.name))
                .clone()
        });
        let e = e.with_object(route.describe(dev.as_deref()));
        let show = match route.table {
            super::RT_TABLE_MAIN => format!("ip route show {}", route.dst),
            table => format!("ip route show {} table {table}", route.dst),
        };
        match errno {
            libc::EEXIST => e.with_hint(format!(
                "a route to {} is there already (`{show}`): replace it, or delete it first",
                route.dst
            )),
            libc::ESRCH => e.with_hint(format!("no such route: `{show}` lists what is there")),
            _ => e,
        }
    }

    /// Applies a batch, pipelined. Every item is attempted; the report lists each failure by
    /// index. Items are independent: a failure does not undo the others (see
    /// [`Netlink::apply_batch_atomic`] for all-or-nothing).
    ///
    /// # Errors
    ///
    /// Only when the socket itself fails (then nothing more is known of the items after the
    /// last answered one) or an item is refused by [`Route::validate`] before anything is sent.
    pub fn apply_batch(&mut self, batch: &RouteBatch) -> Result<BatchReport> {
        // Validate everything before the first send: invalid input never half-applies.
        for (i, (op, route)) in batch.items.iter().enumerate() {
            if *op != BatchOp::Delete {
                route.validate().map_err(|e| {
                    Error::invalid_input("apply route batch", format!("item {i}: {e}"))
                })?;
            }
        }
        let answers = self.pipeline("apply route batch", batch.len(), |i, seq, out| {
            let (op, route) = &batch.items[i];
            route.write_request(out, *op, 0, seq);
        })?;
        let mut report = BatchReport::default();
        let mut names = HashMap::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                None => report.applied += 1,
                Some((errno, ext)) => {
                    let (op, route) = &batch.items[i];
                    let e = Error::netlink(op.what(), errno, ext);
                    report
                        .failures
                        .push((i, self.explain(e, route, &mut names)));
                }
            }
        }
        Ok(report)
    }

    /// Applies a batch of adds and deletes all or nothing: if any item fails, the items that
    /// were applied are undone (added routes deleted, deleted routes added back) and the first
    /// failure is returned with the count of failures.
    ///
    /// Replaces cannot be undone without the old route, so a batch holding one is refused.
    ///
    /// # Errors
    ///
    /// The first failure, with its index; InvalidInput for a batch with replaces.
    pub fn apply_batch_atomic(&mut self, batch: &RouteBatch) -> Result<usize> {
        if batch.items.iter().any(|(op, _)| *op == BatchOp::Replace) {
            return Err(Error::invalid_input(
                "apply route batch atomically",
                "a replace cannot be undone without the old route: use apply_batch",
            ));
        }
        let report = self.apply_batch(batch)?;
        if report.is_complete() {
            return Ok(report.applied);
        }
        let failed: std::collections::HashSet<usize> =
            report.failures.iter().map(|(i, _)| *i).collect();
        let mut undo = RouteBatch::new();
        for (i, (op, route)) in batch.items.iter().enumerate().rev() {
            if failed.contains(&i) {
                continue;
            }
            match op {
                BatchOp::Add => undo.delete(route.clone()),
                _ => undo.add(route.clone()),
            };
        }
        let undo_report = self.apply_batch(&undo)?;
        let (i, first) = report.failures.into_iter().next().expect("not complete");
        let mut msg = format!(
            "item {i} failed: {first}; {} of {} items failed, the {} applied were undone",
            failed.len(),
            batch.len(),
            undo.len()
        );
        if !undo_report.is_complete() {
            msg.push_str(&format!("; undoing failed too: {undo_report}"));
        }
        Err(Error::other(
            first.kind(),
            "apply route batch atomically",
            msg,
        ))
    }
}
