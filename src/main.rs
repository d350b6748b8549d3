//! `pupil`: the command line. Distill, quantize, run, verify and profile ONNX students.

mod charts;
mod charts_profile;
mod cmd;
mod output;

use clap::Parser;

fn main() {
    // A closed stdout (`pupil inspect m.onnx | head`) ends the process silently, as it does for `ls` or `cat`,
    // instead of panicking inside `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PUPIL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            std::process::exit(1);
        }
    }
}
