//! `helios-trace serve`: the exporter daemon.
use anyhow::Result;

use crate::cli::ServeArgs;

pub async fn run(_args: ServeArgs) -> Result<()> {
    anyhow::bail!("serve is being built")
}
