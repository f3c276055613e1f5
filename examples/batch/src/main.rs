//! `batch`: a framework running one-off jobs to completion.
//! Not built yet: no issue asks for it so far.
#![allow(
    clippy::print_stderr,
    reason = "says on stderr that it is not built yet"
)]
fn main() {
    eprintln!("batch: not built yet");
    std::process::exit(2);
}
