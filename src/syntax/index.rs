//! Where each named thing of a file is declared and used: what the language server's go to
//! definition, find references, rename and hover read. The language names two kinds of
//! things: flows (one name space across every file loaded together) and states of every kind
//! (initial, ordinary, terminal, artifact; one name space per flow). Everything else a name
//! stands for is a word of the language (`unlisted report`, `severity critical`, settings).

use super::ast::*;
use crate::diagnostic::Span;

/// What a name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symbol {
    Flow,
    State,
}

impl Symbol {
    pub fn as_str(self) -> &'static str {
        match self {
            Symbol::Flow => "flow",
            Symbol::State => "state",
        }
    }
}

/// One place a flow or state name is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    /// Index of the flow in the file (the flow itself, or the flow the state belongs to).
    pub flow: usize,
    pub symbol: Symbol,
    pub name: String,
    pub span: Span,
    /// The declaration (`flow f`, `state x`), not a use.
    pub is_declaration: bool,
}

impl Occurrence {
    /// Whether both name the same thing: one flow, or one state of one flow.
    pub fn same_as(&self, other: &Occurrence) -> bool {
        self.symbol == other.symbol
            && self.name == other.name
            && (self.symbol == Symbol::Flow || self.flow == other.flow)
    }
}

/// Every flow and state name written in a file, declarations and uses, in order.
pub fn occurrences(file: &File) -> Vec<Occurrence> {
    let mut out = Vec::new();
    for (fi, flow) in file.flows.iter().enumerate() {
        out.push(Occurrence {
            flow: fi,
            symbol: Symbol::Flow,
            name: flow.name.name.clone(),
            span: flow.name.span,
            is_declaration: true,
        });
        let mut push = |id: &Ident, decl: bool| {
            out.push(Occurrence {
                flow: fi,
                symbol: Symbol::State,
                name: id.name.clone(),
                span: id.span,
                is_declaration: decl,
            })
        };
        for item in &flow.items {
            match item {
                Item::States(decls) => decls.iter().for_each(|d| push(&d.name, true)),
                Item::Rule { target, .. } => push(target, false),
                Item::Transitions(list) => {
                    for t in list {
                        push(&t.from, false);
                        push(&t.to, false);
                    }
                }
                Item::Timeout {
                    state, artifact, ..
                } => {
                    push(state, false);
                    push(artifact, false);
                }
                Item::Alert { per_artifact, .. } => {
                    per_artifact.iter().for_each(|(a, _)| push(a, false))
                }
                _ => {}
            }
        }
    }
    out
}

/// The occurrence at a byte offset (the cursor inside or just after the name).
pub fn at(occs: &[Occurrence], offset: usize) -> Option<&Occurrence> {
    occs.iter()
        .find(|o| (o.span.start as usize) <= offset && offset <= o.span.end as usize)
}

/// The declaration of the flow or state an occurrence names.
pub fn declaration<'o>(occs: &'o [Occurrence], of: &Occurrence) -> Option<&'o Occurrence> {
    occs.iter().find(|o| o.is_declaration && o.same_as(of))
}

/// Every place the flow or state an occurrence names is written.
pub fn references<'o>(
    occs: &'o [Occurrence],
    of: &'o Occurrence,
) -> impl Iterator<Item = &'o Occurrence> + 'o {
    occs.iter().filter(move |o| o.same_as(of))
}

/// Why the thing `of` names cannot be renamed `new_name` in this file: the name is taken by
/// another thing of its kind in the same name space (another state of the flow, declared or
/// only written, or another flow), so the rename would merge two things into one.
pub fn rename_conflict(occs: &[Occurrence], of: &Occurrence, new_name: &str) -> Option<String> {
    if new_name == of.name {
        return None;
    }
    let taken = occs.iter().find(|o| {
        o.symbol == of.symbol
            && o.name == new_name
            && (of.symbol == Symbol::Flow || o.flow == of.flow)
    })?;
    let verb = if taken.is_declaration {
        "declares"
    } else {
        "uses"
    };
    Some(match of.symbol {
        Symbol::Flow => format!(
            "cannot rename flow `{}` to `{new_name}`: this file already declares a flow \
             `{new_name}` (flow names are unique across the files loaded together)",
            of.name
        ),
        Symbol::State => format!(
            "cannot rename state `{}` to `{new_name}`: flow `{}` already {verb} a state \
             `{new_name}`, and the two would become one",
            of.name,
            occs.iter()
                .find(|o| o.symbol == Symbol::Flow && o.flow == of.flow)
                .map_or("?", |f| f.name.as_str()),
        ),
    })
}

/// A flow's description for hover: its sentence and its states by kind.
pub fn describe_flow(file: &File, flow: usize) -> Option<String> {
    let f = file.flows.get(flow)?;
    let mut out = format!("**flow** `{}`", f.name.name);
    let mut kinds: Vec<(StateKind, Vec<&str>)> = Vec::new();
    for item in &f.items {
        match item {
            Item::Description(d) => out.push_str(&format!(" — {}", d.value)),
            Item::States(decls) => {
                for d in decls {
                    match kinds.iter_mut().find(|(k, _)| *k == d.kind) {
                        Some((_, names)) => names.push(&d.name.name),
                        None => kinds.push((d.kind, vec![&d.name.name])),
                    }
                }
            }
            _ => {}
        }
    }
    for (k, names) in kinds {
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        out.push_str(&format!("\n- {}: {}", k.keyword(), list.join(", ")));
    }
    Some(out)
}

/// A state's description for hover: kind, label, and its a priori transitions in and out.
pub fn describe_state(file: &File, flow: usize, name: &str) -> Option<String> {
    let f = file.flows.get(flow)?;
    let decl = f.items.iter().find_map(|i| match i {
        Item::States(d) => d.iter().find(|d| d.name.name == name),
        _ => None,
    })?;
    let mut out = format!("**{}** `{name}`", decl.kind.keyword());
    if let Some(l) = &decl.label {
        out.push_str(&format!(" — {}", l.value));
    }
    out.push_str(&format!(" (flow `{}`)", f.name.name));
    let count = |v: &Value| match &v.kind {
        ValueKind::Number(x) => Some(*x),
        _ => None,
    };
    let (mut outs, mut ins) = (Vec::new(), Vec::new());
    for item in &f.items {
        if let Item::Transitions(list) = item {
            for t in list {
                if t.from.name == name {
                    outs.push((t.to.name.clone(), count(&t.count)));
                }
                if t.to.name == name {
                    ins.push((t.from.name.clone(), count(&t.count)));
                }
            }
        }
    }
    let total: f64 = outs.iter().filter_map(|(_, c)| *c).sum();
    if !outs.is_empty() {
        out.push_str("\n\nA priori, from here:");
        for (to, c) in &outs {
            match c {
                Some(c) if total > 0.0 => {
                    out.push_str(&format!("\n- -> `{to}`: {c} ({:.1}%)", 100.0 * c / total))
                }
                _ => out.push_str(&format!("\n- -> `{to}`")),
            }
        }
    }
    if !ins.is_empty() {
        out.push_str("\n\nInto here:");
        for (from, c) in &ins {
            match c {
                Some(c) => out.push_str(&format!("\n- `{from}` -> : {c}")),
                None => out.push_str(&format!("\n- `{from}` ->")),
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_declarations_and_hover() {
        let text =
            "flow a { initial s \"Start\" terminal t on \"x\" -> s transitions { s -> t 3 } }";
        let file = crate::syntax::parse(0, text).unwrap();
        let occs = occurrences(&file);
        let names: Vec<(&str, bool)> = occs
            .iter()
            .map(|o| (o.name.as_str(), o.is_declaration))
            .collect();
        assert_eq!(
            names,
            [
                ("a", true),
                ("s", true),
                ("t", true),
                ("s", false),
                ("s", false),
                ("t", false)
            ]
        );
        let use_of_t = text.rfind("t 3").unwrap();
        let o = at(&occs, use_of_t).unwrap();
        let d = declaration(&occs, o).unwrap();
        assert_eq!(d.span.start as usize, text.find("t on").unwrap());
        let hover = describe_state(&file, 0, "s").unwrap();
        assert!(hover.contains("**initial** `s` — Start"), "{hover}");
        assert!(hover.contains("-> `t`: 3 (100.0%)"), "{hover}");
        // The flow's name is a symbol of its own: a state `a` would not be the flow `a`.
        assert_eq!(occs[0].symbol, Symbol::Flow);
        assert!(!occs[0].same_as(&Occurrence {
            symbol: Symbol::State,
            ..occs[0].clone()
        }));
        assert_eq!(
            describe_flow(&file, 0).unwrap(),
            "**flow** `a`\n- initial: `s`\n- terminal: `t`"
        );
    }

    #[test]
    fn a_rename_onto_a_name_in_use_is_refused() {
        let text = "flow a { initial s terminal t on \"x\" -> u }\nflow b { initial s }";
        let file = crate::syntax::parse(0, text).unwrap();
        let occs = occurrences(&file);
        let s = at(&occs, text.find("s t").unwrap()).unwrap();
        let t = rename_conflict(&occs, s, "t").unwrap();
        assert!(t.contains("flow `a` already declares a state `t`"), "{t}");
        // `u` is written (an unknown state, F006) but not declared: still taken.
        let u = rename_conflict(&occs, s, "u").unwrap();
        assert!(u.contains("already uses a state `u`"), "{u}");
        // Another flow's `s` is another name space; the same name is no rename at all.
        let b_s = at(&occs, text.rfind('s').unwrap()).unwrap();
        assert_eq!(rename_conflict(&occs, b_s, "t"), None);
        assert_eq!(rename_conflict(&occs, s, "s"), None);
        let a = at(&occs, text.find('a').unwrap()).unwrap();
        assert_eq!(a.symbol, Symbol::Flow);
        assert!(rename_conflict(&occs, a, "b")
            .unwrap()
            .contains("already declares a flow `b`"));
        assert_eq!(rename_conflict(&occs, a, "s"), None);
    }
}
