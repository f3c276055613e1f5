//! `drover supervise SPEC` (hidden): the per-task supervisor process the agent starts for each
//! task. Prints the exit record as JSON on stdout; exit status 0 once a record is written.

use drover_agent::{SupervisorSpec, run_supervisor};
use std::path::Path;

pub fn run(path: &Path) -> i32 {
    let spec: SupervisorSpec = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!(
                "drover: cannot read the supervisor spec {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    match run_supervisor(spec) {
        Ok(record) => match serde_json::to_string(&record) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("drover: cannot print the exit record: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("drover: supervisor failed: {:#}", anyhow::Error::new(e));
            1
        }
    }
}
