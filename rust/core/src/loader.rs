//! A batched image loader (CIFAR or any square images): a seeded shuffle per epoch, augmentation in worker threads, and a bounded
//! prefetch queue per worker.
//!
//! Batch `b` of an epoch is always made by worker `b % workers` and handed out in order, so the batches
//! are the same for any number of workers (each image's randomness is keyed by (seed, epoch, batch,
//! position), see [`crate::augment`]). Each worker runs at most `prefetch_per_worker` batches ahead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::augment::{augment_batch, Augment, Layout, Norm};
use crate::cifar::{check_image_count, Images};
use crate::error::DataError;
use crate::rng::{mix, Rng};

/// Largest batch size. DARTS searches with 64 images per batch and evaluates with 96; large-batch
/// training uses a few thousand. A batch never holds more images than the loader serves, so the limit
/// only catches nonsense (a batch of 65,536 float32 images is already 805 MB).
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Most worker threads of one loader: each is an OS thread, and far more than the machine's cores only
/// costs memory.
pub const MAX_WORKERS: usize = 256;
/// Most batches one worker may run ahead. The queue of each worker is allocated with this capacity up
/// front, so a huge value would allocate before any batch is made.
pub const MAX_PREFETCH: usize = 64;

/// The pixel type of the batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Normalised float32.
    F32,
    /// Raw bytes, to be normalised on the GPU.
    U8,
}

/// Loader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the indices each epoch.
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Augmentation.
    pub augment: Augment,
    /// Memory layout of the batches.
    pub layout: Layout,
    /// Pixel type of the batches.
    pub output: Output,
    /// Seed of the shuffle and the augmentation.
    pub seed: u64,
    /// Worker threads; 0 makes batches on the calling thread.
    pub workers: usize,
    /// Batches each worker may run ahead.
    pub prefetch_per_worker: usize,
}

impl LoaderConfig {
    /// Check every size against its limit ([`MAX_BATCH_SIZE`], [`MAX_WORKERS`], [`MAX_PREFETCH`], and
    /// [`Augment::check_for`] images of `side` pixels), naming the offending setting as the Python API
    /// spells it.
    pub fn check(&self, side: usize) -> Result<(), DataError> {
        let arg = |m: String| Err(DataError::Argument(m));
        if self.batch_size == 0 {
            return arg("batch_size must be positive".into());
        }
        if self.batch_size > MAX_BATCH_SIZE {
            return arg(format!(
                "batch_size = {} is above the limit of {MAX_BATCH_SIZE} images (MAX_BATCH_SIZE)",
                self.batch_size
            ));
        }
        if self.workers > MAX_WORKERS {
            return arg(format!(
                "workers = {} is above the limit of {MAX_WORKERS} threads (MAX_WORKERS)",
                self.workers
            ));
        }
        if self.prefetch_per_worker == 0 && self.workers > 0 {
            return arg("prefetch must be positive when workers are used".into());
        }
        if self.prefetch_per_worker > MAX_PREFETCH {
            return arg(format!(
                "prefetch = {} is above the limit of {MAX_PREFETCH} batches per worker (MAX_PREFETCH)",
                self.prefetch_per_worker
            ));
        }
        self.augment.check_for(side)
    }
}

/// The pixels of a batch.
#[derive(Debug, PartialEq)]
pub enum Pixels {
    /// Normalised floats.
    F32(Vec<f32>),
    /// Raw bytes.
    U8(Vec<u8>),
}

/// One batch: `len` images in the loader's layout and their labels.
#[derive(Debug, PartialEq)]
pub struct Batch {
    /// `len · C · side²` values.
    pub pixels: Pixels,
    /// `len` labels.
    pub labels: Vec<i64>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A loader over a subset of a dataset.
#[derive(Debug)]
pub struct Loader {
    data: Arc<Images>,
    indices: Arc<Vec<usize>>,
    cfg: LoaderConfig,
    norm: Norm,
}

impl Loader {
    /// A loader over `indices` of 3-channel `data`, normalised with CIFAR-10's statistics.
    pub fn new(data: Arc<Images>, indices: Vec<usize>, cfg: LoaderConfig) -> Result<Self, DataError> {
        Self::with_norm(data, indices, cfg, Norm::cifar10())
    }

    /// A loader over `indices` of `data` normalised with `norm` (one entry per channel): at most
    /// [`crate::cifar::MAX_IMAGES`] indices, settings that pass [`LoaderConfig::check`].
    pub fn with_norm(data: Arc<Images>, indices: Vec<usize>, cfg: LoaderConfig, norm: Norm) -> Result<Self, DataError> {
        cfg.check(data.shape.side)?;
        if norm.channels() != data.shape.channels {
            return Err(DataError::Argument(format!(
                "mean and std have {} channels, the images {}",
                norm.channels(),
                data.shape.channels
            )));
        }
        check_image_count("len(indices)", indices.len())?;
        if let Some((k, &i)) = indices.iter().enumerate().find(|(_, &i)| i >= data.len()) {
            return Err(DataError::Argument(format!("indices[{k}] = {i} is out of range for {} images", data.len())));
        }
        Ok(Self { data, indices: Arc::new(indices), cfg, norm })
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.indices.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The shape of the images served.
    pub fn shape(&self) -> crate::cifar::ImageShape {
        self.data.shape
    }

    /// The order of the dataset indices in `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = (*self.indices).clone();
        if self.cfg.shuffle {
            Rng::new(mix(&[self.cfg.seed, epoch, 0x5A0FF1E])).shuffle(&mut order);
        }
        order
    }

    /// Make batch `b` of an epoch whose order is `order`; a `b` past the end gives an empty batch.
    pub fn make_batch(&self, order: &[usize], epoch: u64, b: usize) -> Batch {
        let bs = self.cfg.batch_size;
        // Saturating: `b` is public input here, and `b * bs` past the end must clamp, not wrap.
        let first = b.saturating_mul(bs).min(order.len());
        let idx = &order[first..first.saturating_add(bs).min(order.len())];
        let labels = idx.iter().map(|&i| i64::from(self.data.labels[i])).collect();
        let shape = self.data.shape;
        let n = idx.len() * shape.bytes();
        let (c, norm, px) = (&self.cfg, &self.norm, &self.data.pixels);
        let pixels = match c.output {
            Output::F32 => {
                let mut out = vec![0f32; n];
                augment_batch(px, shape, idx, &c.augment, c.layout, norm, c.seed, epoch, b as u64, &mut out);
                Pixels::F32(out)
            }
            Output::U8 => {
                let mut out = vec![0u8; n];
                augment_batch(px, shape, idx, &c.augment, c.layout, norm, c.seed, epoch, b as u64, &mut out);
                Pixels::U8(out)
            }
        };
        Batch { pixels, labels }
    }

    /// Iterate over the batches of `epoch` from batch `start` on (to resume inside an epoch), made by the
    /// worker threads.
    pub fn epoch(self: &Arc<Self>, epoch: u64, start: usize) -> EpochIter {
        let order = Arc::new(self.epoch_order(epoch));
        let total = self.len();
        let start = start.min(total);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        let workers = self.cfg.workers.min(total - start);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.cfg.prefetch_per_worker);
            let (me, order, stop) = (Arc::clone(self), Arc::clone(&order), Arc::clone(&stop));
            handles.push(std::thread::spawn(move || {
                for b in (start + w..total).step_by(workers) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if tx.send(me.make_batch(&order, epoch, b)).is_err() {
                        break;
                    }
                }
            }));
            receivers.push(rx);
        }
        EpochIter { loader: Arc::clone(self), order, epoch, start, next: start, total, receivers, handles, stop }
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    loader: Arc<Loader>,
    order: Arc<Vec<usize>>,
    epoch: u64,
    start: usize,
    next: usize,
    total: usize,
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl EpochIter {
    /// Batches not yet handed out.
    pub fn remaining(&self) -> usize {
        self.total - self.next
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let b = self.next;
        self.next += 1;
        if self.receivers.is_empty() {
            return Some(Ok(self.loader.make_batch(&self.order, self.epoch, b)));
        }
        let rx = &self.receivers[(b - self.start) % self.receivers.len()];
        Some(rx.recv().map_err(|_| DataError::Argument(format!("loader worker for batch {b} stopped unexpectedly"))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes any blocked send fail, so every worker ends.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar::{ImageShape, IMAGE_BYTES, MAX_IMAGES};

    fn dataset(n: usize) -> Arc<Images> {
        let pixels = (0..n * IMAGE_BYTES).map(|i| (i * 7 % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u32).collect();
        Arc::new(Images::cifar(pixels, labels))
    }

    #[test]
    fn other_shapes_are_served_with_their_own_normalisation() {
        let shape = ImageShape { channels: 2, side: 8 };
        let data = Arc::new(Images { pixels: vec![255; 5 * 128], labels: vec![0, 1, 2, 300, 4], shape });
        let mut c = cfg(2);
        c.augment = Augment { crop_padding: 0, flip: true, cutout: 0 };
        let norm = Norm::new(&[0.0, 0.5], &[1.0, 0.5]).unwrap();
        let l = Arc::new(Loader::with_norm(Arc::clone(&data), (0..5).collect(), c.clone(), norm.clone()).unwrap());
        c.batch_size = 5;
        let l5 = Arc::new(Loader::with_norm(Arc::clone(&data), (0..5).collect(), c.clone(), norm).unwrap());
        assert_eq!(l.len(), 0);
        let b = l5.epoch(0, 0).next().unwrap().unwrap();
        let Pixels::F32(v) = b.pixels else { panic!("float batch") };
        assert_eq!(v.len(), 5 * 128);
        assert!(v[..64].iter().all(|&x| x == 1.0) && v[64..128].iter().all(|&x| x == 1.0));
        assert!(b.labels.contains(&300));
        let e = Loader::with_norm(data.clone(), vec![0], c.clone(), Norm::cifar10()).unwrap_err().to_string();
        assert_eq!(e, "mean and std have 3 channels, the images 2");
        c.augment.cutout = 9;
        let e = Loader::new(data, vec![0], c).unwrap_err().to_string();
        assert_eq!(e, "cutout = 9 is above the limit of 8 pixels (the image side)");
    }

    fn cfg(workers: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: 8,
            shuffle: true,
            drop_last: true,
            augment: Augment { crop_padding: 4, flip: true, cutout: 16 },
            layout: Layout::Nchw,
            output: Output::F32,
            seed: 11,
            workers,
            prefetch_per_worker: 2,
        }
    }

    #[test]
    fn batches_do_not_depend_on_worker_count() {
        let data = dataset(70);
        let collect = |w| {
            let l = Arc::new(Loader::new(Arc::clone(&data), (0..70).collect(), cfg(w)).unwrap());
            l.epoch(3, 0).map(|b| b.unwrap()).collect::<Vec<_>>()
        };
        let a = collect(0);
        assert_eq!(a.len(), 8);
        assert_eq!(a, collect(1));
        assert_eq!(a, collect(3));
    }

    #[test]
    fn an_epoch_can_start_at_any_batch() {
        let data = dataset(70);
        let l = Arc::new(Loader::new(data, (0..70).collect(), cfg(3)).unwrap());
        let all: Vec<Batch> = l.epoch(5, 0).map(|b| b.unwrap()).collect();
        for start in 0..=all.len() {
            let tail: Vec<Batch> = l.epoch(5, start).map(|b| b.unwrap()).collect();
            assert_eq!(tail, all[start..]);
        }
    }

    #[test]
    fn epochs_differ_and_cover_each_index_once() {
        let data = dataset(64);
        let l = Arc::new(Loader::new(data, (0..64).collect(), cfg(2)).unwrap());
        let (a, b) = (l.epoch_order(0), l.epoch_order(1));
        assert_ne!(a, b);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn early_drop_stops_workers() {
        let l = Arc::new(Loader::new(dataset(200), (0..200).collect(), cfg(2)).unwrap());
        let mut it = l.epoch(0, 0);
        assert!(it.next().is_some());
        drop(it); // must not hang
    }

    #[test]
    fn last_batch_is_kept_without_drop_last() {
        let mut c = cfg(2);
        c.drop_last = false;
        let l = Arc::new(Loader::new(dataset(20), (0..20).collect(), c).unwrap());
        assert_eq!(l.len(), 3);
        let sizes: Vec<usize> = l.epoch(0, 0).map(|b| b.unwrap().len()).collect();
        assert_eq!(sizes, vec![8, 8, 4]);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut c = cfg(1);
        c.batch_size = 0;
        assert!(Loader::new(dataset(4), vec![0], c).is_err());
        assert!(Loader::new(dataset(4), vec![4], cfg(1)).unwrap_err().to_string().contains("indices[0] = 4"));
    }

    #[test]
    fn sizes_above_the_limits_are_refused_by_name() {
        let refused = |edit: &dyn Fn(&mut LoaderConfig)| {
            let mut c = cfg(1);
            edit(&mut c);
            Loader::new(dataset(2), vec![0, 1], c).unwrap_err().to_string()
        };
        for huge in [MAX_BATCH_SIZE + 1, 1 << 31, 1 << 32, usize::MAX] {
            assert_eq!(
                refused(&|c| c.batch_size = huge),
                format!("batch_size = {huge} is above the limit of 65536 images (MAX_BATCH_SIZE)")
            );
        }
        assert_eq!(
            refused(&|c| c.workers = usize::MAX),
            format!("workers = {} is above the limit of 256 threads (MAX_WORKERS)", usize::MAX)
        );
        assert_eq!(
            refused(&|c| c.prefetch_per_worker = 65),
            "prefetch = 65 is above the limit of 64 batches per worker (MAX_PREFETCH)"
        );
        assert!(refused(&|c| c.augment.cutout = 1 << 40).starts_with("cutout = 1099511627776 is above the limit of 32"));
        let mut ok = cfg(MAX_WORKERS);
        (ok.batch_size, ok.prefetch_per_worker) = (MAX_BATCH_SIZE, MAX_PREFETCH);
        assert!(Loader::new(dataset(2), vec![0, 1], ok).is_ok());
        let e = Loader::new(dataset(1), vec![0; MAX_IMAGES + 1], cfg(1)).unwrap_err().to_string();
        assert_eq!(e, "len(indices) = 1000001 is above the limit of 1000000 images (MAX_IMAGES)");
    }

    proptest::proptest! {
        #[test]
        fn any_sizes_are_accepted_exactly_within_the_limits(
            batch_size in proptest::sample::select(vec![0, 1, 64, MAX_BATCH_SIZE, MAX_BATCH_SIZE + 1, 1 << 32, usize::MAX]),
            workers in proptest::sample::select(vec![0, 1, MAX_WORKERS, MAX_WORKERS + 1, 1 << 63, usize::MAX]),
            prefetch in proptest::sample::select(vec![0, 1, MAX_PREFETCH, MAX_PREFETCH + 1, usize::MAX]),
            crop_padding in proptest::sample::select(vec![0, 4, 32, 33, usize::MAX]),
            cutout in proptest::sample::select(vec![0, 16, 32, 33, usize::MAX]),
        ) {
            let mut c = cfg(workers);
            (c.batch_size, c.prefetch_per_worker) = (batch_size, prefetch);
            c.augment = Augment { crop_padding, flip: true, cutout };
            let within = (1..=MAX_BATCH_SIZE).contains(&batch_size)
                && workers <= MAX_WORKERS
                && prefetch <= MAX_PREFETCH
                && (prefetch > 0 || workers == 0)
                && crop_padding <= 32
                && cutout <= 32;
            let made = Loader::new(dataset(3), vec![0, 1, 2], c);
            proptest::prop_assert_eq!(made.is_ok(), within);
            if let Ok(l) = made {
                // Every batch of the first epoch comes out, whatever the sizes.
                let l = Arc::new(l);
                proptest::prop_assert_eq!(l.epoch(0, 0).filter(|b| b.is_ok()).count(), l.len());
            }
        }
    }

    #[test]
    fn batches_past_the_end_are_empty() {
        let mut c = cfg(0);
        c.batch_size = MAX_BATCH_SIZE;
        let l = Loader::new(dataset(3), vec![0, 1, 2], c).unwrap();
        let order = l.epoch_order(0);
        assert_eq!(l.make_batch(&order, 0, 0).len(), 3);
        assert!(l.make_batch(&order, 0, usize::MAX).is_empty());
    }
}
