#include "stickyd/source_filter.hpp"

#include <endian.h>

#include <algorithm>
#include <cstring>

namespace stickyd {
namespace {

using U128 = unsigned __int128;

// An address as one unsigned number, most significant byte first as on the wire,
// so ranges compare as integers. Whole-word loads and byte swaps: a byte loop made
// an IPv6 check cost five times an IPv4 one.
template <typename Word>
Word number_of(const IpKey& key);

template <>
uint32_t number_of<uint32_t>(const IpKey& key) {
    uint32_t value;
    std::memcpy(&value, key.bytes.data(), 4);
    return be32toh(value);
}

template <>
U128 number_of<U128>(const IpKey& key) {
    uint64_t high;
    uint64_t low;
    std::memcpy(&high, key.bytes.data(), 8);
    std::memcpy(&low, key.bytes.data() + 8, 8);
    return (U128{be64toh(high)} << 64) | be64toh(low);
}

template <typename Word>
constexpr Word kAllOnes = static_cast<Word>(~Word{0});

// Where a list's coverage changes: +1 at a prefix's first address, -1 just past
// its last (nothing past the family's last address).
template <typename Word>
struct Edge {
    Word at;
    int allow;
    int deny;
};

template <typename Word>
void add_edges(std::span<const IpPrefix> prefixes, size_t family_size, bool deny,
               std::vector<Edge<Word>>& edges) {
    constexpr unsigned kBits = sizeof(Word) * 8;
    for (const IpPrefix& p : prefixes) {
        if (p.address.size != family_size) continue;
        const Word first = number_of<Word>(p.address);
        // A shift by the full width is undefined, so a host prefix is spelled out.
        const Word host_bits = p.length >= kBits ? Word{0} : (kAllOnes<Word> >> p.length);
        const Word last = first | host_bits;
        edges.push_back(deny ? Edge<Word>{first, 0, 1} : Edge<Word>{first, 1, 0});
        if (last != kAllOnes<Word>) {
            edges.push_back(deny ? Edge<Word>{last + 1, 0, -1} : Edge<Word>{last + 1, -1, 0});
        }
    }
}

// A sweep over the edges in address order, keeping how many allow and deny prefixes
// hold the current address; a range starts wherever the verdict changes.
template <typename Word>
void sweep(std::vector<Edge<Word>> edges, SourceVerdict outside, std::vector<Word>& starts,
           std::vector<SourceVerdict>& verdicts) {
    std::sort(edges.begin(), edges.end(),
              [](const Edge<Word>& a, const Edge<Word>& b) { return a.at < b.at; });
    starts.assign(1, Word{0});
    verdicts.assign(1, outside);
    int allow = 0;
    int deny = 0;
    for (size_t i = 0; i < edges.size();) {
        const Word at = edges[i].at;
        for (; i < edges.size() && edges[i].at == at; ++i) {
            allow += edges[i].allow;
            deny += edges[i].deny;
        }
        const SourceVerdict verdict = deny > 0    ? SourceVerdict::denied
                                      : allow > 0 ? SourceVerdict::allowed
                                                  : outside;
        if (verdict == verdicts.back()) continue;
        if (at == Word{0}) {  // the first range's own verdict
            verdicts.front() = verdict;
            continue;
        }
        starts.push_back(at);
        verdicts.push_back(verdict);
    }
    starts.shrink_to_fit();
    verdicts.shrink_to_fit();
}

}  // namespace

std::string_view to_string(SourceVerdict verdict) {
    switch (verdict) {
        case SourceVerdict::allowed:
            return "allowed";
        case SourceVerdict::denied:
            return "denied";
        case SourceVerdict::not_allowed:
            return "not_allowed";
    }
    return "allowed";
}

// Where in [first, first + n) the last value at or below `address` is, first[0]
// being at or below it. Halves the span without a branch the predictor could miss
// (the comparison becomes a conditional move).
template <typename Word>
size_t last_at_or_below(const Word* first, size_t n, Word address) {
    const Word* base = first;
    while (n > 1) {
        const size_t half = n / 2;
        base = base[half] <= address ? base + half : base;
        n -= half;
    }
    return static_cast<size_t>(base - first);
}

template <typename Word>
void SourceFilter::Ranges<Word>::build_index() {
    index.clear();
    // While the starts fit in half of L1, a second search only adds steps.
    if (starts.size() * sizeof(Word) <= 16 * 1024) return;
    for (size_t i = 0; i < starts.size(); i += kBlock) index.push_back(starts[i]);
}

template <typename Word>
SourceVerdict SourceFilter::Ranges<Word>::find(Word address) const {
    if (index.empty()) return verdicts[last_at_or_below(starts.data(), starts.size(), address)];
    const size_t first = last_at_or_below(index.data(), index.size(), address) * kBlock;
    const size_t n = std::min(kBlock, starts.size() - first);
    return verdicts[first + last_at_or_below(starts.data() + first, n, address)];
}

SourceFilter::SourceFilter(std::span<const IpPrefix> allow, std::span<const IpPrefix> deny)
    : outside_(allow.empty() ? SourceVerdict::allowed : SourceVerdict::not_allowed) {
    std::vector<Edge<uint32_t>> v4;
    add_edges(allow, 4, false, v4);
    add_edges(deny, 4, true, v4);
    sweep(std::move(v4), outside_, v4_.starts, v4_.verdicts);
    v4_.build_index();
    std::vector<Edge<U128>> v6;
    add_edges(allow, 16, false, v6);
    add_edges(deny, 16, true, v6);
    sweep(std::move(v6), outside_, v6_.starts, v6_.verdicts);
    v6_.build_index();
}

SourceVerdict SourceFilter::check(const IpKey& client) const {
    if (client.size == 4) return v4_.find(number_of<uint32_t>(client));
    if (client.size == 16) return v6_.find(number_of<U128>(client));
    return outside_;
}

}  // namespace stickyd
