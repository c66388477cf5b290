// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import Synchronization

/// A blocking system call that another thread can end: a lock wait (F_OFD_SETLKW, flock) that the guest
/// interrupts, or that a ring stop must end before the front-end hears the ring has stopped.
///
/// The waiting thread runs the call through `run`; `cancel` marks the wait cancelled and sends the thread a
/// signal whose handler does nothing and does not restart the call, so the call fails with EINTR. The signal
/// may land before the thread has entered the call: `cancel` repeats it until the thread has left `run`.
public final class CancellableWait: Sendable {
    private struct State {
        var cancelled = false
        /// The thread inside `run`, if one is.
        var thread: pthread_t?
        /// Whether that thread has left `run`.
        var finished = false
    }

    private let state = Mutex(State())

    /// The wake-up signal's handler, installed once, before the first wait can be cancelled.
    private static let handlerInstalled: Void = ThreadWakeup.install()

    public init() { Self.handlerInstalled }

    /// Whether `cancel` was called.
    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Runs `body` (a blocking call that fails with EINTR when signalled), again after a stray EINTR, until it
    /// succeeds or fails otherwise, or the wait is cancelled.
    /// - Throws: `Errno.interrupted` when cancelled, else what `body` throws.
    public func run(_ body: () throws(Errno) -> Void) throws(Errno) {
        ThreadWakeup.allowOnCurrentThread()
        let cancelledAlready = state.withLock { state in
            state.thread = pthread_self()
            return state.cancelled
        }
        defer { state.withLock { $0.finished = true } }
        if cancelledAlready { throw .interrupted }
        while true {
            do throws(Errno) {
                try body()
                return
            } catch {
                if error != .interrupted { throw error }
                if isCancelled { throw .interrupted }
                // A stray signal: wait again.
            }
        }
    }

    /// Ends the wait: `run` throws EINTR now or as soon as it starts. Returns once the waiting thread has left
    /// the blocking call (at once if no thread has entered `run`).
    public func cancel() {
        while true {
            let waiting = state.withLock { state -> Bool in
                state.cancelled = true
                // No thread yet: it will see the flag when it starts. A thread that finished needs nothing.
                guard !state.finished, let thread = state.thread else { return false }
                // Signalled under the lock: the thread cannot leave `run` (and end) meanwhile.
                ThreadWakeup.wake(thread)
                return true
            }
            guard waiting else { return }
            usleep(200)
        }
    }
}
