//! Smooth ECE (Błasiok & Nakkiran 2023) and its smoothed reliability curve, computed as the
//! Python package relplot 1.0.3 computes them with its defaults (reflected Gaussian kernel, no
//! logit scaling), so that values match relplot to rounding.
//!
//! The residuals r = confidence − correct are kernel-smoothed over confidence: each
//! (confidence, value) pair is split linearly between its two neighbours on a uniform grid over
//! [0, 1], the grid is convolved with a Gaussian of standard deviation σ (the bandwidth),
//! reflected at 0 and 1, and the result is interpolated linearly at an evaluation mesh. With
//! R(t) the smoothed residual sum and D(t) the smoothed count plus 1e-4, smECE(σ) =
//! Σ_t |R(t)| / Σ_t D(t) over the mesh. The automatic bandwidth is the paper's fixed point
//! σ = smECE(σ), found by halving [0, 1] ten times and keeping the side where smECE(σ) ≤ σ.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::bootstrap::{BootstrapConfig, percentile_interval, resample_statistics};
use crate::prediction::{Prediction, sorted_by_confidence};

/// relplot's smECE mesh has at least this many points (more for narrow bandwidths).
const SMECE_MIN_MESH_POINTS: usize = 200;
/// relplot's reliability-diagram mesh.
pub(crate) const CURVE_MESH_POINTS: usize = 200;
/// Added to the smoothed count everywhere, as relplot does, so empty regions divide safely.
const DENSITY_EPSILON: f64 = 1e-4;
/// The bandwidth search treats any σ below this as small enough (relplot's `eps`).
const SEARCH_FLOOR: f64 = 0.001;
const SEARCH_HALVINGS: usize = 10;
/// Kernel weights below this fraction of the peak are left out: they change results by under
/// 1e-16 (relative) and keep the work for a narrow bandwidth proportional to its reach.
const KERNEL_CUTOFF: f64 = 1e-20;

/// Smooth ECE at its automatically chosen bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmoothEce {
    pub value: f64,
    /// σ of the Gaussian kernel, a multiple of 1/1024 between 1/512 and 1.
    pub bandwidth: f64,
}

/// The smoothed reliability curve on relplot's 200-point plot mesh: at confidence t,
/// μ(t) = t − R(t)/D(t) (the smoothed residual taken off the diagonal). smECE is the
/// density-weighted mean distance of μ from the diagonal on its own mesh, which for σ ≥ 0.05
/// is this one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmoothCurve {
    /// The kernel's σ (the report's smECE bandwidth); 0 in reports written before lincal drew
    /// this curve, whose vectors are all empty.
    pub bandwidth: f64,
    /// The mesh: 200 confidences evenly spaced from 0 to 1.
    pub confidence: Vec<f64>,
    pub mu: Vec<f64>,
    /// Kernel density of the confidences at each mesh point, D(t) scaled to mean 1 over the
    /// mesh (about 1 everywhere for uniformly spread confidences).
    pub density: Vec<f64>,
    /// Pointwise percentile bootstrap band of μ (the report's CI level), from the first
    /// min(200, resamples) resamples at the same bandwidth; empty when intervals are off.
    pub band_low: Vec<f64>,
    pub band_high: Vec<f64>,
}

// The public functions sort the predictions as `compute_report` does, so that their sums run
// in the same order and their results equal the report's to the last bit.

/// Smooth ECE with the bandwidth chosen as relplot's `smECE` chooses it.
pub fn smooth_ece(preds: &[Prediction]) -> Result<SmoothEce, MetricsError> {
    let sorted = sorted_by_confidence(preds)?;
    Ok(smooth_ece_of(&sorted, &SmootherCache::for_sample(&sorted)))
}

/// Smooth ECE at a fixed bandwidth σ, as relplot's `smECE_sigma`. σ must be at least 0.001
/// (the grid has about 10/σ points).
pub fn smooth_ece_at(preds: &[Prediction], bandwidth: f64) -> Result<f64, MetricsError> {
    let sorted = sorted_by_confidence(preds)?;
    check_bandwidth(bandwidth)?;
    let smoother =
        SmootherCache::for_sample(&sorted).smoother(bandwidth, smece_mesh_points(bandwidth));
    Ok(smoother.smooth_ece(&GridValues::of(&sorted, smoother.grid_points)))
}

/// The smoothed reliability curve at bandwidth σ (at least 0.001), without a bootstrap band.
pub fn smooth_reliability_curve(
    preds: &[Prediction],
    bandwidth: f64,
) -> Result<SmoothCurve, MetricsError> {
    let sorted = sorted_by_confidence(preds)?;
    check_bandwidth(bandwidth)?;
    let smoother = SmootherCache::for_sample(&sorted).smoother(bandwidth, CURVE_MESH_POINTS);
    let (mu, density) = smoother.curve(&sorted);
    Ok(SmoothCurve {
        bandwidth,
        confidence: smoother.mesh.clone(),
        mu,
        density,
        band_low: Vec::new(),
        band_high: Vec::new(),
    })
}

/// Resamples whose curves make the band of [`SmoothCurve`]: enough for 2.5/97.5 percentiles,
/// cheap next to the 10,000 the scalar intervals use.
const BAND_RESAMPLES: usize = 200;

/// The curve of `sorted` (checked, ascending confidence) at `bandwidth` with its bootstrap band
/// from resamples 0..min(200, resamples), the same resamples as the first of the report's.
pub(crate) fn smooth_curve_with_band(
    sorted: &[Prediction],
    bandwidth: f64,
    bootstrap: &BootstrapConfig,
    cache: &SmootherCache,
) -> SmoothCurve {
    let smoother = cache.smoother(bandwidth, CURVE_MESH_POINTS);
    let (mu, density) = smoother.curve(sorted);
    let band_config = BootstrapConfig {
        resamples: bootstrap.resamples.min(BAND_RESAMPLES),
        ..*bootstrap
    };
    let curves = resample_statistics(sorted, &band_config, |r| smoother.curve(r).0);
    let (mut band_low, mut band_high) = (Vec::new(), Vec::new());
    if !curves.is_empty() {
        for i in 0..mu.len() {
            let values = curves.iter().map(|c| c[i]).collect();
            let band = percentile_interval(values, bootstrap.level).expect("values at every point");
            band_low.push(band.low);
            band_high.push(band.high);
        }
    }
    SmoothCurve {
        bandwidth,
        confidence: smoother.mesh.clone(),
        mu,
        density,
        band_low,
        band_high,
    }
}

fn check_bandwidth(bandwidth: f64) -> Result<(), MetricsError> {
    if !(bandwidth.is_finite() && bandwidth >= SEARCH_FLOOR) {
        return Err(MetricsError::InvalidConfig {
            field: "bandwidth",
            reason: format!(
                "{bandwidth} is not a number ≥ 0.001; smooth ECE's automatic bandwidth is \
                 between 1/512 and 1, relplot's default fixed one 0.05"
            ),
        });
    }
    Ok(())
}

/// Bandwidth search and value on checked predictions (the cache's sample or a resample of it).
pub(crate) fn smooth_ece_of(preds: &[Prediction], cache: &SmootherCache) -> SmoothEce {
    // The grid has 1001 points for every σ ≥ 0.01, so the rounding is usually done once.
    let mut grid: Option<GridValues> = None;
    let mut at = |bandwidth: f64| {
        let smoother = cache.smoother(bandwidth, smece_mesh_points(bandwidth));
        if grid
            .as_ref()
            .is_none_or(|g| g.count.len() != smoother.grid_points)
        {
            grid = Some(GridValues::of(preds, smoother.grid_points));
        }
        smoother.smooth_ece(grid.as_ref().expect("just made"))
    };
    // relplot's search: σ = 1 if smECE(1) > 1 (never, as |r| ≤ 1), else bisection on [0, 1]
    // keeping `start` where smECE(σ) ≤ σ and `end` where smECE(σ) > σ (or σ < 0.001).
    // Only σ ≥ 0.001 is ever kept, so the value at `start` is always computed on the way.
    let mut start = SmoothEce {
        value: at(1.0),
        bandwidth: 1.0,
    };
    if start.bandwidth < start.value {
        return start;
    }
    let mut end = 0.0;
    for _ in 0..SEARCH_HALVINGS {
        let mid = (start.bandwidth + end) / 2.0;
        if mid < SEARCH_FLOOR {
            end = mid;
            continue;
        }
        let value = at(mid);
        if mid < value {
            end = mid;
        } else {
            start = SmoothEce {
                value,
                bandwidth: mid,
            };
        }
    }
    start
}

/// relplot's smECE mesh: max(round(10/σ), 200) points.
fn smece_mesh_points(bandwidth: f64) -> usize {
    ((10.0 / bandwidth).round_ties_even() as usize).max(SMECE_MIN_MESH_POINTS)
}

/// relplot's grid: max(2000, round(20/σ)) // 2 + 1 points (Python rounds half to even).
fn grid_points(bandwidth: f64) -> usize {
    ((20.0 / bandwidth).round_ties_even() as usize).max(2000) / 2 + 1
}

/// numpy's `linspace(0, 1, n)`: i·(1/(n − 1)), with the last point exactly 1.
fn linspace01(n: usize) -> Vec<f64> {
    let step = 1.0 / (n - 1) as f64;
    let mut points: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    points[n - 1] = 1.0;
    points
}

/// The predictions rounded onto a grid of m points as relplot rounds them: each prediction's
/// weight is split between the grid points below and above its confidence, in proportion to
/// closeness.
struct GridValues {
    /// Σ of confidence − correct.
    residual: Vec<f64>,
    count: Vec<f64>,
}

/// The grid point at or below confidence `c` on a grid of m points (m − 2 for c = 1), as
/// relplot finds it.
fn grid_cell_below(c: f64, m: usize) -> usize {
    ((c * (m - 1) as f64) as usize).min(m - 2)
}

impl GridValues {
    fn of(preds: &[Prediction], m: usize) -> Self {
        let (mut residual, mut count) = (vec![0.0; m], vec![0.0; m]);
        for p in preds {
            let below = grid_cell_below(p.confidence, m);
            let frac = p.confidence * (m - 1) as f64 - below as f64;
            let r = p.confidence - if p.correct { 1.0 } else { 0.0 };
            residual[below] += (1.0 - frac) * r;
            residual[below + 1] += frac * r;
            count[below] += 1.0 - frac;
            count[below + 1] += frac;
        }
        Self { residual, count }
    }
}

/// Smoothers for one sample and its resamples, shared by all of them: the bandwidth search
/// visits the same few dozen to few hundred bandwidths over and over, and making a smoother
/// costs about as much as twenty evaluations. A resample only holds the sample's confidences,
/// so a smoother only needs the matrix columns of the grid points those reach: nearly all 1001
/// for 1,000 continuous confidences (up to 1.6 MB on the 200-point mesh), a dozen for verbal
/// levels. Kept up to `MAX_CACHED_BYTES`; beyond that, new ones are made, used and dropped,
/// which is slower but gives the same numbers, so a report never depends on what was cached.
pub(crate) struct SmootherCache {
    /// The sample's distinct confidences.
    confidences: Vec<f64>,
    smoothers: Mutex<HashMap<(u64, usize), Arc<Smoother>>>,
}

/// About twice the most a 10,000-resample report was measured to need (120 MB, on 300
/// continuous confidences: wide intervals, so many bandwidths, each with most columns).
const MAX_CACHED_BYTES: usize = 256 << 20;

impl SmootherCache {
    pub(crate) fn for_sample(preds: &[Prediction]) -> Self {
        let mut confidences: Vec<f64> = preds.iter().map(|p| p.confidence).collect();
        confidences.sort_by(f64::total_cmp);
        confidences.dedup();
        Self {
            confidences,
            smoothers: Mutex::default(),
        }
    }

    pub(crate) fn smoother(&self, bandwidth: f64, mesh_points: usize) -> Arc<Smoother> {
        let key = (bandwidth.to_bits(), mesh_points);
        // A poisoned lock only means another thread panicked; the map itself is intact.
        let lock = || self.smoothers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = lock().get(&key) {
            return s.clone();
        }
        // Made outside the lock; two threads may make the same one, which is identical.
        let made = Arc::new(Smoother::new(bandwidth, mesh_points, &self.confidences));
        let mut smoothers = lock();
        let used: usize = smoothers.values().map(|s| s.bytes()).sum();
        if used + made.bytes() > MAX_CACHED_BYTES {
            return made;
        }
        smoothers.entry(key).or_insert(made).clone()
    }
}

/// relplot's kernel smoothing at one bandwidth and mesh, as one matrix A (mesh × grid): the
/// pairs are rounded onto the grid, the grid is mirrored at both ends and convolved with the
/// sampled Gaussian, and the result is interpolated linearly at the mesh. Every step after the
/// rounding is linear, so the mesh values are A·(grid values): one multiply-add per entry,
/// skipping empty grid points. A is stored by grid column, each column only over the rows the
/// kernel reaches, and only for the grid points given confidences reach (others are empty).
pub(crate) struct Smoother {
    mesh: Vec<f64>,
    grid_points: usize,
    /// Column g covers rows `first_row[g]..` and holds
    /// `weights[column_start[g]..column_start[g + 1]]`.
    first_row: Vec<usize>,
    column_start: Vec<usize>,
    weights: Vec<f64>,
    /// Σ of each column: what one unit at a grid point adds to the sum over the mesh, which
    /// gives Σ_t D(t) without smoothing the counts.
    column_sums: Vec<f64>,
}

impl Smoother {
    fn new(bandwidth: f64, mesh_points: usize, confidences: &[f64]) -> Self {
        let m = grid_points(bandwidth);
        let mut reached = vec![false; m];
        for &c in confidences {
            let below = grid_cell_below(c, m);
            reached[below] = true;
            reached[below + 1] = true;
        }
        // relplot samples the Gaussian on the grid's own points, centred at 0.5 (between two
        // grid points when m is even), and divides by √(2π)σ.
        let variance = bandwidth * bandwidth;
        let scale = (2.0 * PI).sqrt() * bandwidth;
        let kernel: Vec<f64> = linspace01(m)
            .iter()
            .map(|&t| (-(t - 0.5) * (t - 0.5) / (2.0 * variance)).exp() / scale)
            .collect();
        let peak = kernel.iter().copied().fold(0.0, f64::max);
        let kept = |w: &f64| *w >= peak * KERNEL_CUTOFF;
        let first_kept = kernel.iter().position(kept).expect("the peak is kept");
        let last_kept = kernel.iter().rposition(kept).expect("the peak is kept");

        // relplot mirrors the grid at both ends without repeating the end points: grid points
        // m − 1 down to 1, 0 up to m − 1, m − 2 down to 0 (mirrored index e = m − 1 + g holds
        // g itself, e = m − 1 − g its mirror at −g, e = 3m − 3 − g its mirror at 2 − g). It
        // convolves in numpy's 'valid' mode and keeps outputs m/2 .. m/2 + m, so output j
        // takes mirrored index e with kernel index j + shift − e, shift = m/2 + m − 1.
        let shift = (m / 2 + m - 1) as isize;
        // The kernel inside zeros wide enough for any j and e, so the loop below needs no
        // bounds test: kernel index k is at `padded[k + pad]`.
        let pad = 2 * m as isize;
        let mut padded = vec![0.0; 5 * m];
        for k in first_kept..=last_kept {
            padded[(k as isize + pad) as usize] = kernel[k];
        }
        let weight = |j: usize, e: isize| padded[(j as isize + shift - e + pad) as usize];

        // relplot's linear interpolation, computed as relplot computes it: mesh point t reads
        // outputs j and j + 1.
        let mesh = linspace01(mesh_points);
        let cell = 1.0 / (m - 1) as f64;
        let rows: Vec<(usize, f64)> = mesh
            .iter()
            .map(|&t| {
                let j = ((t * (m - 1) as f64) as usize).min(m - 2);
                (j, (t - j as f64 * cell) / cell)
            })
            .collect();

        let mut smoother = Smoother {
            mesh,
            grid_points: m,
            first_row: Vec::with_capacity(m),
            column_start: vec![0],
            weights: Vec::new(),
            column_sums: Vec::with_capacity(m),
        };
        for (g, &reached) in reached.iter().enumerate() {
            if !reached {
                smoother.first_row.push(0);
                smoother.column_start.push(smoother.weights.len());
                smoother.column_sums.push(0.0);
                continue;
            }
            let direct = (m - 1 + g) as isize;
            let below = (m - 1) as isize - g as isize;
            let above = (3 * m - 3 - g) as isize;
            // The end points are not mirrored (their mirror is themselves).
            let (has_below, has_above) = (f64::from(g > 0), f64::from(g < m - 1));
            let convolution = |j: usize| {
                weight(j, direct) + has_below * weight(j, below) + has_above * weight(j, above)
            };
            // Outputs g reaches: j with j + shift − e a kept kernel index, for each image e.
            let reach = |e: isize| {
                (
                    e + first_kept as isize - shift,
                    e + last_kept as isize - shift,
                )
            };
            let mut images = vec![reach(direct)];
            if g > 0 {
                images.push(reach(below));
            }
            if g < m - 1 {
                images.push(reach(above));
            }
            let (lowest, highest) = images
                .iter()
                .map(|&(lo, hi)| (lo.max(0), hi.min(m as isize - 1)))
                .filter(|(lo, hi)| lo <= hi)
                .fold((m as isize, -1), |(a, b), (lo, hi)| (a.min(lo), b.max(hi)));
            // The rows reading one of them (j does not decrease along the rows).
            let first = rows.partition_point(|&(j, _)| (j as isize) + 1 < lowest);
            let end = rows.partition_point(|&(j, _)| (j as isize) <= highest);
            let column_start = smoother.weights.len();
            smoother.weights.extend(
                rows[first..end.max(first)]
                    .iter()
                    .map(|&(j, frac)| convolution(j) * (1.0 - frac) + convolution(j + 1) * frac),
            );
            let column = &smoother.weights[column_start..];
            smoother.column_sums.push(column.iter().sum());
            smoother.first_row.push(first);
            smoother.column_start.push(smoother.weights.len());
        }
        smoother
    }

    fn bytes(&self) -> usize {
        8 * (self.weights.len() + 4 * self.grid_points + self.mesh.len())
    }

    /// Grid values smoothed and read at every mesh point: A·grid.
    fn smooth(&self, grid: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.mesh.len()];
        for (g, &value) in grid.iter().enumerate() {
            if value == 0.0 {
                continue;
            }
            let column = &self.weights[self.column_start[g]..self.column_start[g + 1]];
            let rows = self.first_row[g]..self.first_row[g] + column.len();
            for (o, &w) in out[rows].iter_mut().zip(column) {
                *o += value * w;
            }
        }
        out
    }

    /// Σ_t |R(t)| / Σ_t D(t).
    fn smooth_ece(&self, grid: &GridValues) -> f64 {
        let numerator: f64 = self.smooth(&grid.residual).iter().map(|r| r.abs()).sum();
        let smoothed_count: f64 = grid
            .count
            .iter()
            .zip(&self.column_sums)
            .map(|(c, s)| c * s)
            .sum();
        numerator / (smoothed_count + DENSITY_EPSILON * self.mesh.len() as f64)
    }

    /// μ(t) = t − R(t)/D(t) and D(t) scaled to mean 1, at every mesh point.
    fn curve(&self, preds: &[Prediction]) -> (Vec<f64>, Vec<f64>) {
        let grid = GridValues::of(preds, self.grid_points);
        let smoothed_residual = self.smooth(&grid.residual);
        let density: Vec<f64> = self
            .smooth(&grid.count)
            .iter()
            .map(|c| c + DENSITY_EPSILON)
            .collect();
        let mu = self
            .mesh
            .iter()
            .zip(&smoothed_residual)
            .zip(&density)
            .map(|((t, r), d)| t - r / d)
            .collect();
        let mean = density.iter().sum::<f64>() / density.len() as f64;
        (mu, density.iter().map(|d| d / mean).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_mesh_sizes_follow_relplot() {
        // max(2000, round(20/σ)) // 2 + 1: 1001 down to σ = 0.01, then growing; round(20/σ)
        // odd or even changes the parity of m.
        assert_eq!(grid_points(0.05), 1001);
        assert_eq!(grid_points(0.01), 1001);
        assert_eq!(grid_points(0.009), 1112);
        assert_eq!(grid_points(1.0 / 512.0), 5121);
        assert_eq!(smece_mesh_points(0.1), 200);
        assert_eq!(smece_mesh_points(0.02), 500);
        assert_eq!(linspace01(5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn bandwidth_search_stops_at_the_floor_for_a_perfect_sample() {
        // Every residual is 0, so smECE(σ) = 0 ≤ σ for every σ ≥ 0.001: the search halves down
        // to 2/1024 (1/1024 < 0.001 counts as small enough).
        let preds = vec![Prediction::new(1.0, true); 20];
        let s = smooth_ece(&preds).unwrap();
        assert_eq!((s.value, s.bandwidth), (0.0, 1.0 / 512.0));
    }

    #[test]
    fn bad_bandwidth_is_an_error() {
        let preds = [Prediction::new(0.5, true)];
        for bad in [0.0, 0.0005, f64::NAN, f64::INFINITY] {
            let err = smooth_ece_at(&preds, bad).unwrap_err();
            assert!(err.to_string().contains("`bandwidth`"), "{err}");
        }
    }
}
