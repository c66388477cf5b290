// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("Descriptor limits", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct DescriptorLimitTests {
    /// Reads every file of the tree, then drops the guest's caches (which forgets its nodes) and reads again.
    static let script = """
        { find /mnt -type f | xargs cat > /dev/null; } 2> /tmp/err
        echo "errors $(wc -l < /tmp/err)"
        grep -c 'Too many open files in system' /tmp/err
        echo 3 > /proc/sys/vm/drop_caches
        cat /mnt/empty > /dev/null && echo "reads after the guest forgot its nodes"
        find /mnt | wc -l
        """

    @Test("out of descriptors, lookups fail with ENFILE, and the daemon recovers once the guest forgets nodes")
    func exhaustion() throws {
        let tree = try SampleTree()
        let result = try runGuest(tree.path, ["--rlimit-nofile=80", "--inode-file-handles=never"], Self.script)
        #expect(result.status == 0, "\(result.errors)")
        let lines = result.output.split(separator: "\n").map(String.init)
        let errors = lines.first { $0.hasPrefix("errors ") }.flatMap { Int($0.dropFirst(7)) } ?? 0
        #expect(errors > 0, "80 descriptors cannot hold a 1,000-file tree: \(result.output)")
        #expect(lines.count > 1 && Int(lines[1]) ?? 0 > 0, "the guest sees ENFILE, not EMFILE")
        #expect(lines.contains("reads after the guest forgot its nodes"))
    }

    @Test("with file handles the same limit reads the whole tree", arguments: ["prefer", "mandatory"])
    func handles(mode: String) throws {
        let tree = try SampleTree()
        let host = try run(["sh", "-c", "find '\(tree.path)' | wc -l"]).output
        let result = try runGuest(tree.path, ["--rlimit-nofile=80", "--inode-file-handles=\(mode)"], Self.script)
        #expect(result.status == 0, "\(result.errors)")
        let lines = result.output.split(separator: "\n").map(String.init)
        #expect(lines.first == "errors 0", "\(result.output)")
        #expect(lines.last == host.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
