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

    /// The sync's tags come from the guest: qemu/sync-host.sh runs its command for a plain name only (the scrape
    /// makes a file of it), and answers every sync all the same, so that a guest never waits for ever.
    @Test("the benchmarks' host sync runs its command for plain tags only, and answers every sync")
    func syncTags() throws {
        let script = """
            set -u
            . "\(repositoryRoot)/qemu/sync-host.sh"
            work=$(mktemp -d)
            : > "$work/out"
            sync_host_start "$work" "$work/out" "echo ran"
            exec 3<> "$work/sync.in"
            printf '@@SYNC start create\r\n@@SYNC ../../etc/x\n@@SYNC a/b\n@@SYNC .hidden\n@@SYNC $(id)\n@@SYNC end rm-rf_2.x\n' >> "$work/out"
            answers=0
            for _ in 1 2 3 4 5 6; do read -r -t 10 _ <&3 && answers=$((answers + 1)); done
            sync_host_stop
            echo "answers $answers"
            cat "$work/sync.log"
            rm -rf "$work"
            """
        let result = try run(["bash", "-c", script], timeout: 60)
        #expect(result.output == "answers 6\nran start create\nran end rm-rf_2.x\n", "\(result.output)\n\(result.errors)")
        #expect(result.errors.components(separatedBy: "not a plain name").count == 5, "\(result.errors)")
    }
}
