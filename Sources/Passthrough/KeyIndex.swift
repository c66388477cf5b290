// SPDX-License-Identifier: Apache-2.0

/// Node ids by the host identity of their file, for LOOKUP: open addressing over the ids alone, 8 bytes a slot,
/// where a `Dictionary<InodeKey, UInt64>` spends 32 (and, at its three-quarter load, up to 85 a node). A slot's
/// identity is read from the node it names (`keyOf`), which the caller's id table holds.
///
/// Host inode numbers are partly the guest's choice (it can create files until it gets the ones it wants), so
/// the slot comes from the process's seeded `Hasher`, as `Dictionary`'s would: no guest can pile its files
/// into one run.
struct KeyIndex {
    /// Node ids with a 16-bit tag of their key's hash above them (ids stay below 2^48); 0 marks an empty slot.
    /// The tag spares a probe the node's key (two table reads and the node itself, cache misses once a guest
    /// holds many) for every slot but the one that matches, and, up to 2^16 slots, gives a slot's home.
    private var slots: [UInt64]
    private(set) var count = 0
    /// 64 minus log2 of the capacity.
    private var shift: UInt64

    static let idBits: UInt64 = 48
    static let idMask: UInt64 = (1 << idBits) - 1

    init() {
        slots = [UInt64](repeating: 0, count: 16)
        shift = 64 - 4
    }

    var capacity: Int { slots.count }
    private var mask: Int { slots.count - 1 }

    /// `key`'s seeded hash spread by the golden ratio: its top bits are the home slot (the stores pick a shard
    /// with the plain hash's low bits, so those are alike within one index) and its top 16 the tag.
    @inline(__always)
    private static func mixed(_ key: InodeKey) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(key)
        return UInt64(bitPattern: Int64(hasher.finalize())) &* 0x9E37_79B9_7F4A_7C15
    }

    @inline(__always)
    private func home(mixed: UInt64) -> Int { Int(truncatingIfNeeded: mixed >> shift) }

    /// The home slot of what `slot` holds: from its tag while the capacity is at most 2^16, else from its key.
    private func home(ofSlot slot: UInt64, keyOf: (UInt64) -> InodeKey?) -> Int? {
        let bits = 64 - shift
        if bits <= 16 { return Int(truncatingIfNeeded: (slot >> Self.idBits) >> (16 - bits)) }
        return keyOf(slot & Self.idMask).map { home(mixed: Self.mixed($0)) }
    }

    /// The id indexed under `key`, or nil.
    func find(_ key: InodeKey, keyOf: (UInt64) -> InodeKey?) -> UInt64? {
        let mixed = Self.mixed(key)
        let tag = mixed >> Self.idBits
        var i = home(mixed: mixed)
        while true {
            let slot = slots[i]
            if slot == 0 { return nil }
            if slot >> Self.idBits == tag, keyOf(slot & Self.idMask) == key { return slot & Self.idMask }
            i = (i + 1) & mask
        }
    }

    /// Indexes `id` under `key`, which is not indexed yet.
    mutating func insert(_ key: InodeKey, id: UInt64, keyOf: (UInt64) -> InodeKey?) {
        precondition(id != 0 && id <= Self.idMask, "KeyIndex: not an id")
        if (count + 1) * 4 > slots.count * 3 { resize(to: slots.count * 2, shift: shift - 1, keyOf: keyOf) }
        let mixed = Self.mixed(key)
        place(home(mixed: mixed), id | (mixed >> Self.idBits) << Self.idBits)
        count += 1
    }

    private mutating func place(_ start: Int, _ slot: UInt64) {
        var i = start
        while slots[i] != 0 { i = (i + 1) & mask }
        slots[i] = slot
    }

    /// Removes `id`, indexed under `key`; false if it is not there. `keyOf` must still know every other id.
    @discardableResult
    mutating func remove(_ key: InodeKey, id: UInt64, keyOf: (UInt64) -> InodeKey?) -> Bool {
        var hole = home(mixed: Self.mixed(key))
        while slots[hole] & Self.idMask != id {
            if slots[hole] == 0 { return false }
            hole = (hole + 1) & mask
        }
        // Backward shift: each later slot of the run whose home does not lie cyclically after the hole moves in.
        var j = hole
        while true {
            j = (j + 1) & mask
            let other = slots[j]
            if other == 0 { break }
            guard let otherHome = home(ofSlot: other, keyOf: keyOf) else { continue }
            if (j &- otherHome) & mask >= (j &- hole) & mask {
                slots[hole] = other
                hole = j
            }
        }
        slots[hole] = 0
        count -= 1
        // Under one eighth full: half the size, so that memory follows the guest's FORGETs down.
        if count * 8 < slots.count && slots.count > 16 { resize(to: slots.count / 2, shift: shift + 1, keyOf: keyOf) }
        return true
    }

    mutating func removeAll() {
        self = KeyIndex()
    }

    private mutating func resize(to capacity: Int, shift newShift: UInt64, keyOf: (UInt64) -> InodeKey?) {
        let old = slots
        slots = [UInt64](repeating: 0, count: capacity)
        shift = newShift
        count = 0
        for slot in old where slot != 0 {
            guard let home = home(ofSlot: slot, keyOf: keyOf) else { continue }
            place(home, slot)
            count += 1
        }
    }
}
