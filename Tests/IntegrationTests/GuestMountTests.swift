// SPDX-License-Identifier: Apache-2.0

import Foundation
import Glibc
import Testing

/// The repository root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// QEMU is needed; CI installs it, so there a missing QEMU fails the run instead of skipping it.
let guestsCanRun = FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64")
    || ProcessInfo.processInfo.environment["CI"] != nil

/// The back-end under test: $SWIFT_VIRTIOFSD, or the newer of this checkout's release and debug builds.
let backend: String = {
    if let path = ProcessInfo.processInfo.environment["SWIFT_VIRTIOFSD"] { return path }
    let builds = ["release", "debug"].map { "\(repositoryRoot)/.build/\($0)/swift-virtiofsd" }.filter {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    func modified(_ path: String) -> Date {
        (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? .distantPast
    }
    return builds.max { modified($0) < modified($1) } ?? "\(repositoryRoot)/.build/debug/swift-virtiofsd"
}()

struct RunResult {
    var status: Int32
    var output: String
    var errors: String
}

/// Runs a command and returns its status and output; after `timeout` seconds its process group is killed
/// and the status is 124.
///
/// Not Foundation's Process: on Linux it learns of a child's exit from a socket the child inherits, so a
/// daemon the child leaves running (libvirt-run's libvirtd, say) keeps it waiting for ever. This waits for
/// the pid, and stops reading the output once the child has exited even if a descendant still holds it.
/// With $TEST_TIMINGS set, each command's wall time and arguments go to that file, a line each: what the test
/// command's long runs spend, command by command (other tests run alongside, so under load).
func run(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 1800) throws -> RunResult {
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    // Standard error goes to a file, so that a chatty child never blocks on a second full pipe.
    let errPath = NSTemporaryDirectory() + "run-stderr-" + UUID().uuidString
    defer { unlink(errPath) }
    var pipeFDs: [Int32] = [-1, -1]
    guard pipe(&pipeFDs) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    defer { close(pipeFDs[0]) }

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // Its own process group (so that a timeout ends its descendants too), no signal blocked, SIGPIPE as default.
    var none = sigset_t(), pipeSignal = sigset_t()
    sigemptyset(&none)
    sigemptyset(&pipeSignal)
    sigaddset(&pipeSignal, SIGPIPE)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &pipeSignal)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    // Not the test process's own working directory (env -C): the file systems it creates in other tests move that.
    let argv = (["/usr/bin/env", "-C", NSTemporaryDirectory()] + arguments).map { strdup($0) } + [nil]
    let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, argv, envp)
    close(pipeFDs[1])
    guard spawned == 0 else { throw POSIXError(.init(rawValue: spawned) ?? .EIO) }

    var output = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    var status: Int32 = 0
    var exited = false, timedOut = false
    let started = Date()
    let deadline = started.addingTimeInterval(timeout)
    /// One read: what it got (0 at end of file, -1 with errno on failure).
    func readOnce() -> Int {
        let n = read(pipeFDs[0], &buffer, buffer.count)
        if n > 0 { output.append(contentsOf: buffer[0..<n]) }
        return n
    }
    var open = true
    while !exited {
        var entry = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
        if open {
            if poll(&entry, 1, 200) > 0 {
                let n = readOnce()
                open = n > 0 || (n < 0 && errno == EINTR)
            }
        } else {
            usleep(50_000)
        }
        let waited = waitpid(pid, &status, WNOHANG)
        if waited == pid || (waited < 0 && errno != EINTR) { exited = true }
        if !exited && Date() > deadline {
            timedOut = true
            kill(-pid, SIGTERM)
            usleep(2_000_000)
            kill(-pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            exited = true
        }
    }
    // What it wrote before it ended; a descendant that keeps the pipe open does not hold us here.
    _ = fcntl(pipeFDs[0], F_SETFL, O_NONBLOCK)
    while open {
        let n = readOnce()
        if n > 0 || (n < 0 && errno == EINTR) { continue }
        open = false
    }
    let errors = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    if let timings = env["TEST_TIMINGS"], let file = fopen(timings, "a") {
        fputs(String(format: "%.1f\t", Date().timeIntervalSince(started)) + arguments.joined(separator: " ") + "\n", file)
        fclose(file)
    }
    let code: Int32 = timedOut ? 124 : (status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
    return RunResult(
        status: code, output: String(decoding: output, as: UTF8.self),
        errors: timedOut ? errors + "\nrun: \(arguments.joined(separator: " ")) still running after \(Int(timeout)) s; killed" : errors)
}

/// Boots a guest on `shared` and runs `script` in it.
func runGuest(_ shared: String, _ options: [String], _ script: String, backend command: String = backend) throws -> RunResult {
    try run(["\(repositoryRoot)/qemu/run-guest", "--shared-dir", shared, "--backend", command] + options + ["--", "sh", "-c", script])
}

/// A host tree like a source checkout: 1,000+ files in nested directories, symlinks (relative, absolute,
/// dangling, to a directory), a hard link, an empty file and a 10 MiB file.
final class SampleTree {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "guest-tree-" + UUID().uuidString
        let fm = FileManager.default
        var generator = SplitMix(seed: 2026)
        for d in 0..<25 {
            let dir = "\(path)/src/module\(d)/sub\(d % 4)/deeper"
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for f in 0..<40 {
                let size = Int(generator.next() % 3000)
                let data = Data((0..<size).map { _ in UInt8(truncatingIfNeeded: generator.next()) })
                let where_ = f % 3 == 0 ? dir : "\(path)/src/module\(d)"
                fm.createFile(atPath: "\(where_)/file\(f).c", contents: data)
            }
        }
        var big = Data(count: 10 << 20)
        big.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = generator.next() }
        }
        fm.createFile(atPath: "\(path)/big", contents: big)
        fm.createFile(atPath: "\(path)/empty", contents: Data())
        try fm.createSymbolicLink(atPath: "\(path)/link-to-file", withDestinationPath: "src/module1/file1.c")
        try fm.createSymbolicLink(atPath: "\(path)/src/link-up", withDestinationPath: "../big")
        try fm.createSymbolicLink(atPath: "\(path)/absolute-link", withDestinationPath: "/etc/passwd")
        try fm.createSymbolicLink(atPath: "\(path)/dangling", withDestinationPath: "does/not/exist")
        try fm.createSymbolicLink(atPath: "\(path)/dir-link", withDestinationPath: "src/module2")
        try fm.linkItem(atPath: "\(path)/src/module3/file2.c", toPath: "\(path)/hard-link")
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A small deterministic generator, so every run shares the same tree.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Lists every file's sha256 and size, every symlink's target, every directory, and the hard link's inode
/// sharing, in a form busybox (guest) and coreutils (host) print alike.
let manifestScript = """
    export LC_ALL=C
    find . -type f | sort | xargs sha256sum
    find . -type f | sort | xargs stat -c '%s %h %n'
    for l in $(find . -type l | sort); do echo "$l -> $(readlink "$l")"; done
    find . -type d | sort
    [ "$(stat -c %i hard-link)" = "$(stat -c %i src/module3/file2.c)" ] && echo "hard link shares its inode"
    find . | wc -l
    """

@Suite("A real guest mounts a host directory", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct GuestMountTests {
    @Test("every file, size, symlink and hard link seen in the guest matches the host", arguments: [
        ["--kernel", "6.12", "--queues", "1"],
        ["--kernel", "6.12", "--queues", "2"],
        ["--kernel", "6.1", "--queues", "1", "--cpus", "1"],
        // QEMU 10 (Debian 13's; qemu/prepare-peers): memory by ADD_MEM_REG, and the rest of its start-up.
        ["--kernel", "6.12", "--queues", "2", "--qemu", "10"],
        // Packed virtqueues (VIRTIO_F_RING_PACKED): QEMU 10 offers them with packed=on, the guest takes them.
        ["--kernel", "6.12", "--queues", "2", "--qemu", "10", "--packed"],
    ])
    func treeMatchesHost(options: [String]) throws {
        let tree = try SampleTree()
        let host = try run(["sh", "-c", "cd '\(tree.path)' && \(manifestScript)"])
        #expect(host.status == 0)
        #expect(host.output.contains("hard link shares its inode"))
        let guest = try runGuest(tree.path, options, "cd /mnt && \(manifestScript)")
        #expect(guest.status == 0, "run-guest failed: \(guest.errors)")
        if options.contains("--qemu") { #expect(guest.errors.contains(", QEMU 10."), "not QEMU 10: \(guest.errors)") }
        let ring = options.contains("--packed") ? "packed" : "split"
        #expect(guest.errors.contains(", ring \(ring),"), "not a \(ring) ring: \(guest.errors)")
        let hostLines = host.output.split(separator: "\n")
        let guestLines = guest.output.split(separator: "\n")
        #expect(hostLines.count > 2000)
        #expect(guestLines == hostLines, "first difference: \(zip(hostLines, guestLines).first { $0 != $1 }.map { "\($0) vs \($1)" } ?? "in length")")
    }

    @Test("the guest command's exit status comes back through run-guest")
    func exitStatus() throws {
        let tree = try SampleTree()
        let result = try runGuest(tree.path, [], "test -f /mnt/big && exit 7")
        #expect(result.status == 7)
    }

    @Test("when QEMU is killed mid-read the back-end exits by itself, cleanly")
    func frontEndKilled() throws {
        let tree = try SampleTree()
        let result = try runGuest(tree.path, ["--kill-qemu-after", "7", "-v"], "while true; do cat /mnt/big > /dev/null; done")
        #expect(result.status == 0, "\(result.errors)")
        // run-guest waits at most 10 s for the back-end; the line says how long it took.
        #expect(result.output.contains("backend exited with status 0 after"), "\(result.output)\n\(result.errors)")
        #expect(!result.errors.contains("Fatal error") && !result.errors.contains("core dumped"))
        print(result.output.split(separator: "\n").last { $0.contains("backend exited") } ?? "")
    }
}
