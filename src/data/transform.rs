//! Frame transforms: short-side resize (torchvision's antialiased bilinear), random / centre / three
//! crop, horizontal flip, normalisation presets and the output layouts.
//!
//! Resize and crop are fused: only the output pixels inside the crop are computed, each exactly as the
//! full resize would compute it (PIL's / torchvision's separable triangle filter, widened by the scale
//! factor when shrinking, `align_corners=False`), in f32 on 0–255 values without rounding to u8. This
//! matches `torchvision.transforms.v2.functional.resize(float_tensor, antialias=True)` to ~1e-4 and PIL's
//! uint8 resize to within its rounding (tests/data.rs).

use crate::error::Result;

use super::data_err;
use super::sampling::Stream;

/// An RGB image, 8 bits per channel, rows top to bottom, `data[(y·width + x)·3 + c]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Frame {
        debug_assert_eq!(data.len(), width * height * 3);
        Frame {
            width,
            height,
            data,
        }
    }
}

/// A rectangle of a (resized) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Spatial crop of a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropMode {
    /// torchvision `RandomCrop`: offsets uniform in `0..=W-size`, `0..=H-size`, one per clip.
    Random,
    /// torchvision `CenterCrop`: offsets `round((W-size)/2)` with Python's round-half-to-even.
    Center,
    /// mmaction2 `ThreeCrop`: three crops along the long side (left/top, centre, right/bottom at
    /// offsets 0, s, 2s with `s = (L-size)/2`), centred on the short side; three views per clip.
    ThreeCrop,
}

/// Pixel normalisation, per model family. Values start as 0–255 RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// Official ECO: BGR channel order, 0–255, minus mean (104, 117, 128) on (B, G, R), std 1.
    Eco,
    /// The book's ECO variant: 0–255, minus (104, 117, 123) in RGB order, then channels flipped to BGR.
    EcoBook,
    /// mmaction2: RGB, 0–255, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375).
    Mmaction2,
    /// torchvision video models (R(2+1)D): RGB, 0–1, mean (0.43216, 0.394666, 0.37645),
    /// std (0.22803, 0.22145, 0.216989).
    R2plus1d,
    /// RGB scaled to 0–1, nothing subtracted.
    Unit,
}

impl Normalization {
    pub const ALL: [Normalization; 5] = [
        Normalization::Eco,
        Normalization::EcoBook,
        Normalization::Mmaction2,
        Normalization::R2plus1d,
        Normalization::Unit,
    ];

    /// The preset's name as stored in checkpoints (`Eco`, `EcoBook`, ...).
    pub fn name(&self) -> String {
        format!("{self:?}")
    }

    /// The preset called `name` ([`Normalization::name`]).
    pub fn from_name(name: &str) -> Option<Normalization> {
        Normalization::ALL.into_iter().find(|n| n.name() == name)
    }

    /// What the preset does, for messages: channel order, scale, mean and std.
    pub fn describe(&self) -> String {
        let c = self.channels();
        let order = if c[0].0 == 2 { "BGR" } else { "RGB" };
        let range = if c[0].1 == 1.0 { "0–255" } else { "0–1" };
        let list = |f: fn(&(usize, f32, f32, f32)) -> f32| {
            c.iter()
                .map(|x| format!("{}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} ({order} {range}, mean ({}), std ({}))",
            self.name(),
            list(|x| x.2),
            list(|x| x.3)
        )
    }

    /// For output channel c: (source RGB channel, scale, mean, std), output = (v·scale − mean) / std.
    pub fn channels(&self) -> [(usize, f32, f32, f32); 3] {
        match self {
            Normalization::Eco => [
                (2, 1.0, 104.0, 1.0),
                (1, 1.0, 117.0, 1.0),
                (0, 1.0, 128.0, 1.0),
            ],
            Normalization::EcoBook => [
                (2, 1.0, 123.0, 1.0),
                (1, 1.0, 117.0, 1.0),
                (0, 1.0, 104.0, 1.0),
            ],
            Normalization::Mmaction2 => [
                (0, 1.0, 123.675, 58.395),
                (1, 1.0, 116.28, 57.12),
                (2, 1.0, 103.53, 57.375),
            ],
            Normalization::R2plus1d => [
                (0, 1.0 / 255.0, 0.43216, 0.22803),
                (1, 1.0 / 255.0, 0.394666, 0.22145),
                (2, 1.0 / 255.0, 0.37645, 0.216989),
            ],
            Normalization::Unit => [
                (0, 1.0 / 255.0, 0.0, 1.0),
                (1, 1.0 / 255.0, 0.0, 1.0),
                (2, 1.0 / 255.0, 0.0, 1.0),
            ],
        }
    }
}

/// Memory layout of a clip batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [B, T, C, H, W]: ECO (its 2D part sees B·T images).
    BTCHW,
    /// [B, C, T, H, W]: 3D CNNs (R(2+1)D, ResNet3D, SlowFast-style nets).
    BCTHW,
}

/// How a video becomes a model input. `Default` is ECO's: 16 segments, short side 256, crop 224,
/// random crop, no flip (see `flip`), ECO normalisation, [B, T, C, H, W].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipSpec {
    /// T: frames per clip, one per segment.
    pub segments: usize,
    /// Crop side (square crops).
    pub size: usize,
    /// Resize so the short side is this (torchvision rule: long = int(short_target · long / short));
    /// 0 keeps the frames' size.
    pub resize_short: usize,
    /// Train: a random frame per segment, random crop offsets and flips. Test: centre frames,
    /// `clips_per_video` clips.
    pub train: bool,
    /// Clips per video at test time (ignored when training).
    pub clips_per_video: usize,
    pub crop: CropMode,
    /// Random horizontal flip (p = 0.5, same for all frames of a clip), when training only. Off by
    /// default: flipping turns left into right and clockwise into anticlockwise, so it would corrupt
    /// the synthetic set's labels.
    pub flip: bool,
    pub norm: Normalization,
    pub layout: Layout,
}

impl Default for ClipSpec {
    fn default() -> Self {
        ClipSpec {
            segments: 16,
            size: 224,
            resize_short: 256,
            train: true,
            clips_per_video: 1,
            crop: CropMode::Random,
            flip: false,
            norm: Normalization::Eco,
            layout: Layout::BTCHW,
        }
    }
}

impl ClipSpec {
    /// Views per video: clips (test only) × crops (3 for three-crop).
    pub fn views(&self) -> usize {
        let clips = if self.train {
            1
        } else {
            self.clips_per_video.max(1)
        };
        clips
            * if self.crop == CropMode::ThreeCrop {
                3
            } else {
                1
            }
    }

    /// Floats in one view: T · 3 · size².
    pub fn clip_len(&self) -> usize {
        self.segments * 3 * self.size * self.size
    }

    /// Shape of one view in `layout`, without the batch dimension.
    pub fn clip_shape(&self) -> [usize; 4] {
        match self.layout {
            Layout::BTCHW => [self.segments, 3, self.size, self.size],
            Layout::BCTHW => [3, self.segments, self.size, self.size],
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.segments == 0 || self.size == 0 {
            return Err(data_err(
                "<clip spec>",
                format!(
                    "segments ({}) and crop size ({}) must be positive",
                    self.segments, self.size
                ),
            ));
        }
        if self.resize_short != 0 && self.resize_short < self.size {
            return Err(data_err(
                "<clip spec>",
                format!(
                    "resize_short {} is smaller than the crop size {}",
                    self.resize_short, self.size
                ),
            ));
        }
        Ok(())
    }
}

/// Size after a short-side resize to `short` (torchvision: the long side is `int(short · long /
/// short_side)`); `short == 0` keeps the size.
pub fn resized_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    if short == 0 || width == 0 || height == 0 {
        return (width, height);
    }
    if width <= height {
        (
            short,
            (short as f64 * height as f64 / width as f64) as usize,
        )
    } else {
        (
            (short as f64 * width as f64 / height as f64) as usize,
            short,
        )
    }
}

/// torchvision's centre crop of `cw`×`ch` in a `w`×`h` image (offsets rounded half to even, as
/// Python's `round`).
pub fn center_crop(w: usize, h: usize, cw: usize, ch: usize) -> Rect {
    let off = |full: usize, c: usize| ((full as f64 - c as f64) / 2.0).round_ties_even().max(0.0);
    Rect {
        x: off(w, cw) as usize,
        y: off(h, ch) as usize,
        w: cw,
        h: ch,
    }
}

/// torchvision's random crop: offsets uniform in `0..=w-cw`, `0..=h-ch`.
pub fn random_crop(w: usize, h: usize, cw: usize, ch: usize, s: &mut Stream) -> Rect {
    Rect {
        y: s.below(h.saturating_sub(ch) + 1),
        x: s.below(w.saturating_sub(cw) + 1),
        w: cw,
        h: ch,
    }
}

/// mmaction2's three crops along the long side: offsets 0, step, 2·step with `step = (L-c)/2`
/// (left, centre, right or top, middle, bottom), centred (torchvision rounding) on the short side.
pub fn three_crop(w: usize, h: usize, cw: usize, ch: usize) -> [Rect; 3] {
    let c = center_crop(w, h, cw, ch);
    if w >= h {
        let step = w.saturating_sub(cw) / 2;
        [0, step, 2 * step].map(|x| Rect { x, ..c })
    } else {
        let step = h.saturating_sub(ch) / 2;
        [0, step, 2 * step].map(|y| Rect { y, ..c })
    }
}

/// Filter taps of one output coordinate: first source index and normalised weights.
#[derive(Debug, Clone)]
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// PIL / ATen antialiased bilinear coefficients for output indices `lo..lo+n` of a resize from
/// `input` to `output` samples (ATen `_compute_indices_weights_aa`, interp_size 2).
fn taps(input: usize, output: usize, lo: usize, n: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (lo..lo + n)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let x = (j as f64 - center + 0.5) * invscale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            Taps {
                start: xmin,
                weights: w.into_iter().map(|v| v as f32).collect(),
            }
        })
        .collect()
}

/// The `rect` of `frame` resized to `rw`×`rh`, as f32 0–255 HWC (`rect.h · rect.w · 3` values).
/// `rw == width && rh == height` copies without filtering.
pub fn resize_crop(frame: &Frame, rw: usize, rh: usize, rect: Rect) -> Vec<f32> {
    let (w, h) = (frame.width, frame.height);
    assert!(
        rect.x + rect.w <= rw && rect.y + rect.h <= rh,
        "crop {rect:?} outside {rw}x{rh}"
    );
    let mut out = vec![0f32; rect.w * rect.h * 3];
    if rw == w && rh == h {
        for y in 0..rect.h {
            let src = &frame.data[((rect.y + y) * w + rect.x) * 3..][..rect.w * 3];
            for (o, &v) in out[y * rect.w * 3..][..rect.w * 3].iter_mut().zip(src) {
                *o = v as f32;
            }
        }
        return out;
    }
    let xt = taps(w, rw, rect.x, rect.w);
    let yt = taps(h, rh, rect.y, rect.h);
    // Source rows the vertical pass needs.
    let r0 = yt.iter().map(|t| t.start).min().unwrap_or(0);
    let r1 = yt
        .iter()
        .map(|t| t.start + t.weights.len())
        .max()
        .unwrap_or(0);
    // Horizontal pass over rows r0..r1, for the crop's columns only.
    let mut tmp = vec![0f32; (r1 - r0) * rect.w * 3];
    for r in r0..r1 {
        let row = &frame.data[r * w * 3..(r + 1) * w * 3];
        let dst = &mut tmp[(r - r0) * rect.w * 3..][..rect.w * 3];
        for (x, t) in xt.iter().enumerate() {
            let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
            for (k, &wt) in t.weights.iter().enumerate() {
                let p = &row[(t.start + k) * 3..][..3];
                a += wt * p[0] as f32;
                b += wt * p[1] as f32;
                c += wt * p[2] as f32;
            }
            dst[x * 3] = a;
            dst[x * 3 + 1] = b;
            dst[x * 3 + 2] = c;
        }
    }
    // Vertical pass.
    let rowlen = rect.w * 3;
    for (y, t) in yt.iter().enumerate() {
        let dst = &mut out[y * rowlen..][..rowlen];
        for (k, &wt) in t.weights.iter().enumerate() {
            let src = &tmp[(t.start + k - r0) * rowlen..][..rowlen];
            for (o, &v) in dst.iter_mut().zip(src) {
                *o += wt * v;
            }
        }
    }
    out
}

/// Write one HWC f32 0–255 image (`w`×`h`) as frame `t` of a clip in `layout`, normalised, flipped
/// horizontally when `flip`. `out` holds one clip of `segments` frames.
#[allow(clippy::too_many_arguments)]
pub fn write_frame(
    hwc: &[f32],
    w: usize,
    h: usize,
    t: usize,
    segments: usize,
    norm: Normalization,
    flip: bool,
    layout: Layout,
    out: &mut [f32],
) {
    let plane = w * h;
    for (c, (src_c, scale, mean, std)) in norm.channels().into_iter().enumerate() {
        let base = match layout {
            Layout::BTCHW => (t * 3 + c) * plane,
            Layout::BCTHW => (c * segments + t) * plane,
        };
        let inv = 1.0 / std;
        let dst = &mut out[base..base + plane];
        for y in 0..h {
            let row = &hwc[y * w * 3..(y + 1) * w * 3];
            let drow = &mut dst[y * w..(y + 1) * w];
            for (x, d) in drow.iter_mut().enumerate() {
                let sx = if flip { w - 1 - x } else { x };
                *d = (row[sx * 3 + src_c] * scale - mean) * inv;
            }
        }
    }
}

/// One clip from decoded frames with explicit parameters: every frame resized to `resize`
/// (`None`: kept), cropped to `crop`, flipped when `flip`, normalised and written in `layout`
/// ([T, 3, h, w] or [3, T, h, w]). The building block of [`super::load_clip`], public for tests.
pub fn clip_from_frames(
    frames: &[&Frame],
    resize: Option<(usize, usize)>,
    crop: Rect,
    flip: bool,
    norm: Normalization,
    layout: Layout,
) -> Vec<f32> {
    let t_len = frames.len();
    let mut out = vec![0f32; t_len * 3 * crop.w * crop.h];
    for (t, f) in frames.iter().enumerate() {
        let (rw, rh) = resize.unwrap_or((f.width, f.height));
        let hwc = resize_crop(f, rw, rh, crop);
        write_frame(&hwc, crop.w, crop.h, t, t_len, norm, flip, layout, &mut out);
    }
    out
}
