// SPDX-License-Identifier: Apache-2.0

import ArgumentParser
import CVirtioFS
import FUSE
import Foundation
import Glibc
import VFSSystem
import VhostUserFrontend

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

    @Option(help: "Request queues; a comma-separated list (\"1,2\") runs the plan at each count in every round and prints how ops/s scale.")
    var queues: String = "1"

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

    @Option(help: "The ring layout: split or packed (VIRTIO_F_RING_PACKED).")
    var ring: String = "split"

    @Option(help: "The second back-end's ring layout; alone (without --compare) it runs the first back-end again with it, for split against packed.")
    var compareRing: String?

    @Option(help: "Rounds of the whole plan (back-ends alternating); tables show each figure's median.")
    var rounds: Int = 1

    @Option(help: "Instead of the plan: hold this many distinct files at once, in steps (\"1000,100000,1000000\"), measuring the back-end's memory, descriptors and LOOKUP and GETATTR cost at each, then forget them all.")
    var nodes: String?

    @Option(help: "Where the node-scaling files are made (once, kept for later runs).")
    var nodesDirectory: String = "/var/tmp/swift-virtiofsd-nodes"

    @Option(help: "Random LOOKUPs and GETATTRs measured at each node count.")
    var samples: Int = 50_000

    func run() throws {
        if let nodes {
            let counts = try nodes.split(separator: ",").map { text in
                guard let n = Int(text), n >= 1 else { throw ValidationError("--nodes takes positive counts") }
                return n
            }
            let ours = backend ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("swift-virtiofsd").path
            let scaling = NodeScaling(counts: counts, directory: nodesDirectory, samples: samples, depth: depth)
            for command in [ours] + (compare.map { [$0] } ?? []) { try scaling.run(command: command, bench: self) }
            return
        }
        let plan = try operations.split(separator: ",").map { name in
            guard let op = Operation(rawValue: String(name)) else { throw ValidationError("unknown operation \(name)") }
            return op
        }
        let queueCounts = try queues.split(separator: ",").map { text in
            guard let n = Int(text), n >= 1, n <= 64 else { throw ValidationError("--queues takes counts from 1 to 64") }
            return n
        }
        guard !queueCounts.isEmpty else { throw ValidationError("--queues takes at least one count") }
        let ours = backend ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("swift-virtiofsd").path
        for layout in [ring] + (compareRing.map { [$0] } ?? []) where layout != "split" && layout != "packed" {
            throw ValidationError("--ring and --compare-ring take split or packed")
        }
        let firstPacked = ring == "packed"
        let secondPacked = (compareRing ?? ring) == "packed"
        let compare = self.compare ?? (compareRing != nil ? ours : nil)
        let firstName = ours + (firstPacked ? " (packed)" : "")
        let secondName = compare.map { $0 + (secondPacked ? " (packed)" : "") }
        let fixtureDir = try makeFixtureDirectory()
        defer { try? FileManager.default.removeItem(atPath: fixtureDir) }

        let host = try HostBaseline(directory: fixtureDir, buffers: depth)
        print("host baseline, measured again next to each back-end's GETATTR, READ 1 MiB and WRITE 1 MiB: fstat on the file; pread and pwrite of 1 MiB at random offsets between it (page cache) and \(depth) rotating 1 MiB buffers in shared memory, as the guest's")
        print("plan: \(queues) request queue(s), depth \(depth), cache=\(cache), \(rounds) round(s), medians shown\n")

        // [queue count][round] for each back-end; within a round every count and back-end runs back to back.
        var firstRounds = [[[Result]]](repeating: [], count: queueCounts.count)
        var secondRounds = [[[Result]]](repeating: [], count: queueCounts.count)
        for round in 1...rounds {
            if rounds > 1 { FileHandle.standardError.write("round \(round) of \(rounds)\n".data(using: .utf8)!) }
            for (q, count) in queueCounts.enumerated() {
                firstRounds[q].append(try measure(command: ours, queues: count, plan: plan, directory: fixtureDir, host: host, packed: firstPacked))
                if let compare {
                    secondRounds[q].append(try measure(command: compare, queues: count, plan: plan, directory: fixtureDir, host: host, packed: secondPacked))
                }
            }
        }
        for (q, count) in queueCounts.enumerated() {
            let label = queueCounts.count > 1 ? " with \(count) request queue(s)" : ""
            printTable(firstName + label, firstRounds[q])
            if let secondName {
                printTable(secondName + label, secondRounds[q])
                print("| operation | ops/s, first / second | back-end CPU per op, second / first |")
                print("|---|---|---|")
                for (i, op) in plan.enumerated() {
                    // Paired per round (both back-ends ran back to back), then the median over rounds.
                    let speed = median(zip(firstRounds[q], secondRounds[q]).map { $0[i].opsPerSecond / $1[i].opsPerSecond })
                    let cpu = median(zip(firstRounds[q], secondRounds[q]).map { $1[i].cpuMicroseconds / $0[i].cpuMicroseconds })
                    print("| \(op.rawValue) | \(format(speed, 2))x | \(format(cpu, 2))x |")
                }
                print()
            }
        }
        if queueCounts.count > 1 {
            for (name, results) in [(firstName, firstRounds)] + (secondName.map { [($0, secondRounds)] } ?? []) {
                printScaling(name, queueCounts, results)
            }
        }
    }

    /// ops/s at each queue count over ops/s at the first, per round (the counts ran back to back), then the
    /// median over rounds, with the rounds' range.
    func printScaling(_ command: String, _ counts: [Int], _ results: [[[Result]]]) {
        print("\(command): ops/s against \(counts[0]) request queue(s), median of \(rounds) paired round(s) [lowest, highest]\n")
        print("| operation |" + counts.dropFirst().map { " \($0) queues |" }.joined())
        print("|---|" + String(repeating: "---|", count: counts.count - 1))
        for (i, first) in results[0][0].enumerated() {
            var row = "| \(first.operation.rawValue) |"
            for q in 1..<counts.count {
                let ratios = zip(results[0], results[q]).map { $1[i].opsPerSecond / $0[i].opsPerSecond }
                row += " \(format(median(ratios), 2))x [\(format(ratios.min() ?? 0, 2)), \(format(ratios.max() ?? 0, 2))] |"
            }
            print(row)
        }
        print()
    }

    /// Counts per operation at scale 1.
    func count(_ op: Operation, queues: Int) -> Int {
        let base: Int
        switch op {
        // Small operations run for about half a second at the default scale: at 40,000, as before, a run took
        // under 100 ms and two queues' threads spent a visible part of it starting and waking.
        case .getattr, .lookup, .read4k: base = 200_000
        case .readdirplus: base = 10_000
        case .read1m, .write1m: base = 600
        case .create: base = 5_000
        }
        return max(queues, Int(Double(base) * scale))
    }

    /// Starts the back-end command on `directory` and waits for its socket.
    func launch(command: String, directory: String) throws -> (Process, String) {
        let socket = NSTemporaryDirectory() + "bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let parts = command.split(separator: " ").map(String.init)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: parts[0])
        process.arguments = Array(parts.dropFirst()) + ["--socket-path=\(socket)", "-o", "source=\(directory)", "-o", "cache=\(cache == "never" ? "none" : cache)"]
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        for _ in 0..<1200 where !FileManager.default.fileExists(atPath: socket) { usleep(25_000) }
        return (process, socket)
    }

    func stop(_ process: Process, socket: String) {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        unlink(socket)
    }

    /// The back-end's CPU time so far, seconds (with its children: a sandbox's worker).
    func cpuOf(_ pid: Int32) -> Double { cpuTime(pid: pid) }
    func userCPUOf(_ pid: Int32) -> Double { userCPUTime(pid: pid) }

    func measure(command: String, queues: Int, plan: [Operation], directory: String, host: HostBaseline, packed: Bool) throws -> [Result] {
        let (process, socket) = try launch(command: command, directory: directory)
        defer { stop(process, socket: socket) }
        let frontend = try Frontend(
            socketPath: socket, requestQueues: queues, queueSize: queueSize,
            memoryPerQueue: depth * (QueueLoad.requestCapacity + QueueLoad.replyCapacity) + (16 << 20), packed: packed)
        let loads = (1...queues).map { q in
            QueueLoad(driver: frontend.drivers[q], kick: frontend.kicks[q], call: frontend.calls[q], queue: q, depth: depth, eventIndex: frontend.eventIndex)
        }
        let fixture = try setUp(loads[0])
        var results: [Result] = []
        for op in plan {
            let total = count(op, queues: queues)
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
            // The host's own syscall, measured right before the operation it is compared with.
            let baseline: Double? = switch op {
            case .getattr: host.fstatNanoseconds()
            case .read1m: host.preadMBps()
            case .write1m: host.pwriteMBps()
            default: nil
            }
            let cpuBefore = cpuTime(pid: process.processIdentifier)
            let userBefore = userCPUTime(pid: process.processIdentifier)
            let ownBefore = ownCPUTime()
            let start = monotonicNanoseconds()
            let threads = try loads.enumerated().map { (i, load) in
                try SystemThread(name: "bench-q\(i + 1)") {
                    load.run(op, count: total / loads.count, fixture: fixture, seed: UInt64(i + 1) &* 0x9E37_79B9)
                }
            }
            threads.forEach { $0.join() }
            let elapsed = Double(monotonicNanoseconds() - start) / 1e9
            let cpu = cpuTime(pid: process.processIdentifier) - cpuBefore
            let user = userCPUTime(pid: process.processIdentifier) - userBefore
            let own = ownCPUTime() - ownBefore
            var latencies = loads.flatMap(\.latencies).sorted()
            if latencies.isEmpty { latencies = [0] }
            let done = latencies.count
            let errors = loads.reduce(0) { $0 + $1.errors }
            let firstError = loads.first { $0.firstError != 0 }?.firstError ?? 0
            results.append(Result(
                operation: op, opsPerSecond: Double(done) / elapsed,
                megabytesPerSecond: Double(done * op.dataBytes) / elapsed / 1e6,
                p50: Double(latencies[latencies.count / 2]) / 1000, p99: Double(latencies[latencies.count * 99 / 100]) / 1000,
                cpuMicroseconds: cpu * 1e6 / Double(done), userMicroseconds: user * 1e6 / Double(done), errors: errors, firstError: firstError, host: baseline,
                generatorMicroseconds: own * 1e6 / Double(done)))
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
            let status = load.call(request(opcode, unique: 3, node: node, bytes(fuse_open_in(flags: UInt32(flags), open_flags: 0))), replyLength: 32)
            // A back-end that keeps directories in the guest's cache answers OPENDIR with ENOSYS, and the guest
            // kernel then reads every directory through handle 0.
            if opcode == .opendir && status == -ENOSYS { return 0 }
            guard status == 0 else { throw ValidationError("\(opcode) failed") }
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

    /// One back-end's table: each figure the median over rounds; the ratios to the host, medians of each
    /// round's ratio to its own baseline.
    func printTable(_ command: String, _ rounds: [[Result]]) {
        print("\(command):\n")
        print("| operation | ops/s | MB/s | p50 µs | p99 µs | back-end CPU µs/op | of it user-mode | generator CPU µs/op | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (i, first) in rounds[0].enumerated() {
            func m(_ field: (Result) -> Double) -> Double { median(rounds.map { field($0[i]) }) }
            let errors = rounds.reduce(0) { $0 + $1[i].errors }
            let firstError = rounds.first { $0[i].firstError != 0 }?[i].firstError ?? 0
            let errorText = errors == 0 ? "0" : "\(errors) (first: errno \(-firstError))"
            print("| \(first.operation.rawValue) | \(format(m(\.opsPerSecond), 0)) | \(first.operation.dataBytes > 0 ? format(m(\.megabytesPerSecond), 0) : "-") | \(format(m(\.p50), 1)) | \(format(m(\.p99), 1)) | \(format(m(\.cpuMicroseconds), 2)) | \(format(m(\.userMicroseconds), 2)) | \(format(m(\.generatorMicroseconds), 2)) | \(errorText) |")
        }
        print()
        for (i, first) in rounds[0].enumerated() {
            let hostFigure = median(rounds.compactMap { $0[i].host })
            switch first.operation {
            case .getattr:
                let ratio = median(rounds.compactMap { r in r[i].host.map { r[i].cpuMicroseconds * 1000 / $0 } })
                print("back-end CPU per GETATTR / host fstat (\(format(hostFigure / 1000, 3)) µs): \(format(ratio, 2))x")
            case .read1m:
                let ratio = median(rounds.compactMap { r in r[i].host.map { r[i].megabytesPerSecond / $0 } })
                print("READ 1 MiB / host pread (\(format(hostFigure, 0)) MB/s): \(format(ratio * 100, 0))%")
            case .write1m:
                let ratio = median(rounds.compactMap { r in r[i].host.map { r[i].megabytesPerSecond / $0 } })
                print("WRITE 1 MiB / host pwrite (\(format(hostFigure, 0)) MB/s): \(format(ratio * 100, 0))%")
            default: break
            }
        }
        print()
    }
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

struct Result {
    var operation: Operation
    var opsPerSecond: Double
    var megabytesPerSecond: Double
    var p50: Double
    var p99: Double
    var cpuMicroseconds: Double
    /// Its user-mode part: the back-end's own code, without the kernel's work for its system calls.
    var userMicroseconds: Double
    var errors: Int
    var firstError: Int32
    /// The host syscall's figure measured next to this operation: fstat ns (GETATTR), pread or pwrite MB/s.
    var host: Double?
    /// The load generator's own CPU time per operation (its threads share the machine's cores with the back-end).
    var generatorMicroseconds: Double
}

/// The host's own cost of what the back-end does, measured on the same machine next to each comparison.
final class HostBaseline {
    let bigFile: CInt
    let targetFile: CInt
    let mapping: MemoryMapping
    let buffers: Int

    /// fstat on the big file; pread and pwrite of 1 MiB between it and `buffers` rotating 1 MiB buffers in a
    /// shared memory file, the same working set the back-end copies into guest memory.
    init(directory: String, buffers: Int) throws {
        bigFile = open(directory + "/big", O_RDONLY)
        targetFile = open(directory + "/target", O_WRONLY)
        guard bigFile >= 0, targetFile >= 0 else { throw ValidationError("cannot open the fixture's files") }
        let memory = try makeMemoryFile(name: "host-baseline", size: buffers << 20)
        mapping = try MemoryMapping(fd: memory.borrowed, length: buffers << 20)
        mapping.base.initializeMemory(as: UInt8.self, repeating: 0, count: buffers << 20)
        self.buffers = buffers
    }

    deinit {
        close(bigFile)
        close(targetFile)
    }

    func fstatNanoseconds() -> Double {
        var st = stat()
        let iterations = 500_000
        let start = monotonicNanoseconds()
        for _ in 0..<iterations { fstat(bigFile, &st) }
        return Double(monotonicNanoseconds() - start) / Double(iterations)
    }

    func preadMBps() -> Double { copy(rounds: 8) { pread(self.bigFile, $0, 1 << 20, $1) } }
    func pwriteMBps() -> Double { copy(rounds: 4) { pwrite(self.targetFile, $0, 1 << 20, $1) } }

    /// Random 1 MiB offsets, as the load generator's READ and WRITE use.
    private func copy(rounds: Int, _ body: (UnsafeMutableRawPointer, off_t) -> Int) -> Double {
        let chunks = Fixture.bigSize >> 20
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
}

/// Every process's parent, from the fourth field of /proc/PID/stat.
func processParents() -> [Int32: Int32] {
    var parents: [Int32: Int32] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let id = Int32(entry), let text = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { continue }
        let fields = text[text.index(after: close)...].split(separator: " ")
        if fields.count > 1, let parent = Int32(fields[1]) { parents[id] = parent }
    }
    return parents
}

/// CPU seconds used by a process and every process below it (a daemon that forks into its sandbox, like the C
/// virtiofsd, works in a child): the sum of its threads' run time from /proc/PID/task/TID/schedstat, which the
/// kernel keeps in nanoseconds (the user and system ticks of /proc/PID/stat are 10 ms coarse).
/// The /proc directories of every thread of `pid` and of its descendants.
func taskDirectories(of pid: Int32) -> [String] {
    let parents = processParents()
    func descends(_ id: Int32) -> Bool {
        var current = id
        for _ in 0..<64 {
            if current == pid { return true }
            guard let parent = parents[current], parent > 0 else { return false }
            current = parent
        }
        return false
    }
    var directories: [String] = []
    for id in parents.keys where descends(id) {
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(id)/task")) ?? [] {
            directories.append("/proc/\(id)/task/\(task)")
        }
    }
    return directories
}

/// CPU seconds run by `pid` and its descendants (schedstat: nanoseconds, user and system together).
func cpuTime(pid: Int32) -> Double {
    var nanoseconds: UInt64 = 0
    for task in taskDirectories(of: pid) {
        if let text = try? String(contentsOfFile: task + "/schedstat", encoding: .utf8),
           let first = text.split(separator: " ").first, let value = UInt64(first) {
            nanoseconds += value
        }
    }
    return Double(nanoseconds) / 1e9
}

/// CPU seconds `pid` and its descendants ran in user mode (utime of /proc/.../stat, in clock ticks: measure
/// spans of a second or more).
func userCPUTime(pid: Int32) -> Double {
    var ticks = 0
    for task in taskDirectories(of: pid) {
        guard let text = try? String(contentsOfFile: task + "/stat", encoding: .utf8),
              let end = text.lastIndex(of: ")") else { continue }
        // After "pid (comm)": state is field 3, utime field 14.
        let fields = text[text.index(after: end)...].split(separator: " ")
        if fields.count > 11, let value = Int(fields[11]) { ticks += value }
    }
    return Double(ticks) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// CPU seconds used by this process's own threads (not its children: the back-end is one).
func ownCPUTime() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

func format(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}

Bench.main()
