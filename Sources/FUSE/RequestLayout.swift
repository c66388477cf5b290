// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import VFSSystem

/// Where a request's parts lie, from the lengths its header gives, checked against the bytes the request
/// really has before anything is sliced with them: `fuse_in_header`, the arguments, then `total_extlen` 8-byte
/// units of extensions, `len` bytes in all.
struct RequestLayout {
    static var headerSize: Int { MemoryLayout<fuse_in_header>.size }

    /// The request's length (`len`).
    let length: Int
    /// Where the arguments end and the extensions begin.
    let argumentsEnd: Int
    /// How far the request is copied out of guest memory: all of it, but for a WRITE only its arguments (the
    /// data goes from the guest's buffers to the file).
    let gatherEnd: Int
    /// The end of the arguments that are copied (what a reader may see).
    let readerEnd: Int

    var argumentsStart: Int { Self.headerSize }
    /// Whether there are extensions, copied out (never for WRITE).
    var hasExtensions: Bool { argumentsEnd < length && gatherEnd == length }

    /// Nil when the lengths contradict each other or the buffers: `len` shorter than the header or longer than
    /// the buffers, extensions longer than what follows the header, or a request (other than WRITE's data)
    /// larger than `capacity`.
    init?(header: fuse_in_header, total: Int, capacity: Int, isWrite: Bool) {
        let length = Int(header.len)
        guard length >= Self.headerSize, length <= total else { return nil }
        let extensions = Int(header.total_extlen) * 8
        guard extensions <= length - Self.headerSize else { return nil }
        self.length = length
        argumentsEnd = length - extensions
        if isWrite {
            gatherEnd = min(argumentsEnd, Self.headerSize + MemoryLayout<fuse_write_in>.size)
            readerEnd = gatherEnd
        } else {
            guard length <= capacity else { return nil }
            gatherEnd = length
            readerEnd = argumentsEnd
        }
    }
}

/// Writes the `fuse_out_header` every reply starts with.
enum FUSEReply {
    static var headerSize: Int { MemoryLayout<fuse_out_header>.size }

    /// The `fuse_out_header` of a reply of `length` bytes in all.
    @inline(__always)
    static func outHeader(length: Int, error: Errno?, unique: UInt64) -> fuse_out_header {
        fuse_out_header(len: UInt32(truncatingIfNeeded: length), error: -(error?.rawValue ?? 0), unique: unique)
    }

    /// Writes a `fuse_out_header` announcing `length` reply bytes at the start of the guest's buffers; the
    /// returned cursor continues after it. Every reply, inline, zero-copy or deferred, starts here.
    static func writeHeader(into writable: UnsafeMutableBufferPointer<iovec>, length: Int, error: Errno?, unique: UInt64) -> WriteCursor {
        // SAFETY: WriteCursor stays within the buffers, valid for the request being answered.
        var header = outHeader(length: length, error: error, unique: unique)
        var cursor = unsafe WriteCursor(writable)
        unsafe withUnsafeBytes(of: &header) { unsafe cursor.write($0) }
        return cursor
    }
}
