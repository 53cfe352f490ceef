// A listener's allow and deny lists (the NLB's security groups), compiled for the
// accept path: which clients may connect at all, decided before any target is chosen.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/ip_prefix.hpp"

namespace stickyd {

enum class SourceVerdict : uint8_t {
    allowed,
    denied,       // inside a deny prefix (deny wins over allow)
    not_allowed,  // an allow list exists and names no prefix holding the client
};

// "allowed", "denied", "not_allowed": the reason label in metrics and JSON.
std::string_view to_string(SourceVerdict verdict);

// Both lists flattened into the disjoint address ranges they cut each family into,
// each range with its verdict, adjacent ranges of one verdict merged. A check is
// a branch-free binary search over the range starts of the client's family: about
// log2(2 * prefixes) steps, whatever the prefixes' lengths or overlaps. Long lists
// search an index of every block's first start, then one block of four cache
// lines, so most steps stay in cache (10,000 IPv6 prefixes: 350 KB of starts, a
// 22 KB index). Immutable once built; workers share one per listener.
class SourceFilter {
  public:
    // An empty allow list allows every address that deny does not hold.
    SourceFilter(std::span<const IpPrefix> allow, std::span<const IpPrefix> deny);

    // `client` as ip_key_of() gives it (v4-mapped already IPv4). A key of neither
    // family gets the verdict of an address no prefix holds.
    SourceVerdict check(const IpKey& client) const;

    // How many ranges each family was cut into (>= 1), for tests and the benchmark.
    size_t v4_ranges() const { return v4_.starts.size(); }
    size_t v6_ranges() const { return v6_.starts.size(); }

  private:
    template <typename Word>
    struct Ranges {
        static constexpr size_t kBlock = 256 / sizeof(Word);

        std::vector<Word> starts;  // ascending, starts[0] == 0
        std::vector<SourceVerdict> verdicts;
        std::vector<Word> index;  // starts[0], starts[kBlock], ...; empty when in L1

        void build_index();
        SourceVerdict find(Word address) const;
    };

    Ranges<uint32_t> v4_;
    Ranges<unsigned __int128> v6_;
    SourceVerdict outside_;  // the verdict of an address no prefix holds
};

}  // namespace stickyd
