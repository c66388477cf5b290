// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The repository root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Runs a command from the repository root; its status and its output (standard error included).
func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: repositoryRoot)
    let log = NSTemporaryDirectory() + "fuzz-test-" + UUID().uuidString
    FileManager.default.createFile(atPath: log, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: log) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    process.waitUntilExit()
    try handle.close()
    return (process.terminationStatus, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
}

let targets = ["fuse", "passthrough", "chain", "packed", "vhost-user", "state"]

@Suite("Fuzzing: the corpus, and a short libFuzzer run of every target", .serialized)
struct FuzzTests {
    @Test("every input of the corpus (seeds and past findings) replays through its target without a trap", arguments: targets)
    func corpusReplays(target: String) throws {
        let corpus = "\(repositoryRoot)/Fuzz/Corpus/\(target)"
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus)
        #expect(!files.isEmpty)
        let result = try run(["\(repositoryRoot)/.build/debug/swift-virtiofsd-fuzz", target, corpus])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("replayed \(files.count) inputs"), "\(result.output)")
    }

    @Test("20,000 executions of each target under libFuzzer and AddressSanitizer find nothing")
    func shortRun() throws {
        let result = try run(["\(repositoryRoot)/Fuzz/run", "--runs", "20000"])
        #expect(result.status == 0, "\(result.output)")
        for target in targets {
            let line = result.output.split(separator: "\n").first { $0.hasPrefix("\(target):") }
            #expect(line?.contains("findings: 0") == true, "\(line ?? "no line for \(target)")")
            print(line ?? "")
        }
    }
}
