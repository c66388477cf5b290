// SPDX-License-Identifier: Apache-2.0

import Synchronization

/// Says yes once: for the one log line a ceiling or a misbehaving peer gets, however often it recurs.
public final class OneTimeFlag: Sendable {
    private let raised = Atomic<Bool>(false)

    public init() {}

    /// True the first time only.
    public func first() -> Bool {
        !raised.exchange(true, ordering: .relaxed)
    }
}
