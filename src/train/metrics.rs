//! Classification metrics: top-1 / top-5, per-class accuracy, confusion matrix.

use serde_json::{json, Value};

/// Accumulates predictions of one evaluation.
#[derive(Debug, Clone)]
pub struct Metrics {
    classes: usize,
    /// confusion[true][predicted]
    confusion: Vec<Vec<usize>>,
    top5_hits: usize,
    loss_sum: f64,
    count: usize,
}

impl Metrics {
    pub fn new(classes: usize) -> Self {
        Metrics {
            classes,
            confusion: vec![vec![0; classes]; classes],
            top5_hits: 0,
            loss_sum: 0.0,
            count: 0,
        }
    }

    /// Add one sample: its scores (logits or probabilities), true label and loss.
    pub fn add(&mut self, scores: &[f32], label: usize, loss: f64) {
        let ranked = top_k(scores, 5);
        self.confusion[label][ranked[0]] += 1;
        if ranked.contains(&label) {
            self.top5_hits += 1;
        }
        self.loss_sum += loss;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }
    pub fn top1(&self) -> f64 {
        let hits: usize = (0..self.classes).map(|c| self.confusion[c][c]).sum();
        hits as f64 / self.count.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5_hits as f64 / self.count.max(1) as f64
    }
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    /// Accuracy per true class (None for classes without samples).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[c] as f64 / n as f64)
            })
            .collect()
    }
    pub fn confusion(&self) -> &[Vec<usize>] {
        &self.confusion
    }

    pub fn to_json(&self, class_names: &[String]) -> Value {
        json!({
            "top1": self.top1(),
            "top5": self.top5(),
            "loss": self.mean_loss(),
            "count": self.count,
            "per_class": class_names.iter().zip(self.per_class()).map(|(n, a)| json!({"class": n, "accuracy": a})).collect::<Vec<_>>(),
            "confusion": self.confusion,
        })
    }

    /// A readable report: overall, per class and the confusion matrix.
    pub fn report(&self, class_names: &[String]) -> String {
        let mut s = format!(
            "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({} videos)\n",
            100.0 * self.top1(),
            100.0 * self.top5(),
            self.mean_loss(),
            self.count
        );
        let w = class_names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(5)
            .max(5);
        for (n, a) in class_names.iter().zip(self.per_class()) {
            let a = a.map_or("   n/a".to_string(), |a| format!("{:6.2}%", 100.0 * a));
            s += &format!("  {n:<w$} {a}\n");
        }
        s += "confusion (rows: true, columns: predicted)\n";
        for (n, row) in class_names.iter().zip(&self.confusion) {
            s += &format!("  {n:<w$}");
            for v in row {
                s += &format!(" {v:4}");
            }
            s += "\n";
        }
        s
    }
}

/// Indices of the k largest scores, best first (ties: lower index first). NaN ranks above every number,
/// as in PyTorch's topk/argmax (and the order stays total, which `sort_by` needs).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let rank = |v: f32| (v.is_nan(), if v.is_nan() { 0.0 } else { v });
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (na, va) = rank(scores[a]);
        let (nb, vb) = rank(scores[b]);
        nb.cmp(&na)
            .then(vb.partial_cmp(&va).unwrap())
            .then(a.cmp(&b))
    });
    idx.truncate(k.min(scores.len()));
    idx
}

/// Fail unless every logit is finite: a NaN or Inf score would rank and average silently (a
/// "NaN%" prediction). `logits` holds rows of `classes`; `row_name(r)` says what row r is (a video).
pub fn check_logits(
    logits: &[f32],
    classes: usize,
    row_name: impl Fn(usize) -> String,
) -> crate::Result<()> {
    let Some(at) = logits.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let bad = |p: fn(&f32) -> bool| logits.iter().filter(|v| p(v)).count();
    let (nan, inf) = (bad(|v| v.is_nan()), bad(|v| v.is_infinite()));
    Err(crate::Error::NonFinite(format!(
        "the model's logits for {} are not finite (class {} is {}; {nan} NaN and {inf} Inf among {} \
         logits): the weights or the input hold NaN/Inf, or a layer overflowed; --check-finite names \
         the first layer whose output is not finite",
        row_name(at / classes.max(1)),
        at % classes.max(1),
        logits[at],
        logits.len()
    )))
}

/// Softmax of one row (stable).
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let m = scores
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, crate::backend::cpu::nan_max);
    let e: Vec<f64> = scores.iter().map(|&s| ((s - m) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top1_top5_and_confusion() {
        let mut m = Metrics::new(6);
        m.add(&[0.0, 5.0, 1.0, 0.0, 0.0, 0.0], 1, 0.1); // right
        m.add(&[3.0, 5.0, 1.0, 0.0, 0.0, 0.0], 0, 0.5); // wrong, in top 5
        m.add(&[9.0, 8.0, 7.0, 6.0, 5.0, 0.0], 5, 2.0); // wrong, not in top 5
        assert!((m.top1() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.top5() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.confusion()[0][1], 1);
        assert_eq!(m.per_class()[1], Some(1.0));
        assert_eq!(m.per_class()[2], None);
        assert!((m.mean_loss() - 2.6 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn top_k_ranks_nan_first_and_logits_must_be_finite() {
        // torch.topk / argmax put NaN above every number.
        let s = [
            1.0,
            f32::NAN,
            3.0,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::INFINITY,
        ];
        assert_eq!(top_k(&s, 6), vec![1, 4, 5, 2, 0, 3]);
        assert!(softmax(&[1.0, f32::NAN]).iter().all(|p| p.is_nan()));
        assert!(check_logits(&[1.0, 2.0, -3.0, 0.5], 2, |r| format!("row {r}")).is_ok());
        let e = check_logits(&[1.0, 2.0, -3.0, f32::NAN], 2, |r| format!("row {r}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("class 1 is NaN"), "{e}");
    }
}
