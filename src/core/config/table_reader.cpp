// TableReader's typed reads and its refusal of unknown keys.
#include "core/config/table_reader.hpp"

#include <algorithm>

namespace stickyd::config_detail {

std::string describe(const toml::node& node) {
    switch (node.type()) {
        case toml::node_type::string:
            return fmt::format("string {:?}", node.as_string()->get());
        case toml::node_type::integer:
            return fmt::format("integer {}", node.as_integer()->get());
        case toml::node_type::floating_point:
            return fmt::format("floating-point {}", node.as_floating_point()->get());
        case toml::node_type::boolean:
            return fmt::format("boolean {}", node.as_boolean()->get());
        case toml::node_type::table:
            return "table";
        case toml::node_type::array:
            return "array";
        case toml::node_type::date:
            return "date";
        case toml::node_type::time:
            return "time";
        case toml::node_type::date_time:
            return "date-time";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

namespace {

// Whole seconds, as NLB attributes are written; nullopt if negative or too large.
std::optional<Duration> seconds_to_duration(int64_t seconds) {
    if (seconds < 0 || seconds > Duration::max().count() / 1000) return std::nullopt;
    return Duration(seconds * 1000);
}

}  // namespace

TableReader::TableReader(Diagnostics& diag, const toml::table& table, std::string path,
                         std::initializer_list<std::string_view> known)
    : diag_(diag), table_(table), path_(std::move(path)), known_(known) {
    if (!path_.empty()) diag_.positions().record(path_, position_of(table.source()));
    reject_unknown_keys();
}

void TableReader::invalid(std::string_view key, std::string message) {
    diag_.fail(path_of(key), std::move(message));
}

void TableReader::require(std::string_view key, std::string_view example) {
    if (!has(key)) invalid(key, fmt::format("missing required key (e.g. {})", example));
}

std::optional<std::string> TableReader::string(std::string_view key) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    if (auto* s = node->as_string()) return s->get();
    invalid(key, fmt::format("expected a string, got {}", describe(*node)));
    return std::nullopt;
}

std::optional<bool> TableReader::boolean(std::string_view key) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    if (auto* b = node->as_boolean()) return b->get();
    invalid(key, fmt::format("expected true or false, got {}", describe(*node)));
    return std::nullopt;
}

std::optional<int64_t> TableReader::integer(std::string_view key, const IntRange& range) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    auto* i = node->as_integer();
    if (!i) {
        invalid(key, int_range_message(range, describe(*node)));
        return std::nullopt;
    }
    if (auto problem = outside_range(i->get(), range)) {
        invalid(key, *problem);
        return std::nullopt;
    }
    return i->get();
}

std::optional<Duration> TableReader::duration(std::string_view key, const DurationRange& range) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    std::optional<Duration> value;
    if (auto* i = node->as_integer()) value = seconds_to_duration(i->get());
    if (auto* s = node->as_string()) value = parse_duration(s->get());
    if (!value) {
        invalid(key, fmt::format("{}, got {}", kDurationHint, describe(*node)));
        return std::nullopt;
    }
    if (auto problem = outside_range(*value, range)) {
        invalid(key, *problem);
        return std::nullopt;
    }
    return value;
}

std::optional<SocketAddress> TableReader::address(std::string_view key, std::string_view example) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    auto* s = node->as_string();
    if (!s) {
        invalid(key, fmt::format("expected a string \"ip:port\" such as {}, got {}", example,
                                 describe(*node)));
        return std::nullopt;
    }
    auto parsed = SocketAddress::parse(s->get());
    if (!parsed) invalid(key, bad_address_message(s->get(), example));
    return parsed;
}

std::optional<std::vector<DnsDiscoveryConfig>> TableReader::dns_names(std::string_view key) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    if (auto* text = node->as_string()) {
        auto dns = parse_dns_name(text->get());
        if (!dns) {
            invalid(key, bad_dns_message(text->get()));
            return std::nullopt;
        }
        return std::vector{std::move(*dns)};
    }
    auto* array = node->as_array();
    if (!array) {
        invalid(key, not_dns_message(describe(*node), " or an array of them"));
        return std::nullopt;
    }
    if (array->empty()) {
        invalid(key, "an empty list names nothing to resolve; name one or remove the key");
        return std::nullopt;
    }
    std::vector<DnsDiscoveryConfig> out;
    for (size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = (*array)[i];
        const std::string path = index_key(path_of(key), i);
        const Position position = position_of(element.source());
        diag_.positions().record(path, position);
        auto* text = element.as_string();
        auto dns = text ? parse_dns_name(text->get()) : std::nullopt;
        if (!dns) {
            diag_.fail_at(path, position,
                          text ? bad_dns_message(text->get()) : not_dns_message(describe(element)));
            return std::nullopt;
        }
        out.push_back(std::move(*dns));
    }
    return out;
}

std::optional<std::vector<IpPrefix>> TableReader::prefixes(std::string_view key) {
    const toml::node* node = find(key);
    if (!node) return std::nullopt;
    auto* array = node->as_array();
    if (!array) {
        invalid(key, fmt::format("expected an array of CIDR prefixes such as {}, got {}",
                                 kPrefixListExample, describe(*node)));
        return std::nullopt;
    }
    std::vector<IpPrefix> out;
    for (size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = (*array)[i];
        const std::string path = index_key(path_of(key), i);
        const Position position = position_of(element.source());
        auto* text = element.as_string();
        if (!text) {
            diag_.fail_at(
                path, position,
                fmt::format("expected a string such as \"10.0.0.0/8\", got {}", describe(element)));
            return std::nullopt;
        }
        auto parsed = parse_prefix(text->get());
        if (auto* problem = std::get_if<std::string>(&parsed)) {
            diag_.fail_at(path, position, fmt::format("{:?}: {}", text->get(), *problem));
            return std::nullopt;
        }
        out.push_back(std::get<IpPrefix>(parsed));
    }
    return out;
}

const toml::table* TableReader::table(std::string_view key, std::string_view header) {
    const toml::node* node = find(key);
    if (!node) return nullptr;
    if (auto* t = node->as_table()) return t;
    invalid(key, fmt::format("expected a table ({}), got {}", header, describe(*node)));
    return nullptr;
}

const toml::node* TableReader::find(std::string_view key) {
    const toml::node* node = table_.get(key);
    if (node) diag_.positions().record(path_of(key), position_of(node->source()));
    return node;
}

void TableReader::reject_unknown_keys() {
    const toml::key* first = nullptr;
    for (auto&& [key, node] : table_) {
        if (std::find(known_.begin(), known_.end(), key.str()) != known_.end()) continue;
        if (!first || key.source().begin < first->source().begin) first = &key;
    }
    if (!first) return;
    std::string hint = did_you_mean(first->str(), known_);
    if (hint.empty()) hint = fmt::format("; expected one of {}", quoted_list(known_));
    diag_.fail_at(path_of(first->str()), position_of(first->source()),
                  fmt::format("unknown key{}", hint));
}

}  // namespace stickyd::config_detail
