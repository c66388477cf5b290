// SPDX-License-Identifier: Apache-2.0

@testable import Passthrough
import Testing

/// A small seeded generator for the tests' random sequences.
struct XorShift {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

@Suite("The id table behind node ids and file handles")
struct IDTableTests {
    @Test("random inserts, updates and removals leave it equal to a Dictionary", arguments: [UInt64(1), 64, 0x9E37])
    func matchesDictionary(seed: UInt64) {
        var table = IDTable<Int>()
        var reference: [UInt64: Int] = [:]
        var random = XorShift(seed)
        func next() -> UInt64 { random.next() }
        // Ids as the stores make them (a counter above a 6-bit shard), drawn from a small range so that keys
        // collide, runs wrap around the end of the slots, and removals shift keys back across the wrap.
        for step in 0..<20_000 {
            let id = ((next() % 300) + 1) << 6 | 5
            switch next() % 3 {
            case 0, 1:
                table[id] = step
                reference[id] = step
            default:
                #expect(table.removeValue(forKey: id) == reference.removeValue(forKey: id))
            }
            if step % 997 == 0 {
                for probe in 1...301 {
                    let key = UInt64(probe) << 6 | 5
                    #expect(table[key] == reference[key], "id \(key) after step \(step)")
                }
            }
        }
        #expect(table.count == reference.count)
        for (key, value) in reference { #expect(table[key] == value) }
        table.removeAll()
        #expect(table.count == 0 && table[UInt64(7) << 6 | 5] == nil)
    }

    @Test("0 is never an id: reading it finds nothing, removing it removes nothing")
    func zeroIsNoID() {
        var table = IDTable<String>()
        table[64] = "a"
        #expect(table[0] == nil)
        #expect(table.removeValue(forKey: 0) == nil)
        #expect(table.count == 1)
    }
}

@Suite("The index of node ids by host identity")
struct KeyIndexTests {
    @Test("random inserts and removals find what a Dictionary finds, as it grows and shrinks", arguments: [UInt64(3), 77])
    func matchesDictionary(seed: UInt64) {
        var index = KeyIndex()
        var byID: [UInt64: InodeKey] = [:]
        var reference: [InodeKey: UInt64] = [:]
        var random = XorShift(seed)
        func next() -> UInt64 { random.next() }
        var nextID: UInt64 = 1
        let keyOf: (UInt64) -> InodeKey? = { byID[$0] }
        // A small space of identities, so that inserts meet present keys and runs form; phases grow to
        // thousands and fall back to a few, so the slots double and halve.
        for step in 0..<60_000 {
            let growing = (step / 10_000) % 2 == 0
            let key = InodeKey(device: 1, inode: next() % 5_000, mountID: 7)
            if growing ? next() % 4 != 0 : next() % 4 == 0 {
                if reference[key] == nil {
                    nextID += 1
                    byID[nextID] = key
                    index.insert(key, id: nextID, keyOf: keyOf)
                    reference[key] = nextID
                }
            } else if let id = reference.removeValue(forKey: key) {
                let removed = index.remove(key, id: id, keyOf: keyOf)
                #expect(removed)
                byID[id] = nil
            } else {
                #expect(index.find(key, keyOf: keyOf) == nil)
            }
            if step % 2_999 == 0 {
                for (k, id) in reference { #expect(index.find(k, keyOf: keyOf) == id, "\(k) after step \(step)") }
            }
        }
        #expect(index.count == reference.count)
        for (k, id) in reference { #expect(index.find(k, keyOf: keyOf) == id) }
        // Emptied, the index is back to its first size.
        for (k, id) in reference {
            index.remove(k, id: id, keyOf: keyOf)
            byID[id] = nil
        }
        #expect(index.count == 0 && index.capacity == 16)
    }

    @Test("past 2^16 slots (where a slot's home comes from its node's key, not its tag) it still finds and removes")
    func large() {
        var index = KeyIndex()
        var byID: [UInt64: InodeKey] = [:]
        let keyOf: (UInt64) -> InodeKey? = { byID[$0] }
        let count: UInt64 = 120_000
        for i in 1...count {
            let key = InodeKey(device: 2, inode: i &* 2_654_435_761, mountID: 1)
            byID[i << 6] = key
            index.insert(key, id: i << 6, keyOf: keyOf)
        }
        #expect(index.capacity > 1 << 16)
        for i in stride(from: 1, through: count, by: 2) {
            let removed = index.remove(byID[i << 6]!, id: i << 6, keyOf: keyOf)
            #expect(removed)
            byID[i << 6] = nil
        }
        for i in 1...count {
            let key = InodeKey(device: 2, inode: i &* 2_654_435_761, mountID: 1)
            #expect(index.find(key, keyOf: keyOf) == (i % 2 == 0 ? i << 6 : nil))
        }
    }
}
