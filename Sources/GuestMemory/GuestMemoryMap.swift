// SPDX-License-Identifier: Apache-2.0

import VFSSystem

/// An address in the guest's physical address space. Never dereferenced without `GuestMemoryMap` translation.
public struct GuestAddress: RawRepresentable, Hashable, Sendable, Comparable {
    public let rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    @inlinable public static func < (a: GuestAddress, b: GuestAddress) -> Bool { a.rawValue < b.rawValue }
}

/// One region of guest memory: where it sits in the guest, in the front-end's address space, and in ours.
/// Sendable: the pointer is into a shared mapping that `mapping` keeps alive; guest memory is shared by design.
// SAFETY: `hostBase` points into `mapping`, which the region holds, and every translation is bounds-checked.
@safe
public struct GuestMemoryRegion: @unchecked Sendable {
    /// Guest physical address of the first byte.
    public let guestAddress: UInt64
    /// Length in bytes.
    public let size: UInt64
    /// Address of the first byte in the front-end's (QEMU's) virtual address space; vring addresses use it.
    public let userAddress: UInt64
    /// Our mapping of the region's file; keeps it mapped while this region is in use.
    public let mapping: MemoryMapping
    /// Where the region's first byte is in our address space.
    public let hostBase: UnsafeMutableRawPointer

    /// Describes a region that starts `offset` bytes into `mapping`.
    /// - Throws: `Errno.invalidArgument` when the region does not fit in the mapping or wraps the address space.
    public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64, mapping: MemoryMapping, offset: UInt64) throws(Errno) {
        // SAFETY: offset + size is checked to lie inside the mapping, which the region holds.
        let (end, overflow) = offset.addingReportingOverflow(size)
        guard size > 0, !overflow, end <= UInt64(mapping.length) else { throw .invalidArgument }
        guard !guestAddress.addingReportingOverflow(size - 1).overflow,
              !userAddress.addingReportingOverflow(size - 1).overflow
        else { throw .invalidArgument }
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.mapping = mapping
        unsafe self.hostBase = unsafe mapping.base + Int(offset)
    }

    /// The host address of `length` bytes at `address - start` in this region, or nil when they do not all fit.
    @inlinable
    func host(at address: UInt64, length: UInt64, start: UInt64) -> UnsafeMutableRawPointer? {
        // SAFETY: offset and length are checked against the region's size, with no overflow, before the pointer is
        // made.
        guard address >= start else { return nil }
        let offset = address &- start
        guard offset < size, length <= size &- offset else { return nil }
        return unsafe hostBase + Int(offset)
    }
}

/// The guest's memory as the front-end described it, immutable once built.
///
/// Every guest address is translated here, with overflow-checked bounds: a descriptor that points outside
/// guest memory, or runs past the end of a region, translates to nil.
public final class GuestMemoryMap: Sendable {
    /// The regions, sorted by guest address; no two overlap.
    public let regions: [GuestMemoryRegion]

    /// An empty map (no memory table yet).
    public static let empty = GuestMemoryMap(validated: [])

    private init(validated regions: [GuestMemoryRegion]) { self.regions = regions }

    /// Builds a map, rejecting regions that overlap in the guest's or the front-end's address space.
    public init(regions: [GuestMemoryRegion]) throws(Errno) {
        let sorted = regions.sorted { $0.guestAddress < $1.guestAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.guestAddress &+ a.size > b.guestAddress {
            throw .invalidArgument
        }
        let byUser = regions.sorted { $0.userAddress < $1.userAddress }
        for (a, b) in zip(byUser, byUser.dropFirst()) where a.userAddress &+ a.size > b.userAddress {
            throw .invalidArgument
        }
        self.regions = sorted
    }

    /// A new map with `region` added.
    public func adding(_ region: GuestMemoryRegion) throws(Errno) -> GuestMemoryMap {
        try GuestMemoryMap(regions: regions + [region])
    }

    /// A new map without the region that starts at `guestAddress` with `size` bytes.
    /// - Throws: `Errno.noEntry` when there is no such region.
    public func removing(guestAddress: UInt64, size: UInt64) throws(Errno) -> GuestMemoryMap {
        guard let index = regions.firstIndex(where: { $0.guestAddress == guestAddress && $0.size == size }) else {
            throw .noEntry
        }
        var rest = regions
        rest.remove(at: index)
        return GuestMemoryMap(validated: rest)
    }

    /// The host address of `length` bytes of guest memory at `address`, or nil unless all of them lie in one region.
    @inlinable
    public func translate(_ address: GuestAddress, length: UInt64) -> UnsafeMutableRawPointer? {
        // SAFETY: every candidate pointer comes from a region's bounds-checked host().
        for region in regions {
            if let host = unsafe region.host(at: address.rawValue, length: length, start: region.guestAddress) {
                return unsafe host
            }
        }
        return nil
    }

    /// The host address of `length` bytes at the front-end's virtual `address` (vring addresses), or nil.
    public func translate(userAddress address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        // SAFETY: every candidate pointer comes from a region's bounds-checked host().
        for region in regions {
            if let host = unsafe region.host(at: address, length: length, start: region.userAddress) {
                return unsafe host
            }
        }
        return nil
    }

    /// The guest address of a front-end virtual address (a packed ring's, for the dirty log; tests; the load generator).
    public func guestAddress(ofUserAddress address: UInt64) -> GuestAddress? {
        for region in regions where address >= region.userAddress && address &- region.userAddress < region.size {
            return GuestAddress(region.guestAddress &+ (address &- region.userAddress))
        }
        return nil
    }
}
