//! `hello`: the smallest framework, keeping N copies of a command running.
//! Not built yet: it arrives with the framework SDK (two-level scheduling issue).
fn main() {
    eprintln!(
        "hello: not built yet; the framework SDK arrives with the two-level scheduling issue"
    );
    std::process::exit(2);
}
