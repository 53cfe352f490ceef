// dns-watch: runs DNS discovery for one name exactly as stickyd does (resolve_once at
// start-up, then the DnsDiscovery thread seeded with it) and prints what it would
// hand to the control thread, one line each, so test_dns.py can check the real
// getaddrinfo path against a hosts file it rewrites:
//
//   result ADDR,ADDR,...     the set, at start-up and whenever it changed
//   error MESSAGE            the first failure of a run (also at start-up)
//
// Usage: dns-watch NAME PORT REFRESH_MS. Runs until SIGTERM or SIGINT, then stops
// discovery (which must be prompt however long REFRESH_MS is) and prints "stopped".
#include <signal.h>

#include <pthread.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "control/dns_discovery.hpp"

using namespace stickyd;

namespace {

std::mutex out_mutex;

void emit(const std::string& line) {
    std::lock_guard lock(out_mutex);
    std::fputs((line + "\n").c_str(), stdout);
    std::fflush(stdout);
}

std::string join(const std::vector<SocketAddress>& addresses) {
    std::string out;
    for (const auto& a : addresses) out += (out.empty() ? "" : ",") + a.to_string();
    return out;
}

template <typename T>
bool parse(const char* text, T& value) {
    auto [end, ec] = std::from_chars(text, text + std::strlen(text), value);
    return ec == std::errc() && *end == '\0';
}

}  // namespace

int main(int argc, char** argv) {
    unsigned port = 0;
    unsigned refresh_ms = 0;
    if (argc != 4 || !parse(argv[2], port) || port == 0 || port > 65535 ||
        !parse(argv[3], refresh_ms) || refresh_ms == 0) {
        std::fputs("usage: dns-watch NAME PORT REFRESH_MS\n", stderr);
        return 2;
    }
    Config config;
    TargetGroupConfig group;
    group.name = "web";
    group.dns = {DnsDiscoveryConfig{argv[1], static_cast<uint16_t>(port), Duration{refresh_ms}}};
    config.target_groups.push_back(group);

    // Blocked before any thread starts, so only sigwait below takes them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    auto initial = resolve_once(config);
    const DnsAnswer& first = initial.at("web").at(group.dns[0].text());
    emit(first.ok() ? "result " + join(first.addresses) : "error " + first.error);

    DnsDiscovery discovery(
        config,
        {[](const std::string&, const std::string&, std::vector<SocketAddress> list) {
             emit("result " + join(list));
         },
         [](const std::string&, const std::string&, std::string error) { emit("error " + error); }},
        initial);
    discovery.start();
    int sig = 0;
    sigwait(&signals, &sig);
    discovery.stop();
    emit("stopped");
    return 0;
}
