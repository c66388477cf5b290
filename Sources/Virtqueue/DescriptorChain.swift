// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory

/// The buffers of one descriptor chain, split into the device-readable and device-writable parts, as host
/// `iovec`s into guest memory. One instance is allocated per queue worker and reused for every request.
///
/// Only its worker thread ever touches an instance, so its counters opt out of dynamic exclusivity checks
/// (`@exclusivity(unchecked)`): on the request path those checks cost more than the counting itself.
// SAFETY: Owns its buffer lists; the buffers point into `memory`, which it holds, and counts never pass capacity.
@safe
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
    @exclusivity(unchecked) public internal(set) var memory: GuestMemoryMap

    /// Room for `capacity` buffers on each side.
    public init(capacity: Int, memory: GuestMemoryMap = .empty) {
        // SAFETY: allocates the buffer lists this chain owns, freed in deinit.
        unsafe readable = .allocate(capacity: capacity)
        unsafe writable = .allocate(capacity: capacity)
        unsafe self.memory = memory
    }

    deinit {
        // SAFETY: frees what init allocated; nothing holds the lists once the chain is gone.
        unsafe readable.deallocate()
        unsafe writable.deallocate()
    }

    /// `head`, for other modules: read there, the stored property costs a dynamic exclusivity check per
    /// request (about 60 instructions) in spite of `@exclusivity(unchecked)`; read here, it costs none.
    public var headIndex: UInt16 { unsafe head }

    /// `memory`, unretained, for other modules: a request that is not deferred costs no reference counting and
    /// no exclusivity check. Valid while this chain's request is being handled.
    public var memoryOwner: Unmanaged<AnyObject> { unsafe Unmanaged.passUnretained(memory) }

    /// The readable buffers in use.
    public var readableBuffers: UnsafeBufferPointer<iovec> {
        // SAFETY: readableCount never passes the list's capacity (append checks).
        unsafe UnsafeBufferPointer(rebasing: readable[0..<readableCount])
    }

    /// The writable buffers in use.
    public var writableBuffers: UnsafeMutableBufferPointer<iovec> {
        // SAFETY: writableCount never passes the list's capacity (append checks).
        unsafe UnsafeMutableBufferPointer(rebasing: writable[0..<writableCount])
    }

    func reset(head: UInt16) {
        // SAFETY: resets counts only; the lists are reused.
        unsafe self.head = head
        unsafe readableCount = 0
        unsafe writableCount = 0
        unsafe readableLength = 0
        unsafe writableLength = 0
    }

    /// Appends one buffer; `false` when there is no room left.
    func append(_ base: UnsafeMutableRawPointer, length: UInt32, writable isWritable: Bool) -> Bool {
        // SAFETY: stores only after checking room; `base` is a bounds-checked translation of guest memory the chain
        // holds.
        let entry = unsafe iovec(iov_base: base, iov_len: Int(length))
        if isWritable {
            guard unsafe writableCount < writable.count else { return false }
            unsafe writable[writableCount] = unsafe entry
            unsafe writableCount += 1
            unsafe writableLength += UInt64(length)
        } else {
            guard unsafe readableCount < readable.count else { return false }
            unsafe readable[readableCount] = unsafe entry
            unsafe readableCount += 1
            unsafe readableLength += UInt64(length)
        }
        return true
    }
}
