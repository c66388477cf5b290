// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import GuestMemory
import Logging
import VFSSystem
import VhostUser
import VirtioFSDevice

/// Fuzzes the vhost-user message handler with the virtio-fs device behind it: the input is a sequence of
/// messages, each with descriptors from a fixed set (memory files of several sizes, eventfds, a pipe, a regular
/// file, /dev/null). The handler must answer, or end the connection with an error, never trap; queues it
/// starts run against memory whose first page the input also writes.
///
/// Input: 4096 bytes of memory image, then per message: u8 request (0-45, or a raw u32 after 255), u8 flags
/// (bit 0: need reply), u16 payload length (at most 300), u8 descriptors (bits 0-1: count, then two bits each
/// for which), then the payload.
public enum VhostUserFuzz {
    static let logger: Logger = {
        var logger = Logger(label: "fuzz")
        logger.logLevel = getenv("FUZZ_VERBOSE") != nil ? .debug : .critical
        return logger
    }()

    /// Descriptors a message may carry (duplicated for each use: the handler closes what it takes).
    final class Pool: @unchecked Sendable {
        let memory: [SharedDescriptor]
        let events: [SharedEventFD]
        let pipeEnds: [SharedDescriptor]
        let file: SharedDescriptor
        let null: SharedDescriptor
        let proc: ProcSelfDirectory

        init() {
            memory = [64 << 10, 1 << 20, 4096].map { SharedDescriptor(try! makeMemoryFile(name: "fuzz-memory", size: $0)) }
            events = (0..<2).map { _ in try! SharedEventFD() }
            var fds: [CInt] = [-1, -1]
            _ = pipe(&fds)
            pipeEnds = fds.map { SharedDescriptor(OwnedFD(taking: $0)) }
            file = SharedDescriptor(try! FileDescriptor.open("/proc/self/status", flags: []))
            null = SharedDescriptor(try! FileDescriptor.open("/dev/null", flags: []))
            proc = try! ProcSelfDirectory()
        }

        /// A fresh duplicate of descriptor `which` of the set.
        func descriptor(_ which: Int) -> CInt {
            let all: [CInt] = memory.map(\.rawValue) + events.map(\.descriptor.rawValue) + pipeEnds.map(\.rawValue) + [file.rawValue, null.rawValue]
            return dup(all[which % all.count])
        }
    }

    /// An owned descriptor in a class, so that arrays can hold it.
    final class SharedDescriptor: @unchecked Sendable {
        let fd: OwnedFD
        init(_ fd: consuming OwnedFD) { self.fd = fd }
        var rawValue: CInt { fd.rawValue }
    }

    static let pool = Pool()

    /// Device state that saves a few hundred bytes and takes any, so that DEVICE_STATE is offered and its
    /// messages reach the transfer.
    final class FuzzState: DeviceStateTransfer {
        var maxStateSize: Int { 1 << 16 }
        func saveState() throws(DeviceStateError) -> [UInt8] { [UInt8](repeating: 0x5a, count: 300) }
        func loadState(_ state: [UInt8]) throws(DeviceStateError) {
            if state.first == 0 { throw DeviceStateError("refused") }
        }
    }
    static let state = FuzzState()
    static let server = FUSEServer(fileSystem: AnsweringFileSystem(), logger: logger)

    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        // The first page of the first memory file is the input's: rings and requests may live there.
        let image = input.take(4096)
        image.withUnsafeBytes { _ = pwrite(pool.memory[0].rawValue, $0.baseAddress, $0.count, 0) }
        guard let pair = try? UnixSocket.pair() else { return }
        let connection = VhostUserConnection(socket: pair.first)
        let peer = pair.second
        _ = fcntl(peer.rawValue, F_SETFL, O_NONBLOCK)
        // Every other input with a tag, so that GET_CONFIG reaches a config space (and CONFIG is offered).
        // A front-end that never reads or writes its end of a state transfer: 10 ms, not 30 s.
        VhostUserHandler.deviceStateStallMilliseconds = 10
        let backend = VirtioFSBackend(
            server: server, threadPoolSize: Int(data.count % 3), tag: data.count % 2 == 0 ? "fuzz" : nil,
            deviceState: data.count % 3 == 0 ? nil : state, logger: logger)
        let handler = VhostUserHandler(backend: backend, logger: logger, procSelf: pool.proc)
        var count = 0
        while !input.isAtEnd && count < 48 {
            count += 1
            let selector = input.u8()
            let request = selector == 255 ? input.u32() : UInt32(selector % 46)
            let flags = VhostUserFlags.version | (input.u8() & 1 != 0 ? VhostUserFlags.needReply : 0)
            let length = Int(input.u16() % 301)
            let descriptors = input.u8()
            var fds: [CInt] = []
            // Memory requests take memory files first, vring requests eventfds first, the rest the others.
            let first = [5, 6, 37, 38].contains(request) ? 0 : [7, 12, 13, 14].contains(request) ? 3 : 5
            for i in 0..<Int(descriptors & 3) { fds.append(pool.descriptor(first + Int(descriptors >> (2 + 2 * i)) & 3)) }
            let payload = input.take(length)
            let message = VhostUserMessage(request: request, flags: flags, payload: payload, fds: ReceivedFDs(fds))
            do {
                try handler.handle(message, on: connection)
            } catch {
                break  // the connection would end here
            }
            // Replies are read and dropped, so the socket never fills.
            var sink = [UInt8](repeating: 0, count: 4096)
            while read(peer.rawValue, &sink, sink.count) > 0 {}
            // And what a state transfer wrote into the shared pipe.
            _ = fcntl(pool.pipeEnds[0].rawValue, F_SETFL, O_NONBLOCK)
            while read(pool.pipeEnds[0].rawValue, &sink, sink.count) > 0 {}
            // Kick every queue once, so a queue that started runs over the memory it was given.
            for event in pool.events { event.signal() }
        }
        // The connection ends: every queue stops (its deferred requests answered) and the device resets.
        handler.stopAll()
        backend.reset()
    }
}
