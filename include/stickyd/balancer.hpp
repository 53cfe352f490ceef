// Consistent-hash selectors: the pure, immutable tables that map a key hash to a
// member. Built off the hot path, read concurrently by workers without locks.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace stickyd {

struct Member {
    std::string id;       // stable identity: configured id, else "ip:port"
    uint32_t weight = 1;  // 1..kMaxWeight
};

inline constexpr uint32_t kMaxWeight = 100;

// Sentinel for "no member" (only returned by an empty selector).
inline constexpr uint32_t kNoMember = UINT32_MAX;

class Balancer {
  public:
    virtual ~Balancer() = default;

    // Members sorted by id. Every index returned or taken below refers to this order.
    virtual const std::vector<Member>& members() const = 0;

    // The member that owns `hash` when every member is usable.
    virtual uint32_t owner(uint64_t hash) const = 0;

    // attempt 0 returns the owner if usable[owner], else the next usable member
    // clockwise (the ring) / in table order (maglev). attempt N returns the N-th
    // distinct usable member in that same walk, wrapping modulo the number of
    // usable members. If no member is usable, fails open: the same walk as if all
    // members were usable. `usable` has members().size() entries (non-zero = usable).
    virtual uint32_t pick(uint64_t hash, std::span<const uint8_t> usable,
                          unsigned attempt) const = 0;

    // Exact fraction of the 64-bit keyspace each member owns when all are usable
    // (computed from the table, not sampled). Sums to 1.
    virtual std::vector<double> shares() const = 0;

    virtual std::string_view algorithm() const = 0;

    // Entries of a lookup table (maglev), or 0 for a selector without one (ring).
    // Part of what determines the mapping, so fingerprints include it.
    virtual uint32_t table_size() const { return 0; }
};

// Ring: kRingPointsPerWeight virtual nodes per unit of weight, at
// hash_point(id, 0..n-1). The count never depends on how many members exist.
inline constexpr uint32_t kRingPointsPerWeight = 4096;
// Most weight one ring holds, summed over its members. Each point costs about 14
// bytes kept and 16 more while building: 1024 units is ~56 MiB and ~1 s to build
// on the control thread; 100 targets of weight 100 would be ~400 MiB and ~13 s.
inline constexpr uint32_t kMaxRingWeight = 1024;
// Why members of this total weight do not fit one ring, or nullopt if they do.
std::optional<std::string> ring_weight_error(uint64_t total_weight);
std::unique_ptr<const Balancer> build_ring(std::vector<Member> members);

// Maglev (Eisenbud et al. 2016) lookup table of prime size, from sorted members.
inline constexpr uint32_t kDefaultMaglevTableSize = 65537;
std::unique_ptr<const Balancer> build_maglev(std::vector<Member> members,
                                             uint32_t table_size = kDefaultMaglevTableSize);

// Table size bounds: the paper's M >= 100 * N keeps each member within ~1% of
// its ideal share; the cap keeps the table (4 bytes per entry) at 20 MB.
inline constexpr uint32_t kMaglevMinEntriesPerMember = 100;
inline constexpr uint32_t kMaxMaglevTableSize = 5000011;

// Why `table_size` cannot hold `member_count` members (not prime, too small, too
// large), or nullopt if it can. build_maglev throws std::invalid_argument with
// this message; config validation can call it to report the error up front.
std::optional<std::string> maglev_table_size_error(uint32_t table_size, size_t member_count);

namespace detail {

// Sorts by id (the order every index refers to) and throws std::invalid_argument
// on an empty or duplicate id or a weight outside 1..kMaxWeight.
void sort_and_check_members(std::vector<Member>& members);

// The walk behind Balancer::pick, shared by ring and maglev. The caller feeds
// members in walk order (ring: clockwise points; maglev: table entries from the
// hash's slot) until accept() says "this one". It accepts the (attempt mod U)-th
// distinct usable member, U being the number of usable members; with none
// usable, it walks as if all were. `usable` of the wrong size counts as all
// usable. One lap over the positions always ends the walk, as long as every
// member owns at least one position.
class UsableWalk {
  public:
    UsableWalk(std::span<const uint8_t> usable, size_t member_count, unsigned attempt);
    UsableWalk(const UsableWalk&) = delete;
    UsableWalk& operator=(const UsableWalk&) = delete;

    bool accept(uint32_t member);

  private:
    static constexpr size_t kInlineMembers = 1024;
    std::span<const uint8_t> usable_;
    bool all_usable_ = false;
    size_t remaining_ = 0;
    std::array<uint64_t, kInlineMembers / 64> inline_seen_{};
    std::vector<uint64_t> heap_seen_;  // only for groups above kInlineMembers
    uint64_t* seen_ = inline_seen_.data();
};

}  // namespace detail

}  // namespace stickyd
