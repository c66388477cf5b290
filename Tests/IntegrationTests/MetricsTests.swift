// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("Statistics while a guest runs", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct MetricsTests {
    /// qemu/metrics-check: --metrics-socket scraped before and after a guest's workload and parsed with
    /// prometheus_client; the difference must be, opcode by opcode, what the guest kernel counted sending.
    @Test("the daemon's counts, read while the guest runs, are what the guest sent; SIGUSR1 logs them")
    func countsMatchTheGuest() throws {
        let result = try run(["\(repositoryRoot)/qemu/metrics-check", "--backend", backend])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        #expect(result.output.contains("metrics-check: ok"), "\(result.output)")
        #expect(result.output.contains("metrics-check: LOOKUP guest") && result.output.contains("metrics-check: READ guest"), "\(result.output)")
    }
}
