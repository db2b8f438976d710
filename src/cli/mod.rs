//! The command line (the contract in CLI.md): one file per subcommand, each a clap `Args` and a
//! `run` that checks the arguments, calls one library function (often a [`crate::workflow`]
//! job) and prints what it did.

pub mod baseline;
pub mod brain;
pub mod corpus;
pub mod decode;
pub mod embed;
pub mod eval;
pub mod train;
pub mod vocab;

use crate::device::DeviceArg;
use crate::error::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "niclip",
    version,
    about = "NiCLIP: decode brain maps into cognitive tasks, concepts and domains"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// MKDA modeled activation maps of studies, as a 4D NIfTI.
    MaMap(brain::MaMapArgs),
    /// Least-squares coefficients of brain maps on an atlas's maps.
    Project(brain::ProjectArgs),
    /// Resample an image onto another image's grid (world space, as nilearn).
    Resample(brain::ResampleArgs),
    /// Image features (MKDA + projection) of every study with peaks in a corpus.
    Images(brain::ImagesArgs),
    /// Import, inspect and export article collections.
    #[command(subcommand)]
    Corpus(corpus::CorpusCommand),
    /// Text features: an LLM's last hidden state, mean-pooled over all chunks of each text.
    Embed(embed::EmbedArgs),
    /// Train the CLIP model (text tower + image tower, symmetric InfoNCE), or cross-validate it.
    Train(train::TrainArgs),
    /// Evaluate models: retrieval (Recall@k, Mix&Match) and decoding (recall@k on maps with a
    /// known answer).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// The decoding vocabulary: Cognitive Atlas tasks embedded by a language model, and their prior.
    Vocab(vocab::VocabArgs),
    /// Decode brain maps into Cognitive Atlas tasks, concepts and domains.
    Decode(decode::DecodeArgs),
    /// The paper's baselines: the Neurosynth correlation decoder and GC-LDA.
    #[command(subcommand)]
    Baseline(baseline::BaselineCommand),
}

/// `--top N`, `--top all` or `--top 0` (all, as CLI.md says): the entries listed per map.
pub fn parse_top(s: &str) -> std::result::Result<usize, String> {
    match s {
        "all" | "0" => Ok(usize::MAX),
        n => n
            .parse()
            .map_err(|_| format!("{s:?} is not a count; give a number, or all")),
    }
}

/// Options shared by every command that computes.
#[derive(clap::Args, Debug, Clone)]
pub struct Compute {
    /// auto | cpu | cuda | cuda:N. auto uses CUDA only when a driver and a device are present.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Compute {
    /// Says so when CUDA was asked for by a command that runs on the CPU only (ma-map, project,
    /// decode, eval decoding, baseline decode, baseline train gclda). The commands with a CUDA
    /// path: images (MKDA + projection), embed and vocab (the language model), train and eval
    /// retrieval --cv (CLIP), baseline train neurosynth (the correlation decoder's z-maps).
    pub fn cpu_only(&self, command: &str) {
        if matches!(self.device, DeviceArg::Cuda(_)) {
            eprintln!("note: {command} runs on the CPU; CUDA serves images, embed, vocab, train, eval retrieval --cv and baseline train neurosynth");
        }
    }

    pub fn init_threads(&self) {
        if let Some(n) = self.threads {
            // Only fails when a pool exists already, in which case that one is used.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::MaMap(a) => brain::ma_map(a),
        Command::Project(a) => brain::project(a),
        Command::Resample(a) => brain::resample(a),
        Command::Images(a) => brain::images(a),
        Command::Corpus(c) => corpus::run(c),
        Command::Train(a) => train::run(a),
        Command::Eval(c) => eval::run(c),
        Command::Vocab(a) => vocab::run(a),
        Command::Decode(a) => decode::run(a),
        Command::Baseline(c) => baseline::run(c),
        Command::Embed(a) => embed::embed(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand says what it does and every flag and argument has a line of help: a
    /// newcomer found blank ones (`--labels`, `<CORPUS>`, GC-LDA's priors).
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if !["help", "version"].contains(&id) && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help for:\n{}", missing.join("\n"));
    }
}
