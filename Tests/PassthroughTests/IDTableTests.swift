// SPDX-License-Identifier: Apache-2.0

@testable import Passthrough
import Testing

@Suite("The id table behind node ids and file handles")
struct IDTableTests {
    @Test("random inserts, updates and removals leave it equal to a Dictionary", arguments: [UInt64(1), 64, 0x9E37])
    func matchesDictionary(seed: UInt64) {
        var table = IDTable<Int>()
        var reference: [UInt64: Int] = [:]
        var x = seed
        func next() -> UInt64 {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            return x
        }
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
