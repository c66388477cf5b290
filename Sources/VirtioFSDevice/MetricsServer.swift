// SPDX-License-Identifier: Apache-2.0

import FUSE
import Logging
import VFSSystem

/// `--metrics-socket`: a thread that answers each connection on a listening Unix socket with the statistics in
/// the Prometheus text format, as one HTTP/1.0 response (what `curl --unix-socket` and an HTTP client that
/// speaks to a Unix socket expect), and closes it. Nothing the client sends is parsed: whatever comes within
/// 200 ms is read and dropped, so a client that sends nothing delays the next scrape by that much at most.
public enum MetricsServer {
    /// Starts the thread; it serves until the process ends.
    public static func start<FS: FileSystem>(
        listener: consuming OwnedFD, server: FUSEServer<FS>, procSelf: ProcSelfDirectory?, logger: Logger
    ) throws(Errno) {
        let socket = SharedDescriptor(listener)
        try SystemThread.detached(name: "metrics") {
            while true {
                do throws(Errno) {
                    let connection = try UnixSocket.accept(socket.fd.borrowed)
                    answer(connection.borrowed, server: server, procSelf: procSelf)
                } catch {
                    let passing: [Errno] = [.interrupted, .tooManyOpenFiles, .tooManyOpenFilesInSystem]
                    if passing.contains(error) { continue }
                    logger.warning("metrics socket: \(error); no more statistics are served")
                    return
                }
            }
        }
    }

    /// One connection: whatever the client sent (within 200 ms) is dropped, and the statistics go back.
    static func answer<FS: FileSystem>(_ connection: FileDescriptor, server: FUSEServer<FS>, procSelf: ProcSelfDirectory?) {
        UnixSocket.drain(connection, milliseconds: 200)
        let body = server.metrics(descriptors: procSelf?.openDescriptorCount) ?? ""
        let response = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        let bytes = Array(response.utf8)
        // SAFETY: the bytes are read during the call.
        unsafe bytes.withUnsafeBytes { (raw) -> Void in
            do throws(Errno) {
                try unsafe UnixSocket.send(connection, raw)
            } catch {
                // The client went away: nothing to tell it.
            }
        }
    }

    /// The statistics as log lines for a SIGUSR1: every sample but the histogram buckets.
    public static func dumpLines<FS: FileSystem>(server: FUSEServer<FS>, procSelf: ProcSelfDirectory?) -> [String] {
        guard let text = server.metrics(descriptors: procSelf?.openDescriptorCount) else {
            return ["SIGUSR1: statistics are off (--metrics-socket PATH turns them on)"]
        }
        return text.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.contains("_bucket{") }.map { "statistics: \($0)" }
    }
}

/// A descriptor shared with a thread for as long as either holds it.
final class SharedDescriptor: Sendable {
    let fd: OwnedFD
    init(_ fd: consuming OwnedFD) { self.fd = fd }
}
