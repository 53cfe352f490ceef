#include "datapath/idle_wheel.hpp"

#include <stdexcept>

namespace stickyd {

IdleWheel::IdleWheel(uint32_t buckets) : buckets_(buckets), mask_(buckets - 1) {
    if (buckets == 0 || (buckets & (buckets - 1)) != 0) {
        throw std::invalid_argument("IdleWheel: the bucket count must be a power of two");
    }
}

void IdleWheel::schedule(WheelEntry entry, uint64_t due) {
    if (due <= expired_) due = expired_ + 1;
    buckets_[due & mask_].push_back(entry);
    ++size_;
    // A due tick beyond one turn sits in a bucket that comes round earlier.
    const uint64_t visible = due - ((due - expired_ - 1) / buckets_.size()) * buckets_.size();
    if (visible < next_) next_ = visible;
}

uint64_t IdleWheel::find_next() const {
    if (size_ == 0) return kNever;
    for (uint64_t tick = expired_ + 1; tick <= expired_ + buckets_.size(); ++tick) {
        if (!buckets_[tick & mask_].empty()) return tick;
    }
    return kNever;  // unreachable while size_ counts right
}

}  // namespace stickyd
