// The top of the file: the root table's sections, [global] and [[listener]].
#include <fmt/format.h>

#include "core/config/read.hpp"
#include "core/config/table_reader.hpp"

namespace stickyd::config_detail {
namespace {

std::optional<LogLevel> read_log_level(TableReader& r, std::string_view key) {
    auto text = r.string(key);
    if (!text) return std::nullopt;
    auto level = parse_log_level(*text);
    if (!level) r.invalid(key, choice_message(*text, kLogLevels));
    return level;
}

// "660" or "0660": the permission bits only (no setuid, sticky or file type bits).
std::optional<unsigned> parse_socket_mode(std::string_view text) {
    if (text.size() == 4 && text[0] == '0') text.remove_prefix(1);
    if (text.size() != 3) return std::nullopt;
    unsigned mode = 0;
    for (char c : text) {
        if (c < '0' || c > '7') return std::nullopt;
        mode = mode * 8 + static_cast<unsigned>(c - '0');
    }
    return mode;
}

GlobalConfig read_global(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(
        diag, table, std::move(path),
        {"threads", "splice_pipes", "log_level", "shutdown_grace", "shutdown_delay", "admin_socket",
         "admin_socket_group", "admin_socket_mode", "admin_address", "metrics_address"});
    GlobalConfig global;
    if (auto v = r.integer("threads", kThreadsRange)) global.threads = static_cast<unsigned>(*v);
    if (auto v = r.integer("splice_pipes", kSplicePipesRange)) {
        global.splice_pipes = static_cast<unsigned>(*v);
    }
    if (auto v = read_log_level(r, "log_level")) global.log_level = *v;
    if (auto v = r.duration("shutdown_grace", kShutdownGraceRange)) global.shutdown_grace = *v;
    if (auto v = r.duration("shutdown_delay", kShutdownDelayRange)) global.shutdown_delay = *v;
    if (auto v = r.string("admin_socket")) global.admin_socket = *v;
    if (auto v = r.string("admin_socket_group")) global.admin_socket_group = *v;
    if (auto v = r.string("admin_socket_mode")) {
        if (auto mode = parse_socket_mode(*v)) {
            global.admin_socket_mode = *mode;
        } else {
            r.invalid("admin_socket_mode",
                      fmt::format("must be an octal mode such as \"0660\", got {:?}", *v));
        }
    }
    if (auto v = r.address("admin_address", "\"127.0.0.1:9090\"")) global.admin_address = *v;
    if (auto v = r.address("metrics_address", "\"127.0.0.1:9100\"")) global.metrics_address = *v;
    return global;
}

ListenerConfig read_listener(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path),
                  {"name", "bind", "target_group", "idle_timeout", "accept_proxy_protocol",
                   "proxy_protocol_timeout", "access_log", "allow", "deny"});
    ListenerConfig listener;
    if (auto v = r.string("name")) listener.name = *v;
    if (auto v = r.address("bind", kBindExample)) {
        listener.bind = *v;
        if (!r.has("name")) listener.name = v->to_string();
    }
    if (auto v = r.string("target_group")) listener.target_group = *v;
    if (auto v = r.duration("idle_timeout", kIdleTimeoutRange)) listener.idle_timeout = *v;
    if (auto v = r.boolean("accept_proxy_protocol")) listener.accept_proxy_protocol = *v;
    if (auto v = r.duration("proxy_protocol_timeout", kProxyTimeoutRange)) {
        if (!listener.accept_proxy_protocol) {
            r.invalid("proxy_protocol_timeout",
                      "only applies with accept_proxy_protocol = true; set that or remove the key");
        }
        listener.proxy_protocol_timeout = *v;
    }
    if (auto v = r.boolean("access_log")) listener.access_log = *v;
    if (auto v = r.prefixes("allow")) {
        // A security group without rules admits no one; here that is more likely a
        // list left empty by a template than a wish to refuse every client.
        if (v->empty()) {
            r.invalid("allow",
                      "an empty list would refuse every client; remove the key to allow "
                      "every client, or list prefixes such as \"10.0.0.0/8\"");
        }
        listener.allow = std::move(*v);
    }
    if (auto v = r.prefixes("deny")) listener.deny = std::move(*v);
    r.require("bind", "bind = \"127.0.0.1:8000\"");
    r.require("target_group", "target_group = \"web\"");
    return listener;
}

}  // namespace

Config read_config(Diagnostics& diag, const toml::table& root) {
    TableReader r(diag, root, "", {"global", "listener", "target_group"});
    Config config;
    if (auto* t = r.table("global", "[global]")) {
        config.global = read_global(diag, *t, r.path_of("global"));
    }
    r.for_each_table("listener", "[[listener]]", [&](const toml::table& t, std::string path) {
        config.listeners.push_back(read_listener(diag, t, std::move(path)));
    });
    r.for_each_table(
        "target_group", "[[target_group]]", [&](const toml::table& t, std::string path) {
            config.target_groups.push_back(read_target_group(diag, t, std::move(path)));
        });
    return config;
}

}  // namespace stickyd::config_detail
