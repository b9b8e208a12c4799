//! `cove devcontainer config <dir>`: what Cove makes of a project's devcontainer.json,
//! printed in the shape of the reference `devcontainer read-configuration`. Local only: it
//! reads files and talks to no server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum DevcontainerCommand {
    /// Print the resolved configuration of the project in DIR as JSON.
    Config(ConfigArgs),
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The devcontainer.json to use, relative to DIR (default: the first of
    /// .devcontainer/devcontainer.json, .devcontainer.json, .devcontainer/<folder>/devcontainer.json).
    #[arg(long)]
    devcontainer_path: Option<PathBuf>,
    /// Also read local features and print them in install order (`featuresConfiguration`).
    #[arg(long)]
    include_features_configuration: bool,
}

pub fn run(command: DevcontainerCommand) -> anyhow::Result<ExitCode> {
    let DevcontainerCommand::Config(args) = command;
    let env = std::env::vars().collect();
    let resolved = cove_devcontainer::read_configuration(&args.dir, args.devcontainer_path.as_deref(), &env)?;
    let mut out = cove_devcontainer::resolved_json(&resolved.config, &resolved.workspace);
    if args.include_features_configuration {
        let features = cove_devcontainer::load::read_features(&resolved.config)?;
        if let Some(o) = out.as_object_mut() {
            o.insert("featuresConfiguration".into(), cove_devcontainer::features_json(&features));
        }
    }
    // What a server with the default (strictest) policy would refuse: worth knowing, but
    // the admin's policy decides, so it is a note, not an error.
    let dir = std::path::absolute(&args.dir).map(|d| d.display().to_string()).unwrap_or_default();
    if let Err(cove_devcontainer::Error::Refused { refusals }) =
        cove_devcontainer::policy::check(&resolved.config, &dir, &cove_devcontainer::Policy::default())
    {
        for r in refusals {
            eprintln!("note: refused under the default policy unless the admin allows it: {r}");
        }
    }
    let text = serde_json::to_string_pretty(&out).context("cannot print the configuration")?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
