#include "stickyd/reload_plan.hpp"

#include <fmt/format.h>

namespace stickyd {
namespace {

const ListenerConfig* find_listener(const Config& config, const std::string& name) {
    for (const ListenerConfig& l : config.listeners)
        if (l.name == name) return &l;
    return nullptr;
}

std::string address_or_none(const std::optional<SocketAddress>& address) {
    return address ? address->to_string() : "(none)";
}

}  // namespace

ReloadPlan plan_reload(const Config& current, const Config& next) {
    ReloadPlan plan;
    for (const ListenerConfig& l : next.listeners) {
        const ListenerConfig* old = find_listener(current, l.name);
        if (old != nullptr && old->bind.to_string() == l.bind.to_string()) {
            plan.update.push_back(&l);
        } else {
            plan.add.push_back(&l);
        }
    }
    for (const ListenerConfig& l : current.listeners) {
        const ListenerConfig* now = find_listener(next, l.name);
        if (now == nullptr || now->bind.to_string() != l.bind.to_string()) {
            plan.remove.push_back(l.name);
        }
    }
    // Worker threads own rings, buffers and listener sockets sized at start; the
    // admin socket is set up once, before privileges could be dropped.
    const GlobalConfig& a = current.global;
    const GlobalConfig& b = next.global;
    if (a.threads != b.threads) {
        plan.restart_only.push_back(
            fmt::format("global.threads changed from {} to {}", a.threads, b.threads));
    }
    if (a.splice_pipes != b.splice_pipes) {
        plan.restart_only.push_back(fmt::format("global.splice_pipes changed from {} to {}",
                                                a.splice_pipes, b.splice_pipes));
    }
    if (a.admin_socket != b.admin_socket) {
        plan.restart_only.push_back(fmt::format("global.admin_socket changed from {:?} to {:?}",
                                                a.admin_socket, b.admin_socket));
    }
    if (a.admin_socket_group != b.admin_socket_group) {
        plan.restart_only.push_back(
            fmt::format("global.admin_socket_group changed from {:?} to {:?}", a.admin_socket_group,
                        b.admin_socket_group));
    }
    if (a.admin_socket_mode != b.admin_socket_mode) {
        plan.restart_only.push_back(
            fmt::format("global.admin_socket_mode changed from {:04o} to {:04o}",
                        a.admin_socket_mode, b.admin_socket_mode));
    }
    if (address_or_none(a.admin_address) != address_or_none(b.admin_address)) {
        plan.restart_only.push_back(fmt::format("global.admin_address changed from {} to {}",
                                                address_or_none(a.admin_address),
                                                address_or_none(b.admin_address)));
    }
    if (address_or_none(a.metrics_address) != address_or_none(b.metrics_address)) {
        plan.restart_only.push_back(fmt::format("global.metrics_address changed from {} to {}",
                                                address_or_none(a.metrics_address),
                                                address_or_none(b.metrics_address)));
    }
    return plan;
}

}  // namespace stickyd
