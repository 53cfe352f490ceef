// source-filter-bench: what a listener's allow/deny lists cost per accepted client.
// A microbenchmark to eyeball, not a test: nothing here fails.
//
//   source-filter-bench [--lookups N] [--passes N] [--seed S]
//
// For allow lists of 1, 100, 10,000 and 100,000 random prefixes (IPv4, then IPv6;
// a deny list of a tenth as many beside each), it times SourceFilter::check over
// pre-generated random client addresses, fastest pass in thread CPU time, and
// shows the build time and how many ranges the lists became. Half the clients
// are drawn from inside the listed prefixes, so both verdicts are exercised.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <random>
#include <vector>

#include "stickyd/source_filter.hpp"

namespace {

using namespace stickyd;
using Clock = std::chrono::steady_clock;

IpKey random_address(std::mt19937_64& rng, uint8_t size) {
    IpKey key;
    key.size = size;
    for (uint8_t i = 0; i < size; ++i) key.bytes[i] = static_cast<uint8_t>(rng());
    if (size == 16) key.bytes[0] = 0x20 | (key.bytes[0] & 0x0f);  // global unicast, not v4-mapped
    return key;
}

// Lengths as real lists have them: IPv4 /16-/32, IPv6 /32-/128.
std::vector<IpPrefix> random_prefixes(std::mt19937_64& rng, size_t n, uint8_t size) {
    std::vector<IpPrefix> out(n);
    const unsigned shortest = size == 4 ? 16 : 32;
    for (IpPrefix& p : out) {
        p.length = static_cast<uint8_t>(shortest + rng() % (size * 8u - shortest + 1));
        p.address = apply_prefix(random_address(rng, size), p.length, p.length);
    }
    return out;
}

std::vector<IpKey> clients(std::mt19937_64& rng, size_t n, uint8_t size,
                           const std::vector<IpPrefix>& allow) {
    std::vector<IpKey> out(n);
    for (size_t i = 0; i < n; ++i) {
        out[i] = random_address(rng, size);
        if (i % 2 == 0) {  // inside a listed prefix: its network bits, random host bits
            const IpPrefix& p = allow[rng() % allow.size()];
            const IpKey host = out[i];
            out[i] = p.address;
            for (unsigned bit = p.length; bit < size * 8u; ++bit) {
                const uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
                out[i].bytes[bit / 8] |= host.bytes[bit / 8] & mask;
            }
        }
    }
    return out;
}

void do_not_optimize(uint64_t value) {
    asm volatile("" : : "r"(value) : "memory");
}

double thread_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double lookup_ns(const SourceFilter& filter, const std::vector<IpKey>& keys, int passes,
                 double& allowed_share) {
    double best = 1e300;
    uint64_t allowed = 0;
    for (int pass = 0; pass < passes; ++pass) {
        allowed = 0;
        const double start = thread_ns();
        for (const IpKey& key : keys) allowed += filter.check(key) == SourceVerdict::allowed;
        const double elapsed = thread_ns() - start;
        do_not_optimize(allowed);
        best = std::min(best, elapsed / static_cast<double>(keys.size()));
    }
    allowed_share = static_cast<double>(allowed) / static_cast<double>(keys.size());
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    size_t lookups = 1'000'000;
    uint64_t seed = 42;
    int passes = 10;
    CLI::App app{"Cost of a listener's allow and deny lists per client"};
    app.add_option("--lookups", lookups, "random clients per timed pass")
        ->check(CLI::PositiveNumber);
    app.add_option("--passes", passes, "timed passes; the fastest is reported")
        ->check(CLI::PositiveNumber);
    app.add_option("--seed", seed, "seed for the generator");
    CLI11_PARSE(app, argc, argv);

    fmt::print("{} lookups per pass, best of {} passes; deny lists a tenth of the allow list\n\n",
               lookups, passes);
    fmt::print("{:<6} {:>8} {:>8} {:>10} {:>9} {:>10}\n", "family", "allow", "ranges", "build ms",
               "allowed", "lookup ns");
    std::mt19937_64 rng(seed);
    for (const uint8_t size : {uint8_t{4}, uint8_t{16}}) {
        for (const size_t n : {size_t{1}, size_t{100}, size_t{10'000}, size_t{100'000}}) {
            const auto allow = random_prefixes(rng, n, size);
            const auto deny = random_prefixes(rng, n / 10, size);
            const auto keys = clients(rng, lookups, size, allow);
            const auto start = Clock::now();
            const SourceFilter filter(allow, deny);
            const auto built = std::chrono::duration<double, std::milli>(Clock::now() - start);
            double allowed_share = 0;
            const double ns = lookup_ns(filter, keys, passes, allowed_share);
            fmt::print("{:<6} {:>8} {:>8} {:>10.2f} {:>8.1f}% {:>10.2f}\n",
                       size == 4 ? "IPv4" : "IPv6", n,
                       size == 4 ? filter.v4_ranges() : filter.v6_ranges(), built.count(),
                       100 * allowed_share, ns);
        }
    }
    return 0;
}
