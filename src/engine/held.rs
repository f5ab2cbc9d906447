//! `learn { from success }`: an object's steps are held until it ends, and learned only if it
//! ends in a success (issue 12, item 3), so that failures do not teach the model that
//! failures are normal and the surprise of a failing path stays high.
//!
//! A held step keeps what learning it later needs: the transition, its dwell, when it
//! happened (learned then with the weight it would have had, as a shard's delta is), the past
//! the model read, and the surprise it scored for the calibration. The mixture's losses are
//! scored when the step is released, against the model as it is then (the object's earlier
//! steps already in, as they would be in order). Each object holds at most `MAX_HELD` entries
//! (64 bytes each, 4 KB per object); one that takes more steps stops teaching for the rest of
//! its life, since learning only the end of its path would teach a path nobody took.

use super::key::ObjectKey;
use super::markov::{self, FlowModel, Past};
use crate::model::{CompiledFlow, StateId};
use serde::{Deserialize, Serialize};

/// Entries one object may hold.
pub const MAX_HELD: usize = 64;

/// One held entry: a step to learn, or a scored step's surprise for the calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Held {
    Step(HeldStep),
    Surprise { step: u8, window: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldStep {
    pub from: StateId,
    pub to: StateId,
    /// The states before `from`, most recent last, `markov::NONE` where unknown.
    pub history: [StateId; 3],
    pub last_dwell: u8,
    pub prev_dwell: u8,
    pub dwell_ms: i64,
    /// The model's clock when the step happened.
    pub at_ms: i64,
    pub entered_ms: i64,
    pub age_ms: i64,
    pub visited: u64,
}

impl HeldStep {
    pub fn new(past: Past<'_>, from: StateId, to: StateId, dwell_ms: i64, at_ms: i64) -> Self {
        let mut history = [markov::NONE; 3];
        let len = past.history.len().min(3);
        history[3 - len..].copy_from_slice(&past.history[past.history.len() - len..]);
        HeldStep {
            from,
            to,
            history,
            last_dwell: past.last_dwell,
            prev_dwell: past.prev_dwell,
            dwell_ms,
            at_ms,
            entered_ms: past.entered_ms,
            age_ms: past.age_ms,
            visited: past.visited,
        }
    }

    fn past(&self) -> Past<'_> {
        let start = self
            .history
            .iter()
            .position(|&s| s != markov::NONE)
            .unwrap_or(3);
        Past {
            history: &self.history[start..],
            last_dwell: self.last_dwell,
            entered_ms: self.entered_ms,
            prev_dwell: self.prev_dwell,
            age_ms: self.age_ms,
            visited: self.visited,
        }
    }
}

/// Learns what an object that ended in a success held, in order.
pub fn release(model: &mut FlowModel, held: &[Held], min_learned: u64) {
    for h in held {
        match h {
            Held::Step(s) => model.observe_at(s.past(), s.from, s.to, s.dwell_ms, s.at_ms),
            Held::Surprise { step, window } => model.record_surprise(min_learned, *step, *window),
        }
    }
}

/// Held entries of the objects of one flow.
pub type HeldMap = foldhash::HashMap<ObjectKey, Vec<Held>>;

/// A held entry as a snapshot keeps it: by state names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeldSnapshot {
    Step {
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        history: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_dwell: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_dwell: Option<u8>,
        dwell_ms: i64,
        at_ms: i64,
        entered_ms: i64,
        age_ms: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        visited: Vec<String>,
    },
    Surprise {
        step: u8,
        window: u32,
    },
}

fn dwell_class(d: u8) -> Option<u8> {
    (d != markov::NO_DWELL).then_some(d)
}

/// An object's held entries by state names.
pub fn to_snapshot(flow: &CompiledFlow, held: &[Held]) -> Vec<HeldSnapshot> {
    held.iter()
        .map(|h| match *h {
            Held::Step(s) => HeldSnapshot::Step {
                from: flow.name_of(s.from).to_string(),
                to: flow.name_of(s.to).to_string(),
                history: s
                    .history
                    .iter()
                    .filter(|&&x| x != markov::NONE)
                    .map(|&x| flow.name_of(x).to_string())
                    .collect(),
                last_dwell: dwell_class(s.last_dwell),
                prev_dwell: dwell_class(s.prev_dwell),
                dwell_ms: s.dwell_ms,
                at_ms: s.at_ms,
                entered_ms: s.entered_ms,
                age_ms: s.age_ms,
                visited: (0..flow.states.len().min(64))
                    .filter(|&x| s.visited & (1u64 << x) != 0)
                    .map(|x| flow.name_of(x as StateId).to_string())
                    .collect(),
            },
            Held::Surprise { step, window } => HeldSnapshot::Surprise { step, window },
        })
        .collect()
}

/// Held entries back by state ids; `None` when a state they name is gone from the flow (the
/// object then teaches nothing more: its path can no longer be learned whole).
pub fn from_snapshot(flow: &CompiledFlow, held: &[HeldSnapshot]) -> Option<Vec<Held>> {
    held.iter()
        .map(|h| match h {
            HeldSnapshot::Step {
                from,
                to,
                history,
                last_dwell,
                prev_dwell,
                dwell_ms,
                at_ms,
                entered_ms,
                age_ms,
                visited,
            } => {
                let ids: Option<Vec<StateId>> = history.iter().map(|n| flow.state_id(n)).collect();
                let ids = ids?;
                let mut hist = [markov::NONE; 3];
                let len = ids.len().min(3);
                hist[3 - len..].copy_from_slice(&ids[ids.len() - len..]);
                Some(Held::Step(HeldStep {
                    from: flow.state_id(from)?,
                    to: flow.state_id(to)?,
                    history: hist,
                    last_dwell: last_dwell.unwrap_or(markov::NO_DWELL),
                    prev_dwell: prev_dwell.unwrap_or(markov::NO_DWELL),
                    dwell_ms: *dwell_ms,
                    at_ms: *at_ms,
                    entered_ms: *entered_ms,
                    age_ms: *age_ms,
                    visited: markov::visited_from_names(flow, visited),
                }))
            }
            HeldSnapshot::Surprise { step, window } => Some(Held::Surprise {
                step: *step,
                window: *window,
            }),
        })
        .collect()
}

/// Maps held entries to another definition's state ids (a reload); `None` when a state is gone.
pub fn remap(held: &[Held], map: &[Option<StateId>]) -> Option<Vec<Held>> {
    let id = |s: StateId| map.get(s as usize).copied().flatten();
    held.iter()
        .map(|h| match *h {
            Held::Step(mut s) => {
                s.from = id(s.from)?;
                s.to = id(s.to)?;
                for x in s.history.iter_mut() {
                    if *x != markov::NONE {
                        *x = id(*x)?;
                    }
                }
                s.visited = markov::remap_visited(s.visited, map, map.len());
                Some(Held::Step(s))
            }
            other => Some(other),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_step_gives_back_the_past_it_was_given() {
        let history = [4, 7];
        let past = Past {
            history: &history,
            last_dwell: 3,
            entered_ms: 1_000,
            prev_dwell: markov::NO_DWELL,
            age_ms: 50,
            visited: 0b1001,
        };
        let s = HeldStep::new(past, 2, 5, 10, 2_000);
        let back = s.past();
        assert_eq!(back.history, &[4, 7]);
        assert_eq!(
            (
                back.last_dwell,
                back.prev_dwell,
                back.entered_ms,
                back.age_ms
            ),
            (3, markov::NO_DWELL, 1_000, 50)
        );
        let none = HeldStep::new(Past::NONE, 0, 1, 0, 0);
        assert!(none.past().history.is_empty());
    }

    #[test]
    fn a_held_entry_costs_what_the_documentation_says() {
        // grammar/README.md and MAX_HELD's bound per object (4 KB) count 64 bytes.
        assert!(
            std::mem::size_of::<Held>() <= 64,
            "{}",
            std::mem::size_of::<Held>()
        );
    }

    #[test]
    fn a_held_step_keeps_the_last_three_states_of_a_longer_past() {
        let history = [1, 2, 3, 4];
        let past = Past {
            history: &history,
            ..Past::NONE
        };
        assert_eq!(HeldStep::new(past, 5, 6, 0, 0).past().history, &[2, 3, 4]);
    }
}
