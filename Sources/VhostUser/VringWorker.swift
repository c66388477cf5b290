// SPDX-License-Identifier: Apache-2.0

import GuestMemory
import Logging
import Synchronization
import VFSSystem
import Virtqueue

/// The state one queue's worker shares with the control thread. Each queue has its own lock, taken once per
/// wake-up and once per interrupt: no lock is shared by all queues.
final class VringShared: Sendable {
    struct State: ~Copyable {
        var memory: GuestMemoryMap
        var memoryGeneration: UInt64
        var enabled: Bool
        /// Owns the call eventfd; `callRaw` is the same number, for signalling without consuming it.
        var callFD: OwnedFD? {
            didSet { callRaw = callFD?.rawValue ?? -1 }
        }
        var callRaw: CInt = -1
        /// Where the worker stopped (GET_VRING_BASE), as the queue reports it (`DeviceQueue.ringState`).
        var stoppedAt: UInt32?
        /// The dirty-page log while the front-end migrates (nil: not logging), and where the used ring is logged.
        var logging: VringLogging = VringLogging()
        /// The `logging.generation` the worker has applied: every completion after it is logged as `logging` says.
        var appliedLogging: UInt64 = 0
    }

    let state: Mutex<State>
    /// Bumped at every change of `logging`: the worker looks at it after each request, without the lock.
    let loggingChanges = Atomic<UInt64>(0)

    init(memory: GuestMemoryMap, enabled: Bool, callFD: consuming OwnedFD?, logging: VringLogging) {
        let raw = callFD?.rawValue ?? -1
        state = Mutex(State(memory: memory, memoryGeneration: 0, enabled: enabled, callFD: callFD, callRaw: raw,
                            stoppedAt: nil, logging: logging, appliedLogging: logging.generation))
    }

    /// Gives the worker new logging settings; it applies them after the request it is serving, or at once when it
    /// waits. `waitApplied` then waits for that.
    func setLogging(_ logging: VringLogging) {
        state.withLock { $0.logging = logging }
        loggingChanges.add(1, ordering: .releasing)
    }

    /// Waits until the worker has applied `generation` (polling: a control-path call), up to `milliseconds`;
    /// whether it did.
    func waitApplied(_ generation: UInt64, milliseconds: Int) -> Bool {
        var waited = 0
        while state.withLock({ $0.appliedLogging }) != generation {
            guard waited < milliseconds else { return false }
            ProcessSettings.sleep(microseconds: 1000)
            waited += 1
        }
        return true
    }

    /// Replaces the call eventfd (SET_VRING_CALL on a running queue), closing the old one.
    func replaceCallFD(_ fd: consuming OwnedFD?) {
        var pending = fd
        state.withLock { $0.callFD = pending.take() }
    }

    /// Signals the guest through the call eventfd, if there is one.
    func signalGuest() {
        state.withLock { state in
            if state.callRaw >= 0 { EventFD.signal(FileDescriptor(rawValue: state.callRaw)) }
        }
    }
}

/// Dirty-page logging of one queue: the log while the front-end has VHOST_F_LOG_ALL on, and the guest address
/// of the used ring when its VHOST_VRING_F_LOG flag is set.
struct VringLogging: Sendable {
    var log: DirtyLog?
    var usedAt: UInt64?
    /// Which change this is (the handler counts them).
    var generation: UInt64 = 0
}

/// The ring configuration that the front-end sends before starting a queue.
struct VringAddresses: Sendable, Equatable {
    var descriptors: UInt64
    var available: UInt64
    var used: UInt64
}

/// Heads of the chains a queue's handler deferred and has not finished: a guest that makes one of them
/// available again while it is in flight (which no correct driver does) is not served twice, so deferred work
/// per queue never exceeds the queue's size. Used by the worker thread only, so its count opts out of dynamic
/// exclusivity checks.
// SAFETY: Owns its words; every index is checked against `wordCount`.
@safe
final class InFlightHeads {
    private let words: UnsafeMutablePointer<UInt64>
    private let wordCount: Int
    @exclusivity(unchecked) private(set) var count = 0

    init(size: UInt16) {
        // SAFETY: allocates and zeroes the words this object owns.
        wordCount = (Int(size) + 63) / 64
        unsafe words = .allocate(capacity: wordCount)
        unsafe words.initialize(repeating: 0, count: wordCount)
    }

    // SAFETY: frees what init allocated, once.
    deinit { unsafe words.deallocate() }

    @inline(__always)
    func contains(_ head: UInt16) -> Bool {
        // SAFETY: the word index is checked against wordCount.
        let word = Int(head) >> 6
        return unsafe (word < wordCount && words[word] & (1 << UInt64(head & 63)) != 0)
    }

    func insert(_ head: UInt16) {
        // SAFETY: the word index is checked against wordCount.
        let word = Int(head) >> 6
        guard word < wordCount, unsafe words[word] & (1 << UInt64(head & 63)) == 0 else { return }
        unsafe words[word] |= 1 << UInt64(head & 63)
        unsafe count += 1
    }

    func remove(_ head: UInt16) {
        // SAFETY: the word index is checked against wordCount.
        let word = Int(head) >> 6
        guard word < wordCount, unsafe words[word] & (1 << UInt64(head & 63)) != 0 else { return }
        unsafe words[word] &= ~(1 << UInt64(head & 63))
        unsafe count -= 1
    }
}

/// One queue's worker thread: waits on the kick eventfd with epoll, pops chains, hands them to the handler,
/// completes them and signals the guest once per batch.
///
/// Stopping it (GET_VRING_BASE, a reset, the front-end gone) ends every request it handed out first: the
/// handler cancels its lock waits and lets its pool finish, the worker publishes their replies, and only then
/// does `stopAndJoin` return the index the front-end gets.
final class VringWorker: @unchecked Sendable {
    fileprivate static let kickToken: UInt64 = 0
    fileprivate static let stopToken: UInt64 = 1
    fileprivate static let wakeToken: UInt64 = 2
    fileprivate static let completionToken: UInt64 = 3
    /// How long a stop waits for deferred requests that do not end (a pool job stuck in a host call) before it
    /// gives up on them with one log line.
    static var stopTimeoutMilliseconds: CInt { 30_000 }

    let index: Int
    let shared: VringShared
    /// Stop: end the worker. Wake: pick up a new memory table or enable state.
    private let stop: SharedEventFD
    private let wake: SharedEventFD
    private var thread: SystemThread?
    /// Requests finished off the worker thread.
    let completions: DeferredCompletions

    /// Starts serving a queue.
    /// - Parameters:
    ///   - kick: the kick eventfd; the worker owns it from now on.
    ///   - handler: used by the worker thread only.
    ///   - packed: the ring is packed (VIRTIO_F_RING_PACKED): `addresses` are the descriptor ring, the driver's
    ///     and the device's event suppression structures, and `base` carries both positions.
    init(
        index: Int, size: UInt16, addresses: VringAddresses, base: UInt32, eventIndex: Bool, packed: Bool = false,
        kick: consuming OwnedFD, shared: VringShared, makeHandler: (DeferredCompletions) -> any VringRequestHandler,
        logger: Logger
    ) throws(VhostUserError) {
        self.index = index
        self.shared = shared
        do {
            stop = try SharedEventFD()
            wake = try SharedEventFD()
            completions = try DeferredCompletions()
        } catch {
            throw .io(error)
        }
        let memory = shared.state.withLock { $0.memory }
        do {
            // Each layout gets its own specialised worker: the request loop calls the queue directly.
            if packed {
                let queue = try PackedQueue(
                    size: size, descriptorsAt: addresses.descriptors, driverEventAt: addresses.available,
                    deviceEventAt: addresses.used, memory: memory, eventIndex: eventIndex, state: base)
                thread = try Self.start(
                    index: index, queue: queue, addresses: addresses, kick: kick, stop: stop, wake: wake, shared: shared,
                    handler: makeHandler(completions), completions: completions, logger: logger)
            } else {
                let queue = try SplitQueue(
                    size: size, descriptorsAt: addresses.descriptors, availableAt: addresses.available,
                    usedAt: addresses.used, memory: memory, eventIndex: eventIndex,
                    nextAvailable: UInt16(truncatingIfNeeded: base))
                thread = try Self.start(
                    index: index, queue: queue, addresses: addresses, kick: kick, stop: stop, wake: wake, shared: shared,
                    handler: makeHandler(completions), completions: completions, logger: logger)
            }
        } catch let error as VirtqueueError {
            if case .ringStateOutOfRange(let state) = error {
                throw .invalid(.setVringKick, "queue \(index): base 0x\(String(state, radix: 16)) is past a ring of \(size)")
            }
            throw .invalid(.setVringKick, "queue \(index): the rings are not in guest memory")
        } catch let error as Errno {
            throw .io(error)
        } catch {
            throw .invalid(.setVringKick, "queue \(index): \(error)")
        }
    }

    private static func start<Queue: DeviceQueue & SendableMetatype>(
        index: Int, queue: Queue, addresses: VringAddresses, kick: consuming OwnedFD, stop: SharedEventFD,
        wake: SharedEventFD, shared: VringShared, handler: any VringRequestHandler, completions: DeferredCompletions,
        logger: Logger
    ) throws(Errno) -> SystemThread {
        let body = WorkerBody(
            index: index, queue: queue, addresses: addresses, kick: kick, stop: stop, wake: wake, shared: shared,
            handler: handler, completions: completions, logger: logger)
        return try SystemThread(name: "vring-\(index)") { body.run() }
    }

    /// Wakes the worker so it picks up a new memory table or enable state.
    func poke() { wake.signal() }

    /// Stops the worker once every request it handed out has its reply, and waits for it; returns where the
    /// queue stands, for GET_VRING_BASE.
    func stopAndJoin() -> UInt32 {
        stop.signal()
        thread?.join()
        thread = nil
        return shared.state.withLock { $0.stoppedAt ?? 0 }
    }

    deinit {
        if thread != nil { _ = stopAndJoin() }
    }

    /// What runs on the worker thread. Everything in it belongs to that thread alone, so its mutable state
    /// opts out of dynamic exclusivity checks, which would otherwise run on every request.
    private final class WorkerBody<Queue: DeviceQueue>: @unchecked Sendable {
        let index: Int
        @exclusivity(unchecked) var queue: Queue
        let addresses: VringAddresses
        let kick: OwnedFD
        let stop: SharedEventFD
        let wake: SharedEventFD
        let shared: VringShared
        let handler: any VringRequestHandler
        let completions: DeferredCompletions
        let logger: Logger
        let chain: DescriptorChain
        let inFlight: InFlightHeads
        /// Completions taken from `completions`, reused.
        @exclusivity(unchecked) var taken: [(head: UInt16, length: UInt32)] = []
        @exclusivity(unchecked) var memoryGeneration: UInt64 = 0
        /// `shared.loggingChanges` when logging was last applied.
        @exclusivity(unchecked) var loggingSeen: UInt64 = ~0
        @exclusivity(unchecked) var broken = false
        let duplicateReported = OneTimeFlag()
        let malformedReported = OneTimeFlag()
        /// Requests completed in a batch between two signals to the guest (see `process`).
        static var signalEvery: Int { 16 }

        // SAFETY: the kick descriptor is owned from here on; the chain's capacity covers a queue's longest chain.
        init(
            index: Int, queue: Queue, addresses: VringAddresses, kick: consuming OwnedFD, stop: SharedEventFD,
            wake: SharedEventFD, shared: VringShared, handler: any VringRequestHandler, completions: DeferredCompletions,
            logger: Logger
        ) {
            self.index = index
            unsafe self.queue = queue
            self.addresses = addresses
            self.kick = kick
            self.stop = stop
            self.wake = wake
            self.shared = shared
            self.handler = handler
            self.completions = completions
            self.logger = logger
            // A chain has at most `size` direct descriptors, or one indirect table; 1 MiB of 4 KiB pages plus
            // headers fits comfortably in 1024 buffers per side.
            self.chain = DescriptorChain(capacity: max(Int(queue.size), 1024), memory: queue.memory)
            self.inFlight = InFlightHeads(size: queue.size)
        }

        func run() {
            // SAFETY: epoll watches descriptors this body or its shared objects own for as long as it runs.
            defer {
                let next = unsafe queue.ringState
                shared.state.withLock { $0.stoppedAt = next }
            }
            do {
                let epoll = try Epoll()
                try epoll.add(kick.borrowed, token: VringWorker.kickToken)
                try epoll.add(stop.descriptor, token: VringWorker.stopToken)
                try epoll.add(wake.descriptor, token: VringWorker.wakeToken)
                try epoll.add(completions.wake.descriptor, token: VringWorker.completionToken)
                serve(epoll)
            } catch {
                logger.error("queue \(index): cannot set up epoll: \(error)")
            }
            finishDeferred()
        }

        private func serve(_ epoll: borrowing Epoll) {
            // SAFETY: the token buffer is allocated for 4 entries and epoll.wait writes at most that many.
            // Buffers may have been made available before the kick fd was set up.
            process()
            let tokens = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 4)
            defer { unsafe tokens.deallocate() }
            while true {
                let count: Int
                do {
                    count = try unsafe epoll.wait(into: tokens)
                } catch {
                    logger.error("queue \(index): epoll_wait failed: \(error)")
                    return
                }
                for i in 0..<count {
                    switch unsafe tokens[i] {
                    case VringWorker.stopToken: return
                    case VringWorker.kickToken: EventFD.drain(kick.borrowed)
                    case VringWorker.completionToken: completions.wake.drain()
                    default: wake.drain()
                    }
                }
                process()
            }
        }

        /// Publishes the requests finished off this thread; whether there were any.
        func publishCompletions() -> Bool {
            // SAFETY: the used ring is written through the queue, whose pointers are into memory it holds.
            unsafe completions.take(into: &taken)
            for done in unsafe taken {
                inFlight.remove(done.head)
                unsafe queue.complete(head: done.head, length: done.length)
            }
            return unsafe !taken.isEmpty
        }

        /// The ring stops: every request handed out and not yet answered is ended (the handler cancels its lock
        /// waits, its pool runs its jobs to their end), each reply is published, and the guest is signalled.
        func finishDeferred() {
            // SAFETY: completions are published as in process; the handler's deferred requests hold the memory their
            // replies go to.
            var published = publishCompletions()
            handler.stopDeferred()
            var waited: CInt = 0
            while unsafe inFlight.count > 0 {
                published = publishCompletions() || published
                if unsafe inFlight.count == 0 { break }
                guard waited < VringWorker.stopTimeoutMilliseconds else {
                    logger.error(unsafe "queue \(index): \(inFlight.count) requests still unanswered after \(waited / 1000) s; stopping without them")
                    break
                }
                if completions.wake.wait(milliseconds: 100) { completions.wake.drain() } else { waited += 100 }
            }
            if unsafe published && queue.needsNotification() { shared.signalGuest() }
        }

        /// Takes up new logging settings, if the handler gave any since the last look (one relaxed load
        /// otherwise), and tells the handler they apply from here on.
        @inline(__always)
        func applyLoggingIfChanged() {
            // SAFETY: the queue belongs to this thread.
            let changes = shared.loggingChanges.load(ordering: .acquiring)
            guard unsafe changes != loggingSeen else { return }
            unsafe loggingSeen = changes
            let logging = shared.state.withLock { $0.logging }
            unsafe queue.setLogging(logging.log, usedAt: logging.usedAt)
            shared.state.withLock { $0.appliedLogging = logging.generation }
        }

        /// Serves everything available, then re-arms notifications and signals the guest once.
        func process() {
            // SAFETY: chains point into memory the queue holds; the handler uses them during its call or holds
            // chain.memory.
            let (enabled, memory, generation) = shared.state.withLock { ($0.enabled, $0.memory, $0.memoryGeneration) }
            if unsafe generation != memoryGeneration {
                unsafe memoryGeneration = generation
                do {
                    try unsafe queue.updateMemory(
                        memory, descriptorsAt: addresses.descriptors, availableAt: addresses.available,
                        usedAt: addresses.used)
                } catch {
                    logger.error("queue \(index): the rings are not in the new memory table; queue stopped")
                    unsafe broken = true
                }
            }
            applyLoggingIfChanged()
            guard enabled, unsafe !broken else { return }
            var completed = publishCompletions()
            // In a long batch the guest hears every `signalEvery` requests, not only at the end, so that it can
            // take its first replies and queue more while this thread serves the rest: guest and back-end then
            // work side by side on two cores instead of in turn. (With EVENT_IDX the guest's used_event decides
            // whether each of these becomes an interrupt.)
            var sinceSignal = 0
            repeat {
                while true {
                    do {
                        guard try unsafe queue.pop(into: chain) else { break }
                        let head = chain.headIndex
                        if inFlight.contains(head) {
                            // Made available again while it is in flight: serving it again would answer one
                            // chain twice and let a guest multiply deferred work without end.
                            if duplicateReported.first() {
                                logger.warning("queue \(index): the guest made chain \(head) available again while it is in flight; ignored (further ones are not logged)")
                            }
                            continue
                        }
                        defer { applyLoggingIfChanged() }
                        if let written = handler.handle(chain) {
                            unsafe queue.complete(head: head, length: written)
                            sinceSignal += 1
                            if sinceSignal == Self.signalEvery {
                                sinceSignal = 0
                                if unsafe queue.needsNotification() { shared.signalGuest() }
                            }
                        } else {
                            inFlight.insert(head)
                        }
                    } catch let error {
                        switch error {
                        case .invalidChain(let head, let reason):
                            if malformedReported.first() {
                                logger.warning("queue \(index): malformed descriptor chain \(head): \(reason); returned empty (further ones are not logged)")
                            }
                            if !inFlight.contains(head) { unsafe queue.complete(head: head, length: 0) }
                        default:
                            logger.error("queue \(index): broken ring (\(error)); queue stopped")
                            unsafe broken = true
                        }
                    }
                    completed = true
                    if unsafe broken { break }
                }
            } while unsafe !broken && queue.enableNotification()
            if unsafe completed && queue.needsNotification() {
                shared.signalGuest()
            }
        }
    }
}
