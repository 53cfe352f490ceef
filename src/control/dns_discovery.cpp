#include "control/dns_discovery.hpp"

#include <fmt/core.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>

#include "stickyd/log.hpp"

namespace stickyd {
namespace {

// (family, address bytes, port): IPv4 first, so logs and views read naturally.
auto order_key(const SocketAddress& a) {
    std::array<uint8_t, 16> bytes{};
    if (a.family() == AF_INET) {
        std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in*>(a.sa())->sin_addr, 4);
    } else {
        std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in6*>(a.sa())->sin6_addr, 16);
    }
    return std::tuple(a.family() == AF_INET ? 0 : 1, bytes, a.port());
}

std::string join(const std::vector<SocketAddress>& addresses) {
    std::string out;
    for (const auto& a : addresses) {
        if (!out.empty()) out += ", ";
        out += a.to_string();
    }
    return out;
}

std::string where(const std::string& group, const std::string& name, uint16_t port) {
    return fmt::format("target group '{}': dns {}:{}", group, name, port);
}

void log_result(const std::string& group, const std::string& name, uint16_t port,
                const std::vector<SocketAddress>& addresses) {
    log::info("{} resolves to {} address{}: {}", where(group, name, port), addresses.size(),
              addresses.size() == 1 ? "" : "es", join(addresses));
}

void log_error(const std::string& group, const std::string& name, uint16_t port,
               const DnsAnswer& answer, const DiscoveryTracker& tracker) {
    const size_t kept = tracker.last_good() ? tracker.last_good()->size() : 0;
    log::warn("{}: {}; keeping the last {} discovered target{} until it resolves again",
              where(group, name, port), answer.error, kept, kept == 1 ? "" : "s");
}

const DnsAnswer* find_answer(const DnsAnswers* answers, const std::string& group,
                             const std::string& name) {
    if (answers == nullptr) return nullptr;
    auto g = answers->find(group);
    if (g == answers->end()) return nullptr;
    auto it = g->second.find(name);
    return it == g->second.end() ? nullptr : &it->second;
}

}  // namespace

DnsAnswer make_answer(std::vector<SocketAddress> addresses, const std::string& name) {
    if (addresses.empty()) return {{}, fmt::format("{} has no A or AAAA records", name)};
    std::sort(
        addresses.begin(), addresses.end(),
        [](const SocketAddress& a, const SocketAddress& b) { return order_key(a) < order_key(b); });
    addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
    return {std::move(addresses), {}};
}

DnsAnswer resolve_dns(const std::string& name, uint16_t port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    // No AI_ADDRCONFIG: it hides every address when only loopback is configured, and
    // a pod network may well be IPv6 while the host's own address is IPv4.
    addrinfo* list = nullptr;
    const int rc = ::getaddrinfo(name.c_str(), nullptr, &hints, &list);
    if (rc != 0) {
        const char* why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
        return {{}, fmt::format("cannot resolve {}: {}", name, why)};
    }
    std::vector<SocketAddress> addresses;
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            sockaddr_in sin{};
            std::memcpy(&sin, ai->ai_addr, sizeof sin);
            sin.sin_port = htons(port);
            addresses.push_back(
                SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof sin));
        } else if (ai->ai_family == AF_INET6) {
            sockaddr_in6 sin6{};
            std::memcpy(&sin6, ai->ai_addr, sizeof sin6);
            sin6.sin6_port = htons(port);
            addresses.push_back(
                SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6));
        }
    }
    ::freeaddrinfo(list);
    return make_answer(std::move(addresses), name);
}

DiscoveryTracker::Report DiscoveryTracker::update(const DnsAnswer& answer) {
    if (!answer.ok()) {
        if (failing_) return Report::nothing;
        failing_ = true;
        return Report::error;
    }
    const bool recovered = std::exchange(failing_, false);
    if (last_good_ && *last_good_ == answer.addresses && !recovered) return Report::nothing;
    last_good_ = answer.addresses;
    return Report::result;
}

DnsAnswers resolve_once(const Config& config, const Resolver& resolver) {
    DnsAnswers answers;
    for (const auto& group : config.target_groups) {
        for (const DnsDiscoveryConfig& dns : group.dns) {
            DnsAnswer answer = resolver(dns.name, dns.port);
            if (answer.ok()) {
                log_result(group.name, dns.name, dns.port, answer.addresses);
            } else {
                log::warn("{}: {}; starting without its discovered targets",
                          where(group.name, dns.name, dns.port), answer.error);
            }
            answers[group.name].emplace(dns.text(), std::move(answer));
        }
    }
    return answers;
}

DnsDiscovery::DnsDiscovery(const Config& config, Callbacks callbacks, const DnsAnswers& initial,
                           Resolver resolver)
    : callbacks_(std::move(callbacks)), resolver_(std::move(resolver)) {
    set_names(config, &initial);
}

DnsDiscovery::~DnsDiscovery() {
    stop();
}

void DnsDiscovery::start() {
    std::lock_guard lock(mutex_);
    if (thread_.joinable() || stopping_) return;
    thread_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "dns");
        run();
    });
}

void DnsDiscovery::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void DnsDiscovery::apply(const Config& config) {
    {
        std::lock_guard lock(mutex_);
        set_names(config, nullptr);
    }
    wake_.notify_all();
}

// Called with the mutex held (or before the thread exists).
void DnsDiscovery::set_names(const Config& config, const DnsAnswers* initial) {
    const auto now = Clock::now();
    std::map<Key, Name> next;
    for (const auto& group : config.target_groups) {
        for (const DnsDiscoveryConfig& dns : group.dns) {
            Key key{group.name, dns.text()};
            if (auto old = names_.find(key); old != names_.end()) {
                Name kept = std::move(old->second);
                // A shorter refresh takes effect now rather than after the old, longer wait.
                if (dns.refresh < kept.refresh) kept.due = std::min(kept.due, now + dns.refresh);
                kept.refresh = dns.refresh;
                next.emplace(std::move(key), std::move(kept));
                continue;
            }
            Name fresh;
            fresh.name = dns.name;
            fresh.port = dns.port;
            fresh.refresh = dns.refresh;
            fresh.generation = next_generation_++;
            fresh.due = now;
            if (const DnsAnswer* answer = find_answer(initial, key.first, key.second)) {
                fresh.tracker.update(*answer);
                fresh.due = now + fresh.refresh;
            }
            next.emplace(std::move(key), std::move(fresh));
        }
    }
    names_ = std::move(next);
}

void DnsDiscovery::run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        auto soonest = names_.end();
        for (auto it = names_.begin(); it != names_.end(); ++it) {
            if (soonest == names_.end() || it->second.due < soonest->second.due) soonest = it;
        }
        if (soonest == names_.end()) {
            wake_.wait(lock);  // nothing to resolve until a reload adds a name
            continue;
        }
        if (const Clock::time_point due = soonest->second.due; Clock::now() < due) {
            // Re-evaluated after every wake-up: apply() may have changed the schedule.
            // A copy: wait_until reads its argument again on waking, and apply() may
            // have freed the name meanwhile.
            wake_.wait_until(lock, due);
            continue;
        }
        const Key key = soonest->first;
        const std::string name = soonest->second.name;
        const uint16_t port = soonest->second.port;
        const uint64_t generation = soonest->second.generation;

        lock.unlock();
        DnsAnswer answer = resolver_(name, port);
        lock.lock();
        if (stopping_) break;

        auto it = names_.find(key);
        if (it == names_.end() || it->second.generation != generation) continue;
        Name& n = it->second;
        n.due = Clock::now() + n.refresh;
        const auto report = n.tracker.update(answer);
        if (report == DiscoveryTracker::Report::nothing) continue;
        const auto& [group, text] = key;
        if (report == DiscoveryTracker::Report::result) {
            log_result(group, name, port, answer.addresses);
        } else {
            log_error(group, name, port, answer, n.tracker);
        }
        // Outside the lock: the callee may block (Control applies it on its thread),
        // and apply() or stop() must not wait behind that.
        lock.unlock();
        if (report == DiscoveryTracker::Report::result) {
            if (callbacks_.on_result)
                callbacks_.on_result(group, text, std::move(answer.addresses));
        } else {
            if (callbacks_.on_error) callbacks_.on_error(group, text, std::move(answer.error));
        }
        lock.lock();
    }
}

}  // namespace stickyd
