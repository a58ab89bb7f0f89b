//! Learning-rate schedules as pure functions of the step (or epoch), in PyTorch's closed forms.

use std::f64::consts::PI;

/// A learning-rate schedule: [`LrSchedule::lr`] gives the rate at a step from the base rate. Steps
/// count from 0, the first step using `lr(base, 0)`; it matches the rate a `torch.optim.lr_scheduler`
/// has set after `step()` was called `step` times.
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// base.
    Constant,
    /// `StepLR`: base·γ^⌊t / step_size⌋.
    Step { step_size: usize, gamma: f32 },
    /// `MultiStepLR`: base·γ^(number of milestones ≤ t).
    MultiStep { milestones: Vec<usize>, gamma: f32 },
    /// `CosineAnnealingLR`: η_min + (base − η_min)·(1 + cos(π·t / t_max)) / 2 (periodic past t_max,
    /// as PyTorch's).
    Cosine { t_max: usize, eta_min: f32 },
    /// Linear warm-up, then `then` restarted at 0: for t < steps, base·(f + (1 − f)·t / steps) with
    /// f = `start_factor`; afterwards `then` at t − steps. PyTorch's
    /// `SequentialLR([LinearLR(start_factor, 1.0, steps), then], milestones=[steps])`; with
    /// `then = Constant` it is `LinearLR` alone.
    Warmup {
        start_factor: f32,
        steps: usize,
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    pub fn step(step_size: usize, gamma: f32) -> LrSchedule {
        LrSchedule::Step { step_size, gamma }
    }

    pub fn multi_step(milestones: &[usize], gamma: f32) -> LrSchedule {
        LrSchedule::MultiStep {
            milestones: milestones.to_vec(),
            gamma,
        }
    }

    pub fn cosine(t_max: usize, eta_min: f32) -> LrSchedule {
        LrSchedule::Cosine { t_max, eta_min }
    }

    /// A linear warm-up over `steps` steps from `start_factor`·base before this schedule.
    pub fn with_warmup(self, start_factor: f32, steps: usize) -> LrSchedule {
        LrSchedule::Warmup {
            start_factor,
            steps,
            then: Box::new(self),
        }
    }

    /// The learning rate at step `t` for base rate `base_lr` (computed in f64).
    pub fn lr(&self, base_lr: f32, t: usize) -> f32 {
        self.lr_f64(base_lr as f64, t) as f32
    }

    fn lr_f64(&self, base: f64, t: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => {
                base * (*gamma as f64).powi((t / (*step_size).max(1)) as i32)
            }
            LrSchedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= t).count();
                base * (*gamma as f64).powi(passed as i32)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let eta_min = *eta_min as f64;
                let phase = PI * t as f64 / (*t_max).max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + phase.cos()) / 2.0
            }
            LrSchedule::Warmup {
                start_factor,
                steps,
                then,
            } => {
                if t < *steps {
                    let f = *start_factor as f64;
                    base * (f + (1.0 - f) * t as f64 / *steps as f64)
                } else {
                    then.lr_f64(base, t - steps)
                }
            }
        }
    }
}
