use clap::Parser;

fn main() {
    // A reader that stops early (`niclip corpus info X | head`) ends niclip as it ends `cat`,
    // instead of a panic in println! on the closed pipe.
    #[cfg(unix)]
    // SAFETY: called first in main, before any thread starts or output is written.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = niclip::cli::Cli::parse();
    if let Err(e) = niclip::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
