// The optional access log: one line per finished client connection, for the
// listeners that ask for it (`access_log = true`). The worker fills a record as
// the connection goes and formats it when the slot is freed; nothing here does I/O.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "stickyd/address.hpp"

namespace stickyd {

// Addresses are kept as they are and only turned into text when the line is
// written, so accepting and connecting format nothing.
struct AccessRecord {
    std::string listener;
    SocketAddress client;                 // the TCP peer
    std::optional<SocketAddress> source;  // the PROXY header's client, when it named one
    std::string group;                    // empty until a target accepted the connection
    std::string target;                   // the id of the target that accepted it
    std::optional<SocketAddress> target_address;
    unsigned attempts = 0;    // connects started
    uint64_t bytes_up = 0;    // received from the client
    uint64_t bytes_down = 0;  // received from the target
    std::chrono::steady_clock::time_point started;
    std::string_view end;  // how it ended (a literal): the first cause noted wins
};

// "access listener=web client=127.0.0.2:40000 group=g target=b1 addr=127.0.0.1:9001
// attempts=1 up=120 down=345 ms=12.3 end=closed" (logfmt: values with spaces,
// quotes or '=' are quoted; missing ones are "-").
std::string access_line(const AccessRecord& record, std::chrono::steady_clock::time_point now);

}  // namespace stickyd
