//! Where each state of a flow is declared and used: what the language server's go to
//! definition, find references, rename and hover read. Names are scoped to their flow.

use super::ast::*;
use crate::diagnostic::Span;

/// One place a state name is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    /// Index of the flow in the file.
    pub flow: usize,
    pub name: String,
    pub span: Span,
    /// The declaration (`state x`), not a use.
    pub is_declaration: bool,
}

/// Every state name written in a file, declarations and uses, in order.
pub fn occurrences(file: &File) -> Vec<Occurrence> {
    let mut out = Vec::new();
    for (fi, flow) in file.flows.iter().enumerate() {
        let mut push = |id: &Ident, decl: bool| {
            out.push(Occurrence {
                flow: fi,
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

/// The declaration of the state an occurrence names.
pub fn declaration<'o>(occs: &'o [Occurrence], of: &Occurrence) -> Option<&'o Occurrence> {
    occs.iter()
        .find(|o| o.is_declaration && o.flow == of.flow && o.name == of.name)
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
    }
}
