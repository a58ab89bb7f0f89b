//! Folder datasets: `ROOT/<class>/<video>/img_%05d.jpg` frame folders and `ROOT/<class>/<video>.mp4`
//! video files; classes from folder names or a labels CSV; splits from mmaction2 list files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;

use super::video::{self, is_video_ext, Tools, VideoInfo};
use super::{data_err, io_err, FolderOptions, FrameNames, Item, Source, WarningLog};

/// Frame image extensions.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// The labels file looked for in ROOT when `FolderOptions::labels_csv` is not given.
pub const DEFAULT_LABELS_CSV: &str = "labels.csv";

pub(crate) fn is_image_ext(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Frames,
    Videos,
}

pub(crate) enum Detected {
    FrameFolders,
    VideoFiles,
    SingleFrameFolder,
    SingleVideo,
}

struct Entry {
    name: String,
    path: PathBuf,
    is_dir: bool,
}

/// The entries of `dir` sorted by name, hidden ones (starting with '.') left out.
fn list_dir(dir: &Path) -> Result<Vec<Entry>> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_err(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        // Follow symlinks (datasets are often linked in).
        let is_dir = path.is_dir();
        v.push(Entry { name, path, is_dir });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn has_images(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| is_image_ext(&e.path()) && e.path().is_file())
        })
        .unwrap_or(false)
}

/// What `path` holds (see [`super::Dataset::open`]).
pub(crate) fn detect(path: &Path, opts: &FolderOptions) -> Result<Detected> {
    if !path.exists() {
        return Err(data_err(path, "does not exist"));
    }
    if path.is_file() {
        if is_video_ext(path) {
            return Ok(Detected::SingleVideo);
        }
        return Err(data_err(
            path,
            format!(
                "not a video file (extensions taken as video: {}); give a video file, a frame folder \
                 or a dataset folder ROOT/<class>/<video>",
                video::VIDEO_EXTENSIONS.join(", ")
            ),
        ));
    }
    if let Some(list) = &opts.list_file {
        let entries = parse_list(list)?;
        if let Some(e) = entries.first() {
            let p = path.join(&e.path);
            return Ok(if p.is_dir() {
                Detected::FrameFolders
            } else {
                Detected::VideoFiles
            });
        }
    }
    if has_images(path) {
        return Ok(Detected::SingleFrameFolder);
    }
    let (mut videos, mut folders) = (0usize, 0usize);
    for class in list_dir(path)?.into_iter().filter(|e| e.is_dir) {
        for e in list_dir(&class.path)? {
            if e.is_dir {
                if has_images(&e.path) {
                    folders += 1;
                }
            } else if is_video_ext(&e.path) {
                videos += 1;
            }
        }
    }
    match (folders, videos) {
        (0, 0) => Err(data_err(
            path,
            "no videos found: expected ROOT/<class>/<video>/img_00001.jpg (frame folders) or \
             ROOT/<class>/<video>.mp4 (video files)",
        )),
        (f, v) if v > f => Ok(Detected::VideoFiles),
        _ => Ok(Detected::FrameFolders),
    }
}

// --- labels CSV and list files -------------------------------------------------------------------------

/// Split a CSV line on commas, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Class names from a labels file, ordered by id: lines `name`, `name,id` or `id,name` (a header
/// line without an integer id is skipped; ids are ranked, so 0-based and 1-based files both work).
pub fn read_labels_csv(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let text = text.trim_start_matches('\u{feff}');
    let mut rows: Vec<(i64, String)> = Vec::new();
    let mut first = true;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        let row = if f.len() == 1 {
            Some((rows.len() as i64, f[0].clone()))
        } else if let Ok(id) = f[1].parse::<i64>() {
            Some((id, f[0].clone()))
        } else if let Ok(id) = f[0].parse::<i64>() {
            Some((id, f[1].clone()))
        } else {
            None
        };
        match row {
            Some(r) if !r.1.is_empty() => rows.push(r),
            None if first => {} // header
            _ => {
                return Err(data_err(
                    path,
                    format!(
                        "line {}: expected `name`, `name,id` or `id,name`, got {line:?}",
                        lineno + 1
                    ),
                ))
            }
        }
        first = false;
    }
    if rows.is_empty() {
        return Err(data_err(path, "labels file lists no classes"));
    }
    rows.sort_by_key(|r| r.0);
    for w in rows.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(data_err(
                path,
                format!(
                    "id {} is given to both {:?} and {:?}",
                    w[0].0, w[0].1, w[1].1
                ),
            ));
        }
    }
    let mut seen = HashMap::new();
    for (id, name) in &rows {
        if let Some(other) = seen.insert(name.clone(), *id) {
            return Err(data_err(
                path,
                format!("class {name:?} is listed twice (ids {other} and {id})"),
            ));
        }
    }
    Ok(rows.into_iter().map(|r| r.1).collect())
}

/// One line of an mmaction2 list file.
pub(crate) struct ListEntry {
    line: usize,
    pub(crate) path: String,
    frames: Option<usize>,
    label: usize,
}

/// The most classes a list file's labels may reach (Kinetics has 700, ImageNet-21k 21 841).
pub(crate) const MAX_LIST_CLASSES: usize = 100_000;

/// mmaction2 list file: `path num_frames label` (rawframes) or `path label` (videos).
pub(crate) fn parse_list(path: &Path) -> Result<Vec<ListEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tok: Vec<&str> = line.split_whitespace().collect();
        let bad = || {
            data_err(
                path,
                format!(
                    "line {}: expected `path num_frames label` or `path label` (one integer label), \
                     got {line:?}",
                    i + 1
                ),
            )
        };
        if tok.len() < 2 {
            return Err(bad());
        }
        let label = tok[tok.len() - 1].parse::<usize>().map_err(|_| bad())?;
        // without a labels file the class list is 0..=max label: bound it (found by tests/fuzz.rs,
        // a label of 10^14 tried to allocate the names of that many classes)
        if label >= MAX_LIST_CLASSES {
            return Err(data_err(
                path,
                format!(
                    "line {}: label {label} is not below {MAX_LIST_CLASSES}, the most classes a list file may use",
                    i + 1
                ),
            ));
        }
        let (p, frames) = if tok.len() >= 3 {
            match tok[tok.len() - 2].parse::<usize>() {
                Ok(n) => (tok[..tok.len() - 2].join(" "), Some(n)),
                Err(_) => (tok[..tok.len() - 1].join(" "), None),
            }
        } else {
            (tok[0].to_string(), None)
        };
        v.push(ListEntry {
            line: i + 1,
            path: p,
            frames,
            label,
        });
    }
    if v.is_empty() {
        return Err(data_err(path, "list file has no entries"));
    }
    Ok(v)
}

/// Folder-name matching against the labels file: exact, else case-insensitive with ' ', '-' and '_'
/// treated alike (Kinetics names have spaces, their folders often underscores).
fn normalise_class(s: &str) -> String {
    s.trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .filter(|&c| c != '"' && c != '\'')
        .collect()
}

struct ClassMap {
    exact: HashMap<String, usize>,
    loose: HashMap<String, usize>,
}

impl ClassMap {
    fn new(classes: &[String]) -> ClassMap {
        ClassMap {
            exact: classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect(),
            loose: classes
                .iter()
                .enumerate()
                .map(|(i, c)| (normalise_class(c), i))
                .collect(),
        }
    }
    fn get(&self, name: &str) -> Option<usize> {
        self.exact
            .get(name)
            .or_else(|| self.loose.get(&normalise_class(name)))
            .copied()
    }
}

/// For each of `data`'s class names, the index of the same class in `model`'s, matched as class folders
/// are matched to a labels file (exact, else case-insensitively with ' ', '-', '_' alike). `Err` says
/// which names of either side have no counterpart.
pub fn match_class_names(
    model: &[String],
    data: &[String],
) -> std::result::Result<Vec<usize>, String> {
    let map = ClassMap::new(model);
    let found: Vec<Option<usize>> = data.iter().map(|c| map.get(c)).collect();
    let unknown: Vec<&str> = data
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(c, _)| c.as_str())
        .collect();
    let absent: Vec<&str> = model
        .iter()
        .enumerate()
        .filter(|(i, _)| !found.contains(&Some(*i)))
        .map(|(_, c)| c.as_str())
        .collect();
    if unknown.is_empty() && absent.is_empty() {
        return Ok(found.into_iter().flatten().collect());
    }
    let mut why = vec![format!(
        "{} classes in the data, {} in the model",
        data.len(),
        model.len()
    )];
    if !unknown.is_empty() {
        why.push(format!("not among the model's classes: {unknown:?}"));
    }
    if !absent.is_empty() {
        why.push(format!(
            "the model's classes missing from the data: {absent:?}"
        ));
    }
    Err(why.join("; "))
}

// --- frame folders -------------------------------------------------------------------------------------

/// Trailing number of a file stem (`img_00012` → 12).
fn trailing_number(stem: &str) -> Option<(u64, usize)> {
    let digits = stem
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    stem[stem.len() - digits..]
        .parse::<u64>()
        .ok()
        .map(|n| (n, digits))
}

/// The frame files of `dir`, in temporal order.
pub(crate) fn scan_frames(
    dir: &Path,
    prefix: Option<&str>,
    log: &mut WarningLog,
) -> Result<FrameNames> {
    let mut images = Vec::new();
    let mut other = 0usize;
    let mut other_example = String::new();
    for e in list_dir(dir)? {
        if !e.is_dir && is_image_ext(&e.path) {
            images.push(e.name);
        } else {
            if other == 0 {
                other_example = e.path.display().to_string();
            }
            other += 1;
        }
    }
    log.add_n(
        "entries in frame folders that are not frame images (ignored)",
        other,
        other_example,
    );
    let chosen: String = match prefix {
        Some(p) => p.to_string(),
        None if images.iter().any(|n| n.starts_with("img_")) => "img_".into(),
        None if images.iter().any(|n| n.starts_with("image_")) => "image_".into(),
        None => String::new(),
    };
    let (mut keep, dropped): (Vec<String>, Vec<String>) =
        images.into_iter().partition(|n| n.starts_with(&chosen));
    if let Some(d) = dropped.first() {
        log.add_n(
            &format!("images in frame folders without the frame prefix '{chosen}' (ignored)"),
            dropped.len(),
            dir.join(d).display().to_string(),
        );
    }
    let key = |n: &String| {
        let stem = Path::new(n)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            trailing_number(&stem).map(|t| t.0).unwrap_or(u64::MAX),
            n.clone(),
        )
    };
    keep.sort_by_key(key);
    Ok(compress_names(keep))
}

/// `prefix + zero-padded consecutive numbers + .ext` → a pattern, else the list.
fn compress_names(names: Vec<String>) -> FrameNames {
    let parse = |n: &str| -> Option<(String, u64, usize, String)> {
        let (stem, ext) = n.rsplit_once('.')?;
        let (num, digits) = trailing_number(stem)?;
        Some((
            stem[..stem.len() - digits].to_string(),
            num,
            digits,
            ext.to_string(),
        ))
    };
    if let Some((prefix, start, digits, ext)) = names.first().and_then(|n| parse(n)) {
        let ok = names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == format!("{prefix}{:0digits$}.{ext}", start + i as u64));
        if ok {
            return FrameNames::Pattern {
                prefix,
                digits,
                ext,
                start,
                count: names.len(),
            };
        }
    }
    FrameNames::List(names)
}

/// A warning, or with `strict` an error naming `path`.
fn problem(
    opts: &FolderOptions,
    log: &mut WarningLog,
    what: &str,
    path: &Path,
    detail: &str,
) -> Result<()> {
    if opts.strict {
        return Err(data_err(
            path,
            format!("{detail} (strict mode; problem: {what})"),
        ));
    }
    let ex = if detail.is_empty() {
        path.display().to_string()
    } else {
        format!("{}: {detail}", path.display())
    };
    log.add(what, ex);
    Ok(())
}

pub(crate) fn single_frame_folder(
    dir: &Path,
    opts: &FolderOptions,
    log: &mut WarningLog,
) -> Result<Item> {
    let names = scan_frames(dir, opts.frame_prefix.as_deref(), log)?;
    if names.len() == 0 {
        return Err(data_err(dir, "frame folder holds no frames"));
    }
    Ok(Item {
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        label: 0,
        source: Source::Frames {
            dir: dir.to_path_buf(),
            names,
        },
    })
}

// --- scanning a dataset ----------------------------------------------------------------------------------

/// A video found while scanning, before probing (videos) or with its frames (folders).
struct Found {
    name: String,
    label: usize,
    path: PathBuf,
    frames: Option<FrameNames>,
}

/// Items and class names of a folder dataset.
pub(crate) fn scan(
    root: &Path,
    opts: &FolderOptions,
    want: Want,
    log: &mut WarningLog,
) -> Result<(Vec<Item>, Vec<String>)> {
    if !root.is_dir() {
        return Err(data_err(
            root,
            if root.exists() {
                "not a folder"
            } else {
                "does not exist"
            },
        ));
    }
    let csv = match &opts.labels_csv {
        Some(p) => Some(read_labels_csv(p)?),
        None => {
            let p = root.join(DEFAULT_LABELS_CSV);
            if p.is_file() {
                Some(read_labels_csv(&p)?)
            } else {
                None
            }
        }
    };
    let (found, classes) = match &opts.list_file {
        Some(list) => scan_list(root, list, csv, opts, want, log)?,
        None => scan_classes(root, csv, opts, want, log)?,
    };
    let items = match want {
        Want::Frames => found
            .into_iter()
            .map(|f| Item {
                name: f.name,
                label: f.label,
                source: Source::Frames {
                    dir: f.path,
                    names: f.frames.expect("frames scanned"),
                },
            })
            .collect::<Vec<_>>(),
        Want::Videos => probe_all(found, opts, log)?,
    };
    if items.is_empty() {
        return Err(data_err(
            root,
            match want {
                Want::Frames => {
                    "no usable videos: expected frame folders ROOT/<class>/<video>/img_00001.jpg"
                }
                Want::Videos => "no usable videos: expected video files ROOT/<class>/<video>.mp4",
            }
            .to_string()
                + &warnings_hint(log),
        ));
    }
    Ok((items, classes))
}

fn warnings_hint(log: &WarningLog) -> String {
    let w = log.list();
    if w.is_empty() {
        String::new()
    } else {
        format!(
            " (problems: {})",
            w.iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        )
    }
}

fn rel_name(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

fn scan_classes(
    root: &Path,
    csv: Option<Vec<String>>,
    opts: &FolderOptions,
    want: Want,
    log: &mut WarningLog,
) -> Result<(Vec<Found>, Vec<String>)> {
    let entries = list_dir(root)?;
    let class_dirs: Vec<&Entry> = entries.iter().filter(|e| e.is_dir).collect();
    for e in entries.iter().filter(|e| !e.is_dir) {
        if is_video_ext(&e.path) || is_image_ext(&e.path) {
            log.add(
                "files directly in ROOT (ignored: videos belong in ROOT/<class>/)",
                e.path.display().to_string(),
            );
        }
    }
    let classes: Vec<String> = match &csv {
        Some(c) => c.clone(),
        None => class_dirs.iter().map(|e| e.name.clone()).collect(),
    };
    let map = ClassMap::new(&classes);
    let mut found = Vec::new();
    let mut count_per_class = vec![0usize; classes.len()];
    for cd in &class_dirs {
        let Some(label) = map.get(&cd.name) else {
            problem(
                opts,
                log,
                "class folders not in the labels file (skipped)",
                &cd.path,
                "folder name is not a class of the labels file",
            )?;
            continue;
        };
        for e in list_dir(&cd.path)? {
            match (want, e.is_dir) {
                (Want::Frames, true) => {
                    let names = scan_frames(&e.path, opts.frame_prefix.as_deref(), log)?;
                    if names.len() == 0 {
                        problem(
                            opts,
                            log,
                            "video folders without frames (skipped)",
                            &e.path,
                            "no frame images",
                        )?;
                        continue;
                    }
                    found.push(Found {
                        name: rel_name(root, &e.path),
                        label,
                        path: e.path.clone(),
                        frames: Some(names),
                    });
                }
                (Want::Frames, false) => log.add(
                    "files in class folders that are not frame folders (ignored)",
                    e.path.display().to_string(),
                ),
                (Want::Videos, false) if is_video_ext(&e.path) => found.push(Found {
                    name: rel_name(root, &e.path),
                    label,
                    path: e.path.clone(),
                    frames: None,
                }),
                (Want::Videos, false) => log.add(
                    "files that are not videos (ignored; by extension)",
                    e.path.display().to_string(),
                ),
                (Want::Videos, true) => log.add(
                    "folders inside class folders (ignored: a video-file dataset)",
                    e.path.display().to_string(),
                ),
            }
        }
    }
    // Class by class (label order), then by name: the order does not depend on how the folder
    // names sort.
    found.sort_by(|a, b| (a.label, &a.name).cmp(&(b.label, &b.name)));
    for f in &found {
        count_per_class[f.label] += 1;
    }
    for (c, &n) in count_per_class.iter().enumerate() {
        if n == 0 {
            let dir = root.join(&classes[c]);
            let what = if dir.is_dir() {
                "empty class folders (class kept, no videos)"
            } else {
                "classes of the labels file without a folder (class kept, no videos)"
            };
            log.add(what, dir.display().to_string());
        }
    }
    Ok((found, classes))
}

fn scan_list(
    root: &Path,
    list: &Path,
    csv: Option<Vec<String>>,
    opts: &FolderOptions,
    want: Want,
    log: &mut WarningLog,
) -> Result<(Vec<Found>, Vec<String>)> {
    let entries = parse_list(list)?;
    if let Some(c) = &csv {
        if let Some(e) = entries.iter().find(|e| e.label >= c.len()) {
            return Err(data_err(
                list,
                format!(
                    "line {}: label {} but the labels file has {} classes",
                    e.line,
                    e.label,
                    c.len()
                ),
            ));
        }
    }
    let classes = match csv {
        Some(c) => c,
        None => infer_classes(root, &entries),
    };
    let mut found = Vec::new();
    for e in &entries {
        let path = root.join(&e.path);
        let exists = match want {
            Want::Frames => path.is_dir(),
            Want::Videos => path.is_file(),
        };
        if !exists {
            problem(
                opts,
                log,
                "list entries that do not exist (skipped)",
                &path,
                &format!(
                    "{} line {}: no such {}",
                    list.display(),
                    e.line,
                    if want == Want::Frames {
                        "frame folder"
                    } else {
                        "video file"
                    }
                ),
            )?;
            continue;
        }
        let frames = if want == Want::Frames {
            let names = scan_frames(&path, opts.frame_prefix.as_deref(), log)?;
            if names.len() == 0 {
                problem(
                    opts,
                    log,
                    "video folders without frames (skipped)",
                    &path,
                    "no frame images",
                )?;
                continue;
            }
            if let Some(n) = e.frames {
                if n != names.len() {
                    log.add(
                        "list entries whose frame count differs from the folder (the folder's frames are used)",
                        format!("{}: list says {n}, folder has {}", path.display(), names.len()),
                    );
                }
            }
            Some(names)
        } else {
            None
        };
        found.push(Found {
            name: e.path.clone(),
            label: e.label,
            path,
            frames,
        });
    }
    Ok((found, classes))
}

/// Class names for a list file without a labels file: ROOT's sorted sub-folders when every entry
/// `class/video` with label k lies in the k-th of them (mmaction2's usual layout), else "0", "1", ….
fn infer_classes(root: &Path, entries: &[ListEntry]) -> Vec<String> {
    let n = entries.iter().map(|e| e.label + 1).max().unwrap_or(0);
    let dirs: Vec<String> = list_dir(root)
        .map(|v| v.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect())
        .unwrap_or_default();
    let consistent = dirs.len() >= n
        && entries.iter().all(|e| {
            let first = e.path.split(['/', '\\']).next().unwrap_or("");
            e.path.contains(['/', '\\']) && dirs.get(e.label).is_some_and(|d| d == first)
        });
    if consistent {
        dirs
    } else {
        (0..n).map(|k| k.to_string()).collect()
    }
}

/// Probe every video (in parallel, ffprobe is a process each); unreadable ones are warnings (errors
/// with `strict`); a missing ffprobe is an error.
fn probe_all(found: Vec<Found>, opts: &FolderOptions, log: &mut WarningLog) -> Result<Vec<Item>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let tools = Tools::from_options(opts);
    video::check_tools(&tools, &found[0].path)?;
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
        .clamp(1, 16)
        .min(found.len());
    let mut results: BTreeMap<usize, Result<VideoInfo>> = BTreeMap::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= found.len() {
                            break;
                        }
                        mine.push((i, video::probe(&tools, &found[i].path)));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                results.extend(v);
            }
        }
    });
    let mut items = Vec::new();
    for (i, f) in found.into_iter().enumerate() {
        match results.remove(&i) {
            Some(Ok(info)) => items.push(Item {
                name: f.name,
                label: f.label,
                source: Source::Video { path: f.path, info },
            }),
            Some(Err(e)) => {
                if opts.strict {
                    return Err(e);
                }
                log.add("unreadable video files (skipped)", e.to_string());
            }
            None => {
                problem(
                    opts,
                    log,
                    "unreadable video files (skipped)",
                    &f.path,
                    "probe did not finish",
                )?;
            }
        }
    }
    Ok(items)
}
