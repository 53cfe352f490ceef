// Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4), weighted.
//
// Each member has a permutation of the table's slots, derived only from its id:
//   offset = XXH3-64(id, seed kOffsetSeed) % M
//   skip   = XXH3-64(id, seed kSkipSeed) % (M - 1) + 1
//   slot j = (offset + j * skip) % M
// Members take turns, in id order, claiming their next unclaimed slot until the
// table is full. M is prime, so every permutation visits every slot.
//
// Weights: every round, each member earns `weight` credits and takes a turn when
// it holds `max_weight` (the group's largest weight) of them. A member of the
// largest weight takes a turn every round, one of half that weight every other
// round, so slot counts are proportional to weight. Integer credits keep the
// build exact on every platform. Credits start so that every member takes a
// turn in round one, which guarantees each at least one slot.
#include <algorithm>
#include <stdexcept>
#include <string>

#include <xxhash.h>

#include "stickyd/balancer.hpp"

namespace stickyd {
namespace {

// Arbitrary but frozen forever: changing either remaps every maglev client.
// (The 64-bit golden ratio and xxHash's PRIME64_2.)
constexpr uint64_t kOffsetSeed = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kSkipSeed = 0xC2B2AE3D27D4EB4Full;

bool is_prime(uint32_t n) {
    if (n < 2) return false;
    if (n % 2 == 0) return n == 2;
    for (uint32_t d = 3; d <= n / d; d += 2) {
        if (n % d == 0) return false;
    }
    return true;
}

class Maglev final : public Balancer {
  public:
    Maglev(std::vector<Member> members, uint32_t table_size) : members_(std::move(members)) {
        detail::sort_and_check_members(members_);
        if (auto error = maglev_table_size_error(table_size, members_.size())) {
            throw std::invalid_argument(*error);
        }
        if (!members_.empty()) populate(table_size);
    }

    const std::vector<Member>& members() const override { return members_; }

    uint32_t owner(uint64_t hash) const override {
        return table_.empty() ? kNoMember : table_[hash % table_.size()];
    }

    uint32_t pick(uint64_t hash, std::span<const uint8_t> usable, unsigned attempt) const override {
        if (table_.empty()) return kNoMember;
        const size_t i = hash % table_.size();
        const uint32_t m = table_[i];
        if (attempt == 0 && usable.size() == members_.size() && usable[m] != 0) return m;

        detail::UsableWalk walk(usable, members_.size(), attempt);
        for (size_t step = 0, j = i; step < table_.size(); ++step) {
            if (walk.accept(table_[j])) return table_[j];
            if (++j == table_.size()) j = 0;
        }
        return m;  // unreachable: every member owns at least one slot
    }

    std::vector<double> shares() const override {
        std::vector<uint64_t> slots(members_.size());
        for (uint32_t m : table_) ++slots[m];
        std::vector<double> out(members_.size());
        for (size_t m = 0; m < out.size(); ++m) {
            out[m] = static_cast<double>(slots[m]) / static_cast<double>(table_.size());
        }
        return out;
    }

    std::string_view algorithm() const override { return "maglev"; }
    uint32_t table_size() const override { return static_cast<uint32_t>(table_.size()); }

  private:
    struct Permutation {
        uint32_t slot;  // next candidate: (offset + j * skip) % M
        uint32_t skip;
        uint32_t credit;

        void advance(uint32_t table_size) {
            // slot + skip < 2^33: no overflow in 64 bits.
            slot = static_cast<uint32_t>((uint64_t{slot} + skip) % table_size);
        }
    };

    void populate(uint32_t table_size) {
        const uint32_t max_weight =
            std::max_element(members_.begin(), members_.end(),
                             [](const Member& a, const Member& b) { return a.weight < b.weight; })
                ->weight;

        std::vector<Permutation> perms;
        perms.reserve(members_.size());
        for (const Member& m : members_) {
            const uint64_t h1 = XXH3_64bits_withSeed(m.id.data(), m.id.size(), kOffsetSeed);
            const uint64_t h2 = XXH3_64bits_withSeed(m.id.data(), m.id.size(), kSkipSeed);
            perms.push_back({static_cast<uint32_t>(h1 % table_size),
                             static_cast<uint32_t>(h2 % (table_size - 1) + 1),
                             max_weight - m.weight});
        }

        table_.assign(table_size, kNoMember);
        uint32_t filled = 0;
        while (filled < table_size) {
            for (uint32_t m = 0; m < perms.size() && filled < table_size; ++m) {
                Permutation& p = perms[m];
                p.credit += members_[m].weight;
                if (p.credit < max_weight) continue;
                p.credit -= max_weight;
                while (table_[p.slot] != kNoMember) p.advance(table_size);
                table_[p.slot] = m;
                p.advance(table_size);
                ++filled;
            }
        }
    }

    std::vector<Member> members_;
    std::vector<uint32_t> table_;
};

}  // namespace

std::optional<std::string> maglev_table_size_error(uint32_t table_size, size_t member_count) {
    const std::string prefix = "maglev_table_size " + std::to_string(table_size);
    if (table_size > kMaxMaglevTableSize) {
        return prefix + " is larger than the maximum " + std::to_string(kMaxMaglevTableSize);
    }
    if (!is_prime(table_size)) {
        return prefix + " is not prime (examples of primes: 65537, 131071, 524287)";
    }
    if (uint64_t{table_size} < uint64_t{kMaglevMinEntriesPerMember} * member_count) {
        return prefix + " is too small for " + std::to_string(member_count) +
               " targets: it needs at least " + std::to_string(kMaglevMinEntriesPerMember) +
               " entries per target (a prime >= " +
               std::to_string(uint64_t{kMaglevMinEntriesPerMember} * member_count) + ")";
    }
    return std::nullopt;
}

std::unique_ptr<const Balancer> build_maglev(std::vector<Member> members, uint32_t table_size) {
    return std::make_unique<Maglev>(std::move(members), table_size);
}

}  // namespace stickyd
