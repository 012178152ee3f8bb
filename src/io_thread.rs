//! The server's receive task on lapin's I/O thread.
//!
//! lapin reads each connection's socket on a thread of its own and hands a delivery to whoever
//! polls its consumer. Polled by a task on our runtime thread, every delivery cost a wake-up of
//! that thread (lapin → runtime), after the one the tokio reactor had made (runtime → lapin) to say
//! the socket was readable. lapin takes its TCP stream from the async runtime it is given, and its
//! loop flushes and reads that stream each time it goes round, holding none of its locks. So the
//! runtime we give it wraps tokio's stream: before each flush and read, the wrapper runs the receive
//! task if something woke it, on lapin's thread, right after lapin parsed the deliveries. Waking
//! the task wakes lapin's loop (through the waker lapin polls the stream with), so it goes round.
//!
//! Once lapin's loop ends (the connection is gone) the stream is dropped, and a task still there
//! moves to the tokio runtime, where it sees the consumer end. A panic in the task is caught here:
//! it costs the task (the session then ends as lost), never lapin's thread.

use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::Stream;
use parking_lot::Mutex;
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The runtime lapin gets for one connection: tokio's executor, and tokio's reactor with the
/// stream wrapped.
pub(crate) type IoRuntime = Runtime<RuntimeParts<Tokio, HookedReactor>>;

/// Times a woken task is polled in one go before lapin's loop gets to go round again.
const POLLS_PER_TURN: usize = 16;

/// One connection's receive task, run on its lapin I/O thread.
#[derive(Clone)]
pub(crate) struct IoThread {
    shared: Arc<Shared>,
}

struct Shared {
    /// For the timers and spawns of the task while it runs on lapin's thread.
    handle: Handle,
    slot: Mutex<Slot>,
    woken: AtomicBool,
    /// The waker lapin reads the stream with: waking it makes lapin's loop go round.
    lapin: Mutex<Option<Waker>>,
}

enum Slot {
    Empty,
    Ready(Task),
    /// Being polled on lapin's thread.
    Running,
    /// lapin's loop is over: tasks run on the tokio runtime.
    Detached,
}

impl IoThread {
    /// A runtime for one lapin connection, and the handle that runs tasks on its I/O thread.
    /// Call from inside the tokio runtime.
    pub(crate) fn runtime() -> (IoRuntime, IoThread) {
        let handle = Handle::current();
        let io_thread = IoThread {
            shared: Arc::new(Shared {
                handle: handle.clone(),
                slot: Mutex::new(Slot::Empty),
                woken: AtomicBool::new(false),
                lapin: Mutex::new(None),
            }),
        };
        let tokio = Tokio::default().with_handle(handle);
        let reactor = HookedReactor {
            tokio: tokio.clone(),
            io_thread: io_thread.clone(),
        };
        (Runtime::new(RuntimeParts::new(tokio, reactor)), io_thread)
    }

    /// Runs `task` on lapin's I/O thread (on the tokio runtime once that thread is gone).
    pub(crate) fn spawn(&self, task: Task) {
        let mut slot = self.shared.slot.lock();
        match &*slot {
            Slot::Detached => {
                drop(slot);
                self.shared.handle.spawn(task);
            }
            // One task per connection: the session's receive task.
            Slot::Empty | Slot::Ready(_) | Slot::Running => {
                *slot = Slot::Ready(task);
                drop(slot);
                self.shared.clone().wake();
            }
        }
    }

    /// lapin's loop is about to use the stream: run the task if it was woken. `lapin` is the
    /// waker lapin reads with (kept to wake its loop), or the one it flushes with.
    fn run_woken(&self, lapin: &Waker, reading: bool) {
        let shared = &self.shared;
        if reading {
            let mut known = shared.lapin.lock();
            if !known.as_ref().is_some_and(|w| w.will_wake(lapin)) {
                *known = Some(lapin.clone());
            }
        }
        for _ in 0..POLLS_PER_TURN {
            if !shared.woken.swap(false, Ordering::AcqRel) {
                return;
            }
            // Its own statement: the slot's lock is released before the `match` below takes it
            // again (a temporary in a match's scrutinee would hold it through the arms).
            let taken = std::mem::replace(&mut *shared.slot.lock(), Slot::Running);
            let mut task = match taken {
                Slot::Ready(task) => task,
                // A late wake for a task that ended, or none yet.
                other => {
                    *shared.slot.lock() = other;
                    return;
                }
            };
            let waker = Waker::from(shared.clone());
            let done = {
                let _runtime = shared.handle.enter();
                catch_unwind(AssertUnwindSafe(|| {
                    task.as_mut()
                        .poll(&mut Context::from_waker(&waker))
                        .is_ready()
                }))
                // A panic ends the task (its session ends as lost), not lapin's thread.
                .unwrap_or(true)
            };
            let mut slot = shared.slot.lock();
            if matches!(*slot, Slot::Running) {
                *slot = if done { Slot::Empty } else { Slot::Ready(task) };
            }
        }
        // Still woken: let lapin read and write first, then come back (any of its wakers makes
        // its loop go round once).
        lapin.wake_by_ref();
    }

    /// The stream is gone with lapin's loop: the task goes on on the tokio runtime.
    fn detach(&self) {
        let previous = std::mem::replace(&mut *self.shared.slot.lock(), Slot::Detached);
        if let Slot::Ready(task) = previous {
            self.shared.handle.spawn(task);
        }
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(lapin) = self.lapin.lock().as_ref() {
            lapin.wake_by_ref();
        }
    }
}

/// tokio's reactor, whose TCP streams run the connection's receive task (see the module).
#[derive(Clone)]
pub(crate) struct HookedReactor {
    tokio: Tokio,
    io_thread: IoThread,
}

impl std::fmt::Debug for HookedReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedReactor")
    }
}

impl Reactor for HookedReactor {
    type TcpStream = HookedStream<<Tokio as Reactor>::TcpStream>;
    type Sleep = <Tokio as Reactor>::Sleep;

    /// lapin connects by address only; registering other sockets is not offered.
    fn register<H: Read + Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Err::<Self::TcpStream, _>(io::Error::other(
            "the adapter's lapin runtime only opens TCP connections",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.tokio.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.tokio.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.tokio.tcp_connect_addr(addr);
        let io_thread = self.io_thread.clone();
        async move {
            Ok(HookedStream {
                inner: connect.await?,
                io_thread,
            })
        }
    }
}

/// A TCP stream that runs the receive task before lapin flushes or reads it.
pub(crate) struct HookedStream<S> {
    inner: S,
    io_thread: IoThread,
}

impl<S> Drop for HookedStream<S> {
    fn drop(&mut self) {
        self.io_thread.detach();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HookedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.io_thread.run_woken(cx.waker(), true);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io_thread.run_woken(cx.waker(), true);
        Pin::new(&mut self.inner).poll_read_vectored(cx, bufs)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HookedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io_thread.run_woken(cx.waker(), false);
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::thread::{self, ThreadId};

    /// Counts the wake-ups of "lapin's loop".
    struct LoopWaker(AtomicUsize);

    impl Wake for LoopWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task that reports the thread of each poll and waits for a signal between them.
    fn reporting_task(
        polled_on: mpsc::Sender<ThreadId>,
        mut go_on: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Task {
        Box::pin(async move {
            let _ = polled_on.send(thread::current().id());
            while go_on.recv().await.is_some() {
                let _ = polled_on.send(thread::current().id());
            }
        })
    }

    #[test]
    fn the_task_runs_where_the_stream_is_used_and_moves_to_tokio_when_it_is_dropped() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (stream, io_thread) = runtime.block_on(async {
            let (lapin_runtime, io_thread) = IoThread::runtime();
            let stream = lapin_runtime.tcp_connect_addr(address).await.unwrap();
            (stream, io_thread)
        });
        let _peer = listener.accept().unwrap();

        // "lapin's loop": a plain thread that reads the stream when told to.
        let (turn, turns) = mpsc::channel::<bool>();
        let (went_round, rounds) = mpsc::channel::<()>();
        let loop_waker = Arc::new(LoopWaker(AtomicUsize::new(0)));
        let waker = Waker::from(loop_waker.clone());
        let lapin = thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 16];
            while let Ok(true) = turns.recv() {
                let _ = Pin::new(&mut stream).poll_read(&mut Context::from_waker(&waker), &mut buf);
                let _ = went_round.send(());
            }
            thread::current().id()
        });
        let go_round = || {
            turn.send(true).unwrap();
            rounds.recv_timeout(Duration::from_secs(5)).unwrap();
        };
        go_round(); // lapin reads once: the stream learns lapin's waker

        let (polled_on, polls) = mpsc::channel();
        let (go_on, signals) = tokio::sync::mpsc::unbounded_channel();
        let wakes = loop_waker.0.load(Ordering::SeqCst);
        io_thread.spawn(reporting_task(polled_on, signals));
        assert!(
            loop_waker.0.load(Ordering::SeqCst) > wakes,
            "spawning wakes lapin's loop"
        );
        go_round();
        let first = polls.recv_timeout(Duration::from_secs(5)).unwrap();

        // Woken from another thread: lapin's loop is woken, and the task runs there again.
        let wakes = loop_waker.0.load(Ordering::SeqCst);
        go_on.send(()).unwrap();
        assert!(loop_waker.0.load(Ordering::SeqCst) > wakes);
        go_round();
        let second = polls.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, second, "both polls on lapin's thread");

        // lapin's loop ends: the task goes on on tokio's worker.
        turn.send(false).unwrap();
        let lapin_thread = lapin.join().unwrap();
        assert_eq!(first, lapin_thread);
        go_on.send(()).unwrap();
        let third = polls.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(third, lapin_thread, "polled by the tokio runtime");
        drop(go_on);
    }

    #[test]
    fn a_panicking_task_costs_the_task_not_the_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_lapin_runtime, io_thread) = runtime.block_on(async { IoThread::runtime() });
        io_thread.spawn(Box::pin(async { panic!("a bug in the receive task") }));
        let waker = Waker::noop();
        io_thread.run_woken(waker, true);
        assert!(matches!(*io_thread.shared.slot.lock(), Slot::Empty));
        // The thread goes on, and the next task runs.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        io_thread.spawn(Box::pin(async move { flag.store(true, Ordering::SeqCst) }));
        io_thread.run_woken(waker, true);
        assert!(ran.load(Ordering::SeqCst));
        // A wake after the task ended (a timer it left behind, say) finds no task: nothing runs,
        // nothing blocks.
        Waker::from(io_thread.shared.clone()).wake();
        io_thread.run_woken(waker, true);
        assert!(matches!(*io_thread.shared.slot.lock(), Slot::Empty));
    }
}
