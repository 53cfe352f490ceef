// ring-bench: balance, size, build time and lookup cost of the ring and maglev
// selectors. A microbenchmark to eyeball, not a test: nothing here fails.
//
//   ring-bench [--keys N] [--lookups N] [--passes N] [--seed S]
//
// Balance is max/mean (and min/mean) of the keys each target receives over N
// random IPv4 source addresses. Lookup is pick() with every target usable over
// pre-generated random hashes, fastest pass in thread CPU time.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "stickyd/balancer.hpp"
#include "stickyd/hash.hpp"

namespace {

using namespace stickyd;
using Clock = std::chrono::steady_clock;

struct Row {
    std::string_view algorithm;
    size_t targets;
    size_t positions;  // ring points or maglev entries
    double build_ms;
    double max_over_mean;
    double min_over_mean;
    double lookup_ns;
};

std::vector<Member> equal_members(size_t n) {
    std::vector<Member> members;
    for (size_t i = 0; i < n; ++i) {
        members.push_back({fmt::format("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1});
    }
    return members;
}

std::vector<uint64_t> random_ipv4_hashes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> hashes(n);
    for (auto& h : hashes) {
        IpKey key;
        key.size = 4;
        const auto ip = static_cast<uint32_t>(rng());
        std::memcpy(key.bytes.data(), &ip, 4);
        h = hash_ip(key);
    }
    return hashes;
}

// Keeps `value` alive without a volatile store in the timed loop.
void do_not_optimize(uint64_t value) {
    asm volatile("" : : "r"(value) : "memory");
}

// Thread CPU time rather than wall time: the machine may be shared, and a
// preempted pass should not count. The best of several passes is reported.
double thread_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double lookup_ns(const Balancer& balancer, const std::vector<uint64_t>& hashes, int passes) {
    const std::vector<uint8_t> usable(balancer.members().size(), 1);
    double best = 1e300;
    for (int pass = 0; pass < passes; ++pass) {
        uint64_t sink = 0;
        const double start = thread_ns();
        for (uint64_t h : hashes) sink += balancer.pick(h, usable, 0);
        const double elapsed = thread_ns() - start;
        do_not_optimize(sink);
        best = std::min(best, elapsed / static_cast<double>(hashes.size()));
    }
    return best;
}

Row measure(bool maglev, size_t targets, const std::vector<uint64_t>& keys,
            const std::vector<uint64_t>& lookups, int passes) {
    const auto start = Clock::now();
    auto balancer =
        maglev ? build_maglev(equal_members(targets)) : build_ring(equal_members(targets));
    const auto built = std::chrono::duration<double, std::milli>(Clock::now() - start);

    std::vector<uint64_t> counts(targets);
    for (uint64_t h : keys) ++counts[balancer->owner(h)];
    const double mean = static_cast<double>(keys.size()) / static_cast<double>(targets);
    const auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());

    return {balancer->algorithm(),
            targets,
            maglev ? kDefaultMaglevTableSize : targets * kRingPointsPerWeight,
            built.count(),
            static_cast<double>(*hi) / mean,
            static_cast<double>(*lo) / mean,
            lookup_ns(*balancer, lookups, passes)};
}

}  // namespace

int main(int argc, char** argv) {
    size_t keys = 1'000'000;
    size_t lookups = 1'000'000;
    uint64_t seed = 42;
    int passes = 20;
    CLI::App app{"Balance and speed of the ring and maglev selectors"};
    app.add_option("--keys", keys, "random IPv4 keys for the balance columns")
        ->check(CLI::PositiveNumber);
    app.add_option("--lookups", lookups, "random hashes per timed lookup pass")
        ->check(CLI::PositiveNumber);
    app.add_option("--passes", passes, "timed lookup passes; the fastest is reported")
        ->check(CLI::PositiveNumber);
    app.add_option("--seed", seed, "seed for the key generator");
    CLI11_PARSE(app, argc, argv);

    const auto key_hashes = random_ipv4_hashes(keys, seed);
    const auto lookup_hashes = random_ipv4_hashes(lookups, seed + 1);

    fmt::print(
        "{} random IPv4 keys, {} lookups per pass, best of {} passes, "
        "kRingPointsPerWeight={}\n\n",
        keys, lookups, passes, kRingPointsPerWeight);
    fmt::print("{:<7} {:>7} {:>10} {:>10} {:>9} {:>9} {:>10}\n", "algo", "targets", "positions",
               "build ms", "max/mean", "min/mean", "lookup ns");
    for (bool maglev : {false, true}) {
        for (size_t targets : {3, 5, 10, 100}) {
            const Row r = measure(maglev, targets, key_hashes, lookup_hashes, passes);
            fmt::print("{:<7} {:>7} {:>10} {:>10.2f} {:>9.4f} {:>9.4f} {:>10.2f}\n", r.algorithm,
                       r.targets, r.positions, r.build_ms, r.max_over_mean, r.min_over_mean,
                       r.lookup_ns);
        }
    }
    return 0;
}
