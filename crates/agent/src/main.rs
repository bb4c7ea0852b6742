//! The `berth-agent` binary: parses its arguments and serves on a
//! current-thread runtime (see the library docs for the contract).

use berth_agent::args::{self, Invocation};
use std::process::ExitCode;

/// The first argument that makes this binary the sandbox's stage-1 init,
/// so one static executable serves both roles in any image.
const SANDBOX_INIT: &str = "sandbox-init";

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(SANDBOX_INIT) {
        let code = berth_runtime_sandbox::stage1::main(&raw[1..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if raw.first().map(String::as_str) == Some(berth_agent::SHEPHERD) {
        let argv: Vec<_> = std::env::args_os().skip(2).collect();
        let code = berth_exec::shepherd::main(&argv);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let options = match args::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Serve(options)) => options,
        Ok(Invocation::Install(dir)) => {
            return match berth_agent::install_self(&dir) {
                Ok(path) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!(
                        "berth-agent: cannot install into `{}`: {err}",
                        dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Invocation::Version) => {
            println!("berth-agent {}", berth_agent::VERSION);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("berth-agent: {err}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    // Before any other thread exists, so that every thread is hardened.
    berth_agent::guard::harden();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("berth-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(berth_agent::run(options));
    // Everything that mattered has ended; a file operation stuck on a slow
    // filesystem must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
