//! Synchronised batch norm (`--sync-bn`, PyTorch's `SyncBatchNorm`, PySlowFast's BN_NUM_SYNC_DEVICES
//! over the whole world): in training, every rank normalises with the statistics of the global
//! batch, and the backward pass gives the gradients of one process that ran the whole batch.
//!
//! - Forward: each rank's per-channel (count, mean, biased variance) are gathered from every rank and
//!   combined in f64 in rank order ([`combine_statistics`], Chan's parallel variance), so every rank
//!   holds the same global mean and variance; the running statistics take the global mean and the
//!   unbiased variance over the global count.
//! - Backward: the per-channel sums Σdy and Σdy·x̂ are all-reduced, and
//!   dx = w·invstd·(dy − Σdy/M − x̂·Σdy·x̂/M) with M the global count. The weight and bias gradients
//!   stay each rank's own sums (DDP then averages them with the other gradients, which gives the
//!   whole batch's).
//!
//! The batch-norm op (`crate::ops::batchnorm`) takes the collective from [`scope`]: training runs its
//! forward and its backward inside one each, and a synchronised op whose backward runs outside a scope
//! is an error (it would otherwise give the per-rank gradients silently). Outside a scope, or with a
//! world of one, nothing changes: no collective, the single-process kernels.

use std::cell::Cell;

use super::Collective;
use crate::error::{Error, Result};

thread_local! {
    /// The collective of the innermost [`scope`] on this thread.
    static ACTIVE: Cell<Option<*const (dyn Collective + 'static)>> = const { Cell::new(None) };
}

/// Run `f` with batch norm synchronised over `dist`'s ranks when `on` and the world has more than one
/// process; otherwise just run `f`.
pub fn scope<R>(dist: &dyn Collective, on: bool, f: impl FnOnce() -> R) -> R {
    if !on || dist.world_size() == 1 {
        return f();
    }
    /// Puts the outer scope's collective back on return and on unwind.
    struct Restore(Option<*const (dyn Collective + 'static)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let short: *const (dyn Collective + '_) = dist;
    // SAFETY: only the pointer's lifetime bound is erased (same layout). It is dereferenced only by
    // `with_active` while `f` runs (removed again by `Restore` before this function returns or
    // unwinds), and `dist` is borrowed for the whole call.
    let long: *const (dyn Collective + 'static) = unsafe { std::mem::transmute(short) };
    let _restore = Restore(ACTIVE.with(|a| a.replace(Some(long))));
    f()
}

/// Call `f` with the collective of the innermost [`scope`] on this thread, if any.
pub(crate) fn with_active<R>(f: impl FnOnce(Option<&dyn Collective>) -> R) -> R {
    let p = ACTIVE.with(|a| a.get());
    // SAFETY: set only by `scope`, which borrows the collective for longer than this call (see there);
    // the reference cannot escape `f` (its lifetime is `f`'s call).
    f(p.map(|p| unsafe { &*p }))
}

/// Every rank's per-channel (count, mean, biased variance) of `c` channels, gathered as
/// `[count, mean × c, var × c]` per rank (in rank order), combined into the global batch's mean,
/// biased variance and count: mean = Σ nᵣ·meanᵣ / N, var = Σ nᵣ·(varᵣ + (meanᵣ − mean)²) / N, in f64.
pub fn combine_statistics(gathered: &[f32], c: usize) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let row = 1 + 2 * c;
    if gathered.is_empty() || !gathered.len().is_multiple_of(row) {
        return Err(Error::Distributed(format!(
            "sync batch norm: {} gathered values are not whole rows of 1 + 2·{c}",
            gathered.len()
        )));
    }
    let ranks: Vec<&[f32]> = gathered.chunks(row).collect();
    let total: f64 = ranks.iter().map(|r| r[0] as f64).sum();
    if total < 2.0 {
        return Err(Error::Distributed(format!(
            "sync batch norm: the ranks together have {total} values per channel; training needs more than one"
        )));
    }
    // a rank without values (count 0) has undefined statistics and no weight: left out
    let ranks: Vec<&[f32]> = ranks.into_iter().filter(|r| r[0] > 0.0).collect();
    let mut mean = vec![0f64; c];
    for r in &ranks {
        let n = r[0] as f64;
        for (m, &rm) in mean.iter_mut().zip(&r[1..=c]) {
            *m += n * rm as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= total);
    let mut m2 = vec![0f64; c];
    for r in &ranks {
        let n = r[0] as f64;
        for (k, s) in m2.iter_mut().enumerate() {
            let d = r[1 + k] as f64 - mean[k];
            *s += n * (r[1 + c + k] as f64 + d * d);
        }
    }
    Ok((
        mean.iter().map(|&m| m as f32).collect(),
        m2.iter().map(|&s| (s / total) as f32).collect(),
        total as usize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::tests::Twin;
    use crate::dist::SingleProcess;

    /// Mean and biased variance of each column of `rows` in f64 (the reference).
    fn column_stats(rows: &[[f32; 2]]) -> ([f64; 2], [f64; 2]) {
        let n = rows.len() as f64;
        let mut mean = [0.0; 2];
        let mut var = [0.0; 2];
        for k in 0..2 {
            mean[k] = rows.iter().map(|r| r[k] as f64).sum::<f64>() / n;
            var[k] = rows
                .iter()
                .map(|r| (r[k] as f64 - mean[k]).powi(2))
                .sum::<f64>()
                / n;
        }
        (mean, var)
    }

    #[test]
    fn combined_statistics_are_those_of_the_whole_batch() {
        // two channels; ranks of 3 and 5 values (uneven, as a last batch may be), and one of none
        // (NaN statistics that must not count)
        let a = [[1.0f32, -4.0], [2.5, 8.0], [-3.0, 0.5]];
        let b = [
            [10.0f32, 1.0],
            [0.25, 2.0],
            [7.0, -6.0],
            [4.0, 3.0],
            [-1.0, 9.0],
        ];
        let mut gathered = vec![];
        for part in [&a[..], &b[..]] {
            let (m, v) = column_stats(part);
            gathered.push(part.len() as f32);
            gathered.extend(m.iter().map(|&x| x as f32));
            gathered.extend(v.iter().map(|&x| x as f32));
        }
        gathered.extend([0.0, f32::NAN, f32::NAN, f32::NAN, f32::NAN]);
        let (mean, var, n) = combine_statistics(&gathered, 2).unwrap();
        let all: Vec<[f32; 2]> = a.iter().chain(&b).copied().collect();
        let (rm, rv) = column_stats(&all);
        assert_eq!(n, 8);
        // inputs rounded to f32 (u relative each), combined in f64, rounded once: a few u of the
        // values' magnitude (≤ 10² for the variances)
        let u = f32::EPSILON as f64 / 2.0;
        for k in 0..2 {
            assert!(
                (mean[k] as f64 - rm[k]).abs() <= 4.0 * u * 10.0,
                "{mean:?} {rm:?}"
            );
            assert!(
                (var[k] as f64 - rv[k]).abs() <= 8.0 * u * 100.0,
                "{var:?} {rv:?}"
            );
        }
    }

    #[test]
    fn bad_rows_and_too_few_values_are_errors() {
        assert!(combine_statistics(&[1.0, 0.0], 1).is_err());
        assert!(combine_statistics(&[1.0, 0.0, 0.0], 1).is_err());
        assert!(combine_statistics(&[], 1).is_err());
    }

    #[test]
    fn a_scope_is_active_only_inside_and_not_for_a_world_of_one() {
        let active = || with_active(|d| d.map(|d| d.world_size()));
        assert_eq!(active(), None);
        assert_eq!(scope(&Twin::default(), true, active), Some(2));
        assert_eq!(scope(&Twin::default(), false, active), None);
        assert_eq!(scope(&SingleProcess, true, active), None);
        // restored after an unwind
        let r = std::panic::catch_unwind(|| scope(&Twin::default(), true, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(active(), None);
    }
}
