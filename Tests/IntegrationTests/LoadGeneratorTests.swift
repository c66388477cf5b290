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

@Suite("The load generator's node-scaling plan", .serialized)
struct NodeScalingTests {
    @Test("holding thousands of files and forgetting them: no failed LOOKUP, memory back near its start",
          arguments: [("prefer", 30_000), ("never", 3_000)])
    func holdAndForget(handles: String, most: Int) throws {
        let directory = "/tmp/node-scaling-test"
        let result = try run([
            loadGenerator, "--backend", "\(backend) --inode-file-handles=\(handles)", "--nodes", "100,\(most)",
            "--samples", "500", "--depth", "8", "--nodes-directory", directory,
        ])
        #expect(result.status == 0, "\(result.errors)")
        let rows = result.output.split(separator: "\n").filter { $0.hasPrefix("| ") && !$0.hasPrefix("| nodes held") }
            .map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(rows.count == 4, "\(result.output)")
        guard rows.count == 4 else { return }
        // nodes held, then the last column: failed LOOKUPs
        #expect(rows[1][0] == "100" && rows[2][0] == "\(most)")
        #expect(rows[1].last == "0" && rows[2].last == "0")
        // With file handles no descriptor per node; without, one each.
        let descriptors = rows.map { Int($0[3]) ?? -1 }
        if handles == "prefer" { #expect(descriptors[2] == descriptors[0]) } else { #expect(descriptors[2] >= descriptors[0] + most) }
        // Every node forgotten: the descriptors are back, and the memory within 1 MiB of its start.
        #expect(descriptors[3] == descriptors[0])
        let start = Double(rows[0][1]) ?? 0, peak = Double(rows[2][1]) ?? 0, end = Double(rows[3][1]) ?? 99
        #expect(end <= start + 1, "anonymous RSS \(start) MiB at the start, \(peak) MiB at \(most) nodes, \(end) MiB after the FORGETs")
    }
}
