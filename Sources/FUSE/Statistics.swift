// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Synchronization
import VFSSystem

/// What the daemon has served, readable at any moment (`--metrics-socket`, SIGUSR1) in the Prometheus text
/// exposition format: per request queue and opcode the requests, their errors by errno, their bytes and the time
/// spent serving them (a histogram); requests refused as malformed; session, reset and migration events; and
/// the file system's census (nodes, handles, descriptors, memory).
///
/// Each FUSE session (one per queue thread and pool thread) writes its own block of counters and nobody else
/// does: a relaxed load and store per counter, no locked instruction and no lock on the request path. A scrape
/// reads the blocks with relaxed loads and adds up those of one queue. Blocks outlive their sessions (a ring
/// that stops and starts again keeps counting in the same block), so every counter only goes up.
public final class FUSEStatistics: @unchecked Sendable {
    /// Opcode slots per block (slot 0: opcodes this server does not know), as the session's own counts.
    static let opcodes = 64
    /// errno values counted one by one; larger ones go to the last slot.
    static let errnos = 134
    /// Histogram buckets: upper bounds of 1 µs times 2^0 ... 2^20 (about 1 s), then +Inf.
    static let buckets = 22
    /// Where each counter of an opcode lies in its run: requests, errors, bytes in, bytes out, nanoseconds, the
    /// buckets, then the errno counts.
    static let requestsAt = 0, errorsAt = 1, bytesInAt = 2, bytesOutAt = 3, nanosecondsAt = 4, bucketsAt = 5
    static let errnosAt = bucketsAt + buckets
    static let perOpcode = errnosAt + errnos

    /// One session's counters.
    // SAFETY: owns its allocation (freed in deinit); every index is within it.
    @safe
    final class Block: @unchecked Sendable {
        let queue: Int
        let label: String
        let counters: UnsafeMutablePointer<UInt64>

        init(queue: Int, label: String) {
            self.queue = queue
            self.label = label
            let count = FUSEStatistics.opcodes * FUSEStatistics.perOpcode
            unsafe counters = .allocate(capacity: count)
            unsafe counters.initialize(repeating: 0, count: count)
        }

        deinit { unsafe counters.deallocate() }

        @inline(__always)
        func add(_ index: Int, _ value: UInt64) {
            // SAFETY: callers pass indices within opcodes * perOpcode.
            unsafe cvfs_counter_add_u64(counters + index, value)
        }

        func load(_ index: Int) -> UInt64 {
            // SAFETY: callers pass indices within opcodes * perOpcode.
            unsafe cvfs_counter_load_u64(counters + index)
        }

        /// One request: its opcode slot, its error (nil: it succeeded), its bytes and how long it took.
        @inline(__always)
        func record(opcode: Int, error: Errno?, bytesIn: Int, bytesOut: Int, nanoseconds: Int64) {
            typealias S = FUSEStatistics
            let base = opcode * S.perOpcode
            add(base + S.requestsAt, 1)
            add(base + S.bytesInAt, UInt64(bytesIn))
            add(base + S.bytesOutAt, UInt64(bytesOut))
            add(base + S.nanosecondsAt, UInt64(max(nanoseconds, 0)))
            // Bucket b holds what took at most 2^b µs.
            let micros = UInt64(max(nanoseconds, 0) + 999) / 1000
            let bucket = micros <= 1 ? 0 : min(64 - (micros - 1).leadingZeroBitCount, S.buckets - 1)
            add(base + S.bucketsAt + bucket, 1)
            if let error {
                add(base + S.errorsAt, 1)
                add(base + S.errnosAt + min(Int(error.rawValue), S.errnos - 1), 1)
            }
        }

        /// A request deferred (a lock wait): counted, not timed.
        func recordDeferred(opcode: Int, bytesIn: Int) {
            let base = opcode * FUSEStatistics.perOpcode
            add(base + FUSEStatistics.requestsAt, 1)
            add(base + FUSEStatistics.bytesInAt, UInt64(bytesIn))
        }
    }

    /// Things that happen to the session as a whole.
    public enum Event: Int, CaseIterable, Sendable {
        case sessionStarted, sessionEnded, sessionReplaced, deviceReset, migrationSaved, migrationLoaded

        var name: String {
            switch self {
            case .sessionStarted: "session_started"
            case .sessionEnded: "session_ended"
            case .sessionReplaced: "session_replaced"
            case .deviceReset: "device_reset"
            case .migrationSaved: "migration_saved"
            case .migrationLoaded: "migration_loaded"
            }
        }
    }

    private let blocks = Mutex<[String: Block]>([:])
    private let events = Mutex<[Int]>(Array(repeating: 0, count: Event.allCases.count))
    private let malformed = Atomic<UInt64>(0)

    public init() {}

    /// The block of the session named `label` on queue `queue`: the same one each time that session starts again.
    func block(queue: Int, label: String) -> Block {
        blocks.withLock { blocks in
            if let block = blocks[label] { return block }
            let block = Block(queue: queue, label: label)
            blocks[label] = block
            return block
        }
    }

    public func note(_ event: Event) {
        events.withLock { $0[event.rawValue] += 1 }
    }

    func noteMalformed() {
        malformed.add(1, ordering: .relaxed)
    }

    /// Requests served on `queue` with opcode slot `opcode`, summed over its sessions (for tests).
    public func requests(queue: Int, opcode: UInt32) -> UInt64 {
        let all = blocks.withLock { Array($0.values) }
        return all.filter { $0.queue == queue }.reduce(0) { $0 + $1.load(Int(opcode) * Self.perOpcode + Self.requestsAt) }
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter, with `census` and `descriptors` as gauges.
    public func exposition(census: FileSystemCensus?, descriptors: Int?, errnoName: (Int32) -> String) -> String {
        let all = blocks.withLock { Array($0.values) }
        let queues = Set(all.map(\.queue)).sorted()
        // Per queue and opcode: the sum over that queue's sessions.
        var sums: [Int: [UInt64]] = [:]
        for queue in queues {
            var sum = [UInt64](repeating: 0, count: Self.opcodes * Self.perOpcode)
            for block in all where block.queue == queue {
                for i in sum.indices { sum[i] &+= block.load(i) }
            }
            sums[queue] = sum
        }
        func name(_ slot: Int) -> String {
            slot == 0 ? "UNKNOWN" : FUSEOpcode(rawValue: UInt32(slot)).map { "\($0)".uppercased() } ?? "OPCODE_\(slot)"
        }
        var out = ""
        func family(_ metric: String, _ type: String, _ help: String) {
            out += "# HELP \(metric) \(help)\n# TYPE \(metric) \(type)\n"
        }
        func each(_ body: (Int, Int, [UInt64], Int) -> Void) {
            for queue in queues {
                let sum = sums[queue]!
                for slot in 0..<Self.opcodes where sum[slot * Self.perOpcode + Self.requestsAt] > 0 {
                    body(queue, slot, sum, slot * Self.perOpcode)
                }
            }
        }
        family("virtiofs_requests_total", "counter", "FUSE requests served, by request queue (0: the high-priority queue) and opcode.")
        each { queue, slot, sum, base in out += "virtiofs_requests_total{queue=\"\(queue)\",opcode=\"\(name(slot))\"} \(sum[base + Self.requestsAt])\n" }
        family("virtiofs_request_errors_total", "counter", "FUSE requests answered with an error, by queue, opcode and errno.")
        each { queue, slot, sum, base in
            for e in 0..<Self.errnos where sum[base + Self.errnosAt + e] > 0 {
                let label = e == Self.errnos - 1 ? "other" : errnoName(Int32(e))
                out += "virtiofs_request_errors_total{queue=\"\(queue)\",opcode=\"\(name(slot))\",errno=\"\(label)\"} \(sum[base + Self.errnosAt + e])\n"
            }
        }
        family("virtiofs_request_bytes_total", "counter", "Bytes of FUSE requests (in: from the guest, the data of WRITE included) and of their replies (out: READ's data included).")
        each { queue, slot, sum, base in
            out += "virtiofs_request_bytes_total{queue=\"\(queue)\",opcode=\"\(name(slot))\",direction=\"in\"} \(sum[base + Self.bytesInAt])\n"
            out += "virtiofs_request_bytes_total{queue=\"\(queue)\",opcode=\"\(name(slot))\",direction=\"out\"} \(sum[base + Self.bytesOutAt])\n"
        }
        family("virtiofs_request_duration_seconds", "histogram", "Time from a request's decoding to its reply being written, by queue and opcode (a lock wait that is deferred is not timed).")
        each { queue, slot, sum, base in
            var cumulative: UInt64 = 0
            var timed: UInt64 = 0
            for b in 0..<Self.buckets { timed &+= sum[base + Self.bucketsAt + b] }
            for b in 0..<Self.buckets {
                cumulative &+= sum[base + Self.bucketsAt + b]
                let bound = b == Self.buckets - 1 ? "+Inf" : Self.seconds(microseconds: 1 << b)
                out += "virtiofs_request_duration_seconds_bucket{queue=\"\(queue)\",opcode=\"\(name(slot))\",le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "virtiofs_request_duration_seconds_sum{queue=\"\(queue)\",opcode=\"\(name(slot))\"} \(Self.seconds(nanoseconds: sum[base + Self.nanosecondsAt]))\n"
            out += "virtiofs_request_duration_seconds_count{queue=\"\(queue)\",opcode=\"\(name(slot))\"} \(timed)\n"
        }
        family("virtiofs_malformed_requests_total", "counter", "Requests that could not be answered at all and were dropped.")
        out += "virtiofs_malformed_requests_total \(malformed.load(ordering: .relaxed))\n"
        family("virtiofs_events_total", "counter", "FUSE sessions started, ended (DESTROY or the front-end gone) and replaced by a new INIT; device resets; live migrations saved and loaded.")
        let counts = events.withLock { $0 }
        for event in Event.allCases {
            out += "virtiofs_events_total{event=\"\(event.name)\"} \(counts[event.rawValue])\n"
        }
        if let census {
            family("virtiofs_nodes", "gauge", "Nodes the guest holds, the root included.")
            out += "virtiofs_nodes \(census.nodes)\n"
            family("virtiofs_handles", "gauge", "Open file and directory handles.")
            out += "virtiofs_handles \(census.handles)\n"
            family("virtiofs_heap_bytes", "gauge", "Bytes malloc has handed out and not had back.")
            out += "virtiofs_heap_bytes \(census.heapInUseKiB * 1024)\n"
            if let resident = census.anonymousResidentKiB {
                family("virtiofs_resident_anonymous_bytes", "gauge", "The process's anonymous resident memory.")
                out += "virtiofs_resident_anonymous_bytes \(resident * 1024)\n"
            }
        }
        if let descriptors {
            family("virtiofs_open_descriptors", "gauge", "Descriptors the daemon has open.")
            out += "virtiofs_open_descriptors \(descriptors)\n"
        }
        return out
    }

    /// `microseconds` in seconds, in decimal (1 -> "0.000001").
    static func seconds(microseconds: Int) -> String {
        let whole = microseconds / 1_000_000
        let fraction = String(microseconds % 1_000_000)
        return "\(whole).\(String(repeating: "0", count: 6 - fraction.count))\(fraction)"
    }

    static func seconds(nanoseconds: UInt64) -> String {
        let whole = nanoseconds / 1_000_000_000
        let fraction = String(nanoseconds % 1_000_000_000)
        return "\(whole).\(String(repeating: "0", count: 9 - fraction.count))\(fraction)"
    }
}
