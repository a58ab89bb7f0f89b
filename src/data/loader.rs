//! Clips and batches: [`load_clip`] turns one video into model input; [`Loader`] builds batches in
//! background threads with a bounded prefetch, seeded per (epoch, video) so that the batches do not
//! depend on thread timing or the number of workers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::rng;

use super::sampling::{distributed_shard, segment_indices, shuffle, Sampling, Stream};
use super::transform::{self, center_crop, random_crop, three_crop, ClipSpec, CropMode, Frame};
use super::{data_err, synth, video, Dataset, Source};

/// Decode one frame image (JPEG or PNG; grey or RGBA are converted) as RGB; an unreadable file is an
/// error naming it.
pub fn read_frame(path: &Path) -> Result<Frame> {
    let img = image::ImageReader::open(path)
        .map_err(|e| data_err(path, format!("cannot open frame: {e}")))?
        .with_guessed_format()
        .map_err(|e| data_err(path, format!("cannot read frame: {e}")))?
        .decode()
        .map_err(|e| data_err(path, format!("unreadable or corrupt frame: {e}")))?
        .into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(data_err(path, "frame of size 0"));
    }
    Ok(Frame::new(w, h, img.into_raw()))
}

/// The frames `indices` (sorted, distinct) of video `index`. Video files come already resized to
/// the clip's short side by ffmpeg; other sources at their own size.
fn load_frames(
    ds: &Dataset,
    index: usize,
    indices: &[usize],
    spec: &ClipSpec,
) -> Result<Vec<Frame>> {
    let item = &ds.items[index];
    match &item.source {
        Source::Synthetic { class, video } => {
            let cfg = ds.synth_config().ok_or_else(|| {
                data_err(&item.name, "synthetic item outside a synthetic dataset")
            })?;
            Ok(synth::render_frames(cfg, *class, *video, indices))
        }
        Source::Frames { dir, names } => {
            let n = names.len();
            let mut cache: BTreeMap<usize, Result<Frame>> = BTreeMap::new();
            let get = |i: usize, cache: &mut BTreeMap<usize, Result<Frame>>| -> bool {
                cache
                    .entry(i)
                    .or_insert_with(|| read_frame(&dir.join(names.name(i))))
                    .is_ok()
            };
            let mut out = Vec::with_capacity(indices.len());
            for &i in indices {
                if get(i, &mut cache) {
                    out.push(cache[&i].as_ref().expect("checked").clone());
                    continue;
                }
                // Unreadable: the nearest readable frame of the same video, with a warning.
                let reason = cache[&i]
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                let mut replacement = None;
                for dist in 1..n {
                    for j in [i.checked_sub(dist), Some(i + dist)].into_iter().flatten() {
                        if j < n && replacement.is_none() && get(j, &mut cache) {
                            replacement = Some(j);
                        }
                    }
                    if replacement.is_some() {
                        break;
                    }
                }
                match replacement {
                    Some(j) => {
                        ds.warn(
                            index,
                            "unreadable frames (replaced by the nearest readable frame of the same video)",
                            reason,
                        )?;
                        out.push(cache[&j].as_ref().expect("checked").clone());
                    }
                    None => {
                        return Err(data_err(
                            dir,
                            format!(
                            "no readable frame in this video ({n} files); first problem: {reason}"
                        ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Source::Video { path, info } => {
            let (w, h) = transform::resized_size(info.width, info.height, spec.resize_short);
            let (mut frames, complaint) = video::decode(&ds.tools, path, indices, w, h)?;
            let complaint = complaint
                .map(|c| format!(" (ffmpeg: {c})"))
                .unwrap_or_default();
            if frames.len() < indices.len() {
                ds.warn(
                    index,
                    "videos with fewer decodable frames than ffprobe reported (last frame repeated)",
                    format!(
                        "{}: {} frames reported, frame {} missing{complaint}",
                        path.display(),
                        info.frames,
                        indices[frames.len()]
                    ),
                )?;
                let last = frames
                    .last()
                    .expect("decode returns at least one frame")
                    .clone();
                frames.resize(indices.len(), last);
            } else if !complaint.is_empty() {
                ds.warn(
                    index,
                    "damaged videos (ffmpeg reported an error after decoding every sampled frame)",
                    format!("{}{complaint}", path.display()),
                )?;
            }
            Ok(frames)
        }
    }
}

/// All views of video `index` as `spec` says (one clip when training; `clips_per_video` × crops when
/// testing), each in `spec.layout` without the batch dimension, concatenated: `spec.views()` ×
/// `spec.clip_len()` floats. Training randomness (frame in segment, crop offsets, flip) comes from
/// `rng_seed` only.
pub fn load_clip(
    dataset: &Dataset,
    index: usize,
    spec: &ClipSpec,
    rng_seed: u64,
) -> Result<Vec<f32>> {
    spec.validate()?;
    if index >= dataset.len() {
        return Err(Error::arg(
            "load_clip",
            format!("video {index} of a dataset of {}", dataset.len()),
        ));
    }
    if spec.train && spec.flip && dataset.synth_config().is_some() {
        return Err(data_err(
            dataset.root(),
            "horizontal flip is not allowed on the synthetic action set: a mirrored video of \
             move_left shows move_right (and rotate_cw shows rotate_ccw), so the labels would be \
             wrong; set ClipSpec::flip to false",
        ));
    }
    let n = dataset.num_frames(index);
    if n == 0 {
        return Err(data_err(dataset.name(index), "video has no frames"));
    }
    if n < spec.segments {
        dataset.warn(
            index,
            "clips from videos shorter than the number of segments (last frame repeated)",
            format!(
                "{}: {n} frames < {} segments",
                dataset.name(index),
                spec.segments
            ),
        )?;
    }
    let mut rng = Stream::new(rng::mix(rng_seed, 0x005A_3D1E));
    let clips = if spec.train {
        1
    } else {
        spec.clips_per_video.max(1)
    };
    let index_sets: Vec<Vec<usize>> = (0..clips)
        .map(|c| {
            let mode = if spec.train {
                Sampling::Train {
                    seed: rng.next_u64(),
                }
            } else {
                Sampling::Test { clip: c, clips }
            };
            segment_indices(n, spec.segments, mode)
        })
        .collect();
    let mut distinct: Vec<usize> = index_sets.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let frames = load_frames(dataset, index, &distinct, spec)?;
    let (w, h) = (frames[0].width, frames[0].height);
    if let Some(f) = frames.iter().find(|f| (f.width, f.height) != (w, h)) {
        return Err(data_err(
            dataset
                .path(index)
                .unwrap_or(Path::new(dataset.name(index))),
            format!(
                "frames of different sizes in one video ({w}x{h} and {}x{})",
                f.width, f.height
            ),
        ));
    }
    let (rw, rh) = transform::resized_size(w, h, spec.resize_short);
    if rw < spec.size || rh < spec.size {
        return Err(data_err(
            dataset.path(index).unwrap_or(Path::new(dataset.name(index))),
            format!(
                "crop {0}x{0} does not fit in the frame: {w}x{h}, resized to {rw}x{rh} (resize_short {1})",
                spec.size, spec.resize_short
            ),
        ));
    }
    let rects: Vec<transform::Rect> = match spec.crop {
        CropMode::Random if spec.train => vec![random_crop(rw, rh, spec.size, spec.size, &mut rng)],
        CropMode::Random | CropMode::Center => vec![center_crop(rw, rh, spec.size, spec.size)],
        CropMode::ThreeCrop => three_crop(rw, rh, spec.size, spec.size).to_vec(),
    };
    let flip = spec.train && spec.flip && rng.uniform() < 0.5;
    let by_index = |i: usize| &frames[distinct.binary_search(&i).expect("frame loaded")];
    let mut out = Vec::new();
    // an allocation failure is an error naming the clip, not an abort of the process
    let len = clips * rects.len() * spec.clip_len();
    out.try_reserve_exact(len).map_err(|e| {
        data_err(
            dataset.path(index).unwrap_or(Path::new(dataset.name(index))),
            format!(
                "cannot allocate the clip ({} MiB for {len} values: {} frames of {}×{}, {} views): {e}",
                (len * 4) >> 20,
                spec.segments,
                spec.size,
                spec.size,
                clips * rects.len()
            ),
        )
    })?;
    for set in &index_sets {
        let clip_frames: Vec<&Frame> = set.iter().map(|&i| by_index(i)).collect();
        for &r in &rects {
            out.extend(transform::clip_from_frames(
                &clip_frames,
                Some((rw, rh)),
                r,
                flip,
                spec.norm,
                spec.layout,
            ));
        }
    }
    Ok(out)
}

/// One batch: `shape[0]` = videos × `spec.views()` clips; `labels` and `indices` (the video of each
/// clip, an index into the dataset) have one entry per clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

/// The seed of video `index`'s clip in `epoch`.
fn clip_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    rng::mix(rng::mix(seed, epoch as u64), index as u64)
}

fn build_batch(
    ds: &Dataset,
    spec: &ClipSpec,
    seed: u64,
    epoch: usize,
    videos: &[usize],
) -> Result<Batch> {
    let views = spec.views();
    let mut data = Vec::with_capacity(videos.len() * views * spec.clip_len());
    let mut labels = Vec::with_capacity(videos.len() * views);
    let mut indices = Vec::with_capacity(videos.len() * views);
    for &v in videos {
        data.extend(load_clip(ds, v, spec, clip_seed(seed, epoch, v))?);
        labels.extend(std::iter::repeat_n(ds.label(v), views));
        indices.extend(std::iter::repeat_n(v, views));
    }
    let mut shape = vec![labels.len()];
    shape.extend(spec.clip_shape());
    Ok(Batch {
        data,
        shape,
        labels,
        indices,
    })
}

/// Counters shared by a loader and its epochs.
#[derive(Debug, Default)]
struct Stats {
    wait_ns: AtomicU64,
    /// Most batches ever finished but not yet taken by the consumer.
    max_ready: AtomicUsize,
}

/// A seeded batch loader with background decode workers and bounded prefetch.
///
/// Videos are ordered per epoch (a seeded shuffle of (seed, epoch) when `shuffle`), cut into batches
/// of `batch_size` (the last one smaller, or left out after [`Loader::drop_last`]). Each clip's randomness comes from
/// (seed, epoch, video), so the batches are identical whatever the number of workers and the thread
/// timing, and arrive in order. `workers` threads build whole batches; at most `prefetch` batches are
/// built ahead of the consumer. `workers == 0` builds each batch in the consumer's thread.
pub struct Loader {
    dataset: Arc<Dataset>,
    spec: ClipSpec,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    workers: usize,
    prefetch: usize,
    drop_last: bool,
    /// (rank, world size, pad): this rank's part of every epoch's order (see [`Loader::shard`]).
    shard: Option<(usize, usize, bool)>,
    stats: Arc<Stats>,
}

impl Loader {
    pub fn new(
        dataset: Arc<Dataset>,
        spec: ClipSpec,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        workers: usize,
        prefetch: usize,
    ) -> Loader {
        Loader {
            dataset,
            spec,
            batch_size: batch_size.max(1),
            shuffle,
            seed,
            workers,
            prefetch: prefetch.max(1),
            drop_last: false,
            shard: None,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Leave out the last batch of an epoch when it is incomplete (PyTorch's `drop_last`).
    pub fn drop_last(mut self, drop: bool) -> Loader {
        self.drop_last = drop;
        self
    }

    /// Data parallelism: each epoch, rank `rank` of `world` takes its part of the (shuffled) order,
    /// as PyTorch's `DistributedSampler` (`sampling::distributed_shard`): the same shuffle of
    /// (seed, epoch) on every rank, then every `world`-th video from `rank`; with `pad` the order is
    /// padded by repeating its beginning so that every rank has as many videos (training: the ranks
    /// must run the same number of steps). A world of one is the whole order.
    pub fn shard(mut self, rank: usize, world: usize, pad: bool) -> Loader {
        self.shard = (world > 1).then_some((rank, world, pad));
        self
    }

    /// Videos per epoch on this rank.
    pub fn videos_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        match self.shard {
            None => n,
            Some((_, world, true)) => n.div_ceil(world),
            Some((rank, world, false)) => (rank..n).step_by(world).len(),
        }
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.videos_per_epoch() / self.batch_size
        } else {
            self.videos_per_epoch().div_ceil(self.batch_size)
        }
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    pub fn spec(&self) -> &ClipSpec {
        &self.spec
    }

    /// The video order of `epoch` (this rank's part of it after [`Loader::shard`]).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            shuffle(
                &mut order,
                rng::mix(self.seed ^ 0x5348_5546_4C45, epoch as u64),
            );
        }
        match self.shard {
            None => order,
            Some((rank, world, pad)) => distributed_shard(&order, rank, world, pad),
        }
    }

    /// Total time the consumer has waited for batches (over all epochs so far).
    pub fn wait_time(&self) -> Duration {
        Duration::from_nanos(self.stats.wait_ns.load(Ordering::Relaxed))
    }

    pub fn reset_wait_time(&self) {
        self.stats.wait_ns.store(0, Ordering::Relaxed);
    }

    /// The most batches that were ever ready ahead of the consumer (≤ `prefetch`).
    pub fn max_prefetched(&self) -> usize {
        self.stats.max_ready.load(Ordering::Relaxed)
    }

    /// The batches of `epoch`, in order. Dropping the iterator stops its workers.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .take(self.batches_per_epoch())
            .map(|c| c.to_vec())
            .collect();
        let job = Arc::new(Job {
            dataset: self.dataset.clone(),
            spec: self.spec.clone(),
            seed: self.seed,
            epoch,
            batches,
            next: AtomicUsize::new(0),
            delivered: Mutex::new(0),
            cond: Condvar::new(),
            cancel: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            prefetch: self.prefetch,
            stats: self.stats.clone(),
        });
        let (tx, rx) = sync_channel(self.prefetch);
        // A worker that cannot be started is left out; with none, batches are built in the
        // consumer's thread.
        let workers: Vec<JoinHandle<()>> = (0..self.workers.min(job.batches.len()))
            .filter_map(|w| {
                let job = job.clone();
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(format!("vidgrad-loader-{w}"))
                    .spawn(move || job.work(tx))
                    .ok()
            })
            .collect();
        drop(tx);
        EpochIter {
            job,
            rx: (!workers.is_empty()).then_some(rx),
            pending: BTreeMap::new(),
            position: 0,
            workers,
        }
    }
}

/// One epoch's shared state.
struct Job {
    dataset: Arc<Dataset>,
    spec: ClipSpec,
    seed: u64,
    epoch: usize,
    batches: Vec<Vec<usize>>,
    /// Next batch a worker takes.
    next: AtomicUsize,
    /// Batches handed to the consumer.
    delivered: Mutex<usize>,
    cond: Condvar,
    cancel: AtomicBool,
    /// Batches finished and not yet handed over.
    ready: AtomicUsize,
    prefetch: usize,
    stats: Arc<Stats>,
}

impl Job {
    fn build(&self, b: usize) -> Result<Batch> {
        let run = || {
            build_batch(
                &self.dataset,
                &self.spec,
                self.seed,
                self.epoch,
                &self.batches[b],
            )
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(data_err(
                "<loader>",
                format!(
                    "panic while loading batch {b} of epoch {}: {msg}",
                    self.epoch
                ),
            ))
        })
    }

    fn finished(&self) {
        let r = self.ready.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.max_ready.fetch_max(r, Ordering::Relaxed);
    }

    fn work(&self, tx: std::sync::mpsc::SyncSender<(usize, Result<Batch>)>) {
        loop {
            let b = self.next.fetch_add(1, Ordering::SeqCst);
            if b >= self.batches.len() {
                return;
            }
            // Bounded prefetch: start batch b only when it is within `prefetch` of the consumer.
            {
                let mut d = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
                while b >= *d + self.prefetch && !self.cancel.load(Ordering::SeqCst) {
                    d = self.cond.wait(d).unwrap_or_else(|e| e.into_inner());
                }
            }
            if self.cancel.load(Ordering::SeqCst) {
                return;
            }
            let r = self.build(b);
            self.finished();
            if tx.send((b, r)).is_err() {
                return;
            }
        }
    }
}

/// The batches of one epoch, in order (see [`Loader::epoch`]).
pub struct EpochIter {
    job: Arc<Job>,
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    pending: BTreeMap<usize, Result<Batch>>,
    position: usize,
    workers: Vec<JoinHandle<()>>,
}

impl EpochIter {
    fn hand_over(&mut self, r: Result<Batch>) -> Option<Result<Batch>> {
        self.job.ready.fetch_sub(1, Ordering::SeqCst);
        self.position += 1;
        let mut d = self.job.delivered.lock().unwrap_or_else(|e| e.into_inner());
        *d = self.position;
        self.job.cond.notify_all();
        Some(r)
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let b = self.position;
        if b >= self.job.batches.len() {
            return None;
        }
        let start = Instant::now();
        let r = match &self.rx {
            None => {
                let r = self.job.build(b);
                self.job.finished();
                Some(r)
            }
            Some(rx) => loop {
                if let Some(r) = self.pending.remove(&b) {
                    break Some(r);
                }
                match rx.recv() {
                    Ok((i, r)) => {
                        self.pending.insert(i, r);
                    }
                    Err(_) => break None,
                }
            },
        };
        self.job
            .stats
            .wait_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match r {
            Some(r) => self.hand_over(r),
            None => {
                // Every worker is gone without sending this batch: report once, then stop.
                self.position = self.job.batches.len();
                Some(Err(data_err(
                    "<loader>",
                    format!("loader workers stopped before batch {b}"),
                )))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.job.batches.len() - self.position;
        (n, Some(n))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.job.cancel.store(true, Ordering::SeqCst);
        {
            let _d = self.job.delivered.lock().unwrap_or_else(|e| e.into_inner());
            self.job.cond.notify_all();
        }
        self.rx = None; // unblocks a worker waiting in send
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
