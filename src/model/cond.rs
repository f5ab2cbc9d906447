//! Compiled conditions and field paths, evaluated against a JSON message.
//!
//! Semantics, documented in grammar/README.md: a missing field is `null`; `==` and `!=` compare
//! values of the same JSON type (a number never equals a string); `<`, `<=`, `>`, `>=` compare
//! numbers numerically and strings lexicographically and are false across types or on a missing
//! field; `exists` is true for a present, non-null field; `=~` and `glob` match strings only.

use crate::syntax::ast::{CmpOp, Literal, Segment};
use serde_json::Value;
use std::fmt;

/// A path into a message: `payload."nova_object.data".uuid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub segments: Box<[Segment]>,
}

impl FieldPath {
    pub fn new(segments: Vec<Segment>) -> FieldPath {
        FieldPath {
            segments: segments.into_boxed_slice(),
        }
    }

    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut v = root;
        for seg in self.segments.iter() {
            v = match (seg, v) {
                (Segment::Field(name), Value::Object(map)) => map.get(name.as_str())?,
                (Segment::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// True for the single-segment path `event_type`.
    pub fn is_event_type(&self) -> bool {
        matches!(&*self.segments, [Segment::Field(f)] if f == "event_type")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::syntax::ast::fmt_segments(&self.segments, f)
    }
}

/// A glob with `*` (any run of characters, dots included) and `?` (one character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pub pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
        }
    }

    pub fn is_literal(&self) -> bool {
        !self.pattern.contains(['*', '?'])
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.pattern.as_bytes(), text.as_bytes())
    }
}

/// Iterative glob matching with single-star backtracking: linear in practice, never recursive.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp(FieldPath, CmpOp, Literal),
    In(FieldPath, Vec<Literal>),
    Exists(FieldPath),
    Regex(FieldPath, regex::Regex),
    Glob(FieldPath, Glob),
}

impl Cond {
    pub fn eval(&self, msg: &Value) -> bool {
        match self {
            Cond::And(parts) => parts.iter().all(|c| c.eval(msg)),
            Cond::Or(parts) => parts.iter().any(|c| c.eval(msg)),
            Cond::Not(c) => !c.eval(msg),
            Cond::Cmp(path, op, lit) => compare(path.get(msg), *op, lit),
            Cond::In(path, list) => {
                let v = path.get(msg);
                list.iter().any(|l| equal(v, l))
            }
            Cond::Exists(path) => !matches!(path.get(msg), None | Some(Value::Null)),
            Cond::Regex(path, re) => match path.get(msg) {
                Some(Value::String(s)) => re.is_match(s),
                _ => false,
            },
            Cond::Glob(path, g) => match path.get(msg) {
                Some(Value::String(s)) => g.matches(s),
                _ => false,
            },
        }
    }

    /// The conjuncts of this condition (itself when it is not an `and`).
    pub fn conjuncts(&self) -> &[Cond] {
        match self {
            Cond::And(parts) => parts,
            other => std::slice::from_ref(other),
        }
    }

    /// The exact `event_type` this condition requires, if one of its conjuncts pins it:
    /// the rule can then be indexed by event type.
    pub fn required_event_type(&self) -> Option<&str> {
        self.conjuncts().iter().find_map(|c| match c {
            Cond::Cmp(p, CmpOp::Eq, Literal::Str(s)) if p.is_event_type() => Some(s.as_str()),
            Cond::Glob(p, g) if p.is_event_type() && g.is_literal() => Some(g.pattern.as_str()),
            _ => None,
        })
    }

    /// True when every message that satisfies `self` also satisfies `other`, as far as a
    /// syntactic check can tell (it may answer false for a true implication, never the reverse).
    /// Used to warn that a rule can never fire because an earlier one always wins.
    pub fn implies(&self, other: &Cond) -> bool {
        // `other` is a conjunction: each of its conjuncts must follow from some conjunct of self.
        other
            .conjuncts()
            .iter()
            .all(|need| self.conjuncts().iter().any(|have| atom_implies(have, need)))
    }
}

fn atom_implies(have: &Cond, need: &Cond) -> bool {
    use Cond::*;
    match (have, need) {
        (Cmp(p1, CmpOp::Eq, l1), Cmp(p2, CmpOp::Eq, l2)) => p1 == p2 && l1 == l2,
        (Cmp(p1, CmpOp::Eq, Literal::Str(s)), Glob(p2, g)) => p1 == p2 && g.matches(s),
        (Glob(p1, g1), Glob(p2, g2)) => {
            p1 == p2
                && (g1 == g2 || g2.pattern == "*" || (g1.is_literal() && g2.matches(&g1.pattern)))
        }
        (Glob(p1, g1), Cmp(p2, CmpOp::Eq, Literal::Str(s))) => {
            p1 == p2 && g1.is_literal() && &g1.pattern == s
        }
        (Cmp(p1, CmpOp::Eq, l), In(p2, list)) => p1 == p2 && list.contains(l),
        (Cmp(p1, CmpOp::Eq, l), Exists(p2)) => p1 == p2 && *l != Literal::Null,
        (Glob(p1, _), Exists(p2)) | (Regex(p1, _), Exists(p2)) => p1 == p2,
        (In(p1, l1), In(p2, l2)) => p1 == p2 && l1.iter().all(|l| l2.contains(l)),
        (Exists(p1), Exists(p2)) => p1 == p2,
        (Regex(p1, r1), Regex(p2, r2)) => p1 == p2 && r1.as_str() == r2.as_str(),
        (Not(a), Not(b)) => b.implies(a),
        (And(_), _) | (_, And(_)) => have.implies(need),
        (Or(parts), _) => parts.iter().all(|p| p.implies(need)),
        (_, Or(parts)) => parts.iter().any(|p| have.implies(p)),
        _ => false,
    }
}

fn equal(v: Option<&Value>, lit: &Literal) -> bool {
    match (v, lit) {
        (None | Some(Value::Null), Literal::Null) => true,
        (Some(Value::String(a)), Literal::Str(b)) => a == b,
        (Some(Value::Number(a)), Literal::Num(b)) => a.as_f64() == Some(*b),
        (Some(Value::Bool(a)), Literal::Bool(b)) => a == b,
        _ => false,
    }
}

fn compare(v: Option<&Value>, op: CmpOp, lit: &Literal) -> bool {
    use std::cmp::Ordering;
    match op {
        CmpOp::Eq => return equal(v, lit),
        CmpOp::Ne => return !equal(v, lit),
        _ => {}
    }
    let ord: Option<Ordering> = match (v, lit) {
        (Some(Value::Number(a)), Literal::Num(b)) => a.as_f64().and_then(|a| a.partial_cmp(b)),
        (Some(Value::String(a)), Literal::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    };
    match (ord, op) {
        (Some(o), CmpOp::Lt) => o == Ordering::Less,
        (Some(o), CmpOp::Le) => o != Ordering::Greater,
        (Some(o), CmpOp::Gt) => o == Ordering::Greater,
        (Some(o), CmpOp::Ge) => o != Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &[&str]) -> FieldPath {
        FieldPath::new(s.iter().map(|s| Segment::Field(s.to_string())).collect())
    }

    #[test]
    fn globs() {
        let g = Glob::new("instance.volume_attach.*");
        assert!(g.matches("instance.volume_attach.start"));
        assert!(g.matches("instance.volume_attach."));
        assert!(!g.matches("instance.volume_detach.start"));
        assert!(Glob::new("a*b*c").matches("aXXbYYc"));
        assert!(!Glob::new("a*b*c").matches("aXXbYY"));
        assert!(Glob::new("compute.?nstance").matches("compute.instance"));
        assert!(Glob::new("*").matches(""));
    }

    #[test]
    fn comparisons_follow_the_documented_semantics() {
        let msg = json!({"payload": {"n": 3, "s": "b", "nul": null, "t": true}});
        let p = |f: &str| path(&["payload", f]);
        let check = |c: Cond, expect: bool| assert_eq!(c.eval(&msg), expect, "{c:?}");
        check(Cond::Cmp(p("n"), CmpOp::Eq, Literal::Num(3.0)), true);
        check(
            Cond::Cmp(p("n"), CmpOp::Eq, Literal::Str("3".into())),
            false,
        );
        check(Cond::Cmp(p("n"), CmpOp::Ge, Literal::Num(3.0)), true);
        check(
            Cond::Cmp(p("n"), CmpOp::Lt, Literal::Str("z".into())),
            false,
        );
        check(Cond::Cmp(p("s"), CmpOp::Lt, Literal::Str("c".into())), true);
        check(Cond::Cmp(p("missing"), CmpOp::Eq, Literal::Null), true);
        check(Cond::Cmp(p("nul"), CmpOp::Ne, Literal::Null), false);
        check(
            Cond::Cmp(p("missing"), CmpOp::Ne, Literal::Str("x".into())),
            true,
        );
        check(Cond::Cmp(p("missing"), CmpOp::Gt, Literal::Num(0.0)), false);
        check(Cond::Exists(p("nul")), false);
        check(Cond::Exists(p("t")), true);
        check(
            Cond::In(
                p("s"),
                vec![Literal::Str("a".into()), Literal::Str("b".into())],
            ),
            true,
        );
    }

    #[test]
    fn implication_is_sound_on_simple_cases() {
        let et = path(&["event_type"]);
        let exact = Cond::Cmp(et.clone(), CmpOp::Eq, Literal::Str("a.b".into()));
        let glob = Cond::Glob(et.clone(), Glob::new("a.*"));
        assert!(exact.implies(&glob));
        assert!(!glob.implies(&exact));
        let both = Cond::And(vec![exact.clone(), Cond::Exists(path(&["payload", "x"]))]);
        assert!(both.implies(&glob));
        assert!(!glob.implies(&both));
    }
}
