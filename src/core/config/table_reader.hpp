// Reading one TOML table into typed values: a key the table does not define is
// refused (naming the closest one it does), each value is checked against its rule
// as it is read, and where every key was found is recorded for later errors.
#pragma once

#include <fmt/format.h>
#include <toml++/toml.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config/diagnostics.hpp"
#include "core/config/rules.hpp"
#include "stickyd/ip_prefix.hpp"

namespace stickyd::config_detail {

// What a TOML value is, for the "got ..." of an error.
std::string describe(const toml::node& node);

// Reads one TOML table. The constructor rejects keys the table does not define (naming
// the closest one that it does), then values are taken by key, each read recording
// where it was found. A new subtable, such as [target_group.health_check], is one more
// known key in its parent plus one read_* function for its contents.
class TableReader {
  public:
    TableReader(Diagnostics& diag, const toml::table& table, std::string path,
                std::initializer_list<std::string_view> known);

    std::string path_of(std::string_view key) const { return join_key(path_, key); }
    bool has(std::string_view key) const { return table_.contains(key); }

    void invalid(std::string_view key, std::string message);

    // Reported at the table, since the key has no position of its own. Called after
    // the values are read, so a present but wrong value is reported first.
    void require(std::string_view key, std::string_view example);

    std::optional<std::string> string(std::string_view key);
    std::optional<bool> boolean(std::string_view key);
    std::optional<int64_t> integer(std::string_view key, const IntRange& range);
    std::optional<Duration> duration(std::string_view key, const DurationRange& range);
    std::optional<SocketAddress> address(std::string_view key, std::string_view example);

    // An array of CIDR prefixes (allow, deny); a bad element is reported at its own
    // position, as key[i].
    std::optional<std::vector<IpPrefix>> prefixes(std::string_view key);

    // dns: one "NAME:PORT" or an array of them, each reported at its own position as
    // dns[i]. Duplicates are validation's (validate_dns_names).
    std::optional<std::vector<DnsDiscoveryConfig>> dns_names(std::string_view key);

    // A subtable written as `header` in the file; nullptr if absent or not a table.
    const toml::table* table(std::string_view key, std::string_view header);

    // Calls read(table, path) for each element of an array of tables (`header`).
    template <typename Read>
    void for_each_table(std::string_view key, std::string_view header, Read read) {
        const toml::node* node = find(key);
        if (!node) return;
        auto* array = node->as_array();
        if (!array) {
            invalid(key, fmt::format("expected an array of tables ({}), got {}", header,
                                     describe(*node)));
            return;
        }
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& element = (*array)[i];
            std::string path = index_key(path_of(key), i);
            if (auto* t = element.as_table()) {
                read(*t, path);
            } else {
                diag_.fail_at(
                    path, position_of(element.source()),
                    fmt::format("expected a table ({}), got {}", header, describe(element)));
            }
        }
    }

  private:
    const toml::node* find(std::string_view key);

    // Reports the first unknown key in file order (the table iterates sorted by name).
    void reject_unknown_keys();

    Diagnostics& diag_;
    const toml::table& table_;
    std::string path_;
    std::vector<std::string_view> known_;
};

}  // namespace stickyd::config_detail
