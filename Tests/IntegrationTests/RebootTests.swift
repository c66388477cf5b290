// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// What the back-end logs of each FUSE session: at INIT what it holds then, at the end what was dropped.
struct SessionLog {
    /// "N nodes, H handles, heap in use X KiB, anonymous RSS Y KiB" of each INIT, in order.
    var inits: [(nodes: Int, handles: Int, heapKiB: Int, rssKiB: Int)] = []
    /// Nodes and handles dropped when a session ended (DESTROY, a reset) or a new INIT replaced it.
    var dropped: [(nodes: Int, handles: Int, replaced: Bool)] = []

    init(_ text: String) {
        func numbers(_ line: Substring, after marker: String) -> [Int] {
            guard let range = line.range(of: marker) else { return [] }
            return line[range.upperBound...].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        }
        for line in text.split(separator: "\n") {
            if line.contains("FUSE session: guest") {
                let n = numbers(line, after: "; ")
                if n.count >= 4 { inits.append((n[0], n[1], n[2], n[3])) }
            } else if line.contains("FUSE session") && line.contains("dropped") {
                let n = numbers(line, after: "dropped ")
                if n.count >= 2 { dropped.append((n[0], n[1], line.contains("replaced by a new INIT"))) }
            }
        }
    }
}

@Suite("Guest reboots, remounts and device resets", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct RebootTests {
    func share() throws -> String {
        let path = NSTemporaryDirectory() + "reboot-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test("a guest that reboots three times (reboot -f, requests in flight) is served each time, and nothing of an earlier boot stays")
    func reboots() throws {
        let shared = try share()
        let logs = NSTemporaryDirectory() + "reboot-logs-" + UUID().uuidString
        defer {
            try? FileManager.default.removeItem(atPath: shared)
            try? FileManager.default.removeItem(atPath: logs)
        }
        // Each boot: counts itself on the share, writes 200 files, holds every node (ls -lR) and a file open,
        // starts two loops of requests, and resets the machine under them; the fourth boot reports.
        let script = """
            n=$(cat /mnt/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /mnt/boots
            mkdir -p /mnt/b$n; i=0; while [ $i -lt 200 ]; do echo $i > /mnt/b$n/f$i; i=$((i+1)); done
            ls -lR /mnt > /dev/null
            exec 3< /mnt/b$n/f1
            (while :; do echo x >> /mnt/b$n/busy; cat /mnt/b$n/f5 > /dev/null; done) &
            (while :; do ls -l /mnt/b$n > /dev/null; done) &
            sleep 2
            if [ $n -lt 4 ]; then reboot -f; sleep 30; fi
            echo "boots $(cat /mnt/boots)"; for d in /mnt/b*; do echo "$d $(ls $d | wc -l)"; done
            """
        let result = try run(["\(repositoryRoot)/qemu/run-guest", "--shared-dir", shared, "--backend", backend,
                              "--allow-reboot", "--keep-logs", logs, "--", "sh", "-c", script])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        #expect(result.output.contains("boots 4\n"), "\(result.output)")
        for n in 1...4 { #expect(result.output.contains("/mnt/b\(n) 201\n"), "boot \(n)'s files: \(result.output)") }

        let log = SessionLog((try? String(contentsOfFile: logs + "/backend.log", encoding: .utf8)) ?? "")
        #expect(log.inits.count == 4, "\(log.inits)")
        // Every boot starts from the root alone, with no handle, and the memory of the first.
        for (i, start) in log.inits.enumerated() {
            #expect(start.nodes == 1 && start.handles == 0, "INIT \(i + 1): \(start)")
            #expect(start.heapKiB <= log.inits[0].heapKiB + 256, "INIT \(i + 1): heap \(start.heapKiB) KiB, first \(log.inits[0].heapKiB) KiB")
            #expect(start.rssKiB <= log.inits[0].rssKiB + 1024, "INIT \(i + 1): RSS \(start.rssKiB) KiB, first \(log.inits[0].rssKiB) KiB")
        }
        // What each rebooted boot held (the 200 files and more, the open file) went at the next INIT.
        let replaced = log.dropped.filter(\.replaced)
        #expect(replaced.count == 3, "\(log.dropped)")
        for d in replaced { #expect(d.nodes > 200 && d.handles >= 1, "\(d)") }
    }

    @Test("a guest that unmounts and mounts again three times starts each mount from nothing")
    func remounts() throws {
        let shared = try share()
        let logs = NSTemporaryDirectory() + "remount-logs-" + UUID().uuidString
        defer {
            try? FileManager.default.removeItem(atPath: shared)
            try? FileManager.default.removeItem(atPath: logs)
        }
        let script = """
            cd /
            for n in 1 2 3; do
                mkdir /mnt/m$n; i=0; while [ $i -lt 100 ]; do echo $i > /mnt/m$n/f$i; i=$((i+1)); done
                ls -lR /mnt > /dev/null
                umount /mnt || echo "umount $n failed"
                mount -t virtiofs myfs /mnt || echo "mount $n failed"
            done
            ls /mnt | tr '\\n' ' '; echo; cat /mnt/m3/f99
            """
        let result = try run(["\(repositoryRoot)/qemu/run-guest", "--shared-dir", shared, "--backend", backend,
                              "--keep-logs", logs, "--", "sh", "-c", script])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        #expect(result.output.contains("m1 m2 m3 \n99\n"), "\(result.output)")
        let log = SessionLog((try? String(contentsOfFile: logs + "/backend.log", encoding: .utf8)) ?? "")
        #expect(log.inits.count == 4, "\(log.inits)")
        for (i, start) in log.inits.enumerated() {
            #expect(start.nodes == 1 && start.handles == 0, "INIT \(i + 1): \(start)")
            #expect(start.heapKiB <= log.inits[0].heapKiB + 256, "INIT \(i + 1): heap \(start.heapKiB) KiB")
        }
        // Each umount sends DESTROY: its session ends there (not at the next INIT), with its nodes.
        let ended = log.dropped.filter { !$0.replaced }
        #expect(ended.count == 4 && log.dropped.allSatisfy { !$0.replaced }, "\(log.dropped)")
        for d in ended.prefix(3) { #expect(d.nodes > 100, "\(d)") }
    }
}
