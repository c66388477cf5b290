// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// A daemon started on a fresh share, waiting for its front-end; stopped at the end.
final class WaitingDaemon {
    let process = Process()
    let share: String
    let socket: String
    let errorPath: String

    init(_ flags: [String], share: String? = nil, launcher: [String] = []) throws {
        let dir = NSTemporaryDirectory() + "sandbox-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o777)
        self.share = share ?? dir + "/share"
        if share == nil { try FileManager.default.createDirectory(atPath: self.share, withIntermediateDirectories: true) }
        socket = dir + "/daemon.sock"
        errorPath = dir + "/stderr"
        FileManager.default.createFile(atPath: errorPath, contents: nil)
        let arguments = launcher + [backend, "--socket-path=\(socket)", "--shared-dir=\(self.share)"] + flags
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: NSTemporaryDirectory())
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorPath))
        try process.run()
        // Ready once it says so: the socket exists before the sandbox is in place.
        for _ in 0..<200 where !errors.contains("waiting for the front-end") && process.isRunning { usleep(50_000) }
    }

    /// The process that serves: in namespace mode the child that is pid 1 of the new pid namespace.
    var servingPID: Int32 {
        let children = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/task/\(process.processIdentifier)/children", encoding: .utf8)) ?? ""
        return children.split(separator: " ").compactMap { Int32($0) }.first ?? process.processIdentifier
    }

    func status(_ field: String, of pid: Int32) -> String? { processStatus(field, of: pid) }

    var errors: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: socket).deletingLastPathComponent().path)
    }
}

/// A directory to share, owned by `owner`, removed at the end.
final class TemporaryShare {
    let path: String

    init(_ name: String, owner: uid_t) throws {
        path = NSTemporaryDirectory() + name + "-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        chown(path, owner, owner)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// One field of /proc/PID/status, its value trimmed.
func processStatus(_ field: String, of pid: Int32) -> String? {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").first { $0.hasPrefix(field + ":") }.map {
        $0.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
    }
}

/// Whether this process may raise hard resource limits (CAP_SYS_RESOURCE, bit 24, in its effective set).
let mayRaiseHardLimits: Bool = {
    let mask = processStatus("CapEff", of: getpid()).flatMap { UInt64($0, radix: 16) } ?? 0
    return mask & (1 << 24) != 0
}()

/// The back-end started as nobody (65534), with no supplementary groups.
let backendAsNobody = "setpriv --reuid=65534 --regid=65534 --clear-groups \(backend)"

@Suite("Sandbox, seccomp and capabilities of the running daemon", .serialized)
struct SandboxIntegrationTests {
    @Test("the daemon raises its open-file limit to 1,000,000, the hard limit too where it may, else says so")
    func openFileLimit() throws {
        // A guest that caches every node it sees keeps one descriptor per node: a tree of 30,000 files unpacked in
        // the guest needs more than a hard limit of 20,000 (this machine's).
        func openFiles(_ daemon: WaitingDaemon) -> [Int] {
            let limits = (try? String(contentsOfFile: "/proc/\(daemon.servingPID)/limits", encoding: .utf8)) ?? ""
            let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
            return line.split(separator: " ").compactMap { Int($0) }
        }
        let daemon = try WaitingDaemon([], launcher: ["prlimit", "--nofile=1024:4096"])
        if mayRaiseHardLimits {
            #expect(openFiles(daemon) == [1_000_000, 1_000_000], "log: \(daemon.errors)")
            #expect(!daemon.errors.contains("open-file limit"))
        } else {
            // Without CAP_SYS_RESOURCE (a container's root, as on this project's machines): up to the hard limit.
            #expect(openFiles(daemon) == [4096, 4096], "log: \(daemon.errors)")
            #expect(daemon.errors.contains("open-file limit 4096, not 1000000"), "log: \(daemon.errors)")
        }
        let exact = try WaitingDaemon(["--rlimit-nofile=3000"], launcher: ["prlimit", "--nofile=1024:4096"])
        #expect(openFiles(exact) == [3000, 4096], "log: \(exact.errors)")
    }

    @Test("namespace mode: the daemon's root is the shared directory, in its own mount, pid and net namespaces")
    func namespaceView() throws {
        let daemon = try WaitingDaemon([])
        FileManager.default.createFile(atPath: daemon.share + "/only-this", contents: Data())
        let pid = daemon.servingPID
        #expect(pid != daemon.process.processIdentifier, "no child in a new pid namespace")
        let seen = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root")
        #expect(seen == ["only-this"], "the daemon sees \(seen) at its root")
        for namespace in ["mnt", "pid", "net"] {
            let theirs = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(namespace)")
            let ours = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(namespace)")
            #expect(theirs != ours, "\(namespace) namespace shared with the host")
        }
        // Its mount table holds the shared directory as "/" and a proc for its own pid namespace, nothing else.
        let mounts = try String(contentsOfFile: "/proc/\(pid)/mounts", encoding: .utf8).split(separator: "\n")
        #expect(mounts.allSatisfy { $0.split(separator: " ")[1] == "/" }, "\(mounts)")
        #expect(daemon.status("NoNewPrivs", of: pid) == "1")
        #expect(daemon.status("Seccomp", of: pid) == "2")
    }

    @Test("chroot mode puts the daemon's root at the shared directory; none leaves it at /")
    func chrootAndNone() throws {
        let chrooted = try WaitingDaemon(["--sandbox=chroot"])
        FileManager.default.createFile(atPath: chrooted.share + "/marker", contents: Data())
        #expect(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(chrooted.servingPID)/root") == ["marker"])
        let open = try WaitingDaemon(["--sandbox=none", "--seccomp=none"])
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(open.servingPID)/root") == "/")
        #expect(open.status("Seccomp", of: open.servingPID) == "0")
    }

    @Test("the capabilities of a root daemon are exactly the documented set", arguments: [
        ([String](), "00000000880000db"),  // chown dac_override fowner fsetid setgid setuid mknod setfcap
        (["--inode-file-handles=prefer"], "00000000880000df"),  // + dac_read_search
        (["--modcaps=-mknod:+sys_admin"], "00000000802000db"),
    ])
    func capabilities(flags: [String], expected: String) throws {
        let daemon = try WaitingDaemon(flags)
        let pid = daemon.servingPID
        #expect(daemon.status("CapEff", of: pid) == expected, "\(daemon.errors)")
        #expect(daemon.status("CapPrm", of: pid) == expected)
        #expect(daemon.status("CapInh", of: pid) == "0000000000000000")
        #expect(daemon.status("CapAmb", of: pid) == "0000000000000000")
        #expect(daemon.status("CapBnd", of: pid) == "0000000000000000")
    }

    @Test("a system call outside the allowlist kills the daemon under kill, and is only logged under log")
    func seccompActions() throws {
        let killed = try run([backend, "--socket-path=/tmp/seccomp-\(UUID().uuidString).sock", "--shared-dir=/tmp",
                              "--seccomp=kill", "--seccomp-probe"])
        #expect(killed.status == 128 + 31, "status \(killed.status): \(killed.errors)")  // SIGSYS
        #expect(killed.errors.contains("outside the seccomp allowlist"))
        let logged = try WaitingDaemon(["--seccomp=log", "--seccomp-probe"])
        usleep(500_000)
        #expect(logged.process.isRunning, "\(logged.errors)")
        #expect(logged.errors.contains("seccomp probe"))
    }

    @Test("started as an unprivileged user, namespace mode works through a user namespace",
          .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
    func unprivileged() throws {
        let directory = try TemporaryShare("unprivileged-share", owner: 65534)
        defer { withExtendedLifetime(directory) {} }
        let share = directory.path
        let result = try runGuest(
            share, [], "echo written-by-guest > /mnt/note && cat /mnt/note && stat -c '%u' /mnt/note", backend: backendAsNobody)
        #expect(result.status == 0, "\(result.errors.suffix(2000))")
        // In the daemon's user namespace nobody is root: the guest sees its file owned by root.
        #expect(result.output.split(separator: "\n").map(String.init).suffix(2) == ["written-by-guest", "0"], "\(result.output)")
        var st = stat()
        #expect(stat(share + "/note", &st) == 0 && st.st_uid == 65534 && st.st_gid == 65534)
    }

    @Test("started as an unprivileged user with --uid-map and --gid-map ranges, a guest user's files get the mapped host ids",
          .enabled(if: guestsCanRun && FileManager.default.isExecutableFile(atPath: "/usr/bin/newuidmap"), "needs qemu and newuidmap"))
    func unprivilegedWithRanges() throws {
        // newuidmap maps only what /etc/subuid grants: grant nobody a range for this test, then put the files back.
        var saved: [String: String?] = [:]
        for file in ["/etc/subuid", "/etc/subgid"] {
            let old = try? String(contentsOfFile: file, encoding: .utf8)
            saved[file] = old
            try ((old ?? "") + "nobody:100000:65536\nnogroup:100000:65536\n").write(toFile: file, atomically: true, encoding: .utf8)
        }
        defer {
            for (file, old) in saved {
                if let old { try? old.write(toFile: file, atomically: true, encoding: .utf8) } else { unlink(file) }
            }
        }
        let directory = try TemporaryShare("ranges-share", owner: 65534)
        defer { withExtendedLifetime(directory) {} }
        let share = directory.path
        let posixcheck = NSTemporaryDirectory() + "posixcheck-" + UUID().uuidString
        defer { unlink(posixcheck) }
        #expect(try run(["gcc", "-static", "-O2", "-o", posixcheck, "\(repositoryRoot)/qemu/conformance/posixcheck.c"]).status == 0)
        let result = try runGuest(
            share,
            ["--add", posixcheck, "--uid-map=:0:65534:1:", "--uid-map=:1:100000:65536:", "--gid-map=:0:65534:1:",
             "--gid-map=:1:100000:65536:"],
            "chmod 777 /mnt && echo a > /mnt/by-root && \(URL(fileURLWithPath: posixcheck).lastPathComponent) asuser 1000 1000 sh -c 'echo b > /mnt/by-user' && stat -c '%u:%g %n' /mnt/by-root /mnt/by-user",
            backend: backendAsNobody)
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        #expect(result.output.contains("0:0 /mnt/by-root") && result.output.contains("1000:1000 /mnt/by-user"), "\(result.output)")
        var st = stat()
        // Namespace root is the user who started the daemon; namespace 1000 is 100000 + 999.
        #expect(stat(share + "/by-root", &st) == 0 && st.st_uid == 65534 && st.st_gid == 65534)
        #expect(stat(share + "/by-user", &st) == 0 && st.st_uid == 100_999 && st.st_gid == 100_999)
    }

    @Test("under the SELinux-in-a-container xattr map, with the default capabilities (no CAP_SYS_ADMIN), files are created, written and truncated",
          .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
    func selinuxMapWithoutSysAdmin() throws {
        // The map sends security.capability to trusted.virtiofs.security.capability, which the daemon drops at
        // every write and truncate; without CAP_SYS_ADMIN that removal is EPERM, and must not fail the write.
        let directory = try TemporaryShare("selinux-map-share", owner: 0)
        defer { withExtendedLifetime(directory) {} }
        let result = try runGuest(directory.path, ["--xattr", "--xattrmap=:prefix:all:security.:trusted.virtiofs.::ok:all:::"],
                                  "echo one > /mnt/f && echo two >> /mnt/f && truncate -s 2 /mnt/f && cat /mnt/f && echo")
        #expect(result.status == 0, "\(result.output) \(result.errors.suffix(2000))")
        #expect(result.output.contains("on\n"), "\(result.output)")
    }

    @Test("with map:0:1000:1, guest root's files belong to 1000 on the host, host 1000 is root in the guest, others as they are",
          .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
    func translatedIDs() throws {
        let directory = try TemporaryShare("translate-share", owner: 1000)
        defer { withExtendedLifetime(directory) {} }
        let share = directory.path
        FileManager.default.createFile(atPath: share + "/mine", contents: Data())
        chown(share + "/mine", 1000, 1000)
        FileManager.default.createFile(atPath: share + "/theirs", contents: Data())
        chown(share + "/theirs", 4321, 4321)
        let result = try runGuest(share, ["--translate-uid=map:0:1000:1", "--translate-gid=map:0:1000:1"],
                                  "stat -c '%u:%g %n' /mnt/mine /mnt/theirs && touch /mnt/created && mkdir /mnt/dir")
        #expect(result.status == 0, "\(result.errors.suffix(2000))")
        #expect(result.output.contains("0:0 /mnt/mine"), "\(result.output)")
        #expect(result.output.contains("4321:4321 /mnt/theirs"), "\(result.output)")
        for name in ["created", "dir"] {
            var st = stat()
            #expect(stat(share + "/" + name, &st) == 0 && st.st_uid == 1000 && st.st_gid == 1000, "\(name)")
        }
    }

    @Test("device nodes and FIFOs made in the guest stay the guest's: its kernel opens them, the daemon never does",
          .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
    func guestDevices() throws {
        let share = NSTemporaryDirectory() + "devices-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: share) }
        // The guest kernel opens its own /dev/null, /dev/zero and pipes for these nodes (no OPEN reaches the
        // daemon); the block node is loop0's numbers, only looked at. The sandbox (the default, namespace) has
        // made the share nodev as well.
        let script = """
            mknod /mnt/null c 1 3 && mknod /mnt/zero c 1 5 && mknod /mnt/blk b 7 0 && mkfifo /mnt/fifo
            stat -c '%n %F %t:%T' /mnt/null /mnt/zero /mnt/blk /mnt/fifo
            echo discarded > /mnt/null && echo null-works
            head -c 4 /mnt/zero | od -An -tx1 | tr -d ' ' | sed 's/^/zero-reads-/'
            (echo through-the-guest-pipe > /mnt/fifo &) ; cat /mnt/fifo
            """
        let result = try runGuest(share, [], script)
        #expect(result.status == 0, "\(result.errors.suffix(2000))")
        for line in ["/mnt/null character special file 1:3", "/mnt/zero character special file 1:5", "/mnt/blk block special file 7:0",
                     "/mnt/fifo fifo", "null-works", "zero-reads-00000000", "through-the-guest-pipe"] {
            #expect(result.output.contains(line), "missing \(line) in \(result.output)")
        }
        // On the host they are what the guest made, untouched by anything the daemon did.
        var st = stat()
        #expect(stat(share + "/blk", &st) == 0 && st.st_mode & S_IFMT == S_IFBLK && st.st_rdev == 7 << 8)
        #expect(stat(share + "/zero", &st) == 0 && st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 1 << 8 | 5)
        #expect(stat(share + "/fifo", &st) == 0 && st.st_mode & S_IFMT == S_IFIFO)
    }

    @Test("escape attempts from the guest stay inside the shared directory",
          .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
    func escapes() throws {
        let top = NSTemporaryDirectory() + "escape-" + UUID().uuidString
        let share = top + "/share"
        try FileManager.default.createDirectory(atPath: share + "/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: top) }
        try "host secret\n".write(toFile: top + "/secret", atomically: false, encoding: .utf8)
        try "inside\n".write(toFile: share + "/inside", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: share + "/up", withDestinationPath: "../secret")
        try FileManager.default.createSymbolicLink(atPath: share + "/abs", withDestinationPath: top + "/secret")
        try FileManager.default.createSymbolicLink(atPath: share + "/updir", withDestinationPath: "..")
        let script = """
            cd /mnt/sub
            cat ../../secret 2>/dev/null || echo no-dotdot-secret
            cat /mnt/up 2>/dev/null || echo no-relative-link-secret
            cat /mnt/abs 2>/dev/null || echo no-absolute-link-secret
            ls /mnt/updir/ 2>/dev/null | grep -q secret && echo LEAK || echo no-updir-listing
            echo changed > /mnt/up 2>/dev/null; echo changed > /mnt/abs 2>/dev/null
            mv /mnt/inside /mnt/updir/moved 2>/dev/null
            ln /mnt/sub /mnt/updir/hard 2>/dev/null
            ls -a /mnt/.. | grep -q '^proc$' && echo dotdot-is-the-guest-root
            true
            """
        let result = try runGuest(share, [], script)
        #expect(result.status == 0, "\(result.errors.suffix(2000))")
        for line in ["no-dotdot-secret", "no-relative-link-secret", "no-absolute-link-secret", "no-updir-listing",
                     "dotdot-is-the-guest-root"] {
            #expect(result.output.contains(line), "missing \(line) in \(result.output)")
        }
        #expect(!result.output.contains("host secret") && !result.output.contains("LEAK"))
        #expect(try String(contentsOfFile: top + "/secret", encoding: .utf8) == "host secret\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: top).sorted() == ["secret", "share"])
    }
}
