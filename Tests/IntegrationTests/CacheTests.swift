// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("Cache consistency", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct CacheTests {
    /// The guest reads a file, the host rewrites it with other bytes of the same size, the guest reads again.
    /// The guest waits for the host by reading a flag file the host rewrites, not for a new name: a name the guest
    /// found missing is a negative entry it may trust as long as a found one (a day with metadata).
    static let script = """
        cat /mnt/data; cat /mnt/data > /dev/null
        touch /mnt/ready
        i=0; while [ "$(cat /mnt/done)" != 1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        cat /mnt/data
        """

    @Test("a file changed on the host is read fresh at the next open, whatever the guest cached", arguments: ["auto", "never", "metadata"])
    func hostChangeSeen(cache: String) throws {
        let dir = NSTemporaryDirectory() + "cache-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "first version\n".write(toFile: dir + "/data", atomically: false, encoding: .utf8)
        try "0".write(toFile: dir + "/done", atomically: false, encoding: .utf8)
        /// Writes `text` over the start of a file, in place: same inode, and same size for these texts.
        @Sendable func overwrite(_ name: String, with text: String) {
            guard let handle = FileHandle(forWritingAtPath: dir + "/" + name) else { return }
            handle.write(text.data(using: .utf8)!)
            try? handle.close()
        }
        // The host's side: once the guest has read, rewrite the file in place, same size, other bytes.
        let writer = Thread {
            for _ in 0..<1200 where !FileManager.default.fileExists(atPath: dir + "/ready") { usleep(50_000) }
            overwrite("data", with: "other version\n")
            overwrite("done", with: "1")
        }
        writer.start()
        let result = try runGuest(dir, ["--cache", cache], Self.script)
        #expect(result.status == 0, "\(result.errors)")
        #expect(result.output == "first version\nother version\n", "\(result.output)")
    }
}
