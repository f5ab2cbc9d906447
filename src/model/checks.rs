//! Warnings: things that compile but are probably not what the author meant.
//!
//! The a priori graph is the prior transitions plus the timeouts. Objects enter a flow at its
//! initial states and at any state a rule names (an object first seen mid-way joins there).

use super::flow::{CompiledFlow, Kind, StateId};
use crate::diagnostic::{Code, Diagnostic, FileId, Span};
use crate::syntax::ast::{self, Item};

pub fn warnings(flow: &CompiledFlow, ast: &ast::Flow, _file: FileId) -> Vec<Diagnostic> {
    let n = flow.states.len();
    let mut out = Vec::new();
    let decl_span = |id: StateId| -> Span {
        let name = flow.name_of(id);
        ast.items
            .iter()
            .filter_map(|i| match i {
                Item::States(d) => d.iter().find(|d| d.name.name == name).map(|d| d.name.span),
                _ => None,
            })
            .next()
            .unwrap_or(ast.name.span)
    };

    let mut edges: Vec<Vec<StateId>> = vec![Vec::new(); n];
    let mut used = vec![false; n];
    for &(f, t, _) in &flow.priors {
        edges[f as usize].push(t);
        used[f as usize] = true;
        used[t as usize] = true;
    }
    for (s, t) in flow.timeouts.iter().enumerate() {
        if let Some((_, a)) = t {
            edges[s].push(*a);
            used[s] = true;
            used[*a as usize] = true;
        }
    }
    let mut entry = vec![false; n];
    for r in &flow.rules {
        entry[r.target as usize] = true;
        used[r.target as usize] = true;
    }
    for (i, s) in flow.states.iter().enumerate() {
        if s.kind == Kind::Initial {
            entry[i] = true;
        }
    }

    // Forward reachability from every entry.
    let mut reached = entry.clone();
    let mut stack: Vec<usize> = (0..n).filter(|&i| entry[i]).collect();
    while let Some(s) = stack.pop() {
        for &t in &edges[s] {
            if !reached[t as usize] {
                reached[t as usize] = true;
                stack.push(t as usize);
            }
        }
    }
    // Backward reachability from every final state.
    let mut to_final: Vec<bool> = flow.states.iter().map(|s| s.kind.is_final()).collect();
    let mut changed = true;
    while changed {
        changed = false;
        for s in 0..n {
            if !to_final[s] && edges[s].iter().any(|&t| to_final[t as usize]) {
                to_final[s] = true;
                changed = true;
            }
        }
    }

    for (i, s) in flow.states.iter().enumerate() {
        let id = i as StateId;
        if !used[i] && s.kind != Kind::Initial {
            out.push(
                Diagnostic::new(Code::UnusedState, decl_span(id), format!("state `{}` is never used", s.name))
                    .with_help("no rule, transition or timeout mentions it; remove it or add a rule that leads there"),
            );
            continue;
        }
        if !reached[i] {
            if s.kind == Kind::Artifact {
                out.push(
                    Diagnostic::new(
                        Code::ArtifactUnreachable,
                        decl_span(id),
                        format!("artifact `{}` can never be reached", s.name),
                    )
                    .with_help("no rule leads to it and no transition or timeout from a reachable state does"),
                );
            } else {
                out.push(
                    Diagnostic::new(
                        Code::Unreachable,
                        decl_span(id),
                        format!("state `{}` is unreachable", s.name),
                    )
                    .with_help("no rule leads to it and no transition from a reachable state does"),
                );
            }
            continue;
        }
        if !flow.priors.is_empty() && !s.kind.is_final() && !to_final[i] {
            out.push(
                Diagnostic::new(
                    Code::DeadEnd,
                    decl_span(id),
                    format!(
                        "state `{}` has no path to a terminal state or artifact",
                        s.name
                    ),
                )
                .with_help(
                    "add a transition out of it, or the model cannot predict what follows it",
                ),
            );
        }
    }

    // A rule never fires when an earlier rule's condition holds whenever its own does.
    let rule_spans: Vec<Span> = ast
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Rule { span, .. } => Some(*span),
            _ => None,
        })
        .collect();
    for (j, later) in flow.rules.iter().enumerate() {
        if let Some(i) = flow.rules[..j]
            .iter()
            .position(|earlier| later.cond.implies(&earlier.cond))
        {
            if let (Some(&sj), Some(&si)) = (rule_spans.get(j), rule_spans.get(i)) {
                out.push(
                    Diagnostic::new(Code::ShadowedRule, sj, "this rule can never fire")
                        .with_label(si, "this earlier rule matches every message it matches")
                        .with_help("rules are tried in file order and the first match wins; move the more specific rule first"),
                );
            }
        }
    }
    out
}
