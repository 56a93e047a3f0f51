//! The `pipeline` command line: parse, load the recipe, call one stage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pipeline::dataset::Split;
use pipeline::features::FeatureTable;
use pipeline::features::commands;
use pipeline::ingest::{self, IngestOptions, ResizeFilter};
use pipeline::progress::count;
use pipeline::recipe::Recipe;
use pipeline::sample::{self, SampleLayout, SampleOptions};
use pipeline::stream::report::{self as stream_report, StreamRun};
use pipeline::stream::{DataSource, EpochOptions, MeanMode, ViewMode};
use pipeline::train::{self, EvalOptions, Finish, Start, TrainOptions, WhichCheckpoint};

/// Where `ingest` writes and `train`/`export-features` read when not told otherwise.
const DEFAULT_DATASET: &str = train::DEFAULT_DATASET;
/// The recipe bare `train` uses when it exists (else the built-in paper defaults).
const PAPER_RECIPE: &str = "pipeline/paper.toml";
/// The CPU-sized recipe for the bundled sample.
const SAMPLE_RECIPE: &str = "pipeline/sample.toml";

/// Counts and sizes that must be at least 1: refused while parsing, before they reach
/// the stream's arithmetic (a batch of 0 rows, a grid of 0 columns).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
}

/// The most images on a side of the preview grid: a picture to look at, not an
/// allocation failure.
const MAX_GRID_SIDE: usize = 64;

/// A side of the preview grid: 1 to [`MAX_GRID_SIDE`] images.
fn grid_side(value: &str) -> Result<usize, String> {
    match at_least_one(value)? {
        n if n > MAX_GRID_SIDE => Err(format!("must be at most {MAX_GRID_SIDE}")),
        n => Ok(n),
    }
}

/// `pipeline check …`.
#[derive(Subcommand)]
enum CheckCommand {
    /// The custom ops (CPU ops; CUDA kernels and cuDNN) against the reference composites
    /// of candle ops at AlexNet's layer shapes, and the whole network: values and every
    /// gradient. Fails when any comparison exceeds its tolerance.
    Kernels {
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f64.
        #[arg(long, default_value = "f32")]
        precision: String,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
        /// Width multiplier of the layer shapes (1 = the paper's).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Input side (224 = the paper's; at least 67).
        #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u64).range(67..))]
        input: u64,
    },
    /// The PyTorch golden fixture (logits, loss, every gradient, two SGD steps).
    Golden {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f64.
        #[arg(long, default_value = "f32")]
        precision: String,
        /// The fixture (default: the one in tests/fixtures/golden).
        #[arg(long)]
        fixture: Option<PathBuf>,
        /// Use the reference composites instead of the custom ops.
        #[arg(long)]
        reference: bool,
    },
    /// Training-step throughput (forward + backward + SGD) on synthetic batches.
    Step {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        precision: String,
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        #[arg(long, default_value_t = 224)]
        input: usize,
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Use the reference composites instead of the custom ops.
        #[arg(long)]
        reference: bool,
    },
}

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "The AlexNet paper's data and training pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep whole shards of object-store datasets in DIR, so later epochs (and later
    /// runs) read them from disk; least recently used shards go first.
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The --cache bound: bytes, or with a K/M/G/T suffix (powers of 1024).
    #[arg(long, global = true, value_name = "SIZE", default_value = "16G", value_parser = parse_bytes)]
    cache_size: u64,
}

/// `123`, `512M`, `16G`, `1.5T` → bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let scale: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use K, M, G or T)"
            ));
        }
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok((n * scale as f64) as u64),
        _ => Err(format!("{text:?} is not a size (e.g. 512M, 16G)")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on the bundled sample: sample → ingest → train → eval →
    /// features → binary codes → neighbours → retrieval precision (run from the repo root).
    Demo {
        /// Directory for everything the demo writes.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
    },
    /// Render the bundled Fashion-MNIST subset as an ImageNet-style JPEG tree.
    Sample {
        /// Directory to create the tree in.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = SampleLayout::Folders)]
        layout: SampleLayout,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training images per class (at most 600).
        #[arg(long, default_value_t = 600)]
        train_per_class: usize,
        /// Validation images per class (at most 100).
        #[arg(long, default_value_t = 100)]
        val_per_class: usize,
        /// Smallest shorter side of a rendered image.
        #[arg(long, default_value_t = 256)]
        min_side: u32,
        /// Largest shorter side of a rendered image.
        #[arg(long, default_value_t = 500)]
        max_side: u32,
    },
    /// Turn an ImageNet folder into Parquet shards of centre crops + mean image + RGB PCA.
    Ingest {
        /// The ImageNet root (class folders, Kaggle layout, or flat val with labels).
        source: PathBuf,
        /// Dataset directory to write.
        #[arg(long, default_value = DEFAULT_DATASET)]
        out: PathBuf,
        /// Recipe to take `[data]` and `[ingest]` settings from (default: the paper's).
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// S: shorter side → S, centre S×S crop (overrides the recipe).
        #[arg(long)]
        image_size: Option<usize>,
        /// Resampling filter (overrides the recipe).
        #[arg(long, value_enum)]
        filter: Option<ResizeFilter>,
        /// Rows per shard (overrides the recipe).
        #[arg(long)]
        rows_per_shard: Option<usize>,
        /// Rows per row group (overrides the recipe).
        #[arg(long)]
        rows_per_row_group: Option<usize>,
        /// How each crop is stored: raw pixels or a JPEG (overrides the recipe).
        #[arg(long, value_enum)]
        encoding: Option<pipeline::dataset::Encoding>,
        /// JPEG quality 1-100 for --encoding jpeg (overrides the recipe).
        #[arg(long)]
        quality: Option<u8>,
        /// Decode threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// `filename wnid` lines labelling a flat val/ folder.
        #[arg(long)]
        val_labels: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Write only part K of N (1 ≤ K ≤ N): its share of the shards, run on
        /// its own (a job-array task); the last part to finish merges.
        #[arg(long, value_name = "K/N")]
        part: Option<ingest::parts::Part>,
        /// Merge the finished parts into the dataset (same SRC and settings as the parts).
        #[arg(long, conflicts_with = "part")]
        merge: bool,
    },
    /// Run the input stream alone at full speed and report images/s per stage.
    Stream {
        #[arg(long, default_value = DEFAULT_DATASET)]
        dataset: PathBuf,
        /// Recipe for crop size, buffers and augmentation, checked against the dataset
        /// (default: the paper's settings at the dataset's own image size, with the
        /// paper's crop proportion, 224/256 of it).
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Split::Train)]
        split: Split,
        /// Views: train (random crop, flip, lighting), centre or ten-crop.
        #[arg(long, value_enum, default_value_t = Views::Train)]
        views: Views,
        /// Stop each epoch after N batches (default: the whole epoch).
        #[arg(long, value_parser = at_least_one)]
        batches: Option<usize>,
        /// Images per batch [default: the recipe's train.batch_size; 128 without --recipe].
        #[arg(long, value_parser = at_least_one)]
        batch_size: Option<usize>,
        /// Epochs to run back to back in this process, from --epoch.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        epochs: usize,
        /// Augmentation threads (overrides the recipe; 0 = all cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Seed (overrides the recipe).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        #[arg(long, default_value_t = 0)]
        rank: usize,
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        world_size: usize,
        /// Write the first batches as images-K.npy, labels-K.npy, keys-K.txt here.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// How many batches --dump writes.
        #[arg(long, default_value_t = 2)]
        dump_batches: usize,
    },
    /// Draw a grid of augmented training samples (mean added back) as a PNG.
    Preview {
        #[arg(long, default_value = DEFAULT_DATASET)]
        dataset: PathBuf,
        /// Recipe for the crop and augmentation, checked against the dataset (default:
        /// as for `stream`).
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Images per grid row (1 to 64).
        #[arg(long, default_value_t = 8, value_parser = grid_side)]
        columns: usize,
        /// Grid rows (1 to 64).
        #[arg(long, default_value_t = 4, value_parser = grid_side)]
        rows: usize,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Train AlexNet on a dataset (paper §5), writing a run directory; or resume one.
    Train {
        /// Recipe (default: pipeline/paper.toml when it exists, else the built-in paper).
        #[arg(long, conflicts_with = "resume")]
        recipe: Option<PathBuf>,
        /// Dataset directory (default: `dataset`; on --resume, the run's own).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Run directory to create (default: the next runs/run-NNNN).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue this run from its newest checkpoint, with its recipe.toml.
        #[arg(long, value_name = "RUN")]
        resume: Option<PathBuf>,
        /// cpu, cuda or cuda:N (overrides train.device).
        #[arg(long)]
        device: Option<String>,
        /// Total epochs (overrides train.epochs; with --resume, extends a finished run).
        #[arg(long)]
        epochs: Option<usize>,
        /// Save a checkpoint and stop after N more steps, counted from where this command
        /// starts: from 0 for a new run, from its checkpoint with --resume (tests, profiling).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        stop_after_steps: Option<u64>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Train every recipe × seed (skipping finished runs, resuming unfinished ones) and
    /// compare them: final val errors with their spread, epochs to a training-error threshold.
    Experiment {
        /// Recipes to compare; the first is the baseline (e.g. pipeline/sample.toml
        /// pipeline/ablations/*.toml). Each file name names its runs.
        #[arg(long, required = true, num_args = 1..)]
        recipes: Vec<PathBuf>,
        /// A recipe fragment laid over every recipe (e.g. pipeline/protocols/sample-short.toml).
        #[arg(long)]
        protocol: Option<PathBuf>,
        /// Dataset directory.
        #[arg(long, default_value = train::DEFAULT_DATASET)]
        dataset: PathBuf,
        /// Experiment directory: EXP/RECIPE-sSEED/ runs, EXP/summary.json, EXP/summary.md.
        #[arg(long)]
        out: PathBuf,
        /// Seeds 0..N-1 per recipe (seed s adds s to train.seed and stream.seed).
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Training top-1 error (a fraction) of "epochs to threshold" (Figure 1's measure).
        #[arg(long, default_value_t = pipeline::experiment::DEFAULT_THRESHOLD)]
        threshold: f64,
        /// cpu, cuda or cuda:N (overrides every recipe's train.device).
        #[arg(long)]
        device: Option<String>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Figures of runs (curves, Figure 1 ReLU vs tanh, Figure 3 conv1 kernels, Figure 4
    /// sheet) as PNGs, with an index.html that opens from disk.
    Report {
        /// Run directories to draw (after the experiment's runs).
        #[arg(long, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// An experiment directory (`pipeline experiment --out`): its runs and its table.
        #[arg(long)]
        experiment: Option<PathBuf>,
        /// A `pipeline neighbors --sheet` PNG to include as Figure 4.
        #[arg(long)]
        sheet: Option<PathBuf>,
        /// Report directory (PNGs + index.html).
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks of a build on a device (what `benches/gpu/check.sh` runs on a GPU).
    Check {
        #[command(subcommand)]
        what: CheckCommand,
    },
    /// Top-1/top-5 error of a run's checkpoint on a dataset's validation split.
    Eval {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Dataset directory (default: the one the run was trained on).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// The paper's ten-crop test: average the softmax of 4 corners + centre and mirrors.
        #[arg(long)]
        ten_crop: bool,
        #[arg(long, value_enum, default_value_t = WhichCheckpoint::Best)]
        checkpoint: WhichCheckpoint,
        /// cpu, cuda or cuda:N (default: the run's train.device).
        #[arg(long)]
        device: Option<String>,
        /// Images per batch (default: the run's train.batch_size; ÷10 with --ten-crop).
        #[arg(long, value_parser = at_least_one)]
        batch_size: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },

    /// Write each image's fc7 (or fc6/fc8) features to Parquet (paper §6.1).
    ExportFeatures {
        /// The run (default: the newest under runs/).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Dataset directory (default: the one the run was trained on).
        #[arg(long)]
        dataset: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Split::Val)]
        split: Split,
        /// fc6, fc7 (the paper's last hidden layer) or fc8.
        #[arg(long, default_value = "fc7")]
        layer: String,
        /// Also write binary codes from this `train-codes` model.
        #[arg(long)]
        codes: Option<PathBuf>,
        #[arg(long, default_value = "features.parquet")]
        out: PathBuf,
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 128, value_parser = at_least_one)]
        batch_size: usize,
        #[arg(long)]
        quiet: bool,
    },
    /// A trained run's most probable classes for JPEG/PNG files (or folders of them).
    Classify {
        /// The run (default: the newest under runs/).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Dataset whose mean image is subtracted (default: the one the run was trained on).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Average the ten crops' predictions (paper §4.1) instead of the centre crop's.
        #[arg(long)]
        ten_crop: bool,
        /// Classes to list per image.
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        top: usize,
        /// One JSON object per image instead of the table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        device: Option<String>,
        /// Image files, or folders walked for .jpg/.jpeg/.png files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// A trained run's network for another framework (PyTorch: safetensors with PyTorch's
    /// parameter names, a self-contained module file, config, classes and mean image).
    Export {
        /// The run (default: the newest under runs/).
        #[arg(long)]
        run: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "torch")]
        format: pipeline::export::ExportFormat,
        /// The folder to write (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Also the first N val images as the network's input and the run's logits for
        /// them (sample_input.npy, sample_logits.npy), to check a load against.
        #[arg(long, value_name = "N", value_parser = at_least_one)]
        with_sample: Option<usize>,
        /// Dataset whose classes and mean go with the export (default: the run's own).
        #[arg(long)]
        dataset: Option<PathBuf>,
        #[arg(long)]
        device: Option<String>,
    },
    /// The k nearest neighbours of an image by feature distance.
    Neighbors {
        #[arg(long)]
        features: PathBuf,
        /// A row of the features file.
        #[arg(long, conflicts_with = "image")]
        key: Option<String>,
        /// A new JPEG/PNG, run through the same preprocessing and the run's network.
        #[arg(long)]
        image: Option<PathBuf>,
        /// The run whose network embeds --image (default: the newest under runs/).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Neighbours to list (at least 1).
        #[arg(short, long, default_value_t = 8, value_parser = at_least_one)]
        k: usize,
        /// Search the binary codes by Hamming distance instead of fc7 by Euclidean.
        #[arg(long)]
        hamming: bool,
        /// Draw the query and its neighbours as one PNG (like the paper's Figure 4).
        #[arg(long)]
        sheet: Option<PathBuf>,
        /// Dataset holding the images for --sheet (default: the one the features came from).
        #[arg(long)]
        dataset: Option<PathBuf>,
    },
    /// Train the binary-code auto-encoder on exported features.
    TrainCodes {
        #[arg(long)]
        features: PathBuf,
        #[arg(long, default_value_t = 256)]
        bits: usize,
        /// Passes over the features.
        #[arg(long, default_value_t = 50)]
        epochs: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Precision@k of retrieval by raw pixels, features and binary codes.
    RetrievalEval {
        #[arg(long)]
        features: PathBuf,
        /// A `train-codes` model to evaluate Hamming retrieval with.
        #[arg(long)]
        codes: Option<PathBuf>,
        /// Evaluate only the first N rows (the pixel baseline holds every crop in memory).
        #[arg(long)]
        max_rows: Option<usize>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Views {
    Train,
    Centre,
    TenCrop,
}

impl From<Views> for ViewMode {
    fn from(v: Views) -> Self {
        match v {
            Views::Train => ViewMode::Train,
            Views::Centre => ViewMode::Centre,
            Views::TenCrop => ViewMode::TenCrop,
        }
    }
}

fn load_recipe(path: Option<&PathBuf>) -> Result<Recipe> {
    Ok(Recipe::load_or_default(path.map(|p| p.as_path()))?)
}

/// The recipe of a stage that reads an existing dataset: the one given (checked
/// against the dataset by [`open_source`]), or, without one, the paper's settings at
/// the image size the dataset stores (`dataset.json`), with the paper's crop
/// proportion of it (224 of 256).
fn recipe_for_dataset(path: Option<&PathBuf>, dataset: &Path) -> Result<Recipe> {
    if let Some(path) = path {
        return Ok(Recipe::load(path)?);
    }
    let stored = pipeline::dataset::Manifest::load(dataset)?.image_size;
    let mut recipe = Recipe::default();
    let paper = recipe.data.clone();
    recipe.data.image_size = stored;
    recipe.data.crop_size =
        ((stored * paper.crop_size + paper.image_size / 2) / paper.image_size).clamp(1, stored);
    Ok(recipe)
}

/// Opens a dataset split for streaming, refusing one that does not fit the recipe.
fn open_source(dataset: &Path, split: Split, recipe: &Recipe) -> Result<DataSource> {
    let against = pipeline::run::Against::Recipe(recipe);
    Ok(pipeline::run::compat::open_split(dataset, split, against)?)
}

/// `pipeline stream | head`: once the reader has gone, end as any Unix tool does (the
/// default SIGPIPE) instead of panicking in `println!`. Not for `train`, whose stdout
/// writes ignore a closed pipe, so a pager that quits never costs a checkpoint.
fn quit_quietly_on_a_closed_stdout() {
    // SAFETY: called at the start of main, before any thread exists; restores the
    // signal's default disposition, which Rust's runtime set to "ignore".
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Huge pages for the large activation and gradient buffers (see `huge_pages`).
#[global_allocator]
static ALLOC: pipeline::huge_pages::HugePages = pipeline::huge_pages::HugePages;

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Train { .. } | Command::Experiment { .. }
    ) {
        quit_quietly_on_a_closed_stdout();
    }
    if let Some(dir) = cli.cache {
        pipeline::store::enable_cache(pipeline::store::CacheConfig {
            dir,
            limit_bytes: cli.cache_size,
        });
    }
    match cli.command {
        Command::Demo { dir } => {
            anyhow::ensure!(
                Path::new("pipeline/sample.toml").exists(),
                "run the demo from the repository root (it uses pipeline/sample.toml)"
            );
            anyhow::ensure!(
                !dir.join("run").exists(),
                "{} already holds a demo run; remove it or pass --dir",
                dir.display()
            );
            let exe = std::env::current_exe()?;
            let mut ran = 0;
            loop {
                // The query key exists once the sample is rendered (after step 1).
                let key = pipeline::demo::query_key(&dir).unwrap_or_default();
                let steps = pipeline::demo::steps(&dir, &key);
                let Some(step) = steps.get(ran) else { break };
                println!("\n$ pipeline {}", step.join(" "));
                let status = std::process::Command::new(&exe).args(step).status()?;
                anyhow::ensure!(status.success(), "`pipeline {}` failed", step.join(" "));
                ran += 1;
            }
        }
        Command::Sample {
            out,
            layout,
            seed,
            train_per_class,
            val_per_class,
            min_side,
            max_side,
        } => {
            let options = SampleOptions {
                out,
                layout,
                seed,
                train_per_class,
                val_per_class,
                min_short_side: min_side,
                max_short_side: max_side,
                ..SampleOptions::default()
            };
            let summary = sample::render(&options).context("rendering the sample")?;
            for line in sample::main_summary_lines(&summary) {
                println!("{line}");
            }
        }
        Command::Ingest {
            source,
            out,
            recipe,
            image_size,
            filter,
            rows_per_shard,
            rows_per_row_group,
            encoding,
            quality,
            workers,
            val_labels,
            quiet,
            part,
            merge,
        } => {
            let mut recipe = load_recipe(recipe.as_ref())?;
            if let Some(size) = image_size {
                recipe.data.image_size = size;
            }
            let config = &mut recipe.ingest;
            config.filter = filter.unwrap_or(config.filter);
            config.rows_per_shard = rows_per_shard.unwrap_or(config.rows_per_shard);
            config.rows_per_row_group = rows_per_row_group.unwrap_or(config.rows_per_row_group);
            config.encoding = encoding.unwrap_or(config.encoding);
            config.quality = quality.unwrap_or(config.quality);
            // Only what ingest uses is checked here: an --image-size override may
            // leave the recipe's crop for another size, which train checks.
            anyhow::ensure!(recipe.data.image_size > 0, "--image-size must be positive");
            recipe
                .ingest
                .validate()
                .map_err(anyhow::Error::msg)
                .context("invalid ingest settings")?;
            let options = IngestOptions {
                source,
                out,
                image_size: recipe.data.image_size,
                config: recipe.ingest.clone(),
                workers,
                val_labels,
                progress: !quiet,
                publish: None,
            };
            let summary = match (part, merge) {
                (Some(part), _) => match ingest::parts::ingest_part(&options, part)? {
                    ingest::parts::PartOutcome::Done { summary, merged } => {
                        for line in summary.lines() {
                            println!("{line}");
                        }
                        match merged {
                            Some(merged) => *merged,
                            None => return Ok(()),
                        }
                    }
                    ingest::parts::PartOutcome::AlreadyMerged { out, part } => {
                        println!(
                            "{} already holds the merged dataset: nothing to do for part {part}",
                            out.display()
                        );
                        return Ok(());
                    }
                },
                (None, true) => ingest::parts::merge(&options)?,
                (None, false) => ingest::ingest(&options)?,
            };
            for line in summary.lines() {
                println!("{line}");
            }
        }
        Command::Stream {
            dataset,
            recipe,
            split,
            views,
            batches,
            batch_size,
            epochs,
            workers,
            seed,
            epoch,
            rank,
            world_size,
            dump,
            dump_batches,
        } => {
            let mut recipe = recipe_for_dataset(recipe.as_ref(), &dataset)?;
            // Without --recipe this is the paper's 128 (§5), TrainConfig's default.
            let batch_size = batch_size.unwrap_or(recipe.train.batch_size);
            recipe.stream.workers = workers.unwrap_or(recipe.stream.workers);
            recipe.stream.seed = seed.unwrap_or(recipe.stream.seed);
            anyhow::ensure!(
                rank < world_size,
                "--rank {rank} must be below --world-size {world_size}"
            );
            anyhow::ensure!(
                epoch.checked_add(epochs as u64).is_some(),
                "--epoch {epoch} plus --epochs {epochs} runs past the last epoch number"
            );
            let source = open_source(&dataset, split, &recipe)?;
            let run = StreamRun {
                mode: views.into(),
                crop: recipe.data.crop_size,
                batch_size,
                batches,
                epoch,
                epochs,
                rank,
                world_size,
                dump,
                dump_batches,
            };
            let report = stream_report::run(&source, &run)?;
            for line in report.lines() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Preview {
            dataset,
            recipe,
            out,
            columns,
            rows,
            seed,
        } => {
            let mut recipe = recipe_for_dataset(recipe.as_ref(), &dataset)?;
            recipe.stream.seed = seed.unwrap_or(recipe.stream.seed);
            // Channel mean: the exact inverse is then known per pixel (see preview::grid).
            recipe.stream.mean = MeanMode::Channel;
            let source = open_source(&dataset, Split::Train, &recipe)?;
            let mut stream = source.epoch(EpochOptions::new(
                ViewMode::Train,
                recipe.data.crop_size,
                columns * rows,
            ))?;
            let batch = stream
                .next_batch()
                .context("the training split holds fewer images than one grid")??;
            let grid = pipeline::stream::preview::grid(&batch, source.mean(), columns, rows);
            pipeline::stream::preview::save(&out, &grid)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({})",
                out.display(),
                count(batch.len(), "augmented sample", "augmented samples")
            );
        }
        Command::Train {
            recipe,
            dataset,
            out,
            resume,
            device,
            epochs,
            stop_after_steps,
            quiet,
        } => {
            let start = match resume {
                Some(run) => Start::Resume { run },
                None => {
                    let given = recipe.is_some();
                    let default = PathBuf::from(PAPER_RECIPE);
                    let path = recipe.or_else(|| default.exists().then_some(default));
                    let recipe = load_recipe(path.as_ref())?;
                    refuse_missing_cuda(&recipe, path.as_deref(), given, device.as_deref())?;
                    Start::New {
                        recipe: Box::new(recipe),
                        out,
                    }
                }
            };
            let options = TrainOptions {
                start,
                dataset,
                device,
                epochs,
                stop_after_steps,
                progress: !quiet,
                handle_signals: true,
            };
            let summary = train::train(&options)?;
            for line in summary.lines() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&summary)?);
            if summary.finish == Finish::Interrupted {
                // 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM.
                let signal = summary.signal.unwrap_or(train::interrupt::SIGINT);
                std::process::exit(train::interrupt::exit_status(signal));
            }
        }
        Command::Experiment {
            recipes,
            protocol,
            dataset,
            out,
            seeds,
            threshold,
            device,
            quiet,
        } => {
            let options = pipeline::experiment::ExperimentOptions {
                recipes,
                protocol,
                dataset,
                out,
                seeds,
                threshold,
                device,
                progress: !quiet,
            };
            // As `train`: a closed stdout must not cost a checkpoint, so writes ignore it.
            let mut say = |line: &str| {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{line}");
            };
            let outcome = pipeline::experiment::run(&options, &mut say)?;
            println!(
                "experiment   {} trained, {} resumed, {} skipped (finished)",
                outcome.trained, outcome.resumed, outcome.skipped
            );
            if let Some(signal) = outcome.interrupted_by {
                println!("interrupted: run the same command again to continue");
                std::process::exit(train::interrupt::exit_status(signal));
            }
            if let Some(summary) = outcome.summary {
                print!("\n{}", summary.table());
                println!(
                    "\nwritten      {}, {}",
                    options
                        .out
                        .join(pipeline::experiment::SUMMARY_JSON)
                        .display(),
                    options
                        .out
                        .join(pipeline::experiment::SUMMARY_TABLE)
                        .display()
                );
            }
        }
        Command::Report {
            runs,
            experiment,
            sheet,
            out,
        } => {
            let report = pipeline::report::write(&pipeline::report::ReportOptions {
                runs,
                experiment,
                sheet,
                out,
            })?;
            for f in &report.figures {
                println!("figure       {} ({}×{})", f.file, f.width, f.height);
            }
            for note in &report.notes {
                println!("not drawn    {note}");
            }
            println!("report       {}", report.index.display());
        }
        Command::Check { what } => check(what)?,
        Command::Eval {
            run,
            dataset,
            ten_crop,
            checkpoint,
            device,
            batch_size,
            quiet,
        } => {
            let options = EvalOptions {
                run,
                dataset,
                ten_crop,
                checkpoint,
                device,
                batch_size,
                progress: !quiet,
            };
            let report = train::run_eval(&options)?;
            for line in report.lines() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::ExportFeatures {
            run,
            dataset,
            split,
            layer,
            codes,
            out,
            device,
            batch_size,
            quiet,
        } => {
            let run = commands::run_or_newest(run)?;
            let loaded = commands::load_run(&run, dataset.as_deref(), split, device.as_deref())?;
            let summary =
                commands::export(&loaded, &layer, codes.as_deref(), &out, batch_size, !quiet)?;
            println!("{summary}");
        }
        Command::Classify {
            run,
            dataset,
            ten_crop,
            top,
            json,
            device,
            images,
        } => {
            let run = commands::run_or_newest(run)?;
            let files = pipeline::classify::image_files(&images)?;
            let loaded =
                commands::load_run(&run, dataset.as_deref(), Split::Val, device.as_deref())?;
            let outcomes = pipeline::classify::classify(&loaded, &files, ten_crop, top)?;
            let unreadable = outcomes
                .iter()
                .filter(|o| matches!(o, pipeline::classify::Outcome::Unreadable { .. }))
                .count();
            if json {
                for outcome in &outcomes {
                    println!("{}", serde_json::to_string(outcome)?);
                }
            } else {
                for line in pipeline::classify::lines(&outcomes) {
                    println!("{line}");
                }
            }
            if unreadable == outcomes.len() {
                anyhow::bail!("no file could be classified ({} given)", outcomes.len());
            }
            if unreadable > 0 {
                eprintln!("{unreadable} of {} files could not be read", outcomes.len());
            }
        }
        Command::Export {
            run,
            format,
            out,
            with_sample,
            dataset,
            device,
        } => {
            let run = commands::run_or_newest(run)?;
            let loaded =
                commands::load_run(&run, dataset.as_deref(), Split::Val, device.as_deref())?;
            match format {
                pipeline::export::ExportFormat::Torch => {
                    println!(
                        "{}",
                        pipeline::export::torch::export(&loaded, &out, with_sample)?
                    );
                }
            }
        }
        Command::Neighbors {
            features,
            key,
            image,
            run,
            k,
            hamming,
            sheet,
            dataset,
        } => {
            let table = FeatureTable::read(&features)?;
            let neighbours = match (key, image) {
                (Some(key), _) => commands::neighbours_of_key(
                    &table,
                    &key,
                    k,
                    hamming,
                    dataset.as_deref(),
                    sheet.as_deref(),
                )?,
                (None, Some(image)) => {
                    let run = commands::run_or_newest(run)?;
                    let loaded = commands::load_run(&run, dataset.as_deref(), Split::Val, None)?;
                    commands::neighbours_of_image(&table, &loaded, &image, k, dataset.as_deref())?
                }
                (None, None) => anyhow::bail!("give --key KEY or --image PATH"),
            };
            if let Some(why) = &neighbours.classes_unknown {
                eprintln!("note: class names unavailable ({why})");
            }
            for line in neighbours.lines() {
                println!("{line}");
            }
            if let Some(sheet) = sheet {
                println!("wrote {}", sheet.display());
            }
        }
        Command::TrainCodes {
            features,
            bits,
            epochs,
            out,
        } => {
            commands::train_codes_command(&features, bits, epochs, &out)?;
            println!("wrote {bits}-bit code model to {}", out.display());
        }
        Command::RetrievalEval {
            features,
            codes,
            max_rows,
        } => {
            let report = commands::retrieval_eval_command(&features, codes.as_deref(), max_rows)?;
            println!("{}", report.table());
            println!("{}", report.to_json());
        }
    }
    Ok(())
}

/// A new training run asking for CUDA in a build without it stops here, saying where
/// the device came from and how to go on (bare `train` takes the paper's GPU recipe).
fn refuse_missing_cuda(
    recipe: &Recipe,
    path: Option<&Path>,
    recipe_given: bool,
    device: Option<&str>,
) -> Result<()> {
    let name = device.unwrap_or(&recipe.train.device);
    if !train::device::is_missing_cuda(name) {
        return Ok(());
    }
    let origin = match (device, path) {
        (Some(_), _) => format!("--device {name}"),
        (None, Some(path)) if recipe_given => {
            format!("train.device = {name:?} in {}", path.display())
        }
        (None, Some(path)) => format!(
            "train.device = {name:?} in {} (the default recipe: the paper's, for ImageNet on a GPU)",
            path.display()
        ),
        (None, None) => format!("train.device = {name:?} (the built-in paper recipe)"),
    };
    anyhow::bail!(
        "{origin}, but this build has no CUDA (built without the `cuda` feature).\n\
         To train on the CPU, use --device cpu, or the CPU-sized recipe for the bundled \
         sample: --recipe {SAMPLE_RECIPE}.\n\
         To train on a GPU, rebuild with CUDA: `{}` (README, \"Training on a GPU\").",
        train::device::CUDA_BUILD
    )
}

/// `pipeline check …`: prints one line per comparison (or the timing) and fails when a
/// comparison is outside its tolerance.
fn check(what: CheckCommand) -> Result<()> {
    use pipeline::model::Kernels;
    use pipeline::model::parity::{ParityScale, check_kernels};
    use pipeline::train::{golden, step_timing};
    let open =
        |device: &str, precision: &str| -> Result<(candle_core::Device, candle_core::DType)> {
            let dtype = golden::check_dtype(precision).map_err(anyhow::Error::msg)?;
            let dev = train::device::open(device)?;
            train::device::check_precision(&dev, dtype)?;
            Ok((dev, dtype))
        };
    let kernels = |reference: bool| {
        if reference {
            Kernels::Reference
        } else {
            Kernels::Custom
        }
    };
    match what {
        CheckCommand::Kernels {
            device,
            precision,
            batch,
            width,
            input,
        } => {
            let (dev, dtype) = open(&device, &precision)?;
            let scale = ParityScale {
                batch: batch as usize,
                width,
                input: input as usize,
            };
            let rows = check_kernels(&dev, dtype, scale)?;
            println!(
                "kernels on {device} in {precision}, batch {batch}, width {width}, input {input}:"
            );
            for r in &rows {
                let verdict = if r.ok() { "ok" } else { "FAIL" };
                println!(
                    "  {:8} {:20} {:9.2e}  (tolerance {:.0e})  {verdict}",
                    r.op, r.tensor, r.rel_err, r.tolerance
                );
            }
            let failed = rows.iter().filter(|r| !r.ok()).count();
            println!("{} passed, {failed} failed", rows.len() - failed);
            anyhow::ensure!(
                failed == 0,
                "{failed} kernel comparisons are outside their tolerance"
            );
        }
        CheckCommand::Golden {
            device,
            precision,
            fixture,
            reference,
        } => {
            let (dev, dtype) = open(&device, &precision)?;
            let path = fixture.unwrap_or_else(golden::fixture_path);
            let rows = golden::check(&path, &dev, dtype, kernels(reference))?;
            let tol = golden::Tolerance::of(dtype);
            println!(
                "golden {} on {device} in {precision} (rtol {:.0e}, atol {:.0e} of each tensor's scale):",
                path.display(),
                tol.rtol,
                tol.atol
            );
            for r in &rows {
                println!(
                    "  {:24} {:9.2e}  {}",
                    r.tensor,
                    r.rel_err,
                    r.failure.as_deref().unwrap_or("ok")
                );
            }
            let failed = rows.iter().filter(|r| r.failure.is_some()).count();
            println!("{} passed, {failed} failed", rows.len() - failed);
            anyhow::ensure!(
                failed == 0,
                "{failed} tensors differ from the PyTorch fixture"
            );
        }
        CheckCommand::Step {
            device,
            precision,
            width,
            input,
            batch,
            classes,
            steps,
            reference,
        } => {
            let (dev, dtype) = open(&device, &precision)?;
            let case = step_timing::StepCase {
                width,
                input,
                batch: batch as usize,
                classes,
                steps: steps as usize,
                dtype,
                kernels: kernels(reference),
            };
            let timing = step_timing::time_steps(&dev, &case)?;
            println!("{} on {device}", timing.line(&case));
        }
    }
    Ok(())
}
