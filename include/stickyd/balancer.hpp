// Consistent-hash selectors: the pure, immutable tables that map a key hash to a
// member. Built off the hot path, read concurrently by workers without locks.
#pragma once

#include <cstdint>
#include <memory>
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
};

// Ring: kRingPointsPerWeight virtual nodes per unit of weight, at
// hash_point(id, 0..n-1). The count never depends on how many members exist.
inline constexpr uint32_t kRingPointsPerWeight = 4096;
std::unique_ptr<const Balancer> build_ring(std::vector<Member> members);

// Maglev (Eisenbud et al. 2016) lookup table of prime size, from sorted members.
inline constexpr uint32_t kDefaultMaglevTableSize = 65537;
std::unique_ptr<const Balancer> build_maglev(std::vector<Member> members,
                                             uint32_t table_size = kDefaultMaglevTableSize);

}  // namespace stickyd
