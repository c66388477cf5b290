// SPDX-License-Identifier: Apache-2.0

/// A map from the ids this file system hands out (node ids, file handles: never 0) to values, for the lookup
/// every request makes.
///
/// Open addressing with linear probing on a multiplicative hash, and backward-shift deletion (no tombstones).
/// The ids are made here, never chosen by the guest, so nothing needs the flood resistance of `Dictionary`'s
/// SipHash, which was the single costliest step of a GETATTR (about 90 of its 2,000 instructions).
struct IDTable<Value> {
    /// A key and its value side by side, so that finding a value is one cache miss, not one per array, once
    /// the table outgrows the caches (every request looks up its node, a million held or not).
    private struct Slot {
        /// 0 marks an empty slot.
        var key: UInt64
        var value: Value?
    }

    private var slots: [Slot]
    private(set) var count = 0
    /// 64 minus log2 of the capacity: a key's home slot is the top bits of its product with the golden ratio.
    private var shift: UInt64

    init() {
        slots = [Slot](repeating: Slot(key: 0, value: nil), count: 16)
        shift = 64 - 4
    }

    private var mask: Int { slots.count - 1 }

    @inline(__always)
    private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding `key`, or nil.
    @inline(__always)
    private func slot(of key: UInt64) -> Int? {
        var i = home(key)
        while true {
            let k = slots[i].key
            if k == key { return i }
            if k == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    subscript(key: UInt64) -> Value? {
        @inline(__always) get {
            guard key != 0, let i = slot(of: key) else { return nil }
            return slots[i].value
        }
        set {
            precondition(key != 0, "IDTable: 0 is not an id")
            if let newValue { insert(key, newValue) } else { _ = removeValue(forKey: key) }
        }
    }

    private mutating func insert(_ key: UInt64, _ value: Value) {
        if let i = slot(of: key) {
            slots[i].value = value
            return
        }
        // At most three quarters full, so probes stay short (two and a half on average for an id held) and an
        // empty slot always ends a search.
        if (count + 1) * 4 > slots.count * 3 { grow() }
        var i = home(key)
        while slots[i].key != 0 { i = (i + 1) & mask }
        slots[i] = Slot(key: key, value: value)
        count += 1
    }

    mutating func removeValue(forKey key: UInt64) -> Value? {
        guard key != 0, var hole = slot(of: key) else { return nil }
        let removed = slots[hole].value
        // Backward shift: every later key of the same run that may live in the hole moves into it.
        var j = hole
        while true {
            j = (j + 1) & mask
            let k = slots[j].key
            if k == 0 { break }
            // The key at j may move to the hole unless its home lies cyclically after the hole, up to j.
            if (j &- home(k)) & mask >= (j &- hole) & mask {
                slots[hole] = slots[j]
                hole = j
            }
        }
        slots[hole] = Slot(key: 0, value: nil)
        count -= 1
        // Under one eighth full: half the size (a quarter full then), so that memory follows the guest's FORGETs
        // down and a table never grows and shrinks on one id.
        if count * 8 < slots.count && slots.count > 16 { resize(to: slots.count / 2, shift: shift + 1) }
        return removed
    }

    mutating func removeAll() {
        self = IDTable()
    }

    /// Every id and its value, in no order (a migration's snapshot).
    func forEach(_ body: (UInt64, Value) -> Void) {
        for slot in slots where slot.key != 0 { body(slot.key, slot.value!) }
    }

    private mutating func grow() { resize(to: slots.count * 2, shift: shift - 1) }

    private mutating func resize(to capacity: Int, shift newShift: UInt64) {
        let old = slots
        slots = [Slot](repeating: Slot(key: 0, value: nil), count: capacity)
        shift = newShift
        count = 0
        for slot in old where slot.key != 0 {
            insert(slot.key, slot.value!)
        }
    }
}
