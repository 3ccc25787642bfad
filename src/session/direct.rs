//! The pass-through loop: sessions are relayed between ML statements by a thread
//! of pgenrich's own that waits on epoll (mio) and calls [`Relay::poll_progress`] directly, not
//! by the tokio runtime.
//!
//! Why: per relayed query, tokio's reactor, scheduler and task wake-ups cost about 2,500
//! user-space instructions more than PgBouncer's whole loop, and on a small host the relay's
//! thread is the queue every query waits in. Here an event costs a table lookup and the relay's
//! own framing.
//!
//! A session's task hands its [`Relay`] over ([`Loops::hand_over`]) with both sockets taken out
//! of the tokio reactor, and gets it back, sockets returned to tokio, when the relay has an
//! [`Event`] (an ML statement, a hang-up, ...) or when the task recalls it because a control fired
//! (idle check, draining, termination). A TLS session goes over with its TLS state: only the
//! socket under it changes hands.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll as MioPoll, Registry, Token};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::controls::{Control, Controls};
use super::relay::{Event, Relay};
use crate::error::SessionError;
use crate::metrics::loops::{LoopRounds, PUBLISH_EVERY};
use crate::stream::{DirectSocket, Socket};

/// What a step of the relay loop ended with: the relay's event or error, or a control.
pub(super) type Step = Result<Result<Event, SessionError>, Control>;

/// The token of the loop's waker (sockets: see [`Table`]).
const WAKE: Token = Token(usize::MAX);

enum Command {
    Adopt {
        id: u64,
        relay: Box<Relay>,
        back: oneshot::Sender<Returned>,
    },
    Recall {
        id: u64,
    },
    Stop,
    /// Tests: the loop answers.
    #[cfg(test)]
    Ping(mpsc::Sender<()>),
    /// Tests: the loop's thread panics outside any session.
    #[cfg(test)]
    Crash,
}

/// A relay coming back from the loop, with what ended its stay (None: it was recalled).
struct Returned {
    relay: Box<Relay>,
    outcome: Option<Result<Event, SessionError>>,
}

/// One loop thread's mailbox.
struct Handle {
    commands: mpsc::Sender<Command>,
    waker: mio::Waker,
}

impl Handle {
    fn send(&self, command: Command) -> Result<(), Command> {
        self.commands.send(command).map_err(|e| e.0)?;
        if let Err(error) = self.waker.wake() {
            error!(%error, "cannot wake the pass-through loop");
        }
        Ok(())
    }
}

/// The pass-through loops of a server (one per relay thread).
pub struct Loops {
    /// Each loop's mailbox; a loop whose thread has died is replaced when next used.
    handles: Vec<Mutex<Handle>>,
    batch: bool,
    next_loop: AtomicUsize,
    next_id: AtomicU64,
}

impl Loops {
    /// Starts `threads` loop threads, under SCHED_BATCH if `batch` (see [`schedule_as_batch`]).
    pub fn start(threads: usize, batch: bool) -> io::Result<Loops> {
        let handles = (0..threads.max(1))
            .map(|index| start_loop(batch, index).map(Mutex::new))
            .collect::<io::Result<_>>()?;
        Ok(Loops {
            handles,
            batch,
            next_loop: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// Picks the loop for a new session.
    pub(super) fn pick(&self) -> usize {
        self.next_loop.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Sends loop `index` a command; a loop whose thread has died is replaced by a new one
    /// first (its sessions were lost with it; new ones must not be).
    fn send(&self, index: usize, command: Command) -> Result<(), Command> {
        let mut handle = self.handles[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let command = match handle.send(command) {
            Ok(()) => return Ok(()),
            Err(command) => command,
        };
        error!(index, "a pass-through loop has stopped; starting a new one");
        match start_loop(self.batch, index) {
            Ok(fresh) => *handle = fresh,
            Err(error) => {
                error!(%error, "cannot start a pass-through loop");
                return Err(command);
            }
        }
        handle.send(command)
    }

    /// Relays on loop `index` until the relay has an event or a control fires. Err when the
    /// relay cannot be handed over or was lost (the session then ends without last words).
    pub(super) async fn hand_over(
        &self,
        index: usize,
        mut relay: Box<Relay>,
        controls: &mut Controls,
    ) -> Result<(Box<Relay>, Step), SessionError> {
        let state = relay.control_state();
        relay.detach_streams()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (back, mut returned) = oneshot::channel();
        if let Err(Command::Adopt { mut relay, .. }) =
            self.send(index, Command::Adopt { id, relay, back })
        {
            // The loop thread is gone (it cannot be, short of a bug): the session ends.
            relay.attach_streams()?;
            return Ok((relay, Ok(Err(lost()))));
        }
        let control = tokio::select! {
            biased;
            back = &mut returned => return finish(back, None),
            control = poll_fn(|cx| controls.poll(cx, state)) => control,
        };
        let _ = self.send(index, Command::Recall { id });
        finish(returned.await, Some(control))
    }
}

/// Puts the calling thread under Linux's SCHED_BATCH policy (same nice level, same share of
/// CPU): when arriving bytes wake it, it does not preempt the task running on that CPU, which
/// on a busy host is usually the PostgreSQL backend or the client that just sent them, but runs
/// on an idle CPU or when that task's time slice ends. Measured on 2 CPUs, a large result
/// otherwise cost the PostgreSQL backend over 500 preemptions per query (direct: 2–4), and
/// throughput with it.
#[cfg(target_os = "linux")]
fn schedule_as_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread, and `param` is a valid `sched_param` that the call
    // only reads.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn schedule_as_batch() -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Takes the relay back into the tokio reactor.
fn finish(
    back: Result<Returned, oneshot::error::RecvError>,
    control: Option<Control>,
) -> Result<(Box<Relay>, Step), SessionError> {
    let Returned { mut relay, outcome } = back.map_err(|_| lost())?;
    relay.attach_streams()?;
    let step = match (outcome, control) {
        // An event that raced the recall comes first; the control fires again.
        (Some(outcome), _) => Ok(outcome),
        (None, Some(control)) => Err(control),
        (None, None) => Ok(Err(lost())),
    };
    Ok((relay, step))
}

fn lost() -> SessionError {
    SessionError::UpstreamIo(io::Error::other("the pass-through loop stopped"))
}

impl Drop for Loops {
    fn drop(&mut self) {
        for handle in &self.handles {
            if let Ok(handle) = handle.lock() {
                let _ = handle.send(Command::Stop);
            }
        }
    }
}

/// Starts loop thread `index` (its label in the loop metrics). A panic that escapes the loop
/// (the sessions' own are caught in [`Table::pump`]) ends only that thread: its sessions are
/// lost, and [`Loops::send`] replaces it.
fn start_loop(batch: bool, index: usize) -> io::Result<Handle> {
    let poll = MioPoll::new()?;
    let waker = mio::Waker::new(poll.registry(), WAKE)?;
    let (commands, inbox) = mpsc::channel();
    std::thread::Builder::new()
        .name("pgenrich-relay".to_owned())
        .spawn(move || {
            if batch {
                if let Err(error) = schedule_as_batch() {
                    warn!(%error, "cannot put a pass-through loop under SCHED_BATCH; it runs under the default policy");
                }
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(poll, inbox, index))) {
                let what = crate::error::panic_text(&*panic);
                error!(%what, "a pass-through loop failed; its sessions are closed");
            }
        })?;
    Ok(Handle { commands, waker })
}

struct Entry {
    id: u64,
    relay: Box<Relay>,
    back: oneshot::Sender<Returned>,
}

/// The loop thread.
fn run(mut poll: MioPoll, inbox: mpsc::Receiver<Command>, index: usize) {
    let mut events = Events::with_capacity(1024);
    let mut table = Table::default();
    // Sessions that stopped only to give the others a turn, for the next round.
    let mut again: Vec<usize> = Vec::new();
    let mut rounds = LoopRounds::new(index, Instant::now());
    loop {
        // An idle loop wakes once per PUBLISH_EVERY, so that its metrics say it is idle.
        let wait = if again.is_empty() {
            PUBLISH_EVERY
        } else {
            Duration::ZERO
        };
        if let Err(error) = poll.poll(&mut events, Some(wait)) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!(%error, "the pass-through loop cannot poll");
            return;
        }
        let started = Instant::now();
        let idle = events.is_empty() && again.is_empty();
        let registry = poll.registry();
        let turn = std::mem::take(&mut again);
        for event in events.iter() {
            if event.token() == WAKE {
                continue;
            }
            let slot = event.token().0 / 2;
            let Some(entry) = table.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let socket = if event.token().0 % 2 == 0 {
                entry.relay.client.socket()
            } else {
                entry.relay.upstream.socket()
            };
            if let Some(socket) = direct(socket) {
                let hung_up = event.is_read_closed() || event.is_error();
                socket.on_event(event.is_readable(), event.is_writable(), hung_up);
            }
            table.pump(registry, slot, &mut again);
        }
        for slot in turn {
            table.pump(registry, slot, &mut again);
        }
        loop {
            match inbox.try_recv() {
                Ok(Command::Adopt { id, relay, back }) => {
                    let slot = table.free.pop().unwrap_or_else(|| {
                        table.slots.push(None);
                        table.slots.len() - 1
                    });
                    let mut entry = Entry { id, relay, back };
                    if let Err(error) = register(registry, &mut entry.relay, slot) {
                        deregister(registry, &mut entry.relay);
                        table.free.push(slot);
                        let _ = entry.back.send(Returned {
                            relay: entry.relay,
                            outcome: Some(Err(SessionError::ClientIo(error))),
                        });
                        continue;
                    }
                    table.slots[slot] = Some(entry);
                    // Input may be waiting already.
                    table.pump(registry, slot, &mut again);
                }
                Ok(Command::Recall { id }) => {
                    let found = table
                        .slots
                        .iter()
                        .position(|s| s.as_ref().is_some_and(|e| e.id == id));
                    if let Some(slot) = found {
                        table.give_back(registry, slot, None);
                    }
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                #[cfg(test)]
                Ok(Command::Ping(reply)) => {
                    let _ = reply.send(());
                }
                #[cfg(test)]
                Ok(Command::Crash) => panic!("a test asked the loop to fail"),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if idle {
            rounds.maybe_publish(started);
        } else {
            rounds.round(started, Instant::now());
        }
    }
}

/// The sessions a loop carries; a slot's sockets have tokens `2 × slot` and `2 × slot + 1`.
#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
}

impl Table {
    /// Moves one session's relay forward; gives it back when it has an event, and notes it in
    /// `again` when it stopped to give others a turn.
    fn pump(&mut self, registry: &Registry, slot: usize, again: &mut Vec<usize>) {
        let Some(entry) = self.slots[slot].as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        // A panic ends this session only (XX000), not the loop and its other sessions.
        let progress = catch_unwind(AssertUnwindSafe(|| entry.relay.poll_progress(&mut cx)))
            .unwrap_or_else(|panic| Poll::Ready(Err(super::contained(&*panic))));
        match progress {
            Poll::Ready(outcome) => self.give_back(registry, slot, Some(outcome)),
            Poll::Pending if entry.relay.yielded => again.push(slot),
            Poll::Pending => {}
        }
    }

    fn give_back(
        &mut self,
        registry: &Registry,
        slot: usize,
        outcome: Option<Result<Event, SessionError>>,
    ) {
        let Some(mut entry) = self.slots[slot].take() else {
            return;
        };
        self.free.push(slot);
        deregister(registry, &mut entry.relay);
        // A session whose task is gone (runtime shutdown) is dropped here, closing its sockets.
        let _ = entry.back.send(Returned {
            relay: entry.relay,
            outcome,
        });
    }
}

fn sockets(relay: &mut Relay) -> [Option<&mut DirectSocket>; 2] {
    [
        direct(relay.client.socket()),
        direct(relay.upstream.socket()),
    ]
}

fn direct(socket: &mut Socket) -> Option<&mut DirectSocket> {
    match socket {
        Socket::Direct(direct) => Some(direct),
        _ => None,
    }
}

fn register(registry: &Registry, relay: &mut Relay, slot: usize) -> io::Result<()> {
    for (side, socket) in sockets(relay).into_iter().enumerate() {
        let socket = socket.ok_or_else(|| io::Error::other("socket is not direct"))?;
        let fd = socket.plain().as_fd().as_raw_fd();
        registry.register(
            &mut SourceFd(&fd),
            Token(2 * slot + side),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    Ok(())
}

fn deregister(registry: &Registry, relay: &mut Relay) {
    for socket in sockets(relay).into_iter().flatten() {
        let fd = socket.plain().as_fd().as_raw_fd();
        // Not registered (a failed registration): nothing to undo.
        let _ = registry.deregister(&mut SourceFd(&fd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether loop 0 answers a ping within a second.
    fn answers(loops: &Loops) -> bool {
        let (reply, answer) = mpsc::channel();
        loops.send(0, Command::Ping(reply)).is_ok()
            && answer.recv_timeout(Duration::from_secs(1)).is_ok()
    }

    #[test]
    fn a_loop_whose_thread_died_is_replaced() {
        let loops = Loops::start(1, false).expect("loops start");
        assert!(answers(&loops));
        assert!(loops.send(0, Command::Crash).is_ok());
        // Pings sent while the thread unwinds are lost with it; then the new loop answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !answers(&loops) {
            assert!(
                std::time::Instant::now() < deadline,
                "no loop answers after the crash"
            );
        }
    }
}
