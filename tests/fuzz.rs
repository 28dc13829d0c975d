//! Property-based fuzzing of the three readers that take bytes or text from outside the program:
//! the MNIST IDX loader (`data::load_dir`), the safetensors checkpoint reader (`checkpoint::load`,
//! `read_metadata`, `load_optional`) and the layer-spec parser (`parse_layers`, then
//! `NetSpec::sequential`, `resolve` and `validate`).
//!
//! Each property starts from valid input and mutates it (truncations, byte flips, lying headers,
//! huge or zero dimensions, corrupt gzip, wrong dtypes, …), because purely random bytes are
//! rejected by the first magic-number check and would never reach the deep parsing code. A case
//! passes when the reader returns `Ok` with exactly the data a small oracle expects, or an `Err`,
//! and does so without panicking, hanging, or making an allocation sized by a header field rather
//! than by the file. Each property also counts its outcomes and fails if the mutations stop
//! reaching both the `Ok` and the deeper `Err` paths, so it cannot silently test nothing.
//!
//! The CI runs use fixed seeds so that they are reproducible; the `#[ignore]`d `*_long` tests run
//! 50,000 fresh cases per property (`cargo test --release --test fuzz -- --ignored _long`) and
//! print their seed, which `PROPTEST_RNG_SEED` replays. `validate_refuses_overflowing_sizes`
//! keeps the minimal inputs of the one bug the properties found (spec sizes that wrapped).

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestRunner};
use safetensors::Dtype;
use serde_json::{json, Value};
use wgrad::checkpoint::{self, TensorData};
use wgrad::data::{self, DataError, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use wgrad::nn::layers::{parse_layers, LayerSpec};
use wgrad::nn::{Activation, NetSpec, ParamLayout};

// ---------------------------------------------------------------------------------------------
// Harness: allocation tracking, a per-case watchdog, outcome tallies.

/// Records the largest single allocation per thread, so that a reader sizing a buffer from an
/// unchecked header field is caught even when the OS would lazily grant the memory.
struct Tracking;

thread_local! {
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Far longer than any reader needs for these kilobyte inputs, yet short enough that a hang
/// fails the test instead of stalling CI.
const CASE_DEADLINE: Duration = Duration::from_secs(20);

/// Allowance for buffers that do not depend on the input (gzip's window, JSON parse state).
const FIXED_ALLOCATION: usize = 1 << 20;

struct Measured<T> {
    value: T,
    largest_allocation: usize,
    elapsed: Duration,
}

/// Runs `f` on a fresh thread, so that its largest allocation is its own and a hang can be
/// reported rather than waited out. A panic in `f` is re-raised here, for proptest to report and
/// shrink.
fn measured<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Measured<T> {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("fuzz-case".into())
        .spawn(move || {
            LARGEST_ALLOCATION.with(|largest| largest.set(0));
            let start = Instant::now();
            let value = f();
            let elapsed = start.elapsed();
            let largest_allocation = LARGEST_ALLOCATION.with(Cell::get);
            let _ = tx.send(Measured {
                value,
                largest_allocation,
                elapsed,
            });
        })
        .expect("spawning a fuzz-case thread");
    match rx.recv_timeout(CASE_DEADLINE) {
        Ok(measured) => {
            let _ = handle.join();
            measured
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("the reader did not return within {CASE_DEADLINE:?}: it hangs")
        }
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the case thread ended without sending its result"),
        },
    }
}

/// Outcome counts of one property, so that it can prove it reached the paths it is meant to.
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, u32>>);

impl Tally {
    fn add(&self, outcome: &'static str) {
        *self.0.borrow_mut().entry(outcome).or_default() += 1;
    }

    fn get(&self, outcome: &str) -> u32 {
        self.0.borrow().get(outcome).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.0.borrow().values().sum()
    }

    fn fraction(&self, outcome: &str) -> f64 {
        f64::from(self.get(outcome)) / f64::from(self.total().max(1))
    }

    /// Asserts that `outcome` made up at least `min` of the cases.
    fn require(&self, property: &str, outcome: &str, min: f64) {
        assert!(
            self.fraction(outcome) >= min,
            "{property}: only {} of {} cases were '{outcome}' (want ≥ {:.1}%), so the mutations \
             no longer reach that path: {:?}",
            self.get(outcome),
            self.total(),
            min * 100.0,
            self.0.borrow()
        );
    }
}

#[derive(Clone, Copy)]
enum Seeding {
    /// Reproducible CI runs.
    Fixed(u64),
    /// Long runs explore new inputs each time; the seed is printed so a failure can be replayed.
    Fresh,
}

fn run_property<S: Strategy>(
    property: &str,
    cases: u32,
    seeding: Seeding,
    strategy: S,
    tally: &Tally,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let mut config = Config::with_cases(cases);
    // Regression files would land in the source tree; a failure prints its minimal input instead.
    config.failure_persistence = None;
    let seed = match (config.rng_seed, seeding) {
        // PROPTEST_RNG_SEED, when set, replays a reported run.
        (RngSeed::Fixed(seed), _) | (RngSeed::Random, Seeding::Fixed(seed)) => seed,
        (RngSeed::Random, Seeding::Fresh) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    config.rng_seed = RngSeed::Fixed(seed);
    let start = Instant::now();
    if let Err(failure) = TestRunner::new(config).run(&strategy, test) {
        panic!("{property} (PROPTEST_RNG_SEED={seed}): {failure}");
    }
    println!(
        "{property}: {cases} cases in {:.1?} (seed {seed}): {:?}",
        start.elapsed(),
        tally.0.borrow()
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Byte-level damage to a whole file, applied after any compression.
#[derive(Clone, Debug)]
enum FileMut {
    Truncate(Index),
    Flip(Index, u8),
    Append(Vec<u8>),
    Empty,
    Remove,
}

fn file_mut() -> impl Strategy<Value = FileMut> {
    prop_oneof![
        3 => any::<Index>().prop_map(FileMut::Truncate),
        3 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| FileMut::Flip(at, mask)),
        1 => vec(any::<u8>(), 1..12).prop_map(FileMut::Append),
        1 => Just(FileMut::Empty),
        1 => Just(FileMut::Remove),
    ]
}

/// Applies `muts` to `bytes`; None when the file is removed.
fn apply_file_muts(mut bytes: Vec<u8>, muts: &[FileMut]) -> Option<Vec<u8>> {
    for m in muts {
        match m {
            FileMut::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            FileMut::Flip(at, mask) => {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
            }
            FileMut::Append(extra) => bytes.extend(extra),
            FileMut::Empty => bytes.clear(),
            FileMut::Remove => return None,
        }
    }
    Some(bytes)
}

/// The harness itself must see what it is meant to catch, or every property passes vacuously.
#[test]
fn harness_sees_large_allocations_and_panics() {
    let run = measured(|| vec![1u8; 64 << 20].len());
    assert!(
        run.largest_allocation >= 64 << 20,
        "{}",
        run.largest_allocation
    );
    let panicked = std::panic::catch_unwind(|| measured(|| panic!("planted")));
    assert!(panicked.is_err());
}

// ---------------------------------------------------------------------------------------------
// 1. MNIST IDX files.

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// In the order `load_dir` reads them: train images, train labels, test images, test labels.
const IDX_NAMES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(body);
    bytes
}

/// One set (train or test): `pixels` holds whole images; `labels` usually has one per image.
#[derive(Clone, Debug)]
struct IdxSet {
    rows: u32,
    cols: u32,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl IdxSet {
    fn files(&self) -> [Vec<u8>; 2] {
        let count = self.pixels.len() as u32 / (self.rows * self.cols);
        [
            idx(IMAGES_MAGIC, &[count, self.rows, self.cols], &self.pixels),
            idx(LABELS_MAGIC, &[self.labels.len() as u32], &self.labels),
        ]
    }
}

fn idx_set(rows: u32, cols: u32) -> impl Strategy<Value = IdxSet> {
    // A few sets have a label count of their own, to reach the count cross-check with files that
    // are each valid.
    (0usize..=6, prop::bool::weighted(0.1), 0usize..=6).prop_flat_map(
        move |(count, mismatch, other)| {
            let labels = if mismatch { other } else { count };
            (
                vec(any::<u8>(), count * (rows * cols) as usize),
                // Few classes, so that the two sets' labels together often number them without
                // a gap, as a valid set's must.
                vec(0u8..=2, labels),
            )
                .prop_map(move |(pixels, labels)| IdxSet {
                    rows,
                    cols,
                    pixels,
                    labels,
                })
        },
    )
}

/// A header word's new value: an absolute value that breaks sizes, or a nudge of the old one.
#[derive(Clone, Debug)]
enum HeaderValue {
    Set(u32),
    Nudge(i8),
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u32,
            1,
            2,
            28,
            255,
            256,
            65_536,
            IMAGES_MAGIC,
            LABELS_MAGIC,
            0x0000_0903,
            0x0000_0C03,
            0x7fff_ffff,
            0x8000_0000,
            4_000_000_000,
            u32::MAX,
        ])
        .prop_map(HeaderValue::Set),
        1 => any::<u32>().prop_map(HeaderValue::Set),
        3 => (-3i8..=3).prop_map(HeaderValue::Nudge),
    ]
}

/// Damage to the uncompressed IDX bytes.
#[derive(Clone, Debug)]
enum RawMut {
    /// Sets a body byte: any pixel value, or one of the generated classes for labels. The file
    /// stays valid (the set may lose a class, which the model then expects to be refused).
    Mild(Index, u8),
    /// Sets a body byte to anything (for labels, usually one that leaves classes without images).
    Body(Index, u8),
    Flip(Index, u8),
    /// Header word 0 is the magic, 1.. the dimensions.
    Header(Index, HeaderValue),
    Truncate(Index),
    Delete(Index),
    Append(Vec<u8>),
    Replace(Vec<u8>),
    /// An empty set: no images (of zero rows, zero columns or both: 1, 2, 3), or no labels. The
    /// length stays consistent, so only the zero-size check can catch it.
    Empty(Index),
}

fn mild_raw_mut() -> impl Strategy<Value = RawMut> {
    (any::<Index>(), any::<u8>()).prop_map(|(at, v)| RawMut::Mild(at, v))
}

fn raw_mut() -> impl Strategy<Value = RawMut> {
    prop_oneof![
        2 => mild_raw_mut(),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, v)| RawMut::Body(at, v)),
        2 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| RawMut::Flip(at, mask)),
        5 => (any::<Index>(), header_value()).prop_map(|(at, v)| RawMut::Header(at, v)),
        2 => any::<Index>().prop_map(RawMut::Truncate),
        1 => any::<Index>().prop_map(RawMut::Delete),
        1 => vec(any::<u8>(), 1..8).prop_map(RawMut::Append),
        1 => vec(any::<u8>(), 0..40).prop_map(RawMut::Replace),
        1 => any::<Index>().prop_map(RawMut::Empty),
    ]
}

fn apply_raw_mut(bytes: &mut Vec<u8>, m: &RawMut, is_labels: bool) {
    let header_len = if is_labels { 8 } else { 16 };
    match m {
        RawMut::Mild(at, v) | RawMut::Body(at, v) => {
            if bytes.len() > header_len {
                let i = header_len + at.index(bytes.len() - header_len);
                let mild = matches!(m, RawMut::Mild(..));
                bytes[i] = if mild && is_labels { v % 3 } else { *v };
            }
        }
        RawMut::Flip(at, mask) => {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
        }
        RawMut::Header(word, value) => {
            let at = 4 * word.index(header_len / 4);
            if let Some(slot) = bytes.get_mut(at..at + 4) {
                let old = u32::from_be_bytes(slot.try_into().unwrap());
                let new = match value {
                    HeaderValue::Set(v) => *v,
                    HeaderValue::Nudge(d) => old.wrapping_add_signed(i32::from(*d)),
                };
                slot.copy_from_slice(&new.to_be_bytes());
            }
        }
        RawMut::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
        RawMut::Delete(at) => {
            if !bytes.is_empty() {
                bytes.remove(at.index(bytes.len()));
            }
        }
        RawMut::Append(extra) => bytes.extend(extra),
        RawMut::Replace(new) => *bytes = new.clone(),
        RawMut::Empty(zeros) => {
            if bytes.len() >= header_len {
                bytes.truncate(header_len);
                bytes[4..8].fill(0);
                if !is_labels {
                    let zeros = 1 + zeros.index(3);
                    for (bit, dim) in [(1, 8..12), (2, 12..16)] {
                        if zeros & bit != 0 {
                            bytes[dim].fill(0);
                        }
                    }
                }
            }
        }
    }
}

/// How a file is stored in the folder.
#[derive(Clone, Debug)]
enum Encoding {
    Raw,
    Gzip,
    /// Two gzip members split at the index: still one valid stream for a multi-member decoder.
    GzipTwoMembers(Index),
    /// NAME.gz next to a raw NAME holding garbage, which must lose to the .gz.
    GzipWithDecoy,
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        3 => Just(Encoding::Raw),
        3 => Just(Encoding::Gzip),
        1 => any::<Index>().prop_map(Encoding::GzipTwoMembers),
        1 => Just(Encoding::GzipWithDecoy),
    ]
}

#[derive(Clone, Debug)]
struct FilePlan {
    /// Which of the four valid files this one starts from (another's, to swap or mix files up).
    source: usize,
    raw: Vec<RawMut>,
    encoding: Encoding,
    file: Vec<FileMut>,
}

fn file_plan(own: usize) -> impl Strategy<Value = FilePlan> {
    let source = prop_oneof![12 => Just(own), 1 => 0usize..4];
    prop_oneof![
        // Untouched and mildly touched files keep a good share of the cases valid, so that the
        // loader's success path and its data are checked too.
        5 => encoding().prop_map(move |encoding| FilePlan {
            source: own,
            raw: vec![],
            encoding,
            file: vec![],
        }),
        3 => (vec(mild_raw_mut(), 1..4), encoding()).prop_map(move |(raw, encoding)| FilePlan {
            source: own,
            raw,
            encoding,
            file: vec![],
        }),
        4 => (source, vec(raw_mut(), 0..3), encoding(), vec(file_mut(), 0..2)).prop_map(
            |(source, raw, encoding, file)| FilePlan {
                source,
                raw,
                encoding,
                file,
            }
        ),
    ]
}

#[derive(Clone, Debug)]
struct IdxCase {
    train: IdxSet,
    test: IdxSet,
    plans: [FilePlan; 4],
}

fn idx_case() -> impl Strategy<Value = IdxCase> {
    let shapes = (
        1u32..=4,
        1u32..=4,
        prop::bool::weighted(0.9),
        1u32..=4,
        1u32..=4,
    );
    let plans = [file_plan(0), file_plan(1), file_plan(2), file_plan(3)];
    (shapes, plans).prop_flat_map(|((rows, cols, same, test_rows, test_cols), plans)| {
        let (test_rows, test_cols) = if same {
            (rows, cols)
        } else {
            (test_rows, test_cols)
        };
        (idx_set(rows, cols), idx_set(test_rows, test_cols)).prop_map(move |(train, test)| {
            IdxCase {
                train,
                test,
                plans: plans.clone(),
            }
        })
    })
}

/// The folder's files (name → bytes) that `case` describes.
fn idx_folder(case: &IdxCase) -> BTreeMap<String, Vec<u8>> {
    let [train_images, train_labels] = case.train.files();
    let [test_images, test_labels] = case.test.files();
    let valid = [train_images, train_labels, test_images, test_labels];
    let mut folder = BTreeMap::new();
    for (i, plan) in case.plans.iter().enumerate() {
        let mut raw = valid[plan.source].clone();
        for m in &plan.raw {
            apply_raw_mut(&mut raw, m, i % 2 == 1);
        }
        let name = IDX_NAMES[i];
        let (file_name, stored) = match &plan.encoding {
            Encoding::Raw => (name.to_string(), raw),
            Encoding::Gzip => (format!("{name}.gz"), gzip(&raw)),
            Encoding::GzipTwoMembers(at) => {
                let (a, b) = raw.split_at(at.index(raw.len() + 1));
                (format!("{name}.gz"), [gzip(a), gzip(b)].concat())
            }
            Encoding::GzipWithDecoy => {
                folder.insert(name.to_string(), b"decoy: not an IDX file".to_vec());
                (format!("{name}.gz"), gzip(&raw))
            }
        };
        if let Some(bytes) = apply_file_muts(stored, &plan.file) {
            folder.insert(file_name, bytes);
        }
    }
    folder
}

/// What `load_dir` must return for `folder`, computed independently of it: per set, (rows,
/// cols, pixels, labels); None where it must fail.
type ExpectedSet = (usize, usize, Vec<u8>, Vec<u8>);

fn expected_mnist(folder: &BTreeMap<String, Vec<u8>>) -> Option<[ExpectedSet; 2]> {
    let content = |name: &str| -> Option<Vec<u8>> {
        let bytes = folder
            .get(&format!("{name}.gz"))
            .or_else(|| folder.get(name))?;
        if !bytes.starts_with(&GZIP_MAGIC) {
            return Some(bytes.clone());
        }
        let mut out = Vec::new();
        MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).ok()?;
        Some(out)
    };
    let word = |b: &[u8], i: usize| u64::from(u32::from_be_bytes(b[i..i + 4].try_into().unwrap()));
    let images = |b: Vec<u8>| -> Option<(u64, usize, usize, Vec<u8>)> {
        if b.len() < 16 || word(&b, 0) != u64::from(IMAGES_MAGIC) {
            return None;
        }
        let (count, rows, cols) = (word(&b, 4), word(&b, 8), word(&b, 12));
        let size = 16 + u128::from(count) * u128::from(rows) * u128::from(cols);
        (rows > 0 && cols > 0 && b.len() as u128 == size)
            .then(|| (count, rows as usize, cols as usize, b[16..].to_vec()))
    };
    let labels = |b: Vec<u8>| -> Option<Vec<u8>> {
        let ok = b.len() >= 8
            && word(&b, 0) == u64::from(LABELS_MAGIC)
            && b.len() as u64 == 8 + word(&b, 4);
        ok.then(|| b[8..].to_vec())
    };
    let set = |images_name: &str, labels_name: &str| -> Option<ExpectedSet> {
        let (count, rows, cols, pixels) = images(content(images_name)?)?;
        let labels = labels(content(labels_name)?)?;
        (count == labels.len() as u64).then_some((rows, cols, pixels, labels))
    };
    let train = set(TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = set(TEST_IMAGES, TEST_LABELS)?;
    // The labels of both sets number the classes 0..K−1, K = the largest + 1; only class 0 may
    // have no image.
    let present: std::collections::BTreeSet<u8> = train.3.iter().chain(&test.3).copied().collect();
    let largest = present.last().copied().unwrap_or(0);
    let numbered = (1..largest).all(|c| present.contains(&c));
    ((train.0, train.1) == (test.0, test.1) && numbered).then_some([train, test])
}

fn data_error_kind(e: &DataError) -> &'static str {
    match e {
        DataError::MissingDir { .. } => "MissingDir",
        DataError::MissingFile { .. } => "MissingFile",
        DataError::Io { .. } => "Io",
        DataError::Gzip { .. } => "Gzip",
        DataError::BadMagic { .. } => "BadMagic",
        DataError::Truncated { .. } => "Truncated",
        DataError::TrailingBytes { .. } => "TrailingBytes",
        DataError::EmptyImage { .. } => "EmptyImage",
        DataError::MissingClasses { .. } => "MissingClasses",
        DataError::CountMismatch { .. } => "CountMismatch",
        DataError::ShapeMismatch { .. } => "ShapeMismatch",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

fn check_idx_case(case: IdxCase, tally: &Tally) -> TestCaseResult {
    let folder = idx_folder(&case);
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in &folder {
        fs::write(dir.path().join(name), bytes).unwrap();
    }
    let input_bytes: usize = folder.values().map(Vec::len).sum();
    let path = dir.path().to_path_buf();
    let run = measured(move || data::load_dir(&path));

    // Gzip can expand about a thousandfold; anything beyond that was sized by a header.
    let limit = FIXED_ALLOCATION + 2048 * input_bytes;
    prop_assert!(
        run.largest_allocation <= limit,
        "allocated {} bytes for {input_bytes} bytes of input",
        run.largest_allocation
    );
    match (run.value, expected_mnist(&folder)) {
        (Ok(mnist), Some([train, test])) => {
            let all_labels = train.3.iter().chain(&test.3);
            let classes = all_labels.max().map_or(0, |&l| usize::from(l) + 1);
            for (got, (rows, cols, pixels, labels)) in [(&mnist.train, train), (&mnist.test, test)]
            {
                prop_assert_eq!((got.channels, got.classes), (1, classes));
                prop_assert_eq!((got.rows, got.cols), (rows, cols));
                prop_assert_eq!(&got.images, &pixels);
                prop_assert_eq!(&got.labels, &labels);
            }
            tally.add("Ok");
        }
        (Err(e), None) => {
            let msg = e.to_string();
            // Every DataError names its file or folder, so the user knows what to replace.
            prop_assert!(
                msg.contains(&*dir.path().to_string_lossy()),
                "error does not name the file: {msg}"
            );
            tally.add(data_error_kind(&e));
        }
        (Ok(_), None) => prop_assert!(false, "loaded a folder that is not valid MNIST"),
        (Err(e), Some(_)) => prop_assert!(false, "rejected a valid folder: {e}"),
    }
    Ok(())
}

fn idx_property(cases: u32, seeding: Seeding) {
    let tally = Tally::default();
    run_property("idx", cases, seeding, idx_case(), &tally, |case| {
        check_idx_case(case, &tally)
    });
    tally.require("idx", "Ok", 0.10);
    // The error kinds past the magic number show that mutations reach the size, label and
    // cross-file checks, not just the first bytes.
    for (kind, min) in [
        ("Truncated", 0.05),
        ("TrailingBytes", 0.02),
        ("BadMagic", 0.02),
        ("Gzip", 0.005),
        ("MissingClasses", 0.005),
        ("CountMismatch", 0.005),
        ("ShapeMismatch", 0.002),
        ("EmptyImage", 0.001),
        ("MissingFile", 0.002),
    ] {
        tally.require("idx", kind, min);
    }
}

#[test]
fn idx_files_load_or_fail_cleanly() {
    idx_property(1500, Seeding::Fixed(0x1d3_5eed));
}

#[test]
#[ignore = "long fuzz run: cargo test --release --test fuzz -- --ignored _long"]
fn idx_files_load_or_fail_cleanly_long() {
    idx_property(50_000, Seeding::Fresh);
}

/// A header that claims about four billion 28×28 images over a 100-byte file must be refused
/// from the header alone, without touching gigabytes.
#[test]
fn idx_huge_header_over_tiny_file_fails_fast() {
    let huge_images = idx(IMAGES_MAGIC, &[4_000_000_000, 28, 28], &[7; 84]);
    let huge_labels = idx(LABELS_MAGIC, &[u32::MAX], &[3; 92]);
    let overflowing = idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[0; 84]);
    let small_labels = idx(LABELS_MAGIC, &[1], &[3]);
    let small_images = idx(IMAGES_MAGIC, &[1, 28, 28], &[0; 784]);
    let folders: [[(&str, Vec<u8>); 4]; 4] = [
        [
            (TRAIN_IMAGES, huge_images.clone()),
            (TRAIN_LABELS, small_labels.clone()),
            (TEST_IMAGES, small_images.clone()),
            (TEST_LABELS, small_labels.clone()),
        ],
        [
            (TRAIN_IMAGES, small_images.clone()),
            (TRAIN_LABELS, huge_labels.clone()),
            (TEST_IMAGES, small_images.clone()),
            (TEST_LABELS, small_labels.clone()),
        ],
        [
            (TRAIN_IMAGES, overflowing),
            (TRAIN_LABELS, small_labels.clone()),
            (TEST_IMAGES, small_images.clone()),
            (TEST_LABELS, small_labels.clone()),
        ],
        [
            ("train-images-idx3-ubyte.gz", gzip(&huge_images)),
            ("train-labels-idx1-ubyte.gz", gzip(&huge_labels)),
            (TEST_IMAGES, small_images),
            (TEST_LABELS, small_labels),
        ],
    ];
    for files in folders {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let path = dir.path().to_path_buf();
        let run = measured(move || data::load_dir(&path));
        let err = run
            .value
            .expect_err("a header larger than its file must be refused");
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
        assert!(
            run.largest_allocation < FIXED_ALLOCATION,
            "allocated {} bytes for a ~1 KB folder",
            run.largest_allocation
        );
        assert!(run.elapsed < Duration::from_secs(1), "{:?}", run.elapsed);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Safetensors checkpoints.

const CHECKPOINT: &str = "m.safetensors";

/// Small nets covering 2-D and 4-D weights, several layers, and normalisation parameters.
fn fuzz_nets() -> Vec<NetSpec> {
    vec![
        NetSpec::mlp(6, &[5], 4, Activation::Relu),
        NetSpec::mlp(2, &[], 3, Activation::Relu),
        NetSpec::mlp(4, &[3, 2], 2, Activation::Tanh),
        NetSpec::mlp(1, &[1], 1, Activation::Sigmoid),
        NetSpec::sequential([1, 4, 4], parse_layers("conv2x3,bn,relu,affine3").unwrap()).unwrap(),
    ]
}

/// The ways a valid checkpoint gets written: ours with and without metadata, and files mixing
/// dtypes or holding tensors the net does not use, as numpy or an optimizer dump would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Writer {
    Save,
    SaveWithoutMetadata,
    F64WithExtras,
    MixedDtypes,
}

struct Base {
    bytes: Vec<u8>,
    layout: ParamLayout,
    metadata: BTreeMap<String, String>,
    /// Tensors the net does not use: (name, shape).
    extras: Vec<(String, Vec<usize>)>,
}

fn fuzz_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "spec".to_string(),
            r#"{"input":6,"hidden":[5]}"#.to_string(),
        ),
        ("step".to_string(), "1200".to_string()),
        ("ünïcødé".to_string(), "√2 ≈ 1.41".to_string()),
    ])
}

/// Written once per (net, writer) and cached: `save` syncs to disk, which would dominate the
/// run if every case paid for it.
fn base_checkpoint(net: usize, writer: Writer) -> Arc<Base> {
    type Cache = Mutex<HashMap<(usize, Writer), Arc<Base>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(base) = cache.lock().unwrap().get(&(net, writer)) {
        return base.clone();
    }
    let layout = fuzz_nets()[net].layout();
    // Values not exactly representable in f32, so that narrowing is exercised.
    let params: Vec<f64> = (0..layout.total)
        .map(|i| (i as f64 * 0.37 - 1.1).sin() * 3.0)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CHECKPOINT);
    let tensor = |t: &wgrad::nn::TensorInfo| params[t.offset..t.offset + t.numel].to_vec();
    let (metadata, extras) = match writer {
        Writer::Save => {
            checkpoint::save(&path, &layout, &params, &fuzz_metadata()).unwrap();
            (fuzz_metadata(), vec![])
        }
        Writer::SaveWithoutMetadata => {
            checkpoint::save(&path, &layout, &params, &BTreeMap::new()).unwrap();
            (BTreeMap::new(), vec![])
        }
        Writer::F64WithExtras => {
            let mut tensors: Vec<_> = (layout.tensors.iter())
                .map(|t| (t.name.clone(), t.shape.clone(), TensorData::F64(tensor(t))))
                .collect();
            tensors.push((
                "optimizer.momentum".into(),
                vec![2, 2],
                TensorData::F32(vec![0.5, -0.25, 1e-3, 7.0]),
            ));
            tensors.push(("step".into(), vec![], TensorData::F64(vec![42.0])));
            checkpoint::save_tensors(&path, &tensors, &fuzz_metadata()).unwrap();
            let extras = vec![
                ("optimizer.momentum".to_string(), vec![2, 2]),
                ("step".to_string(), vec![]),
            ];
            (fuzz_metadata(), extras)
        }
        Writer::MixedDtypes => {
            let tensors: Vec<_> = (layout.tensors.iter().enumerate())
                .map(|(i, t)| {
                    let data = if i % 2 == 0 {
                        TensorData::F32(tensor(t).iter().map(|&v| v as f32).collect())
                    } else {
                        TensorData::F64(tensor(t))
                    };
                    (t.name.clone(), t.shape.clone(), data)
                })
                .collect();
            checkpoint::save_tensors(&path, &tensors, &BTreeMap::new()).unwrap();
            (BTreeMap::new(), vec![])
        }
    };
    let base = Arc::new(Base {
        bytes: fs::read(&path).unwrap(),
        layout,
        metadata,
        extras,
    });
    cache.lock().unwrap().insert((net, writer), base.clone());
    base
}

/// A tensor's header entry, as a valid file has it.
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    offsets: (usize, usize),
}

/// A safetensors file taken apart: its header entries (in file order, `__metadata__` included),
/// the header text, and the data.
struct Parts {
    entries: Vec<(String, Value)>,
    header: Vec<u8>,
    data: Vec<u8>,
}

fn split_safetensors(bytes: &[u8]) -> Parts {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = bytes[8..8 + n].to_vec();
    let map: serde_json::Map<String, Value> = serde_json::from_slice(&header).unwrap();
    Parts {
        entries: map.into_iter().collect(),
        header,
        data: bytes[8 + n..].to_vec(),
    }
}

fn tensor_entries(entries: &[(String, Value)]) -> Vec<Entry> {
    (entries.iter())
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| Entry {
            name: name.clone(),
            dtype: v["dtype"].as_str().unwrap().to_string(),
            shape: (v["shape"].as_array().unwrap().iter())
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            offsets: (
                v["data_offsets"][0].as_u64().unwrap() as usize,
                v["data_offsets"][1].as_u64().unwrap() as usize,
            ),
        })
        .collect()
}

/// Changes to the parsed header.
#[derive(Clone, Debug)]
enum HeaderMut {
    Dtype(Index, &'static str),
    Shape(Index, ShapeValue),
    Offsets(Index, OffsetsValue),
    Remove(Index),
    Rename(Index, NameValue),
    /// The same key twice, the copy shifted by this many bytes.
    Duplicate(Index, i8),
    UnknownField(Index),
    Metadata(MetadataValue),
    /// Trailing spaces, which writers add for alignment and readers must accept.
    Pad(u8),
}

#[derive(Clone, Debug)]
enum ShapeValue {
    Literal(&'static str),
    Transposed,
    Grow(usize),
}

#[derive(Clone, Debug)]
enum OffsetsValue {
    Literal(&'static str),
    Reversed,
    WholeData,
    Shift(i8),
    EndAt(u64),
    /// Another tensor's offsets: two tensors over the same bytes.
    SameAs(Index),
}

#[derive(Clone, Debug)]
enum NameValue {
    Literal(&'static str),
    /// Another tensor's name: a duplicate key.
    SameAs(Index),
}

#[derive(Clone, Debug)]
enum MetadataValue {
    Literal(&'static str),
    LongString(usize),
}

/// Changes to the header as text, after it is serialised.
#[derive(Clone, Debug)]
enum TextMut {
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index),
    Replace(String),
}

/// The 8-byte little-endian header length.
#[derive(Clone, Debug)]
enum LenValue {
    Set(u64),
    Nudge(i16),
    FileLength,
}

/// Changes to the tensor data.
#[derive(Clone, Debug)]
enum DataMut {
    Flip(Index, u8),
    NonFinite(Index, Index, NonFinite),
    Truncate(Index),
    Append(Vec<u8>),
}

#[derive(Clone, Copy, Debug)]
enum NonFinite {
    Nan,
    Inf,
    NegInf,
    /// A NaN with payload bits and the sign set, which a careless check might miss.
    OddNan,
}

impl NonFinite {
    fn f32(self) -> f32 {
        match self {
            NonFinite::Nan => f32::NAN,
            NonFinite::Inf => f32::INFINITY,
            NonFinite::NegInf => f32::NEG_INFINITY,
            NonFinite::OddNan => f32::from_bits(0xffc0_1234),
        }
    }

    fn f64(self) -> f64 {
        match self {
            NonFinite::OddNan => f64::from_bits(0xfff8_0000_1234_5678),
            other => f64::from(other.f32()),
        }
    }
}

/// Rewrites of a valid file into another valid file, one that the net may not be able to use.
#[derive(Clone, Debug)]
enum Reencode {
    /// Stores the tensor in another dtype, its values converted.
    Dtype(Index, &'static str),
    Reshape(Index, Reshape),
    /// Renames the tensor, so that a net needing it misses it.
    Rename(Index, &'static str),
    Drop(Index),
}

#[derive(Clone, Copy, Debug)]
enum Reshape {
    Transpose,
    Flatten,
    UnitDim,
}

/// Every dtype whose size is a whole number of bytes, so that the file stays well-formed.
const REENCODE_DTYPES: &[&str] = &[
    "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "C64",
];

fn reencode() -> impl Strategy<Value = Reencode> {
    prop_oneof![
        4 => (any::<Index>(), prop::sample::select(REENCODE_DTYPES))
            .prop_map(|(t, d)| Reencode::Dtype(t, d)),
        2 => (
            any::<Index>(),
            prop::sample::select(vec![Reshape::Transpose, Reshape::Flatten, Reshape::UnitDim]),
        )
            .prop_map(|(t, r)| Reencode::Reshape(t, r)),
        1 => (any::<Index>(), prop::sample::select(vec!["W1.renamed", "w1", "W01", "b"]))
            .prop_map(|(t, n)| Reencode::Rename(t, n)),
        1 => any::<Index>().prop_map(Reencode::Drop),
    ]
}

/// A tensor as `safetensors::serialize` takes it.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// IEEE binary16 bits of `v`, rounding toward zero; subnormals flush to zero.
fn f16_bits(v: f64) -> u16 {
    let bits = (v as f32).to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    match exp {
        ..=0 => sign,
        31.. => sign | 0x7c00,
        e => sign | ((e as u16) << 10) | ((bits >> 13) & 0x3ff) as u16,
    }
}

fn encode(dtype: &str, values: &[f64]) -> Stored {
    let bytes: Vec<u8> = match dtype {
        "F32" => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        "F64" | "C64" => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        "F16" => values
            .iter()
            .flat_map(|&v| f16_bits(v).to_le_bytes())
            .collect(),
        "BF16" => (values.iter())
            .flat_map(|&v| (((v as f32).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        "I64" | "U64" => values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
        "I32" | "U32" => values
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
        "I16" | "U16" => values
            .iter()
            .flat_map(|&v| (v as i16).to_le_bytes())
            .collect(),
        "BOOL" => values.iter().map(|&v| u8::from(v != 0.0)).collect(),
        _ => values.iter().map(|&v| v as i8 as u8).collect(),
    };
    Stored {
        dtype: serde_json::from_value(json!(dtype)).unwrap(),
        shape: vec![],
        bytes,
    }
}

const DTYPES: &[&str] = &[
    "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F4", "C64", "", "f32", "FLOAT",
];

const SHAPES: &[&str] = &[
    "[]",
    "[0]",
    "[1]",
    "[2, 3]",
    "[18446744073709551615]",
    "[18446744073709551615, 2]",
    "[4294967296, 4294967296]",
    "[9223372036854775808, 2]",
    "[1000000000, 1000]",
    "[-1]",
    "[1.5]",
    "[\"2\"]",
    "\"abc\"",
    "null",
    "{}",
];

const OFFSETS: &[&str] = &[
    "[0, 0]",
    "[0, 4]",
    "[4, 0]",
    "[0, 18446744073709551615]",
    "[18446744073709551615, 18446744073709551615]",
    "[18446744073709551615, 0]",
    "[0, 4000000000000]",
    "[0]",
    "[0, 4, 8]",
    "[-1, 4]",
    "[1e30, 1e30]",
    "\"0-4\"",
    "null",
];

const NAMES: &[&str] = &[
    "",
    "__metadata__",
    "W1",
    "b1",
    "ünïcødé",
    "W1 ",
    "w1",
    "\u{0}",
];

const METADATA: &[&str] = &[
    "{}",
    r#"{"a": "b"}"#,
    r#"{"a": 1}"#,
    r#"{"a": null}"#,
    r#"{"a": {"b": "c"}}"#,
    r#"{"a": ["b"]}"#,
    "[]",
    "\"x\"",
    "null",
    "1",
];

fn header_mut() -> impl Strategy<Value = HeaderMut> {
    let shape = prop_oneof![
        3 => prop::sample::select(SHAPES).prop_map(ShapeValue::Literal),
        1 => Just(ShapeValue::Transposed),
        1 => (1usize..3).prop_map(ShapeValue::Grow),
    ];
    let offsets = prop_oneof![
        3 => prop::sample::select(OFFSETS).prop_map(OffsetsValue::Literal),
        1 => Just(OffsetsValue::Reversed),
        1 => Just(OffsetsValue::WholeData),
        2 => (-8i8..=8).prop_map(OffsetsValue::Shift),
        1 => any::<u64>().prop_map(OffsetsValue::EndAt),
        1 => any::<Index>().prop_map(OffsetsValue::SameAs),
    ];
    let name = prop_oneof![
        2 => prop::sample::select(NAMES).prop_map(NameValue::Literal),
        1 => any::<Index>().prop_map(NameValue::SameAs),
    ];
    let metadata = prop_oneof![
        4 => prop::sample::select(METADATA).prop_map(MetadataValue::Literal),
        1 => (1usize..100_000).prop_map(MetadataValue::LongString),
    ];
    prop_oneof![
        3 => (any::<Index>(), prop::sample::select(DTYPES))
            .prop_map(|(t, d)| HeaderMut::Dtype(t, d)),
        3 => (any::<Index>(), shape).prop_map(|(t, s)| HeaderMut::Shape(t, s)),
        3 => (any::<Index>(), offsets).prop_map(|(t, o)| HeaderMut::Offsets(t, o)),
        1 => any::<Index>().prop_map(HeaderMut::Remove),
        1 => (any::<Index>(), name).prop_map(|(t, n)| HeaderMut::Rename(t, n)),
        1 => (any::<Index>(), -8i8..=8).prop_map(|(t, s)| HeaderMut::Duplicate(t, s)),
        1 => any::<Index>().prop_map(HeaderMut::UnknownField),
        2 => metadata.prop_map(HeaderMut::Metadata),
        1 => (1u8..16).prop_map(HeaderMut::Pad),
    ]
}

fn text_mut() -> impl Strategy<Value = TextMut> {
    prop_oneof![
        2 => any::<Index>().prop_map(TextMut::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| TextMut::Insert(at, b)),
        2 => any::<Index>().prop_map(TextMut::Delete),
        1 => prop_oneof![
            Just(String::new()),
            Just("{".to_string()),
            Just("{}".to_string()),
            Just("[]".to_string()),
            Just("null".to_string()),
            "\\PC{0,40}",
        ]
        .prop_map(TextMut::Replace),
    ]
}

fn len_value() -> impl Strategy<Value = LenValue> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u64,
            1,
            2,
            7,
            8,
            u64::from(u32::MAX),
            4_000_000_000,
            100_000_000,
            100_000_001,
            1 << 63,
            u64::MAX,
            u64::MAX - 7,
        ])
        .prop_map(LenValue::Set),
        3 => (-16i16..=16).prop_map(LenValue::Nudge),
        1 => Just(LenValue::FileLength),
        1 => any::<u64>().prop_map(LenValue::Set),
    ]
}

fn non_finite() -> impl Strategy<Value = NonFinite> {
    prop::sample::select(vec![
        NonFinite::Nan,
        NonFinite::Inf,
        NonFinite::NegInf,
        NonFinite::OddNan,
    ])
}

/// Changes to values only: the file stays well-formed, so the oracle knows the exact outcome.
fn in_place_data_mut() -> impl Strategy<Value = DataMut> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| DataMut::Flip(at, mask)),
        2 => (any::<Index>(), any::<Index>(), non_finite())
            .prop_map(|(t, e, v)| DataMut::NonFinite(t, e, v)),
    ]
}

fn data_mut() -> impl Strategy<Value = DataMut> {
    prop_oneof![
        3 => in_place_data_mut(),
        1 => any::<Index>().prop_map(DataMut::Truncate),
        1 => vec(any::<u8>(), 1..9).prop_map(DataMut::Append),
    ]
}

#[derive(Clone, Debug)]
struct SafetensorsCase {
    net: usize,
    writer: Writer,
    reencode: Vec<Reencode>,
    header: Vec<HeaderMut>,
    text: Vec<TextMut>,
    len: Option<LenValue>,
    data: Vec<DataMut>,
    file: Vec<FileMut>,
    /// Which tensor `load_optional` is asked for.
    pick: Index,
}

impl SafetensorsCase {
    /// Whether the file may no longer be well-formed, so that only the invariants, not exact
    /// values, can be checked.
    fn structural(&self) -> bool {
        !self.header.is_empty()
            || !self.text.is_empty()
            || self.len.is_some()
            || !self.file.is_empty()
            || (self.data.iter()).any(|m| matches!(m, DataMut::Truncate(_) | DataMut::Append(_)))
    }
}

fn safetensors_case() -> impl Strategy<Value = SafetensorsCase> {
    let base = (
        0..fuzz_nets().len(),
        prop::sample::select(vec![
            Writer::Save,
            Writer::SaveWithoutMetadata,
            Writer::F64WithExtras,
            Writer::MixedDtypes,
        ]),
        any::<Index>(),
    );
    let reencodes = prop_oneof![2 => Just(vec![]), 1 => vec(reencode(), 1..3)];
    let rare_text = prop_oneof![4 => Just(vec![]), 1 => vec(text_mut(), 1..3)];
    let rare_len = prop_oneof![3 => Just(None), 1 => len_value().prop_map(Some)];
    let plan = prop_oneof![
        // Untouched: must load exactly.
        2 => Just((vec![], vec![], None, vec![], vec![])),
        // Values only: must load exactly, or fail naming the non-finite tensor.
        3 => vec(in_place_data_mut(), 1..4).prop_map(|data| (vec![], vec![], None, data, vec![])),
        // Anything goes.
        7 => (
            vec(header_mut(), 0..3),
            rare_text,
            rare_len,
            vec(data_mut(), 0..2),
            prop_oneof![3 => Just(vec![]), 1 => vec(file_mut(), 1..3)],
        ),
    ];
    (base, reencodes, plan).prop_map(
        |((net, writer, pick), reencode, (header, text, len, data, file))| SafetensorsCase {
            net,
            writer,
            reencode,
            header,
            text,
            len,
            data,
            file,
            pick,
        },
    )
}

fn apply_header_mut(entries: &mut Vec<(String, Value)>, m: &HeaderMut) {
    let tensors: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].0 != "__metadata__")
        .collect();
    let pick = |at: &Index| tensors[at.index(tensors.len())];
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let per_tensor = !matches!(m, HeaderMut::Metadata(_) | HeaderMut::Pad(_));
    if per_tensor && tensors.is_empty() {
        return;
    }
    match m {
        HeaderMut::Dtype(at, dtype) => entries[pick(at)].1["dtype"] = json!(dtype),
        HeaderMut::Shape(at, value) => {
            let entry = &mut entries[pick(at)].1;
            entry["shape"] = match value {
                ShapeValue::Literal(text) => parse(text),
                ShapeValue::Transposed => match entry["shape"].as_array() {
                    Some(dims) => Value::Array(dims.iter().rev().cloned().collect()),
                    None => entry["shape"].clone(),
                },
                ShapeValue::Grow(by) => match entry["shape"].as_array() {
                    Some(dims) if !dims.is_empty() => {
                        let mut dims = dims.clone();
                        dims[0] = json!(dims[0].as_u64().unwrap_or(0) + *by as u64);
                        Value::Array(dims)
                    }
                    _ => json!([by]),
                },
            };
        }
        HeaderMut::Offsets(at, value) => {
            let i = pick(at);
            let old = entries[i].1["data_offsets"].clone();
            let (start, end) = (old[0].as_i64().unwrap_or(0), old[1].as_i64().unwrap_or(0));
            entries[i].1["data_offsets"] = match value {
                OffsetsValue::Literal(text) => parse(text),
                OffsetsValue::Reversed => json!([end, start]),
                OffsetsValue::WholeData => {
                    let end = (entries.iter())
                        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
                        .max()
                        .unwrap_or(0);
                    json!([0, end])
                }
                OffsetsValue::Shift(by) => {
                    json!([start + i64::from(*by), end + i64::from(*by)])
                }
                OffsetsValue::EndAt(end) => json!([start, end]),
                OffsetsValue::SameAs(other) => entries[pick(other)].1["data_offsets"].clone(),
            };
        }
        HeaderMut::Remove(at) => {
            entries.remove(pick(at));
        }
        HeaderMut::Rename(at, value) => {
            let i = pick(at);
            entries[i].0 = match value {
                NameValue::Literal(name) => name.to_string(),
                NameValue::SameAs(other) => entries[pick(other)].0.clone(),
            };
        }
        HeaderMut::Duplicate(at, shift) => {
            let (name, mut value) = entries[pick(at)].clone();
            if let (Some(s), Some(e)) = (
                value["data_offsets"][0].as_i64(),
                value["data_offsets"][1].as_i64(),
            ) {
                let by = i64::from(*shift);
                value["data_offsets"] = json!([s + by, e + by]);
            }
            entries.push((name, value));
        }
        HeaderMut::UnknownField(at) => {
            entries[pick(at)].1["extra_field"] = json!({"nested": [1, 2, 3]});
        }
        HeaderMut::Metadata(value) => {
            let value = match value {
                MetadataValue::Literal(text) => parse(text),
                MetadataValue::LongString(n) => json!({ "long": "x".repeat(*n) }),
            };
            entries.retain(|(name, _)| name != "__metadata__");
            entries.insert(0, ("__metadata__".to_string(), value));
        }
        // Applied to the text, after serialisation.
        HeaderMut::Pad(_) => {}
    }
}

/// Serialises entries by hand: serde_json's map cannot hold the duplicate keys being tested.
fn header_text(entries: &[(String, Value)]) -> Vec<u8> {
    let items: Vec<String> = (entries.iter())
        .map(|(name, value)| format!("{}:{value}", json!(name)))
        .collect();
    format!("{{{}}}", items.join(",")).into_bytes()
}

fn apply_text_mut(text: &mut Vec<u8>, m: &TextMut) {
    match m {
        TextMut::Truncate(at) => text.truncate(at.index(text.len() + 1)),
        TextMut::Insert(at, byte) => text.insert(at.index(text.len() + 1), *byte),
        TextMut::Delete(at) => {
            if !text.is_empty() {
                text.remove(at.index(text.len()));
            }
        }
        TextMut::Replace(new) => *text = new.clone().into_bytes(),
    }
}

fn apply_data_mut(data: &mut Vec<u8>, entries: &[Entry], m: &DataMut) {
    match m {
        DataMut::Flip(at, mask) => {
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] ^= mask;
            }
        }
        DataMut::NonFinite(_, _, _) if entries.is_empty() => {}
        DataMut::NonFinite(tensor, element, value) => {
            let entry = &entries[tensor.index(entries.len())];
            let (start, end) = entry.offsets;
            let bytes = match entry.dtype.as_str() {
                "F32" => value.f32().to_le_bytes().to_vec(),
                "F64" => value.f64().to_le_bytes().to_vec(),
                "F16" => {
                    let bits = match value {
                        NonFinite::Nan => 0x7e00u16,
                        NonFinite::Inf => 0x7c00,
                        NonFinite::NegInf => 0xfc00,
                        NonFinite::OddNan => 0xfe01,
                    };
                    bits.to_le_bytes().to_vec()
                }
                "BF16" => ((value.f32().to_bits() >> 16) as u16)
                    .to_le_bytes()
                    .to_vec(),
                // Integers have no non-finite values.
                _ => return,
            };
            let width = bytes.len();
            let count = (end - start) / width;
            if count > 0 && end <= data.len() {
                let at = start + width * element.index(count);
                data[at..at + width].copy_from_slice(&bytes);
            }
        }
        DataMut::Truncate(at) => data.truncate(at.index(data.len() + 1)),
        DataMut::Append(extra) => data.extend(extra),
    }
}

/// The base file, rewritten by `reencodes` (still well-formed).
fn reencoded(base: &Base, reencodes: &[Reencode]) -> Vec<u8> {
    if reencodes.is_empty() {
        return base.bytes.clone();
    }
    let parts = split_safetensors(&base.bytes);
    // The original values travel along, so that every conversion starts from them.
    let mut tensors: Vec<(String, Stored, Vec<f64>)> = tensor_entries(&parts.entries)
        .into_iter()
        .map(|e| {
            let values = decode(&e.dtype, &parts.data[e.offsets.0..e.offsets.1]).unwrap();
            let mut stored = encode(&e.dtype, &values);
            stored.shape = e.shape;
            (e.name, stored, values)
        })
        .collect();
    for r in reencodes {
        if tensors.is_empty() {
            break;
        }
        let len = tensors.len();
        match r {
            Reencode::Dtype(at, dtype) => {
                let (_, t, values) = &mut tensors[at.index(len)];
                let shape = std::mem::take(&mut t.shape);
                *t = encode(dtype, values);
                t.shape = shape;
            }
            Reencode::Reshape(at, how) => {
                let (_, t, _) = &mut tensors[at.index(len)];
                match how {
                    Reshape::Transpose => t.shape.reverse(),
                    Reshape::Flatten => t.shape = vec![t.shape.iter().product()],
                    Reshape::UnitDim => t.shape.insert(0, 1),
                }
            }
            Reencode::Rename(at, name) => {
                let i = at.index(len);
                if tensors.iter().all(|(n, ..)| n != name) {
                    tensors[i].0 = name.to_string();
                }
            }
            Reencode::Drop(at) => {
                tensors.remove(at.index(len));
            }
        }
    }
    let metadata = (!base.metadata.is_empty())
        .then(|| base.metadata.clone().into_iter().collect::<HashMap<_, _>>());
    let views = tensors.into_iter().map(|(name, stored, _)| (name, stored));
    safetensors::serialize(views, metadata).unwrap()
}

/// The file `case` describes (None: removed).
fn safetensors_file(case: &SafetensorsCase, base: &Base) -> Option<Vec<u8>> {
    let parts = split_safetensors(&reencoded(base, &case.reencode));
    let original = tensor_entries(&parts.entries);
    let mut header = parts.header;
    if !case.header.is_empty() || !case.text.is_empty() {
        let mut entries = parts.entries;
        for m in &case.header {
            apply_header_mut(&mut entries, m);
        }
        header = header_text(&entries);
        for m in &case.header {
            if let HeaderMut::Pad(n) = m {
                header.extend(std::iter::repeat_n(b' ', usize::from(*n)));
            }
        }
        for m in &case.text {
            apply_text_mut(&mut header, m);
        }
    }
    let mut data = parts.data;
    for m in &case.data {
        apply_data_mut(&mut data, &original, m);
    }
    let actual = header.len() as u64;
    let len = match case.len {
        None => actual,
        Some(LenValue::Set(v)) => v,
        Some(LenValue::Nudge(d)) => actual.wrapping_add_signed(i64::from(d)),
        Some(LenValue::FileLength) => 8 + actual + data.len() as u64,
    };
    let bytes = [len.to_le_bytes().to_vec(), header, data].concat();
    apply_file_muts(bytes, &case.file)
}

/// Values of a float tensor; None for the dtypes a checkpoint may not hold.
fn decode(dtype: &str, bytes: &[u8]) -> Option<Vec<f64>> {
    let halves = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Some(match dtype {
        "F32" => (bytes.chunks_exact(4))
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        "F64" => (bytes.chunks_exact(8))
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "BF16" => halves()
            .map(|h| f64::from(f32::from_bits(u32::from(h) << 16)))
            .collect(),
        "F16" => halves()
            .map(|h| {
                let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
                let (exp, frac) = (i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
                match exp {
                    0 => sign * frac * 2f64.powi(-24),
                    31 if frac == 0.0 => sign * f64::INFINITY,
                    31 => f64::NAN,
                    e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
                }
            })
            .collect(),
        _ => return None,
    })
}

fn checkpoint_error_kind(message: &str) -> &'static str {
    [
        ("not a safetensors file", "not-safetensors"),
        ("has no tensor named", "missing-tensor"),
        ("in the file but the net needs", "wrong-shape"),
        ("has dtype", "wrong-dtype"),
        (" holds ", "non-finite"),
        ("no such file", "no-file"),
        ("the net needs", "too-few-bytes"),
    ]
    .into_iter()
    .find(|(needle, _)| message.contains(needle))
    .map_or("other", |(_, kind)| kind)
}

type Outcome<T> = Result<T, String>;

/// Every public reader on one file.
struct Reads {
    load: Outcome<checkpoint::Checkpoint>,
    metadata: Outcome<BTreeMap<String, String>>,
    optional: Outcome<Option<Vec<f64>>>,
    absent: Outcome<Option<Vec<f64>>>,
}

fn check_safetensors_case(case: SafetensorsCase, tally: &Tally) -> TestCaseResult {
    let base = base_checkpoint(case.net, case.writer);
    let layout = base.layout.clone();
    let file = safetensors_file(&case, &base);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CHECKPOINT);
    if let Some(bytes) = &file {
        fs::write(&path, bytes).unwrap();
    }
    let file_len = file.as_ref().map_or(0, Vec::len);

    // load_optional is asked for a layout tensor or an extra, with the shape the writer gave it.
    let candidates: Vec<(String, Vec<usize>)> = (layout.tensors.iter())
        .map(|t| (t.name.clone(), t.shape.clone()))
        .chain(base.extras.iter().cloned())
        .collect();
    let (pick_name, pick_shape) = candidates[case.pick.index(candidates.len())].clone();

    let run = {
        let (layout, path, pick_name, pick_shape) = (
            layout.clone(),
            path.clone(),
            pick_name.clone(),
            pick_shape.clone(),
        );
        measured(move || {
            let text = |e: wgrad::Error| e.to_string();
            Reads {
                load: checkpoint::load(&path, &layout).map_err(text),
                metadata: checkpoint::read_metadata(&path).map_err(text),
                optional: checkpoint::load_optional(&path, &pick_name, &pick_shape).map_err(text),
                absent: checkpoint::load_optional(&path, "no-such-tensor", &[3]).map_err(text),
            }
        })
    };
    prop_assert!(
        run.largest_allocation <= FIXED_ALLOCATION + 4 * file_len,
        "allocated {} bytes for a {file_len}-byte file",
        run.largest_allocation
    );
    let reads = run.value;

    // Every error names the file, and the readers agree on whether it parses at all.
    let errors = [
        reads.load.as_ref().err(),
        reads.metadata.as_ref().err(),
        reads.optional.as_ref().err(),
        reads.absent.as_ref().err(),
    ];
    for msg in errors.into_iter().flatten() {
        prop_assert!(
            msg.contains(CHECKPOINT),
            "error does not name the file: {msg}"
        );
    }
    prop_assert_eq!(reads.metadata.is_ok(), reads.absent.is_ok());
    if let Ok(absent) = &reads.absent {
        prop_assert!(absent.is_none());
    }

    if case.structural() {
        // Whatever the damage, a successful load must be internally consistent.
        if let Ok(ck) = &reads.load {
            prop_assert_eq!(ck.params.len(), layout.total);
            prop_assert!(ck.params.iter().all(|v| v.is_finite()));
            prop_assert_eq!(reads.metadata.as_ref().ok(), Some(&ck.metadata));
            if let Some(t) = layout.get(&pick_name) {
                let expected = ck.params[t.offset..t.offset + t.numel].to_vec();
                prop_assert_eq!(reads.optional.as_ref().ok(), Some(&Some(expected)));
            }
        }
    } else {
        let file = file.expect("only structural cases remove the file");
        let parts = split_safetensors(&file);
        let entries = tensor_entries(&parts.entries);
        let find = |name: &str| entries.iter().find(|e| e.name == name);
        let values = |e: &Entry| decode(&e.dtype, &parts.data[e.offsets.0..e.offsets.1]);
        // What is wrong with each tensor the net needs. Non-finite values must be named in the
        // error; for the other problems any error will do, since a reader may well catch a file
        // of the wrong net by a cheaper check first.
        let mut problems = vec![];
        let mut non_finite = vec![];
        let mut expected = vec![0.0; layout.total];
        for t in &layout.tensors {
            let Some(e) = find(&t.name) else {
                problems.push(format!("has no tensor named {}", t.name));
                continue;
            };
            if e.shape != t.shape {
                problems.push(format!("tensor {} has shape", t.name));
                continue;
            }
            match values(e) {
                None => problems.push(format!("tensor {} has dtype {}", t.name, e.dtype)),
                Some(v) if v.iter().any(|x| !x.is_finite()) => {
                    non_finite.push(format!("tensor {} holds", t.name))
                }
                Some(v) => expected[t.offset..t.offset + t.numel].copy_from_slice(&v),
            }
        }
        prop_assert_eq!(reads.metadata.as_ref().ok(), Some(&base.metadata));
        match &reads.load {
            Ok(ck) => {
                prop_assert!(
                    problems.is_empty() && non_finite.is_empty(),
                    "loaded a file the net cannot use: {problems:?} {non_finite:?}"
                );
                prop_assert_eq!(&ck.params, &expected);
                prop_assert_eq!(&ck.metadata, &base.metadata);
            }
            Err(msg) if problems.is_empty() => prop_assert!(
                (non_finite.iter()).any(|p| msg.contains(p))
                    && (msg.contains("NaN") || msg.contains("inf")),
                "the error does not name the non-finite tensor, one of {:?}: {}",
                non_finite,
                msg
            ),
            Err(_) => {}
        }
        let expected_optional = match find(&pick_name) {
            None => Ok(None),
            Some(e) if e.shape != pick_shape => Err("has shape"),
            Some(e) => match values(e) {
                None => Err("has dtype"),
                Some(v) if v.iter().any(|x| !x.is_finite()) => Err("non-finite"),
                Some(v) => Ok(Some(v)),
            },
        };
        match (&reads.optional, expected_optional) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got, &want),
            (Err(msg), Err(why)) => prop_assert!(
                msg.contains(&pick_name)
                    && (why != "non-finite"
                        || ["non-finite", "NaN", "inf"].iter().any(|w| msg.contains(w))),
                "load_optional({}) should fail naming the tensor and why ({}): {}",
                pick_name,
                why,
                msg
            ),
            (got, want) => prop_assert!(
                false,
                "load_optional({pick_name}) gave {got:?}, expected {want:?}"
            ),
        }
    }
    tally.add(match &reads.load {
        Ok(_) => "Ok",
        Err(msg) => checkpoint_error_kind(msg),
    });
    if case.structural() && reads.load.is_ok() {
        tally.add("Ok after structural damage");
    }
    Ok(())
}

fn safetensors_property(cases: u32, seeding: Seeding) {
    let tally = Tally::default();
    run_property(
        "safetensors",
        cases,
        seeding,
        safetensors_case(),
        &tally,
        |case| check_safetensors_case(case, &tally),
    );
    // "Ok after structural damage" is counted on top of "Ok", so fractions are of a larger total;
    // the thresholds allow for that.
    tally.require("safetensors", "Ok", 0.10);
    tally.require("safetensors", "Ok after structural damage", 0.01);
    for (kind, min) in [
        ("not-safetensors", 0.10),
        ("non-finite", 0.05),
        ("wrong-dtype", 0.005),
        ("wrong-shape", 0.005),
        ("missing-tensor", 0.005),
        ("no-file", 0.001),
    ] {
        tally.require("safetensors", kind, min);
    }
}

#[test]
fn checkpoints_load_or_fail_cleanly() {
    safetensors_property(1500, Seeding::Fixed(0x5afe_7e45));
}

#[test]
#[ignore = "long fuzz run: cargo test --release --test fuzz -- --ignored _long"]
fn checkpoints_load_or_fail_cleanly_long() {
    safetensors_property(50_000, Seeding::Fresh);
}

/// A header length or a tensor size far beyond the file must be refused before anything of that
/// size is allocated.
#[test]
fn safetensors_huge_header_over_tiny_file_fails_fast() {
    let with_len = |len: u64, header: &str, data: usize| {
        [
            len.to_le_bytes().to_vec(),
            header.as_bytes().to_vec(),
            vec![0; data],
        ]
        .concat()
    };
    let header = |dtype: &str, shape: &str, end: u64| {
        format!(r#"{{"W1":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[0,{end}]}}}}"#)
    };
    let huge = header("F32", "[1000000000,1000]", 4_000_000_000_000);
    let overflowing = header("F64", "[4611686018427387904,4]", u64::MAX);
    let files = [
        with_len(u64::MAX, "{}", 16),
        with_len(4_000_000_000, "{}", 16),
        with_len(1 << 40, &huge, 16),
        with_len(huge.len() as u64, &huge, 16),
        with_len(overflowing.len() as u64, &overflowing, 16),
    ];
    let layout = NetSpec::mlp(6, &[5], 4, Activation::Relu).layout();
    for bytes in files {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT);
        fs::write(&path, &bytes).unwrap();
        let layout = layout.clone();
        let run = measured(move || {
            (
                checkpoint::load(&path, &layout).is_err(),
                checkpoint::read_metadata(&path).is_err(),
                checkpoint::load_optional(&path, "W1", &[1_000_000_000, 1000]).is_err(),
            )
        });
        assert_eq!(run.value, (true, true, true), "{bytes:?}");
        assert!(
            run.largest_allocation < FIXED_ALLOCATION,
            "allocated {} bytes for a {}-byte file",
            run.largest_allocation,
            bytes.len()
        );
        assert!(run.elapsed < Duration::from_secs(1), "{:?}", run.elapsed);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Layer specs.

/// Numbers as a user might type them, valid or not: small sizes that fit a 28×28 image, limits
/// of the GPU code, integer boundaries, and things that only look like numbers.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (1usize..=6).prop_map(|n| n.to_string()),
        2 => (7usize..=40).prop_map(|n| n.to_string()),
        3 => prop::sample::select(vec![
            "0",
            "28",
            "29",
            "100",
            "65504",
            "65505",
            "21800",
            "21801",
            "4294967295",
            "4294967296",
            "1152921504606846976",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "-1",
            "+3",
            "1e308",
            "1e3",
            "3.0",
            "nan",
            "inf",
            "-0",
            "0x10",
            "1_0",
            "٣",
            "３",
            "",
            " 3",
            "3 ",
        ])
        .prop_map(String::from),
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ]
}

fn probability_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0.0f64..1.0).prop_map(|p| p.to_string()),
        3 => prop::sample::select(vec![
            "0", "0.5", "0.25", "0.999999", "1", "1.0", "1.5", "-0", "-0.0", "-1", "nan", "NaN",
            "inf", "-inf", "infinity", "1e308", "1e-308", "5e-324", "0.5.5", "", ".5", "5.",
            "+0.5", "0x1", "0,5", " 0.5",
        ])
        .prop_map(String::from),
        1 => any::<f64>().prop_map(|p| p.to_string()),
    ]
}

fn optional_suffix(letter: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => number_text().prop_map(move |n| format!("{letter}{n}")),
    ]
}

fn layer_word() -> impl Strategy<Value = String> {
    let conv = (
        prop::sample::select(vec!["conv", "CONV", "Conv"]),
        number_text(),
        number_text(),
        optional_suffix("s"),
        optional_suffix("p"),
        any::<bool>(),
    )
        .prop_map(|(word, filters, size, stride, pad, swap)| {
            // Padding before stride is not the grammar's order; it must still not panic.
            let (a, b) = if swap { (pad, stride) } else { (stride, pad) };
            format!("{word}{filters}x{size}{a}{b}")
        });
    let pool = (
        prop::sample::select(vec!["maxpool", "avgpool", "MaxPool", "AVGPOOL"]),
        number_text(),
        optional_suffix("s"),
        prop_oneof![5 => Just(String::new()), 1 => optional_suffix("p")],
    )
        .prop_map(|(word, size, stride, pad)| format!("{word}{size}{stride}{pad}"));
    let affine = (
        prop::sample::select(vec!["affine", "AFFINE"]),
        number_text(),
    )
        .prop_map(|(word, units)| format!("{word}{units}"));
    let dropout = probability_text().prop_map(|p| format!("dropout{p}"));
    let plain = prop::sample::select(vec![
        "relu",
        "sigmoid",
        "tanh",
        "bn",
        "batchnorm",
        "ln",
        "layernorm",
        "ReLU",
        "TANH",
        "Bn",
        "relu6",
        "softmax",
        "",
        "  ",
        "conv",
        "affine",
        "maxpool",
        "dropout",
        "x",
        "İ",
        "ß",
        "ｒｅｌｕ",
        "relu\u{0}",
    ])
    .prop_map(String::from);
    prop_oneof![
        3 => conv,
        2 => pool,
        3 => affine,
        1 => dropout,
        4 => plain,
        1 => "\\PC{0,8}",
    ]
}

/// A size as a net could have it: mostly small, sometimes at a limit, a power of two that wraps
/// products to zero, or anything at all.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        10 => 1usize..=5,
        2 => 6usize..=30,
        2 => prop::sample::select(vec![
            65_504,
            65_505,
            (1 << 32) - 1,
            1 << 32,
            1 << 60,
            1 << 62,
            1 << 63,
            (1 << 63) + 1,
            usize::MAX / 784 + 1,
            usize::MAX / 2,
            usize::MAX,
        ]),
        1 => (30u32..64).prop_map(|k| 1usize << k),
        1 => any::<usize>(),
    ]
}

/// Layers as values, printed to text: every word well-formed, so that the cases reach shape
/// resolution and validation rather than stopping at the parser.
fn structured_spec_text() -> impl Strategy<Value = String> {
    let small_or = |small: std::ops::RangeInclusive<usize>| prop_oneof![6 => small, 1 => size()];
    let layer = prop_oneof![
        3 => (size(), small_or(1..=5), small_or(1..=3), small_or(0..=2)).prop_map(
            |(filters, size, stride, pad)| LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            }
        ),
        1 => (small_or(1..=3), small_or(1..=3))
            .prop_map(|(size, stride)| LayerSpec::MaxPool { size, stride }),
        1 => (small_or(1..=3), small_or(1..=3))
            .prop_map(|(size, stride)| LayerSpec::AvgPool { size, stride }),
        3 => size().prop_map(|units| LayerSpec::Affine { units }),
        1 => (0.0f64..1.0).prop_map(|p| LayerSpec::Dropout { p }),
        2 => prop::sample::select(vec![
            LayerSpec::Relu,
            LayerSpec::Sigmoid,
            LayerSpec::Tanh,
            LayerSpec::BatchNorm,
            LayerSpec::LayerNorm,
        ]),
    ];
    (vec(layer, 0..5), 1usize..=12).prop_map(|(layers, classes)| {
        let mut words: Vec<String> = layers.iter().map(ToString::to_string).collect();
        words.push(format!("affine{classes}"));
        words.join(",")
    })
}

fn spec_text() -> impl Strategy<Value = String> {
    let separator = prop::sample::select(vec![
        ",",
        ",",
        ",",
        ", ",
        " ,",
        ",,",
        " , ",
        "\t,",
        ",\u{3000}",
    ]);
    let vocabulary = (
        vec((layer_word(), separator), 0..7),
        prop_oneof![
            1 => Just(String::new()),
            4 => (1usize..=12).prop_map(|n| format!("affine{n}")),
            1 => number_text().prop_map(|n| format!("affine{n}")),
        ],
    )
        .prop_map(|(items, last)| {
            let mut text = String::new();
            for (word, sep) in items {
                text.push_str(&word);
                text.push_str(sep);
            }
            text + &last
        });
    prop_oneof![
        6 => vocabulary,
        3 => structured_spec_text(),
        1 => any::<String>(),
        1 => "[a-z0-9,. xsp+-]{0,40}",
        1 => vec(any::<char>(), 0..30).prop_map(|c| c.into_iter().collect()),
    ]
}

fn image_shape() -> impl Strategy<Value = [usize; 3]> {
    prop_oneof![
        6 => Just([1, 28, 28]),
        1 => Just([2, 6, 6]),
        1 => Just([1, 1, 1]),
        1 => Just([3, 5, 4]),
    ]
}

fn check_spec(text: String, image: [usize; 3], tally: &Tally) -> TestCaseResult {
    let run = {
        let text = text.clone();
        measured(move || {
            let parsed = parse_layers(&text);
            let built = parsed
                .as_ref()
                .ok()
                .map(|layers| NetSpec::sequential(image, layers.clone()));
            let checked = match &built {
                Some(Ok(spec)) => Some((spec.resolve().map(|r| r.1), spec.validate())),
                _ => None,
            };
            (parsed, built, checked)
        })
    };
    prop_assert!(run.largest_allocation <= FIXED_ALLOCATION + 64 * text.len());
    let (parsed, built, checked) = run.value;
    let layers = match parsed {
        Err(e) => {
            prop_assert!(e.to_string().contains("bad layer"), "{e}");
            tally.add("parse Err");
            return Ok(());
        }
        Ok(layers) => layers,
    };
    tally.add("parse Ok");
    prop_assert_eq!(layers.len(), text.split(',').count());
    // What parses must print back to text that parses to the same layers.
    let printed: Vec<String> = layers.iter().map(ToString::to_string).collect();
    prop_assert_eq!(
        parse_layers(&printed.join(",")).map_err(|e| e.to_string()),
        Ok(layers.clone())
    );
    let spec = match built.expect("built when parsed") {
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            tally.add("sequential Err");
            return Ok(());
        }
        Ok(spec) => spec,
    };
    tally.add("sequential Ok");
    let (resolved, validated) = checked.expect("checked when built");
    let layout = resolved.map_err(|e| {
        TestCaseError::fail(format!(
            "sequential accepted a spec that does not resolve: {e}"
        ))
    })?;
    match validated {
        Ok(()) => {
            tally.add("validate Ok");
            prop_assert_eq!(&spec.layout(), &layout);
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            tally.add("validate Err");
        }
    }
    Ok(())
}

fn spec_property(cases: u32, seeding: Seeding) {
    let tally = Tally::default();
    run_property(
        "layer spec",
        cases,
        seeding,
        (spec_text(), image_shape()),
        &tally,
        |(text, image)| check_spec(text, image, &tally),
    );
    // Fractions are of all tallies, which count each case once or twice.
    tally.require("layer spec", "parse Err", 0.10);
    tally.require("layer spec", "parse Ok", 0.10);
    tally.require("layer spec", "sequential Err", 0.02);
    tally.require("layer spec", "sequential Ok", 0.02);
    tally.require("layer spec", "validate Ok", 0.02);
    // Rare since resolving (in `sequential`) bounds every size: most bad nets stop there.
    tally.require("layer spec", "validate Err", 0.0005);
}

#[test]
fn layer_specs_parse_or_fail_cleanly() {
    spec_property(3000, Seeding::Fixed(0x1a7e_5bec));
}

#[test]
#[ignore = "long fuzz run: cargo test --release --test fuzz -- --ignored _long"]
fn layer_specs_parse_or_fail_cleanly_long() {
    spec_property(50_000, Seeding::Fresh);
}

/// The parameter shapes `layers` should resolve to over `image`, every size computed in checked
/// arithmetic; None where a size overflows (or a window does not fit), since no such net can be
/// built and `validate` must refuse it. A second, independent account of the shape rules.
fn checked_param_shapes(image: [usize; 3], layers: &[LayerSpec]) -> Option<Vec<Vec<usize>>> {
    fn push(shapes: &mut Vec<Vec<usize>>, total: &mut usize, shape: Vec<usize>) -> Option<()> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        *total = total.checked_add(numel)?;
        shapes.push(shape);
        Some(())
    }
    let (mut shapes, mut total) = (Vec::new(), 0usize);
    let [mut c, mut h, mut w] = image;
    for layer in layers {
        match *layer {
            LayerSpec::Affine { units } => {
                let inputs = c.checked_mul(h)?.checked_mul(w)?;
                push(&mut shapes, &mut total, vec![inputs, units])?;
                push(&mut shapes, &mut total, vec![units])?;
                (c, h, w) = (units, 1, 1);
            }
            LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            } => {
                let padded_h = h.checked_add(pad.checked_mul(2)?)?;
                let padded_w = w.checked_add(pad.checked_mul(2)?)?;
                if size > padded_h || size > padded_w {
                    return None;
                }
                push(&mut shapes, &mut total, vec![filters, c, size, size])?;
                push(&mut shapes, &mut total, vec![filters])?;
                (c, h, w) = (
                    filters,
                    (padded_h - size) / stride + 1,
                    (padded_w - size) / stride + 1,
                );
            }
            LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
                if size > h || size > w {
                    return None;
                }
                (h, w) = ((h - size) / stride + 1, (w - size) / stride + 1);
            }
            LayerSpec::BatchNorm => {
                for _ in 0..2 {
                    push(&mut shapes, &mut total, vec![c])?;
                }
            }
            LayerSpec::LayerNorm => {
                let shape = if h * w == 1 { vec![c] } else { vec![c, h, w] };
                for _ in 0..2 {
                    push(&mut shapes, &mut total, shape.clone())?;
                }
            }
            LayerSpec::Relu | LayerSpec::Sigmoid | LayerSpec::Tanh | LayerSpec::Dropout { .. } => {}
            // A custom layer parses only when its file exists and keeps the contract, which
            // no fuzzed text names.
            LayerSpec::Wgsl { .. } => unreachable!("a fuzzed spec names no layer file"),
        }
        // Every layer's output must be addressable too.
        c.checked_mul(h)?.checked_mul(w)?;
    }
    Some(shapes)
}

fn check_spec_sizes(text: String, image: [usize; 3], tally: &Tally) -> TestCaseResult {
    let Ok(layers) = parse_layers(&text) else {
        tally.add("parse Err");
        return Ok(());
    };
    let oracle = checked_param_shapes(image, &layers);
    let run = measured(move || {
        let spec = NetSpec::sequential(image, layers).ok()?;
        spec.validate().ok()?;
        Some(spec.layout())
    });
    let Some(layout) = run.value else {
        tally.add(if oracle.is_some() {
            "refused"
        } else {
            "refused, overflowing"
        });
        return Ok(());
    };
    let shapes: Vec<Vec<usize>> = layout.tensors.iter().map(|t| t.shape.clone()).collect();
    prop_assert_eq!(
        Some(&shapes),
        oracle.as_ref(),
        "validate accepted a net whose sizes overflow or differ from the shape rules"
    );
    tally.add("validate Ok");
    Ok(())
}

fn spec_sizes_property(cases: u32, seeding: Seeding) {
    let tally = Tally::default();
    run_property(
        "layer spec sizes",
        cases,
        seeding,
        (spec_text(), image_shape()),
        &tally,
        |(text, image)| check_spec_sizes(text, image, &tally),
    );
    tally.require("layer spec sizes", "validate Ok", 0.02);
    tally.require("layer spec sizes", "refused, overflowing", 0.0005);
}

#[test]
fn validated_layer_specs_have_no_overflowing_sizes() {
    spec_sizes_property(3000, Seeding::Fixed(0x5123_0f10));
}

#[test]
#[ignore = "long fuzz run: cargo test --release --test fuzz -- --ignored _long"]
fn validated_layer_specs_have_no_overflowing_sizes_long() {
    spec_sizes_property(50_000, Seeding::Fresh);
}

/// Minimal inputs the sizes property found. Each one used to validate: in release builds the size
/// arithmetic wrapped, so the net looked small (or even matched a 784-input MLP), and with
/// overflow checks on, resolving it panicked.
#[test]
fn validate_refuses_overflowing_sizes() {
    for text in [
        // Output 2⁶¹+28 square: its area wraps to exactly 784.
        "conv1x1p1152921504606846976,affine1",
        // 2⁶⁰ filters of 28×28: the affine input c·h·w wraps to 0; the layout holds 2⁶¹ values.
        "conv1152921504606846976x1,affine10",
        // 2·pad wraps to 0, so the padding is silently dropped.
        "conv1x1p9223372036854775808,affine10",
        // 2⁶³ filters: c·h·w wraps to 0 for any even image area.
        "conv9223372036854775808x1,affine1",
    ] {
        let validated = NetSpec::sequential([1, 28, 28], parse_layers(text).unwrap())
            .and_then(|spec| spec.validate());
        assert!(validated.is_err(), "{text} validates");
    }
}

// ---------------------------------------------------------------------------------------------
// The --resume metadata: a full-state checkpoint whose run record is damaged

/// The tensors of a full-state checkpoint, and its run record as JSON.
type ResumeBase = (Vec<(String, Vec<usize>, TensorData)>, Value);

/// A full-state checkpoint of a small BatchNorm net with AMSGrad (three optimizer slots), one
/// epoch and two steps in, as `wgrad train` writes it: its tensors and its run record.
fn resume_base() -> &'static ResumeBase {
    static BASE: OnceLock<ResumeBase> = OnceLock::new();
    BASE.get_or_init(|| {
        use wgrad::train::{Progress, RunRecord, RunState, TrainConfig};
        let spec = NetSpec::mlp(16, &[6], 10, Activation::Relu).with_batchnorm();
        let (layers, layout) = spec.resolve().unwrap();
        let arena = |k: f64| {
            (0..layout.total)
                .map(|i| k * (i as f64 + 1.0))
                .collect::<Vec<_>>()
        };
        let state = wgrad::nn::model::state_names(&layers, &layout)
            .into_iter()
            .flat_map(|(mean, var, c)| {
                [(mean, vec![c], vec![0.5; c]), (var, vec![c], vec![2.0; c])]
            })
            .collect();
        let optimizer = wgrad::optim::Optimizer::Adam {
            lr: 1e-3,
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-8,
            amsgrad: true,
            weight_decay: 0.0,
        };
        let run = RunState {
            progress: Progress {
                epochs_done: 1,
                steps_into_epoch: 2,
                steps: 7,
                epoch_sums: [1.5, 0.7, 6.0],
                history: vec![Default::default()],
                train_seconds: 0.25,
            },
            params: arena(1e-3),
            state,
            optimizer: wgrad::optim::OptimizerState {
                slots: ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
                    .iter()
                    .map(|s| (s.to_string(), arena(1e-4)))
                    .collect(),
                beta_powers: [0.8f64.powi(7), 0.95f64.powi(7)],
            },
        };
        let config = TrainConfig {
            spec,
            optimizer,
            batch_size: 4,
            epochs: 3,
            ..Default::default()
        };
        let identity = data::DataIdentity {
            train_images: 20,
            test_images: 5,
            channels: 1,
            rows: 4,
            cols: 4,
            sha256: "00".repeat(32),
        };
        let record = RunRecord::new(&config, &run, identity, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.safetensors");
        checkpoint::save_run(&path, &run, &record, &BTreeMap::new()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = (file.tensors().into_iter())
            .map(|(name, view)| {
                let values: Vec<f32> = (view.data().chunks(4))
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, view.shape().to_vec(), TensorData::F32(values))
            })
            .collect();
        (tensors, serde_json::to_value(&record).unwrap())
    })
}

/// A damage to the run record: one value replaced (anywhere in the JSON tree), or the text cut
/// or spliced.
#[derive(Clone, Debug)]
enum RecordMut {
    Value(Index, Value),
    Text(TextMut),
}

fn record_mut() -> impl Strategy<Value = RecordMut> {
    let value = prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1)),
        Just(json!(u64::MAX)),
        Just(json!(u32::MAX as u64 + 1)),
        Just(json!(1e308)),
        Just(json!(0.5)),
        Just(json!(null)),
        Just(json!("x")),
        Just(json!([])),
        Just(json!({})),
        Just(json!(1_000_000_000_000u64)),
    ];
    prop_oneof![
        3 => (any::<Index>(), value).prop_map(|(at, v)| RecordMut::Value(at, v)),
        1 => text_mut().prop_map(RecordMut::Text),
    ]
}

/// Every value's place in a JSON tree, as `pointer` paths.
fn leaves(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| leaves(v, format!("{at}/{k}"), out)),
        Value::Array(items) => {
            (items.iter().enumerate()).for_each(|(i, v)| leaves(v, format!("{at}/{i}"), out))
        }
        _ => out.push(at),
    }
}

fn check_resume_case(damage: RecordMut, tally: &Tally) -> TestCaseResult {
    let (tensors, record) = resume_base();
    let text = match &damage {
        RecordMut::Value(at, new) => {
            let mut record = record.clone();
            let mut places = Vec::new();
            leaves(&record, String::new(), &mut places);
            *record.pointer_mut(&places[at.index(places.len())]).unwrap() = new.clone();
            record.to_string()
        }
        RecordMut::Text(m) => {
            let mut bytes = record.to_string().into_bytes();
            apply_text_mut(&mut bytes, m);
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    let metadata = BTreeMap::from([("wgrad_run".to_string(), text)]);
    checkpoint::save_tensors(&path, tensors, &metadata).unwrap();
    let run = measured(move || {
        let loaded = checkpoint::load_run(&path)?;
        // What the trainer checks next, before anything is allocated for the run.
        let (record, run) = &loaded;
        let per_epoch = record.data.train_images / record.config.batch_size.max(1);
        run.progress
            .check(per_epoch.max(1))
            .map_err(wgrad::Error::InvalidArgument)?;
        record.config.spec.resolve()?;
        Ok::<_, wgrad::Error>(())
    });
    prop_assert!(run.largest_allocation <= FIXED_ALLOCATION + 64 * 1024);
    match run.value {
        Ok(()) => tally.add("Ok"),
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            tally.add(if msg.contains("cannot be read") {
                "bad record"
            } else {
                "refused"
            });
        }
    }
    Ok(())
}

fn resume_property(cases: u32, seeding: Seeding) {
    let tally = Tally::default();
    run_property(
        "resume metadata",
        cases,
        seeding,
        record_mut(),
        &tally,
        |damage| check_resume_case(damage, &tally),
    );
    tally.require("resume metadata", "Ok", 0.05);
    tally.require("resume metadata", "bad record", 0.05);
    tally.require("resume metadata", "refused", 0.02);
}

#[test]
fn resume_metadata_loads_or_fails_cleanly() {
    resume_property(1000, Seeding::Fixed(0x5e5_0e1d));
}

#[test]
#[ignore = "long fuzz run: cargo test --release --test fuzz -- --ignored _long"]
fn resume_metadata_loads_or_fails_cleanly_long() {
    resume_property(50_000, Seeding::Fresh);
}
