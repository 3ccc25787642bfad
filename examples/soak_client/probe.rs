//! Probe sessions: `SELECT 1` (simple protocol) every `--probe-interval-ms`, each latency
//! recorded with its time. They are never killed; they reconnect only when their connection
//! dies (a PostgreSQL restart), and only successful probes count as latencies.

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::SimpleQueryMessage;

use crate::conn::{connect, timed};
use crate::rng::Rng;
use crate::Ctx;

const ROLE: &str = "probe";

pub async fn run(ctx: Arc<Ctx>, session: u32) {
    let mut rng = Rng::new(ctx.seed, 3_000_000 + u64::from(session));
    let mut current = None;
    // Probes keep their phase to each other: started apart, they stay apart.
    tokio::time::sleep(rng.upto(ctx.probe_interval)).await;
    let mut tick = tokio::time::interval(ctx.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < ctx.deadline {
        tick.tick().await;
        let mut conn = match current.take() {
            Some(conn) => conn,
            None => match connect(&ctx, ROLE, &mut rng).await {
                Some(conn) => conn,
                None => break,
            },
        };
        let start = Instant::now();
        match timed(&ctx, conn.client.simple_query("SELECT 1")).await {
            Ok(messages) => {
                let latency = start.elapsed();
                let one = messages
                    .iter()
                    .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("1")));
                if one {
                    ctx.stats.probe(latency);
                    ctx.stats.inc("ops.probe.select-1.ok");
                } else {
                    ctx.stats.inc("probe.wrong_results");
                }
                current = Some(conn);
            }
            Err(failure) => {
                ctx.stats.inc("ops.probe.select-1.failed");
                let class = conn.classify(&failure).await;
                ctx.error(ROLE, "select-1", &class);
                if class == "timeout" || conn.is_closed() {
                    conn.kill();
                } else {
                    current = Some(conn);
                }
            }
        }
    }
}
