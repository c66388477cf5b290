// SPDX-License-Identifier: Apache-2.0

import ArgumentParser
import CVirtioFS
import FUSE
import Foundation
import Glibc
import VFSSystem
import VhostUserFrontend

/// The node-scaling plan (`--nodes`): the back-end holds more and more distinct files at once, and at each
/// count the run measures its memory, its descriptors and what a LOOKUP and a GETATTR of a random held file cost;
/// then one BATCH_FORGET pass gives every node back and the memory is measured again.
struct NodeScaling {
    let counts: [Int]
    let directory: String
    let samples: Int
    let depth: Int

    /// Files per directory of the fixture: `d0000/f000` ... `d0999/f999` for a million.
    static let perDirectory = 1000

    /// Makes (once: a marker records how many) the fixture's empty files.
    static func makeFixture(_ directory: String, files: Int) throws {
        let marker = directory + "/.complete"
        if let text = try? String(contentsOfFile: marker, encoding: .utf8), let made = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), made >= files {
            return
        }
        FileHandle.standardError.write("making \(files) files under \(directory) (once)\n".data(using: .utf8)!)
        mkdir(directory, 0o755)
        for d in 0..<(files + perDirectory - 1) / perDirectory {
            let dir = directory + "/" + directoryName(d)
            mkdir(dir, 0o755)
            for f in 0..<min(perDirectory, files - d * perDirectory) {
                let fd = open(dir + "/" + fileName(f), O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw ValidationError("cannot create \(dir)/\(fileName(f)): errno \(errno)") }
                close(fd)
            }
        }
        try "\(files)\n".write(toFile: marker, atomically: true, encoding: .utf8)
    }

    static func directoryName(_ d: Int) -> String { "d" + String(format: "%04d", d) }
    static func fileName(_ f: Int) -> String { "f" + String(format: "%03d", f) }

    /// A file's name as LOOKUP carries it, NUL-terminated, packed little-endian in one word ("fNNN\0").
    static func packedName(_ f: Int) -> UInt64 {
        var word: UInt64 = 0
        for (i, byte) in fileName(f).utf8.enumerated() { word |= UInt64(byte) << (8 * UInt64(i)) }
        return word
    }

    struct Checkpoint {
        var held: Int
        var anonKiB: Int
        var descriptors: Int
        var lookupCPU: Double
        var getattrCPU: Double
        /// The part of each spent in user mode: the back-end's own code, not the host kernel's.
        var lookupUser: Double
        var getattrUser: Double
        var lookupRate: Double
        var getattrRate: Double
        var lookupErrors: Int
        /// The host's own openat(O_PATH) + statx + close of the same random files, µs (what a LOOKUP asks of it).
        var hostLookup: Double
    }

    /// The host's openat(O_PATH | O_NOFOLLOW) + statx + close of `samples` random files of the first `held`,
    /// µs each, in this process.
    func hostLookupCost(held: Int, directories: [CInt], next: (Int) -> Int) -> Double {
        let names = (0..<Self.perDirectory).map { Self.fileName($0) }
        let start = monotonicNanoseconds()
        for _ in 0..<samples {
            let i = next(held)
            let fd = openat(directories[i / Self.perDirectory], names[i % Self.perDirectory], CVFS_O_PATH | CVFS_O_NOFOLLOW | O_CLOEXEC)
            var buffer = CVirtioFS.statx()
            _ = cvfs_statx(fd, "", CVFS_AT_EMPTY_PATH | CVFS_AT_SYMLINK_NOFOLLOW, CVFS_STATX_BASIC_STATS | CVFS_STATX_MNT_ID, &buffer)
            close(fd)
        }
        return Double(monotonicNanoseconds() - start) / 1000 / Double(samples)
    }

    func run(command: String, bench: Bench) throws {
        let most = counts.max() ?? 0
        try Self.makeFixture(directory, files: most)
        let (process, socket) = try bench.launch(command: command, directory: directory)
        defer { bench.stop(process, socket: socket) }
        let frontend = try Frontend(socketPath: socket, requestQueues: 1, queueSize: 1024,
                                    memoryPerQueue: depth * (QueueLoad.requestCapacity + QueueLoad.replyCapacity) + (16 << 20))
        let load = QueueLoad(driver: frontend.drivers[1], kick: frontend.kicks[1], call: frontend.calls[1], queue: 1, depth: depth, eventIndex: frontend.eventIndex)
        var initIn = fuse_init_in()
        initIn.major = 7
        initIn.minor = 41
        initIn.max_readahead = 1 << 20
        initIn.flags = 0xffff_ffff
        guard load.call(request(.`init`, unique: 1, node: 0, bytes(initIn)), replyLength: 80) == 0 else { throw ValidationError("FUSE INIT failed") }
        // With a sandbox the daemon's work is done by its child (a new pid namespace's pid 1): measure that one.
        let pid = Self.worker(of: process.processIdentifier)
        let start = (anon: Self.anonKiB(pid), descriptors: Self.descriptorCount(pid))

        let directories = (most + Self.perDirectory - 1) / Self.perDirectory
        var directoryNodes = [UInt64](repeating: 0, count: directories)
        var unique: UInt64 = 100
        for d in 0..<directories {
            unique += 1
            guard load.call(request(.lookup, unique: unique, node: fuseRootID, Array(Self.directoryName(d).utf8) + [0]), replyLength: 144) == 0 else {
                throw ValidationError("LOOKUP \(Self.directoryName(d)) failed")
            }
            directoryNodes[d] = load.reply(slot: 0, as: fuse_entry_out.self).nodeid
        }
        let names = (0..<Self.perDirectory).map(Self.packedName)
        let hostDirectories = (0..<directories).map { open(directory + "/" + Self.directoryName($0), CVFS_O_PATH | CVFS_O_DIRECTORY | O_CLOEXEC) }
        defer { hostDirectories.forEach { close($0) } }
        var nodes = [UInt64](repeating: 0, count: most)
        var lookups = [UInt32](repeating: 0, count: most)
        var held = 0
        var failures = 0
        var firstFailure: Int32 = 0
        var checkpoints: [Checkpoint] = []

        /// LOOKUP of file `i`: header and packed name in slot `slot`.
        func fillLookup(_ slot: Int, _ i: Int) -> Int {
            unique += 1
            var header = fuse_in_header()
            header.len = 45
            header.opcode = FUSEOpcode.lookup.rawValue
            header.unique = unique
            header.nodeid = directoryNodes[i / Self.perDirectory]
            let p = load.driver.pointer(load.requestBuffers[slot])
            p.storeBytes(of: header, as: fuse_in_header.self)
            p.storeBytes(of: names[i % Self.perDirectory], toByteOffset: 40, as: UInt64.self)
            return 45
        }
        var random: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return Int(random % UInt64(bound))
        }

        for count in counts.sorted() {
            // Hold files held..<count, each looked up once.
            load.pipeline(count: count - held, issue: { slot, k in (fillLookup(slot, held + k), 16 + MemoryLayout<fuse_entry_out>.size) },
                          complete: { slot, k, error in
                if error == 0 {
                    nodes[held + k] = load.reply(slot: slot, as: fuse_entry_out.self).nodeid
                    lookups[held + k] = 1
                } else {
                    failures += 1
                    if firstFailure == 0 { firstFailure = error }
                }
            })
            held = count
            let reachable = nodes[0..<held].filter { $0 != 0 }.count
            // A LOOKUP of a random file held (its node is found, one more lookup counted), a GETATTR of one, and
            // the host's own calls for a LOOKUP: each three times, alternating, keeping each one's lowest CPU per
            // operation (the fastest rate with it), as the 2 shared cores make single runs noisy.
            var picks = [Int](repeating: 0, count: depth)
            var best = (lookupCPU: Double.infinity, lookupUser: 0.0, lookupRate: 0.0, getattrCPU: Double.infinity, getattrUser: 0.0,
                        getattrRate: 0.0, host: Double.infinity)
            for _ in 0..<3 {
                var cpu = (bench.cpuOf(pid), bench.userCPUOf(pid))
                var clock = monotonicNanoseconds()
                load.pipeline(count: samples, issue: { slot, _ in
                    var i = next(held)
                    while nodes[i] == 0 { i = next(held) }
                    picks[slot] = i
                    return (fillLookup(slot, i), 16 + MemoryLayout<fuse_entry_out>.size)
                }, complete: { slot, _, error in if error == 0 { lookups[picks[slot]] += 1 } })
                var spent = (bench.cpuOf(pid) - cpu.0) * 1e6 / Double(samples)
                if spent < best.lookupCPU {
                    best.lookupCPU = spent
                    best.lookupUser = (bench.userCPUOf(pid) - cpu.1) * 1e6 / Double(samples)
                }
                best.lookupRate = max(best.lookupRate, Double(samples) * 1e9 / Double(monotonicNanoseconds() - clock))
                cpu = (bench.cpuOf(pid), bench.userCPUOf(pid))
                clock = monotonicNanoseconds()
                load.pipeline(count: samples, issue: { slot, _ in
                    var i = next(held)
                    while nodes[i] == 0 { i = next(held) }
                    unique += 1
                    return (load.fill(slot: slot, .getattr, unique: unique, node: nodes[i], fuse_getattr_in()), 16 + MemoryLayout<fuse_attr_out>.size)
                }, complete: { _, _, _ in })
                spent = (bench.cpuOf(pid) - cpu.0) * 1e6 / Double(samples)
                if spent < best.getattrCPU {
                    best.getattrCPU = spent
                    best.getattrUser = (bench.userCPUOf(pid) - cpu.1) * 1e6 / Double(samples)
                }
                best.getattrRate = max(best.getattrRate, Double(samples) * 1e9 / Double(monotonicNanoseconds() - clock))
                best.host = min(best.host, hostLookupCost(held: held, directories: hostDirectories, next: next))
            }
            let (lookupCPU, lookupUser, lookupRate, getattrCPU, getattrUser, getattrRate, host) = best
            checkpoints.append(Checkpoint(held: reachable, anonKiB: Self.anonKiB(pid), descriptors: Self.descriptorCount(pid),
                                          lookupCPU: lookupCPU, getattrCPU: getattrCPU, lookupUser: lookupUser,
                                          getattrUser: getattrUser, lookupRate: lookupRate,
                                          getattrRate: getattrRate, lookupErrors: failures, hostLookup: host))
        }

        // Every node given back: BATCH_FORGET of up to 1,000 nodes per request (the directories too).
        var forgets: [(UInt64, UInt64)] = []
        for i in 0..<held where nodes[i] != 0 { forgets.append((nodes[i], UInt64(lookups[i]))) }
        for node in directoryNodes { forgets.append((node, 1)) }
        let batch = 1000
        load.pipeline(count: (forgets.count + batch - 1) / batch, issue: { slot, k in
            let part = forgets[(k * batch)..<min(forgets.count, (k + 1) * batch)]
            var body = bytes(fuse_batch_forget_in(count: UInt32(part.count), dummy: 0))
            for (node, n) in part { body += bytes(fuse_forget_one(nodeid: node, nlookup: n)) }
            unique += 1
            let frame = request(.batchForget, unique: unique, node: 0, body)
            frame.withUnsafeBytes { load.driver.pointer(load.requestBuffers[slot]).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return (frame.count, 16)
        }, complete: { _, _, _ in })
        // FORGET has no reply, so the back-end may still be at it: wait for its memory to stop falling.
        var after = Self.anonKiB(pid)
        for _ in 0..<50 {
            usleep(100_000)
            let now = Self.anonKiB(pid)
            if now == after { break }
            after = now
        }
        let afterDescriptors = Self.descriptorCount(pid)

        print("\(command): \(held) files in \(directories) directories, \(samples) random LOOKUPs and GETATTRs of held files at each count, three times (the lowest CPU per operation shown)\n")
        print("| nodes held | anonymous RSS MiB | bytes per node | descriptors | LOOKUP CPU µs (user) | host openat+statx+close µs | GETATTR CPU µs (user) | LOOKUP/s | GETATTR/s | failed LOOKUPs |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("| 0 (after INIT) | \(format(Double(start.anon) / 1024, 1)) | - | \(start.descriptors) | - | - | - | - | - | - |")
        for c in checkpoints {
            let perNode = c.held > 0 ? Double(c.anonKiB - start.anon) * 1024 / Double(c.held + directories) : 0
            print("| \(c.held) | \(format(Double(c.anonKiB) / 1024, 1)) | \(format(perNode, 0)) | \(c.descriptors) | \(format(c.lookupCPU, 2)) (\(format(c.lookupUser, 2))) | \(format(c.hostLookup, 2)) | \(format(c.getattrCPU, 2)) (\(format(c.getattrUser, 2))) | \(format(c.lookupRate, 0)) | \(format(c.getattrRate, 0)) | \(c.lookupErrors)\(c.lookupErrors > 0 ? " (errno \(-firstFailure))" : "") |")
        }
        print("| 0 (all forgotten) | \(format(Double(after) / 1024, 1)) | - | \(afterDescriptors) | - | - | - | - | - | - |")
        print()
    }

    /// RssAnon of /proc/PID/status, KiB: the back-end's own memory, not the guest's shared pages it touched.
    static func anonKiB(_ pid: Int32) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("RssAnon:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// The deepest process of the only-child chain starting at `pid`.
    static func worker(of pid: Int32) -> Int32 {
        let parents = processParents()
        var current = pid
        while true {
            let children = parents.filter { $0.value == current }.map(\.key)
            guard children.count == 1 else { return current }
            current = children[0]
        }
    }

    static func descriptorCount(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
    }
}

extension QueueLoad {
    /// Runs `count` requests, `depth` in flight: `issue(slot, k)` writes request k into the slot's request
    /// buffer and returns its length and reply room; `complete(slot, k, error)` reads its reply.
    func pipeline(count: Int, issue: (Int, Int) -> (Int, Int), complete: (Int, Int, Int32) -> Void) {
        guard count > 0 else { return }
        var headToSlot = [Int](repeating: -1, count: Int(driver.size))
        var index = [Int](repeating: 0, count: depth)
        var issued = 0
        var completed = 0
        func start(_ slot: Int) {
            let (length, replyLength) = issue(slot, issued)
            index[slot] = issued
            issued += 1
            headToSlot[Int(publish(slot: slot, length: length, replyLength: replyLength))] = slot
        }
        var before = driver.availableIndex
        for slot in 0..<min(depth, count) { start(slot) }
        if !eventIndex || driver.needsKick(since: before) { kick.signal() }
        var finished: [Int] = []
        finished.reserveCapacity(depth)
        while completed < count {
            waitForCall()
            before = driver.availableIndex
            finished.removeAll(keepingCapacity: true)
            driver.drainUsed { done in
                let slot = headToSlot[Int(done.head)]
                if slot >= 0 { finished.append(slot) }
            }
            var submitted = false
            for slot in finished {
                complete(slot, index[slot], replyError(slot: slot))
                completed += 1
                if issued < count {
                    start(slot)
                    submitted = true
                }
            }
            if submitted && (!eventIndex || driver.needsKick(since: before)) { kick.signal() }
        }
    }
}
