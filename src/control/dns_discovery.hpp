// DNS discovery of targets: the job the AWS Load Balancer Controller does for an NLB
// in front of a Kubernetes headless service. A target group with `dns = "NAME:PORT"`
// (or several names, or quick mode's --target HOST:PORT) gets one target per A and
// AAAA address of each name, re-resolved every `dns_refresh`. Each name is looked up
// and reported on its own: one failing name keeps its own last good set and does
// not hold back the others.
//
// Resolution runs on its own thread, never on the data path or the control thread:
// getaddrinfo blocks, for as long as resolv.conf's timeouts allow. Results go out
// through callbacks (meant for Control::set_discovered / set_discovery_error), and
// only when something changed, so a steady service costs the control thread nothing.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/config.hpp"

namespace stickyd {

// One lookup of a name: its addresses (sorted, without duplicates, each with the
// port set) or, when it failed, a one-line reason. Never both, never neither.
struct DnsAnswer {
    std::vector<SocketAddress> addresses;
    std::string error;

    bool ok() const { return error.empty(); }
};

// (name, port) -> answer. resolve_dns is the real one; tests inject their own.
using Resolver = std::function<DnsAnswer(const std::string& name, uint16_t port)>;

// getaddrinfo(AF_UNSPEC, SOCK_STREAM): A and AAAA records, /etc/hosts included (as
// nsswitch.conf says), re-read on every call.
DnsAnswer resolve_dns(const std::string& name, uint16_t port);

// Sorts (IPv4 before IPv6, then by address, then port) and drops duplicates. An empty
// list is an error naming `name`: see DiscoveryTracker for why.
DnsAnswer make_answer(std::vector<SocketAddress> addresses, const std::string& name);

// What one group's discovery reports after each answer (pure; no I/O, no clock).
class DiscoveryTracker {
  public:
    enum class Report : uint8_t { nothing, result, error };

    // result: the first good answer, a changed set, or a good answer ending a run of
    //   failures (so the receiver can clear the error it shows).
    // error: the first failure of a run; the rest of the run reports nothing, since
    //   a name that stays broken should be one log line, not one per refresh.
    // A failed answer never touches the last good set: the receiver keeps routing
    // to it. Removing every target because one lookup failed would drain a whole
    // service on a DNS hiccup, and NXDOMAIN or an empty answer during a Kubernetes
    // rollout or a CoreDNS restart is exactly such a hiccup far more often than it
    // is a real "zero pods".
    Report update(const DnsAnswer& answer);

    const std::optional<std::vector<SocketAddress>>& last_good() const { return last_good_; }
    bool failing() const { return failing_; }

  private:
    std::optional<std::vector<SocketAddress>> last_good_;
    bool failing_ = false;
};

// Answers by target group, then by name ("NAME:PORT", DnsDiscoveryConfig::text).
using DnsAnswers = std::map<std::string, std::map<std::string, DnsAnswer>>;

// One synchronous lookup per name of every group with `dns` set: the sets a daemon
// starts with, so the first clients already reach discovered targets. Logs each
// outcome (info on success, warn on failure).
DnsAnswers resolve_once(const Config& config, const Resolver& resolver = resolve_dns);

class DnsDiscovery {
  public:
    // Both are called on the discovery thread, with the group and the name
    // ("NAME:PORT") the answer is for.
    struct Callbacks {
        // The name's full current set.
        std::function<void(const std::string& group, const std::string& name,
                           std::vector<SocketAddress>)>
            on_result;
        // The first failure of a run; the caller keeps the name's last good set.
        std::function<void(const std::string& group, const std::string& name, std::string error)>
            on_error;
    };

    // `initial`: resolve_once's answers, which the caller has already applied; they
    // count as reported, so the thread only calls back when something differs.
    DnsDiscovery(const Config& config, Callbacks callbacks, const DnsAnswers& initial = {},
                 Resolver resolver = resolve_dns);
    ~DnsDiscovery();
    DnsDiscovery(const DnsDiscovery&) = delete;
    DnsDiscovery& operator=(const DnsDiscovery&) = delete;

    void start();
    // Idempotent. Wakes the thread at once; a getaddrinfo already running cannot be
    // interrupted, so this waits for that one lookup at most. Call it before
    // stopping whatever the callbacks feed.
    void stop();

    // A reload: a group's names (NAME and PORT) that stay keep their state (no
    // callback unless the answer differs); new ones are resolved at once and report
    // their first good set; names no longer listed are forgotten.
    void apply(const Config& config);

  private:
    using Clock = std::chrono::steady_clock;
    using Key = std::pair<std::string, std::string>;  // (target group, "NAME:PORT")
    struct Name {
        std::string name;
        uint16_t port = 0;
        Duration refresh{};
        Clock::time_point due{};
        uint64_t generation = 0;  // a lookup's answer is dropped if apply() replaced it
        DiscoveryTracker tracker;
    };

    void set_names(const Config& config, const DnsAnswers* initial);
    void run();

    Callbacks callbacks_;
    Resolver resolver_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::map<Key, Name> names_;
    uint64_t next_generation_ = 1;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace stickyd
