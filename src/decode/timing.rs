//! Token times from cross-attention (openai/whisper `timing.py`, `find_alignment`): the weights
//! of the model's alignment heads, standardised over tokens, median-filtered over time and
//! averaged, are aligned to the text by dynamic time warping; a token's time is where its row
//! of the warping path begins.

/// Encoder positions per second.
const POSITIONS_PER_SECOND: f64 = 50.0;
/// openai's `medfilt_width`.
const MEDIAN_WIDTH: usize = 7;

/// `weights`: `[heads][n][frames]` cross-attention weights (each row a distribution over the
/// first `frames` encoder positions) for the tokens `[sot sequence (sot_len tokens),
/// no_timestamps, text tokens…, eot]`. Returns, for each text token and then for the EOT, the
/// time in seconds (from the window start) where the alignment path reaches it: a word spans
/// from its first token's time to the next word's first token's time.
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
    let mut column = vec![0.0f32; n];
    let mut window = [0.0f32; MEDIAN_WIDTH];
    for h in 0..heads {
        w.copy_from_slice(&weights[h * n * frames..(h + 1) * n * frames]);
        // Standardise each position's column over the tokens (population std).
        for j in 0..frames {
            for (i, c) in column.iter_mut().enumerate() {
                *c = w[i * frames + j];
            }
            let mean = column.iter().sum::<f32>() / n as f32;
            let var = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let std = var.sqrt().max(1e-12);
            for (i, c) in column.iter().enumerate() {
                w[i * frames + j] = (c - mean) / std;
            }
        }
        // Median filter along time (reflect padding), then accumulate the head mean.
        let pad = MEDIAN_WIDTH / 2;
        for i in 0..n {
            let row = &w[i * frames..(i + 1) * frames];
            let out = &mut matrix[i * frames..(i + 1) * frames];
            if frames <= pad {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += v / heads as f32;
                }
                continue;
            }
            for (j, o) in out.iter_mut().enumerate() {
                for (k, slot) in window.iter_mut().enumerate() {
                    let t = j as isize + k as isize - pad as isize;
                    let t = if t < 0 {
                        -t
                    } else if t >= frames as isize {
                        2 * (frames as isize - 1) - t
                    } else {
                        t
                    };
                    *slot = row[t.clamp(0, frames as isize - 1) as usize];
                }
                window.sort_unstable_by(f32::total_cmp);
                *o += window[pad] / heads as f32;
            }
        }
    }
    // Rows from no_timestamps (predicting the first text token) to the last text token
    // (predicting EOT).
    let rows = n - 1 - sot_len;
    let cost: Vec<f32> = matrix[sot_len * frames..(sot_len + rows) * frames]
        .iter()
        .map(|v| -v)
        .collect();
    let path = dtw(&cost, rows, frames);
    let mut times = vec![f64::NAN; rows];
    for &(i, j) in &path {
        if times[i].is_nan() {
            times[i] = j as f64 / POSITIONS_PER_SECOND;
        }
    }
    times
}

/// openai's `dtw_cpu` + `backtrace`: the monotonic path through `cost` (`rows × cols`) with the
/// least total cost; steps diagonal, down (next token) or right (next position). Returns the
/// path's cells in order.
fn dtw(cost: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
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
