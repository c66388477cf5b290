// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The load generator next to the back-end under test.
let loadGenerator = URL(fileURLWithPath: backend).deletingLastPathComponent().appendingPathComponent("swift-virtiofsd-bench").path

@Suite("The host-side load generator against the back-end", .serialized)
struct LoadGeneratorTests {
    @Test("every operation of the plan completes without an error: one queue, two, and with a thread pool",
          arguments: [(1, 0), (2, 0), (1, 2), (2, 2)])
    func everyOperation(queues: Int, pool: Int) throws {
        let result = try run([
            loadGenerator, "--backend", "\(backend) --thread-pool-size \(pool)", "--scale", "0.01", "--depth", "8",
            "--queues", "\(queues)",
        ])
        #expect(result.status == 0, "\(result.errors)")
        let rows = result.output.split(separator: "\n").filter { $0.hasPrefix("| ") && !$0.hasPrefix("| operation") }
        for operation in ["getattr", "lookup", "readdirplus", "read-4k", "read-1m", "write-1m", "create-release-unlink"] {
            let row = rows.first { $0.hasPrefix("| \(operation) |") }
            #expect(row != nil, "no row for \(operation):\n\(result.output)")
            // the last column counts requests that came back with an error
            #expect(row?.split(separator: "|").last?.trimmingCharacters(in: .whitespaces) == "0", "\(row ?? "")")
        }
    }
}
