//! Token times from cross-attention (openai/whisper `timing.py`, `find_alignment`): the weights
//! of the model's alignment heads, standardised over tokens, median-filtered over time and
//! averaged, are aligned to the text by dynamic time warping; a token's time is where its row
//! of the warping path begins.

/// Encoder positions per second.
const POSITIONS_PER_SECOND: f64 = 50.0;
/// openai's `medfilt_width`.
pub const MEDIAN_WIDTH: usize = 7;

/// `weights`: `[heads][n][frames]` cross-attention weights (each row a distribution over the
/// first `frames` encoder positions) for the tokens `[sot sequence (sot_len tokens),
/// no_timestamps, text tokens…, eot]`. Returns openai's jump times: for each text token and then
/// for the EOT, the time in seconds (from the window start) where the alignment path reaches the
/// row predicting it. A word spans from its first token's time to the next word's first
/// token's time.
pub fn token_times(
    weights: &[f32],
    heads: usize,
    n: usize,
    frames: usize,
    sot_len: usize,
) -> Vec<f64> {
    assert_eq!(weights.len(), heads * n * frames);
    assert!(
        n >= sot_len + 2,
        "tokens must hold the SOT sequence, no_timestamps and EOT"
    );
    let mut matrix = vec![0.0f32; n * frames];
    let mut w = vec![0.0f32; n * frames];
    let mut filtered = vec![0.0f32; n * frames];
    let mut window = Vec::with_capacity(MEDIAN_WIDTH);
    for h in 0..heads {
        w.copy_from_slice(&weights[h * n * frames..(h + 1) * n * frames]);
        // Standardise each position's column over the tokens (population std).
        for j in 0..frames {
            let mean = (0..n).map(|i| w[i * frames + j]).sum::<f32>() / n as f32;
            let var = (0..n)
                .map(|i| (w[i * frames + j] - mean).powi(2))
                .sum::<f32>()
                / n as f32;
            let std = var.sqrt().max(1e-12);
            for i in 0..n {
                w[i * frames + j] = (w[i * frames + j] - mean) / std;
            }
        }
        median_filter(&w, frames, MEDIAN_WIDTH, &mut filtered, &mut window);
        for (m, f) in matrix.iter_mut().zip(&filtered) {
            *m += f / heads as f32;
        }
    }
    // Rows from no_timestamps (predicting the first text token) to the last text token
    // (predicting EOT).
    let rows = n - 1 - sot_len;
    let cost: Vec<f32> = matrix[sot_len * frames..(sot_len + rows) * frames]
        .iter()
        .map(|v| -v)
        .collect();
    jump_times(&dtw(&cost, rows, frames), rows)
}

/// openai's `median_filter` along each row of `x` (rows of `cols` values) into `out`: the median
/// of the `width` values centred on each position (`width` odd), the row reflected at its ends
/// (PyTorch's `reflect` padding, which leaves the edge value out). Rows of at most `width / 2`
/// values are copied unchanged, as openai does. `window` is scratch space.
pub fn median_filter(x: &[f32], cols: usize, width: usize, out: &mut [f32], window: &mut Vec<f32>) {
    assert!(width % 2 == 1, "the median filter width must be odd");
    assert_eq!(x.len(), out.len());
    let pad = width / 2;
    if cols <= pad {
        out.copy_from_slice(x);
        return;
    }
    let last = cols as isize - 1;
    for (row, out) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        for (j, o) in out.iter_mut().enumerate() {
            window.clear();
            for k in 0..width {
                let t = j as isize + k as isize - pad as isize;
                let t = if t < 0 {
                    -t
                } else if t > last {
                    2 * last - t
                } else {
                    t
                };
                // A reflection past the other end (width > 2·cols) stays at the edge.
                window.push(row[t.clamp(0, last) as usize]);
            }
            let (_, median, _) = window.select_nth_unstable_by(pad, f32::total_cmp);
            *o = *median;
        }
    }
}

/// openai's `dtw_cpu` + `backtrace`: the monotonic path through `cost` (`rows × cols`) with the
/// least total cost (accumulated in f32, as openai's `cost` array is); steps diagonal, down (next token) or
/// right (next position), ties resolved as openai does. Returns the path's cells in order.
pub fn dtw(cost: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert_eq!(cost.len(), rows * cols);
    let w = cols + 1;
    let mut acc = vec![f32::INFINITY; (rows + 1) * w];
    let mut trace = vec![0u8; (rows + 1) * w];
    acc[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let c0 = acc[(i - 1) * w + j - 1];
            let c1 = acc[(i - 1) * w + j];
            let c2 = acc[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            acc[i * w + j] = cost[(i - 1) * cols + j - 1] + c;
            trace[i * w + j] = t;
        }
    }
    trace[..=cols].fill(2);
    for i in 0..=rows {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::with_capacity(rows + cols);
    while i > 0 || j > 0 {
        path.push((i.wrapping_sub(1), j.wrapping_sub(1)));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.retain(|&(i, j)| i != usize::MAX && j != usize::MAX);
    path.reverse();
    path
}

/// openai's jump times: for each of `rows` rows, the time (s) of the first path cell in it.
fn jump_times(path: &[(usize, usize)], rows: usize) -> Vec<f64> {
    let mut times = vec![f64::NAN; rows];
    for &(i, j) in path {
        if times[i].is_nan() {
            times[i] = j as f64 / POSITIONS_PER_SECOND;
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // 3 tokens over 6 positions: token k is cheap at positions 2k, 2k+1.
        let (rows, cols) = (3, 6);
        let cost: Vec<f32> = (0..rows * cols)
            .map(|x| {
                let (i, j) = (x / cols, x % cols);
                if j / 2 == i { -1.0 } else { 1.0 }
            })
            .collect();
        let path = dtw(&cost, rows, cols);
        assert_eq!(path.first(), Some(&(0, 0)));
        assert_eq!(path.last(), Some(&(2, 5)));
        let starts: Vec<usize> = (0..rows)
            .map(|r| path.iter().find(|p| p.0 == r).unwrap().1)
            .collect();
        assert_eq!(starts, vec![0, 2, 4]);
    }

    /// Reference: openai's `median_filter` written out literally (pad each row by reflection,
    /// then take the middle of each sorted window).
    fn reference_median(row: &[f32], width: usize) -> Vec<f32> {
        let pad = width / 2;
        if row.len() <= pad {
            return row.to_vec();
        }
        let mut padded: Vec<f32> = (1..=pad).rev().map(|k| row[k]).collect();
        padded.extend_from_slice(row);
        padded.extend((1..=pad).map(|k| row[row.len() - 1 - k]));
        padded
            .windows(width)
            .map(|w| {
                let mut w = w.to_vec();
                w.sort_by(f32::total_cmp);
                w[pad]
            })
            .collect()
    }

    #[test]
    fn median_filter_matches_openai() {
        let mut window = Vec::new();
        // Hand-worked: [1 9 2 8 3] reflected by one is [9 | 1 9 2 8 3 | 8].
        let x = [1.0, 9.0, 2.0, 8.0, 3.0];
        let mut out = [0.0; 5];
        median_filter(&x, 5, 3, &mut out, &mut window);
        assert_eq!(out, [9.0, 2.0, 8.0, 3.0, 8.0]);
        // Width 7 over two rows of pseudo-random values against the literal reference.
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 8) as f32 / (1 << 24) as f32
        };
        for cols in [4, 5, 7, 11, 40] {
            let x: Vec<f32> = (0..2 * cols).map(|_| next()).collect();
            let mut out = vec![0.0; 2 * cols];
            median_filter(&x, cols, MEDIAN_WIDTH, &mut out, &mut window);
            for r in 0..2 {
                let row = &x[r * cols..(r + 1) * cols];
                assert_eq!(
                    &out[r * cols..(r + 1) * cols],
                    reference_median(row, MEDIAN_WIDTH).as_slice(),
                    "cols {cols}"
                );
            }
        }
        // Rows no longer than half the width are left alone (openai returns them unchanged).
        let x = [3.0, 1.0, 2.0];
        let mut out = [0.0; 3];
        median_filter(&x, 3, MEDIAN_WIDTH, &mut out, &mut window);
        assert_eq!(out, x);
    }

    #[test]
    fn dtw_matches_openai_on_worked_matrices() {
        // Paths printed by openai's `dtw_cpu(x)` (whisper/timing.py run with numpy, numba's
        // decorators removed) for these matrices, as (text_indices, time_indices) pairs.
        let x = [1.0, 5.0, 1.0, 5.0, 1.0, 1.0];
        let path = dtw(&x, 2, 3);
        assert_eq!(path, vec![(0, 0), (1, 1), (1, 2)]);
        let x = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        // All ties: the `else` branch (a step along time) wins wherever it is finite.
        assert_eq!(dtw(&x, 2, 3), vec![(0, 0), (1, 0), (1, 1), (1, 2)]);
        let x = [
            -1.0, -0.9, 0.2, 0.3, //
            0.5, -0.2, -0.8, 0.1, //
            0.4, 0.6, -0.1, -1.2,
        ];
        assert_eq!(
            dtw(&x, 3, 4),
            vec![(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]
        );
    }

    /// The least total cost of any monotonic path from (0, 0) to the last cell, by exhaustive
    /// search (an independent reference for the DTW's optimality).
    fn brute_force_cost(cost: &[f32], rows: usize, cols: usize) -> f64 {
        fn go(cost: &[f32], rows: usize, cols: usize, i: usize, j: usize) -> f64 {
            let here = cost[i * cols + j] as f64;
            if i == rows - 1 && j == cols - 1 {
                return here;
            }
            let mut best = f64::INFINITY;
            if i + 1 < rows && j + 1 < cols {
                best = best.min(go(cost, rows, cols, i + 1, j + 1));
            }
            if i + 1 < rows {
                best = best.min(go(cost, rows, cols, i + 1, j));
            }
            if j + 1 < cols {
                best = best.min(go(cost, rows, cols, i, j + 1));
            }
            here + best
        }
        go(cost, rows, cols, 0, 0)
    }

    #[test]
    fn dtw_path_is_a_least_cost_monotonic_path() {
        let mut state = 7u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (rows, cols) in [(1, 1), (1, 5), (4, 1), (3, 6), (5, 5), (6, 4)] {
            let cost: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
            let path = dtw(&cost, rows, cols);
            assert_eq!(path.first(), Some(&(0, 0)));
            assert_eq!(path.last(), Some(&(rows - 1, cols - 1)));
            for p in path.windows(2) {
                let (di, dj) = (p[1].0 - p[0].0, p[1].1 - p[0].1);
                assert!(matches!((di, dj), (1, 1) | (1, 0) | (0, 1)), "{path:?}");
            }
            let total: f64 = path.iter().map(|&(i, j)| cost[i * cols + j] as f64).sum();
            let best = brute_force_cost(&cost, rows, cols);
            assert!(
                (total - best).abs() < 1e-5,
                "{rows}x{cols}: {total} vs {best}"
            );
        }
    }

    #[test]
    fn token_times_from_peaked_attention() {
        // sot, no_timestamps, 3 text tokens, eot: each text row attends to its own frames.
        let (heads, n, frames, sot_len) = (2, 6, 60, 1);
        let mut w = vec![0.0f32; heads * n * frames];
        for h in 0..heads {
            for i in 0..n {
                // Row i (after no_timestamps) predicts token i - 1: centre 10 (i - 1) + 5.
                let centre = (10 * i.saturating_sub(1) + 5) as f32;
                let row = &mut w[(h * n + i) * frames..(h * n + i + 1) * frames];
                let mut sum = 0.0;
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (-((j as f32 - centre) / 3.0).powi(2)).exp();
                    sum += *v;
                }
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        let t = token_times(&w, heads, n, frames, sot_len);
        assert_eq!(t.len(), 4);
        assert!(t.windows(2).all(|p| p[0] <= p[1]), "{t:?}");
        assert!(t.iter().all(|v| v.is_finite()));
        // The path reaches each token near where its attention starts to dominate.
        assert!(t[1] > 0.1 && t[1] < 0.4, "{t:?}");
        assert!(t[3] > t[2]);
    }
}
