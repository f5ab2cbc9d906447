//! Checking flows against sample messages (`flowcast check --sample FILE.jsonl`).
//!
//! `check` alone cannot know what the messages look like, so the commonest real mistake passes
//! it: `key payload.nova_object.data.uuid` (dots not quoted) resolves to nothing. Given real
//! messages, this stage reports, as warnings: a field path that resolves in no sample message
//! (W106, with the quoted path that would resolve, when there is one), a rule that matches no
//! sample message (W107), the sample's event types that no rule matches (W108), and a
//! comparison with a literal of another JSON type than the sample's values (W109). Only flows
//! that compiled are checked; the messages arrive decoded (envelopes unwrapped) from the caller,
//! which does the reading.

use super::compile::Compilation;
use super::cond::FieldPath;
use crate::diagnostic::{did_you_mean, Code, Diagnostic, FileId, SourceFile};
use crate::syntax::ast::{self, CmpOp, Expr, Item, Literal, Segment};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Fields listed when a path stops resolving part way.
const FIELDS_SHOWN: usize = 8;

/// Adds the sample's findings to `comp`'s diagnostics; `sample_name` names the sample in the
/// diagnostics that belong to it rather than to a flow (W108).
pub fn check_sample(comp: &mut Compilation, sample_name: &str, messages: &[Value]) {
    let n = messages.len();
    let mut found: Vec<(FileId, Diagnostic)> = Vec::new();
    let mut type_counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in messages {
        if let Some(t) = m.get("event_type").and_then(Value::as_str) {
            *type_counts.entry(t.to_string()).or_default() += 1;
        }
    }
    // Event types some rule of some flow matches in the sample.
    let mut matched_types: HashSet<&str> = HashSet::new();
    for file in 0..comp.sources.files.len() as FileId {
        let Ok(parsed) = crate::syntax::parse(file, &comp.sources.get(file).text) else {
            continue;
        };
        for ast_flow in &parsed.flows {
            // Only flows that compiled; the first of a duplicated name is the compiled one.
            let src = comp.sources.get(file);
            let origin = format!(
                "{}:{}",
                src.name,
                src.line_col(ast_flow.span.start as usize).0
            );
            let Some(flow) = comp
                .flows
                .iter()
                .find(|f| f.name == ast_flow.name.name && f.origin == origin)
            else {
                continue;
            };
            let ast_rules: Vec<(&Expr, ast::Ident, crate::diagnostic::Span)> = ast_flow
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::Rule { cond, target, span } => Some((cond, target.clone(), *span)),
                    _ => None,
                })
                .collect();
            if ast_rules.len() != flow.rules.len() {
                continue;
            }
            // W107 and W108: which messages each rule matches (behind the flow's filter).
            let passes: Vec<bool> = messages
                .iter()
                .map(|m| flow.filter.as_ref().is_none_or(|f| f.eval(m)))
                .collect();
            for (rule, (cond, _, span)) in flow.rules.iter().zip(&ast_rules) {
                let mut any = false;
                for (m, pass) in messages.iter().zip(&passes) {
                    if *pass && rule.cond.eval(m) {
                        any = true;
                        if let Some(t) = m.get("event_type").and_then(Value::as_str) {
                            if let Some((k, _)) = type_counts.get_key_value(t) {
                                matched_types.insert(k.as_str());
                            }
                        }
                    }
                }
                if !any && n > 0 {
                    let mut d = Diagnostic::new(
                        Code::SampleUnmatchedRule,
                        *span,
                        format!("this rule matches none of the {n} sample messages"),
                    );
                    if let Some(pattern) = event_pattern(cond) {
                        if let Some(c) = type_counts.get(&pattern) {
                            d = d.with_help(format!(
                                "the sample has {c} `{pattern}` messages, but none meets the rest of the condition"
                            ));
                        } else if let Some(t) =
                            did_you_mean(&pattern, type_counts.keys().map(String::as_str))
                        {
                            d = d.with_help(format!(
                                "did you mean `{t}`? ({} in the sample)",
                                type_counts[t]
                            ));
                        }
                    }
                    found.push((file, d));
                }
            }
            // W106 and W109: the paths, each reported once per flow.
            let mut uses = Vec::new();
            for item in &ast_flow.items {
                match item {
                    Item::Key { paths, .. } => {
                        uses.extend(paths.iter().map(Use::Key));
                    }
                    Item::Match(e) => collect_uses(e, &mut uses),
                    Item::Rule { cond, .. } => collect_uses(cond, &mut uses),
                    _ => {}
                }
            }
            let mut reported: HashSet<String> = HashSet::new();
            for u in &uses {
                let path = u.path();
                let fp = FieldPath::new(path.segments.clone());
                if fp.is_event_type() {
                    continue;
                }
                let values: Vec<&Value> = messages.iter().filter_map(|m| fp.get(m)).collect();
                if values.is_empty() {
                    // `exists` tests may well name a field most messages lack: not reported.
                    if n == 0 || matches!(u, Use::Exists(_)) || !reported.insert(fp.to_string()) {
                        continue;
                    }
                    let mut d = Diagnostic::new(
                        Code::SamplePathMissing,
                        path.span,
                        format!("`{fp}` resolves in none of the {n} sample messages"),
                    );
                    if let Some(alt) = messages.iter().find_map(|m| requote(m, &path.segments)) {
                        let alt = FieldPath::new(alt);
                        d = d.with_help(format!(
                            "the sample has `{alt}`: quote a name that holds dots"
                        ));
                    } else if let Some(help) = where_it_stops(messages, &path.segments) {
                        d = d.with_help(help);
                    }
                    found.push((file, d));
                    continue;
                }
                if let Some(d) = wrong_type(u, &fp, &values) {
                    found.push((file, d));
                }
            }
        }
    }
    let unmatched: Vec<(&String, &usize)> = type_counts
        .iter()
        .filter(|(t, _)| !matched_types.contains(t.as_str()))
        .collect();
    if !unmatched.is_empty() {
        let sample = comp
            .sources
            .add(SourceFile::new(sample_name, String::new()));
        let list: Vec<String> = unmatched
            .iter()
            .map(|(t, c)| format!("{t} ({c})"))
            .collect();
        let (types, verb) = if unmatched.len() == 1 {
            ("event type", "matches")
        } else {
            ("event types", "match")
        };
        found.push((
            sample,
            Diagnostic::whole_file(
                Code::SampleUnmatchedEvents,
                format!(
                    "{} {types} of the sample {verb} no rule: {}",
                    unmatched.len(),
                    list.join(", ")
                ),
            )
            .with_help(format!(
                "add a rule (`on \"{}\" -> STATE`) if they belong to a flow; messages no rule matches are counted as unmatched, never an error",
                unmatched[0].0
            )),
        ));
    }
    comp.diagnostics.extend(found);
}

/// A path as the flow uses it.
enum Use<'a> {
    Key(&'a ast::Path),
    Cmp(&'a ast::Path, &'a Literal, crate::diagnostic::Span),
    In(&'a ast::Path, &'a [Literal], crate::diagnostic::Span),
    Exists(&'a ast::Path),
    /// `=~` or `glob`: strings only.
    Text(&'a ast::Path, &'static str, crate::diagnostic::Span),
}

impl Use<'_> {
    fn path(&self) -> &ast::Path {
        match self {
            Use::Key(p) | Use::Exists(p) => p,
            Use::Cmp(p, ..) | Use::In(p, ..) | Use::Text(p, ..) => p,
        }
    }
}

fn collect_uses<'a>(e: &'a Expr, out: &mut Vec<Use<'a>>) {
    match e {
        Expr::Or(parts, _) | Expr::And(parts, _) => {
            for p in parts {
                collect_uses(p, out);
            }
        }
        Expr::Not(inner, _) => collect_uses(inner, out),
        Expr::Cmp {
            path, value, span, ..
        } => out.push(Use::Cmp(path, value, *span)),
        Expr::In {
            path, list, span, ..
        } => out.push(Use::In(path, list, *span)),
        Expr::Exists { path, .. } => out.push(Use::Exists(path)),
        Expr::Regex { path, span, .. } => out.push(Use::Text(path, "`=~`", *span)),
        Expr::Glob { path, span, .. } => out.push(Use::Text(path, "`glob`", *span)),
        Expr::EventGlob(_) => {}
    }
}

/// The event type a rule is about, when it names one: `"x.y"` alone, or `event_type == "x.y"`,
/// possibly inside `and`.
fn event_pattern(e: &Expr) -> Option<String> {
    match e {
        Expr::EventGlob(s) => Some(s.value.clone()),
        Expr::Cmp {
            path,
            op: CmpOp::Eq,
            value: Literal::Str(v),
            ..
        } if FieldPath::new(path.segments.clone()).is_event_type() => Some(v.clone()),
        Expr::And(parts, _) => parts.iter().find_map(event_pattern),
        _ => None,
    }
}

/// The same path with runs of plain names joined into one quoted name where the message has
/// such a field (`payload.nova_object.data.uuid` -> `payload."nova_object.data".uuid`), if that
/// resolves in `v`.
fn requote(v: &Value, segs: &[Segment]) -> Option<Vec<Segment>> {
    let Some(first) = segs.first() else {
        return Some(Vec::new());
    };
    match (first, v) {
        (Segment::Index(i), Value::Array(items)) => {
            let mut rest = requote(items.get(*i)?, &segs[1..])?;
            rest.insert(0, Segment::Index(*i));
            Some(rest)
        }
        (Segment::Field(_), Value::Object(map)) => {
            let mut name = String::new();
            for (k, seg) in segs.iter().enumerate() {
                let Segment::Field(f) = seg else { break };
                if k > 0 {
                    name.push('.');
                }
                name.push_str(f);
                if let Some(x) = map.get(&name) {
                    if let Some(mut rest) = requote(x, &segs[k + 1..]) {
                        rest.insert(0, Segment::Field(name));
                        return Some(rest);
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Where a path stops resolving: the longest start of it that some message has, as an object,
/// and that object's fields.
fn where_it_stops(messages: &[Value], segs: &[Segment]) -> Option<String> {
    for len in (1..segs.len()).rev() {
        let prefix = FieldPath::new(segs[..len].to_vec());
        let mut fields: BTreeSet<&str> = BTreeSet::new();
        for m in messages {
            if let Some(Value::Object(map)) = prefix.get(m) {
                fields.extend(map.keys().map(String::as_str));
            }
        }
        if fields.is_empty() {
            continue;
        }
        let shown: Vec<String> = fields
            .iter()
            .take(FIELDS_SHOWN)
            .map(|f| FieldPath::new(vec![Segment::Field(f.to_string())]).to_string())
            .collect();
        let more = fields.len().saturating_sub(FIELDS_SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Some(format!(
            "in the sample, `{prefix}` has the fields {}{more}",
            shown.join(", ")
        ));
    }
    None
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn literal_kind(l: &Literal) -> &'static str {
    match l {
        Literal::Str(_) => "a string",
        Literal::Num(_) => "a number",
        Literal::Bool(_) => "a boolean",
        Literal::Null => "null",
    }
}

/// W109: the literal of a comparison is of a type none of the sample's values has.
fn wrong_type(u: &Use, fp: &FieldPath, values: &[&Value]) -> Option<Diagnostic> {
    let kinds: BTreeSet<&str> = values
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| json_kind(v))
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let seen = kinds.iter().copied().collect::<Vec<_>>().join(" or ");
    let (lits, span): (&[Literal], _) = match u {
        Use::Cmp(_, lit, span) => (std::slice::from_ref(*lit), *span),
        Use::In(_, list, span) => (list, *span),
        Use::Text(_, op, span) => {
            if kinds.contains("a string") {
                return None;
            }
            return Some(Diagnostic::new(
                Code::SampleWrongType,
                *span,
                format!("`{fp}` is {seen} in the sample messages; {op} matches strings only"),
            ));
        }
        Use::Key(_) | Use::Exists(_) => return None,
    };
    let lit = lits
        .iter()
        .find(|l| !matches!(l, Literal::Null) && !kinds.contains(literal_kind(l)))?;
    let mut d = Diagnostic::new(
        Code::SampleWrongType,
        span,
        format!(
            "`{fp}` is {seen} in the sample messages, compared with {}",
            literal_kind(lit)
        ),
    );
    d = match lit {
        Literal::Str(s) if kinds.contains("a number") && s.trim().parse::<f64>().is_ok() => {
            d.with_help(format!("write the number without quotes: `{}`", s.trim()))
        }
        Literal::Str(s)
            if kinds.contains("a boolean") && matches!(s.as_str(), "true" | "false") =>
        {
            d.with_help(format!("write the boolean without quotes: `{s}`"))
        }
        Literal::Num(x) if kinds.contains("a string") => {
            d.with_help(format!("write the value in quotes: `\"{x}\"`"))
        }
        Literal::Bool(b) if kinds.contains("a string") => {
            d.with_help(format!("write the value in quotes: `\"{b}\"`"))
        }
        _ => d.with_help(
            "`==` and `!=` compare values of the same type; a number never equals a string",
        ),
    };
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requote_joins_dotted_names_where_the_message_has_them() {
        let m: Value = serde_json::json!({"payload": {"nova_object.data": {"uuid": "u", "list": [{"a.b": 1}]}}});
        let segs = crate::syntax::parse_path("payload.nova_object.data.list[0].a.b").unwrap();
        let alt = FieldPath::new(requote(&m, &segs).unwrap());
        assert_eq!(
            alt.to_string(),
            r#"payload."nova_object.data".list[0]."a.b""#
        );
        let segs = crate::syntax::parse_path("payload.nova_object.uuid").unwrap();
        assert_eq!(requote(&m, &segs), None);
    }
}
