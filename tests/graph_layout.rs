//! Issue 14: the flow drawn by `GET /api/flows/{name}/graph?format=svg` does not tangle its
//! edges. The states of each layer are ordered to reduce crossings (`service/layout.rs`), and
//! these tests count the crossings in the SVG itself, segment by segment: on every bundled
//! model and on a generated flow of 50 states, the drawing has no more crossings than the
//! declaration order gives, far fewer on the generated flow, and within the bounds stated
//! below. The drawings are written under `target/graph-layout/` for review.
//! The count read from the SVG equals the layout's own count, so the figure measures what a
//! person sees. (Edges within a layer or back up are drawn as arcs on the side and are not
//! counted; edges going down are.)

use flowcast::engine::Engine;
use flowcast::model::compile_files;
use flowcast::service::api::graph_data;
use flowcast::service::graph::{self, Graph};
use flowcast::service::layout::{self, Order};

/// The graphs of every flow of a `.flow` text, ordered both ways: (reduced, declared).
fn graphs(name: &str, text: &str) -> Vec<(Graph, Graph)> {
    let comp = compile_files([(name.to_string(), text.as_bytes().to_vec())]);
    assert!(
        comp.diagnostics
            .iter()
            .all(|(_, d)| d.severity != flowcast::diagnostic::Severity::Error),
        "{name}: {:?}",
        comp.diagnostics
    );
    let mut engine = Engine::new(comp.flows);
    (0..engine.flows.len())
        .map(|fi| {
            let d = graph_data(&mut engine, fi);
            (
                graph::build(&d, &[]),
                graph::build_ordered(&d, &[], Order::Declared),
            )
        })
        .collect()
}

/// Writes a drawing under `target/graph-layout/` for review.
fn keep(name: &str, svg: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/graph-layout");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.svg")), svg).unwrap();
}

type Point = (f64, f64);

/// The straight segments of each edge drawn in an SVG (`<path class="edge" d="M.. L..">`);
/// the curves (loops and arcs) are left out.
fn segments(svg: &str) -> Vec<Vec<(Point, Point)>> {
    svg.split(r#"<path class="edge" d=""#)
        .skip(1)
        .filter_map(|rest| {
            let d = &rest[..rest.find('"').unwrap()];
            if d.contains(['C', 'Q']) {
                return None;
            }
            let pts: Vec<Point> = d
                .split(['M', 'L'])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            Some(pts.windows(2).map(|w| (w[0], w[1])).collect())
        })
        .collect()
}

/// Pairs of segments of different edges that properly cross (touching at an end is not a
/// crossing: edges leave and enter a state at one point).
fn drawn_crossings(svg: &str) -> usize {
    fn orient(a: Point, b: Point, c: Point) -> f64 {
        (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
    }
    let cross = |(a, b): (Point, Point), (c, d): (Point, Point)| {
        let eps = 1e-6;
        let (o1, o2) = (orient(a, b, c), orient(a, b, d));
        let (o3, o4) = (orient(c, d, a), orient(c, d, b));
        ((o1 > eps && o2 < -eps) || (o1 < -eps && o2 > eps))
            && ((o3 > eps && o4 < -eps) || (o3 < -eps && o4 > eps))
    };
    let edges = segments(svg);
    let mut n = 0;
    for (i, e) in edges.iter().enumerate() {
        for f in &edges[i + 1..] {
            for &s in e {
                n += f.iter().filter(|&&t| cross(s, t)).count();
            }
        }
    }
    n
}

#[test]
fn the_bundled_models_are_drawn_with_no_more_crossings_than_declared_and_as_counted() {
    let mut flows = 0;
    let (mut total, mut total0) = (0, 0);
    for f in flowcast::model::collect_flow_files(&["models".into()]).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (g, naive) in graphs(&f.display().to_string(), &text) {
            let svg = graph::svg(&g);
            keep(&g.flow, &svg);
            keep(&format!("{}-declared-order", g.flow), &graph::svg(&naive));
            let (c, c0) = (
                layout::crossings(&g.layout),
                layout::crossings(&naive.layout),
            );
            eprintln!("{}: {c} crossings (declared order: {c0})", g.flow);
            assert!(c <= c0, "{}: {c} > {c0}", g.flow);
            assert_eq!(drawn_crossings(&svg), c, "{}\n{svg}", g.flow);
            assert_eq!(drawn_crossings(&graph::svg(&naive)), c0, "{}", g.flow);
            // Every state drawn once, every edge going down drawn as straight legs.
            assert_eq!(svg.matches(r#"<g class="node "#).count(), g.states.len());
            assert_eq!(
                svg.matches(r#"class="edgebox""#).count(),
                g.edges.len(),
                "{}",
                g.flow
            );
            flows += 1;
            total += c;
            total0 += c0;
        }
    }
    assert!(flows >= 4, "{flows}");
    // The stated bound: at most 16 crossings over the five bundled flows (13 today: the
    // fans of several states into both `completed` and `action_failed` cannot all be
    // untangled), and at most a quarter of what the declared order gives (86 today).
    eprintln!("bundled: {total} crossings (declared order: {total0})");
    assert!(total <= 16, "{total}");
    assert!(4 * total <= total0, "{total} vs {total0}");
}

/// A flow of `layers` x `width` states with a tidy shape (each state leads to the state
/// "below" it and its right neighbour in the next layer, some also two layers down: it can be
/// drawn with few crossings), but whose states are declared in an order that knows nothing of
/// that shape: the tangle a large real process gives when its states are listed by name. The
/// order is shuffled by a fixed pseudo-random sequence.
fn generated(layers: usize, width: usize, mut seed: u64) -> String {
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // The name of the state at place `h` of layer `l` is `s{l}_{perm[l][h]}`.
    let perm: Vec<Vec<usize>> = (0..layers)
        .map(|_| {
            let mut p: Vec<usize> = (0..width).collect();
            for i in (1..width).rev() {
                p.swap(i, next(i + 1));
            }
            p
        })
        .collect();
    let name = |l: usize, h: usize| format!("s{l}_{}", perm[l][h]);
    let mut out = String::from("flow big {\n    key payload.id\n");
    // Declared by name, as a person lists them.
    for l in 0..layers {
        for k in 0..width {
            let kind = if l == 0 { "initial" } else { "state" };
            out.push_str(&format!("    {kind} s{l}_{k}\n"));
        }
    }
    out.push_str("    terminal done\n    artifact failed\n");
    for l in 0..layers {
        for k in 0..width {
            out.push_str(&format!("    on \"e.s{l}_{k}\" -> s{l}_{k}\n"));
        }
    }
    out.push_str("    transitions {\n");
    for l in 0..layers {
        for h in 0..width {
            let from = name(l, h);
            if l + 1 == layers {
                out.push_str(&format!(
                    "        {from} -> done 9\n        {from} -> failed 1\n"
                ));
                continue;
            }
            let mut to = vec![name(l + 1, h)];
            if h + 1 < width {
                to.push(name(l + 1, h + 1));
            }
            if l + 2 < layers && next(3) == 0 {
                to.push(name(l + 2, h));
            }
            for t in to {
                out.push_str(&format!("        {from} -> {t} {}\n", 1 + next(9)));
            }
        }
    }
    out.push_str("    }\n}\n");
    out
}

#[test]
fn a_large_generated_flow_is_drawn_with_far_fewer_crossings_than_declared() {
    // 8 layers of 6 states, 2 final states: 50 states, about 100 edges.
    let text = generated(8, 6, 0x5eed_f10c_ca57);
    let (g, naive) = graphs("big.flow", &text).remove(0);
    assert_eq!(g.states.len(), 50);
    let (c, c0) = (
        layout::crossings(&g.layout),
        layout::crossings(&naive.layout),
    );
    let svg = graph::svg(&g);
    keep("big", &svg);
    keep("big-declared-order", &graph::svg(&naive));
    let drawn = drawn_crossings(&svg);
    eprintln!(
        "big: {} states, {} edges: {c} crossings (declared order: {c0}), {drawn} in the SVG",
        g.states.len(),
        g.edges.len()
    );
    assert_eq!(drawn, c);
    assert_eq!(drawn_crossings(&graph::svg(&naive)), c0);
    assert!(c0 > 0);
    // The stated bound: at most 40 crossings (28 today; the fan of the last layer's six
    // states into both `done` and `failed` alone forces 15), and at most a tenth of the
    // declared order's (329 today).
    assert!(c <= 40, "{c} crossings");
    assert!(10 * c <= c0, "{c} crossings, declared order {c0}");
    // The JSON's places agree with the drawing: a permutation of 0.. in each layer.
    let layers = g.states.iter().map(|s| s.layer).max().unwrap() + 1;
    for l in 0..layers {
        let mut places: Vec<usize> = g
            .states
            .iter()
            .filter(|s| s.layer == l)
            .map(|s| s.position)
            .collect();
        places.sort_unstable();
        assert_eq!(places, (0..places.len()).collect::<Vec<_>>(), "layer {l}");
    }
}

#[test]
fn flowcast_graph_draws_the_same_svg_without_graphviz() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .arg("graph")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["models/patent_disk_attach.flow", "--format", "svg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8(out.stdout).unwrap();
    let text = std::fs::read_to_string("models/patent_disk_attach.flow").unwrap();
    let (g, _) = graphs("patent_disk_attach.flow", &text).remove(0);
    assert_eq!(svg, graph::svg(&g));
    assert!(svg.starts_with("<svg "), "{svg}");
    // A file of several flows: which one is asked for (usage, exit 2).
    let out = run(&["models/legacy_compute_instance.flow", "--format", "svg"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pick it with --flow (legacy_instance_create, legacy_instance_action)"),
        "{err}"
    );
    let out = run(&[
        "models/legacy_compute_instance.flow",
        "--flow",
        "legacy_instance_action",
        "--format",
        "svg",
    ]);
    assert!(out.status.success());
    assert_eq!(drawn_crossings(&String::from_utf8(out.stdout).unwrap()), 8);
}
