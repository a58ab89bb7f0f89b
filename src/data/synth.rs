//! The built-in synthetic action set: classes defined by motion only.
//!
//! Every video shows one textured main object on a textured background that drifts slowly, one or two
//! smaller distractor objects wandering on random smooth paths, and per-pixel noise. The object's shape,
//! size, colours, stripe texture, start position and orientation are random per video, so appearance
//! carries no label and no single frame reveals the class; only how the main object moves does.
//! Everything is a pure function of (seed, class, video, frame): frames are rendered on demand, in any
//! order, identically on every run. Motion is defined in frame-relative units over the video's duration
//! (time s = frame / (frames − 1)), so the same video looks the same at any `size` or `frames`.

use std::path::Path;

use rayon::prelude::*;

use crate::error::Result;
use crate::rng;

use super::sampling::Stream;
use super::transform::Frame;
use super::{data_err, io_err, WarningLog};

/// The classes, in label order. `SynthConfig::classes` takes the first n.
pub const SYNTH_CLASSES: &[&str] = &[
    "move_left",       // travels 0.30–0.45 of the frame leftwards
    "move_right",      // … rightwards
    "move_up",         // … upwards
    "move_down",       // … downwards
    "rotate_cw",       // turns 250°–360° clockwise (on screen) about a pivot near one end
    "rotate_ccw",      // … anticlockwise
    "grow",            // length ×2.0–2.4 over the video (from 0.16–0.2 of the frame)
    "shrink",          // length ÷2.0–2.4
    "move_right_fast", // travels 1.0–1.4 frames rightwards, wrapping round at the edge
    "bounce",          // bounces vertically on a floor, 1.5–2.5 bounces
    "orbit",           // circles a centre (0.6–0.9 turns, either direction)
    "stay",            // stays put (only the distractors and the background move)
];

/// Options of the synthetic action set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of classes, the first ones of [`SYNTH_CLASSES`] (10 by default, at most 12).
    pub classes: usize,
    pub videos_per_class: usize,
    /// Frames per video.
    pub frames: usize,
    /// Side of the square raw frames, before the clip transforms.
    pub size: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: 10,
            videos_per_class: 100,
            frames: 32,
            size: 128,
            seed: 0,
        }
    }
}

/// Clamp the options into range, with a warning for each change.
pub(crate) fn checked_config(cfg: &SynthConfig, log: &mut WarningLog) -> SynthConfig {
    let mut c = cfg.clone();
    let max = SYNTH_CLASSES.len();
    if c.classes == 0 || c.classes > max {
        c.classes = c.classes.clamp(1, max);
        log.add(
            "synthetic options out of range (clamped)",
            format!("classes {} → {} (1..={max})", cfg.classes, c.classes),
        );
    }
    if c.frames == 0 {
        c.frames = 1;
        log.add("synthetic options out of range (clamped)", "frames 0 → 1");
    }
    if c.size < 8 || c.size > MAX_SYNTH_SIZE {
        c.size = c.size.clamp(8, MAX_SYNTH_SIZE);
        log.add(
            "synthetic options out of range (clamped)",
            format!("size {} → {} (8..={MAX_SYNTH_SIZE})", cfg.size, c.size),
        );
    }
    c
}

/// The largest synthetic frame side: the set is defined in frame units, so larger frames add no
/// detail, only memory (a side of 10⁶ used to abort allocating the frame).
pub const MAX_SYNTH_SIZE: usize = 2048;

pub(crate) fn video_name(class: usize, video: usize) -> String {
    format!("{}/v_{video:04}", SYNTH_CLASSES[class])
}

/// The seed of one video.
fn video_seed(seed: u64, class: usize, video: usize) -> u64 {
    rng::mix(
        rng::mix(seed, 0x5EED_C1A5_0000 + class as u64),
        video as u64,
    )
}

type Rgb = [f32; 3];

const G1: usize = 4; // background octaves: coarse grid …
const G2: usize = 9; // … and finer grid, both wrapping round

#[derive(Debug, Clone, Copy)]
enum ShapeKind {
    /// r(φ) = 1 + Σₖ aₖ cos(kφ − φₖ), k = 1..3 (no rotational symmetry in general), squeezed by
    /// `aspect` across its long axis.
    Blob,
    /// A rectangle of half sides 1 × 1/aspect.
    Box,
}

#[derive(Debug, Clone)]
struct Shape {
    kind: ShapeKind,
    /// Half length along the long axis (frame units).
    radius: f32,
    aspect: f32,
    /// (amplitude, cos φₖ, sin φₖ) for k = 1, 2, 3.
    harm: [(f32, f32, f32); 3],
    col_a: Rgb,
    col_b: Rgb,
    border: Rgb,
    /// Border width in object units.
    border_w: f32,
    stripe_freq: f32,
    stripe_phase: f32,
    /// A dot on the object (object units: centre x, radius) that makes its orientation unambiguous
    /// over a full turn (stripes and boxes look the same after half a turn).
    marker: (f32, f32),
    marker_col: Rgb,
}

#[derive(Debug, Clone)]
enum Motion {
    /// Constant velocity from `p0` by `d`; `wrap`: x wraps round (fast class).
    Linear {
        p0: [f32; 2],
        d: [f32; 2],
        wrap: bool,
    },
    /// Spin by `omega` radians (positive: clockwise on screen) about the pivot `p0` (drifting by `d`),
    /// which lies `arm` (frame units) behind the object's centre along its long axis.
    Spin {
        p0: [f32; 2],
        d: [f32; 2],
        omega: f32,
        arm: f32,
    },
    /// Radius × k^s (grow) or × k^(1−s) (shrink), about `p0` drifting by `d`.
    Scale {
        p0: [f32; 2],
        d: [f32; 2],
        k: f32,
        grow: bool,
    },
    /// y = floor − A·|sin(π(n·s + φ))|, x drifting.
    Bounce {
        x0: f32,
        dx: f32,
        floor: f32,
        amp: f32,
        n: f32,
        phase: f32,
    },
    /// Circle of radius `r` about `c`, from angle `a0` by `turns` (signed) turns.
    Orbit {
        c: [f32; 2],
        r: f32,
        a0: f32,
        turns: f32,
    },
}

#[derive(Debug, Clone)]
struct Distractor {
    p0: [f32; 2],
    /// Per axis two sinusoids (amplitude, cycles per video, phase).
    waves: [[(f32, f32, f32); 2]; 2],
    radius: f32,
    square: bool,
    col: Rgb,
}

/// Everything random about one video.
#[derive(Debug, Clone)]
struct Video {
    bg1: Vec<Rgb>,
    bg2: Vec<Rgb>,
    drift: [f32; 2],
    shape: Shape,
    motion: Motion,
    angle0: f32,
    /// Orientation wobble of classes that do not spin: amplitude (rad), cycles, phase.
    wobble: (f32, f32, f32),
    distractors: Vec<Distractor>,
    noise: f32,
    noise_seed: u64,
}

fn color(s: &mut Stream, lo: f32, hi: f32) -> Rgb {
    [s.range(lo, hi), s.range(lo, hi), s.range(lo, hi)]
}

fn luma(c: Rgb) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

impl Video {
    fn new(seed: u64, class: usize, video: usize) -> Video {
        let vseed = video_seed(seed, class, video);
        let mut s = Stream::new(vseed);
        let tau = std::f32::consts::TAU;
        // Background: two octaves of wrapping value noise around a base colour.
        let base = color(&mut s, 60.0, 190.0);
        let bg1 = (0..G1 * G1)
            .map(|_| {
                let d = color(&mut s, -45.0, 45.0);
                [base[0] + d[0], base[1] + d[1], base[2] + d[2]]
            })
            .collect();
        let bg2 = (0..G2 * G2).map(|_| color(&mut s, -25.0, 25.0)).collect();
        let da = s.range(0.0, tau);
        let dm = s.range(0.0, 0.08);
        let drift = [dm * da.cos(), dm * da.sin()];

        // Main object: appearance independent of the class.
        let kind = if s.uniform() < 0.6 {
            ShapeKind::Blob
        } else {
            ShapeKind::Box
        };
        let harm = [0.0f32, 0.0, 0.0].map(|_| {
            let a = s.range(0.0, 0.22);
            let p = s.range(0.0, tau);
            (a, p.cos(), p.sin())
        });
        let col_a = color(&mut s, 0.0, 255.0);
        let dark = s.uniform() < 0.5;
        let col_b = col_a.map(|v| if dark { v * 0.3 } else { v + (255.0 - v) * 0.7 });
        let border = if luma(base) > 125.0 {
            [20.0, 20.0, 20.0]
        } else {
            [235.0, 235.0, 235.0]
        };
        let mut shape = Shape {
            kind,
            radius: s.range(0.13, 0.2),
            aspect: s.range(1.8, 2.5),
            harm,
            col_a,
            col_b,
            border,
            border_w: 0.15,
            stripe_freq: s.range(1.2, 2.2),
            stripe_phase: s.range(0.0, 1.0),
            marker: (s.range(0.6, 0.7), s.range(0.3, 0.35)),
            marker_col: border,
        };
        let angle0 = s.range(0.0, tau);
        let wobble = (s.range(0.0, 0.2), s.range(0.5, 1.5), s.range(0.0, 1.0));

        // The class: how the main object moves.
        let small_drift = |s: &mut Stream, m: f32| {
            let a = s.range(0.0, tau);
            let r = s.range(0.0, m);
            [r * a.cos(), r * a.sin()]
        };
        let motion = match class {
            0..=3 => {
                let dir = [[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]][class];
                let d = s.range(0.30, 0.45);
                let along = if dir[0] + dir[1] > 0.0 {
                    s.range(0.12, 0.88 - d)
                } else {
                    s.range(0.12 + d, 0.88)
                };
                let perp = s.range(0.2, 0.8);
                let pd = s.range(-0.06, 0.06);
                let (p0, dv) = if dir[0] != 0.0 {
                    ([along, perp], [dir[0] * d, pd])
                } else {
                    ([perp, along], [pd, dir[1] * d])
                };
                Motion::Linear {
                    p0,
                    d: dv,
                    wrap: false,
                }
            }
            4 | 5 => Motion::Spin {
                p0: [s.range(0.3, 0.7), s.range(0.3, 0.7)],
                d: small_drift(&mut s, 0.06),
                omega: s.range(4.4, 6.3) * if class == 4 { 1.0 } else { -1.0 },
                arm: shape.radius * s.range(0.6, 1.0),
            },
            6 | 7 => {
                shape.radius = s.range(0.08, 0.1);
                Motion::Scale {
                    p0: [s.range(0.3, 0.7), s.range(0.3, 0.7)],
                    d: small_drift(&mut s, 0.06),
                    k: s.range(2.0, 2.4),
                    grow: class == 6,
                }
            }
            8 => Motion::Linear {
                p0: [s.range(0.0, 1.0), s.range(0.2, 0.8)],
                d: [s.range(1.0, 1.4), s.range(-0.06, 0.06)],
                wrap: true,
            },
            9 => Motion::Bounce {
                x0: s.range(0.25, 0.75),
                dx: s.range(-0.06, 0.06),
                floor: s.range(0.72, 0.82),
                amp: s.range(0.30, 0.42),
                n: s.range(1.5, 2.5),
                phase: s.range(0.0, 1.0),
            },
            10 => Motion::Orbit {
                c: [s.range(0.35, 0.65), s.range(0.35, 0.65)],
                r: s.range(0.15, 0.22),
                a0: s.range(0.0, tau),
                turns: s.range(0.6, 0.9) * if s.uniform() < 0.5 { 1.0 } else { -1.0 },
            },
            _ => Motion::Linear {
                p0: [s.range(0.2, 0.8), s.range(0.2, 0.8)],
                d: small_drift(&mut s, 0.03),
                wrap: false,
            },
        };

        let n_distractors = 1 + s.below(2);
        let distractors = (0..n_distractors)
            .map(|_| {
                let wave =
                    |s: &mut Stream| (s.range(0.04, 0.12), s.range(0.3, 1.2), s.range(0.0, 1.0));
                Distractor {
                    p0: [s.range(0.1, 0.9), s.range(0.1, 0.9)],
                    waves: [[wave(&mut s), wave(&mut s)], [wave(&mut s), wave(&mut s)]],
                    radius: s.range(0.035, 0.06),
                    square: s.uniform() < 0.5,
                    col: color(&mut s, 0.0, 255.0),
                }
            })
            .collect();
        Video {
            bg1,
            bg2,
            drift,
            shape,
            motion,
            angle0,
            wobble,
            distractors,
            noise: s.range(8.0, 16.0),
            noise_seed: rng::mix(vseed, 0xF0F0),
        }
    }

    /// Main object centre, orientation and radius at time s ∈ [0, 1].
    fn state(&self, s: f32) -> ([f32; 2], f32, f32) {
        let tau = std::f32::consts::TAU;
        let (w_amp, w_f, w_p) = self.wobble;
        let wob = self.angle0 + w_amp * (tau * (w_f * s + w_p)).sin();
        let r = self.shape.radius;
        let lin = |p0: [f32; 2], d: [f32; 2]| [p0[0] + d[0] * s, p0[1] + d[1] * s];
        match &self.motion {
            Motion::Linear { p0, d, wrap } => {
                let mut p = lin(*p0, *d);
                if *wrap {
                    p[0] = p[0].rem_euclid(1.0);
                }
                (p, wob, r)
            }
            Motion::Spin { p0, d, omega, arm } => {
                let a = self.angle0 + omega * s;
                let p = lin(*p0, *d);
                ([p[0] + arm * a.cos(), p[1] + arm * a.sin()], a, r)
            }
            Motion::Scale { p0, d, k, grow } => {
                let e = if *grow { s } else { 1.0 - s };
                (lin(*p0, *d), wob, r * k.powf(e))
            }
            Motion::Bounce {
                x0,
                dx,
                floor,
                amp,
                n,
                phase,
            } => {
                let y = floor - amp * (std::f32::consts::PI * (n * s + phase)).sin().abs();
                ([x0 + dx * s, y], wob, r)
            }
            Motion::Orbit {
                c,
                r: rr,
                a0,
                turns,
            } => {
                let a = a0 + tau * turns * s;
                ([c[0] + rr * a.cos(), c[1] + rr * a.sin()], wob, r)
            }
        }
    }

    fn wraps(&self) -> bool {
        matches!(self.motion, Motion::Linear { wrap: true, .. })
    }
}

/// Per-axis value-noise lookup: cell indices and smoothstep weight for each pixel.
fn axis_lookup(size: usize, grid: usize, offset: f32) -> Vec<(usize, usize, f32)> {
    (0..size)
        .map(|i| {
            let g = ((i as f32 + 0.5) / size as f32 + offset).rem_euclid(1.0) * grid as f32;
            let i0 = (g.floor() as usize).min(grid - 1);
            let f = g - i0 as f32;
            (i0, (i0 + 1) % grid, f * f * (3.0 - 2.0 * f))
        })
        .collect()
}

fn lerp3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Blend `col` over pixel `p` with coverage `a`.
#[inline]
fn blend(p: &mut [f32], col: Rgb, a: f32) {
    for c in 0..3 {
        p[c] += (col[c] - p[c]) * a;
    }
}

/// Render the main object, centred at `c` (frame units), into `img`.
fn draw_shape(img: &mut [f32], size: usize, sh: &Shape, c: [f32; 2], angle: f32, radius: f32) {
    let sz = size as f32;
    let pix = radius * sz; // pixels per object unit
    if pix < 0.25 {
        return;
    }
    // Every point of the shape lies within this distance of its centre (box: half-diagonal ≤ √2).
    let ext = radius * (1.0 + sh.harm.iter().map(|h| h.0).sum::<f32>()).max(1.42) + 1.5 / sz;
    let x0 = (((c[0] - ext) * sz).floor().max(0.0)) as usize;
    let x1 = (((c[0] + ext) * sz).ceil().min(sz)) as usize;
    let y0 = (((c[1] - ext) * sz).floor().max(0.0)) as usize;
    let y1 = (((c[1] + ext) * sz).ceil().min(sz)) as usize;
    let (ca, sa) = (angle.cos(), angle.sin());
    let bw = sh.border_w.max(1.2 / pix);
    for y in y0..y1 {
        let dy = (y as f32 + 0.5) / sz - c[1];
        for x in x0..x1 {
            let dx = (x as f32 + 0.5) / sz - c[0];
            // Object coordinates: rotate by −angle, scale by the radius.
            let qx = (ca * dx + sa * dy) / radius;
            let qy = (-sa * dx + ca * dy) / radius;
            // Signed distance (object units, negative inside).
            let d = match sh.kind {
                ShapeKind::Blob => {
                    let qy = qy * sh.aspect;
                    let rho = (qx * qx + qy * qy).sqrt();
                    let (cs, sn) = if rho > 1e-6 {
                        (qx / rho, qy / rho)
                    } else {
                        (1.0, 0.0)
                    };
                    let (c2, s2) = (cs * cs - sn * sn, 2.0 * cs * sn);
                    let (c3, s3) = (cs * c2 - sn * s2, sn * c2 + cs * s2);
                    let h = &sh.harm;
                    let bound = 1.0
                        + h[0].0 * (cs * h[0].1 + sn * h[0].2)
                        + h[1].0 * (c2 * h[1].1 + s2 * h[1].2)
                        + h[2].0 * (c3 * h[2].1 + s3 * h[2].2);
                    rho - bound
                }
                ShapeKind::Box => (qx.abs() - 1.0).max(qy.abs() * sh.aspect - 1.0),
            };
            let a = (0.5 - d * pix).clamp(0.0, 1.0);
            if a <= 0.0 {
                continue;
            }
            // Stripes along the object's x axis (they turn with it).
            let t = (qx * sh.stripe_freq + sh.stripe_phase).rem_euclid(1.0);
            let tri = (2.0 * t - 1.0).abs(); // triangle wave in [0, 1]
            let k = ((tri - 0.5) * 3.0 + 0.5).clamp(0.0, 1.0);
            let mut col = lerp3(sh.col_a, sh.col_b, k);
            let (mx, mq) = ((qx - sh.marker.0) / sh.marker.1, qy / sh.marker.1);
            let md = (mx * mx + mq * mq).sqrt() - 1.0; // marker units
            let m = (0.5 - md * sh.marker.1 * pix).clamp(0.0, 1.0);
            if m > 0.0 {
                col = lerp3(col, sh.marker_col, m);
            }
            let b = (0.5 + (d + bw) * pix).clamp(0.0, 1.0);
            col = lerp3(col, sh.border, b);
            blend(&mut img[(y * size + x) * 3..][..3], col, a);
        }
    }
}

fn draw_distractor(img: &mut [f32], size: usize, d: &Distractor, s: f32) {
    let tau = std::f32::consts::TAU;
    let mut p = d.p0;
    for (axis, waves) in d.waves.iter().enumerate() {
        for &(amp, f, ph) in waves {
            p[axis] += amp * (tau * (f * s + ph)).sin();
        }
    }
    let sz = size as f32;
    let pix = d.radius * sz;
    let ext = d.radius * 1.5 + 1.5 / sz;
    let x0 = (((p[0] - ext) * sz).floor().max(0.0)) as usize;
    let x1 = (((p[0] + ext) * sz).ceil().clamp(0.0, sz)) as usize;
    let y0 = (((p[1] - ext) * sz).floor().max(0.0)) as usize;
    let y1 = (((p[1] + ext) * sz).ceil().clamp(0.0, sz)) as usize;
    for y in y0..y1 {
        let dy = ((y as f32 + 0.5) / sz - p[1]) / d.radius;
        for x in x0..x1 {
            let dx = ((x as f32 + 0.5) / sz - p[0]) / d.radius;
            let dist = if d.square {
                dx.abs().max(dy.abs()) - 1.0
            } else {
                (dx * dx + dy * dy).sqrt() - 1.0
            };
            let a = (0.5 - dist * pix).clamp(0.0, 1.0);
            if a > 0.0 {
                blend(&mut img[(y * size + x) * 3..][..3], d.col, a);
            }
        }
    }
}

fn render(v: &Video, cfg: &SynthConfig, frame: usize) -> Frame {
    let size = cfg.size;
    let s = if cfg.frames > 1 {
        frame.min(cfg.frames - 1) as f32 / (cfg.frames - 1) as f32
    } else {
        0.0
    };
    // Background.
    let mut img = vec![0f32; size * size * 3];
    let (ox, oy) = (v.drift[0] * s, v.drift[1] * s);
    let (ax1, ay1) = (axis_lookup(size, G1, ox), axis_lookup(size, G1, oy));
    let (ax2, ay2) = (axis_lookup(size, G2, ox), axis_lookup(size, G2, oy));
    for y in 0..size {
        let (r0, r1, fy) = ay1[y];
        let (q0, q1, gy) = ay2[y];
        let row = &mut img[y * size * 3..(y + 1) * size * 3];
        for x in 0..size {
            let (c0, c1, fx) = ax1[x];
            let (d0, d1, gx) = ax2[x];
            let a = lerp3(v.bg1[r0 * G1 + c0], v.bg1[r0 * G1 + c1], fx);
            let b = lerp3(v.bg1[r1 * G1 + c0], v.bg1[r1 * G1 + c1], fx);
            let lo = lerp3(a, b, fy);
            let a = lerp3(v.bg2[q0 * G2 + d0], v.bg2[q0 * G2 + d1], gx);
            let b = lerp3(v.bg2[q1 * G2 + d0], v.bg2[q1 * G2 + d1], gx);
            let hi = lerp3(a, b, gy);
            row[x * 3] = lo[0] + hi[0];
            row[x * 3 + 1] = lo[1] + hi[1];
            row[x * 3 + 2] = lo[2] + hi[2];
        }
    }
    for d in &v.distractors {
        draw_distractor(&mut img, size, d, s);
    }
    let (c, angle, radius) = v.state(s);
    draw_shape(&mut img, size, &v.shape, c, angle, radius);
    if v.wraps() {
        // The wrapped-round copy of an object crossing the left or right edge.
        let ext = radius * 2.0;
        if c[0] + ext > 1.0 {
            draw_shape(&mut img, size, &v.shape, [c[0] - 1.0, c[1]], angle, radius);
        }
        if c[0] - ext < 0.0 {
            draw_shape(&mut img, size, &v.shape, [c[0] + 1.0, c[1]], angle, radius);
        }
    }
    // Per-pixel noise (triangular, ±noise) and quantisation.
    let nseed = rng::mix(v.noise_seed, frame as u64);
    let amp = v.noise / 1023.0;
    let mut data = vec![0u8; size * size * 3];
    for (i, (px, out)) in img
        .chunks_exact(3)
        .zip(data.chunks_exact_mut(3))
        .enumerate()
    {
        let h = rng::mix(nseed, i as u64);
        for c in 0..3 {
            let bits = h >> (c * 20);
            let n = ((bits & 1023) as f32 + ((bits >> 10) & 1023) as f32 - 1023.0) * amp;
            out[c] = (px[c] + n).round().clamp(0.0, 255.0) as u8;
        }
    }
    Frame::new(size, size, data)
}

/// Frame `frame` of video `video` of class `class` (`size`×`size` RGB).
pub fn render_frame(cfg: &SynthConfig, class: usize, video: usize, frame: usize) -> Frame {
    let v = Video::new(cfg.seed, class, video);
    render(&v, cfg, frame)
}

/// Several frames of one video (the per-video parameters are drawn once).
pub(crate) fn render_frames(
    cfg: &SynthConfig,
    class: usize,
    video: usize,
    frames: &[usize],
) -> Vec<Frame> {
    let v = Video::new(cfg.seed, class, video);
    frames.iter().map(|&f| render(&v, cfg, f)).collect()
}

/// Write the synthetic set as frame folders: `OUT/<class>/v_0000/img_00001.jpg` (JPEG quality 95),
/// plus `OUT/labels.csv` (`class_label,label_id`, 0-based, in [`SYNTH_CLASSES`] order) and
/// `OUT/list.txt` (mmaction2 rawframes list: `<class>/<video> <frames> <label>`). Opening OUT with
/// [`super::Dataset::frame_folders`] gives the same videos, labels and names as
/// [`super::Dataset::synthetic`] (frames differ only by JPEG loss).
pub fn write_synthetic(cfg: &SynthConfig, out: &Path) -> Result<()> {
    let mut log = WarningLog::default();
    let cfg = checked_config(cfg, &mut log);
    if let Some(w) = log.list().first() {
        return Err(data_err(out, format!("synthetic options: {w}")));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let jobs: Vec<(usize, usize)> = (0..cfg.classes)
        .flat_map(|c| (0..cfg.videos_per_class).map(move |v| (c, v)))
        .collect();
    jobs.par_iter()
        .try_for_each(|&(class, video)| -> Result<()> {
            let dir = out.join(video_name(class, video));
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            let v = Video::new(cfg.seed, class, video);
            for f in 0..cfg.frames {
                let frame = render(&v, &cfg, f);
                let path = dir.join(format!("img_{:05}.jpg", f + 1));
                let mut buf = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
                    .encode(
                        &frame.data,
                        frame.width as u32,
                        frame.height as u32,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| data_err(&path, format!("JPEG encoding failed: {e}")))?;
                std::fs::write(&path, buf).map_err(|e| io_err(&path, e))?;
            }
            Ok(())
        })?;
    let mut labels = String::from("class_label,label_id\n");
    let mut list = String::new();
    for (c, name) in SYNTH_CLASSES[..cfg.classes].iter().enumerate() {
        labels += &format!("{name},{c}\n");
        for v in 0..cfg.videos_per_class {
            list += &format!("{} {} {c}\n", video_name(c, v), cfg.frames);
        }
    }
    for (file, text) in [("labels.csv", labels), ("list.txt", list)] {
        let p = out.join(file);
        std::fs::write(&p, text).map_err(|e| io_err(&p, e))?;
    }
    Ok(())
}

/// The main object's pixel mask in frame `frame` of video `video` of class `class` (`size`×`size`,
/// coverage 0–255 in all three channels, 0 elsewhere): the object that carries the class, drawn with
/// the same geometry and edge antialiasing as [`render_frame`] (also its wrapped-round copy), without
/// background, distractors or noise. Deterministic like the frames. A `Frame`, so that it goes through
/// the same resize and crop as the frames (see [`load_mask_clip`]); Grad-CAM's heat-on-object test uses
/// it. The object is drawn, exactly as in the frames, once over black and once over white: blending
/// with coverage a gives black + a·(col − black) and white + a·(col − white), so their difference is
/// 255·(1 − a) whatever the object's colours, and a = 1 − (white − black)/255.
pub fn render_mask(cfg: &SynthConfig, class: usize, video: usize, frame: usize) -> Frame {
    let v = Video::new(cfg.seed, class, video);
    let size = cfg.size;
    let s = if cfg.frames > 1 {
        frame.min(cfg.frames - 1) as f32 / (cfg.frames - 1) as f32
    } else {
        0.0
    };
    let (c, angle, radius) = v.state(s);
    let draw = |img: &mut Vec<f32>| {
        draw_shape(img, size, &v.shape, c, angle, radius);
        if v.wraps() {
            let ext = radius * 2.0;
            if c[0] + ext > 1.0 {
                draw_shape(img, size, &v.shape, [c[0] - 1.0, c[1]], angle, radius);
            }
            if c[0] - ext < 0.0 {
                draw_shape(img, size, &v.shape, [c[0] + 1.0, c[1]], angle, radius);
            }
        }
    };
    let mut black = vec![0f32; size * size * 3];
    let mut white = vec![255f32; size * size * 3];
    draw(&mut black);
    draw(&mut white);
    let data = black
        .chunks_exact(3)
        .zip(white.chunks_exact(3))
        .flat_map(|(b, w)| {
            let a = 255.0 - (w[0] - b[0]);
            [a.round().clamp(0.0, 255.0) as u8; 3]
        })
        .collect();
    Frame::new(size, size, data)
}

/// The object mask of synthetic video `index` of `dataset` cut exactly as [`super::load_clip`] cuts
/// its test clip (`spec.train == false`: clip 0, the centre frame of each segment, the first crop —
/// the centre one — after the short-side resize): `spec.segments` planes of `spec.size`², values in
/// [0, 1], `[T, H, W]` row-major. An error for videos that are not synthetic.
pub fn load_mask_clip(
    dataset: &super::Dataset,
    index: usize,
    spec: &super::ClipSpec,
) -> Result<Vec<f32>> {
    use super::transform::{center_crop, resize_crop, resized_size, three_crop};
    use super::{CropMode, Sampling, Source};
    spec.validate()?;
    let item = dataset.items.get(index).ok_or_else(|| {
        crate::Error::arg(
            "load_mask_clip",
            format!("video {index} of a dataset of {}", dataset.len()),
        )
    })?;
    let (Source::Synthetic { class, video }, Some(cfg)) = (&item.source, dataset.synth_config())
    else {
        return Err(data_err(
            &item.name,
            "object masks exist for synthetic videos only",
        ));
    };
    let clips = spec.clips_per_video.max(1);
    let frames =
        super::segment_indices(cfg.frames, spec.segments, Sampling::Test { clip: 0, clips });
    let (rw, rh) = resized_size(cfg.size, cfg.size, spec.resize_short);
    if rw < spec.size || rh < spec.size {
        return Err(data_err(
            &item.name,
            format!(
                "crop {0}x{0} does not fit in the {rw}x{rh} frame",
                spec.size
            ),
        ));
    }
    let rect = match spec.crop {
        CropMode::ThreeCrop => three_crop(rw, rh, spec.size, spec.size)[0],
        _ => center_crop(rw, rh, spec.size, spec.size),
    };
    let mut out = Vec::with_capacity(frames.len() * spec.size * spec.size);
    for f in frames {
        let m = render_mask(cfg, *class, *video, f);
        let hwc = resize_crop(&m, rw, rh, rect);
        out.extend(hwc.chunks_exact(3).map(|p| p[0] / 255.0));
    }
    Ok(out)
}
