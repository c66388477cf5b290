// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Logging
import Synchronization
import VFSSystem
import VhostUser
import Virtqueue

/// Worker threads that serve one queue's requests off its worker thread (`--thread-pool-size`), so a slow
/// request (a large fsync, a full disk) does not hold up the requests behind it.
///
/// The queue worker copies a chain's buffers into a job and returns at once; a pool thread, with its own FUSE
/// session and scratch memory, serves the job and posts the completion back, and the queue worker, the only
/// writer of the used ring, publishes it. Jobs are allocated once and reused. A job holds the guest memory its
/// buffers point into until it is done. The backlog is bounded by the queue's size: the worker never hands
/// out a chain that is still in flight.
final class RequestPool<FS: FileSystem>: @unchecked Sendable {
    /// Buffers one job holds: a 1 MiB request in 4 KiB pages, its headers, and room to spare.
    static var jobCapacity: Int { 272 }

    /// Passed whole from the queue worker to one pool thread and back through the locked lists: never shared.
    // SAFETY: Owns its iovec arrays; `memory` keeps the guest memory they point into mapped while the job lives.
    @safe
    final class Job: @unchecked Sendable {
        let readable = UnsafeMutableBufferPointer<iovec>.allocate(capacity: RequestPool.jobCapacity)
        let writable = UnsafeMutableBufferPointer<iovec>.allocate(capacity: RequestPool.jobCapacity)
        var readableCount = 0
        var writableCount = 0
        var head: UInt16 = 0
        /// Keeps the buffers mapped while the job is queued or served.
        var memory: AnyObject?

        deinit {
            // SAFETY: frees the job's own arrays; nothing refers to them once the job is gone.
            unsafe readable.deallocate()
            unsafe writable.deallocate()
        }
    }

    /// What the pool threads share with the queue worker. The threads hold this, not the pool: the pool is
    /// the queue handler's, and going away it stops them.
    final class Core: @unchecked Sendable {
        let pending = Mutex<[Job]>([])
        let free = Mutex<[Job]>([])
        /// Counts queued jobs (an eventfd in semaphore mode): each pool thread takes one at a time.
        let ready: OwnedFD
        let stopping = Atomic<Bool>(false)
        let completions: DeferredCompletions

        init(completions: DeferredCompletions) throws(Errno) {
            self.completions = completions
            ready = try EventFD.semaphore()
        }

        func serve(_ session: FUSESession<FS>) {
            // SAFETY: a job's buffers point into guest memory its `memory` holds until the job is done.
            while true {
                EventFD.waitSemaphore(ready.borrowed)
                if stopping.load(ordering: .acquiring) { return }
                guard let job = pending.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
                let written = unsafe session.handle(
                    readable: UnsafeBufferPointer(rebasing: job.readable[0..<job.readableCount]),
                    writable: UnsafeMutableBufferPointer(rebasing: job.writable[0..<job.writableCount]),
                    token: UInt64(job.head), owner: job.memory.map { unsafe Unmanaged.passUnretained($0) })
                job.memory = nil
                let head = job.head
                free.withLock { $0.append(job) }
                if let written { completions.complete(head: head, length: written) }
            }
        }
    }

    private let core: Core
    private var threads: [SystemThread] = []

    init(
        size: Int, server: FUSEServer<FS>, deferred: DeferredWork, completions: DeferredCompletions, logger: Logger,
        queue: Int
    ) throws(Errno) {
        let core = try Core(completions: completions)
        self.core = core
        for i in 0..<size {
            threads.append(try SystemThread(name: "pool-\(queue)-\(i)") {
                // Each pool thread has a session, and so scratch memory, of its own.
                core.serve(FUSESession(server: server, label: "queue \(queue) pool thread \(i)", queue: queue, deferred: deferred) { token, length in
                    completions.complete(head: UInt16(truncatingIfNeeded: token), length: length)
                })
            })
        }
    }

    /// Hands `chain` to the pool; false when it has more buffers than a job holds (serve it inline then).
    func submit(_ chain: DescriptorChain) -> Bool {
        // SAFETY: copies at most jobCapacity iovecs (checked first) and holds the chain's memory with them.
        guard chain.readableCount <= Self.jobCapacity, chain.writableCount <= Self.jobCapacity else { return false }
        let job = core.free.withLock { $0.popLast() } ?? Job()
        for i in 0..<chain.readableCount { unsafe job.readable[i] = unsafe chain.readable[i] }
        for i in 0..<chain.writableCount { unsafe job.writable[i] = unsafe chain.writable[i] }
        job.readableCount = chain.readableCount
        job.writableCount = chain.writableCount
        job.head = chain.headIndex
        job.memory = chain.memory
        core.pending.withLock { $0.append(job) }
        EventFD.signal(core.ready.borrowed)
        return true
    }

    deinit {
        // The queue's worker has waited for every job to finish before it let the pool go.
        core.stopping.store(true, ordering: .releasing)
        for _ in threads { EventFD.signal(core.ready.borrowed) }
        for thread in threads { thread.join() }
    }
}
