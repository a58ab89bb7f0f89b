//! The data pipeline: datasets of labelled videos from any source, ECO/TSN segment sampling, frame
//! transforms with each model's normalisation and layout, and a seeded background loader.
//!
//! Sources ([`Dataset`]):
//! - the built-in synthetic action set ([`Dataset::synthetic`], [`SynthConfig`]): generated on the fly,
//!   deterministic, classes defined by motion only; [`write_synthetic`] writes it as frame folders;
//! - frame folders `ROOT/<class>/<video>/img_%05d.jpg` (also `image_%05d`, PNG) with classes from the
//!   folder names or a labels CSV and splits from mmaction2 list files ([`Dataset::frame_folders`]);
//! - video files decoded by the system ffmpeg ([`Dataset::video_files`]).
//!
//! Clips: [`ClipSpec`] says how a video becomes a model input (segments, resize, crop, flip,
//! normalisation, layout); [`load_clip`] makes one, [`Loader`] makes seeded batches in the background.
//! Bad input never panics and is never skipped silently: it is either an [`Error::Data`] naming the file
//! or a [`Warning`] with a count and examples (see [`Dataset::warnings`]). See docs/DATA.md.

mod folders;
mod loader;
pub mod sampling;
mod synth;
pub mod transform;
mod video;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

pub use folders::{match_class_names, read_labels_csv};
pub use loader::{load_clip, read_frame, Batch, EpochIter, Loader};
pub use sampling::{distributed_shard, segment_indices, Sampling};
pub use synth::{
    load_mask_clip, render_frame, render_mask, write_synthetic, SynthConfig, SYNTH_CLASSES,
};
pub use transform::{ClipSpec, CropMode, Frame, Layout, Normalization};

/// How to read a folder dataset. `Default` is: classes from the folder names (or `ROOT/labels.csv`
/// when it exists), every video, lenient (problems with single items are warnings).
#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// Class names and ids: one class per line, as `name`, `name,id` or `id,name` (a header line is
    /// skipped; ids are ranked, so 0- and 1-based files both work). Without it `ROOT/labels.csv` is used
    /// when present, else the sorted class folder names.
    pub labels_csv: Option<PathBuf>,
    /// An mmaction2 list file (`path num_frames label` for frame folders, `path label` for videos;
    /// paths relative to ROOT): the dataset holds exactly these videos with these labels (a split).
    pub list_file: Option<PathBuf>,
    /// Frame file prefix (`img_`, `image_`, ...). Default: `img_` when such files exist, else `image_`,
    /// else every image file of the folder.
    pub frame_prefix: Option<String>,
    /// Turn per-item problems (a video folder without frames, an unreadable video, a list entry that
    /// does not exist, ...) and every problem met while loading clips (an unreadable frame, a video
    /// shorter than the clip or than its reported length) into errors instead of warnings
    /// (`--strict-data`).
    pub strict: bool,
    /// The ffmpeg binary (default: `$VIDGRAD_FFMPEG`, else `ffmpeg` on the PATH).
    pub ffmpeg: Option<PathBuf>,
    /// The ffprobe binary (default: `$VIDGRAD_FFPROBE`, else `ffprobe` on the PATH).
    pub ffprobe: Option<PathBuf>,
}

/// One kind of problem met while opening or reading a dataset: how many times, and the first few
/// items it concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What happened and what was done about it, e.g. "unreadable frames (replaced by the nearest
    /// readable frame of the same video)".
    pub what: String,
    pub count: usize,
    /// Up to [`Warning::MAX_EXAMPLES`] of the items concerned, with the reason.
    pub examples: Vec<String>,
}

impl Warning {
    pub const MAX_EXAMPLES: usize = 5;
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.count, self.what)?;
        if !self.examples.is_empty() {
            write!(f, ": {}", self.examples.join("; "))?;
            if self.count > self.examples.len() {
                write!(f, "; ...")?;
            }
        }
        Ok(())
    }
}

/// Collected warnings, by kind, in first-seen order.
#[derive(Debug, Default, Clone)]
pub(crate) struct WarningLog {
    order: Vec<String>,
    map: BTreeMap<String, (usize, Vec<String>)>,
    /// Per kind: the count and the number of examples [`WarningLog::take_new`] already handed out.
    reported: BTreeMap<String, (usize, usize)>,
    /// Every problem counted so far, all kinds together.
    total: usize,
}

impl WarningLog {
    pub(crate) fn add(&mut self, what: &str, example: impl Into<String>) {
        self.add_n(what, 1, example);
    }

    pub(crate) fn add_n(&mut self, what: &str, n: usize, example: impl Into<String>) {
        if n == 0 {
            return;
        }
        let e = self.map.entry(what.to_string()).or_insert_with(|| {
            self.order.push(what.to_string());
            (0, Vec::new())
        });
        e.0 += n;
        self.total += n;
        // decoder messages may end in a newline; a warning is one line
        let example = example.into().trim().replace('\n', " ");
        if e.1.len() < Warning::MAX_EXAMPLES && !e.1.contains(&example) {
            e.1.push(example);
        }
    }

    /// What was recorded since the last call: per kind, the new count and the examples not handed
    /// out before (none when every new case repeats an earlier example), so that each problem is
    /// printed once.
    fn take_new(&mut self) -> Vec<Warning> {
        let mut out = vec![];
        for w in &self.order {
            let (count, examples) = &self.map[w];
            let seen = self.reported.entry(w.clone()).or_insert((0, 0));
            if *count > seen.0 {
                out.push(Warning {
                    what: w.clone(),
                    count: count - seen.0,
                    examples: examples[seen.1..].to_vec(),
                });
                *seen = (*count, examples.len());
            }
        }
        out
    }

    fn list(&self) -> Vec<Warning> {
        self.order
            .iter()
            .map(|w| {
                let (count, examples) = &self.map[w];
                Warning {
                    what: w.clone(),
                    count: *count,
                    examples: examples.clone(),
                }
            })
            .collect()
    }
}

/// Where the frames of one video come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Video `video` of class `class` of the synthetic set.
    Synthetic { class: usize, video: usize },
    /// A folder of frame images.
    Frames { dir: PathBuf, names: FrameNames },
    /// A video file, decoded by ffmpeg.
    Video {
        path: PathBuf,
        info: video::VideoInfo,
    },
}

/// The frame files of a frame folder, in temporal order, stored compactly.
#[derive(Debug, Clone)]
pub(crate) enum FrameNames {
    /// `{prefix}{start + i:0digits$}.{ext}` for i in 0..count.
    Pattern {
        prefix: String,
        digits: usize,
        ext: String,
        start: u64,
        count: usize,
    },
    /// Explicit file names.
    List(Vec<String>),
}

impl FrameNames {
    pub(crate) fn len(&self) -> usize {
        match self {
            FrameNames::Pattern { count, .. } => *count,
            FrameNames::List(v) => v.len(),
        }
    }

    pub(crate) fn name(&self, i: usize) -> String {
        match self {
            FrameNames::Pattern {
                prefix,
                digits,
                ext,
                start,
                ..
            } => format!("{prefix}{:0digits$}.{ext}", start + i as u64),
            FrameNames::List(v) => v[i].clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) name: String,
    pub(crate) label: usize,
    pub(crate) source: Source,
}

/// What a dataset was made from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetKind {
    Synthetic(SynthConfig),
    FrameFolders,
    VideoFiles,
}

/// A list of videos with labels and class names, from any source. Cheap to share (`Arc<Dataset>`);
/// warnings are shared between a dataset and the parts [`Dataset::split`] makes of it.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub(crate) items: Vec<Item>,
    classes: Vec<String>,
    kind: DatasetKind,
    pub(crate) tools: video::Tools,
    pub(crate) root: PathBuf,
    log: Arc<Mutex<WarningLog>>,
    /// Problems met while loading clips are errors ([`FolderOptions::strict`]).
    strict: bool,
}

impl Dataset {
    fn new(
        items: Vec<Item>,
        classes: Vec<String>,
        kind: DatasetKind,
        tools: video::Tools,
        root: PathBuf,
        log: WarningLog,
    ) -> Dataset {
        Dataset {
            items,
            classes,
            kind,
            tools,
            root,
            log: Arc::new(Mutex::new(log)),
            strict: false,
        }
    }

    /// With `strict`, a problem met while loading a clip (an unreadable frame, a video shorter than
    /// the clip or with fewer decodable frames than reported) is an error instead of a counted
    /// warning (`--strict-data`). Set from [`FolderOptions::strict`] by the constructors.
    pub fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// The built-in synthetic action set, generated on the fly (frames are rendered when a clip is
    /// loaded) and deterministic in `cfg.seed`. Videos are ordered class by class.
    pub fn synthetic(cfg: &SynthConfig) -> Dataset {
        let mut log = WarningLog::default();
        let cfg = synth::checked_config(cfg, &mut log);
        let mut items = Vec::with_capacity(cfg.classes * cfg.videos_per_class);
        for class in 0..cfg.classes {
            for video in 0..cfg.videos_per_class {
                items.push(Item {
                    name: synth::video_name(class, video),
                    label: class,
                    source: Source::Synthetic { class, video },
                });
            }
        }
        let classes = SYNTH_CLASSES[..cfg.classes]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Dataset::new(
            items,
            classes,
            DatasetKind::Synthetic(cfg),
            video::Tools::from_options(&FolderOptions::default()),
            PathBuf::from("<synthetic>"),
            log,
        )
    }

    /// Frame folders `ROOT/<class>/<video>/img_%05d.jpg` (or as listed by `opts.list_file`). Videos
    /// are ordered class by class (label order), then by name; a list file keeps its own order.
    pub fn frame_folders(root: &Path, opts: &FolderOptions) -> Result<Dataset> {
        let mut log = WarningLog::default();
        let (items, classes) = folders::scan(root, opts, folders::Want::Frames, &mut log)?;
        let mut ds = Dataset::new(
            items,
            classes,
            DatasetKind::FrameFolders,
            video::Tools::from_options(opts),
            root.to_path_buf(),
            log,
        );
        ds.set_strict(opts.strict);
        Ok(ds)
    }

    /// Video files `ROOT/<class>/<video>.mp4` (avi, webm, mkv, mov, ...; or as listed by
    /// `opts.list_file`), probed with ffprobe when opened and decoded with ffmpeg when loaded.
    pub fn video_files(root: &Path, opts: &FolderOptions) -> Result<Dataset> {
        let mut log = WarningLog::default();
        let (items, classes) = folders::scan(root, opts, folders::Want::Videos, &mut log)?;
        let mut ds = Dataset::new(
            items,
            classes,
            DatasetKind::VideoFiles,
            video::Tools::from_options(opts),
            root.to_path_buf(),
            log,
        );
        ds.set_strict(opts.strict);
        Ok(ds)
    }

    /// Open `path`, detecting what it holds: a folder of class folders of frame folders or of video
    /// files, a single frame folder, or a single video file (the last two give one unlabelled video,
    /// class "unlabelled", for prediction).
    pub fn open(path: &Path, opts: &FolderOptions) -> Result<Dataset> {
        let mut ds = Dataset::open_as_detected(path, opts)?;
        ds.set_strict(opts.strict);
        Ok(ds)
    }

    fn open_as_detected(path: &Path, opts: &FolderOptions) -> Result<Dataset> {
        match folders::detect(path, opts)? {
            folders::Detected::FrameFolders => Dataset::frame_folders(path, opts),
            folders::Detected::VideoFiles => Dataset::video_files(path, opts),
            folders::Detected::SingleFrameFolder => {
                let mut log = WarningLog::default();
                let item = folders::single_frame_folder(path, opts, &mut log)?;
                Ok(Dataset::new(
                    vec![item],
                    vec!["unlabelled".into()],
                    DatasetKind::FrameFolders,
                    video::Tools::from_options(opts),
                    path.to_path_buf(),
                    log,
                ))
            }
            folders::Detected::SingleVideo => {
                let tools = video::Tools::from_options(opts);
                let info = video::probe(&tools, path)?;
                let item = Item {
                    name: path
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    label: 0,
                    source: Source::Video {
                        path: path.to_path_buf(),
                        info,
                    },
                };
                Ok(Dataset::new(
                    vec![item],
                    vec!["unlabelled".into()],
                    DatasetKind::VideoFiles,
                    tools,
                    path.to_path_buf(),
                    WarningLog::default(),
                ))
            }
        }
    }

    /// Split into (train, val), stratified by class: in every class, `round(n · val_ratio)` videos
    /// chosen by `seed` go to val (at least one when the class has two or more videos and the ratio
    /// is positive). Deterministic; both parts keep the dataset's order.
    pub fn split(&self, val_ratio: f32, seed: u64) -> (Dataset, Dataset) {
        let ratio = val_ratio.clamp(0.0, 1.0) as f64;
        let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, it) in self.items.iter().enumerate() {
            by_class.entry(it.label).or_default().push(i);
        }
        let mut is_val = vec![false; self.items.len()];
        for (class, mut idx) in by_class {
            let n = idx.len();
            let mut k = (n as f64 * ratio).round() as usize;
            if k == 0 && ratio > 0.0 && n >= 2 {
                k = 1;
            }
            let k = k.min(n);
            sampling::shuffle(&mut idx, crate::rng::mix(seed, class as u64));
            for &i in &idx[..k] {
                is_val[i] = true;
            }
        }
        let part = |val: bool| {
            let items = self
                .items
                .iter()
                .zip(&is_val)
                .filter(|(_, &v)| v == val)
                .map(|(it, _)| it.clone())
                .collect();
            Dataset {
                items,
                ..self.clone()
            }
        };
        (part(false), part(true))
    }

    /// The videos `indices` (in that order), sharing classes and warnings.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            items: indices.iter().map(|&i| self.items[i].clone()).collect(),
            ..self.clone()
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The class index of video `i`.
    pub fn label(&self, i: usize) -> usize {
        self.items[i].label
    }

    /// The video's name: `class/video` for folder datasets (its path relative to the root).
    pub fn name(&self, i: usize) -> &str {
        &self.items[i].name
    }

    /// Number of frames of video `i` (for video files, as ffprobe reported it).
    pub fn num_frames(&self, i: usize) -> usize {
        match &self.items[i].source {
            Source::Synthetic { .. } => match &self.kind {
                DatasetKind::Synthetic(c) => c.frames,
                _ => 0,
            },
            Source::Frames { names, .. } => names.len(),
            Source::Video { info, .. } => info.frames,
        }
    }

    /// Width and height of video `i`'s frames as stored (synthetic: the render size; video files: as
    /// ffprobe reported; frame folders: the first frame's, which is read).
    pub fn frame_size(&self, i: usize) -> Result<(usize, usize)> {
        match &self.items[i].source {
            Source::Synthetic { .. } => {
                let s = self.synth_config().map_or(0, |c| c.size);
                Ok((s, s))
            }
            Source::Frames { dir, names } => {
                let f = read_frame(&dir.join(names.name(0)))?;
                Ok((f.width, f.height))
            }
            Source::Video { info, .. } => Ok((info.width, info.height)),
        }
    }

    /// The file or folder of video `i` (None for synthetic videos).
    pub fn path(&self, i: usize) -> Option<&Path> {
        match &self.items[i].source {
            Source::Synthetic { .. } => None,
            Source::Frames { dir, .. } => Some(dir),
            Source::Video { path, .. } => Some(path),
        }
    }

    pub fn kind(&self) -> &DatasetKind {
        &self.kind
    }

    /// The folder (or file) the dataset was opened from; `<synthetic>` for the synthetic set.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Everything that went wrong so far, with counts: while opening (skipped folders, files that are
    /// not videos, ...) and while loading (unreadable frames that were replaced, short videos, ...).
    pub fn warnings(&self) -> Vec<Warning> {
        self.log.lock().map(|l| l.list()).unwrap_or_default()
    }

    /// The warnings recorded since the last call (on this dataset or any that shares its warnings:
    /// the parts of a split), each kind with its new count and the examples not returned before. A
    /// command prints these at its natural points (after opening, after each epoch or video), so
    /// every problem is printed once.
    pub fn take_new_warnings(&self) -> Vec<Warning> {
        self.log
            .lock()
            .map(|mut l| l.take_new())
            .unwrap_or_default()
    }

    /// How many problems were counted so far, all kinds together (the difference over an epoch is
    /// that epoch's count).
    pub fn warning_count(&self) -> usize {
        self.log.lock().map(|l| l.total).unwrap_or(0)
    }

    /// Whether `self` and `other` record their warnings in the same log (parts of one split).
    pub fn shares_warnings_with(&self, other: &Dataset) -> bool {
        Arc::ptr_eq(&self.log, &other.log)
    }

    /// Record a problem met while loading video `index` (shared with the datasets split from this
    /// one); under [`Dataset::set_strict`] it is an error naming the video instead.
    pub(crate) fn warn(&self, index: usize, what: &str, example: impl Into<String>) -> Result<()> {
        let example = example.into();
        if self.strict {
            let path = self
                .path(index)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| self.name(index).to_string());
            return Err(Error::Data {
                path,
                msg: format!(
                    "{}: {} (an error under --strict-data)",
                    // what the lenient mode would have done does not apply
                    what.split(" (").next().unwrap_or(what),
                    example.trim().replace('\n', " ")
                ),
            });
        }
        if let Ok(mut l) = self.log.lock() {
            l.add(what, example);
        }
        Ok(())
    }

    pub(crate) fn synth_config(&self) -> Option<&SynthConfig> {
        match &self.kind {
            DatasetKind::Synthetic(c) => Some(c),
            _ => None,
        }
    }
}

/// Print to stderr, one line each, the warnings `ds` (and every dataset sharing its warnings)
/// recorded since the last call; `context` (e.g. `"epoch 3: "`) starts each line. Each problem is
/// printed once: a kind seen again shows its new count and only examples not printed before.
pub fn print_new_warnings(ds: &Dataset, context: &str) {
    for w in ds.take_new_warnings() {
        if w.examples.is_empty() {
            eprintln!(
                "warning: {context}{} {} (the same items as reported above)",
                w.count, w.what
            );
        } else {
            eprintln!("warning: {context}{w}");
        }
    }
}

/// An [`Error::Data`] for `path`.
pub(crate) fn data_err(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.as_ref().display().to_string(),
        msg: msg.into(),
    }
}

/// An [`Error::Io`] for `path`.
pub(crate) fn io_err(path: impl AsRef<Path>, source: std::io::Error) -> Error {
    Error::Io {
        path: path.as_ref().display().to_string(),
        source,
    }
}
