// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import VFSSystem

/// The dirty-page log of a live migration (vhost-user.rst, "Migration"): one bit per 4 KiB page of guest
/// physical memory, in a shared memory file the front-end gave (SET_LOG_BASE). Every byte the back-end writes
/// into guest memory while the front-end logs is marked here, after it is written, so that the front-end sends
/// that page again.
// SAFETY: `base` points `size` bytes into `mapping`, which the log holds; every bit set is checked against `size`.
@safe
public final class DirtyLog: @unchecked Sendable {
    /// VHOST_LOG_PAGE.
    public static var pageSize: UInt64 { 0x1000 }

    let mapping: MemoryMapping
    let base: UnsafeMutableRawPointer
    /// Bytes of log: it covers `size * 8` pages from guest address 0.
    public let size: UInt64

    /// The log `size` bytes long at `offset` into `mapping`.
    /// - Throws: `Errno.invalidArgument` when it does not fit in the mapping.
    public init(mapping: MemoryMapping, offset: UInt64, size: UInt64) throws(Errno) {
        let (end, overflow) = offset.addingReportingOverflow(size)
        guard size > 0, !overflow, end <= UInt64(mapping.length) else { throw .invalidArgument }
        self.mapping = mapping
        unsafe base = unsafe mapping.base + Int(offset)
        self.size = size
    }

    /// Marks the pages of `length` bytes at guest address `address`. Pages past the log's end are not marked:
    /// the front-end sized the log to its guest memory, so only a hostile guest's addresses fall there.
    public func mark(_ address: UInt64, length: UInt64) {
        // SAFETY: every byte index is checked against `size` before the pointer is made.
        guard length > 0 else { return }
        let first = address / Self.pageSize
        let (end, overflow) = address.addingReportingOverflow(length - 1)
        let last = (overflow ? UInt64.max : end) / Self.pageSize
        var page = first
        while true {
            let byte = page >> 3
            guard byte < size else { return }
            unsafe cvfs_atomic_or_u8(base + Int(byte), UInt8(1) << UInt8(page & 7))
            if page == last { return }
            page += 1
        }
    }

    /// Whether the page holding `address` is marked (tests).
    public func isMarked(_ address: UInt64) -> Bool {
        // SAFETY: the byte index is checked against `size`.
        let page = address / Self.pageSize
        guard page >> 3 < size else { return false }
        return unsafe (base + Int(page >> 3)).load(as: UInt8.self) & (UInt8(1) << UInt8(page & 7)) != 0
    }
}
