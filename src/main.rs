//! The `pipeline` command line: parse, load the recipe, call one stage.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pipeline::ingest::{self, IngestOptions, ResizeFilter};
use pipeline::recipe::Recipe;
use pipeline::sample::{self, SampleLayout, SampleOptions};

/// Where `ingest` writes and `train`/`export-features` read when not told otherwise.
const DEFAULT_DATASET: &str = "dataset";

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
}

fn load_recipe(path: Option<&PathBuf>) -> Result<Recipe> {
    Ok(match path {
        Some(path) => Recipe::load(path)?,
        None => Recipe::default(),
    })
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
            recipe.validate().map_err(anyhow::Error::msg).context("invalid settings")?;
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
    }
    Ok(())
}
