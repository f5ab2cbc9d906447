//! `flowcast graph`: draw a flow as Graphviz `dot` or Mermaid, edges labelled with their prior
//! probability, artifacts marked; or as SVG, laid out by flowcast itself exactly as the
//! dashboard draws it (`service::graph`, crossings reduced), with the a priori model.

use super::{load_flows, ExitCode};
use crate::model::{CompiledFlow, Kind};
use crate::syntax::format_duration_ms;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// A flow file or a directory of them.
    pub file: PathBuf,
    /// Which flow, when the file holds several (default: all).
    #[arg(long)]
    pub flow: Option<String>,
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    /// The dashboard's drawing, with no Graphviz needed: one flow per document.
    Svg,
}

pub fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.file), args.flow.as_deref())? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    if let GraphFormat::Svg = args.format {
        if flows.len() != 1 {
            let names: Vec<&str> = flows.iter().map(|f| f.name.as_str()).collect();
            eprintln!(
                "error: an SVG document draws one flow: pick it with --flow ({})",
                names.join(", ")
            );
            return Ok(ExitCode::Usage);
        }
        let mut engine = crate::engine::Engine::new(flows);
        let d = crate::service::api::graph_data(&mut engine, 0);
        print!(
            "{}",
            crate::service::graph::svg(&crate::service::graph::build(&d, &[]))
        );
        return Ok(ExitCode::Ok);
    }
    for f in &flows {
        match args.format {
            GraphFormat::Dot => print!("{}", dot(f)),
            GraphFormat::Mermaid => print!("{}", mermaid(f)),
            GraphFormat::Svg => {}
        }
    }
    Ok(ExitCode::Ok)
}

/// Prior probability of each listed transition: its count over its source state's total.
fn edge_probabilities(f: &CompiledFlow) -> Vec<(u16, u16, f64, f64)> {
    let mut totals = vec![0.0; f.states.len()];
    for &(a, _, c) in &f.priors {
        totals[a as usize] += c;
    }
    f.priors
        .iter()
        .map(|&(a, b, c)| {
            let p = if totals[a as usize] > 0.0 {
                c / totals[a as usize]
            } else {
                0.0
            };
            (a, b, c, p)
        })
        .collect()
}

fn display_label(f: &CompiledFlow, id: u16) -> String {
    let s = f.state(id);
    match &s.label {
        Some(l) => format!("{}\\n{}", s.name, l.replace('"', "\\\"")),
        None => s.name.clone(),
    }
}

pub fn dot(f: &CompiledFlow) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph \"{}\" {{", f.name);
    let _ = writeln!(o, "  rankdir=LR;");
    let _ = writeln!(
        o,
        "  label=\"{}\"; labelloc=t;",
        f.description.replace('"', "\\\"")
    );
    let _ = writeln!(o, "  node [fontname=\"Helvetica\", fontsize=11];");
    let _ = writeln!(o, "  edge [fontname=\"Helvetica\", fontsize=10];");
    for (i, s) in f.states.iter().enumerate() {
        let style = match s.kind {
            Kind::Initial => "shape=box, style=\"rounded,bold\"",
            Kind::Ordinary => "shape=ellipse",
            Kind::Terminal => "shape=box, style=\"rounded,bold\", peripheries=2, color=darkgreen",
            Kind::Artifact => "shape=octagon, style=filled, fillcolor=\"#f8d0d0\", color=red",
        };
        let _ = writeln!(
            o,
            "  \"{}\" [label=\"{}\", {style}];",
            s.name,
            display_label(f, i as u16)
        );
    }
    for (a, b, c, p) in edge_probabilities(f) {
        let _ = writeln!(
            o,
            "  \"{}\" -> \"{}\" [label=\"{:.3} ({})\"];",
            f.name_of(a),
            f.name_of(b),
            p,
            fmt_count(c)
        );
    }
    for (s, t) in f.timeouts.iter().enumerate() {
        if let Some((ms, a)) = t {
            let _ = writeln!(
                o,
                "  \"{}\" -> \"{}\" [label=\"after {}\", style=dashed, color=red];",
                f.name_of(s as u16),
                f.name_of(*a),
                format_duration_ms(*ms)
            );
        }
    }
    o.push_str("}\n");
    o
}

pub fn mermaid(f: &CompiledFlow) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "---\ntitle: {}\n---", f.name);
    o.push_str("flowchart LR\n");
    for s in &f.states {
        let text = match &s.label {
            Some(l) => format!("{}<br/>{}", s.name, l.replace('"', "#quot;")),
            None => s.name.clone(),
        };
        let shape = match s.kind {
            Kind::Initial => format!("{}([\"{text}\"])", s.name),
            Kind::Ordinary => format!("{}(\"{text}\")", s.name),
            Kind::Terminal => format!("{}(((\"{text}\")))", s.name),
            Kind::Artifact => format!("{}{{{{\"{text}\"}}}}", s.name),
        };
        let _ = writeln!(o, "  {shape}");
    }
    for (a, b, c, p) in edge_probabilities(f) {
        let _ = writeln!(
            o,
            "  {} -->|\"{:.3} ({})\"| {}",
            f.name_of(a),
            p,
            fmt_count(c),
            f.name_of(b)
        );
    }
    for (s, t) in f.timeouts.iter().enumerate() {
        if let Some((ms, a)) = t {
            let _ = writeln!(
                o,
                "  {} -.->|\"after {}\"| {}",
                f.name_of(s as u16),
                format_duration_ms(*ms),
                f.name_of(*a)
            );
        }
    }
    let artifacts: Vec<&str> = f.artifacts().map(|a| f.name_of(a)).collect();
    if !artifacts.is_empty() {
        o.push_str("  classDef artifact fill:#f8d0d0,stroke:#c00\n");
        let _ = writeln!(o, "  class {} artifact", artifacts.join(","));
    }
    o
}

pub fn fmt_count(c: f64) -> String {
    if c.fract() == 0.0 && c.abs() < 1e15 {
        format!("{}", c as i64)
    } else {
        format!("{c:.2}")
    }
}
