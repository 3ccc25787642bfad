//! What can end or change a session besides its traffic: the handshake and idle deadlines, and
//! the server's draining and termination.
//!
//! They rarely fire, and the relay is polled twice per relayed query, so the hot path must not pay
//! for them (a `select!` over them locked each cancellation token's mutex on every wake-up). They
//! are polled with a waker of their own, only after that waker fired or after the session's state
//! changed in a way that arms or disarms one of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::{waker, ArcWake, AtomicWaker};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Which control fired.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Control {
    HandshakeTimeout,
    /// The idle deadline passed; whether the session really is idle is the caller's question.
    IdleCheck,
    Drain,
    Terminate,
}

/// Wakes the session's task and remembers that a control asked for it.
#[derive(Default)]
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Gate {
    fn wake_by_ref(gate: &Arc<Self>) {
        gate.woken.store(true, Ordering::Release);
        gate.task.wake();
    }
}

pub(super) struct Controls {
    gate: Arc<Gate>,
    waker: Waker,
    handshake: Pin<Box<Sleep>>,
    idle: Option<Pin<Box<Sleep>>>,
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    terminate: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The relay's (ready, draining, terminating) when the controls were last polled; None
    /// forces the next poll.
    seen: Option<(bool, bool, bool)>,
}

impl Controls {
    pub(super) fn new(
        handshake_deadline: Instant,
        idle_timeout: Option<Duration>,
        draining: &CancellationToken,
        terminate: &CancellationToken,
    ) -> Controls {
        let gate = Arc::new(Gate::default());
        Controls {
            waker: waker(Arc::clone(&gate)),
            gate,
            handshake: Box::pin(sleep_until(handshake_deadline)),
            idle: idle_timeout.map(|t| Box::pin(sleep_until(Instant::now() + t))),
            draining: Box::pin(draining.clone().cancelled_owned()),
            terminate: Box::pin(terminate.clone().cancelled_owned()),
            seen: None,
        }
    }

    /// Moves the idle deadline (after an [`Control::IdleCheck`] found the session not idle long
    /// enough).
    pub(super) fn rearm_idle(&mut self, deadline: Instant) {
        if let Some(idle) = &mut self.idle {
            idle.as_mut().reset(deadline);
        }
        self.seen = None;
    }

    /// Ready with the control that fired; otherwise Pending, and `cx` is woken when one may fire.
    /// `state` is the relay's [`control_state`](super::relay::Relay::control_state).
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        state: (bool, bool, bool),
    ) -> Poll<Control> {
        self.gate.task.register(cx.waker());
        let (ready, draining, terminating) = state;
        let woken = self.gate.woken.swap(false, Ordering::AcqRel);
        if !woken && self.seen == Some(state) {
            return Poll::Pending;
        }
        self.seen = Some(state);
        let mut own = Context::from_waker(&self.waker);
        let fired = if !ready && self.handshake.as_mut().poll(&mut own).is_ready() {
            Some(Control::HandshakeTimeout)
        } else if ready
            && self
                .idle
                .as_mut()
                .is_some_and(|idle| idle.as_mut().poll(&mut own).is_ready())
        {
            Some(Control::IdleCheck)
        } else if !draining && self.draining.as_mut().poll(&mut own).is_ready() {
            Some(Control::Drain)
        } else if !terminating && self.terminate.as_mut().poll(&mut own).is_ready() {
            Some(Control::Terminate)
        } else {
            None
        };
        match fired {
            Some(control) => {
                // A fired control stays ready: the caller acts on it before it is polled again.
                self.seen = None;
                Poll::Ready(control)
            }
            None => Poll::Pending,
        }
    }
}
