//! The order of the states within the layers of a drawn flow, chosen to reduce edge crossings:
//! the layered method of Sugiyama et al. that Graphviz's `dot` follows. An edge that spans
//! several layers passes through a dummy slot in each layer between, so that every edge
//! segment joins two adjacent layers; the slots of each layer are then ordered by the
//! barycenter (mean position) of their neighbours, sweeping down and up, and adjacent slots
//! are swapped while that removes crossings (dot's "transpose").
//!
//! The rule it keeps: the order chosen never has more crossings than the declaration order
//! (the best order seen is kept, and the declaration order is the first seen), and it is
//! deterministic (stable sorts, no randomness), so a flow is always drawn the same way.
//! Edges within a layer or back up are not part of the layered problem: the drawing routes
//! them as arcs on the side.

/// What stands in a layer: a state, or an edge passing through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A node (state) by its index.
    Node(usize),
    /// The edge (by its index in the input) crossing this layer.
    Dummy(usize),
}

#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Per layer, its slots left to right.
    pub layers: Vec<Vec<Slot>>,
    /// Per node: its layer and its place among the slots of the layer.
    pub node_at: Vec<(usize, usize)>,
    /// Per input edge going down: every slot it passes, its source's first and its target's
    /// last, as (layer, place). Empty for an edge within a layer or back up.
    pub routes: Vec<Vec<(usize, usize)>>,
}

/// How the slots of a layer are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Nodes in index (declaration) order, then the dummies in edge order: the baseline.
    Declared,
    /// Barycenter sweeps and transposition, never worse than `Declared`.
    Barycenter,
}

/// The layer of each node: the longest path to it from a root (an initial state) over the
/// edges that are not back edges, so that every other edge points down (Sugiyama's first two
/// steps; dot's ranks minimise total length instead, which this approximates for flows).
/// Back edges are those a depth-first walk from the roots (in index order, successors in edge
/// order) finds closing a cycle. Nodes no root reaches go one layer below the rest.
pub fn layers(n: usize, edges: &[(usize, usize)], roots: &[bool]) -> Vec<usize> {
    let mut succ = vec![Vec::new(); n];
    for (e, &(a, b)) in edges.iter().enumerate() {
        if a < n && b < n {
            succ[a].push((b, e));
        }
    }
    // Iterative depth-first walk: 0 unseen, 1 on the stack, 2 done.
    let mut mark = vec![0u8; n];
    let mut back = vec![false; edges.len()];
    let mut post = Vec::with_capacity(n);
    for r in (0..n).filter(|&r| roots.get(r).copied().unwrap_or(false)) {
        if mark[r] != 0 {
            continue;
        }
        let mut stack = vec![(r, 0usize)];
        mark[r] = 1;
        while let Some(&mut (v, ref mut i)) = stack.last_mut() {
            if let Some(&(w, e)) = succ[v].get(*i) {
                *i += 1;
                match mark[w] {
                    0 => {
                        mark[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => back[e] = true,
                    _ => {}
                }
            } else {
                mark[v] = 2;
                post.push(v);
                stack.pop();
            }
        }
    }
    // Longest path, in topological order (reverse post-order) of the reached nodes.
    let mut layer = vec![usize::MAX; n];
    for &v in post.iter().rev() {
        if layer[v] == usize::MAX {
            layer[v] = 0;
        }
        for &(w, e) in &succ[v] {
            if !back[e] && mark[w] == 2 {
                layer[w] = if layer[w] == usize::MAX {
                    layer[v] + 1
                } else {
                    layer[w].max(layer[v] + 1)
                };
            }
        }
    }
    let last = layer
        .iter()
        .filter(|&&l| l != usize::MAX)
        .max()
        .map_or(0, |m| m + 1);
    for l in layer.iter_mut().filter(|l| **l == usize::MAX) {
        *l = last;
    }
    layer
}

/// Sweeps down and up, at most; they stop early when a sweep pair finds nothing better.
const MAX_ROUNDS: usize = 24;

/// Lays out nodes given their layers and the edges (from, to) between them.
pub fn layout(layer_of: &[usize], edges: &[(usize, usize)], order: Order) -> Layout {
    let layers_n = layer_of.iter().max().map_or(0, |m| m + 1);
    let mut layers: Vec<Vec<Slot>> = vec![Vec::new(); layers_n];
    for (i, &l) in layer_of.iter().enumerate() {
        layers[l].push(Slot::Node(i));
    }
    // The chain of slots of each downward edge.
    let mut chains: Vec<Vec<Slot>> = vec![Vec::new(); edges.len()];
    for (e, &(a, b)) in edges.iter().enumerate() {
        let (la, lb) = (layer_of[a], layer_of[b]);
        if lb <= la {
            continue;
        }
        chains[e].push(Slot::Node(a));
        for layer in layers.iter_mut().take(lb).skip(la + 1) {
            layer.push(Slot::Dummy(e));
            chains[e].push(Slot::Dummy(e));
        }
        chains[e].push(Slot::Node(b));
    }
    let mut g = Layered::new(layers, &chains);
    if order == Order::Barycenter {
        g.reduce();
    }
    g.into_layout(layer_of.len(), &chains)
}

/// Rounds of placement: each moves the slots of every layer towards their neighbours.
const PLACE_ROUNDS: usize = 8;

/// The centre x of every slot (per layer, left to right), the leftmost edge at 0: each slot
/// as near the mean x of its neighbours in the layer above (rounds going down) or below
/// (going up) as the order and the spacing allow, so that chains of states run straight down.
/// Each layer's placement is the best in the least-squares sense (isotonic regression: pool
/// adjacent violators); the order, and so the crossings, never change.
pub fn x_positions(
    l: &Layout,
    width: impl Fn(&Slot) -> f64,
    gap: impl Fn(&Slot, &Slot) -> f64,
) -> Vec<Vec<f64>> {
    // Minimum distance between the centres of neighbouring slots.
    let seps: Vec<Vec<f64>> = l
        .layers
        .iter()
        .map(|row| {
            let mut s = vec![0.0];
            for w in row.windows(2) {
                s.push(width(&w[0]) / 2.0 + gap(&w[0], &w[1]) + width(&w[1]) / 2.0);
            }
            s
        })
        .collect();
    // Packed, each layer centred on the widest.
    let spans: Vec<f64> = l
        .layers
        .iter()
        .zip(&seps)
        .map(|(row, s)| match (row.first(), row.last()) {
            (Some(a), Some(b)) => s.iter().sum::<f64>() + width(a) / 2.0 + width(b) / 2.0,
            _ => 0.0,
        })
        .collect();
    let widest = spans.iter().copied().fold(0.0, f64::max);
    let mut xs: Vec<Vec<f64>> = l
        .layers
        .iter()
        .zip(&seps)
        .zip(&spans)
        .map(|((row, s), span)| {
            let mut x = (widest - span) / 2.0 + row.first().map_or(0.0, |a| width(a) / 2.0);
            s.iter()
                .map(|d| {
                    x += d;
                    x
                })
                .collect()
        })
        .collect();
    // Neighbours of each slot in the layers above and below.
    let mut up: Vec<Vec<Vec<(usize, usize)>>> =
        l.layers.iter().map(|r| vec![Vec::new(); r.len()]).collect();
    let mut down = up.clone();
    for r in &l.routes {
        for w in r.windows(2) {
            down[w[0].0][w[0].1].push(w[1]);
            up[w[1].0][w[1].1].push(w[0]);
        }
    }
    let n = l.layers.len();
    for round in 0..PLACE_ROUNDS {
        let going_down = round % 2 == 0;
        let order: Vec<usize> = if going_down {
            (1..n).collect()
        } else {
            (0..n.saturating_sub(1)).rev().collect()
        };
        for layer in order {
            let wanted: Vec<f64> = (0..xs[layer].len())
                .map(|p| {
                    let ns = if going_down {
                        &up[layer][p]
                    } else {
                        &down[layer][p]
                    };
                    if ns.is_empty() {
                        xs[layer][p]
                    } else {
                        ns.iter().map(|&(a, b)| xs[a][b]).sum::<f64>() / ns.len() as f64
                    }
                })
                .collect();
            xs[layer] = spaced(&wanted, &seps[layer]);
        }
    }
    // The leftmost edge at 0.
    let left = l
        .layers
        .iter()
        .zip(&xs)
        .flat_map(|(row, x)| row.iter().zip(x).map(|(s, x)| x - width(s) / 2.0))
        .fold(f64::INFINITY, f64::min);
    if left.is_finite() {
        xs.iter_mut().flatten().for_each(|x| *x -= left);
    }
    xs
}

/// The positions nearest `wanted` (least squares) that keep their order with at least
/// `sep[p]` between positions `p - 1` and `p`: pool adjacent violators on `wanted` less the
/// cumulative separation.
fn spaced(wanted: &[f64], sep: &[f64]) -> Vec<f64> {
    let mut offset = Vec::with_capacity(wanted.len());
    let mut acc = 0.0;
    for (p, _) in wanted.iter().enumerate() {
        if p > 0 {
            acc += sep[p];
        }
        offset.push(acc);
    }
    // Blocks of (sum, count), each block's mean not above the next one's.
    let mut blocks: Vec<(f64, usize)> = Vec::new();
    for (w, o) in wanted.iter().zip(&offset) {
        blocks.push((w - o, 1));
        while blocks.len() > 1 {
            let (s2, c2) = blocks[blocks.len() - 1];
            let (s1, c1) = blocks[blocks.len() - 2];
            if s1 / c1 as f64 <= s2 / c2 as f64 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (s1 + s2, c1 + c2);
        }
    }
    blocks
        .iter()
        .flat_map(|&(s, c)| std::iter::repeat_n(s / c as f64, c))
        .zip(&offset)
        .map(|(y, o)| y + o)
        .collect()
}

/// Crossings between edge segments of adjacent layers, in a layout.
pub fn crossings(l: &Layout) -> usize {
    let mut segs: Vec<Vec<(usize, usize)>> = vec![Vec::new(); l.layers.len()];
    for r in &l.routes {
        for w in r.windows(2) {
            segs[w[0].0].push((w[0].1, w[1].1));
        }
    }
    segs.iter().map(|s| count_pairs(s)).sum()
}

/// Pairs of segments (upper place, lower place) that cross: one starts left of the other
/// and ends right of it. Segments sharing an end do not cross.
fn count_pairs(segs: &[(usize, usize)]) -> usize {
    let mut n = 0;
    for (i, a) in segs.iter().enumerate() {
        for b in &segs[i + 1..] {
            if (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1) {
                n += 1;
            }
        }
    }
    n
}

/// The layered graph being ordered: slots by id, their layer, and the segments between
/// adjacent layers.
struct Layered {
    /// Per layer, slot ids left to right.
    order: Vec<Vec<usize>>,
    slots: Vec<Slot>,
    /// Per slot: its place in its layer.
    place: Vec<usize>,
    /// Per slot: the slots it joins in the layer above, and below.
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
}

impl Layered {
    fn new(layers: Vec<Vec<Slot>>, chains: &[Vec<Slot>]) -> Layered {
        let mut slots = Vec::new();
        let mut order = Vec::new();
        let mut id_of = std::collections::HashMap::new();
        for (l, layer) in layers.iter().enumerate() {
            let mut ids = Vec::new();
            for &s in layer {
                id_of.insert((l, s), slots.len());
                ids.push(slots.len());
                slots.push(s);
            }
            order.push(ids);
        }
        let mut place = vec![0; slots.len()];
        for ids in &order {
            for (p, &id) in ids.iter().enumerate() {
                place[id] = p;
            }
        }
        let (mut up, mut down) = (vec![Vec::new(); slots.len()], vec![Vec::new(); slots.len()]);
        for chain in chains.iter().filter(|c| !c.is_empty()) {
            // The chain's slots, one per layer from its source's.
            let first = layers
                .iter()
                .position(|l| l.contains(&chain[0]))
                .unwrap_or(0);
            let ids: Vec<usize> = chain
                .iter()
                .enumerate()
                .filter_map(|(k, s)| id_of.get(&(first + k, *s)).copied())
                .collect();
            for w in ids.windows(2) {
                down[w[0]].push(w[1]);
                up[w[1]].push(w[0]);
            }
        }
        Layered {
            order,
            slots,
            place,
            up,
            down,
        }
    }

    /// Crossings between layer `l` and the layer below it.
    fn crossings_below(&self, l: usize) -> usize {
        let segs: Vec<(usize, usize)> = self.order[l]
            .iter()
            .flat_map(|&a| self.down[a].iter().map(move |&b| (a, b)))
            .map(|(a, b)| (self.place[a], self.place[b]))
            .collect();
        count_pairs(&segs)
    }

    fn total(&self) -> usize {
        (0..self.order.len().saturating_sub(1))
            .map(|l| self.crossings_below(l))
            .sum()
    }

    fn renumber(&mut self, l: usize) {
        for (p, &id) in self.order[l].iter().enumerate() {
            self.place[id] = p;
        }
    }

    /// Orders layer `l` by the mean place of each slot's neighbours in the layer above
    /// (`from_above`) or below; a slot with none keeps its place.
    fn sort_layer(&mut self, l: usize, from_above: bool) {
        let keys: Vec<(f64, usize)> = self.order[l]
            .iter()
            .map(|&id| {
                let ns = if from_above {
                    &self.up[id]
                } else {
                    &self.down[id]
                };
                let key = if ns.is_empty() {
                    self.place[id] as f64
                } else {
                    ns.iter().map(|&n| self.place[n] as f64).sum::<f64>() / ns.len() as f64
                };
                (key, id)
            })
            .collect();
        let mut sorted = keys;
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.order[l] = sorted.into_iter().map(|(_, id)| id).collect();
        self.renumber(l);
    }

    /// Swaps adjacent slots while that removes crossings with the layers above and below.
    fn transpose(&mut self) {
        let around = |g: &Layered, l: usize| {
            let above = if l > 0 { g.crossings_below(l - 1) } else { 0 };
            let below = if l + 1 < g.order.len() {
                g.crossings_below(l)
            } else {
                0
            };
            above + below
        };
        let mut improved = true;
        let mut rounds = 0;
        while improved && rounds < MAX_ROUNDS {
            improved = false;
            rounds += 1;
            for l in 0..self.order.len() {
                for p in 0..self.order[l].len().saturating_sub(1) {
                    let before = around(self, l);
                    self.order[l].swap(p, p + 1);
                    self.renumber(l);
                    if around(self, l) < before {
                        improved = true;
                    } else {
                        self.order[l].swap(p, p + 1);
                        self.renumber(l);
                    }
                }
            }
        }
    }

    fn reduce(&mut self) {
        let mut best = (self.total(), self.order.clone());
        for round in 0..MAX_ROUNDS {
            if best.0 == 0 {
                break;
            }
            if round % 2 == 0 {
                for l in 1..self.order.len() {
                    self.sort_layer(l, true);
                }
            } else {
                for l in (0..self.order.len().saturating_sub(1)).rev() {
                    self.sort_layer(l, false);
                }
            }
            self.transpose();
            let c = self.total();
            if c < best.0 {
                best = (c, self.order.clone());
            }
        }
        self.order = best.1;
        for l in 0..self.order.len() {
            self.renumber(l);
        }
    }

    fn into_layout(self, nodes: usize, chains: &[Vec<Slot>]) -> Layout {
        let layers: Vec<Vec<Slot>> = self
            .order
            .iter()
            .map(|ids| ids.iter().map(|&id| self.slots[id]).collect())
            .collect();
        let mut node_at = vec![(0, 0); nodes];
        let mut dummy_at = std::collections::HashMap::new();
        for (l, layer) in layers.iter().enumerate() {
            for (p, s) in layer.iter().enumerate() {
                match *s {
                    Slot::Node(n) => node_at[n] = (l, p),
                    Slot::Dummy(e) => {
                        dummy_at.insert((e, l), p);
                    }
                }
            }
        }
        let routes = chains
            .iter()
            .enumerate()
            .map(|(e, chain)| {
                let Some(Slot::Node(a)) = chain.first() else {
                    return Vec::new();
                };
                let first = node_at[*a].0;
                chain
                    .iter()
                    .enumerate()
                    .map(|(k, s)| match *s {
                        Slot::Node(n) => node_at[n],
                        Slot::Dummy(_) => (first + k, dummy_at[&(e, first + k)]),
                    })
                    .collect()
            })
            .collect();
        Layout {
            layers,
            node_at,
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crossing_the_declared_order_makes_is_undone() {
        // a b over c d, with a -> d and b -> c: one crossing as declared, none once ordered.
        let layers = [0, 0, 1, 1];
        let edges = [(0, 3), (1, 2)];
        let naive = layout(&layers, &edges, Order::Declared);
        assert_eq!(crossings(&naive), 1);
        let ordered = layout(&layers, &edges, Order::Barycenter);
        assert_eq!(crossings(&ordered), 0);
        assert_eq!(ordered.routes[0].len(), 2);
    }

    #[test]
    fn placement_keeps_the_order_and_the_spacing_and_straightens_chains() {
        // a over b; b also under the far right c: b sits between them, a chain runs straight.
        let x = spaced(&[5.0, 5.0, 5.0], &[0.0, 2.0, 2.0]);
        assert_eq!(x, [3.0, 5.0, 7.0]);
        assert_eq!(spaced(&[0.0, 10.0], &[0.0, 2.0]), [0.0, 10.0]);
        let l = layout(&[0, 0, 1], &[(0, 2), (1, 2)], Order::Barycenter);
        let xs = x_positions(&l, |_| 10.0, |_, _| 10.0);
        assert_eq!(xs[0], [5.0, 25.0]);
        assert_eq!(xs[1], [15.0]);
        let l = layout(&[0, 1, 2], &[(0, 1), (1, 2)], Order::Barycenter);
        let xs = x_positions(&l, |_| 10.0, |_, _| 10.0);
        assert_eq!(xs, [vec![5.0], vec![5.0], vec![5.0]]);
    }

    #[test]
    fn layers_follow_the_longest_path_and_cycles_point_back_up() {
        // r -> a -> b -> c, r -> c, c -> a (a cycle), and u unreached.
        let edges = [(0, 1), (1, 2), (2, 3), (0, 3), (3, 1)];
        let l = layers(5, &edges, &[true, false, false, false, false]);
        assert_eq!(l, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_long_edge_passes_through_a_dummy_in_each_layer_between() {
        let layers = [0, 1, 2, 3];
        let edges = [(0, 1), (1, 2), (2, 3), (0, 3), (3, 0)];
        let l = layout(&layers, &edges, Order::Barycenter);
        assert_eq!(l.routes[3].len(), 4);
        assert_eq!(l.layers[1].len(), 2);
        assert_eq!(l.layers[2].len(), 2);
        // An edge back up is not routed through the layers.
        assert!(l.routes[4].is_empty());
        assert_eq!(crossings(&l), 0);
    }
}
