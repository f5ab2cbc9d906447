//! The journal: the last steps of every object of every flow, in one ring of fixed size, from
//! which an object's timeline is rebuilt when someone asks (`GET /api/objects/{key}`).
//!
//! The rule it keeps: its memory is fixed in bytes, whatever the number of objects in flight.
//! A timeline kept per object would grow the 56-byte object state for every one of a million
//! objects to serve the few anybody looks at; instead each step costs one 32-byte entry in a
//! ring shared by all (the object named by a 64-bit hash of its key, the flow by a small
//! interned id), and a timeline is a scan of the ring. An object whose early steps have been
//! overwritten gets the steps that remain, marked as cut.

use super::key::ObjectKey;
use crate::model::StateId;
use std::hash::{Hash, Hasher};

/// Entries kept by default: 2 MiB, a few seconds of steps at full intake speed, hours at a
/// quiet one.
pub const DEFAULT_ENTRIES: usize = 65_536;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// First seen, in `to`.
    Entered,
    /// Moved from `from` to `to` (`to` may be final: its end).
    Moved,
    /// An alert fired while in `to` (risk: the artifact's).
    Alert,
    /// The firing alert resolved while in `to`.
    Resolved,
    /// Evicted in `to`: not seen for its flow's `expire` time.
    Expired,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Entered => "entered",
            Step::Moved => "moved",
            Step::Alert => "alert",
            Step::Resolved => "resolved",
            Step::Expired => "expired",
        }
    }
}

/// One step, 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub key_hash: u64,
    pub at_ms: i64,
    /// The probability the model gave this step before it was learned (NaN: none, e.g. the
    /// first sighting).
    pub probability: f32,
    /// The worst artifact's risk just after the step (NaN at an end).
    pub risk: f32,
    pub flow: u16,
    pub from: StateId,
    pub to: StateId,
    pub step: Step,
}

pub struct Journal {
    entries: Vec<Entry>,
    capacity: usize,
    /// Where the next entry goes once the ring is full.
    next: usize,
    /// Flow names by id: a reload may reorder the engine's flows, names stay.
    flows: Vec<String>,
}

/// The hash that names an object in the journal (fixed keys: the same in every run).
pub fn key_hash(key: &ObjectKey) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        let capacity = capacity.max(1);
        Journal {
            // Allocated once, exactly: its memory is what `bytes` says from the start.
            entries: Vec::with_capacity(capacity),
            capacity,
            next: 0,
            flows: Vec::new(),
        }
    }

    /// Bytes held (entries and flow names), for BENCHMARKS.md and the memory tests.
    pub fn bytes(&self) -> usize {
        self.capacity * std::mem::size_of::<Entry>()
            + self.flows.iter().map(|f| f.len() + 24).sum::<usize>()
    }

    /// The id of a flow name, interned on first use. Flows are few: a linear look.
    pub fn flow_id(&mut self, name: &str) -> u16 {
        if let Some(i) = self.flows.iter().position(|f| f == name) {
            return i as u16;
        }
        // More distinct names than ids over a service's life: start the table again (the
        // entries naming the old ids are then read as nobody's, which only shortens timelines).
        if self.flows.len() >= u16::MAX as usize {
            self.flows.clear();
            self.entries.clear();
            self.next = 0;
        }
        self.flows.push(name.to_string());
        (self.flows.len() - 1) as u16
    }

    pub fn push(&mut self, e: Entry) {
        if self.entries.len() < self.capacity {
            self.entries.push(e);
        } else {
            self.entries[self.next] = e;
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// The steps kept for one object of one flow, oldest first, and whether earlier ones are
    /// missing (its first sighting is not among them).
    pub fn timeline(&self, flow: &str, key: &ObjectKey) -> (Vec<Entry>, bool) {
        let Some(fid) = self.flows.iter().position(|f| f == flow) else {
            return (Vec::new(), true);
        };
        let h = key_hash(key);
        let (newer, older) = self.entries.split_at(self.next.min(self.entries.len()));
        let mut steps: Vec<Entry> = older
            .iter()
            .chain(newer)
            .filter(|e| e.key_hash == h && e.flow as usize == fid)
            .copied()
            .collect();
        // An alert is journaled while its step is being applied, before the step itself: at
        // one time, steps come first (a stable sort keeps the rest in ring order).
        steps.sort_by_key(|e| (e.at_ms, e.step as u8));
        // A new life of the same key starts at its last sighting. Without one, earlier steps
        // were overwritten, or happened before the journal began (a restart).
        match steps.iter().rposition(|e| e.step == Step::Entered) {
            Some(start) => (steps[start..].to_vec(), false),
            None => (steps, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step at a time of its own (the order pushed).
    fn entry(key: &str, step: Step, to: StateId) -> Entry {
        use std::sync::atomic::{AtomicI64, Ordering};
        static T: AtomicI64 = AtomicI64::new(0);
        Entry {
            key_hash: key_hash(&ObjectKey::parse(key)),
            at_ms: T.fetch_add(1, Ordering::Relaxed),
            probability: f32::NAN,
            risk: 0.0,
            flow: 0,
            from: 0,
            to,
            step,
        }
    }

    #[test]
    fn an_alert_journaled_before_its_step_is_listed_after_it() {
        let mut j = Journal::new(8);
        j.flow_id("f");
        let mut alert = entry("a", Step::Alert, 1);
        let mut moved = entry("a", Step::Entered, 1);
        alert.at_ms = 5;
        moved.at_ms = 5;
        j.push(alert);
        j.push(moved);
        let (steps, _) = j.timeline("f", &ObjectKey::parse("a"));
        assert_eq!(
            steps.iter().map(|e| e.step).collect::<Vec<_>>(),
            [Step::Entered, Step::Alert]
        );
    }

    #[test]
    fn an_entry_is_32_bytes_and_the_ring_never_grows_past_its_capacity() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        let mut j = Journal::new(100);
        j.flow_id("f");
        for i in 0..1000 {
            j.push(entry(&i.to_string(), Step::Entered, 0));
        }
        assert_eq!(j.entries.len(), 100);
        assert_eq!(j.entries.capacity(), 100);
        assert_eq!(j.bytes(), 100 * 32 + 1 + 24);
    }

    #[test]
    fn a_timeline_is_the_objects_own_steps_in_order_and_says_when_it_was_cut() {
        let mut j = Journal::new(4);
        let f = j.flow_id("f");
        assert_eq!(f, 0);
        j.push(entry("a", Step::Entered, 1));
        j.push(entry("b", Step::Entered, 1));
        j.push(entry("a", Step::Moved, 2));
        let (steps, cut) = j.timeline("f", &ObjectKey::parse("a"));
        assert_eq!(steps.iter().map(|e| e.to).collect::<Vec<_>>(), [1, 2]);
        assert!(!cut);
        // Two more: the ring wraps and a's first sighting is overwritten.
        j.push(entry("a", Step::Moved, 3));
        j.push(entry("b", Step::Moved, 2));
        let (steps, cut) = j.timeline("f", &ObjectKey::parse("a"));
        assert_eq!(steps.iter().map(|e| e.to).collect::<Vec<_>>(), [2, 3]);
        assert!(cut);
        assert_eq!(j.timeline("other", &ObjectKey::parse("a")), (vec![], true));
    }

    #[test]
    fn a_key_seen_again_shows_only_its_latest_life() {
        let mut j = Journal::new(16);
        j.flow_id("f");
        j.push(entry("a", Step::Entered, 1));
        j.push(entry("a", Step::Moved, 5));
        j.push(entry("a", Step::Entered, 1));
        let (steps, cut) = j.timeline("f", &ObjectKey::parse("a"));
        assert_eq!(steps.len(), 1);
        assert!(!cut);
    }
}
