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
        // SAFETY: the Start box is retained across pthread_create and released exactly once, by the thread or on
        // failure.
        let start = unsafe Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let result = unsafe pthread_create(&thread, nil, { argument in
            let start = unsafe Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
            _ = unsafe cvfs_set_thread_name(String(start.name.utf8.prefix(15))!)
            // A stack of its own for the crash handler, so that even a stack overflow gets its log line.
            let signalStack = unsafe cvfs_alternate_signal_stack()
            start.body()
            unsafe cvfs_free_alternate_signal_stack(signalStack)
            return nil
        }, unsafe start)
        if result != 0 {
            unsafe Unmanaged<Start>.fromOpaque(start).release()
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
    /// Gives the free pages of every malloc arena back to the kernel (`malloc_trim(0)`): after many small
    /// objects are freed, glibc keeps their pages unless asked. Takes each arena's lock in turn.
    public static func returnFreedMemory() {
        _ = cvfs_malloc_trim()
    }

    /// Bytes malloc has handed out and not had back, over every arena (`mallinfo2`).
    public static var heapInUse: Int { Int(cvfs_heap_in_use()) }

    /// Ignores SIGPIPE, so a front-end that goes away makes a write fail with EPIPE instead of killing us.
    public static func ignoreBrokenPipe() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// Unblocks every signal of the calling thread, so that SIGTERM works whatever mask the starting program left
    /// (a program started from a libdispatch worker inherits that worker's mask, which blocks nearly all).
    public static func unblockAllSignals() {
        // SAFETY: the signal set is a local, read during the call.
        var none = sigset_t()
        unsafe sigemptyset(&none)
        unsafe pthread_sigmask(SIG_SETMASK, &none, nil)
    }

    /// Raises the soft limit on open descriptors to `limit`, and the hard limit with it where the process may
    /// (CAP_SYS_RESOURCE, as virtiofsd does when it runs as root); else to the hard limit, if that is lower.
    /// Never lowers either. Returns the limit now in force.
    @discardableResult
    public static func raiseOpenFileLimit(to limit: UInt64) -> UInt64 {
        // SAFETY: getrlimit writes a local during the call.
        var current = rlimit()
        guard unsafe getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current) == 0 else { return 0 }
        guard limit > UInt64(current.rlim_cur) else { return UInt64(current.rlim_cur) }
        return setOpenFileLimit(limit)
    }

    /// Sets the soft limit on open descriptors to `limit` (raising the hard limit too where allowed); returns the
    /// limit now in force.
    @discardableResult
    public static func setOpenFileLimit(_ limit: UInt64) -> UInt64 {
        // SAFETY: getrlimit and setrlimit read and write locals during the calls.
        var current = rlimit()
        guard unsafe getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current) == 0 else { return 0 }
        var wanted = current
        wanted.rlim_cur = rlim_t(limit)
        if UInt64(wanted.rlim_max) < limit { wanted.rlim_max = rlim_t(limit) }
        if unsafe setrlimit(CInt(RLIMIT_NOFILE.rawValue), &wanted) != 0 {
            wanted.rlim_max = current.rlim_max
            wanted.rlim_cur = rlim_t(min(limit, UInt64(current.rlim_max)))
            _ = unsafe setrlimit(CInt(RLIMIT_NOFILE.rawValue), &wanted)
        }
        _ = unsafe getrlimit(CInt(RLIMIT_NOFILE.rawValue), &current)
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
        // SAFETY: the sigaction struct is a local; the handler does nothing, so it is async-signal-safe.
        var action = sigaction()
        unsafe action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0  // no SA_RESTART: the blocked call returns EINTR
        unsafe sigemptyset(&action.sa_mask)
        unsafe sigaction(signalNumber, &action, nil)
    }

    /// Lets the wake-up signal reach the calling thread: a thread inherits its creator's signal mask, which
    /// may block it.
    public static func allowOnCurrentThread() {
        // SAFETY: the signal set is a local, read during the call.
        var set = sigset_t()
        unsafe sigemptyset(&set)
        unsafe sigaddset(&set, signalNumber)
        unsafe pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The calling thread, as `wake` names it.
    public static var current: pthread_t { pthread_self() }

    /// Interrupts what `thread` is blocked in.
    public static func wake(_ thread: pthread_t) {
        pthread_kill(thread, signalNumber)
    }
}

/// One log line for a crash, whatever the seccomp filter allows (see `cvfs_install_crash_handlers`).
public enum CrashReporting {
    /// Installs the fatal-signal handlers and an alternate stack for the calling thread; threads started with
    /// `SystemThread` get one of their own.
    public static func install(program: String) {
        // SAFETY: the program name is strdup'd and kept for the process's life, as the handler reads it.
        // The handler keeps the pointer for the life of the process.
        let name = unsafe strdup(program)
        unsafe cvfs_install_crash_handlers(name)
        _ = unsafe cvfs_alternate_signal_stack()
    }
}

/// Test hooks for the seccomp filter and the crash line (`--debug-probe`): each makes one call, or crashes, after
/// the filter is in place.
public enum DebugProbe {
    public static let names = [
        "unshare-user", "unshare-mount", "unshare-fs", "clone-namespace", "clone-process", "clone3", "clone-thread",
        "prctl-dumpable", "prctl-name", "ioctl-tiocsti", "tgkill-self", "tgkill-other", "crash-trap", "crash-segv",
    ]

    /// Runs probe `name`; returns what happened ("allowed", or the errno's text) if the process survives it.
    public static func run(_ name: String) -> String {
        // SAFETY: probes only: the crash probes fault on purpose; the rest pass no pointers of ours.
        let result: CInt
        switch name {
        case "unshare-user": result = cvfs_probe_unshare(CVFS_CLONE_NEWUSER)
        case "unshare-mount": result = cvfs_probe_unshare(CVFS_CLONE_NEWNS)
        case "unshare-fs": result = cvfs_probe_unshare(CVFS_CLONE_FS)
        case "clone-namespace": result = cvfs_probe_clone(UInt(CVFS_CLONE_NEWNS))
        case "clone-process": result = cvfs_probe_clone(0)
        case "clone3": result = cvfs_probe_clone3_process()
        case "clone-thread":
            do {
                let thread = try SystemThread(name: "probe") {}
                thread.join()
                result = 0
            } catch {
                result = error.rawValue
            }
        case "prctl-dumpable": result = cvfs_probe_prctl(CVFS_PR_SET_DUMPABLE)
        case "prctl-name": result = cvfs_probe_prctl(CVFS_PR_SET_NAME)
        case "ioctl-tiocsti": result = cvfs_probe_ioctl_tiocsti()
        case "tgkill-self": result = cvfs_probe_tgkill(0)
        case "tgkill-other": result = cvfs_probe_tgkill(1)
        case "crash-trap", "crash-segv":
            let thread = try? SystemThread(name: "crash-probe") {
                if name == "crash-trap" {
                    let values: [Int] = []
                    // A failed runtime check, as an out-of-range index in the request path would be.
                    _ = values[Int(getpid() % 2) + 1]
                } else {
                    unsafe UnsafeMutablePointer<Int>(bitPattern: 8)!.pointee = 1
                }
            }
            thread?.join()
            return "did not crash"
        default: return "unknown probe"
        }
        return result == 0 ? "allowed" : Errno(rawValue: result).description
    }
}
