//! What the jobs ask of the chain (`faas_blueprint_lib::ChainLedger`), and where
//! the producer resumes after a restart.
//!
//! `TangleProducer::new` starts at the newest 10 blocks, so a call submitted more
//! than 10 blocks before a start is never run, and an answered call among those
//! 10 is run again: its second result reverts and `TangleConsumer` stops the
//! runner. Here the jobs skip calls the contract has completed, and the block of
//! the last call they got is kept in a file; a restart resumes from that block.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use blueprint_client_tangle::TangleClient;
use faas_blueprint_lib::ChainLedger;
use tokio::sync::watch;

/// The ledger of one service, and the writer of its resume file.
pub struct Ledger {
    client: TangleClient,
    newest_block: watch::Sender<u64>,
}

impl Ledger {
    /// A ledger for `client`'s service; `resume_file` keeps the newest block a
    /// call came from, written by a background task (atomically: a temporary file
    /// renamed over it).
    pub fn new(client: TangleClient, resume_file: PathBuf, start: u64) -> Ledger {
        let (newest_block, mut changes) = watch::channel(start);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let block = *changes.borrow_and_update();
                if let Err(e) = write_resume_block(&resume_file, block).await {
                    tracing::warn!(
                        "cannot record block {block} in {}: {e}",
                        resume_file.display()
                    );
                }
            }
        });
        Ledger {
            client,
            newest_block,
        }
    }
}

impl ChainLedger for Ledger {
    fn is_answered(
        &self,
        service_id: u64,
        call_id: u64,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match self.client.get_job_call(service_id, call_id).await {
                Ok(call) => call.completed,
                Err(e) => {
                    // Unknown: run it. At worst its result is refused, as without a ledger.
                    tracing::warn!("cannot read call {call_id} of service {service_id}: {e}");
                    false
                }
            }
        })
    }

    fn seen_block(&self, block: u64) {
        self.newest_block.send_if_modified(|newest| {
            let newer = block > *newest;
            if newer {
                *newest = block;
            }
            newer
        });
    }
}

/// The block to resume from: the one recorded in `resume_file`, when it is not
/// past the chain's head (a chain started afresh under the same data directory).
pub async fn resume_block(resume_file: &Path, head: u64) -> Option<u64> {
    let text = tokio::fs::read_to_string(resume_file).await.ok()?;
    let block: u64 = text.trim().parse().ok()?;
    if block == 0 || block > head {
        tracing::warn!(
            "ignoring {}: block {block} is not on this chain (head {head})",
            resume_file.display()
        );
        return None;
    }
    Some(block)
}

async fn write_resume_block(path: &Path, block: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, format!("{block}\n")).await?;
    tokio::fs::rename(&tmp, path).await
}
