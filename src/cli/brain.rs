//! `niclip ma-map`, `niclip project`, `niclip images`

use super::Compute;
use crate::error::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MaMapArgs {
    #[arg(long)]
    pub corpus: PathBuf,
}
#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub compute: Compute,
}
#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub compute: Compute,
}

pub fn ma_map(_a: MaMapArgs) -> Result<()> {
    todo!()
}
pub fn project(_a: ProjectArgs) -> Result<()> {
    todo!()
}
pub fn images(_a: ImagesArgs) -> Result<()> {
    todo!()
}
