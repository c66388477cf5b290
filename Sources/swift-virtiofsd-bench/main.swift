// SPDX-License-Identifier: Apache-2.0

import ArgumentParser
import CVirtioFS
import FUSE
import Foundation
import Glibc
import VFSSystem

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swift-virtiofsd-bench",
        abstract: "Drives a virtio-fs back-end over vhost-user with no QEMU and no guest, and prints what it measured.",
        discussion: """
            The back-end is started as CMD --socket-path=S -o source=DIR -o cache=MODE (the syntax every virtiofsd
            accepts). Per operation it prints ops/s, MB/s, p50 and p99 latency and the back-end's CPU time per
            operation (from /proc), next to the host's own fstat, pread and pwrite measured in the same run.
            Example: swift-virtiofsd-bench --compare /usr/lib/qemu/virtiofsd
            """)

    @Option(help: "The back-end command (default: swift-virtiofsd next to this program).")
    var backend: String?

    @Option(help: "A second back-end to run the same plan against, for ratios.")
    var compare: String?

    @Option(help: "Request queues.")
    var queues: Int = 1

    @Option(help: "Requests in flight per queue.")
    var depth: Int = 64

    @Option(help: "Operations to run, comma-separated (default: all).")
    var operations: String = Operation.allCases.map(\.rawValue).joined(separator: ",")

    @Option(help: "Multiply the default operation counts.")
    var scale: Double = 1

    @Option(help: "The back-end's cache mode.")
    var cache: String = "auto"

    @Option(help: "Queue size (descriptors per ring).")
    var queueSize: UInt16 = 1024

    func run() throws {
        let plan = try operations.split(separator: ",").map { name in
            guard let op = Operation(rawValue: String(name)) else { throw ValidationError("unknown operation \(name)") }
            return op
        }
        let ours = backend ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("swift-virtiofsd").path
        let fixtureDir = try makeFixtureDirectory()
        defer { try? FileManager.default.removeItem(atPath: fixtureDir) }

        let host = try HostBaseline.measure(directory: fixtureDir, buffers: depth)
        print("host: fstat \(format(host.fstatNanoseconds / 1000, 3)) µs, pread 1 MiB \(format(host.preadMBps, 0)) MB/s, pwrite 1 MiB \(format(host.pwriteMBps, 0)) MB/s (page cache, \(depth) rotating 1 MiB buffers in shared memory, as the guest's)")
        print("plan: \(queues) request queue(s), depth \(depth), cache=\(cache)\n")

        let first = try measure(command: ours, plan: plan, directory: fixtureDir)
        printTable(ours, first, host: host)
        if let compare {
            let second = try measure(command: compare, plan: plan, directory: fixtureDir)
            printTable(compare, second, host: host)
            print("| operation | ops/s, first / second | back-end CPU per op, second / first |")
            print("|---|---|---|")
            for (a, b) in zip(first, second) {
                print("| \(a.operation.rawValue) | \(format(a.opsPerSecond / b.opsPerSecond, 2))x | \(format(b.cpuMicroseconds / a.cpuMicroseconds, 2))x |")
            }
        }
    }

    /// Counts per operation at scale 1.
    func count(_ op: Operation) -> Int {
        let base: Int
        switch op {
        case .getattr, .lookup, .read4k: base = 40_000
        case .readdirplus: base = 10_000
        case .read1m, .write1m: base = 600
        case .create: base = 5_000
        }
        return max(queues, Int(Double(base) * scale))
    }

    func measure(command: String, plan: [Operation], directory: String) throws -> [Result] {
        let socket = NSTemporaryDirectory() + "bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let parts = command.split(separator: " ").map(String.init)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: parts[0])
        process.arguments = Array(parts.dropFirst()) + ["--socket-path=\(socket)", "-o", "source=\(directory)", "-o", "cache=\(cache == "never" ? "none" : cache)"]
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            unlink(socket)
        }
        for _ in 0..<1200 where !FileManager.default.fileExists(atPath: socket) { usleep(25_000) }
        let frontend = try Frontend(
            socketPath: socket, requestQueues: queues, queueSize: queueSize,
            memoryPerQueue: depth * (QueueLoad.requestCapacity + QueueLoad.replyCapacity) + (16 << 20))
        let loads = (1...queues).map { q in
            QueueLoad(driver: frontend.drivers[q], kick: frontend.kicks[q], call: frontend.calls[q], queue: q, depth: depth)
        }
        let fixture = try setUp(loads[0])
        var results: [Result] = []
        for op in plan {
            let total = count(op)
            // A warm-up round, not measured: first-touch faults of guest memory in the back-end, cold caches.
            let warmUp = try loads.enumerated().map { (i, load) in
                try SystemThread(name: "warm-q\(i + 1)") { load.run(op, count: load.depth * 2, fixture: fixture, seed: 7) }
            }
            warmUp.forEach { $0.join() }
            loads.forEach {
                $0.latencies.removeAll(keepingCapacity: true)
                $0.errors = 0
                $0.firstError = 0
            }
            let cpuBefore = cpuTime(pid: process.processIdentifier)
            let start = monotonicNanoseconds()
            let threads = try loads.enumerated().map { (i, load) in
                try SystemThread(name: "bench-q\(i + 1)") {
                    load.run(op, count: total / loads.count, fixture: fixture, seed: UInt64(i + 1) &* 0x9E37_79B9)
                }
            }
            threads.forEach { $0.join() }
            let elapsed = Double(monotonicNanoseconds() - start) / 1e9
            let cpu = cpuTime(pid: process.processIdentifier) - cpuBefore
            var latencies = loads.flatMap(\.latencies).sorted()
            if latencies.isEmpty { latencies = [0] }
            let done = latencies.count
            let errors = loads.reduce(0) { $0 + $1.errors }
            let firstError = loads.first { $0.firstError != 0 }?.firstError ?? 0
            results.append(Result(
                operation: op, opsPerSecond: Double(done) / elapsed,
                megabytesPerSecond: Double(done * op.dataBytes) / elapsed / 1e6,
                p50: Double(latencies[latencies.count / 2]) / 1000, p99: Double(latencies[latencies.count * 99 / 100]) / 1000,
                cpuMicroseconds: cpu * 1e6 / Double(done), errors: errors, firstError: firstError))
            loads.forEach {
                $0.latencies.removeAll(keepingCapacity: true)
                $0.errors = 0
                $0.firstError = 0
            }
        }
        // The front-end goes away, as QEMU does at shutdown: the back-end exits by itself (valgrind, if it wraps
        // the back-end, writes its profile then).
        UnixSocket.shutdown(frontend.connection.socket.borrowed)
        for _ in 0..<400 where process.isRunning { usleep(25_000) }
        return results
    }

    /// INIT, then the nodes and handles of the fixture, over queue 1.
    func setUp(_ load: QueueLoad) throws -> Fixture {
        var initIn = fuse_init_in()
        initIn.major = 7
        initIn.minor = 38
        initIn.max_readahead = 1 << 20
        initIn.flags = 0xffff_ffff
        guard load.call(request(.`init`, unique: 1, node: 0, bytes(initIn)), replyLength: 80) == 0 else {
            throw ValidationError("FUSE INIT failed")
        }
        func lookup(_ name: String) throws -> UInt64 {
            guard load.call(request(.lookup, unique: 2, node: fuseRootID, Array(name.utf8) + [0]), replyLength: 144) == 0 else {
                throw ValidationError("LOOKUP \(name) failed")
            }
            return load.reply(slot: 0, as: fuse_entry_out.self).nodeid
        }
        func open(_ node: UInt64, _ opcode: FUSEOpcode, flags: CInt) throws -> UInt64 {
            guard load.call(request(opcode, unique: 3, node: node, bytes(fuse_open_in(flags: UInt32(flags), open_flags: 0))), replyLength: 32) == 0 else {
                throw ValidationError("\(opcode) failed")
            }
            return load.reply(slot: 0, as: fuse_open_out.self).fh
        }
        var fixture = Fixture()
        fixture.file = try lookup("file")
        fixture.big = try lookup("big")
        fixture.target = try lookup("target")
        fixture.dir = try lookup("dir")
        fixture.bigHandle = try open(fixture.big, .open, flags: O_RDONLY)
        fixture.targetHandle = try open(fixture.target, .open, flags: O_RDWR)
        fixture.dirHandle = try open(fixture.dir, .opendir, flags: O_RDONLY)
        return fixture
    }

    func makeFixtureDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "bench-fixture-\(getpid())"
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/dir", withIntermediateDirectories: true)
        chmod(dir, 0o777)
        _ = fm.createFile(atPath: dir + "/file", contents: Data(count: 4096))
        var big = Data(count: Fixture.bigSize)
        big.withUnsafeMutableBytes { raw in
            var x: UInt64 = 0x2545_F491_4F6C_DD1D
            for i in raw.bindMemory(to: UInt64.self).indices {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                raw.bindMemory(to: UInt64.self)[i] = x
            }
        }
        _ = fm.createFile(atPath: dir + "/big", contents: big)
        _ = fm.createFile(atPath: dir + "/target", contents: Data(count: Fixture.bigSize))
        for i in 0..<100 { _ = fm.createFile(atPath: dir + "/dir/entry-\(i)", contents: Data(count: i)) }
        return dir
    }

    func printTable(_ command: String, _ results: [Result], host: HostBaseline) {
        print("\(command):\n")
        print("| operation | ops/s | MB/s | p50 µs | p99 µs | back-end CPU µs/op | errors |")
        print("|---|---|---|---|---|---|---|")
        for r in results {
            let errors = r.errors == 0 ? "0" : "\(r.errors) (first: errno \(-r.firstError))"
            print("| \(r.operation.rawValue) | \(format(r.opsPerSecond, 0)) | \(r.operation.dataBytes > 0 ? format(r.megabytesPerSecond, 0) : "-") | \(format(r.p50, 1)) | \(format(r.p99, 1)) | \(format(r.cpuMicroseconds, 2)) | \(errors) |")
        }
        if let getattr = results.first(where: { $0.operation == .getattr }) {
            print("\nback-end CPU per GETATTR / host fstat: \(format(getattr.cpuMicroseconds * 1000 / host.fstatNanoseconds, 2))x")
        }
        if let read = results.first(where: { $0.operation == .read1m }) {
            print("READ 1 MiB / host pread: \(format(read.megabytesPerSecond / host.preadMBps * 100, 0))%")
        }
        if let write = results.first(where: { $0.operation == .write1m }) {
            print("WRITE 1 MiB / host pwrite: \(format(write.megabytesPerSecond / host.pwriteMBps * 100, 0))%")
        }
        print()
    }
}

struct Result {
    var operation: Operation
    var opsPerSecond: Double
    var megabytesPerSecond: Double
    var p50: Double
    var p99: Double
    var cpuMicroseconds: Double
    var errors: Int
    var firstError: Int32
}

/// The host's own cost of what the back-end does, measured in the same run.
struct HostBaseline {
    var fstatNanoseconds: Double
    var preadMBps: Double
    var pwriteMBps: Double

    /// fstat on the big file; pread and pwrite of 1 MiB between it and `buffers` rotating 1 MiB buffers in a
    /// shared memory file, the same working set the back-end copies into guest memory.
    static func measure(directory: String, buffers: Int) throws -> HostBaseline {
        let fd = open(directory + "/big", O_RDONLY)
        defer { close(fd) }
        var st = stat()
        let iterations = 500_000
        let start = monotonicNanoseconds()
        for _ in 0..<iterations { fstat(fd, &st) }
        let fstatNs = Double(monotonicNanoseconds() - start) / Double(iterations)

        let memory = try makeMemoryFile(name: "host-baseline", size: buffers << 20)
        let mapping = try MemoryMapping(fd: memory.borrowed, length: buffers << 20)
        mapping.base.initializeMemory(as: UInt8.self, repeating: 0, count: buffers << 20)
        let chunks = Fixture.bigSize >> 20
        // Random 1 MiB offsets, as the load generator's READ and WRITE use.
        func run(_ rounds: Int, _ body: (UnsafeMutableRawPointer, off_t) -> Int) -> Double {
            var total = 0
            var x: UInt64 = 0x9E37_79B9
            _ = body(mapping.base, 0)  // warm
            let start = monotonicNanoseconds()
            for i in 0..<(rounds * chunks) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                total += body(mapping.base + (i % buffers) << 20, off_t(x % UInt64(chunks)) << 20)
            }
            return Double(total) / (Double(monotonicNanoseconds() - start) / 1e9) / 1e6
        }
        let readMBps = run(8) { pread(fd, $0, 1 << 20, $1) }
        let out = open(directory + "/target", O_WRONLY)
        defer { close(out) }
        let writeMBps = run(4) { pwrite(out, $0, 1 << 20, $1) }
        return HostBaseline(fstatNanoseconds: fstatNs, preadMBps: readMBps, pwriteMBps: writeMBps)
    }
}

/// CPU seconds used by a process and every process below it (a daemon that forks into its sandbox, like the C
/// virtiofsd, works in a child): the sum of its threads' run time from /proc/PID/task/TID/schedstat, which the
/// kernel keeps in nanoseconds (the user and system ticks of /proc/PID/stat are 10 ms coarse).
func cpuTime(pid: Int32) -> Double {
    var parents: [Int32: Int32] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let id = Int32(entry), let text = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { continue }
        let fields = text[text.index(after: close)...].split(separator: " ")
        if fields.count > 1, let parent = Int32(fields[1]) { parents[id] = parent }
    }
    func descends(_ id: Int32) -> Bool {
        var current = id
        for _ in 0..<64 {
            if current == pid { return true }
            guard let parent = parents[current], parent > 0 else { return false }
            current = parent
        }
        return false
    }
    var nanoseconds: UInt64 = 0
    for id in parents.keys where descends(id) {
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(id)/task")) ?? [] {
            if let text = try? String(contentsOfFile: "/proc/\(id)/task/\(task)/schedstat", encoding: .utf8),
               let first = text.split(separator: " ").first, let value = UInt64(first) {
                nanoseconds += value
            }
        }
    }
    return Double(nanoseconds) / 1e9
}

func format(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}

Bench.main()
