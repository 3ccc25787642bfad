//! What a session keeps between messages for its ML statements — prepared statements, portals
//! and cursors ([`super::statements::Registry`]) — charged against the session's budget
//! (`max_prepared_bytes`) and the process's (`max_prepared_memory`), so that no client can make
//! pgenrich hold memory without limit by preparing, binding or declaring without end. A Parse,
//! Bind or DECLARE that would go over either budget is refused with `53200` where PostgreSQL
//! would report an error, and the session goes on; the charge is given back when the entry is
//! dropped (Close, DEALLOCATE, the end of its transaction, a replacement, the session's end).
//!
//! The charge is an estimate taken before the work: a statement's plan keeps its text in several
//! forms (base and residual statements, expressions), about twice the text measured, a portal
//! its parameters, and every entry a little more (names, maps, plan nodes: about 1.5 KiB
//! measured for a short statement).

use std::sync::Arc;

use crate::enrich::budget::{Charge, MemoryBudget};
use crate::error::SqlState;
use crate::protocol::ErrorMessage;

/// Bytes every entry is charged besides its text or parameters.
const ENTRY_BYTES: usize = 2048;

/// The charge of one statement, portal or cursor; given back when dropped.
#[derive(Debug)]
pub struct Kept {
    _session: Charge,
    _process: Charge,
}

/// The budgets a session's entries are charged to.
#[derive(Debug, Clone)]
pub struct KeptBudgets {
    pub session: Arc<MemoryBudget>,
    pub process: Arc<MemoryBudget>,
}

impl KeptBudgets {
    /// The charge of a statement whose text is `text` bytes long.
    pub fn statement(&self, text: usize) -> Result<Kept, ErrorMessage> {
        self.hold(text.saturating_mul(2))
    }

    /// The charge of a portal whose Bind carried `parameters` bytes.
    pub fn portal(&self, parameters: usize) -> Result<Kept, ErrorMessage> {
        self.hold(parameters)
    }

    fn hold(&self, bytes: usize) -> Result<Kept, ErrorMessage> {
        let bytes = bytes.saturating_add(ENTRY_BYTES);
        let mut session = self.session.charge();
        if !session.try_add(bytes) {
            return Err(refusal(
                "this session's",
                "max_prepared_bytes",
                &self.session,
                bytes,
            ));
        }
        let mut process = self.process.charge();
        if !process.try_add(bytes) {
            return Err(refusal(
                "all sessions'",
                "max_prepared_memory",
                &self.process,
                bytes,
            ));
        }
        Ok(Kept {
            _session: session,
            _process: process,
        })
    }
}

fn refusal(whose: &str, key: &str, budget: &MemoryBudget, bytes: usize) -> ErrorMessage {
    ErrorMessage::error(
        SqlState::OutOfMemory,
        format!(
            "pgenrich: {whose} ML prepared statements, portals and cursors hold {} of {key} ({}); \
             this one needs {} more",
            mib(budget.in_use()),
            mib(budget.limit()),
            mib(bytes),
        ),
    )
    .with_hint(format!(
        "Close statements and portals no longer needed (DEALLOCATE, CLOSE, the Close message), \
         or raise {key}."
    ))
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(session: usize, process: &Arc<MemoryBudget>) -> KeptBudgets {
        KeptBudgets {
            session: MemoryBudget::plain(session),
            process: Arc::clone(process),
        }
    }

    #[test]
    fn charges_are_refused_past_either_budget_and_given_back_when_dropped() {
        let process = MemoryBudget::plain(5 * ENTRY_BYTES);
        let a = budgets(3 * ENTRY_BYTES, &process);
        let b = budgets(3 * ENTRY_BYTES, &process);
        // A statement of ENTRY_BYTES / 2 bytes is charged twice its text plus the entry.
        let first = a.statement(ENTRY_BYTES / 2).expect("fits");
        assert_eq!(a.session.in_use(), 2 * ENTRY_BYTES);
        let refused = a
            .portal(ENTRY_BYTES)
            .expect_err("over the session's budget");
        assert_eq!(refused.code, SqlState::OutOfMemory);
        assert!(
            refused.message.contains("max_prepared_bytes"),
            "{refused:?}"
        );
        assert_eq!(
            a.session.in_use(),
            2 * ENTRY_BYTES,
            "nothing kept of a refusal"
        );
        let kept: Vec<Kept> = (0..3).map(|_| b.portal(0).expect("fits")).collect();
        let refused = a.portal(0).expect_err("over the process's budget");
        assert!(
            refused.message.contains("max_prepared_memory"),
            "{refused:?}"
        );
        assert_eq!(
            (a.session.in_use(), process.in_use()),
            (2 * ENTRY_BYTES, 5 * ENTRY_BYTES),
            "the session's charge is given back when the process's is refused"
        );
        drop(kept);
        drop(first);
        assert_eq!((a.session.in_use(), process.in_use()), (0, 0));
        assert!(a.statement(usize::MAX).is_err(), "saturates, never wraps");
    }
}
