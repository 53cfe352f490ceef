// Where this stickyd puts its admin socket. A configured path is used as it is. The
// default, /run/stickyd/admin.sock, needs root or the unit's RuntimeDirectory: a user
// who cannot write there gets the next place stickyctl also looks in, so quick mode
// run as an ordinary user keeps its admin endpoint.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace stickyd {

std::string choose_admin_socket(const std::string& configured);

// The id of group `name`; nullopt when the host has no such group.
std::optional<gid_t> group_id(const std::string& name);

}  // namespace stickyd
