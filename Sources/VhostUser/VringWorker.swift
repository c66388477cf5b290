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
        /// Where the worker stopped (GET_VRING_BASE).
        var stoppedAt: UInt16?
    }

    let state: Mutex<State>

    init(memory: GuestMemoryMap, enabled: Bool, callFD: consuming OwnedFD?) {
        let raw = callFD?.rawValue ?? -1
        state = Mutex(State(memory: memory, memoryGeneration: 0, enabled: enabled, callFD: callFD, callRaw: raw, stoppedAt: nil))
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

/// The ring configuration that the front-end sends before starting a queue.
struct VringAddresses: Sendable, Equatable {
    var descriptors: UInt64
    var available: UInt64
    var used: UInt64
}

/// One queue's worker thread: waits on the kick eventfd with epoll, pops chains, hands them to the handler,
/// completes them and signals the guest once per batch.
final class VringWorker: @unchecked Sendable {
    private static let kickToken: UInt64 = 0
    private static let stopToken: UInt64 = 1
    private static let wakeToken: UInt64 = 2

    let index: Int
    let shared: VringShared
    private let stop: EventFD
    private let wake: EventFD
    private var thread: SystemThread?
    /// Requests finished off the worker thread; valid while the worker runs.
    let completions: DeferredCompletions

    /// Starts serving a queue.
    /// - Parameters:
    ///   - kick: the kick eventfd; the worker owns it from now on.
    ///   - handler: used by the worker thread only.
    init(
        index: Int, size: UInt16, addresses: VringAddresses, base: UInt16, eventIndex: Bool,
        kick: consuming OwnedFD, shared: VringShared, makeHandler: (DeferredCompletions) -> any VringRequestHandler,
        logger: Logger
    ) throws(VhostUserError) {
        self.index = index
        self.shared = shared
        do {
            stop = try EventFD()
            wake = try EventFD()
        } catch {
            throw .io(error)
        }
        completions = DeferredCompletions(wake: wake.fd.rawValue)
        let handler = makeHandler(completions)
        let memory = shared.state.withLock { $0.memory }
        let queue: SplitQueue
        do {
            queue = try SplitQueue(
                size: size, descriptorsAt: addresses.descriptors, availableAt: addresses.available,
                usedAt: addresses.used, memory: memory, eventIndex: eventIndex, nextAvailable: base)
        } catch {
            throw .invalid(.setVringKick, "queue \(index): the rings are not in guest memory")
        }
        let body = WorkerBody(
            index: index, queue: queue, addresses: addresses, kick: kick.release(), stop: stop.fd.rawValue,
            wake: wake.fd.rawValue, shared: shared, handler: handler, completions: completions, logger: logger)
        do {
            thread = try SystemThread(name: "vring-\(index)") { body.run() }
        } catch {
            throw .io(error)
        }
    }

    /// Wakes the worker so it picks up a new memory table or enable state.
    func poke() { wake.signal() }

    /// Stops the worker and waits for it; returns the next available index, for GET_VRING_BASE.
    func stopAndJoin() -> UInt16 {
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
    private final class WorkerBody: @unchecked Sendable {
        let index: Int
        @exclusivity(unchecked) var queue: SplitQueue
        let addresses: VringAddresses
        let kick: OwnedFD
        let stop: CInt
        let wake: CInt
        let shared: VringShared
        let handler: any VringRequestHandler
        let completions: DeferredCompletions
        let logger: Logger
        let chain: DescriptorChain
        @exclusivity(unchecked) var memoryGeneration: UInt64 = 0
        @exclusivity(unchecked) var broken = false
        /// Requests completed in a batch between two signals to the guest (see `process`).
        static var signalEvery: Int { 16 }

        init(
            index: Int, queue: SplitQueue, addresses: VringAddresses, kick: CInt, stop: CInt, wake: CInt,
            shared: VringShared, handler: any VringRequestHandler, completions: DeferredCompletions, logger: Logger
        ) {
            self.index = index
            self.queue = queue
            self.addresses = addresses
            self.kick = OwnedFD(taking: kick)
            self.stop = stop
            self.wake = wake
            self.shared = shared
            self.handler = handler
            self.completions = completions
            self.logger = logger
            // A chain has at most `size` direct descriptors, or one indirect table; 1 MiB of 4 KiB pages plus
            // headers fits comfortably in 1024 buffers per side.
            self.chain = DescriptorChain(capacity: max(Int(queue.size), 1024))
        }

        func run() {
            defer {
                let next = queue.nextAvailable
                shared.state.withLock { $0.stoppedAt = next }
            }
            do {
                let epoll = try Epoll()
                try epoll.add(kick.borrowed, token: VringWorker.kickToken)
                try epoll.add(FileDescriptor(rawValue: stop), token: VringWorker.stopToken)
                try epoll.add(FileDescriptor(rawValue: wake), token: VringWorker.wakeToken)
                serve(epoll)
            } catch {
                logger.error("queue \(index): cannot set up epoll: \(error)")
            }
        }

        private func serve(_ epoll: borrowing Epoll) {
            // Buffers may have been made available before the kick fd was set up.
            process()
            let tokens = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 4)
            defer { tokens.deallocate() }
            while true {
                let count: Int
                do {
                    count = try epoll.wait(into: tokens)
                } catch {
                    logger.error("queue \(index): epoll_wait failed: \(error)")
                    return
                }
                for i in 0..<count {
                    switch tokens[i] {
                    case VringWorker.stopToken: return
                    case VringWorker.kickToken: EventFD.drain(kick.borrowed)
                    default: EventFD.drain(FileDescriptor(rawValue: wake))
                    }
                }
                process()
            }
        }

        /// Serves everything available, then re-arms notifications and signals the guest once.
        func process() {
            let (enabled, memory, generation) = shared.state.withLock { ($0.enabled, $0.memory, $0.memoryGeneration) }
            if generation != memoryGeneration {
                memoryGeneration = generation
                do {
                    try queue.updateMemory(
                        memory, descriptorsAt: addresses.descriptors, availableAt: addresses.available,
                        usedAt: addresses.used)
                } catch {
                    logger.error("queue \(index): the rings are not in the new memory table; queue stopped")
                    broken = true
                }
            }
            guard enabled, !broken else { return }
            var completed = false
            for done in completions.take() {
                queue.complete(head: done.head, length: done.length)
                completed = true
            }
            // In a long batch the guest hears every `signalEvery` requests, not only at the end, so that it can
            // take its first replies and queue more while this thread serves the rest: guest and back-end then
            // work side by side on two cores instead of in turn. (With EVENT_IDX the guest's used_event decides
            // whether each of these becomes an interrupt.)
            var sinceSignal = 0
            repeat {
                while true {
                    do {
                        guard try queue.pop(into: chain) else { break }
                        if let written = handler.handle(chain) {
                            queue.complete(head: chain.headIndex, length: written)
                            sinceSignal += 1
                            if sinceSignal == Self.signalEvery {
                                sinceSignal = 0
                                if queue.needsNotification() { shared.signalGuest() }
                            }
                        }
                    } catch let error {
                        switch error {
                        case .invalidChain(let head, let reason):
                            logger.warning("queue \(index): malformed descriptor chain \(head): \(reason)")
                            queue.complete(head: head, length: 0)
                        default:
                            logger.error("queue \(index): broken ring (\(error)); queue stopped")
                            broken = true
                        }
                    }
                    completed = true
                    if broken { break }
                }
            } while !broken && queue.enableNotification()
            if completed && queue.needsNotification() {
                shared.signalGuest()
            }
        }
    }
}
