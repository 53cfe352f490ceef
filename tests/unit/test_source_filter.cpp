// The compiled allow/deny lists against a brute-force oracle that asks every prefix
// (IpPrefix::contains, which shares no code with the filter's ranges): at every
// prefix's edges and just past them, at random addresses near and far, and over a
// whole /24 address by address.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "stickyd/source_filter.hpp"

using namespace stickyd;

namespace {

IpPrefix prefix(std::string_view text) {
    auto parsed = parse_prefix(text);
    if (auto* problem = std::get_if<std::string>(&parsed)) {
        const std::string message = std::string(text) + ": " + *problem;
        FAIL(message);
    }
    return std::get<IpPrefix>(parsed);
}

std::vector<IpPrefix> prefixes(std::initializer_list<std::string_view> texts) {
    std::vector<IpPrefix> out;
    for (auto text : texts) out.push_back(prefix(text));
    return out;
}

IpKey ip(std::string_view text) {
    auto key = parse_ip(text);
    REQUIRE(key.has_value());
    return *key;
}

SourceVerdict oracle(const std::vector<IpPrefix>& allow, const std::vector<IpPrefix>& deny,
                     const IpKey& client) {
    for (const IpPrefix& p : deny)
        if (p.contains(client)) return SourceVerdict::denied;
    if (allow.empty()) return SourceVerdict::allowed;
    for (const IpPrefix& p : allow)
        if (p.contains(client)) return SourceVerdict::allowed;
    return SourceVerdict::not_allowed;
}

// The first and last address of a prefix, and the neighbours of an address, by
// byte arithmetic (nullopt past either end of the family).
IpKey last_of(const IpPrefix& p) {
    IpKey key = p.address;
    for (unsigned bit = p.length; bit < key.size * 8u; ++bit) {
        key.bytes[bit / 8] |= static_cast<uint8_t>(0x80u >> (bit % 8));
    }
    return key;
}

std::optional<IpKey> step(IpKey key, int direction) {
    for (int i = key.size - 1; i >= 0; --i) {
        const uint8_t before = key.bytes[static_cast<size_t>(i)];
        key.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(before + direction);
        if (direction > 0 ? before != 0xff : before != 0x00) return key;
    }
    return std::nullopt;  // wrapped around
}

// Random prefixes that overlap, nest and touch: addresses drawn near a few bases,
// with lengths spread over the family.
struct Generator {
    std::mt19937_64 rng;
    std::vector<IpKey> bases;

    explicit Generator(uint64_t seed) : rng(seed) {
        for (int i = 0; i < 6; ++i) bases.push_back(random_address(i % 2 == 0 ? 4 : 16));
        bases.push_back(ip("0.0.0.0"));
        bases.push_back(ip("255.255.255.255"));
        bases.push_back(ip("::"));
        bases.push_back(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    }

    IpKey random_address(uint8_t size) {
        IpKey key;
        key.size = size;
        for (uint8_t i = 0; i < size; ++i) key.bytes[i] = static_cast<uint8_t>(rng());
        // Never v4-mapped: such an IPv6 address is an IPv4 client, made by parse_ip.
        if (size == 16 && key.bytes[0] == 0) key.bytes[0] = 0x20;
        return key;
    }

    // Near a base: its first bits kept, the rest random.
    IpKey near_base() {
        const IpKey& base = bases[rng() % bases.size()];
        IpKey key = random_address(base.size);
        const unsigned keep = static_cast<unsigned>(rng() % (base.size * 8u + 1));
        const IpKey high = apply_prefix(base, keep, keep);
        for (unsigned bit = 0; bit < keep; ++bit) {
            const uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
            key.bytes[bit / 8] =
                static_cast<uint8_t>((key.bytes[bit / 8] & ~mask) | (high.bytes[bit / 8] & mask));
        }
        if (key.size == 16 && key.bytes[0] == 0 && key.bytes[10] == 0xff && key.bytes[11] == 0xff)
            key.bytes[9] = 1;  // keep it out of the v4-mapped range
        return key;
    }

    // Mostly long prefixes near the bases, and unless `long_only` sometimes very
    // short ones that swallow the others.
    IpPrefix random_prefix(bool long_only = false) {
        IpPrefix p;
        p.address = near_base();
        const unsigned bits = p.address.size * 8u;
        p.length = static_cast<uint8_t>(
            !long_only && rng() % 8 == 0 ? rng() % (bits + 1) : bits - rng() % (bits / 2 + 1));
        p.address = apply_prefix(p.address, p.length, p.length);
        return p;
    }

    // Long prefixes anywhere: few overlaps, so many ranges.
    IpPrefix scattered_prefix() {
        IpPrefix p;
        p.address = random_address(rng() % 2 == 0 ? 4 : 16);
        const unsigned bits = p.address.size * 8u;
        p.length = static_cast<uint8_t>(bits - rng() % (bits / 2 + 1));
        p.address = apply_prefix(p.address, p.length, p.length);
        return p;
    }

    std::vector<IpPrefix> list(size_t max) {
        std::vector<IpPrefix> out(rng() % (max + 1));
        for (IpPrefix& p : out) p = random_prefix();
        return out;
    }
};

void check_against_oracle(const std::vector<IpPrefix>& allow, const std::vector<IpPrefix>& deny,
                          Generator& gen, int random_clients) {
    const SourceFilter filter(allow, deny);
    auto check = [&](const IpKey& client) {
        CAPTURE(to_string(client));
        REQUIRE(filter.check(client) == oracle(allow, deny, client));
    };
    for (const auto* list : {&allow, &deny}) {
        for (const IpPrefix& p : *list) {
            CAPTURE(to_string(p));
            check(p.address);
            check(last_of(p));
            if (auto before = step(p.address, -1)) check(*before);
            if (auto after = step(last_of(p), +1)) check(*after);
        }
    }
    for (int i = 0; i < random_clients; ++i) {
        check(gen.near_base());
        check(gen.random_address(i % 2 == 0 ? 4 : 16));
    }
    for (const char* edge :
         {"0.0.0.0", "255.255.255.255", "::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}) {
        check(ip(edge));
    }
}

}  // namespace

TEST_CASE("no lists allow everyone; a deny list alone refuses only its prefixes") {
    const SourceFilter open({}, {});
    CHECK(open.check(ip("10.0.0.1")) == SourceVerdict::allowed);
    CHECK(open.check(ip("::1")) == SourceVerdict::allowed);
    CHECK(open.v4_ranges() == 1);
    CHECK(open.v6_ranges() == 1);

    const auto deny = prefixes({"10.0.0.0/8", "2001:db8::/32"});
    const SourceFilter filter({}, deny);
    CHECK(filter.check(ip("10.255.255.255")) == SourceVerdict::denied);
    CHECK(filter.check(ip("11.0.0.0")) == SourceVerdict::allowed);
    CHECK(filter.check(ip("2001:db8::1")) == SourceVerdict::denied);
    CHECK(filter.check(ip("2001:db9::")) == SourceVerdict::allowed);
}

TEST_CASE("an allow list refuses everyone else, of either family") {
    const auto allow = prefixes({"10.0.0.0/8"});
    const SourceFilter filter(allow, {});
    CHECK(filter.check(ip("10.1.2.3")) == SourceVerdict::allowed);
    CHECK(filter.check(ip("::ffff:10.1.2.3")) == SourceVerdict::allowed);  // v4-mapped
    CHECK(filter.check(ip("9.255.255.255")) == SourceVerdict::not_allowed);
    CHECK(filter.check(ip("11.0.0.0")) == SourceVerdict::not_allowed);
    CHECK(filter.check(ip("::1")) == SourceVerdict::not_allowed);
    CHECK(filter.check(IpKey{}) == SourceVerdict::not_allowed);  // no family at all
    CHECK(SourceFilter({}, {}).check(IpKey{}) == SourceVerdict::allowed);
}

TEST_CASE("deny wins over allow, whichever prefix is longer") {
    const auto allow = prefixes({"10.0.0.0/8", "192.0.2.7"});
    const auto deny = prefixes({"10.1.0.0/16", "192.0.2.0/24"});
    const SourceFilter filter(allow, deny);
    CHECK(filter.check(ip("10.0.255.255")) == SourceVerdict::allowed);
    CHECK(filter.check(ip("10.1.0.0")) == SourceVerdict::denied);
    CHECK(filter.check(ip("10.1.255.255")) == SourceVerdict::denied);
    CHECK(filter.check(ip("10.2.0.0")) == SourceVerdict::allowed);
    CHECK(filter.check(ip("192.0.2.7")) == SourceVerdict::denied);  // a host in a denied /24
    const SourceFilter same(prefixes({"10.0.0.0/8"}), prefixes({"10.0.0.0/8"}));
    CHECK(same.check(ip("10.0.0.1")) == SourceVerdict::denied);
}

TEST_CASE("ranges: touching and nested prefixes merge, the family's ends need no edge") {
    CHECK(SourceFilter(prefixes({"10.0.0.0/9", "10.128.0.0/9"}), {}).v4_ranges() == 3);
    CHECK(SourceFilter(prefixes({"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"}), {}).v4_ranges() == 3);
    CHECK(SourceFilter(prefixes({"0.0.0.0/0"}), {}).v4_ranges() == 1);
    CHECK(SourceFilter(prefixes({"0.0.0.0/0"}), {}).v6_ranges() == 1);  // all not_allowed
    CHECK(SourceFilter(prefixes({"255.255.255.255"}), {}).v4_ranges() == 2);
    CHECK(SourceFilter(prefixes({"0.0.0.0"}), {}).v4_ranges() == 2);
    CHECK(SourceFilter(prefixes({"::/0"}), prefixes({"::"})).v6_ranges() == 2);
    const SourceFilter top(prefixes({"255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}),
                           {});
    CHECK(top.check(ip("255.255.255.255")) == SourceVerdict::allowed);
    CHECK(top.check(ip("255.255.255.254")) == SourceVerdict::not_allowed);
    CHECK(top.check(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) == SourceVerdict::allowed);
    CHECK(top.check(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")) == SourceVerdict::not_allowed);
}

TEST_CASE("random lists agree with the oracle") {
    Generator gen(20261204);
    for (int round = 0; round < 3000; ++round) {
        CAPTURE(round);
        const auto allow = gen.list(round % 3 == 0 ? 0 : 40);
        const auto deny = gen.list(round % 5 == 0 ? 0 : 20);
        check_against_oracle(allow, deny, gen, 20);
    }
}

TEST_CASE("10,000 random prefixes agree with the oracle") {
    Generator gen(13);
    // Long prefixes only (one /1 among them would leave a handful of ranges), half
    // of them clustered so that they nest and touch.
    std::vector<IpPrefix> allow(10000);
    for (size_t i = 0; i < allow.size(); ++i) {
        allow[i] = i % 2 == 0 ? gen.scattered_prefix() : gen.random_prefix(true);
    }
    std::vector<IpPrefix> deny(500);
    for (IpPrefix& p : deny) p = gen.random_prefix(true);
    // Long enough that both families search through their block index.
    const SourceFilter filter(allow, deny);
    CHECK(filter.v4_ranges() * 4 > 16 * 1024);
    CHECK(filter.v6_ranges() * 16 > 16 * 1024);
    check_against_oracle(allow, deny, gen, 2000);
}

TEST_CASE("every address of a /24 and its neighbours, under random lists inside it") {
    std::mt19937_64 rng(99);
    for (int round = 0; round < 300; ++round) {
        auto random_in_24 = [&] {
            IpPrefix p;
            p.address = ip("10.0.0.0");
            p.address.bytes[3] = static_cast<uint8_t>(rng());
            p.length = static_cast<uint8_t>(rng() % 10 == 0 ? rng() % 25 : 24 + rng() % 9);
            p.address = apply_prefix(p.address, p.length, p.length);
            return p;
        };
        std::vector<IpPrefix> allow(rng() % 8);
        std::vector<IpPrefix> deny(rng() % 4);
        for (IpPrefix& p : allow) p = random_in_24();
        for (IpPrefix& p : deny) p = random_in_24();
        const SourceFilter filter(allow, deny);
        for (int last = -1; last <= 256; ++last) {
            IpKey client = ip("10.0.0.0");
            if (last < 0) client = ip("9.255.255.255");
            if (last > 255) client = ip("10.0.1.0");
            if (last >= 0 && last <= 255) client.bytes[3] = static_cast<uint8_t>(last);
            CAPTURE(round);
            CAPTURE(to_string(client));
            REQUIRE(filter.check(client) == oracle(allow, deny, client));
        }
    }
}

TEST_CASE("verdict names are the metric's reason labels") {
    CHECK(to_string(SourceVerdict::allowed) == "allowed");
    CHECK(to_string(SourceVerdict::denied) == "denied");
    CHECK(to_string(SourceVerdict::not_allowed) == "not_allowed");
}
