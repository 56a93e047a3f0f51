//! The `pipeline` command line: parse, load the recipe, call one stage.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pipeline::ingest::{self, IngestOptions, ResizeFilter};
use pipeline::recipe::Recipe;
use pipeline::dataset::Split;
use pipeline::sample::{self, SampleLayout, SampleOptions};
use pipeline::stream::report::{self as stream_report, StreamRun};
use pipeline::stream::{DataSource, EpochOptions, MeanMode, StreamPosition, ViewMode};
use pipeline::train::{self, EvalOptions, Finish, Start, TrainOptions, WhichCheckpoint};

/// Where `ingest` writes and `train`/`export-features` read when not told otherwise.
const DEFAULT_DATASET: &str = train::DEFAULT_DATASET;
/// The recipe bare `train` uses when it exists (else the built-in paper defaults).
const PAPER_RECIPE: &str = "pipeline/paper.toml";

#[derive(Parser)]
#[command(name = "pipeline", version, about = "The AlexNet paper's data and training pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Decode threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// `filename wnid` lines labelling a flat val/ folder.
        #[arg(long)]
        val_labels: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the input stream alone at full speed and report images/s per stage.
    Stream {
        #[arg(long, default_value = DEFAULT_DATASET)]
        dataset: PathBuf,
        /// Recipe for crop size, buffers and augmentation (default: the paper's).
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Split::Train)]
        split: Split,
        /// Views: train (random crop, flip, lighting), centre or ten-crop.
        #[arg(long, value_enum, default_value_t = Views::Train)]
        views: Views,
        /// Stop after N batches (default: one epoch).
        #[arg(long)]
        batches: Option<usize>,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
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
        #[arg(long, default_value_t = 1)]
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
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8)]
        columns: usize,
        #[arg(long, default_value_t = 4)]
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
        /// Save a checkpoint and stop once N steps are done in total (tests, profiling).
        #[arg(long, value_name = "N")]
        stop_after_steps: Option<u64>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
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
        #[arg(long)]
        batch_size: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
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

/// Opens a dataset split for streaming, refusing one that does not fit the recipe.
fn open_source(dataset: &PathBuf, split: Split, recipe: &Recipe) -> Result<DataSource> {
    let source = DataSource::open(dataset, split, recipe.stream.clone())?;
    recipe.check_dataset(dataset, source.image_size()).map_err(anyhow::Error::msg)?;
    Ok(source)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sample { out, layout, seed, train_per_class, val_per_class, min_side, max_side } => {
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
            workers,
            val_labels,
            quiet,
        } => {
            let mut recipe = load_recipe(recipe.as_ref())?;
            if let Some(size) = image_size {
                recipe.data.image_size = size;
            }
            let config = &mut recipe.ingest;
            config.filter = filter.unwrap_or(config.filter);
            config.rows_per_shard = rows_per_shard.unwrap_or(config.rows_per_shard);
            config.rows_per_row_group = rows_per_row_group.unwrap_or(config.rows_per_row_group);
            // Only what ingest uses is checked here: an --image-size override may
            // leave the recipe's crop for another size, which train checks.
            anyhow::ensure!(recipe.data.image_size > 0, "--image-size must be positive");
            recipe.ingest.validate().map_err(anyhow::Error::msg).context("invalid ingest settings")?;
            let options = IngestOptions {
                source,
                out,
                image_size: recipe.data.image_size,
                config: recipe.ingest.clone(),
                workers,
                val_labels,
                progress: !quiet,
            };
            let summary = ingest::ingest(&options)?;
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
            workers,
            seed,
            epoch,
            rank,
            world_size,
            dump,
            dump_batches,
        } => {
            let mut recipe = load_recipe(recipe.as_ref())?;
            recipe.stream.workers = workers.unwrap_or(recipe.stream.workers);
            recipe.stream.seed = seed.unwrap_or(recipe.stream.seed);
            anyhow::ensure!(rank < world_size, "--rank {rank} must be below --world-size {world_size}");
            let source = open_source(&dataset, split, &recipe)?;
            let run = StreamRun {
                mode: views.into(),
                crop: recipe.data.crop_size,
                batch_size,
                batches,
                epoch,
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
        Command::Preview { dataset, recipe, out, columns, rows, seed } => {
            let mut recipe = load_recipe(recipe.as_ref())?;
            recipe.stream.seed = seed.unwrap_or(recipe.stream.seed);
            // Channel mean: the exact inverse is then known per pixel (see preview::grid).
            recipe.stream.mean = MeanMode::Channel;
            let source = open_source(&dataset, Split::Train, &recipe)?;
            let mut stream = source.epoch(EpochOptions {
                mode: ViewMode::Train,
                crop: recipe.data.crop_size,
                batch_size: columns * rows,
                position: StreamPosition::default(),
                rank: 0,
                world_size: 1,
                with_keys: false,
            })?;
            let batch = stream.next_batch().context("the training split holds fewer images than one grid")??;
            let grid = pipeline::stream::preview::grid(&batch, source.mean(), columns, rows);
            pipeline::stream::preview::save(&out, &grid).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} augmented samples)", out.display(), batch.len());
        }
        Command::Train { recipe, dataset, out, resume, device, epochs, stop_after_steps, quiet } => {
            let start = match resume {
                Some(run) => Start::Resume { run },
                None => {
                    let default = PathBuf::from(PAPER_RECIPE);
                    let path = recipe.or_else(|| default.exists().then_some(default));
                    Start::New { recipe: Box::new(load_recipe(path.as_ref())?), out }
                }
            };
            let options =
                TrainOptions { start, dataset, device, epochs, stop_after_steps, progress: !quiet, handle_ctrl_c: true };
            let summary = train::train(&options)?;
            for line in summary.lines() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&summary)?);
            if summary.finish == Finish::Interrupted {
                std::process::exit(train::interrupt::EXIT_INTERRUPTED);
            }
        }
        Command::Eval { run, dataset, ten_crop, checkpoint, device, batch_size, quiet } => {
            let options = EvalOptions { run, dataset, ten_crop, checkpoint, device, batch_size, progress: !quiet };
            let report = train::run_eval(&options)?;
            for line in report.lines() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
