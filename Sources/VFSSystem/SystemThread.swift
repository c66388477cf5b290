// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A plain pthread. Queue workers use these rather than Swift's cooperative pool: per-thread credentials
/// and blocking system calls must stay on one thread.
public final class SystemThread: @unchecked Sendable {
    private var handle: pthread_t

    private final class Start {
        let name: String
        let body: () -> Void
        init(name: String, body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new thread named `name` (at most 15 bytes are kept).
    public init(name: String, body: @escaping @Sendable () -> Void) throws(Errno) {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
            _ = cvfs_set_thread_name(String(start.name.utf8.prefix(15))!)
            start.body()
            return nil
        }, start)
        if result != 0 {
            Unmanaged<Start>.fromOpaque(start).release()
            throw Errno(rawValue: result)
        }
        handle = thread
    }

    /// Starts `body` on a detached thread that nobody joins (a lock wait that ends when it ends).
    public static func detached(name: String, body: @escaping @Sendable () -> Void) throws(Errno) {
        let thread = try SystemThread(name: name, body: body)
        pthread_detach(thread.handle)
    }

    /// Waits for the thread to end.
    public func join() {
        pthread_join(handle, nil)
    }

    /// The kernel's id of the calling thread.
    public static var currentID: pid_t { cvfs_gettid() }
}

/// Process-wide settings the daemon makes once.
public enum ProcessSettings {
    /// Ignores SIGPIPE, so a front-end that goes away makes a write fail with EPIPE instead of killing us.
    public static func ignoreBrokenPipe() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// Unblocks every signal of the calling thread, so that SIGTERM works whatever mask the starting program left
    /// (a program started from a libdispatch worker inherits that worker's mask, which blocks nearly all).
    public static func unblockAllSignals() {
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
    }

    /// Raises the soft limit on open descriptors to `limit` (or the hard limit, if lower); returns the new limit.
    @discardableResult
    public static func raiseOpenFileLimit(to limit: UInt64) -> UInt64 {
        var current = rlimit()
        guard getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current) == 0 else { return 0 }
        var wanted = current
        wanted.rlim_cur = rlim_t(min(UInt64(current.rlim_max), limit))
        if wanted.rlim_cur > current.rlim_cur, setrlimit(CInt(RLIMIT_NOFILE.rawValue), &wanted) == 0 {
            return UInt64(wanted.rlim_cur)
        }
        return UInt64(current.rlim_cur)
    }

    /// Sets the soft limit on open descriptors to `limit` (raising the hard limit too where allowed); returns the
    /// limit now in force.
    @discardableResult
    public static func setOpenFileLimit(_ limit: UInt64) -> UInt64 {
        var current = rlimit()
        guard getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current) == 0 else { return 0 }
        var wanted = current
        wanted.rlim_cur = rlim_t(limit)
        if UInt64(wanted.rlim_max) < limit { wanted.rlim_max = rlim_t(limit) }
        if setrlimit(CInt(RLIMIT_NOFILE.rawValue), &wanted) != 0 {
            wanted.rlim_max = current.rlim_max
            wanted.rlim_cur = rlim_t(min(limit, UInt64(current.rlim_max)))
            _ = setrlimit(CInt(RLIMIT_NOFILE.rawValue), &wanted)
        }
        _ = getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current)
        return UInt64(current.rlim_cur)
    }

    /// Exits the process at once with `status`.
    public static func exit(_ status: CInt) -> Never { Glibc.exit(status) }
}

/// Wakes a thread out of a blocking system call (a lock wait) with a signal whose handler does nothing and
/// does not restart the call, so the call fails with EINTR.
public enum ThreadWakeup {
    static let signalNumber = SIGUSR2

    /// Installs the handler, once per process.
    public static func install() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0  // no SA_RESTART: the blocked call returns EINTR
        sigemptyset(&action.sa_mask)
        sigaction(signalNumber, &action, nil)
    }

    /// Lets the wake-up signal reach the calling thread: a thread inherits its creator's signal mask, which
    /// may block it.
    public static func allowOnCurrentThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signalNumber)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The calling thread, as `wake` names it.
    public static var current: pthread_t { pthread_self() }

    /// Interrupts what `thread` is blocked in.
    public static func wake(_ thread: pthread_t) {
        pthread_kill(thread, signalNumber)
    }
}
