#include "datapath/idle_wheel.hpp"

#include <stdexcept>

namespace stickyd {

IdleWheel::IdleWheel(uint32_t buckets) : heads_(buckets, kNone), mask_(buckets - 1) {
    if (buckets == 0 || (buckets & (buckets - 1)) != 0) {
        throw std::invalid_argument("IdleWheel: the bucket count must be a power of two");
    }
}

void IdleWheel::schedule(WheelEntry entry, uint64_t due) {
    if (due <= expired_) due = expired_ + 1;
    if (entry.slot >= nodes_.size()) nodes_.resize(entry.slot + 1);
    unlink(entry.slot);
    nodes_[entry.slot].generation = entry.generation;
    link(entry.slot, static_cast<uint32_t>(due & mask_));
    // A due tick beyond one turn sits in a bucket that comes round earlier.
    const uint64_t visible = due - ((due - expired_ - 1) / heads_.size()) * heads_.size();
    if (visible < next_) next_ = visible;
}

// At the tail: entries of one tick come out in the order they went in.
void IdleWheel::link(uint32_t slot, uint32_t bucket) {
    Node& node = nodes_[slot];
    node.bucket = bucket;
    uint32_t& head = heads_[bucket];
    if (head == kNone) {
        node.prev = node.next = slot;
        head = slot;
    } else {
        const uint32_t tail = nodes_[head].prev;
        node.prev = tail;
        node.next = head;
        nodes_[tail].next = slot;
        nodes_[head].prev = slot;
    }
    ++size_;
}

void IdleWheel::unlink(uint32_t slot) {
    Node& node = nodes_[slot];
    if (node.bucket == kNone) return;
    uint32_t& head = heads_[node.bucket];
    if (node.next == slot) {
        head = kNone;
    } else {
        nodes_[node.prev].next = node.next;
        nodes_[node.next].prev = node.prev;
        if (head == slot) head = node.next;
    }
    node = Node{kNone, kNone, node.generation, kNone};
    --size_;
}

uint64_t IdleWheel::find_next() const {
    if (size_ == 0) return kNever;
    for (uint64_t tick = expired_ + 1; tick <= expired_ + heads_.size(); ++tick) {
        if (heads_[tick & mask_] != kNone) return tick;
    }
    return kNever;  // unreachable while size_ counts right
}

}  // namespace stickyd
