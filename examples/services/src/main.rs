//! `services`: the services framework binary (the framework itself arrives next).
fn main() {
    eprintln!("services: the framework loop is not built yet; the spec library is");
    std::process::exit(2);
}
