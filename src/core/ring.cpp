// Consistent-hash ring. A key hash is owned by the first point at or after it,
// wrapping past the largest point to the smallest.
//
// Layout (the ring is just sorted numbers):
//   points_   every virtual node's position, ascending;
//   owners_   owners_[i] is the member index of points_[i] (16-bit: it is a
//             lookup's last cache miss, and half the size stays in L2 more often);
//   buckets_  the first point of each 1/2^k of the hash space, so a search
//             covers a few adjacent points instead of the whole ring;
//   direct_   the owner of each (finer) slice of the hash space that contains
//             no point, which is most of them: most lookups read one entry.
// Lookups are exact: the tables only speed up finding the first point >= hash.
#include <algorithm>
#include <bit>
#include <stdexcept>

#include "stickyd/balancer.hpp"
#include "stickyd/hash.hpp"

namespace stickyd {
namespace detail {

// Shared with maglev.cpp (declared in balancer.hpp).

void sort_and_check_members(std::vector<Member>& members) {
    std::sort(members.begin(), members.end(),
              [](const Member& a, const Member& b) { return a.id < b.id; });
    for (size_t i = 0; i < members.size(); ++i) {
        const Member& m = members[i];
        if (m.id.empty()) throw std::invalid_argument("member id must not be empty");
        if (i > 0 && members[i - 1].id == m.id) {
            throw std::invalid_argument("duplicate member id \"" + m.id + "\"");
        }
        if (m.weight < 1 || m.weight > kMaxWeight) {
            throw std::invalid_argument("member \"" + m.id + "\" has weight " +
                                        std::to_string(m.weight) + ", expected 1.." +
                                        std::to_string(kMaxWeight));
        }
    }
}

UsableWalk::UsableWalk(std::span<const uint8_t> usable, size_t member_count, unsigned attempt)
    : usable_(usable) {
    const size_t usable_count =
        usable.size() == member_count
            ? static_cast<size_t>(
                  std::count_if(usable.begin(), usable.end(), [](uint8_t u) { return u != 0; }))
            : 0;
    // Failing open (nothing usable) is the same walk with every member usable.
    all_usable_ = usable_count == 0;
    const size_t candidates = all_usable_ ? member_count : usable_count;
    remaining_ = candidates == 0 ? 0 : attempt % candidates;
    if (member_count > kInlineMembers) {
        heap_seen_.assign((member_count + 63) / 64, 0);
        seen_ = heap_seen_.data();
    }
}

bool UsableWalk::accept(uint32_t member) {
    if (!all_usable_ && usable_[member] == 0) return false;
    const uint64_t bit = uint64_t{1} << (member % 64);
    if ((seen_[member / 64] & bit) != 0) return false;
    if (remaining_ == 0) return true;
    --remaining_;
    seen_[member / 64] |= bit;
    return false;
}

}  // namespace detail

namespace {

// About four points per search bucket: a 16-point window (two cache lines)
// covers the fullest bucket, and the index is an eighth of the points' size.
constexpr size_t kPointsPerBucket = 4;
// Four to eight direct slices per point: 80-90% of slices hold no point. At
// 2 bytes a slice this costs 8-16 bytes per point, and it halves lookup time
// once the ring outgrows L2 (measured with ring-bench at 100 targets).
constexpr unsigned kDirectExtraBits = 2;
// Caps on the tables (16 MiB index, 8 MiB direct): bigger rings fill the
// buckets fuller and take the search more often, but stay correct.
constexpr unsigned kMaxBucketBits = 22;
constexpr unsigned kMaxDirectBits = 22;
// Member indices are 16-bit, and kSearch marks a slice that holds points.
constexpr uint16_t kSearch = UINT16_MAX;
// Every member weighs at least 1, so the weight cap bounds the member count too.
static_assert(kMaxRingWeight < kSearch);

class Ring final : public Balancer {
  public:
    explicit Ring(std::vector<Member> members) : members_(std::move(members)) {
        detail::sort_and_check_members(members_);
        build();
    }

    const std::vector<Member>& members() const override { return members_; }

    uint32_t owner(uint64_t hash) const override {
        return count_ == 0 ? kNoMember : owner_of(hash);
    }

    uint32_t pick(uint64_t hash, std::span<const uint8_t> usable, unsigned attempt) const override {
        if (count_ == 0) return kNoMember;
        const uint32_t m = owner_of(hash);
        if (attempt == 0 && usable.size() == members_.size() && usable[m] != 0) return m;
        return walk(point_index(hash), usable, attempt);
    }

    std::vector<double> shares() const override {
        // Point i owns the arc (point i-1, point i]; the first point's arc wraps
        // through 2^64. 128-bit sums keep this exact.
        using u128 = unsigned __int128;
        std::vector<u128> owned(members_.size());
        for (size_t i = 1; i < count_; ++i) owned[owners_[i]] += points_[i] - points_[i - 1];
        if (count_ > 0) owned[owners_[0]] += (u128{1} << 64) - points_[count_ - 1] + points_[0];

        std::vector<double> out(members_.size());
        for (size_t m = 0; m < out.size(); ++m) {
            out[m] = static_cast<double>(static_cast<long double>(owned[m]) / 0x1p64L);
        }
        return out;
    }

    std::string_view algorithm() const override { return "ring"; }

  private:
    struct Point {
        uint64_t position;
        uint32_t member;
    };

    void build() {
        uint64_t weight = 0;
        for (const Member& m : members_) weight += m.weight;
        if (auto error = ring_weight_error(weight)) throw std::invalid_argument(*error);
        const uint64_t total = weight * kRingPointsPerWeight;
        if (total == 0) return;

        std::vector<Point> points;
        points.reserve(total);
        for (uint32_t m = 0; m < members_.size(); ++m) {
            const uint32_t replicas = members_[m].weight * kRingPointsPerWeight;
            for (uint32_t r = 0; r < replicas; ++r) {
                points.push_back({hash_point(members_[m].id, r), m});
            }
        }
        // Equal positions are ordered by member index, i.e. by id, so the earlier
        // id owns the shared arc whatever order the members came in. The later
        // point keeps an empty arc and takes over if the earlier member leaves.
        std::sort(points.begin(), points.end(), [](const Point& a, const Point& b) {
            return a.position != b.position ? a.position < b.position : a.member < b.member;
        });
        count_ = points.size();

        points_.reserve(count_);
        owners_.reserve(count_);
        for (const Point& p : points) {
            points_.push_back(p.position);
            owners_.push_back(static_cast<uint16_t>(p.member));
        }

        const unsigned bits =
            std::clamp<unsigned>(std::bit_width(count_ / kPointsPerBucket), 1, kMaxBucketBits);
        shift_ = 64 - bits;
        const size_t buckets = size_t{1} << bits;
        buckets_.resize(buckets + 1);
        uint32_t largest = 0;
        size_t i = 0;
        for (size_t b = 0; b < buckets; ++b) {
            buckets_[b] = static_cast<uint32_t>(i);
            while (i < count_ && (points_[i] >> shift_) == b) ++i;
            largest = std::max(largest, static_cast<uint32_t>(i) - buckets_[b]);
        }
        buckets_[buckets] = static_cast<uint32_t>(count_);

        // The answer for a hash in bucket b lies in [buckets_[b], buckets_[b] +
        // size of b]: past the bucket's own points comes the next bucket's first
        // point, or the end (wrap). A window of 2^k > largest entries holds it;
        // UINT64_MAX sentinels let the last bucket read a whole window.
        window_ = std::bit_ceil(largest + 1);

        // A slice without points lies inside one arc: the next point owns it all.
        const unsigned direct_bits = std::min<unsigned>(
            static_cast<unsigned>(std::bit_width(count_)) + kDirectExtraBits, kMaxDirectBits);
        direct_shift_ = 64 - direct_bits;
        direct_.resize(size_t{1} << direct_bits);
        i = 0;
        for (size_t slice = 0; slice < direct_.size(); ++slice) {
            const size_t first = i;
            while (i < count_ && (points_[i] >> direct_shift_) == slice) ++i;
            direct_[slice] = i != first ? kSearch : owners_[i == count_ ? 0 : i];
        }

        points_.resize(count_ + window_, UINT64_MAX);
    }

    // Out of line so that the common case (attempt 0, owner usable) stays a
    // leaf function without the walk's stack frame.
    [[gnu::noinline]] uint32_t walk(size_t start, std::span<const uint8_t> usable,
                                    unsigned attempt) const {
        detail::UsableWalk walk(usable, members_.size(), attempt);
        for (size_t step = 0, i = start; step < count_; ++step) {
            if (walk.accept(member_at(i))) return member_at(i);
            if (++i == count_) i = 0;
        }
        return member_at(start);  // unreachable: every member owns points
    }

    uint32_t member_at(size_t i) const { return owners_[i]; }

    uint32_t owner_of(uint64_t hash) const {
        const uint16_t direct = direct_[hash >> direct_shift_];
        if (direct != kSearch) [[likely]]
            return direct;
        return owners_[point_index(hash)];
    }

    // Index of the first point >= hash, wrapping to 0: a branchless binary
    // search of fixed length over the bucket's window, so random hashes cost
    // no mispredictions. Points are globally sorted, so reading past the bucket
    // into the next one (or the sentinels) is harmless.
    size_t point_index(uint64_t hash) const {
        const uint32_t first = buckets_[hash >> shift_];
        __builtin_prefetch(owners_.data() + first);
        const uint64_t* base = points_.data() + first;
        for (size_t half = window_ / 2; half > 0; half /= 2) {
            // A mask rather than ?:, which GCC turns into a branch.
            base += half & -static_cast<size_t>(base[half - 1] < hash);
        }
        const size_t i = static_cast<size_t>(base - points_.data()) + (base[0] < hash);
        return i == count_ ? 0 : i;
    }

    std::vector<Member> members_;
    std::vector<uint64_t> points_;   // count_ points, then window_ sentinels
    std::vector<uint16_t> owners_;   // count_
    std::vector<uint32_t> buckets_;  // 2^bits + 1
    std::vector<uint16_t> direct_;   // member index, or kSearch
    size_t count_ = 0;
    unsigned shift_ = 63;
    unsigned direct_shift_ = 63;
    size_t window_ = 1;
};

}  // namespace

std::optional<std::string> ring_weight_error(uint64_t total_weight) {
    if (total_weight <= kMaxRingWeight) return std::nullopt;
    return "the targets' weights add up to " + std::to_string(total_weight) +
           ", more than one ring holds (" + std::to_string(kMaxRingWeight) +
           "); use smaller weights (only their ratios matter) or algorithm = \"maglev\"";
}

std::unique_ptr<const Balancer> build_ring(std::vector<Member> members) {
    return std::make_unique<Ring>(std::move(members));
}

}  // namespace stickyd
