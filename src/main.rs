use clap::Parser;

fn main() {
    let cli = niclip::cli::Cli::parse();
    if let Err(e) = niclip::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
