// SPDX-License-Identifier: Apache-2.0

import Synchronization

/// Says yes at most once per interval: for a log line about something that may recur at every request (a
/// storage failure), with the count of the occurrences it did not report.
public final class IntervalReport: Sendable {
    private let nextAllowed = Atomic<Int64>(Int64.min)
    private let unreported = Atomic<Int>(0)
    private let interval: Int64

    public init(intervalNanoseconds: Int64) {
        interval = intervalNanoseconds
    }

    /// Counts one occurrence at `now` (nanoseconds); when it is to be reported, returns how many came since
    /// the last report and were not, else nil.
    public func occurrence(now: Int64) -> Int? {
        let next = nextAllowed.load(ordering: .relaxed)
        if now >= next, nextAllowed.compareExchange(expected: next, desired: now &+ interval, ordering: .relaxed).exchanged {
            return unreported.exchange(0, ordering: .relaxed)
        }
        unreported.add(1, ordering: .relaxed)
        return nil
    }
}
