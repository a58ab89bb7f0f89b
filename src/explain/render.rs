//! Grad-CAM images: each sampled frame (de-normalised back to RGB) blended with a jet colour map of the
//! cam, written as one PNG per frame, an animated GIF of the clip and a contact sheet (all frames in a
//! grid, with the explained class, the layer and the top-5 predictions printed on it, in the embedded
//! DejaVu font rasterised with `ab_glyph`, so no system fonts are needed). Every file is written
//! atomically (temp file + rename, `vidgrad::io::write_atomic`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{ImageEncoder, RgbImage};

use super::GradCam;
use crate::data::{Layout, Normalization};
use crate::error::{Error, Result};

/// How the images are drawn.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The normalisation the clip was made with (to get the frames back as RGB).
    pub norm: Normalization,
    pub layout: Layout,
    /// Class names (else "class k").
    pub class_names: Option<Vec<String>>,
    /// First line of the contact sheet (e.g. the video's name and the model).
    pub title: String,
    /// Side of each frame in the images (default: the crop size, enlarged by an integer factor to at
    /// least 160 px).
    pub tile: Option<usize>,
    /// Weight of the heat map in the blend (default 0.45).
    pub alpha: f32,
    /// GIF frame time in milliseconds (default 250).
    pub gif_delay_ms: u32,
}

impl RenderOptions {
    pub fn new(norm: Normalization, layout: Layout) -> RenderOptions {
        RenderOptions {
            norm,
            layout,
            class_names: None,
            title: String::new(),
            tile: None,
            alpha: 0.45,
            gif_delay_ms: 250,
        }
    }
}

/// The files [`write_all`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub frames: Vec<PathBuf>,
    pub gif: PathBuf,
    pub contact_sheet: PathBuf,
    /// `cam.safetensors`: `cam` [T, H, W] (normalised), `cam_raw` [T, H, W], `cam_features`
    /// [T', H', W'], `weights` [C] (the α_k).
    pub tensors: PathBuf,
    /// `explain.json`: class, layer, shapes and top-5.
    pub json: PathBuf,
}

/// The jet colour map at v ∈ [0, 1] (blue → cyan → yellow → red), as RGB 0–1.
pub fn jet(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |c: f32| (1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0);
    [f(3.0), f(2.0), f(1.0)]
}

/// Frame `t` of a one-clip input (`data` in `layout`, normalised with `norm`) back as RGB u8.
pub fn frame_rgb(
    data: &[f32],
    size: [usize; 3],
    t: usize,
    norm: Normalization,
    layout: Layout,
) -> Vec<u8> {
    let [tn, h, w] = size;
    let plane = h * w;
    let mut out = vec![0u8; plane * 3];
    for (c, (src, scale, mean, std)) in norm.channels().into_iter().enumerate() {
        let base = match layout {
            Layout::BTCHW => (t * 3 + c) * plane,
            Layout::BCTHW => (c * tn + t) * plane,
        };
        for (i, &v) in data[base..base + plane].iter().enumerate() {
            out[i * 3 + src] = ((v * std + mean) / scale).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// `rgb` (h×w) blended with jet(`cam`) (h×w, 0–1): (1 − alpha)·frame + alpha·colour.
pub fn overlay(rgb: &[u8], cam: &[f32], alpha: f32) -> Vec<u8> {
    let mut out = vec![0u8; rgb.len()];
    for (i, &v) in cam.iter().enumerate() {
        let c = jet(v);
        for k in 0..3 {
            let x = (1.0 - alpha) * rgb[i * 3 + k] as f32 + alpha * 255.0 * c[k];
            out[i * 3 + k] = x.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn img_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn png_bytes(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| img_err(path, e))?;
    Ok(buf)
}

/// Write an RGB image as PNG, atomically.
pub fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    crate::io::write_atomic(path, &png_bytes(path, rgb, w, h)?)
}

/// An RGB canvas with filled rectangles and antialiased text (DejaVu Sans, embedded: no system fonts;
/// kerned, sub-pixel glyph positions, rasterised with `ab_glyph`).
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

fn font(bold: bool) -> &'static FontRef<'static> {
    static REGULAR: OnceLock<FontRef<'static>> = OnceLock::new();
    static BOLD: OnceLock<FontRef<'static>> = OnceLock::new();
    let (cell, bytes) = if bold {
        (&BOLD, dejavu::sans::bold())
    } else {
        (&REGULAR, dejavu::sans::regular())
    };
    cell.get_or_init(|| FontRef::try_from_slice(bytes).expect("the embedded DejaVu font parses"))
}

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(width: usize, height: usize, bg: [u8; 3]) -> Canvas {
        Canvas {
            width,
            height,
            rgb: bg
                .iter()
                .copied()
                .cycle()
                .take(width * height * 3)
                .collect(),
        }
    }

    /// Fill `[x0, x1) × [y0, y1)` (clipped).
    pub fn fill_rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(self.height)..y1.min(self.height) {
            for x in x0.min(self.width)..x1.min(self.width) {
                self.rgb[(y * self.width + x) * 3..][..3].copy_from_slice(&c);
            }
        }
    }

    /// Copy a `w`×`h` RGB image to (x0, y0) (clipped).
    pub fn blit(&mut self, img: &[u8], w: usize, h: usize, x0: usize, y0: usize) {
        for y in 0..h.min(self.height.saturating_sub(y0)) {
            let n = w.min(self.width.saturating_sub(x0));
            let dst = ((y0 + y) * self.width + x0) * 3;
            self.rgb[dst..dst + n * 3].copy_from_slice(&img[y * w * 3..][..n * 3]);
        }
    }

    /// Width in pixels of `text` at `px` pixels.
    pub fn text_width(text: &str, px: f32, bold: bool) -> f32 {
        let f = font(bold).as_scaled(PxScale::from(px));
        let mut w = 0.0;
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                w += f.kern(p, id);
            }
            w += f.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draw `text` with its top-left corner at (x, y) (the line's ascent below y); returns its width.
    pub fn text(&mut self, text: &str, px: f32, x: f32, y: f32, color: [u8; 3], bold: bool) -> f32 {
        let font = font(bold);
        let f = font.as_scaled(PxScale::from(px));
        let baseline = y + f.ascent();
        let mut caret = x;
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                caret += f.kern(p, id);
            }
            let g = id.with_scale_and_position(px, ab_glyph::point(caret, baseline));
            caret += f.h_advance(id);
            prev = Some(id);
            let Some(o) = font.outline_glyph(g) else {
                continue;
            };
            let b = o.px_bounds();
            let (w, h) = (self.width as i64, self.height as i64);
            let rgb = &mut self.rgb;
            o.draw(|gx, gy, cov| {
                let (px_x, px_y) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                if px_x < 0 || px_y < 0 || px_x >= w || px_y >= h {
                    return;
                }
                let i = ((px_y * w + px_x) * 3) as usize;
                let a = cov.clamp(0.0, 1.0);
                for k in 0..3 {
                    let v = rgb[i + k] as f32 * (1.0 - a) + color[k] as f32 * a;
                    rgb[i + k] = v.round() as u8;
                }
            });
        }
        caret - x
    }
}

/// The display side for crop size `size`: enlarged by an integer factor to at least 160 px.
/// The largest `--tile`.
pub const MAX_TILE: usize = 2048;
/// The most bytes of RGB frames one explanation draws (each of its images holds them all).
pub const MAX_IMAGE_BYTES: usize = 512 << 20;

fn default_tile(size: usize) -> usize {
    size * 160usize.div_ceil(size.max(1)).max(1)
}

fn resize_rgb(rgb: Vec<u8>, w: usize, h: usize, side: usize) -> Vec<u8> {
    if w == side && h == side {
        return rgb;
    }
    let img = RgbImage::from_raw(w as u32, h as u32, rgb).expect("buffer size");
    image::imageops::resize(
        &img,
        side as u32,
        side as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}

fn class_name(opts: &RenderOptions, k: usize) -> String {
    opts.class_names
        .as_ref()
        .and_then(|n| n.get(k).cloned())
        .unwrap_or_else(|| format!("class {k}"))
}

/// The overlaid frames at display size, one RGB buffer each (side `tile`).
pub fn overlaid_frames(data: &[f32], cam: &GradCam, opts: &RenderOptions) -> (Vec<Vec<u8>>, usize) {
    let [t, h, w] = cam.size;
    let tile = opts.tile.unwrap_or_else(|| default_tile(h.max(w)));
    let frames = (0..t)
        .map(|k| {
            let rgb = frame_rgb(data, cam.size, k, opts.norm, opts.layout);
            let o = overlay(&rgb, &cam.cam[k * h * w..(k + 1) * h * w], opts.alpha);
            resize_rgb(o, w, h, tile)
        })
        .collect();
    (frames, tile)
}

fn frame_name(k: usize) -> String {
    format!("frame_{k:03}.png")
}

/// Remove the frames an earlier explain of a longer clip left in `dir` (`frame_NNN.png` from `count` on),
/// so that the folder shows this clip only.
fn remove_stale_frames(dir: &Path, count: usize) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix("frame_")
            .and_then(|n| n.strip_suffix(".png"))
            .and_then(|n| n.parse::<usize>().ok());
        if index.is_some_and(|k| k >= count && name == frame_name(k)) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::Io {
                path: entry.path().display().to_string(),
                source: e,
            })?;
        }
    }
    Ok(())
}

/// Write everything for one clip into `dir` (created if needed): `frame_000.png`…, `clip.gif`,
/// `contact_sheet.png`, `cam.safetensors`, `explain.json`. `data` is the clip as given to the network
/// (one view, `opts.layout`, normalised with `opts.norm`).
pub fn write_all(dir: &Path, data: &[f32], cam: &GradCam, opts: &RenderOptions) -> Result<Written> {
    let [t, h, w] = cam.size;
    if data.len() != 3 * t * h * w {
        return Err(Error::arg(
            "explain",
            format!("clip of {} values for a cam of {t}×{h}×{w}", data.len()),
        ));
    }
    // the frames, the GIF and the contact sheet each hold t tiles: bounded before any is drawn
    let tile = opts.tile.unwrap_or_else(|| default_tile(h.max(w)));
    let bytes = [t, tile, tile, 3]
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b));
    if tile > MAX_TILE || bytes.is_none_or(|b| b > MAX_IMAGE_BYTES) {
        return Err(Error::arg(
            "explain",
            format!(
                "{t} frames of {tile}×{tile} pixels (--tile {tile}) are more than the {} MiB of images explain draws at most; lower --tile or --frames",
                MAX_IMAGE_BYTES >> 20
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let (frames, tile) = overlaid_frames(data, cam, opts);
    let mut frame_paths = vec![];
    for (k, f) in frames.iter().enumerate() {
        let p = dir.join(frame_name(k));
        write_png(&p, f, tile, tile)?;
        frame_paths.push(p);
    }
    remove_stale_frames(dir, frames.len())?;
    let gif = dir.join("clip.gif");
    write_gif(&gif, &frames, tile, opts.gif_delay_ms)?;
    let sheet = dir.join("contact_sheet.png");
    let (rgb, sw, sh) = contact_sheet(&frames, tile, cam, opts)?;
    write_png(&sheet, &rgb, sw, sh)?;

    let tensors = dir.join("cam.safetensors");
    let dev = crate::Device::Cpu;
    let [c, tf, hf, wf] = cam.feature_shape;
    let sd: crate::io::StateDict = [
        ("cam", crate::Tensor::from_slice(&cam.cam, &[t, h, w], dev)?),
        (
            "cam_raw",
            crate::Tensor::from_slice(&cam.cam_raw, &[t, h, w], dev)?,
        ),
        (
            "cam_features",
            crate::Tensor::from_slice(&cam.cam_features, &[tf, hf, wf], dev)?,
        ),
        (
            "weights",
            crate::Tensor::from_slice(&cam.weights, &[c], dev)?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    crate::io::save_safetensors(&tensors, &sd, None)?;

    let json = dir.join("explain.json");
    let p = cam.probabilities();
    let top: Vec<serde_json::Value> = crate::train::metrics::top_k(&p, 5)
        .into_iter()
        .map(|k| serde_json::json!({"class": k, "name": class_name(opts, k), "probability": p[k], "logit": cam.logits[k]}))
        .collect();
    let j = serde_json::json!({
        "title": opts.title,
        "class": cam.class,
        "class_name": class_name(opts, cam.class),
        "probability": p[cam.class],
        "layer": cam.layer,
        "feature_shape": cam.feature_shape,
        "clip_size": cam.size,
        "top5": top,
        "files": {
            "frames": frame_paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            "gif": "clip.gif", "contact_sheet": "contact_sheet.png", "tensors": "cam.safetensors",
        },
    });
    crate::io::write_atomic(&json, serde_json::to_string_pretty(&j).unwrap().as_bytes())?;
    Ok(Written {
        frames: frame_paths,
        gif,
        contact_sheet: sheet,
        tensors,
        json,
    })
}

/// An animated GIF of square RGB frames (looping), written atomically.
pub fn write_gif(path: &Path, frames: &[Vec<u8>], side: usize, delay_ms: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut buf = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut buf, 10);
        enc.set_repeat(Repeat::Infinite)
            .map_err(|e| img_err(path, e))?;
        let frames = frames.iter().map(|f| {
            let rgba: Vec<u8> = f
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect();
            image::Frame::from_parts(
                image::RgbaImage::from_raw(side as u32, side as u32, rgba).expect("buffer size"),
                0,
                0,
                image::Delay::from_numer_denom_ms(delay_ms, 1),
            )
        });
        enc.encode_frames(frames).map_err(|e| img_err(path, e))?;
    }
    crate::io::write_atomic(path, &buf)
}

/// The contact sheet: a header (title; class explained, layer and feature shape; the top-5 with
/// probability bars; a colour bar of the map) above all frames in a grid of at most 8 columns, each
/// labelled with its index in the clip. Returns (RGB, width, height).
pub fn contact_sheet(
    frames: &[Vec<u8>],
    tile: usize,
    cam: &GradCam,
    opts: &RenderOptions,
) -> Result<(Vec<u8>, usize, usize)> {
    const INK: [u8; 3] = [20, 20, 20];
    const GREY: [u8; 3] = [95, 95, 95];
    let n = frames.len();
    let cols = n.clamp(1, 8);
    let rows = n.div_ceil(cols).max(1);
    let (m, gap, label_h, line) = (14usize, 6usize, 18usize, 20usize);
    let header_h = m + 2 * line + 10 + 6 * line + 8;
    let width = (2 * m + cols * tile + (cols - 1) * gap).max(760);
    let grid_x0 = (width - (cols * tile + (cols - 1) * gap)) / 2;
    let height = header_h + rows * (tile + label_h) + (rows - 1) * gap + m / 2;
    let mut cv = Canvas::new(width, height, [255, 255, 255]);
    let tile_pos = |k: usize| {
        let (r, c) = (k / cols, k % cols);
        (
            grid_x0 + c * (tile + gap),
            header_h + r * (tile + label_h + gap),
        )
    };
    for (k, f) in frames.iter().enumerate() {
        let (x0, y0) = tile_pos(k);
        cv.blit(f, tile, tile, x0, y0);
        cv.text(
            &format!("t = {k}"),
            12.0,
            x0 as f32 + 2.0,
            (y0 + tile + 2) as f32,
            GREY,
            false,
        );
    }
    let p = cam.probabilities();
    let (mf, mut y) = (m as f32, m as f32);
    if !opts.title.is_empty() {
        cv.text(&opts.title, 18.0, mf, y, INK, true);
    }
    y += line as f32 + 4.0;
    let [c, tf, hf, wf] = cam.feature_shape;
    let x = mf + cv.text("Grad-CAM for ", 14.0, mf, y, INK, false);
    let x = x + cv.text(&class_name(opts, cam.class), 14.0, x, y, INK, true);
    cv.text(
        &format!(
            "  (p = {:.1}%)  ·  layer {}  [{c}×{tf}×{hf}×{wf}]",
            100.0 * p[cam.class],
            cam.layer
        ),
        14.0,
        x,
        y,
        INK,
        false,
    );
    y += line as f32 + 10.0;
    cv.text("top-5 predictions", 13.0, mf, y, GREY, false);
    y += line as f32;
    let name_w = (0..p.len())
        .map(|k| Canvas::text_width(&class_name(opts, k), 13.0, false))
        .fold(120.0f32, f32::max)
        .min(320.0);
    let pct_x = mf + 24.0 + name_w + 58.0; // right edge of the percentages
    let bar_x = pct_x + 10.0;
    for (i, k) in crate::train::metrics::top_k(&p, 5).into_iter().enumerate() {
        let bold = k == cam.class;
        cv.text(&format!("{}.", i + 1), 13.0, mf + 4.0, y, INK, false);
        cv.text(&class_name(opts, k), 13.0, mf + 24.0, y, INK, bold);
        let pct = format!("{:.1}%", 100.0 * p[k]);
        let pw = Canvas::text_width(&pct, 13.0, bold);
        cv.text(&pct, 13.0, pct_x - pw, y, INK, bold);
        let bw = (220.0 * p[k]).round().max(1.0) as usize;
        let color = if bold { [214, 39, 40] } else { [31, 119, 180] };
        cv.fill_rect(
            bar_x as usize,
            y as usize + 4,
            bar_x as usize + bw,
            y as usize + 15,
            color,
        );
        y += line as f32;
    }
    // Colour bar, top right.
    let (cb_w, cb_h) = (200usize, 12usize);
    let cb_x = width - m - cb_w;
    let cb_y = m + line + 6;
    for i in 0..cb_w {
        let c = jet(i as f32 / (cb_w - 1) as f32);
        let col = c.map(|v| (v * 255.0).round() as u8);
        cv.fill_rect(cb_x + i, cb_y, cb_x + i + 1, cb_y + cb_h, col);
    }
    let ly = (cb_y + cb_h + 3) as f32;
    cv.text("0", 12.0, cb_x as f32, ly, GREY, false);
    let w1 = Canvas::text_width("1", 12.0, false);
    cv.text("1", 12.0, (cb_x + cb_w) as f32 - w1, ly, GREY, false);
    let wl = Canvas::text_width("cam (min–max normalised)", 12.0, false);
    cv.text(
        "cam (min–max normalised)",
        12.0,
        cb_x as f32 + (cb_w as f32 - wl) / 2.0,
        ly,
        GREY,
        false,
    );
    Ok((cv.rgb, width, height))
}
