//! A flow as a graph for `GET /api/flows/{name}/graph`: states with how many objects sit in
//! each now and their FIG. 11 risks, edges with learned probabilities and counts, as JSON and
//! as an SVG drawn here.
//!
//! The layout is layered: a state's layer is the longest path to it from an initial state,
//! cycles aside (states nothing reaches go last), so that every edge but those closing a cycle
//! points down; layers run top to bottom, and the order of the states
//! within each layer is chosen to reduce edge crossings (`layout.rs`: barycenter sweeps, as
//! Graphviz's dot does), and each state is placed under its neighbours as far as the order
//! and the spacing allow. An edge to a deeper layer runs straight to the next layer, and down
//! through a slot of its own in each layer it passes, so it never runs through a state; edges
//! back up or within a layer are drawn as arcs on the side.

use super::api::GraphData;
use super::layout::{self, Layout, Order, Slot};
use crate::model::Kind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct GraphState {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub kind: Kind,
    pub initial: bool,
    /// Objects in this state now.
    pub in_state: u64,
    /// FIG. 11: the probability of ending in each artifact from this state.
    pub risk: BTreeMap<String, f64>,
    /// Artifacts: the alert threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub expected_remaining_ms: f64,
    /// Layer (the longest path from an initial state, cycles aside) and place in it, as drawn.
    pub layer: usize,
    pub position: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_artifact: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub probability: f64,
    /// Observed (decayed) count.
    pub observed: f64,
    pub prior: f64,
    pub listed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub flow: String,
    pub model_version: u64,
    pub observed_total: f64,
    pub in_flight: u64,
    pub states: Vec<GraphState>,
    pub edges: Vec<GraphEdge>,
    /// Where the states and the edges going down are drawn (states in state order, edges as
    /// `edges`).
    #[serde(skip)]
    pub layout: Layout,
}

/// The graph of a flow from its model data and the objects per state (state order).
pub fn build(d: &GraphData, counts: &[u64]) -> Graph {
    build_ordered(d, counts, Order::Barycenter)
}

/// `build`, with the states of each layer in the given order (`Order::Declared`: the file's
/// order, the baseline the crossing tests compare with).
pub fn build_ordered(d: &GraphData, counts: &[u64], order: Order) -> Graph {
    let t = &d.table;
    let n = t.states.len();
    let index: BTreeMap<&str, usize> = t
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.state.as_str(), i))
        .collect();
    // Edges that carry probability, or that the flow lists.
    let edges: Vec<GraphEdge> = t
        .transitions
        .iter()
        .filter(|e| e.probability > 0.0 || e.listed)
        .filter(|e| index.contains_key(e.from.as_str()) && index.contains_key(e.to.as_str()))
        .map(|e| GraphEdge {
            from: e.from.clone(),
            to: e.to.clone(),
            probability: e.probability,
            observed: e.observed,
            prior: e.prior,
            listed: e.listed,
        })
        .collect();
    let pairs: Vec<(usize, usize)> = edges
        .iter()
        .map(|e| (index[e.from.as_str()], index[e.to.as_str()]))
        .collect();
    let depth = layout::layers(n, &pairs, &d.initial);
    let layout = layout::layout(&depth, &pairs, order);
    let states = t
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // The place among the states of the layer (dummy slots not counted).
            let (l, p) = layout.node_at[i];
            let position = layout.layers[l][..p]
                .iter()
                .filter(|x| matches!(x, Slot::Node(_)))
                .count();
            let timeout = d.timeouts.get(i).cloned().flatten();
            GraphState {
                name: s.state.clone(),
                label: d.labels.get(i).cloned().flatten(),
                kind: s.kind,
                initial: d.initial.get(i).copied().unwrap_or(false),
                in_state: counts.get(i).copied().unwrap_or(0),
                risk: s.risk.clone(),
                threshold: (s.kind == Kind::Artifact)
                    .then(|| d.thresholds.get(i).copied())
                    .flatten(),
                expected_remaining_ms: s.expected_remaining_ms,
                layer: depth[i],
                position,
                timeout_ms: timeout.as_ref().map(|t| t.0),
                timeout_artifact: timeout.map(|t| t.1),
            }
        })
        .collect();
    Graph {
        flow: t.flow.clone(),
        model_version: t.model_version,
        observed_total: t.observed_total,
        in_flight: counts.iter().sum(),
        states,
        edges,
        layout,
    }
}

const NODE_W: f64 = 210.0;
const NODE_H: f64 = 72.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 70.0;
const MARGIN: f64 = 90.0;
/// The slot of an edge passing through a layer, and the gap beside one.
const DUMMY_W: f64 = 16.0;
const DUMMY_GAP: f64 = 18.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The worst artifact risk in a FIG. 11 row.
fn worst(risk: &BTreeMap<String, f64>) -> Option<(&str, f64)> {
    risk.iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(a, r)| (a.as_str(), *r))
}

/// Draws the graph as a self-contained SVG document.
pub fn svg(g: &Graph) -> String {
    let lay = &g.layout;
    let layers = lay.layers.len();
    let slot_w = |s: &Slot| match s {
        Slot::Node(_) => NODE_W,
        Slot::Dummy(_) => DUMMY_W,
    };
    let gap = |a: &Slot, b: &Slot| match (a, b) {
        (Slot::Node(_), Slot::Node(_)) => GAP_X,
        _ => DUMMY_GAP,
    };
    // The centre x of every slot: near its neighbours, the leftmost at the margin.
    let xs: Vec<Vec<f64>> = layout::x_positions(lay, slot_w, gap)
        .into_iter()
        .map(|row| row.into_iter().map(|x| x + MARGIN).collect())
        .collect();
    let right = lay
        .layers
        .iter()
        .zip(&xs)
        .flat_map(|(row, x)| row.iter().zip(x).map(|(s, x)| x + slot_w(s) / 2.0))
        .fold(MARGIN + NODE_W, f64::max);
    let width = right + MARGIN;
    let height = 40.0 + layers as f64 * (NODE_H + GAP_Y);
    let y_of = |l: usize| 20.0 + l as f64 * (NODE_H + GAP_Y) + NODE_H / 2.0;
    let index: BTreeMap<&str, usize> = g
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let centre = |i: usize| {
        let (l, p) = lay.node_at[i];
        (xs[l][p], y_of(l))
    };
    let at: BTreeMap<&str, (f64, f64, usize)> = index
        .iter()
        .map(|(name, &i)| {
            let (x, y) = centre(i);
            (*name, (x, y, lay.node_at[i].0))
        })
        .collect();
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="flow {name}" font-family="system-ui, sans-serif" font-size="12">
<title>flow {name}</title>
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>
<style>.edge{{fill:none;stroke:#777;}} .elabel{{fill:#333;font-size:11px;}} .node rect{{stroke:#333;stroke-width:1.2;}} .initial rect{{stroke-width:3;}} .normal rect{{fill:#eef3fb;}} .terminal rect{{fill:#e3f4e1;}} .artifact rect{{fill:#fbe4e1;stroke:#b3261e;}} .sub{{font-size:11px;fill:#333;}} .hot{{fill:#b3261e;font-weight:bold;}}</style>
"##,
        name = esc(&g.flow)
    );
    for (ei, e) in g.edges.iter().enumerate() {
        let (Some(&(x1, y1, l1)), Some(&(x2, y2, l2))) =
            (at.get(e.from.as_str()), at.get(e.to.as_str()))
        else {
            continue;
        };
        let label = if e.observed > 0.0 {
            format!("{:.2} (n={:.0})", e.probability, e.observed)
        } else {
            format!("{:.2}", e.probability)
        };
        let (d, lx, ly) = if e.from == e.to {
            // A loop on the state's right side.
            let (x, y) = (x1 + NODE_W / 2.0, y1);
            (
                format!(
                    "M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                    x,
                    y - 10.0,
                    x + 40.0,
                    y - 30.0,
                    x + 40.0,
                    y + 30.0,
                    x,
                    y + 10.0
                ),
                x + 42.0,
                y,
            )
        } else if l2 > l1 {
            // Down to the next layer, through the edge's own slot in each layer passed
            // (straight down across the layer's band), into the target's top. Labelled a
            // third of the way down the first leg: edges into one state meet near it.
            let route = lay.routes.get(ei).map_or(&[][..], Vec::as_slice);
            let mut d = format!("M{x1:.1},{:.1}", y1 + NODE_H / 2.0);
            for &(l, p) in route.iter().skip(1).take(route.len().saturating_sub(2)) {
                let (x, y) = (xs[l][p], y_of(l));
                let _ = write!(
                    d,
                    " L{x:.1},{:.1} L{x:.1},{:.1}",
                    y - NODE_H / 2.0,
                    y + NODE_H / 2.0
                );
            }
            let _ = write!(d, " L{x2:.1},{:.1}", y2 - NODE_H / 2.0);
            let (nx, _) = route.get(1).map_or((x2, 0.0), |&(l, p)| (xs[l][p], 0.0));
            let (sy, ey) = (y1 + NODE_H / 2.0, y1 + NODE_H / 2.0 + GAP_Y);
            (d, x1 + (nx - x1) / 3.0 + 4.0, sy + (ey - sy) / 3.0)
        } else if l2 == l1 && (x2 - x1).abs() > NODE_W + GAP_X + 1.0 {
            // Within a layer, past others: an arc under them, bottom to bottom.
            let (sy, ey) = (y1 + NODE_H / 2.0, y2 + NODE_H / 2.0);
            let cy = sy + 30.0 + 0.1 * (x2 - x1).abs();
            let cx = (x1 + x2) / 2.0;
            (
                format!("M{x1:.1},{sy:.1} Q{cx:.1},{cy:.1} {x2:.1},{ey:.1}"),
                cx - 12.0,
                (sy + cy) / 2.0 + 12.0,
            )
        } else if l2 == l1 {
            // Within a layer, next to each other: side to facing side.
            let side = if x2 >= x1 { 1.0 } else { -1.0 };
            let (sx, ex) = (x1 + side * NODE_W / 2.0, x2 - side * NODE_W / 2.0);
            (
                format!("M{sx:.1},{y1:.1} L{ex:.1},{y2:.1}"),
                (sx + ex) / 2.0 - 12.0,
                y1 - 6.0,
            )
        } else {
            // Back or sideways: an arc out to the side.
            let side = if x2 >= x1 { 1.0 } else { -1.0 };
            let (sx, ex) = (x1 + side * NODE_W / 2.0, x2 + side * NODE_W / 2.0);
            let bulge = side * (60.0 + (l1 as f64 - l2 as f64).abs() * 10.0);
            let (cx, cy) = ((sx + ex) / 2.0 + bulge, (y1 + y2) / 2.0);
            // Labelled on the curve's apex, halfway from the chord to the control point.
            (
                format!("M{sx:.1},{y1:.1} Q{cx:.1},{cy:.1} {ex:.1},{y2:.1}"),
                ((sx + ex) / 2.0 + cx) / 2.0 + 3.0,
                cy,
            )
        };
        let dash = if e.listed {
            ""
        } else {
            r#" stroke-dasharray="4 3""#
        };
        let w = 1.0 + 3.0 * e.probability;
        let _ = writeln!(
            o,
            r#"<g class="edgebox" data-from="{f}" data-to="{t}"><path class="edge" d="{d}" stroke-width="{w:.1}"{dash} marker-end="url(#arrow)"/><text class="elabel" x="{lx:.1}" y="{ly:.1}">{label}</text></g>"#,
            f = esc(&e.from),
            t = esc(&e.to),
        );
    }
    for (i, s) in g.states.iter().enumerate() {
        let (x, y) = centre(i);
        let kind = match s.kind {
            Kind::Artifact => "artifact",
            Kind::Terminal => "terminal",
            _ => "normal",
        };
        let initial = if s.initial { " initial" } else { "" };
        let title = s.label.as_deref().unwrap_or(&s.name);
        let sub = match s.kind {
            Kind::Artifact | Kind::Terminal => s.name.clone(),
            _ => format!("{} · {} in state", s.name, s.in_state),
        };
        // FIG. 11: the two largest artifact risks from here.
        let mut risks: Vec<(&String, &f64)> = s.risk.iter().filter(|(_, r)| **r > 0.0).collect();
        risks.sort_by(|a, b| b.1.total_cmp(a.1));
        let fig: Vec<(String, &str)> = match s.kind {
            Kind::Artifact => vec![(
                format!("artifact · alert at {:.2}", s.threshold.unwrap_or(0.0)),
                "sub",
            )],
            Kind::Terminal => vec![("terminal".to_string(), "sub")],
            _ => risks
                .iter()
                .take(2)
                .map(|(a, r)| (format!("{}: {:.4}", truncate(a, 22), r), "sub hot"))
                .collect(),
        };
        let hot = match worst(&s.risk) {
            Some((_, r)) if r > 0.0 && s.kind != Kind::Artifact => {
                let fig: Vec<String> = s
                    .risk
                    .iter()
                    .filter(|(_, r)| **r > 0.0)
                    .map(|(a, r)| format!("{a}: {r:.4}"))
                    .collect();
                format!("<title>{}</title>", esc(&fig.join(", ")))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            r#"<g class="node {kind}{initial}" data-state="{n}" data-in-state="{c}">{hot}<rect x="{rx:.1}" y="{ry:.1}" width="{NODE_W}" height="{NODE_H}" rx="8"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle" font-weight="600">{t}</text><text class="sub" x="{x:.1}" y="{sy:.1}" text-anchor="middle">{sub}</text>{figs}</g>"#,
            n = esc(&s.name),
            c = s.in_state,
            rx = x - NODE_W / 2.0,
            ry = y - NODE_H / 2.0,
            ty = y - 18.0,
            sy = y - 3.0,
            figs = fig
                .iter()
                .enumerate()
                .map(|(i, (f, class))| format!(
                    r#"<text class="{class}" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    y + 12.0 + 14.0 * i as f64,
                    esc(f)
                ))
                .collect::<String>(),
            t = esc(&truncate(title, 26)),
            sub = esc(&sub),
        );
    }
    o.push_str("</svg>\n");
    o
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
