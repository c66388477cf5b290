// SPDX-License-Identifier: Apache-2.0

import Foundation
import Glibc
import Testing

/// The command lines of existing virtiofsd set-ups (scripts, systemd units, libvirt) start the daemon; what it
/// cannot honour it refuses with one line naming the option.
@Suite("virtiofsd's command line")
struct CommandLineTests {
    /// Starts the daemon with `arguments` on a fresh socket and share; once it waits for a front-end (or has
    /// exited), stops it with SIGTERM. Its exit status and log.
    func start(_ arguments: [String]) throws -> (status: Int32, log: String) {
        let directory = NSTemporaryDirectory() + "command-line-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory + "/share", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logPath = directory + "/log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: backend)
        process.arguments = ["--socket-path=\(directory)/sock", "--sandbox=none"] + arguments.map {
            $0.replacingOccurrences(of: "SHARE", with: directory + "/share")
        }
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = process.standardError
        try process.run()
        func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        // Listening (the socket is there), and a moment to get past its set-up (whatever the log level shows).
        for _ in 0..<500 where process.isRunning && !FileManager.default.fileExists(atPath: directory + "/sock") { usleep(10_000) }
        usleep(300_000)
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        process.waitUntilExit()
        return (process.terminationStatus, log())
    }

    @Test("virtiofsd's and the C daemon's spellings start the daemon", arguments: [
        ["--shared-dir", "SHARE", "-V"],
        ["-o", "source=SHARE", "-ono_flock,no_posix_lock"],
        ["-o=source=SHARE,cache=none,xattr,no_readdirplus,writeback,no_writeback,allow_direct_io,announce_submounts"],
        ["-osource=SHARE", "-o", "log_level=err,norace,timeout=5,max_idle_threads=4,allow_root,debug"],
        ["-o", "source=SHARE,loglevel=warn,security_label,no_security_label,no_announce_submounts,modcaps=-mknod"],
        ["--shared-dir=SHARE", "--log-level", "DEBUG", "--allow-mmap", "--thread-pool-size=4", "--rlimit-nofile=4096"],
        ["--shared-dir=SHARE", "--log-level=Warn", "--cache=metadata", "--inode-file-handles=prefer", "--xattr", "--readonly"],
        ["--shared-dir=SHARE", "-d", "-f", "--no-killpriv-v2", "--no-announce-submounts", "--preserve-noatime"],
        ["--shared-dir=SHARE", "--xattrmap=/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /ok/all///"],
        ["-o", "source=SHARE,xattrmap=:map::user.virtiofs.:"],
        ["--shared-dir=SHARE", "--tag=myfs"],
        ["--shared-dir=SHARE", "--migration-mode=file-handles", "--migration-on-error=guest-error", "--migration-verify-handles",
         "--migration-confirm-paths"],
    ])
    func accepted(arguments: [String]) throws {
        let (status, log) = try start(arguments)
        #expect(status == 0, "\(arguments): \(log)")
        if !arguments.contains("-V") && !arguments.joined().lowercased().contains("err") && !arguments.joined().lowercased().contains("warn") {
            #expect(log.contains("waiting for the front-end") && log.contains("SIGTERM before a front-end connected"), "\(log)")
        }
    }

    @Test("what it cannot honour is refused with one line naming the option (status 64)", arguments: [
        (["--shared-dir=SHARE", "--tag=a-tag-longer-than-thirty-six-bytes-long"], "--tag"),
        (["--shared-dir=SHARE", "--xattrmap=:nonsense:all:::"], "--xattrmap"),
        (["--shared-dir=SHARE", "--migration-mode=paths"], "--migration-mode"),
        (["--shared-dir=SHARE", "--migration-on-error=ignore"], "--migration-on-error"),
        (["--shared-dir=SHARE", "--daemonize"], "--daemonize"),
        (["--shared-dir=SHARE", "--log-level=loud"], "--log-level"),
        (["-o", "source=SHARE,nonsense"], "nonsense"),
        (["-o", "source=SHARE,timeout=soon"], "timeout"),
    ])
    func refused(arguments: [String], option: String) throws {
        let (status, log) = try start(arguments)
        #expect(status == 64, "\(arguments): \(log)")
        let lines = log.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.hasPrefix("  See") }
        #expect(lines.count == 1 && lines[0].contains(option), "\(log)")
    }

    @Test("-o timeout=SECONDS sets auto's longest timeout (10 s by default), and the log says which apply")
    func autoTimeouts() throws {
        let (status, log) = try start(["--shared-dir=SHARE"])
        #expect(status == 0 && log.contains("cache auto: timeouts 1 s for what others changed in the last 60 s, else 10 s"), "\(log)")
        let (shorter, shorterLog) = try start(["-o", "source=SHARE,timeout=0.5"])
        #expect(shorter == 0 && shorterLog.contains("timeouts 0.5 s for what others changed in the last 60 s, else 0.5 s"), "\(shorterLog)")
        let (fixed, fixedLog) = try start(["--shared-dir=SHARE", "--cache=always", "-o", "timeout=3"])
        #expect(fixed == 0 && fixedLog.contains("cache always)"), "\(fixedLog)")
    }

    @Test("--syslog: each line is one datagram to the system log, <14>swift-virtiofsd[PID]: ..., none on standard error")
    func systemLog() throws {
        let path = NSTemporaryDirectory() + "syslog-" + UUID().uuidString
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        let (status, log) = try start(["--shared-dir=SHARE", "--syslog", "--syslog-socket=\(path)", "--sandbox=namespace"])
        #expect(status == 0, "\(log)")
        var lines: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            lines.append(String(decoding: buffer[0..<n], as: UTF8.self))
        }
        #expect(lines.contains { $0.hasPrefix("<14>swift-virtiofsd[") && $0.contains("waiting for the front-end") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("<14>swift-virtiofsd[") && $0.contains("SIGTERM before a front-end connected") }, "\(lines)")
        #expect(!log.contains("waiting for the front-end"), "\(log)")
    }

    @Test("--syslog with no system log to reach: one line on standard error, and the daemon serves as usual")
    func systemLogMissing() throws {
        let (status, log) = try start(["--shared-dir=SHARE", "--syslog", "--syslog-socket=/nonexistent/log", "--sandbox=namespace"])
        #expect(status == 0, "\(log)")
        let complaints = log.split(separator: "\n").filter { $0.contains("system log") }
        #expect(complaints.count == 1 && complaints[0].contains("/nonexistent/log"), "\(log)")
        #expect(log.contains("waiting for the front-end") && log.contains("SIGTERM before a front-end connected"), "\(log)")
    }

    @Test("--print-capabilities: separate options and precopy migration")
    func capabilities() throws {
        let result = try run([backend, "--print-capabilities"])
        #expect(result.status == 0)
        #expect(result.output.contains("\"separate-options\"") && result.output.contains("\"migrate-precopy\""), "\(result.output)")
    }
}
