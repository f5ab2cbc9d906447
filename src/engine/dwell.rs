//! Dwell times: how long objects stay in a state before each transition (patent [0102]).
//!
//! A histogram with power-of-two millisecond buckets: bucket 0 holds dwells under 1 ms, bucket
//! `b` holds [2^(b-1), 2^b) ms, the last holds everything longer (~18 years). 46 buckets cover
//! milliseconds to years with a constant relative resolution, in 368 bytes, and give the
//! survival function and the mean residual time the predictions need.

use serde::{Deserialize, Serialize};

pub const BUCKETS: usize = 46;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DwellHist {
    #[serde(with = "bucket_serde")]
    pub w: [f64; BUCKETS],
    pub total: f64,
}

impl Default for DwellHist {
    fn default() -> Self {
        DwellHist {
            w: [0.0; BUCKETS],
            total: 0.0,
        }
    }
}

/// Lower bound of a bucket, in ms.
fn lower(b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        (1u64 << (b - 1)) as f64
    }
}

/// Upper bound of a bucket, in ms.
fn upper(b: usize) -> f64 {
    (1u64 << b) as f64
}

pub fn bucket_of(ms: i64) -> usize {
    if ms < 1 {
        0
    } else {
        ((64 - (ms as u64).leading_zeros()) as usize).min(BUCKETS - 1)
    }
}

impl DwellHist {
    pub fn add(&mut self, dwell_ms: i64, weight: f64) {
        self.w[bucket_of(dwell_ms)] += weight;
        self.total += weight;
    }

    pub fn scale(&mut self, f: f64) {
        for w in self.w.iter_mut() {
            *w *= f;
        }
        self.total *= f;
    }

    pub fn merge(&mut self, other: &DwellHist) {
        for (a, b) in self.w.iter_mut().zip(other.w.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Share of the weight with a dwell longer than `e_ms` (uniform within a bucket).
    pub fn survival(&self, e_ms: f64) -> f64 {
        if self.total <= 0.0 {
            return 1.0;
        }
        let b = bucket_of(e_ms as i64);
        let (lo, hi) = (lower(b), upper(b));
        let frac_above = ((hi - e_ms) / (hi - lo)).clamp(0.0, 1.0);
        let above: f64 = self.w[b + 1..].iter().sum::<f64>() + self.w[b] * frac_above;
        (above / self.total).clamp(0.0, 1.0)
    }

    /// `survival(upper(b))` for every bucket `b` in one pass (suffix sums), for searches over
    /// time that would otherwise sum the tail once per point.
    pub fn boundary_survivals(&self, out: &mut [f64; BUCKETS]) {
        if self.total <= 0.0 {
            *out = [1.0; BUCKETS];
            return;
        }
        let mut above = 0.0;
        for b in (0..BUCKETS).rev() {
            // At a bucket's upper edge nothing of it is left: what survives is above it.
            out[b] = (above / self.total).clamp(0.0, 1.0);
            above += self.w[b];
        }
    }

    /// Mean dwell, ms (bucket midpoints).
    pub fn mean(&self) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        self.w
            .iter()
            .enumerate()
            .map(|(b, w)| w * (lower(b) + upper(b)) / 2.0)
            .sum::<f64>()
            / self.total
    }

    /// Expected remaining dwell given `e_ms` already spent: E[D - e | D > e].
    pub fn mean_residual(&self, e_ms: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let b0 = bucket_of(e_ms as i64);
        let mut mass = 0.0;
        let mut sum = 0.0;
        for b in b0..BUCKETS {
            let (lo, hi) = (lower(b).max(e_ms), upper(b));
            if hi <= lo {
                continue;
            }
            let share = if b == b0 {
                (hi - lo) / (upper(b) - lower(b))
            } else {
                1.0
            };
            let m = self.w[b] * share;
            mass += m;
            sum += m * ((lo + hi) / 2.0 - e_ms);
        }
        if mass > 0.0 {
            sum / mass
        } else {
            0.0
        }
    }

    /// The q-quantile (0..1) of the dwell, ms, at a bucket's upper bound.
    pub fn quantile(&self, q: f64) -> f64 {
        let target = self.total * q;
        let mut acc = 0.0;
        for (b, w) in self.w.iter().enumerate() {
            acc += w;
            if acc >= target && *w > 0.0 {
                return upper(b);
            }
        }
        upper(BUCKETS - 1)
    }

    /// The upper bound of the longest bucket with weight, ms (0 when empty): beyond it the
    /// survival is 0 and stays so.
    pub fn horizon(&self) -> f64 {
        self.w.iter().rposition(|w| *w > 0.0).map_or(0.0, upper)
    }

    /// The bucket boundaries, ms: the points where survival changes slope.
    pub fn boundaries() -> impl Iterator<Item = f64> {
        (0..BUCKETS).map(upper)
    }
}

mod bucket_serde {
    use super::BUCKETS;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &[f64; BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        // Trailing zeros are the common case; leave them out.
        let len = w
            .iter()
            .rposition(|x| *x != 0.0)
            .map(|i| i + 1)
            .unwrap_or(0);
        s.collect_seq(w[..len].iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; BUCKETS], D::Error> {
        let v: Vec<f64> = Vec::deserialize(d)?;
        let mut out = [0.0; BUCKETS];
        for (o, x) in out.iter_mut().zip(v) {
            *o = x;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_survivals_are_the_survival_at_each_upper_edge() {
        let mut h = DwellHist::default();
        for ms in [0, 3, 10, 20, 40, 80, 1000, 5_000_000, i64::MAX / 4] {
            h.add(ms, 1.5);
        }
        let mut out = [0.0; BUCKETS];
        h.boundary_survivals(&mut out);
        for (b, e) in DwellHist::boundaries().enumerate() {
            assert!(
                (out[b] - h.survival(e)).abs() < 1e-12,
                "bucket {b}: {} vs {}",
                out[b],
                h.survival(e)
            );
        }
    }

    #[test]
    fn survival_falls_with_elapsed_time() {
        let mut h = DwellHist::default();
        for ms in [10, 20, 40, 80, 1000] {
            h.add(ms, 1.0);
        }
        assert_eq!(h.survival(0.0), 1.0);
        assert!(h.survival(30.0) < h.survival(15.0));
        assert!(h.survival(5000.0) == 0.0);
        // 1000 survives, 80 may (uniform within its bucket [64, 128)): between 0.2 and 0.4.
        let s = h.survival(100.0);
        assert!((0.2..=0.4).contains(&s), "{s}");
        assert!(h.mean() > 100.0 && h.mean() < 400.0);
        // The mean residual time, with each dwell at its bucket's midpoint: from 0, the mean of
        // 12, 24, 48, 96 and 768 ms; after 500 ms only the 1000 ms dwell ([512, 1024)) is left,
        // 768 - 500 to go; after 70 ms, 58/64 of the 80 ms bucket ([70, 128), 29 ms to go on
        // average) and the 1000 ms dwell (698 ms to go); after 5 s, nothing is left.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(h.mean_residual(0.0), 948.0 / 5.0),
            "{}",
            h.mean_residual(0.0)
        );
        assert!(
            close(h.mean_residual(500.0), 268.0),
            "{}",
            h.mean_residual(500.0)
        );
        let share = 58.0 / 64.0;
        let after_70 = (share * 29.0 + 698.0) / (share + 1.0);
        assert!(
            close(h.mean_residual(70.0), after_70),
            "{}",
            h.mean_residual(70.0)
        );
        assert_eq!(h.mean_residual(5000.0), 0.0);
    }
}
