//! Simulation: a JSONL stream of objects walking a flow with its a priori probabilities, for
//! benchmarks and as ground truth (the flow's probabilities are the true ones).
//!
//! Each state needs a message that puts an object there. It is made by inverting the rules that
//! lead to the state: `event_type == "x"` sets the field, a glob gets its `*` filled in, `in`
//! takes the first value, `exists` sets a value, `or` takes its first branch. The message is
//! then checked against the flow's own rules (first match wins); a state no rule can be inverted
//! for is an error naming it. Objects start at a steady rate; each dwells an exponentially
//! distributed time before each step. A step to a state's timeout artifact, or a dwell longer
//! than the timeout, emits nothing: the timeout fires in the engine. The stream ends with a
//! `flowcast.simulate.end` message late enough for every pending timeout to fire. Same seed,
//! same stream.

use crate::engine::time::format_rfc3339;
use crate::model::cond::{Cond, FieldPath};
use crate::model::{CompiledFlow, Kind, StateId};
use crate::syntax::ast::{CmpOp, Literal, Segment};
use serde_json::{Map, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

pub const SIMULATION_END: &str = "flowcast.simulate.end";

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub objects: usize,
    pub seed: u64,
    pub start_ms: i64,
    /// Time between the starts of two objects.
    pub interval_ms: f64,
    /// Mean dwell in a state.
    pub mean_dwell_ms: f64,
    /// Mean dwell before a step into particular states (e.g. failures that take longer).
    pub dwell_to: Vec<(StateId, f64)>,
}

/// SplitMix64: small, fast and good enough for simulation; deterministic by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

fn set_path(root: &mut Value, segments: &[Segment], v: Value) {
    let Some((first, rest)) = segments.split_first() else {
        *root = v;
        return;
    };
    match first {
        Segment::Field(name) => {
            if !root.is_object() {
                *root = Value::Object(Map::new());
            }
            let map = root.as_object_mut().expect("just made an object");
            set_path(map.entry(name.clone()).or_insert(Value::Null), rest, v);
        }
        Segment::Index(i) => {
            if !root.is_array() {
                *root = Value::Array(Vec::new());
            }
            let arr = root.as_array_mut().expect("just made an array");
            while arr.len() <= *i {
                arr.push(Value::Null);
            }
            set_path(&mut arr[*i], rest, v);
        }
    }
}

fn literal_value(l: &Literal) -> Value {
    match l {
        Literal::Str(s) => Value::String(s.clone()),
        Literal::Num(n) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Null => Value::Null,
    }
}

/// Sets fields so that `c` holds, as far as it can be inverted.
fn invert(c: &Cond, msg: &mut Value) {
    let set = |msg: &mut Value, p: &FieldPath, v: Value| set_path(msg, &p.segments, v);
    match c {
        Cond::And(parts) => parts.iter().for_each(|p| invert(p, msg)),
        Cond::Or(parts) => {
            if let Some(p) = parts.first() {
                invert(p, msg)
            }
        }
        Cond::Not(_) => {}
        Cond::Cmp(p, op, lit) => match (op, lit) {
            (CmpOp::Eq | CmpOp::Le | CmpOp::Ge, l) => set(msg, p, literal_value(l)),
            (CmpOp::Gt, Literal::Num(n)) => set(msg, p, Value::from(n + 1.0)),
            (CmpOp::Lt, Literal::Num(n)) => set(msg, p, Value::from(n - 1.0)),
            (CmpOp::Gt, Literal::Str(s)) => set(msg, p, Value::String(format!("{s}~"))),
            _ => {}
        },
        Cond::In(p, list) => {
            if let Some(l) = list.first() {
                set(msg, p, literal_value(l))
            }
        }
        Cond::Exists(p) => set(msg, p, Value::String("simulated".into())),
        Cond::Glob(p, g) => set(msg, p, Value::String(g.pattern.replace(['*', '?'], "x"))),
        Cond::Regex(..) => {}
    }
}

/// A message template per state (None for states no message leads to, e.g. timeout-only
/// artifacts), checked against the flow's own rules.
pub fn templates(flow: &CompiledFlow) -> anyhow::Result<Vec<Option<Value>>> {
    let mut out = Vec::with_capacity(flow.states.len());
    for (i, s) in flow.states.iter().enumerate() {
        let id = i as StateId;
        let mut found = None;
        for r in flow.rules.iter().filter(|r| r.target == id) {
            let mut msg = Value::Object(Map::new());
            if let Some(f) = &flow.filter {
                invert(f, &mut msg);
            }
            invert(&r.cond, &mut msg);
            let first_match = flow
                .rules
                .iter()
                .find(|r| r.cond.eval(&msg))
                .map(|r| r.target);
            let filter_ok = flow.filter.as_ref().is_none_or(|f| f.eval(&msg));
            if filter_ok && first_match == Some(id) {
                found = Some(msg);
                break;
            }
        }
        let reached_by_timeout_only = flow
            .timeouts
            .iter()
            .any(|t| matches!(t, Some((_, a)) if *a == id));
        if found.is_none() && !reached_by_timeout_only && flow.rules.iter().any(|r| r.target == id)
        {
            anyhow::bail!(
                "cannot make a message for state `{}` of flow `{}`: its rules use forms that cannot be inverted (regex, `not`, `!=`) or are shadowed",
                s.name,
                flow.name
            );
        }
        out.push(found);
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SimSummary {
    pub objects: usize,
    pub messages: u64,
    /// How many objects ended in each final state (timeouts included), or were left waiting.
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

/// Writes the stream; returns what was simulated.
pub fn simulate(
    flow: &CompiledFlow,
    opts: &SimOptions,
    out: &mut impl Write,
) -> anyhow::Result<SimSummary> {
    let templates = templates(flow)?;
    let n = flow.states.len();
    let mut rows: Vec<Vec<(StateId, f64)>> = vec![Vec::new(); n];
    for &(f, t, c) in &flow.priors {
        if c > 0.0 {
            rows[f as usize].push((t, c));
        }
    }
    let initial: Vec<StateId> = (0..n as StateId)
        .filter(|&s| flow.state(s).kind == Kind::Initial && templates[s as usize].is_some())
        .collect();
    if initial.is_empty() {
        anyhow::bail!(
            "flow `{}` has no initial state a message can lead to",
            flow.name
        );
    }
    let key = flow
        .keys
        .first()
        .ok_or_else(|| anyhow::anyhow!("flow `{}` has no key", flow.name))?;
    let mut rng = Rng::new(opts.seed);
    let mut summary = SimSummary {
        objects: opts.objects,
        ..Default::default()
    };
    let max_timeout = flow
        .timeouts
        .iter()
        .flatten()
        .map(|(ms, _)| *ms)
        .max()
        .unwrap_or(0);
    // A heap of (time, object, sequence) over the events of the objects in flight.
    let mut heap: BinaryHeap<Reverse<(i64, u64, usize)>> = BinaryHeap::new();
    let mut events: Vec<Vec<(i64, StateId)>> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut cursor: Vec<usize> = Vec::new();
    let mut seq = 0u64;
    let mut next_object = 0usize;
    let mut last_time = opts.start_ms;
    let mut line = Vec::with_capacity(4096);
    loop {
        let next_start = opts.start_ms + (next_object as f64 * opts.interval_ms) as i64;
        let heap_min = heap.peek().map(|Reverse((t, _, _))| *t);
        if next_object < opts.objects && heap_min.is_none_or(|t| next_start <= t) {
            // Walk a new object now; its events join the heap.
            let walk = walk(
                flow,
                &rows,
                &templates,
                &initial,
                next_start,
                opts,
                &mut rng,
                &mut summary,
            );
            let slot = match free.pop() {
                Some(s) => {
                    events[s] = walk;
                    ids[s] = rng.uuid();
                    cursor[s] = 0;
                    s
                }
                None => {
                    events.push(walk);
                    ids.push(rng.uuid());
                    cursor.push(0);
                    events.len() - 1
                }
            };
            if let Some(&(t, _)) = events[slot].first() {
                seq += 1;
                heap.push(Reverse((t, seq, slot)));
            } else {
                free.push(slot);
            }
            next_object += 1;
            continue;
        }
        let Some(Reverse((t, _, slot))) = heap.pop() else {
            break;
        };
        let (_, state) = events[slot][cursor[slot]];
        let mut msg = templates[state as usize]
            .clone()
            .expect("walks only emit states with templates");
        set_path(&mut msg, &key.segments, Value::String(ids[slot].clone()));
        let obj = msg.as_object_mut().expect("templates are objects");
        obj.insert("timestamp".into(), Value::String(format_rfc3339(t)));
        obj.insert("message_id".into(), Value::String(rng.uuid()));
        line.clear();
        serde_json::to_writer(&mut line, &msg)?;
        line.push(b'\n');
        out.write_all(&line)?;
        summary.messages += 1;
        last_time = last_time.max(t);
        cursor[slot] += 1;
        if let Some(&(t2, _)) = events[slot].get(cursor[slot]) {
            seq += 1;
            heap.push(Reverse((t2, seq, slot)));
        } else {
            free.push(slot);
        }
    }
    let end = serde_json::json!({"event_type": SIMULATION_END, "timestamp": format_rfc3339(last_time + max_timeout + 1000)});
    writeln!(out, "{end}")?;
    summary.messages += 1;
    Ok(summary)
}

/// One object's walk: the (time, state) of each message it sends.
#[allow(clippy::too_many_arguments)]
fn walk(
    flow: &CompiledFlow,
    rows: &[Vec<(StateId, f64)>],
    templates: &[Option<Value>],
    initial: &[StateId],
    start: i64,
    opts: &SimOptions,
    rng: &mut Rng,
    summary: &mut SimSummary,
) -> Vec<(i64, StateId)> {
    let mut s = initial[(rng.unit() * initial.len() as f64) as usize % initial.len()];
    let mut t = start;
    let mut out = vec![(t, s)];
    for _ in 0..1000 {
        if flow.state(s).kind.is_final() {
            *summary
                .outcomes
                .entry(flow.name_of(s).to_string())
                .or_default() += 1;
            return out;
        }
        let row = &rows[s as usize];
        let total: f64 = row.iter().map(|(_, c)| c).sum();
        if total <= 0.0 {
            break;
        }
        let mut u = rng.unit() * total;
        let mut next = row[row.len() - 1].0;
        for &(to, c) in row {
            if u < c {
                next = to;
                break;
            }
            u -= c;
        }
        let mean = opts
            .dwell_to
            .iter()
            .find(|(t, _)| *t == next)
            .map_or(opts.mean_dwell_ms, |(_, m)| *m);
        let dwell = (-(1.0 - rng.unit()).ln() * mean).max(1.0) as i64;
        if let Some((limit, artifact)) = flow.timeouts[s as usize] {
            if next == artifact || dwell >= limit {
                // Silence: the engine's timer makes the timeout happen.
                *summary
                    .outcomes
                    .entry(flow.name_of(artifact).to_string())
                    .or_default() += 1;
                return out;
            }
        }
        if templates[next as usize].is_none() {
            // No message leads there: the object falls silent (and will expire).
            *summary.outcomes.entry("(silent)".to_string()).or_default() += 1;
            return out;
        }
        t += dwell;
        s = next;
        out.push((t, s));
    }
    *summary
        .outcomes
        .entry("(left waiting)".to_string())
        .or_default() += 1;
    out
}
