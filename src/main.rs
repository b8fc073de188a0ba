//! The `looper` binary: everything happens in the library; this maps the outcome to an exit code.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(looper::cli::main(&args));
}
