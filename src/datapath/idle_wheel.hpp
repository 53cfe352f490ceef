// The idle-timeout timer wheel: which connections to look at, and when.
//
// Time is counted in ticks (the worker uses 100 ms). Each relaying connection sits
// in exactly one bucket, the one for the earliest tick at which it could be idle
// for its whole timeout. Nothing moves a connection when it transfers bytes: it
// only stamps its own last-active tick. When a bucket comes due, the worker looks
// at each connection in it once, and either closes it (idle long enough) or puts
// it back for the tick its timeout now ends on. A busy connection therefore costs
// one bucket visit per timeout period, an idle one exactly one, and no tick ever
// scans every connection.
//
// Entries are (slot, generation) pairs and are never removed: an entry whose
// connection closed in the meantime is recognised as stale by its generation and
// dropped when its bucket comes due. Deadlines further out than one turn of the
// wheel share a bucket with nearer ones and are simply put back when visited early.
//
// Pure bookkeeping: no clock, no I/O; the caller says what time it is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stickyd {

struct WheelEntry {
    uint32_t slot = 0;
    uint32_t generation = 0;

    friend bool operator==(const WheelEntry&, const WheelEntry&) = default;
};

class IdleWheel {
  public:
    static constexpr uint64_t kNever = UINT64_MAX;

    // buckets: a power of two; one turn of the wheel spans that many ticks.
    explicit IdleWheel(uint32_t buckets = 4096);

    // Look at `entry` again at tick `due`. A due tick not after the last one
    // expired is moved to the next tick, so nothing is ever scheduled in the past.
    void schedule(WheelEntry entry, uint64_t due);

    // Hands every entry whose bucket is due by tick `now` to visit(entry), once,
    // taking it out of the wheel; visit may schedule it (or anything) again.
    // Buckets skipped by a late call are all handled, each once.
    template <typename Visit>
    void expire(uint64_t now, Visit&& visit) {
        if (now <= expired_) return;
        const uint64_t first = expired_ + 1;
        const uint64_t last = now - first >= buckets_.size() ? first + buckets_.size() - 1 : now;
        // Moved to `now` first: anything visit() schedules lands after it.
        expired_ = now;
        for (uint64_t tick = first; tick <= last; ++tick) {
            std::vector<WheelEntry>& bucket = buckets_[tick & mask_];
            if (bucket.empty()) continue;
            scratch_.swap(bucket);
            size_ -= scratch_.size();
            for (const WheelEntry& e : scratch_) visit(e);
            scratch_.clear();
            // Keep the capacity of one of the two vectors: a bucket refilled each
            // turn should not reallocate each turn.
            if (bucket.empty()) bucket.swap(scratch_);
        }
        next_ = find_next();
    }

    // The first tick after the last expired one whose bucket holds anything, or
    // kNever. Never later than the earliest scheduled due tick (it may be earlier,
    // when a far deadline shares a bucket with a near tick).
    uint64_t next_due() const { return next_; }
    size_t size() const { return size_; }
    // The last tick passed to expire() (0 before the first call).
    uint64_t expired() const { return expired_; }

  private:
    uint64_t find_next() const;

    std::vector<std::vector<WheelEntry>> buckets_;
    std::vector<WheelEntry> scratch_;
    uint64_t mask_;
    uint64_t expired_ = 0;
    uint64_t next_ = kNever;
    size_t size_ = 0;
};

}  // namespace stickyd
