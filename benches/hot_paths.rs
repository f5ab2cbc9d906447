//! Micro benchmarks of the hot paths (divan): `cargo bench --bench hot_paths`.
//! Figures and what limits them: BENCHMARKS.md. Nothing here asserts a time.

use flowcast::engine::markov::{FlowModel, Past};
use flowcast::engine::message::{decode, decode_projected};
use flowcast::engine::Engine;
use flowcast::model::{compile_files, CompiledFlow};
use std::hint::black_box;

fn main() {
    divan::main();
}

fn models() -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir("models")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn bundled() -> Vec<CompiledFlow> {
    compile_files(models()).flows
}

/// A real versioned nova notification (instance.update, about 2.4 KB) in its oslo envelope.
fn nova_line() -> Vec<u8> {
    let text = std::fs::read_to_string("examples/nova_instance_create/events.jsonl").unwrap();
    text.lines()
        .find(|l| l.contains("oslo.message") && l.contains("instance.update"))
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[divan::bench]
fn decode_nova_full(b: divan::Bencher) {
    let line = nova_line();
    b.bench(|| decode(black_box(&line)).unwrap());
}

#[divan::bench]
fn decode_nova_projected(b: divan::Bencher) {
    let line = nova_line();
    let projection = Engine::new(bundled()).projection();
    b.bench(|| decode_projected(black_box(&line), &projection).unwrap());
}

#[divan::bench]
fn match_rules_nova_instance_create(b: divan::Bencher) {
    let flows = bundled();
    let flow = flows
        .iter()
        .find(|f| f.name == "nova_instance_create")
        .unwrap()
        .clone();
    let msg = decode(&nova_line()).unwrap();
    b.bench(|| {
        flow.rules
            .iter()
            .find(|r| r.cond.eval(black_box(&msg.value)))
            .map(|r| r.target)
    });
}

const LOOP: &str = r#"
flow loop {
    key payload.id
    initial a
    state b
    terminal done
    on "a" -> a
    on "b" -> b
    on "done" -> done
    transitions { a -> b 10  b -> a 10  b -> done 1 }
    learn { expire 30d }
}"#;

/// One state update: decode is excluded; match, move, learn, predict, alert check included.
#[divan::bench]
fn state_update(b: divan::Bencher) {
    let flows = compile_files([("loop.flow".to_string(), LOOP.as_bytes().to_vec())]).flows;
    let mut engine = Engine::new(flows);
    let msgs: Vec<_> = (0..2000)
        .map(|i| {
            let et = if i % 2 == 0 { "a" } else { "b" };
            flowcast::engine::message::from_value(serde_json::json!({
                "event_type": et, "timestamp": 1_767_225_600 + i / 10, "payload": {"id": format!("o{}", i % 100)}
            }))
            .unwrap()
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    b.bench_local(|| {
        engine.observe(&msgs[i % msgs.len()], &mut out);
        out.clear();
        i += 1;
    });
}

/// A flow with `n` states: a chain with a retry loop every ten states.
fn chain_flow(n: usize) -> CompiledFlow {
    let mut src = String::from("flow c {\n key payload.id\n initial s0\n");
    for i in 1..n - 2 {
        src.push_str(&format!(" state s{i}\n"));
    }
    src.push_str(&format!(
        " terminal s{}\n artifact s{} \"Error State Failure\"\n",
        n - 2,
        n - 1
    ));
    for i in 0..n {
        src.push_str(&format!(" on \"s{i}\" -> s{i}\n"));
    }
    src.push_str(" transitions {\n");
    for i in 0..n - 2 {
        src.push_str(&format!(
            "  s{i} -> s{} 10\n  s{i} -> s{} 1\n",
            i + 1,
            n - 1
        ));
        if i % 10 == 9 {
            src.push_str(&format!("  s{i} -> s{} 2\n", i - 5));
        }
    }
    src.push_str(" }\n}\n");
    let c = compile_files([("chain.flow".to_string(), src.into_bytes())]);
    assert!(!c.has_errors(), "{}", c.render());
    c.flows.into_iter().next().unwrap()
}

#[divan::bench(args = [5, 50, 500])]
fn model_refresh(b: divan::Bencher, n: usize) {
    let flow = chain_flow(n);
    let mut model = FlowModel::new(&flow);
    model.set_now(1_767_225_600_000);
    for i in 0..(n - 2) as u16 {
        model.observe(Past::NONE, i, i + 1, 1000);
    }
    b.bench_local(|| model.refresh());
}

#[divan::bench]
fn prediction_lookup(b: divan::Bencher) {
    let flow = chain_flow(50);
    let mut model = FlowModel::new(&flow);
    model.refresh();
    let sol = model.cached().unwrap().clone();
    let (mut scratch, mut risk) = (Vec::new(), Vec::new());
    b.bench_local(|| {
        model.predict(
            &sol,
            Past::NONE,
            black_box(17),
            0.0,
            &mut scratch,
            &mut risk,
        );
        risk[0]
    });
}

#[divan::bench]
fn compile_bundled_models(b: divan::Bencher) {
    let files = models();
    b.bench(|| compile_files(black_box(files.clone())).flows.len());
}

/// Refitting the feature model (`learn { features on }`) on a full buffer: 50,000 transitions
/// out of 6 states with 3 successors each, features drawn from a fixed pseudo-random sequence.
/// This runs inline in the engine when a tenth of the buffer is new (every 5,000 transitions),
/// at most once a minute of event time.
#[divan::bench(sample_count = 5)]
fn feature_model_refit_50k(b: divan::Bencher) {
    use flowcast::engine::features::{Example, FeatureModel, CAPACITY, N};
    let mut m = FeatureModel::default();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..CAPACITY {
        let from = (next() % 6) as u16;
        let mut values = [0u16; N];
        for v in values.iter_mut() {
            *v = (next() % 8) as u16;
        }
        let to = if values[5] < 3 {
            6
        } else {
            7 + (next() % 2) as u16
        };
        m.add(Example {
            at_ms: i as i64,
            from,
            to,
            values,
        });
    }
    b.bench_local(|| {
        m.fit(0, |_| vec![(6, 0.4), (7, 0.3), (8, 0.3)], |_| 1.0);
    });
}
