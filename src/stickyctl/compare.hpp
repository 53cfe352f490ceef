// stickyctl compare: do several running instances route every client alike? From
// each instance's /status (its groups' "routing" objects) it says per group whether
// their fingerprints agree and, where not, which targets differ and exactly what
// share of the keyspace goes to another backend (compare_groups in ring_report).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "admin/render.hpp"

namespace stickyd {

// statuses: (the admin endpoint as given, its /status document), in --admin order;
// the first is the reference the others are compared with. group: only this one
// (empty = every group any instance has).
//
//   {"agree": bool,
//    "instances": ["ADMIN", ...],
//    "groups": [{"name", "agree",
//                "instances": [{"admin", "fingerprint" (null: group missing or no
//                               table), "targets"}],
//                "differences": [{"admin" (compared with the first),
//                                 "problem" (null, or why no share could be computed),
//                                 "only_here": [ids], "only_in_reference": [ids],
//                                 "weight": [{"id", "reference", "here"}],
//                                 "address": [{"id", "reference", "here"}],
//                                 "differs" (share of the keyspace routed elsewhere, or null),
//                                 "moves": [{"from", "to", "share"}]}]}]}
Json compare_document(const std::vector<std::pair<std::string, Json>>& statuses,
                      const std::string& group);

void print_compare(const Json& document);

}  // namespace stickyd
