// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE

/// Guest-side buffers for one request: the frame to read and the reply space, as iovecs.
public struct Frame {
    public var request: [UInt8]
    public var replySegments: [Int]
    /// The sizes of the buffers the request is split into (the last one takes what remains); one buffer if empty.
    public var requestSegments: [Int]

    public init(request: [UInt8], replySegments: [Int], requestSegments: [Int] = []) {
        self.request = request
        self.replySegments = replySegments
        self.requestSegments = requestSegments
    }

    /// Runs the frame through `session`; returns the bytes written and the reply bytes.
    /// (A deferred request reports `UInt32.max`; use `start` to keep its reply memory alive.)
    public func run<FS: FileSystem>(_ session: FUSESession<FS>) -> (UInt32, [UInt8]) {
        let (written, memory) = start(session)
        guard let written else { return (UInt32.max, []) }
        return (written, memory.bytes(Int(written)))
    }

    /// Runs the frame through `session` and hands back the reply memory, which stays valid as long as the
    /// caller holds it: a deferred request (nil) writes its reply there later, as into guest memory.
    public func start<FS: FileSystem>(_ session: FUSESession<FS>) -> (UInt32?, ReplyMemory) {
        var request = self.request
        let memory = ReplyMemory(segments: replySegments)
        let written = request.withUnsafeMutableBytes { raw -> UInt32? in
            var readable: [iovec] = []
            var offset = 0
            for size in requestSegments where offset < raw.count {
                let n = min(size, raw.count - offset)
                readable.append(iovec(iov_base: raw.baseAddress! + offset, iov_len: n))
                offset += n
            }
            if offset < raw.count || readable.isEmpty {
                readable.append(iovec(iov_base: raw.baseAddress.map { $0 + offset }, iov_len: raw.count - offset))
            }
            return readable.withUnsafeMutableBufferPointer { r in
                memory.vectors.withUnsafeMutableBufferPointer { w in
                    // The request's unique id is its token, as a chain head is for the device; the reply memory is
                    // the owner a deferred request holds, as guest memory is for the device.
                    session.handle(
                        readable: UnsafeBufferPointer(r), writable: w,
                        token: raw.count >= 16 ? raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self) : 0,
                        owner: Unmanaged.passUnretained(memory as AnyObject))
                }
            }
        }
        return (written, memory)
    }
}

/// The guest's reply buffers for one frame: `segments` buffers, one allocation, filled with 0xEE.
public final class ReplyMemory: @unchecked Sendable {
    let storage: UnsafeMutableRawBufferPointer
    var vectors: [iovec] = []

    init(segments: [Int]) {
        storage = .allocate(byteCount: max(segments.reduce(0, +), 1), alignment: 8)
        storage.initializeMemory(as: UInt8.self, repeating: 0xEE)
        var offset = 0
        for size in segments {
            vectors.append(iovec(iov_base: storage.baseAddress! + offset, iov_len: size))
            offset += size
        }
    }

    /// The first `count` bytes written.
    public func bytes(_ count: Int) -> [UInt8] { Array(storage.prefix(count)) }

    deinit { storage.deallocate() }
}

public func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

/// A request frame: `fuse_in_header` (from uid and gid 1000 unless told) followed by `body`.
public func frame(_ opcode: FUSEOpcode, unique: UInt64 = 9, node: UInt64 = 1, uid: UInt32 = 1000, gid: UInt32 = 1000, _ body: [UInt8] = []) -> [UInt8] {
    var header = fuse_in_header()
    header.len = UInt32(40 + body.count)
    header.opcode = opcode.rawValue
    header.unique = unique
    header.nodeid = node
    header.uid = uid
    header.gid = gid
    return bytes(header) + body
}

/// A NUL-terminated name, as requests carry names.
public func name(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

public func initFrame(major: UInt32 = 7, minor: UInt32, flags: UInt64) -> [UInt8] {
    var input = fuse_init_in()
    input.major = major
    input.minor = minor
    input.max_readahead = 131072
    input.flags = UInt32(truncatingIfNeeded: flags)
    input.flags2 = UInt32(truncatingIfNeeded: flags >> 32)
    return frame(.`init`, bytes(input))
}

public func outHeader(_ reply: [UInt8]) -> fuse_out_header {
    reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
}

public func payload<T>(_ reply: [UInt8], as: T.Type) -> T {
    reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: T.self) }
}

