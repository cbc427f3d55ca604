//! Readers of the official CIFAR-10 and CIFAR-100 binary versions, the in-memory image set every dataset
//! becomes, and the seeded train/validation split of the search.
//!
//! A CIFAR-10 `.bin` file holds records of 3,073 bytes: a label byte (0-9), then 1,024 red, 1,024 green and
//! 1,024 blue bytes, each plane 32×32 row-major. The training set is `data_batch_1.bin` … `data_batch_5.bin`
//! (10,000 records each), the test set `test_batch.bin`. A CIFAR-100 record has 3,074 bytes: the coarse label
//! (0-19), the fine label (0-99), then the same 3,072 pixels; `train.bin` holds 50,000 records, `test.bin`
//! 10,000.

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::rng::{mix, Rng};

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Bytes of one image.
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
/// Bytes of one record: label + image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in one official batch file.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Number of classes.
pub const NUM_CLASSES: u8 = 10;
/// Training batch files, in order.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// Test batch file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Most images one call may split, augment or load into a batch loader.
///
/// CIFAR-10 has 60,000 images; 1,000,000 leaves room for larger 32×32 datasets (CINIC-10 has 270,000)
/// while capping what one call can allocate from a count: 3 GB of pixels, 12 GB as float32, 8 MB of
/// indices. A larger count is refused before anything is allocated.
pub const MAX_IMAGES: usize = 1_000_000;

/// `Ok(n)` when `n` images are at most [`MAX_IMAGES`]; `what` names the count in the error (`n`,
/// `len(images)`).
pub fn check_image_count(what: &str, n: usize) -> Result<usize, DataError> {
    if n > MAX_IMAGES {
        return Err(DataError::Argument(format!(
            "{what} = {n} is above the limit of {MAX_IMAGES} images (MAX_IMAGES)"
        )));
    }
    Ok(n)
}

/// Largest image side the loader and augmentation accept (a 512×512×3 image is 786 KB).
pub const MAX_SIDE: usize = 512;
/// Most channels of an image (multispectral data has a dozen or so).
pub const MAX_CHANNELS: usize = 64;

/// The shape `(C, side, side)` of the square images of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels (3 for RGB, 1 for grayscale, more for multispectral data).
    pub channels: usize,
    /// Height and width in pixels.
    pub side: usize,
}

impl ImageShape {
    /// CIFAR's `(3, 32, 32)`.
    pub const CIFAR: Self = Self { channels: CHANNELS, side: SIDE };

    /// A shape within [`MAX_CHANNELS`] and [`MAX_SIDE`], or an error naming the bad dimension.
    pub fn new(channels: usize, side: usize) -> Result<Self, DataError> {
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(DataError::Argument(format!(
                "images have {channels} channels; 1 to {MAX_CHANNELS} (MAX_CHANNELS) are supported"
            )));
        }
        if !(1..=MAX_SIDE).contains(&side) {
            return Err(DataError::Argument(format!(
                "images of {side}×{side} pixels; sides of 1 to {MAX_SIDE} (MAX_SIDE) are supported"
            )));
        }
        Ok(Self { channels, side })
    }

    /// Bytes (values) of one image.
    pub fn bytes(&self) -> usize {
        self.channels * self.side * self.side
    }
}

/// Square images `(N, C, side, side)` as bytes and their labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// `N · C · side²` bytes, image after image, channel planes in order (R, G, B for colour images).
    pub pixels: Vec<u8>,
    /// `N` class labels.
    pub labels: Vec<u32>,
    /// The shape of every image.
    pub shape: ImageShape,
}

impl Default for Images {
    fn default() -> Self {
        Self { pixels: Vec::new(), labels: Vec::new(), shape: ImageShape::CIFAR }
    }
}

impl Images {
    /// CIFAR-shaped images `(N, 3, 32, 32)`.
    pub fn cifar(pixels: Vec<u8>, labels: Vec<u32>) -> Self {
        Self { pixels, labels, shape: ImageShape::CIFAR }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let b = self.shape.bytes();
        &self.pixels[i * b..(i + 1) * b]
    }
}

/// Parse the bytes of one `.bin` file; `path` names it in errors. Accepts 1 to 10,000 whole records (the
/// official files have 10,000; exact prefixes of them, such as a 2,000-image test subset, are accepted).
pub fn parse_bin(bytes: &[u8], path: &Path, out: &mut Images) -> Result<(), DataError> {
    let fmt = |message: String| DataError::Format { path: path.to_path_buf(), message };
    if bytes.is_empty() {
        return Err(fmt("empty file; a CIFAR-10 batch holds records of 3073 bytes".into()));
    }
    if bytes.len() % RECORD_BYTES != 0 {
        let whole = bytes.len() / RECORD_BYTES;
        return Err(fmt(format!(
            "truncated: {} bytes is not a whole number of 3073-byte records (record {whole} has only {} bytes)",
            bytes.len(),
            bytes.len() % RECORD_BYTES
        )));
    }
    let n = bytes.len() / RECORD_BYTES;
    if n > RECORDS_PER_FILE {
        return Err(fmt(format!("oversized: {n} records, a CIFAR-10 batch file holds at most {RECORDS_PER_FILE}")));
    }
    out.pixels.reserve(n * IMAGE_BYTES);
    out.labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] >= NUM_CLASSES {
            return Err(fmt(format!("record {i}: label {} is not a CIFAR-10 class (0-9)", rec[0])));
        }
    }
    for rec in bytes.chunks_exact(RECORD_BYTES) {
        out.labels.push(u32::from(rec[0]));
        out.pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Encode images in the binary record format (the inverse of [`parse_bin`]).
pub fn encode_bin(images: &Images) -> Vec<u8> {
    let mut out = Vec::with_capacity(images.len() * RECORD_BYTES);
    for i in 0..images.len() {
        out.push(u8::try_from(images.labels[i]).expect("a CIFAR-10 label fits a byte"));
        out.extend_from_slice(images.image(i));
    }
    out
}

fn read(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    // Regular files only: a FIFO named `data_batch_1.bin` would block the read for ever.
    crate::files::read_regular(path, hint)
}

/// The folder holding the `.bin` files: `root` itself, or its `cifar-10-batches-bin` subfolder (where the
/// official archive unpacks).
pub fn resolve_root(root: &Path) -> PathBuf {
    let sub = root.join("cifar-10-batches-bin");
    if !root.join(TRAIN_FILES[0]).exists() && !root.join(TEST_FILE).exists() && sub.is_dir() {
        sub
    } else {
        root.to_path_buf()
    }
}

/// Which part of CIFAR-10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 50,000 training images (`data_batch_1..5.bin`).
    Train,
    /// The 10,000 test images (`test_batch.bin`).
    Test,
}

/// Load a split from the binary version in `root`. The training set reads `data_batch_1.bin` onward and
/// stops at the first missing file (so a folder with only `data_batch_1.bin` serves 10,000 images), but a
/// gap (a later file present after a missing one) is an error.
pub fn load(root: &Path, split: Split) -> Result<Images, DataError> {
    let root = resolve_root(root);
    let hint = "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and point to its cifar-10-batches-bin folder, or call mdarts_rs.data.download_cifar10()";
    if !root.is_dir() {
        return Err(DataError::Missing { path: root, hint: hint.to_string() });
    }
    let mut out = Images::default();
    match split {
        Split::Test => parse_bin(&read(&root.join(TEST_FILE), hint)?, &root.join(TEST_FILE), &mut out)?,
        Split::Train => {
            let present: Vec<bool> = TRAIN_FILES.iter().map(|f| root.join(f).exists()).collect();
            let count = present.iter().take_while(|p| **p).count();
            if count == 0 {
                return Err(DataError::Missing { path: root.join(TRAIN_FILES[0]), hint: hint.to_string() });
            }
            if let Some(gap) = present[count..].iter().position(|p| *p) {
                return Err(DataError::Format {
                    path: root.join(TRAIN_FILES[count + gap]),
                    message: format!("{} is missing but this later batch is present; the training files must be data_batch_1.bin onward without gaps", TRAIN_FILES[count]),
                });
            }
            for f in &TRAIN_FILES[..count] {
                let p = root.join(f);
                parse_bin(&read(&p, hint)?, &p, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Which label of a CIFAR-100 record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label100 {
    /// The 100 fine classes (the second byte).
    Fine,
    /// The 20 superclasses (the first byte).
    Coarse,
}

/// Bytes of one CIFAR-100 record: coarse label, fine label, image.
pub const RECORD_BYTES_100: usize = 2 + IMAGE_BYTES;
/// Records of CIFAR-100's `train.bin`.
pub const TRAIN_RECORDS_100: usize = 50_000;
/// CIFAR-100's training and test files.
pub const FILES_100: [&str; 2] = ["train.bin", "test.bin"];

/// Parse the bytes of one CIFAR-100 `.bin` file; `path` names it in errors. Accepts 1 to 50,000 whole
/// records (prefixes of the official files included) and checks both labels of every record, whichever is
/// kept.
pub fn parse_bin100(bytes: &[u8], path: &Path, label: Label100, out: &mut Images) -> Result<(), DataError> {
    let fmt = |message: String| DataError::Format { path: path.to_path_buf(), message };
    if bytes.is_empty() {
        return Err(fmt("empty file; a CIFAR-100 file holds records of 3074 bytes".into()));
    }
    if bytes.len() % RECORD_BYTES_100 != 0 {
        let whole = bytes.len() / RECORD_BYTES_100;
        return Err(fmt(format!(
            "truncated: {} bytes is not a whole number of 3074-byte records (record {whole} has only {} bytes)",
            bytes.len(),
            bytes.len() % RECORD_BYTES_100
        )));
    }
    let n = bytes.len() / RECORD_BYTES_100;
    if n > TRAIN_RECORDS_100 {
        return Err(fmt(format!("oversized: {n} records, a CIFAR-100 file holds at most {TRAIN_RECORDS_100}")));
    }
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES_100).enumerate() {
        if rec[0] >= 20 {
            return Err(fmt(format!("record {i}: coarse label {} is not a CIFAR-100 superclass (0-19)", rec[0])));
        }
        if rec[1] >= 100 {
            return Err(fmt(format!("record {i}: fine label {} is not a CIFAR-100 class (0-99)", rec[1])));
        }
    }
    out.pixels.reserve(n * IMAGE_BYTES);
    out.labels.reserve(n);
    for rec in bytes.chunks_exact(RECORD_BYTES_100) {
        out.labels.push(u32::from(if label == Label100::Fine { rec[1] } else { rec[0] }));
        out.pixels.extend_from_slice(&rec[2..]);
    }
    Ok(())
}

/// Load a split of the CIFAR-100 binary version from `root` (the `cifar-100-binary` folder or its parent).
pub fn load100(root: &Path, split: Split, label: Label100) -> Result<Images, DataError> {
    let sub = root.join("cifar-100-binary");
    let root = if !root.join(FILES_100[0]).exists() && !root.join(FILES_100[1]).exists() && sub.is_dir() {
        sub
    } else {
        root.to_path_buf()
    };
    let hint = "download the CIFAR-100 binary version (cifar-100-binary.tar.gz) and point to its cifar-100-binary folder, or call mdarts_rs.data.download_cifar100()";
    let file = root.join(if split == Split::Train { FILES_100[0] } else { FILES_100[1] });
    let mut out = Images::default();
    parse_bin100(&read(&file, hint)?, &file, label, &mut out)?;
    Ok(out)
}

/// The search split of DARTS' protocol: a permutation of `0..n` drawn from `seed`, of which the first
/// `floor(portion · n / 2)` indices are S_train (weights) and the next as many are S_val (α). With
/// `portion = 1` the 50,000 training images give 25,000 + 25,000. `n` is at most [`MAX_IMAGES`].
pub fn search_split(n: usize, portion: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    // Before the permutation of `n` indices is allocated.
    check_image_count("n", n)?;
    if !(portion > 0.0 && portion <= 1.0) {
        return Err(DataError::Argument(format!("portion must be in (0, 1], got {portion}")));
    }
    // `portion` is in (0, 1], so the product is in [0, n] and the cast cannot saturate.
    let half = ((portion * n as f64) as usize) / 2;
    if half == 0 {
        return Err(DataError::Argument(format!(
            "portion {portion} of {n} images leaves no image for S_train and S_val"
        )));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::new(mix(&[seed, 0x5EA2C4])).shuffle(&mut perm);
    let val = perm[half..2 * half].to_vec();
    perm.truncate(half);
    Ok((perm, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat(fill).take(IMAGE_BYTES));
        r
    }

    #[test]
    fn parses_records_and_names_bad_ones() {
        let p = Path::new("x.bin");
        let mut bytes = record(3, 7);
        bytes.extend(record(9, 1));
        let mut out = Images::default();
        parse_bin(&bytes, p, &mut out).unwrap();
        assert_eq!(out.labels, vec![3, 9]);
        assert_eq!(out.image(1)[0], 1);

        bytes.extend(record(10, 0));
        let e = parse_bin(&bytes, p, &mut Images::default()).unwrap_err().to_string();
        assert_eq!(e, "x.bin: record 2: label 10 is not a CIFAR-10 class (0-9)");
        let e = parse_bin(&bytes[..4000], p, &mut Images::default()).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("record 1 has only 927 bytes"), "{e}");
        assert!(parse_bin(&[], p, &mut Images::default()).is_err());
    }

    #[test]
    fn cifar100_records_give_either_label_and_name_bad_ones() {
        let p = Path::new("train.bin");
        let rec = |coarse: u8, fine: u8, fill: u8| {
            let mut r = vec![coarse, fine];
            r.extend(std::iter::repeat(fill).take(IMAGE_BYTES));
            r
        };
        let mut bytes = rec(3, 71, 9);
        bytes.extend(rec(19, 99, 2));
        let mut fine = Images::default();
        parse_bin100(&bytes, p, Label100::Fine, &mut fine).unwrap();
        assert_eq!(fine.labels, vec![71, 99]);
        assert_eq!(fine.image(1), &[2u8; IMAGE_BYTES][..]);
        let mut coarse = Images::default();
        parse_bin100(&bytes, p, Label100::Coarse, &mut coarse).unwrap();
        assert_eq!((coarse.labels, coarse.pixels), (vec![3, 19], fine.pixels));
        let mut bad = bytes.clone();
        bad.extend(rec(20, 0, 0));
        let e = parse_bin100(&bad, p, Label100::Fine, &mut Images::default()).unwrap_err().to_string();
        assert_eq!(e, "train.bin: record 2: coarse label 20 is not a CIFAR-100 superclass (0-19)");
        let mut bad = bytes.clone();
        bad.extend(rec(0, 100, 0));
        let e = parse_bin100(&bad, p, Label100::Coarse, &mut Images::default()).unwrap_err().to_string();
        assert_eq!(e, "train.bin: record 2: fine label 100 is not a CIFAR-100 class (0-99)");
        let e = parse_bin100(&bytes[..3074 + 10], p, Label100::Fine, &mut Images::default()).unwrap_err();
        assert!(e.to_string().contains("record 1 has only 10 bytes"), "{e}");
        assert!(parse_bin100(&[], p, Label100::Fine, &mut Images::default()).is_err());
    }

    #[test]
    fn split_is_seeded_disjoint_and_halved() {
        let (t, v) = search_split(1000, 1.0, 2).unwrap();
        assert_eq!((t.len(), v.len()), (500, 500));
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(search_split(1000, 1.0, 2).unwrap(), (t.clone(), v));
        assert_ne!(search_split(1000, 1.0, 3).unwrap().0, t);
        assert_eq!(search_split(1000, 0.1, 2).unwrap().0.len(), 50);
        assert!(search_split(1000, 0.0, 2).is_err());
        assert!(search_split(1000, f64::NAN, 2).is_err());
    }

    #[test]
    fn split_refuses_huge_counts_before_allocating() {
        for n in [MAX_IMAGES + 1, 1 << 31, 1 << 62, usize::MAX] {
            for portion in [1e-18, 0.5, 1.0, f64::NAN] {
                let e = search_split(n, portion, 0).unwrap_err().to_string();
                assert_eq!(e, format!("n = {n} is above the limit of 1000000 images (MAX_IMAGES)"));
            }
        }
        let e = search_split(10, 1e-18, 0).unwrap_err().to_string();
        assert!(e.contains("leaves no image"), "{e}");
        for portion in [f64::INFINITY, f64::NEG_INFINITY, 1e308, -0.0, 1.0 + f64::EPSILON] {
            assert!(search_split(10, portion, 0).unwrap_err().to_string().starts_with("portion must be in (0, 1]"));
        }
    }

    proptest::proptest! {
        #[test]
        fn split_halves_any_allowed_count(n in 0usize..5000, portion in 0.0f64..=1.0, seed: u64) {
            match search_split(n, portion, seed) {
                Ok((t, v)) => {
                    proptest::prop_assert_eq!(t.len(), v.len());
                    proptest::prop_assert!(2 * t.len() <= n && !t.is_empty());
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("portion"), "{}", e),
            }
        }
    }
}
