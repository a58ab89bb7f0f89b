//! Video files through the system ffmpeg: `ffprobe` for size and frame count when a dataset is opened,
//! `ffmpeg` to decode just the sampled frames, already scaled to the size the clip needs, as raw RGB.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

use super::transform::Frame;
use super::{data_err, FolderOptions};

/// File extensions taken as video files.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "avi", "webm", "mkv", "mov", "m4v", "mpg", "mpeg", "wmv", "flv", "ogv", "3gp",
];

pub(crate) fn is_video_ext(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The ffmpeg and ffprobe binaries.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) ffmpeg: PathBuf,
    pub(crate) ffprobe: PathBuf,
}

impl Tools {
    pub(crate) fn from_options(opts: &FolderOptions) -> Tools {
        let pick = |o: &Option<PathBuf>, var: &str, name: &str| {
            o.clone()
                .or_else(|| std::env::var_os(var).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Tools {
            ffmpeg: pick(&opts.ffmpeg, "VIDGRAD_FFMPEG", "ffmpeg"),
            ffprobe: pick(&opts.ffprobe, "VIDGRAD_FFPROBE", "ffprobe"),
        }
    }
}

/// What ffprobe says about a video's first video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VideoInfo {
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// Frame count: the container's `nb_frames`, else duration × frame rate, else counted packets.
    pub(crate) frames: usize,
}

/// Run `tool`; a missing binary is an error naming ffmpeg and how to get it.
fn run(tool: &Path, what: &str, args: &[&std::ffi::OsStr], file: &Path) -> Result<Output> {
    Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                data_err(
                    file,
                    format!(
                        "cannot decode video: {what} ('{}') was not found. Video files are decoded by \
                         the system ffmpeg: install ffmpeg (e.g. `apt-get install ffmpeg`) or set \
                         VIDGRAD_FFMPEG / VIDGRAD_FFPROBE (FolderOptions::ffmpeg / ffprobe)",
                        tool.display()
                    ),
                )
            } else {
                data_err(
                    file,
                    format!("cannot run {what} ('{}', part of ffmpeg): {e}", tool.display()),
                )
            }
        })
}

fn stderr_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr);
    let s = s.trim();
    let last = s.lines().last().unwrap_or("").trim();
    if last.is_empty() {
        format!("exit status {}", out.status)
    } else {
        last.to_string()
    }
}

fn parse_rate(s: &str) -> Option<f64> {
    let (a, b) = s.split_once('/').unwrap_or((s, "1"));
    let (a, b) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
    (b != 0.0 && a > 0.0).then(|| a / b)
}

/// Check that ffprobe runs (`-version`); a missing binary is an error naming ffmpeg. `file` is the
/// first video that needs it, for the message.
pub(crate) fn check_tools(tools: &Tools, file: &Path) -> Result<()> {
    run(&tools.ffprobe, "ffprobe", &["-version".as_ref()], file).map(|_| ())
}

/// Width, height and frame count of `path`'s first video stream. A file ffprobe cannot read, or one
/// without a video stream, is an error naming the file.
pub(crate) fn probe(tools: &Tools, path: &Path) -> Result<VideoInfo> {
    let out = run(
        &tools.ffprobe,
        "ffprobe",
        &[
            "-v".as_ref(),
            "error".as_ref(),
            "-select_streams".as_ref(),
            "v:0".as_ref(),
            "-show_entries".as_ref(),
            "stream=width,height,nb_frames,avg_frame_rate,r_frame_rate,duration:format=duration"
                .as_ref(),
            "-of".as_ref(),
            "default=nw=1".as_ref(),
            path.as_os_str(),
        ],
        path,
    )?;
    if !out.status.success() {
        return Err(data_err(
            path,
            format!("not a readable video (ffprobe: {})", stderr_line(&out)),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut width = None;
    let mut height = None;
    let mut nb_frames = None;
    let mut rate = None;
    let mut duration = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "width" => width = v.parse::<usize>().ok(),
            "height" => height = v.parse::<usize>().ok(),
            "nb_frames" => nb_frames = v.parse::<usize>().ok().filter(|&n| n > 0),
            "avg_frame_rate" => rate = parse_rate(v).or(rate),
            "r_frame_rate" => rate = rate.or_else(|| parse_rate(v)),
            "duration" => {
                duration = duration.or_else(|| v.parse::<f64>().ok().filter(|d| *d > 0.0))
            }
            _ => {}
        }
    }
    let (Some(width), Some(height)) = (width, height) else {
        return Err(data_err(path, "not a video: ffprobe found no video stream"));
    };
    if width == 0 || height == 0 {
        return Err(data_err(path, "not a video: video stream of size 0"));
    }
    let frames = match (nb_frames, duration, rate) {
        (Some(n), _, _) => n,
        (None, Some(d), Some(r)) if (d * r).round() >= 1.0 => (d * r).round() as usize,
        _ => count_packets(tools, path)?,
    };
    if frames == 0 {
        return Err(data_err(path, "video has no frames"));
    }
    Ok(VideoInfo {
        width,
        height,
        frames,
    })
}

/// Count the video packets (demuxing only; used when the container stores no frame count).
fn count_packets(tools: &Tools, path: &Path) -> Result<usize> {
    let out = run(
        &tools.ffprobe,
        "ffprobe",
        &[
            "-v".as_ref(),
            "error".as_ref(),
            "-select_streams".as_ref(),
            "v:0".as_ref(),
            "-count_packets".as_ref(),
            "-show_entries".as_ref(),
            "stream=nb_read_packets".as_ref(),
            "-of".as_ref(),
            "default=nw=1:nk=1".as_ref(),
            path.as_os_str(),
        ],
        path,
    )?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<usize>()
        .map_err(|_| {
            data_err(
                path,
                format!("ffprobe cannot count the frames ({})", stderr_line(&out)),
            )
        })
}

/// Decode frames `indices` (sorted, distinct) of `path`, scaled to `w`×`h`. Returns fewer frames than
/// asked when the video holds fewer than its reported count (the caller repeats the last one), and
/// ffmpeg's complaint when it failed after decoding some frames (a truncated or damaged file).
pub(crate) fn decode(
    tools: &Tools,
    path: &Path,
    indices: &[usize],
    w: usize,
    h: usize,
) -> Result<(Vec<Frame>, Option<String>)> {
    let select = indices
        .iter()
        .map(|i| format!("eq(n\\,{i})"))
        .collect::<Vec<_>>()
        .join("+");
    let vf = format!("select='{select}',scale={w}:{h}:flags=bilinear");
    let attempt = |sync: &[&str]| -> Result<Output> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-v".as_ref(),
            "error".as_ref(),
            "-nostdin".as_ref(),
            "-noautorotate".as_ref(),
            "-i".as_ref(),
            path.as_os_str(),
            "-map".as_ref(),
            "0:v:0".as_ref(),
            "-vf".as_ref(),
            vf.as_ref(),
        ];
        args.extend(sync.iter().map(|s| -> &std::ffi::OsStr { s.as_ref() }));
        args.extend(
            ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
                .iter()
                .map(|s| -> &std::ffi::OsStr { s.as_ref() }),
        );
        run(&tools.ffmpeg, "ffmpeg", &args, path)
    };
    // Without passthrough timing the rawvideo muxer duplicates frames to keep a constant rate.
    let mut out = attempt(&["-fps_mode", "passthrough"])?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fps_mode") {
        out = attempt(&["-vsync", "0"])?; // ffmpeg before 5.1
    }
    let fb = w * h * 3;
    let n = (out.stdout.len() / fb).min(indices.len());
    if !out.status.success() && n == 0 {
        return Err(data_err(
            path,
            format!(
                "ffmpeg cannot decode it scaled to {w}×{h} (the short side set by --resize-short, else --size): {}",
                stderr_line(&out)
            ),
        ));
    }
    if n == 0 {
        return Err(Error::Data {
            path: path.display().to_string(),
            msg: format!(
                "ffmpeg decoded no frames (asked for frames {indices:?}): {}",
                stderr_line(&out)
            ),
        });
    }
    // a truncated file: ffmpeg fails at the damage after writing the frames before it
    let complaint = (!out.status.success()).then(|| stderr_line(&out));
    let frames = out
        .stdout
        .chunks_exact(fb)
        .take(n)
        .map(|c| Frame::new(w, h, c.to_vec()))
        .collect();
    Ok((frames, complaint))
}
