// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory

/// The buffers of one descriptor chain, split into the device-readable and device-writable parts, as host
/// `iovec`s into guest memory. One instance is allocated per queue worker and reused for every request.
///
/// Only its worker thread ever touches an instance, so its counters opt out of dynamic exclusivity checks
/// (`@exclusivity(unchecked)`): on the request path those checks cost more than the counting itself.
public final class DescriptorChain {
    /// Device-readable buffers, in chain order.
    public let readable: UnsafeMutableBufferPointer<iovec>
    /// Device-writable buffers, in chain order.
    public let writable: UnsafeMutableBufferPointer<iovec>
    /// How many of `readable` are in use.
    @exclusivity(unchecked) public internal(set) var readableCount = 0
    /// How many of `writable` are in use.
    @exclusivity(unchecked) public internal(set) var writableCount = 0
    /// Total bytes of the readable buffers.
    @exclusivity(unchecked) public internal(set) var readableLength: UInt64 = 0
    /// Total bytes of the writable buffers.
    @exclusivity(unchecked) public internal(set) var writableLength: UInt64 = 0
    /// The head descriptor index, which goes back into the used ring.
    @exclusivity(unchecked) public internal(set) var head: UInt16 = 0
    /// The guest memory the buffers point into. A request that outlives its handler (a lock wait, a pool job)
    /// holds this, so the buffers stay mapped after the front-end replaces the memory table.
    public internal(set) var memory: GuestMemoryMap

    /// Room for `capacity` buffers on each side.
    public init(capacity: Int, memory: GuestMemoryMap = .empty) {
        readable = .allocate(capacity: capacity)
        writable = .allocate(capacity: capacity)
        self.memory = memory
    }

    deinit {
        readable.deallocate()
        writable.deallocate()
    }

    /// `head`, for other modules: read there, the stored property costs a dynamic exclusivity check per
    /// request (about 60 instructions) in spite of `@exclusivity(unchecked)`; read here, it costs none.
    public var headIndex: UInt16 { head }

    /// The readable buffers in use.
    public var readableBuffers: UnsafeBufferPointer<iovec> {
        UnsafeBufferPointer(rebasing: readable[0..<readableCount])
    }

    /// The writable buffers in use.
    public var writableBuffers: UnsafeMutableBufferPointer<iovec> {
        UnsafeMutableBufferPointer(rebasing: writable[0..<writableCount])
    }

    func reset(head: UInt16) {
        self.head = head
        readableCount = 0
        writableCount = 0
        readableLength = 0
        writableLength = 0
    }

    /// Appends one buffer; `false` when there is no room left.
    func append(_ base: UnsafeMutableRawPointer, length: UInt32, writable isWritable: Bool) -> Bool {
        let entry = iovec(iov_base: base, iov_len: Int(length))
        if isWritable {
            guard writableCount < writable.count else { return false }
            writable[writableCount] = entry
            writableCount += 1
            writableLength += UInt64(length)
        } else {
            guard readableCount < readable.count else { return false }
            readable[readableCount] = entry
            readableCount += 1
            readableLength += UInt64(length)
        }
        return true
    }
}
