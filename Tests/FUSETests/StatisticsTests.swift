// SPDX-License-Identifier: Apache-2.0

import FUSE
import FUSETestSupport
import Logging
import Testing

@Suite("Statistics")
struct StatisticsTests {
    func session(statistics: Bool, queue: Int = 1) -> (FUSESession<FakeFileSystem>, FUSEServer<FakeFileSystem>) {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = FUSEServer(fileSystem: FakeFileSystem(), options: FUSEServerOptions(statistics: statistics), logger: logger)
        let session = FUSESession(server: server, label: "queue \(queue)", queue: queue)
        _ = Frame(request: initFrame(minor: 41, flags: 0xffff_ffff | (0xff << 32)), replySegments: [80]).run(session)
        return (session, server)
    }

    @Test("requests are counted per queue and opcode, with their errors by errno, bytes and a histogram, in the Prometheus text format")
    func countsAndExposition() throws {
        let (session, server) = session(statistics: true, queue: 2)
        for _ in 0..<3 { _ = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [144]).run(session) }
        for _ in 0..<2 { _ = Frame(request: frame(.lookup, Array("absent\0".utf8)), replySegments: [144]).run(session) }
        // A second session of the same queue (a pool thread): its counts add up with the first's.
        let other = FUSESession(server: server, label: "queue 2 pool thread 0", queue: 2)
        _ = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [144]).run(other)
        let text = try #require(server.metrics(descriptors: 7))
        #expect(server.statistics?.requests(queue: 2, opcode: 1) == 6)
        #expect(text.contains("virtiofs_requests_total{queue=\"2\",opcode=\"LOOKUP\"} 6\n"), "\(text)")
        #expect(text.contains("virtiofs_requests_total{queue=\"2\",opcode=\"INIT\"} 1\n"))
        #expect(text.contains("virtiofs_request_errors_total{queue=\"2\",opcode=\"LOOKUP\",errno=\"ENOENT\"} 2\n"))
        #expect(text.contains("virtiofs_request_duration_seconds_bucket{queue=\"2\",opcode=\"LOOKUP\",le=\"+Inf\"} 6\n"))
        #expect(text.contains("virtiofs_request_duration_seconds_count{queue=\"2\",opcode=\"LOOKUP\"} 6\n"))
        #expect(text.contains("le=\"0.000001\"") && text.contains("le=\"1.048576\""))
        // The header (40 bytes) and the name with its NUL: 4 of "present" and 2 of "absent".
        #expect(text.contains("virtiofs_request_bytes_total{queue=\"2\",opcode=\"LOOKUP\",direction=\"in\"} \(4 * 48 + 2 * 47)\n"), "\(text)")
        #expect(text.contains("virtiofs_events_total{event=\"session_started\"} 1\n"))
        #expect(text.contains("virtiofs_open_descriptors 7\n"))
        #expect(text.contains("# TYPE virtiofs_request_duration_seconds histogram\n"))
        // A reset ends the session, and a new INIT starts another: the counters go on from where they were.
        server.reset()
        _ = Frame(request: initFrame(minor: 41, flags: 0xffff_ffff), replySegments: [80]).run(session)
        let after = try #require(server.metrics(descriptors: nil))
        #expect(after.contains("virtiofs_events_total{event=\"session_ended\"} 1\n") && after.contains("virtiofs_events_total{event=\"session_started\"} 2\n"))
        #expect(after.contains("virtiofs_requests_total{queue=\"2\",opcode=\"LOOKUP\"} 6\n"))
    }

    @Test("what a hostile guest sends is counted without leaving the block: opcodes unknown or past the table as UNKNOWN, a request shorter than its header as malformed")
    func hostileRequests() throws {
        let (session, server) = session(statistics: true)
        for opcode in [UInt32(63), 200, UInt32.max] {
            var request = frame(.lookup, Array("present\0".utf8))
            withUnsafeBytes(of: opcode.littleEndian) { request.replaceSubrange(4..<8, with: $0) }
            _ = Frame(request: request, replySegments: [144]).run(session)
        }
        _ = Frame(request: Array(frame(.getattr).prefix(20)), replySegments: [144]).run(session)
        let text = try #require(server.metrics(descriptors: nil))
        #expect(text.contains("virtiofs_requests_total{queue=\"1\",opcode=\"UNKNOWN\"} 3\n"), "\(text)")
        #expect(text.contains("virtiofs_request_errors_total{queue=\"1\",opcode=\"UNKNOWN\",errno=\"ENOSYS\"} 3\n"), "\(text)")
        #expect(text.contains("virtiofs_malformed_requests_total 1\n"), "\(text)")
    }

    @Test("off, nothing is counted and there is nothing to show")
    func off() {
        let (session, server) = session(statistics: false)
        _ = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [144]).run(session)
        #expect(server.statistics == nil && server.metrics(descriptors: nil) == nil)
    }
}
