//! `render`: turns the bundled subset into an ImageNet-shaped folder tree.
//!
//! Determinism: every image draws from its own ChaCha8 stream, keyed by the seed and
//! numbered by (split, bundled index), so the bytes of a file depend only on the seed and
//! that image, never on thread count, scheduling, or how many other images are rendered.

use std::fs;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::classes::{CLASSES, SampleClass};
use super::idx::{self, FashionSplit, PIXELS};
use super::layout::{self, TOP_LEVEL_ENTRIES, ValRecord};
use super::picture::{self, Pixels};
use super::quirks::{self, GRAYSCALE_WHAT, Quirk};
use super::{SampleError, SampleOptions, SampleSummary};

/// Marks a folder as a sample render, so a re-render may clear it (see `prepare_out`).
pub const MARKER: &str = ".pipeline-sample";

/// Share of (non-quirk) JPEGs written progressive, as a fair slice of web photos are.
const PROGRESSIVE_SHARE: f64 = 0.25;

/// ChaCha stream ids: the high 32 bits name what the stream is for, the low 32 bits the
/// bundled index of the image.
const TRAIN_STREAMS: u64 = 1 << 32;
const VAL_STREAMS: u64 = 2 << 32;
const VAL_ORDER_STREAM: u64 = 3 << 32;

/// One file to render.
struct Job<'a> {
    /// Stream id of this image's randomness.
    stream: u64,
    pixels: &'a [u8; PIXELS],
    class: &'static SampleClass,
    /// Relative to `out`.
    path: PathBuf,
    quirk: Option<Quirk>,
    /// 1-based val number; `None` for train images.
    val_number: Option<usize>,
}

/// What the label files and the summary need back from a rendered job.
struct Rendered {
    coloured: bool,
    object_box: [u32; 4],
}

/// Renders the sample described by `opts` into `opts.out`.
///
/// `out` must be missing, empty, or an earlier sample render (it holds the `.pipeline-sample`
/// marker); an earlier render's train/val folders and label files are deleted first, so the
/// tree never mixes two renders. Anything else in `out` is left alone.
///
/// Fails with `BadOption` for out-of-range options, `OutNotEmpty` for a foreign folder,
/// `BundledData` if the compiled-in subset is corrupt, and `Io`/`Resize`/`Jpeg`/`Png`
/// naming the file that could not be made.
pub fn render(opts: &SampleOptions) -> Result<SampleSummary, SampleError> {
    opts.validate()?;
    let train = idx::bundled_train()?;
    let val = idx::bundled_val()?;
    prepare_out(opts)?;

    let train_jobs = train_jobs(opts, &train);
    let val_jobs = val_jobs(opts, &val);
    for folder in layout::folders(opts.layout) {
        let folder = opts.out.join(folder);
        fs::create_dir_all(&folder).map_err(SampleError::io(folder))?;
    }

    // Each job writes its own file; collect keeps job order, so results line up.
    let jobs: Vec<&Job> = train_jobs.iter().chain(&val_jobs).collect();
    let rendered: Vec<Rendered> = jobs
        .par_iter()
        .map(|job| render_job(opts, job))
        .collect::<Result<_, _>>()?;
    let (train_rendered, val_rendered) = rendered.split_at(train_jobs.len());

    let mut val_records: Vec<ValRecord> = val_jobs
        .iter()
        .zip(val_rendered)
        .map(|(job, done)| ValRecord {
            number: job.val_number.expect("val jobs are numbered"),
            class: job.class,
            object_box: done.object_box,
        })
        .collect();
    val_records.sort_by_key(|record| record.number);
    for (path, contents) in layout::label_files(opts.layout, &val_records) {
        let path = opts.out.join(path);
        fs::write(&path, contents).map_err(SampleError::io(path))?;
    }

    Ok(SampleSummary {
        train_images: train_jobs.len(),
        val_images: val_jobs.len(),
        quirks: quirk_list(&train_jobs, train_rendered),
    })
}

/// The first `train_per_class` images of each class, in bundled order, quirks planted.
fn train_jobs<'a>(opts: &SampleOptions, train: &'a FashionSplit) -> Vec<Job<'a>> {
    let mut taken = [0usize; CLASSES.len()];
    let mut jobs = Vec::with_capacity(opts.train_per_class * CLASSES.len());
    for (index, (pixels, &label)) in train.images.iter().zip(&train.labels).enumerate() {
        let count = &mut taken[label as usize];
        if *count == opts.train_per_class {
            continue;
        }
        *count += 1;
        let class = &CLASSES[label as usize];
        jobs.push(Job {
            stream: TRAIN_STREAMS | index as u64,
            pixels,
            class,
            path: layout::train_path(opts.layout, class.wnid, index + 1),
            quirk: Quirk::planted_in(label, *count == 1),
            val_number: None,
        });
    }
    jobs
}

/// The first `val_per_class` images of each class, numbered in a seeded shuffled order
/// so a flat val folder interleaves classes as ImageNet's does.
fn val_jobs<'a>(opts: &SampleOptions, val: &'a FashionSplit) -> Vec<Job<'a>> {
    let mut taken = [0usize; CLASSES.len()];
    let mut picked = Vec::with_capacity(opts.val_per_class * CLASSES.len());
    for (index, &label) in val.labels.iter().enumerate() {
        if taken[label as usize] < opts.val_per_class {
            taken[label as usize] += 1;
            picked.push(index);
        }
    }
    let mut numbers: Vec<usize> = (1..=picked.len()).collect();
    numbers.shuffle(&mut stream_rng(opts.seed, VAL_ORDER_STREAM));
    picked
        .into_iter()
        .zip(numbers)
        .map(|(index, number)| {
            let class = &CLASSES[val.labels[index] as usize];
            Job {
                stream: VAL_STREAMS | index as u64,
                pixels: &val.images[index],
                class,
                path: layout::val_path(opts.layout, class.wnid, number),
                quirk: None,
                val_number: Some(number),
            }
        })
        .collect()
}

fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Renders one image and writes its file. The draws happen in a fixed order (size,
/// colour or not, tint, progressive) whatever the quirk, so planting a quirk does not
/// shift any other image's randomness.
fn render_job(opts: &SampleOptions, job: &Job) -> Result<Rendered, SampleError> {
    let mut rng = stream_rng(opts.seed, job.stream);
    let size = picture::draw_size(&mut rng, opts.min_short_side, opts.max_short_side);
    // The CMYK quirk must carry colour for a decoder's colour conversion to be tested.
    let coloured = rng.random_bool(opts.colour_share) || job.quirk == Some(Quirk::Cmyk);
    let tint = coloured.then(|| picture::draw_tint(&mut rng));
    let progressive = rng.random_bool(PROGRESSIVE_SHARE);

    let gray = picture::upscale(job.pixels, size).map_err(|source| SampleError::Resize {
        path: job.path.clone(),
        source,
    })?;
    let pixels = match tint {
        Some(tint) => Pixels::Rgb(tint.apply(&gray)),
        None => Pixels::Gray(gray),
    };
    let jpeg_error = |source| SampleError::Jpeg {
        path: job.path.clone(),
        source,
    };
    let bytes = match (job.quirk, &pixels) {
        (None, _) => picture::encode_jpeg(&pixels, size, progressive).map_err(jpeg_error)?,
        (Some(Quirk::PngNamedJpeg), _) => {
            picture::encode_png(&pixels, size).map_err(|source| SampleError::Png {
                path: job.path.clone(),
                source,
            })?
        }
        (Some(Quirk::Cmyk), Pixels::Rgb(rgb)) => {
            picture::encode_cmyk_jpeg(rgb, size).map_err(jpeg_error)?
        }
        (Some(Quirk::Cmyk), Pixels::Gray(_)) => unreachable!("CMYK quirk images are coloured"),
        // Baseline, so the surviving prefix still decodes top-down as far as it goes.
        (Some(Quirk::Truncated), _) => {
            quirks::truncate(picture::encode_jpeg(&pixels, size, false).map_err(jpeg_error)?)
        }
    };
    let path = opts.out.join(&job.path);
    fs::write(&path, bytes).map_err(SampleError::io(path))?;
    Ok(Rendered {
        coloured,
        object_box: picture::object_box(job.pixels, size),
    })
}

/// Makes `out` ready: created if missing, cleared of an earlier render, refused if foreign.
/// The marker is written before any image, so an interrupted render can be re-run over.
fn prepare_out(opts: &SampleOptions) -> Result<(), SampleError> {
    let out = &opts.out;
    fs::create_dir_all(out).map_err(SampleError::io(out))?;
    let is_empty = fs::read_dir(out)
        .map_err(SampleError::io(out))?
        .next()
        .is_none();
    if !is_empty {
        if !out.join(MARKER).is_file() {
            return Err(SampleError::OutNotEmpty {
                path: out.clone(),
                marker: MARKER,
            });
        }
        for entry in TOP_LEVEL_ENTRIES {
            remove_if_present(&out.join(entry))?;
        }
    }
    let marker = out.join(MARKER);
    fs::write(&marker, marker_text(opts)).map_err(SampleError::io(marker))
}

fn remove_if_present(path: &Path) -> Result<(), SampleError> {
    let removed = match fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => Err(error),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    removed.map_err(SampleError::io(path))
}

/// The marker records the options, so the tree says how it was made (no timestamp: two
/// renders with the same options must be byte-identical).
fn marker_text(opts: &SampleOptions) -> String {
    format!(
        "# Written by `pipeline sample`. Re-rendering into this folder deletes train/, val/,\n\
         # ILSVRC/ and the label files first. Images: Fashion-MNIST (MIT, Zalando SE).\n\
         layout = {:?}\nseed = {}\ntrain_per_class = {}\nval_per_class = {}\n\
         min_short_side = {}\nmax_short_side = {}\ncolour_share = {}\n",
        opts.layout,
        opts.seed,
        opts.train_per_class,
        opts.val_per_class,
        opts.min_short_side,
        opts.max_short_side,
        opts.colour_share,
    )
}

fn quirk_list(train_jobs: &[Job], rendered: &[Rendered]) -> Vec<(PathBuf, &'static str)> {
    let mut list: Vec<(PathBuf, &'static str)> = train_jobs
        .iter()
        .filter_map(|job| job.quirk.map(|quirk| (job.path.clone(), quirk.what())))
        .collect();
    let first_gray = train_jobs
        .iter()
        .zip(rendered)
        .find(|(job, done)| job.quirk.is_none() && !done.coloured);
    if let Some((job, _)) = first_gray {
        list.push((job.path.clone(), GRAYSCALE_WHAT));
    }
    list
}
