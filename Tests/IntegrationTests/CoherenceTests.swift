// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("What each cache mode promises about changes made elsewhere", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct CoherenceTests {
    /// qemu/staleness/run, short: a guest with warm caches polls files while the host, and then a second guest
    /// with its own daemon, change them one at a time; every change must be seen within the bound the README
    /// states for the mode (`--check`). The long runs, with Rust virtiofsd and every mode, are in the README.
    /// (`never` is checked against the host alone: what it promises does not depend on who made the change.)
    @Test("a change by the host or another guest is seen within the mode's stated bound",
          arguments: [("auto", "host,guest"), ("never", "host")])
    func staleness(cache: String, sources: String) throws {
        let out = NSTemporaryDirectory() + "staleness-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: out) }
        let result = try run(["\(repositoryRoot)/qemu/staleness/run", "--configs", "ours-\(cache)", "--sources", sources,
                              "--settle", "0.2:2", "--patience", "25", "--check", "--ours", backend, "--out", out])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        // Every kind of change was measured, from each source, on a day-old file and on a new one.
        let rows = result.output.split(separator: "\n").filter { $0.hasPrefix("| ") }
        for source in sources.split(separator: ",") {
            for kind in ["rewrite", "append", "chmod", "create", "unlink", "rename", "list"] {
                for age in ["a day old", "new"] {
                    #expect(rows.contains { $0.hasPrefix("| \(kind) | \(source) | \(age) | ") }, "\(kind) by \(source), \(age)\n\(result.output)")
                }
            }
        }
    }

    /// qemu/two-guests/run: two guests, each with its own daemon, on one directory: POSIX and flock counters,
    /// O_EXCL races, O_APPEND, renames over a file being read, close-to-open under a lock. Each mode must keep
    /// what it claims (the script's table, the README's).
    @Test("two guests on one tree: locks, exclusive creation, appends, renames and close-to-open", arguments: ["auto", "never", "metadata", "always"])
    func twoGuests(cache: String) throws {
        let result = try run(["\(repositoryRoot)/qemu/two-guests/run", "--cache", cache, "--backend", backend])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        #expect(result.output.contains("two-guests: cache \(cache): every claimed check holds"), "\(result.output)")
        // The checks that hold in every mode with host locks.
        for line in ["excl: ", "append: ", "rename-read: "] {
            #expect(result.output.split(separator: "\n").contains { $0.hasPrefix(line) && $0.contains(": holds") }, "\(line)\n\(result.output)")
        }
    }
}
