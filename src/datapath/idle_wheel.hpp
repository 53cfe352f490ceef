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
// Entries are (slot, generation) pairs, and a slot is in the wheel at most once:
// scheduling it again moves it. An entry whose connection closed in the meantime
// is not removed; it is recognised as stale by its generation when its bucket
// comes due, or moved when a new connection in the same slot is scheduled. So the
// wheel holds at most one entry per slot, however many connections came and went,
// and it allocates nothing per connection: the buckets are intrusive lists
// threaded through a per-slot table that only grows with the highest slot used.
// Deadlines further out than one turn of the wheel share a bucket with nearer
// ones and are simply put back when visited early.
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

    // Look at `entry` again at tick `due` (and no longer wherever its slot was
    // before). A due tick not after the last one expired is moved to the next
    // tick, so nothing is ever scheduled in the past.
    void schedule(WheelEntry entry, uint64_t due);

    // Hands every entry whose bucket is due by tick `now` to visit(entry), once,
    // taking it out of the wheel; visit may schedule it (or anything) again.
    // Buckets skipped by a late call are all handled, each once.
    template <typename Visit>
    void expire(uint64_t now, Visit&& visit) {
        if (now <= expired_) return;
        const uint64_t first = expired_ + 1;
        const uint64_t last = now - first >= heads_.size() ? first + heads_.size() - 1 : now;
        // Moved to `now` first: anything visit() schedules lands after it.
        expired_ = now;
        for (uint64_t tick = first; tick <= last; ++tick) {
            const uint32_t& head = heads_[tick & mask_];
            if (head == kNone) continue;
            // Taken out whole before any visit: what a visit schedules, even into
            // this bucket a turn later, waits for its own tick.
            scratch_.clear();
            while (head != kNone) {
                scratch_.push_back({head, nodes_[head].generation});
                unlink(head);
            }
            for (const WheelEntry& e : scratch_) visit(e);
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
    static constexpr uint32_t kNone = UINT32_MAX;
    // A slot's links in its bucket's circular list (prev of the head is the tail).
    struct Node {
        uint32_t prev = kNone;
        uint32_t next = kNone;
        uint32_t generation = 0;
        uint32_t bucket = kNone;  // kNone: not in the wheel
    };

    void link(uint32_t slot, uint32_t bucket);
    void unlink(uint32_t slot);
    uint64_t find_next() const;

    std::vector<uint32_t> heads_;  // by bucket: its first slot, or kNone
    std::vector<Node> nodes_;      // by slot
    std::vector<WheelEntry> scratch_;
    uint64_t mask_;
    uint64_t expired_ = 0;
    uint64_t next_ = kNever;
    size_t size_ = 0;
};

}  // namespace stickyd
