//! History checker for the coord simulation: does a recorded history of client operations on
//! znodes meet ZooKeeper's consistency guarantees?
//!
//! Each key (znode path) is a register holding `Option<u64>` (`None` = no node) and is checked on
//! its own, because the guarantees below are all per key (P-compositionality). What is checked:
//! - writes (`Set`, `CondSet`, `Create`, `Delete`, including failed ones, which ZAB orders too)
//!   are linearizable: one total order, consistent with real time and each client's program
//!   order, in which every completed write's reported outcome is the right one;
//! - every read returns the value after some prefix of that order (its "view"), where a client's
//!   views never go backwards (monotonic reads), cover the client's own earlier completed writes,
//!   failed ones included (read-your-writes), never include a write invoked after the read
//!   completed, and, for a read that follows a completed `sync`, include every write that
//!   completed before the sync began;
//! - an operation with no completion (timeout, lost connection) may or may not have taken effect,
//!   at any point after its invocation; a read with no completion constrains nothing.
//!
//! "A before B" in real time means A completed strictly before B was invoked; equal times count
//! as concurrent. Within a client, program order (invoke order) applies whatever the times.
//!
//! The check is exact: a Wing–Gong/Lowe depth-first search over the ops of one key for an order
//! that places every completed write and read, memoized on (placed ops, state). Reads are placed
//! eagerly, as soon as their constraints and the current value allow; an earlier view only
//! loosens what must follow, so nothing is lost and the search branches on writes only. Unknown
//! writes are optional moves; those with the same effect are interchangeable once enabled, so the
//! memo records how many of each kind were still available, and a state with no more available
//! than an already failed one is pruned. Values no read returned are merged in the state, and a
//! branch stops as soon as some unplaced read wants a value the node does not hold and no
//! remaining write can produce. The search has a node budget per key; a key that runs out counts
//! as inconclusive, never as passed. Start at [`check`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

pub type ClientId = usize;

/// Search nodes explored per key before the key is given up as inconclusive. A node costs a few
/// microseconds (tens in a debug build) and about a hundred bytes of memo, so this bounds one key
/// to a few seconds and tens of MB.
pub const SEARCH_NODES_PER_KEY_MAX: u64 = 500_000;

/// ZooKeeper's "any version" for `CondSet`.
pub const ANY_VERSION: i32 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `setData` with any version: `Ok` if the node exists, else `NoNode`.
    Set {
        value: u64,
    },
    /// `setData` with a version: `Ok` if the node exists at `expected_version` (or it is
    /// [`ANY_VERSION`]), `BadVersion` if it exists at another, `NoNode` if absent.
    CondSet {
        value: u64,
        expected_version: i32,
    },
    /// `Ok` if the node was absent (it now holds `value` at version 0), else `NodeExists`.
    Create {
        value: u64,
    },
    /// `Ok` if the node existed, else `NoNode`.
    Delete,
    Read,
}

impl Op {
    fn is_read(&self) -> bool {
        matches!(self, Op::Read)
    }

    /// The value this op writes, if it writes one.
    fn written_value(&self) -> Option<u64> {
        match *self {
            Op::Set { value } | Op::CondSet { value, .. } | Op::Create { value } => Some(value),
            Op::Delete | Op::Read => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NodeExists,
    NoNode,
    BadVersion,
    /// The result of a read: the node's value, or `None` if there is no node.
    Value(Option<u64>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub client: ClientId,
    pub key: String,
    pub op: Op,
    /// Logical (simulated) time the client sent the request.
    pub invoke: u64,
    /// Logical time and outcome of the reply; `None` if the client never learned the outcome.
    pub complete: Option<(u64, Outcome)>,
    /// For a read: the invoke time of a completed `sync` by the same client that this read
    /// follows.
    pub after_sync: Option<u64>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} {:?} invoked at {}",
            self.client, self.op, self.invoke
        )?;
        if let Some(sync) = self.after_sync {
            write!(f, " (after a sync invoked at {sync})")?;
        }
        match &self.complete {
            Some((at, outcome)) => write!(f, ", completed at {at} -> {outcome:?}"),
            None => write!(f, ", outcome unknown"),
        }
    }
}

/// The operations of a run, in the order they were invoked. Clients are sequential: a client
/// invokes its next op only after its previous one completed or was given up on.
#[derive(Clone, Debug, Default)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// Records that `client` sent `op` on `key` at `now`; returns the entry's index.
    pub fn invoke(&mut self, client: ClientId, key: impl Into<String>, op: Op, now: u64) -> usize {
        self.entries.push(Entry {
            client,
            key: key.into(),
            op,
            invoke: now,
            complete: None,
            after_sync: None,
        });
        self.entries.len() - 1
    }

    /// Records the reply to entry `idx`. Never call it for an op whose outcome is unknown.
    pub fn complete(&mut self, idx: usize, now: u64, outcome: Outcome) {
        let entry = &mut self.entries[idx];
        assert!(entry.complete.is_none(), "entry {idx} completed twice");
        assert!(
            now >= entry.invoke,
            "entry {idx} completed at {now}, before its invoke at {}",
            entry.invoke
        );
        assert_eq!(
            entry.op.is_read(),
            matches!(outcome, Outcome::Value(_)),
            "entry {idx}: outcome {outcome:?} does not fit op {:?}",
            entry.op
        );
        entry.complete = Some((now, outcome));
    }

    /// Marks read `idx` as following a sync by the same client that was invoked at
    /// `sync_invoked_at` and completed before the read was invoked.
    pub fn mark_after_sync(&mut self, idx: usize, sync_invoked_at: u64) {
        let entry = &mut self.entries[idx];
        assert!(entry.op.is_read(), "entry {idx} is not a read");
        assert!(
            sync_invoked_at <= entry.invoke,
            "entry {idx}: sync invoked at {sync_invoked_at}, after the read at {}",
            entry.invoke
        );
        entry.after_sync = Some(sync_invoked_at);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// What [`check`] covered. A key is inconclusive when its search ran out of budget: it was
/// neither passed nor failed, so a run with `inconclusive_keys > 0` proved less than it seems.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub keys: usize,
    pub inconclusive_keys: usize,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    pub reason: String,
    /// The entries the reason points at, as (index in the history, entry), by index.
    pub entries: Vec<(usize, Entry)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history violation on key {:?}: {}",
            self.key, self.reason
        )?;
        for (idx, entry) in &self.entries {
            writeln!(f, "  #{idx}: {entry}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// Checks every key of `h` with the default search budget; the first violation, by key order.
pub fn check(h: &History) -> Result<Checked, Violation> {
    check_with_budget(h, SEARCH_NODES_PER_KEY_MAX)
}

/// [`check`] with a search budget of `nodes_per_key_max` nodes per key.
pub fn check_with_budget(h: &History, nodes_per_key_max: u64) -> Result<Checked, Violation> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (idx, entry) in h.entries.iter().enumerate() {
        by_key.entry(&entry.key).or_default().push(idx);
    }
    let mut checked = Checked::default();
    for (key, idxs) in by_key {
        checked.keys += 1;
        match check_key(&h.entries, key, &idxs, nodes_per_key_max)? {
            KeyResult::Passed => {}
            KeyResult::Inconclusive => checked.inconclusive_keys += 1,
        }
    }
    Ok(checked)
}

enum KeyResult {
    Passed,
    Inconclusive,
}

/// A fixed-size set of small integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn is_subset(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}

/// rustc's Fx hash: the memo hashes a bitset per search node, and SipHash dominated the profile.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The state of one znode as far as these ops can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Reg {
    value: Option<u64>,
    /// ZooKeeper's `stat.version`; kept at 0 for keys without `CondSet`, where it cannot matter,
    /// so that more states coincide in the memo.
    version: i32,
}

const ABSENT: Reg = Reg {
    value: None,
    version: 0,
};

/// What of a `Reg` the rest of a search can depend on: values that no read returned are all
/// alike, since no read can be placed while the node holds one and writes do not look at values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Canon {
    present: bool,
    /// The value, if some read of this key returned it.
    value: Option<u64>,
    version: i32,
}

/// What `op` does to `reg`: the new state and the outcome the client gets.
fn apply(op: &Op, reg: Reg, track_versions: bool) -> (Reg, Outcome) {
    let (next, outcome) = match (op, reg.value) {
        (Op::Read, value) => (reg, Outcome::Value(value)),
        (Op::Set { .. } | Op::CondSet { .. } | Op::Delete, None) => (reg, Outcome::NoNode),
        (Op::Set { value }, Some(_)) => (set(reg, *value), Outcome::Ok),
        (
            Op::CondSet {
                value,
                expected_version,
            },
            Some(_),
        ) => {
            if *expected_version == ANY_VERSION || *expected_version == reg.version {
                (set(reg, *value), Outcome::Ok)
            } else {
                (reg, Outcome::BadVersion)
            }
        }
        (Op::Create { value }, None) => (
            Reg {
                value: Some(*value),
                version: 0,
            },
            Outcome::Ok,
        ),
        (Op::Create { .. }, Some(_)) => (reg, Outcome::NodeExists),
        (Op::Delete, Some(_)) => (ABSENT, Outcome::Ok),
    };
    let next = if track_versions {
        next
    } else {
        Reg { version: 0, ..next }
    };
    (next, outcome)
}

fn set(reg: Reg, value: u64) -> Reg {
    Reg {
        value: Some(value),
        version: reg.version.wrapping_add(1),
    }
}

/// An op that must be placed: a completed write, or a completed read.
struct Required {
    entry: usize,
    /// Dense client index, for reads; reads of one client are placed in program order.
    client: usize,
    /// Required ops that must be placed before this one.
    preds: Bits,
}

/// A write with unknown outcome: may be applied once, after its preds, or never.
struct Optional {
    entry: usize,
    /// Required ops that must be placed before this one.
    preds: Bits,
    /// Optional writes of one class have the same effect on a `Canon`, and none has successors,
    /// so once their preds are placed they are interchangeable: only how many are left counts.
    class: usize,
}

/// The ops of one key, with the order constraints among them.
struct KeyOps<'h> {
    entries: &'h [Entry],
    required: Vec<Required>,
    /// Indices into `required` of the completed writes.
    required_writes: Vec<usize>,
    optional: Vec<Optional>,
    /// Per dense client: indices into `required` of its reads, in program order.
    client_reads: Vec<Vec<usize>>,
    /// The values that completed reads of this key returned.
    read_values: HashSet<u64>,
    /// Per index into `required`, for reads: the writes that can give the node the value the
    /// read returned, as indices into `required` (successful ones only) and into `optional`.
    producers: Vec<(Vec<usize>, Vec<usize>)>,
    classes: usize,
    track_versions: bool,
}

impl<'h> KeyOps<'h> {
    fn new(entries: &'h [Entry], idxs: &[usize]) -> KeyOps<'h> {
        // Program order: each client's entries by invoke time (ties by index).
        let mut clients: BTreeMap<ClientId, Vec<usize>> = BTreeMap::new();
        for &idx in idxs {
            clients.entry(entries[idx].client).or_default().push(idx);
        }
        for list in clients.values_mut() {
            list.sort_by_key(|&idx| (entries[idx].invoke, idx));
        }
        let dense: BTreeMap<ClientId, usize> =
            clients.keys().enumerate().map(|(i, &c)| (c, i)).collect();
        // Position of each entry in its client's program order.
        let mut program_pos: HashMap<usize, usize> = HashMap::new();
        for list in clients.values() {
            for (pos, &idx) in list.iter().enumerate() {
                program_pos.insert(idx, pos);
            }
        }

        let mut ordered: Vec<usize> = idxs.to_vec();
        ordered.sort_by_key(|&idx| (entries[idx].invoke, idx));
        let mut required = Vec::new();
        let mut required_writes = Vec::new();
        let mut optional_entries = Vec::new();
        let mut client_reads = vec![Vec::new(); clients.len()];
        for &idx in &ordered {
            let e = &entries[idx];
            match (&e.complete, e.op.is_read()) {
                (None, true) => {}
                (None, false) => optional_entries.push(idx),
                (Some(_), is_read) => {
                    let client = dense[&e.client];
                    if is_read {
                        client_reads[client].push(required.len());
                    } else {
                        required_writes.push(required.len());
                    }
                    required.push(Required {
                        entry: idx,
                        client,
                        preds: Bits::new(0),
                    });
                }
            }
        }
        let completed_at = |idx: usize| entries[idx].complete.as_ref().map(|(at, _)| *at);
        let same_client_before = |a: usize, b: usize| {
            entries[a].client == entries[b].client && program_pos[&a] < program_pos[&b]
        };
        // The required ops `x` must follow.
        let preds_of = |x: usize| {
            let ex = &entries[x];
            let mut preds = Bits::new(required.len());
            for (i, y) in required.iter().enumerate() {
                let y = y.entry;
                let ey = &entries[y];
                let must_precede = if same_client_before(y, x) {
                    // FIFO client order; for a read this is read-your-writes and monotonic reads.
                    true
                } else if ex.op.is_read() {
                    // After a sync, a read sees every write completed before the sync began.
                    ex.after_sync
                        .is_some_and(|sync| !ey.op.is_read() && completed_at(y).unwrap() < sync)
                } else {
                    // Real time for writes; for reads, a read does not see later-invoked writes.
                    completed_at(y).unwrap() < ex.invoke
                };
                if must_precede {
                    preds.set(i);
                }
            }
            preds
        };
        let preds: Vec<Bits> = required.iter().map(|r| preds_of(r.entry)).collect();
        let track_versions = idxs
            .iter()
            .any(|&idx| matches!(entries[idx].op, Op::CondSet { .. }));
        let read_values: HashSet<u64> = required
            .iter()
            .filter_map(|r| match &entries[r.entry].complete {
                Some((_, Outcome::Value(value))) => *value,
                _ => None,
            })
            .collect();
        let mut classes: BTreeMap<(u8, Option<u64>, i32), usize> = BTreeMap::new();
        let optional: Vec<Optional> = optional_entries
            .into_iter()
            .filter(|&entry| {
                // Without versions, overwriting a value with one no read returned only removes
                // choices (see `Search::run`), so such a write is never worth applying.
                track_versions
                    || !matches!(entries[entry].op, Op::Set { value } if !read_values.contains(&value))
            })
            .map(|entry| {
                let value = entries[entry].op.written_value();
                let seen = value.filter(|v| read_values.contains(v));
                let class_key = match entries[entry].op {
                    Op::Set { .. } => (0, seen, 0),
                    Op::CondSet {
                        expected_version, ..
                    } => (1, seen, expected_version),
                    Op::Create { .. } => (2, seen, 0),
                    Op::Delete => (3, None, 0),
                    Op::Read => unreachable!("reads are never optional writes"),
                };
                let next = classes.len();
                Optional {
                    entry,
                    preds: preds_of(entry),
                    class: *classes.entry(class_key).or_insert(next),
                }
            })
            .collect();
        for (r, p) in required.iter_mut().zip(preds) {
            r.preds = p;
        }
        let mut producers: HashMap<Option<u64>, (Vec<usize>, Vec<usize>)> = HashMap::new();
        let produces = |entry: usize| match entries[entry].op {
            Op::Delete => Some(None),
            ref op => op
                .written_value()
                .filter(|v| read_values.contains(v))
                .map(Some),
        };
        for (i, r) in required.iter().enumerate() {
            let succeeded = matches!(entries[r.entry].complete, Some((_, Outcome::Ok)));
            if let Some(value) = produces(r.entry).filter(|_| succeeded) {
                producers.entry(value).or_default().0.push(i);
            }
        }
        for (j, w) in optional.iter().enumerate() {
            if let Some(value) = produces(w.entry) {
                producers.entry(value).or_default().1.push(j);
            }
        }
        let producers = required
            .iter()
            .map(|r| match &entries[r.entry].complete {
                Some((_, Outcome::Value(value))) => {
                    producers.get(value).cloned().unwrap_or_default()
                }
                _ => Default::default(),
            })
            .collect();
        KeyOps {
            producers,
            classes: classes.len(),
            entries,
            required,
            required_writes,
            optional,
            client_reads,
            read_values,
            track_versions,
        }
    }

    fn canon(&self, reg: Reg) -> Canon {
        Canon {
            present: reg.value.is_some(),
            value: reg.value.filter(|v| self.read_values.contains(v)),
            version: reg.version,
        }
    }

    fn op(&self, entry: usize) -> &'h Op {
        &self.entries[entry].op
    }

    fn outcome(&self, entry: usize) -> &'h Outcome {
        &self.entries[entry].complete.as_ref().unwrap().1
    }

    fn read_value(&self, entry: usize) -> Option<u64> {
        match self.outcome(entry) {
            Outcome::Value(value) => *value,
            other => panic!("read entry {entry} has outcome {other:?}"),
        }
    }
}

/// A point in the search: which ops are placed and what the znode holds.
#[derive(Clone)]
struct Node {
    /// Placed required ops.
    done: Bits,
    done_count: usize,
    /// Applied optional writes.
    used: Bits,
    reg: Reg,
    /// Per dense client: how many of its reads are placed.
    reads_placed: Vec<usize>,
    /// The last write applied, to explain the state in a report.
    last_write: Option<usize>,
}

struct OutOfBudget;

struct Search<'k, 'h> {
    k: &'k KeyOps<'h>,
    /// (placed required ops, state up to unread values) -> for each time it was explored and
    /// failed, how many optional writes of each class were still available.
    failed: HashMap<(Bits, Canon), Vec<Vec<u32>>, BuildHasherDefault<FxHasher>>,
    nodes: u64,
    nodes_max: u64,
    /// The node that placed the most required ops, for the report.
    furthest: Option<Node>,
}

impl Search<'_, '_> {
    fn run(&mut self, mut node: Node) -> Result<bool, OutOfBudget> {
        let k = self.k;
        self.place_reads(&mut node);
        if node.done_count == self.k.required.len() {
            return Ok(true);
        }
        if self
            .furthest
            .as_ref()
            .is_none_or(|f| node.done_count > f.done_count)
        {
            self.furthest = Some(node.clone());
        }
        if self.doomed_read(&node) {
            return Ok(false);
        }
        let memo_key = (node.done.clone(), k.canon(node.reg));
        let mut available = vec![0; k.classes];
        for (j, w) in k.optional.iter().enumerate() {
            if !node.used.get(j) && w.preds.is_subset(&node.done) {
                available[w.class] += 1;
            }
        }
        if let Some(failed) = self.failed.get(&memo_key) {
            // More optional writes available means more choices, never fewer.
            let covered = |f: &Vec<u32>| available.iter().zip(f).all(|(a, f)| a <= f);
            if failed.iter().any(covered) {
                return Ok(false);
            }
        }
        self.nodes += 1;
        if self.nodes > self.nodes_max {
            return Err(OutOfBudget);
        }
        for &i in &k.required_writes {
            let w = &k.required[i];
            if node.done.get(i) || !w.preds.is_subset(&node.done) {
                continue;
            }
            let (reg, outcome) = apply(k.op(w.entry), node.reg, k.track_versions);
            if outcome != *k.outcome(w.entry) {
                continue;
            }
            let mut child = node.clone();
            child.done.set(i);
            child.done_count += 1;
            child.reg = reg;
            child.last_write = Some(w.entry);
            if self.run(child)? {
                return Ok(true);
            }
        }
        let mut class_tried = vec![false; k.classes];
        for (j, w) in k.optional.iter().enumerate() {
            if node.used.get(j) || !w.preds.is_subset(&node.done) || class_tried[w.class] {
                continue;
            }
            class_tried[w.class] = true;
            let (reg, _) = apply(k.op(w.entry), node.reg, k.track_versions);
            let (before, after) = (k.canon(node.reg), k.canon(reg));
            if after == before {
                // A write that fails or changes nothing visible is the same as one never applied.
                continue;
            }
            if !k.track_versions && before.present && after.present && after.value.is_none() {
                // Replacing a value with one no read returns only removes choices: without
                // versions, outcomes depend on presence alone.
                continue;
            }
            let mut child = node.clone();
            child.used.set(j);
            child.reg = reg;
            child.last_write = Some(w.entry);
            if self.run(child)? {
                return Ok(true);
            }
        }
        self.failed.entry(memo_key).or_default().push(available);
        Ok(false)
    }

    /// Whether some client's next read returned a value the node does not hold and no remaining
    /// write can give it.
    fn doomed_read(&self, node: &Node) -> bool {
        let k = self.k;
        k.client_reads
            .iter()
            .zip(&node.reads_placed)
            .flat_map(|(reads, &placed)| &reads[placed..])
            .any(|&i| {
                let value = k.read_value(k.required[i].entry);
                if value == node.reg.value {
                    return false;
                }
                let (required, optional) = &k.producers[i];
                required.iter().all(|&w| node.done.get(w))
                    && optional.iter().all(|&w| node.used.get(w))
            })
    }

    /// Places every read that can be placed now. Placing a read as early as possible loses no
    /// solution: reads change no state, and an earlier view only loosens what must follow it.
    /// Reads never wait on other clients' reads, so one pass suffices.
    fn place_reads(&self, node: &mut Node) {
        for (client, reads) in self.k.client_reads.iter().enumerate() {
            while let Some(&i) = reads.get(node.reads_placed[client]) {
                let r = &self.k.required[i];
                if !r.preds.is_subset(&node.done) || self.k.read_value(r.entry) != node.reg.value {
                    break;
                }
                node.done.set(i);
                node.done_count += 1;
                node.reads_placed[client] += 1;
            }
        }
    }
}

fn check_key(
    entries: &[Entry],
    key: &str,
    idxs: &[usize],
    nodes_max: u64,
) -> Result<KeyResult, Violation> {
    let k = KeyOps::new(entries, idxs);
    precheck_reads(&k, key)?;
    let start = Node {
        done: Bits::new(k.required.len()),
        done_count: 0,
        used: Bits::new(k.optional.len()),
        reg: ABSENT,
        reads_placed: vec![0; k.client_reads.len()],
        last_write: None,
    };
    let mut search = Search {
        k: &k,
        failed: HashMap::default(),
        nodes: 0,
        nodes_max,
        furthest: None,
    };
    match search.run(start) {
        Ok(true) => Ok(KeyResult::Passed),
        Err(OutOfBudget) => Ok(KeyResult::Inconclusive),
        Ok(false) => {
            let furthest = search.furthest.expect("a failed search visited a node");
            Err(explain(&k, key, &furthest))
        }
    }
}

/// Cheap, precise reports for reads that no order could explain.
fn precheck_reads(k: &KeyOps<'_>, key: &str) -> Result<(), Violation> {
    for r in &k.required {
        let e = &k.entries[r.entry];
        let Some(value) = (match &e.complete {
            Some((_, Outcome::Value(value))) if e.op.is_read() => *value,
            _ => None,
        }) else {
            continue;
        };
        let (read_done, _) = e.complete.as_ref().unwrap();
        let writers: Vec<usize> = k
            .required
            .iter()
            .map(|w| w.entry)
            .chain(k.optional.iter().map(|w| w.entry))
            .filter(|&w| k.op(w).written_value() == Some(value))
            .collect();
        let reason = if writers.is_empty() {
            format!("a read returned {value}, which no write to this key wrote")
        } else if writers.iter().all(|&w| {
            let ew = &k.entries[w];
            ew.invoke > *read_done || (ew.client == e.client && ew.invoke >= e.invoke)
        }) {
            format!("a read returned {value}, written only by writes invoked after it completed")
        } else {
            continue;
        };
        let mut listed = vec![r.entry];
        listed.extend(writers);
        return Err(violation(k, key, reason, listed));
    }
    Ok(())
}

/// Describes why the search got stuck at `node`, its furthest point.
fn explain(k: &KeyOps<'_>, key: &str, node: &Node) -> Violation {
    let mut listed = Vec::new();
    let mut lines = Vec::new();
    if let Some(w) = node.last_write {
        listed.push(w);
    }
    for (i, r) in k.required.iter().enumerate() {
        if node.done.get(i) || !r.preds.is_subset(&node.done) {
            continue;
        }
        let e = &k.entries[r.entry];
        if e.op.is_read() {
            // Only the client's next read can be placed at all.
            if k.client_reads[r.client][node.reads_placed[r.client]] != i {
                continue;
            }
            lines.push(format!(
                "#{} read {:?} but the node holds {:?} here",
                r.entry,
                k.read_value(r.entry),
                node.reg.value
            ));
        } else {
            let (_, would) = apply(&e.op, node.reg, k.track_versions);
            lines.push(format!(
                "#{} reported {:?} but would get {:?} here",
                r.entry,
                k.outcome(r.entry),
                would
            ));
        }
        listed.push(r.entry);
    }
    let version = if k.track_versions {
        format!(" at version {}", node.reg.version)
    } else {
        String::new()
    };
    let reason = format!(
        "no order of the writes explains the history; the furthest attempt placed {} of {} \
         completed operations, leaving the node at {:?}{version}, where none of the remaining \
         ones fits: {}",
        node.done_count,
        k.required.len(),
        node.reg.value,
        lines.join("; ")
    );
    violation(k, key, reason, listed)
}

fn violation(k: &KeyOps<'_>, key: &str, reason: String, mut listed: Vec<usize>) -> Violation {
    listed.sort_unstable();
    listed.dedup();
    Violation {
        key: key.to_string(),
        reason,
        entries: listed
            .into_iter()
            .map(|idx| (idx, k.entries[idx].clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "/k";

    /// Adds a completed op on `K`.
    fn op(
        h: &mut History,
        client: ClientId,
        op: Op,
        invoke: u64,
        done: u64,
        out: Outcome,
    ) -> usize {
        let idx = h.invoke(client, K, op, invoke);
        h.complete(idx, done, out);
        idx
    }

    fn read(
        h: &mut History,
        client: ClientId,
        invoke: u64,
        done: u64,
        value: Option<u64>,
    ) -> usize {
        op(h, client, Op::Read, invoke, done, Outcome::Value(value))
    }

    fn create(h: &mut History, client: ClientId, value: u64, invoke: u64, done: u64) -> usize {
        op(h, client, Op::Create { value }, invoke, done, Outcome::Ok)
    }

    fn set(h: &mut History, client: ClientId, value: u64, invoke: u64, done: u64) -> usize {
        op(h, client, Op::Set { value }, invoke, done, Outcome::Ok)
    }

    fn passes(h: &History) {
        let checked = check(h).unwrap_or_else(|v| panic!("unexpected violation:\n{v}"));
        assert_eq!(checked.inconclusive_keys, 0, "inconclusive: {checked:?}");
    }

    fn fails(h: &History) -> Violation {
        match check(h) {
            Ok(checked) => panic!("expected a violation, got {checked:?}"),
            Err(v) => v,
        }
    }

    #[test]
    fn sequential_history_passes() {
        // A history with no concurrency that follows the register's semantics passes.
        let mut h = History::default();
        read(&mut h, 0, 1, 2, None);
        create(&mut h, 0, 1, 3, 4);
        op(
            &mut h,
            1,
            Op::Create { value: 9 },
            5,
            6,
            Outcome::NodeExists,
        );
        read(&mut h, 1, 7, 8, Some(1));
        set(&mut h, 1, 2, 9, 10);
        read(&mut h, 0, 11, 12, Some(2));
        op(&mut h, 0, Op::Delete, 13, 14, Outcome::Ok);
        op(&mut h, 1, Op::Delete, 15, 16, Outcome::NoNode);
        op(&mut h, 1, Op::Set { value: 3 }, 17, 18, Outcome::NoNode);
        read(&mut h, 1, 19, 20, None);
        h.invoke(2, "/other", Op::Create { value: 5 }, 21);
        passes(&h);
        assert!(!h.is_empty());
        assert_eq!(check(&h).unwrap().keys, 2);
    }

    #[test]
    fn concurrent_writes_pass_in_either_order() {
        // Overlapping writes may take effect in either order; a synced read may show either.
        for last in [2, 3] {
            let mut h = History::default();
            create(&mut h, 0, 1, 1, 2);
            set(&mut h, 1, 2, 3, 10);
            set(&mut h, 2, 3, 4, 9);
            let r = read(&mut h, 0, 12, 13, Some(last));
            h.mark_after_sync(r, 11);
            passes(&h);
        }
    }

    #[test]
    fn stale_read_after_own_write_fails() {
        // Read-your-writes: a client's read must reflect its own earlier completed write.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        set(&mut h, 1, 2, 3, 4);
        read(&mut h, 1, 5, 6, Some(1));
        fails(&h);
    }

    #[test]
    fn read_going_backwards_fails() {
        // Monotonic reads: a client that saw v2 cannot later see v1.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        set(&mut h, 0, 2, 3, 4);
        read(&mut h, 1, 5, 6, Some(2));
        read(&mut h, 1, 7, 8, Some(1));
        fails(&h);
        // The opposite order is fine: a lagging follower catching up.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        set(&mut h, 0, 2, 3, 4);
        read(&mut h, 1, 5, 6, Some(1));
        read(&mut h, 1, 7, 8, Some(2));
        passes(&h);
    }

    #[test]
    fn read_of_value_never_written_fails() {
        // A read can only return a value some write wrote.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        read(&mut h, 1, 3, 4, Some(7));
        let v = fails(&h);
        assert!(v.reason.contains("no write"), "{v}");
    }

    #[test]
    fn read_of_future_write_fails() {
        // A read cannot reflect a write invoked after the read completed.
        let mut h = History::default();
        read(&mut h, 1, 1, 2, Some(5));
        create(&mut h, 0, 5, 3, 4);
        let v = fails(&h);
        assert!(v.reason.contains("after it completed"), "{v}");
        // Also when the value itself was written before, but the state (present) came later.
        let mut h = History::default();
        create(&mut h, 0, 5, 1, 2);
        op(&mut h, 0, Op::Delete, 3, 4, Outcome::Ok);
        let r = read(&mut h, 1, 5, 6, None);
        h.mark_after_sync(r, 5);
        read(&mut h, 1, 7, 8, Some(5));
        fails(&h);
    }

    #[test]
    fn synced_read_missing_completed_write_fails_unsynced_passes() {
        // A read after sync must see every write completed before the sync; without sync a
        // follower may lag.
        let build = |synced: bool| {
            let mut h = History::default();
            create(&mut h, 0, 1, 1, 2);
            set(&mut h, 0, 2, 3, 4);
            let r = read(&mut h, 1, 7, 8, Some(1));
            if synced {
                h.mark_after_sync(r, 5);
            }
            h
        };
        fails(&build(true));
        passes(&build(false));
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        // A write acknowledged Ok must not vanish: a later synced read by anyone must see it.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        set(&mut h, 0, 2, 3, 4);
        let r = read(&mut h, 1, 7, 8, Some(1));
        h.mark_after_sync(r, 5);
        let v = fails(&h);
        assert!(v.entries.iter().any(|(idx, _)| *idx == r), "{v}");
    }

    #[test]
    fn unknown_write_may_or_may_not_appear() {
        // A write with unknown outcome may have taken effect or not; both histories pass.
        for seen in [Some(1), Some(2)] {
            let mut h = History::default();
            create(&mut h, 0, 1, 1, 2);
            h.invoke(0, K, Op::Set { value: 2 }, 3);
            let r = read(&mut h, 1, 10, 11, seen);
            h.mark_after_sync(r, 9);
            read(&mut h, 1, 12, 13, seen);
            passes(&h);
        }
        // But once seen, it stays for that client.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        h.invoke(0, K, Op::Set { value: 2 }, 3);
        read(&mut h, 1, 10, 11, Some(2));
        read(&mut h, 1, 12, 13, Some(1));
        fails(&h);
        // And an unknown read constrains nothing.
        let mut h = History::default();
        h.invoke(1, K, Op::Read, 0);
        create(&mut h, 0, 1, 1, 2);
        passes(&h);
    }

    #[test]
    fn double_create_fails() {
        // Two Creates of one node cannot both succeed without a Delete between them.
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 5);
        create(&mut h, 1, 2, 2, 6);
        fails(&h);
        // With an unknown Delete concurrent with them it can.
        h.invoke(2, K, Op::Delete, 3);
        passes(&h);
    }

    #[test]
    fn cond_set_follows_versions() {
        // CondSet succeeds only at the expected version, counted from the node's creation.
        let cond = |value, expected_version| Op::CondSet {
            value,
            expected_version,
        };
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        op(&mut h, 0, cond(2, 0), 3, 4, Outcome::Ok);
        op(&mut h, 1, cond(3, 0), 5, 6, Outcome::BadVersion);
        op(&mut h, 1, cond(3, 1), 7, 8, Outcome::Ok);
        op(&mut h, 1, cond(4, ANY_VERSION), 9, 10, Outcome::Ok);
        passes(&h);
        let mut h = History::default();
        create(&mut h, 0, 1, 1, 2);
        op(&mut h, 0, cond(2, 0), 3, 4, Outcome::Ok);
        op(&mut h, 1, cond(3, 0), 5, 6, Outcome::Ok);
        fails(&h);
    }

    /// splitmix64: a tiny deterministic generator, so the tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A history of one key produced by a correct system: writes take effect at a point inside
    /// their interval on a sequential register; each read returns the state after a prefix of
    /// the writes chosen between its lower bounds and its own linearization point, the way a
    /// follower that lags but respects the guarantees would.
    fn generate(seed: u64, clients: usize, ops_per_client: usize, unknown_percent: u64) -> History {
        struct Gen {
            client: ClientId,
            op: Op,
            invoke: u64,
            /// Linearization point, ties broken at random.
            lin: (u64, u64),
            complete: Option<u64>,
            applied: bool,
            after_sync: Option<u64>,
        }
        let mut rng = Rng(seed);
        let mut next_value = 1;
        let mut ops = Vec::new();
        for client in 0..clients {
            let mut t = rng.below(10);
            for _ in 0..ops_per_client {
                let op = match rng.below(10) {
                    0..=3 => Op::Read,
                    4 | 5 => Op::Set { value: next_value },
                    6 => Op::CondSet {
                        value: next_value,
                        expected_version: rng.below(3) as i32 - 1,
                    },
                    7 | 8 => Op::Create { value: next_value },
                    _ => Op::Delete,
                };
                next_value += 1;
                let after_sync = (op.is_read() && rng.chance(30)).then(|| {
                    t += 1;
                    t
                });
                let invoke = t + 1 + rng.below(5);
                let complete = invoke + 2 + rng.below(30);
                let lin = invoke + 1 + rng.below(complete - invoke - 1);
                let unknown = rng.chance(unknown_percent);
                ops.push(Gen {
                    client,
                    op,
                    invoke,
                    lin: (lin, rng.next()),
                    complete: (!unknown).then_some(complete),
                    applied: !unknown || rng.chance(50),
                    after_sync,
                });
                t = complete;
            }
        }
        // Apply the writes in linearization order.
        let mut order: Vec<usize> = (0..ops.len())
            .filter(|&i| !ops[i].op.is_read() && ops[i].applied)
            .collect();
        order.sort_by_key(|&i| ops[i].lin);
        let mut states = vec![ABSENT];
        let mut position = vec![usize::MAX; ops.len()];
        let mut outcomes: Vec<Option<Outcome>> = vec![None; ops.len()];
        for (pos, &i) in order.iter().enumerate() {
            let (next, outcome) = apply(&ops[i].op, states[pos], true);
            states.push(next);
            position[i] = pos + 1;
            outcomes[i] = Some(outcome);
        }
        // Choose each read's view, client by client in program order.
        for client in 0..clients {
            let mut view = 0;
            let mut own_writes_view = 0;
            for i in (0..ops.len()).filter(|&i| ops[i].client == client) {
                let o = &ops[i];
                if !o.op.is_read() {
                    if o.complete.is_some() {
                        own_writes_view = own_writes_view.max(position[i]);
                    }
                    continue;
                }
                let lin_view = order.iter().filter(|&&w| ops[w].lin < o.lin).count();
                let sync_view = o.after_sync.map_or(0, |sync| {
                    order
                        .iter()
                        .filter(|&&w| ops[w].complete.is_some_and(|c| c < sync))
                        .map(|&w| position[w])
                        .max()
                        .unwrap_or(0)
                });
                let low = view.max(own_writes_view).max(sync_view);
                assert!(low <= lin_view, "generator: bounds {low} > {lin_view}");
                view = low + rng.below((lin_view - low + 1) as u64) as usize;
                outcomes[i] = Some(Outcome::Value(states[view].value));
            }
        }
        let mut by_invoke: Vec<usize> = (0..ops.len()).collect();
        by_invoke.sort_by_key(|&i| (ops[i].invoke, i));
        let mut h = History::default();
        for i in by_invoke {
            let o = &ops[i];
            let idx = h.invoke(o.client, K, o.op.clone(), o.invoke);
            if let Some(done) = o.complete {
                h.complete(idx, done, outcomes[i].clone().unwrap());
            }
            if let Some(sync) = o.after_sync {
                h.mark_after_sync(idx, sync);
            }
        }
        h
    }

    #[test]
    fn generated_correct_histories_pass_and_corrupted_reads_fail() {
        // Histories from a correct model always pass; a read corrupted to a value no write wrote
        // always fails, and other corruptions mostly do.
        let mut caught = 0;
        let mut corrupted = 0;
        for seed in 0..300 {
            let h = generate(seed, 2 + (seed % 5) as usize, 4 + (seed % 7) as usize, 8);
            if let Err(v) = check(&h) {
                panic!("seed {seed}: correct history rejected:\n{v}");
            }
            let reads: Vec<usize> = (0..h.len())
                .filter(|&i| matches!(h.entries()[i].complete, Some((_, Outcome::Value(_)))))
                .collect();
            if reads.is_empty() {
                continue;
            }
            let mut rng = Rng(seed ^ 0xdead_beef);
            let target = reads[rng.below(reads.len() as u64) as usize];
            let mut bad = h.clone();
            let done = bad.entries[target].complete.as_ref().unwrap().0;
            bad.entries[target].complete = Some((done, Outcome::Value(Some(u64::MAX))));
            assert!(
                check(&bad).is_err(),
                "seed {seed}: unwritten value accepted"
            );
            // Swap the read for another value from the same history.
            let mut other = h.clone();
            let before = other.entries[target].complete.clone().unwrap();
            let replacement = if before.1 == Outcome::Value(None) {
                Some(seed)
            } else {
                None
            };
            other.entries[target].complete = Some((done, Outcome::Value(replacement)));
            corrupted += 1;
            if check(&other).is_err() {
                caught += 1;
            }
        }
        assert!(
            caught * 4 >= corrupted,
            "caught only {caught} of {corrupted}"
        );
    }

    #[test]
    fn twelve_clients_twenty_ops_is_fast() {
        // 12 heavily overlapping clients × 20 ops on one key check without blowing up: passing
        // histories, and failing ones whose fault is at the very end, which makes the search try
        // every order of everything before.
        for seed in 0..3 {
            let h = generate(1000 + seed, 12, 20, 8);
            passes(&h);
            // No unknown outcomes, so nothing can explain two creates after a delete.
            let mut h = generate(2000 + seed, 12, 20, 0);
            passes(&h);
            let end = h
                .entries
                .iter()
                .filter_map(|e| e.complete.as_ref())
                .map(|c| c.0)
                .max();
            let end = end.unwrap() + 10;
            op(&mut h, 12, Op::Delete, end, end + 1, Outcome::Ok);
            create(&mut h, 12, 1, end + 2, end + 3);
            create(&mut h, 13, 2, end + 4, end + 5);
            fails(&h);
        }
    }
}
