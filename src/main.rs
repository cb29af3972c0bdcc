//! The `weft` command line.

use clap::{Parser, Subcommand};

/// Weft: a service-mesh operator with an embedded xDS control plane.
#[derive(Parser)]
#[command(name = "weft", version = weft::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the operator's version.
    Version,
    /// Print the CustomResourceDefinitions (or write one file each into a directory).
    Crd {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("weft {}", weft::VERSION);
            Ok(())
        }
        Command::Crd { out_dir } => crd(out_dir.as_deref()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn crd(out_dir: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
    for crd in weft::api::crds() {
        let doc = weft::yaml::document(&crd)?;
        match out_dir {
            Some(dir) => std::fs::write(dir.join(weft::api::crd_file_name(&crd)), doc)?,
            None => print!("{doc}"),
        }
    }
    Ok(())
}
