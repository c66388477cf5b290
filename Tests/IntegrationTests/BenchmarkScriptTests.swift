// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The benchmark scripts read their configurations before they boot anything: every documented one is taken,
/// and an unknown one ends the run at once, named, with status 2.
@Suite("Benchmark scripts' configurations")
struct BenchmarkScriptTests {
    @Test("bench-cache and bench-build take every configuration they document and stop at an unknown one", arguments: [
        ("bench-cache", "ours-never ours-metadata ours-auto ours-always ours-always+nolocks rust-always rust-auto c-always c-never 9p ext4 tmpfs"),
        ("bench-build", "ours-always ours-auto ours-always+writeback+killpriv-v2 ours-always+nolocks rust-always rust-auto c-always c-auto 9p ext4 tmpfs"),
    ])
    func configurations(script: String, known: String) throws {
        let result = try run(["\(repositoryRoot)/qemu/\(script)", "--configs", known + " ours-sometimes", "--out", NSTemporaryDirectory()],
                             timeout: 60)
        #expect(result.status == 2, "\(result.errors)")
        let lines = result.errors.split(separator: "\n")
        #expect(lines.count == 1, "\(result.errors)")
        #expect(lines.first?.hasPrefix("\(script): unknown configuration ours-sometimes ") == true, "\(result.errors)")
    }
}
