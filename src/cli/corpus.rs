//! `niclip corpus import|info|export`

use crate::error::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum CorpusCommand {}

pub fn run(c: CorpusCommand) -> Result<()> {
    match c {}
}
